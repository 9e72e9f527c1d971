//! How a long-running command learns it should stop: SIGINT (Ctrl-C) and SIGTERM (what
//! systemd, Docker and Kubernetes send) mean the same thing everywhere, so every command
//! waits on [`signal`] instead of on Ctrl-C alone.

use std::sync::OnceLock;

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

/// Every SIGINT and SIGTERM this process has received, counted from [`listen`] on.
#[derive(Clone, Copy, Debug, Default)]
struct Received {
    count: u32,
    last: Option<StopSignal>,
}

fn received() -> &'static tokio::sync::watch::Sender<Received> {
    static RECEIVED: OnceLock<tokio::sync::watch::Sender<Received>> = OnceLock::new();
    RECEIVED.get_or_init(|| tokio::sync::watch::channel(Received::default()).0)
}

fn record(got: StopSignal) {
    received().send_modify(|r| {
        r.count += 1;
        r.last = Some(got);
    });
}

/// Starts listening for SIGINT and SIGTERM for the rest of the process (they no longer
/// kill it); later calls do nothing. The binary calls it first thing for its
/// long-running commands, before it starts a `nats-server` or prints
/// that it is ready: a signal that arrives while a command is still starting up is then
/// neither fatal (the default action would orphan the children started so far) nor
/// lost (the command sees it as soon as it asks). Must run inside a Tokio runtime.
pub fn listen() {
    static LISTENING: OnceLock<()> = OnceLock::new();
    LISTENING.get_or_init(|| {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::spawn(async move {
                    loop {
                        let got = tokio::select! {
                            _ = int.recv() => StopSignal::Interrupt,
                            _ = term.recv() => StopSignal::Terminate,
                        };
                        record(got);
                    }
                });
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "could not listen for SIGTERM; only Ctrl-C stops this process");
                tokio::spawn(async move {
                    loop {
                        if tokio::signal::ctrl_c().await.is_err() {
                            return;
                        }
                        record(StopSignal::Interrupt);
                    }
                });
            }
        }
    });
}

/// Waits until the process has received its `n`-th stop signal (1 = the first), counted
/// from [`listen`]; returns at once if it already has. Starts listening if nobody did.
pub async fn nth(n: u32) -> StopSignal {
    listen();
    let mut rx = received().subscribe();
    let seen = rx.wait_for(|r| r.count >= n).await.map(|r| r.last);
    match seen {
        Ok(last) => last.unwrap_or(StopSignal::Interrupt),
        // The sender is a static and never dropped; waiting forever is the honest answer.
        Err(_) => std::future::pending().await,
    }
}

/// Waits for the first SIGINT or SIGTERM (at once if one came already).
pub async fn signal() -> StopSignal {
    nth(1).await
}

/// Waits for the next tick of a loop that runs every `tick` until `stop` turns true (or
/// for a change of `stop`, whichever comes first); true once `stop` says to stop. The
/// loops of the retention purge and the scheduler wait on it between their rounds.
pub async fn next_tick_or_stop(
    tick: &mut tokio::time::Interval,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        _ = tick.tick() => {}
        _ = stop.changed() => {}
    }
    *stop.borrow()
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
