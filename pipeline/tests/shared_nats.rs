//! One `nats-server` per data folder: processes on the same folder share it, the last
//! to leave stops it, and what a killed process left behind (its server, its
//! `server.json`) neither blocks nor doubles the server.

use std::path::Path;
use std::time::Duration;

use pipeline::embedded_nats::SharedNats;
use test_support::process::live_processes_mentioning;

/// Live (non-zombie) nats-server processes whose command line names `dir`.
fn servers_on(dir: &Path) -> Vec<u32> {
    live_processes_mentioning(dir)
        .into_iter()
        .filter(|(_, cmdline)| {
            cmdline
                .split(|b| *b == 0)
                .next()
                .is_some_and(|a| a.ends_with(b"nats-server"))
        })
        .map(|(pid, _)| pid)
        .collect()
}

async fn jetstream_answers(url: &str) {
    let client = pipeline::config::connect_nats(url, None).await.unwrap();
    let js = async_nats::jetstream::new(client);
    pipeline::topology::ensure_streams(&js).await.unwrap();
}

#[tokio::test]
async fn two_users_of_one_data_folder_share_one_server_and_the_last_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let a = SharedNats::join(tmp.path()).await.unwrap();
    let b = SharedNats::join(tmp.path()).await.unwrap();
    assert!(a.started_here());
    assert!(!b.started_here(), "the second user started its own server");
    assert_eq!(a.url(), b.url());
    assert_eq!(servers_on(tmp.path()), vec![a.pid()]);
    jetstream_answers(&b.url()).await;

    // The one that started it leaves first: the other still has its server.
    let url = a.url();
    a.leave().await;
    assert_eq!(servers_on(tmp.path()).len(), 1);
    jetstream_answers(&url).await;

    b.leave().await;
    assert!(
        servers_on(tmp.path()).is_empty(),
        "the last user left the server running"
    );
    assert!(!tmp.path().join("nats/server.json").exists());

    // The folder reopens cleanly, and the streams made before are still there.
    let c = SharedNats::join(tmp.path()).await.unwrap();
    assert!(c.started_here());
    let client = pipeline::config::connect_nats(&c.url(), None)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    js.get_stream(pipeline::topology::WORK_STREAM)
        .await
        .unwrap();
    c.leave().await;
    assert!(servers_on(tmp.path()).is_empty());
}

#[tokio::test]
async fn a_server_file_naming_a_dead_process_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("nats")).unwrap();
    // A pid that surely is not a nats-server on this folder any more.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(
        tmp.path().join("nats/server.json"),
        format!(r#"{{"pid":{dead_pid},"url":"nats://127.0.0.1:1"}}"#),
    )
    .unwrap();
    let fresh = SharedNats::join(tmp.path()).await.unwrap();
    assert!(fresh.started_here());
    assert_ne!(fresh.url(), "nats://127.0.0.1:1");
    jetstream_answers(&fresh.url()).await;
    fresh.leave().await;

    // Our own pid: alive, but not a nats-server, so it is neither trusted nor killed.
    std::fs::write(
        tmp.path().join("nats/server.json"),
        format!(
            r#"{{"pid":{},"url":"nats://127.0.0.1:1"}}"#,
            std::process::id()
        ),
    )
    .unwrap();
    let s = SharedNats::join(tmp.path()).await.unwrap();
    assert!(s.started_here());
    jetstream_answers(&s.url()).await;
    s.leave().await;
    assert!(servers_on(tmp.path()).is_empty());
}

#[tokio::test]
async fn a_server_left_by_a_vanished_user_is_reused_then_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    // A user that disappears without leaving (as a SIGKILLed process would): its locks
    // go with it, its server keeps running.
    let orphaned = SharedNats::join(tmp.path()).await.unwrap();
    let pid = orphaned.pid();
    drop(orphaned);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(servers_on(tmp.path()), vec![pid]);

    let next = SharedNats::join(tmp.path()).await.unwrap();
    assert!(
        !next.started_here(),
        "a second server was started on the folder"
    );
    assert_eq!(next.pid(), pid);
    jetstream_answers(&next.url()).await;
    next.leave().await;
    assert!(servers_on(tmp.path()).is_empty());
}

#[tokio::test]
async fn the_server_inherits_nothing_but_its_memory_target() {
    // This test's own environment (PATH, HOME, the harness's variables) would show up
    // if it were inherited.
    assert!(std::env::var_os("PATH").is_some());
    let tmp = tempfile::tempdir().unwrap();
    let nats = pipeline::embedded_nats::EmbeddedNats::start(tmp.path())
        .await
        .unwrap();
    let pid = nats.pid().expect("the server runs");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let mut vars: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    vars.sort();
    assert_eq!(
        vars,
        vec![
            format!("GOGC={}", pipeline::embedded_nats::GC_PERCENT),
            format!("GOMEMLIMIT={}", pipeline::embedded_nats::MEMORY_TARGET),
        ]
    );
    nats.stop().await;
}
