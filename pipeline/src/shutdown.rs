//! How a long-running command learns it should stop: SIGINT (Ctrl-C) and SIGTERM (what
//! systemd, Docker and Kubernetes send) mean the same thing everywhere, so every command
//! waits on [`signal`] instead of on Ctrl-C alone.

use std::io;

/// Which signal asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    Interrupt,
    Terminate,
}

impl StopSignal {
    /// The conventional exit code of a process stopped by this signal (128 + number).
    pub fn exit_code(self) -> u8 {
        match self {
            StopSignal::Interrupt => 130,
            StopSignal::Terminate => 143,
        }
    }
}

/// Listens for SIGINT and SIGTERM from the moment it is made (a signal that arrives
/// before the first `recv` is not lost).
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) -> StopSignal {
        tokio::select! {
            _ = self.int.recv() => StopSignal::Interrupt,
            _ = self.term.recv() => StopSignal::Terminate,
        }
    }
}

/// Waits for the first SIGINT or SIGTERM. If the handlers cannot be installed (never on
/// Linux in practice), it waits for Ctrl-C alone.
pub async fn signal() -> StopSignal {
    match Signals::new() {
        Ok(mut s) => s.recv().await,
        Err(e) => {
            tracing::warn!(error = %e, "could not listen for SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
            StopSignal::Interrupt
        }
    }
}

/// Sends SIGTERM to a child process (a worker, a server) so it stops the way it would
/// under systemd. Returns false if the signal could not be sent (the process is gone).
pub fn terminate(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with a positive pid touches no memory of ours.
    unsafe { libc::kill(pid, libc::SIGTERM) == 0 }
}
