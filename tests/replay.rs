//! Replay of dead letters, both ways docs/replay.md documents: the stock `nats` CLI
//! recipe (performed here with a NATS client, operation for operation) followed by
//! `portshift resume`, and `portshift replay --all --run`. Either way the job completes
//! and every recording appears once.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use pipeline::topology::{DLQ_STREAM, Stage};
use pipeline::{ExportKinds, JobId, JobStatus};
use stages::chorus::Faults;

/// A job whose every media body is cut short, with one delivery allowed: every
/// recording ends in the DLQ.
async fn failed_job(h: &Harness, dest: &str) -> JobId {
    h.sim.set_faults(Faults {
        rate_truncate: 1.0,
        ..Faults::default()
    });
    let job = h.start_job(dest, ExportKinds::default()).await;
    let mut options = fast_options();
    options.runner.max_deliveries = 1;
    let (status, _) = h.run_worker(&job, options, Duration::from_secs(120)).await;
    assert_eq!(status, JobStatus::FinishedWithFailures);
    h.sim.set_faults(Faults::default());
    job
}

/// `nats pub -J --no-templates <subject> <payload> -H 'Nats-Msg-Id:<id>'`: the payload
/// bytes as given (no template expansion), published through JetStream, waiting for the
/// stream's acknowledgement (-J) so a lost publish is an error, not silence.
async fn nats_pub_j(h: &Harness, subject: String, msg_id: &str, payload: bytes::Bytes) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    let ack =
        h.js.publish_with_headers(subject, headers, payload)
            .await
            .unwrap()
            .await
            .unwrap();
    assert!(!ack.duplicate, "the replay was dropped as a duplicate");
}

fn portshift(h: &Harness, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portshift"))
        .args(args)
        .args(["--nats-url", &h.nats.as_ref().unwrap().url()])
        .args([
            "--database-url",
            &format!("sqlite://{}/portshift.sqlite3", h.tmp.path().display()),
        ])
        .env("CHORUS_API_TOKEN", TOKEN)
        .env("PORTSHIFT_CHORUS_RATE", "1000")
        .env("PORTSHIFT_CHORUS_BURST", "1000")
        .env(
            "PORTSHIFT_NATS_SERVER_BIN",
            env_or_fail("PORTSHIFT_NATS_SERVER_BIN"),
        )
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_documented_nats_cli_recipe_completes_the_job() {
    let h = Harness::start(Harness::sim_config(6, 21)).await;
    let out = tempfile::tempdir().unwrap();
    let job = failed_job(&h, &format!("file://{}", out.path().display())).await;

    // 1. nats stream view PORTSHIFT_DLQ --subject 'portshift.dlq.*.<job>'
    let dlq = h.js.get_stream(DLQ_STREAM).await.unwrap();
    let info = dlq.clone().get_info().await.unwrap();
    let mut seqs = vec![];
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if let Ok(m) = dlq.get_raw_message(seq).await
            && m.subject.as_str() == Stage::Fetch.dlq_subject(&job)
        {
            seqs.push(seq);
        }
    }
    assert_eq!(seqs.len(), 6);
    for seq in seqs {
        // 2. nats stream get PORTSHIFT_DLQ <seq>
        let m = dlq.get_raw_message(seq).await.unwrap();
        let subject = m
            .headers
            .get("Portshift-Original-Subject")
            .unwrap()
            .as_str()
            .to_string();
        let msg_id = m
            .headers
            .get("Portshift-Original-Msg-Id")
            .unwrap()
            .as_str()
            .to_string();
        assert!(
            m.headers
                .get("Portshift-Error")
                .unwrap()
                .as_str()
                .contains("cut short")
        );
        // 3. nats pub -J --no-templates '<subject>' '<payload>' -H 'Nats-Msg-Id:<msg id>.replay.<seq>'
        nats_pub_j(
            &h,
            subject,
            &format!("{msg_id}.replay.{seq}"),
            m.payload.clone(),
        )
        .await;
        // 4. nats stream rmm PORTSHIFT_DLQ <seq> -f
        assert!(dlq.delete_message(seq).await.unwrap());
    }
    // 5. portshift resume <job>
    let resumed = portshift(&h, &["resume", job.as_str()]);
    assert!(
        resumed.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&resumed.stdout),
        String::from_utf8_lossy(&resumed.stderr)
    );
    let p = h.store.progress(&job).await.unwrap();
    assert_eq!((p.exported, p.dead), (6, 0));
    assert_eq!(h.store.job(&job).await.unwrap().status, JobStatus::Finished);
    let lines = sha256sum_check(out.path());
    assert_eq!(lines, 18, "3 files for each of the 6 recordings, once each");
    assert_eq!(lines, all_files_of(out.path()).len() - 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn portshift_replay_all_run_completes_the_job() {
    let h = Harness::start(Harness::sim_config(5, 22)).await;
    let out = tempfile::tempdir().unwrap();
    let job = failed_job(&h, &format!("file://{}", out.path().display())).await;

    let listed = portshift(&h, &["replay", "--job", job.as_str()]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("fetch") && l.contains("cut short"))
            .count(),
        5,
        "{text}"
    );

    let replayed = portshift(&h, &["replay", "--job", job.as_str(), "--all", "--run"]);
    assert!(
        replayed.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&replayed.stdout),
        String::from_utf8_lossy(&replayed.stderr)
    );
    assert_eq!(h.store.job(&job).await.unwrap().status, JobStatus::Finished);
    assert_eq!(sha256sum_check(out.path()), 15);
    let again = portshift(&h, &["replay", "--job", job.as_str()]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("no dead letters"));
}

/// A webhook receiver that refuses (HTTP 500) until `accept` is set; counts what it
/// accepted.
async fn flaky_webhook() -> (String, Arc<AtomicBool>, Arc<AtomicUsize>) {
    let accept = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let (a, n) = (accept.clone(), accepted.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let (a, n) = (a.clone(), n.clone());
            async move {
                if a.load(Ordering::SeqCst) {
                    n.fetch_add(1, Ordering::SeqCst);
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, accept, accepted)
}

/// An export whose only failure is its webhook: the job is finished (the export is
/// complete), the notification is dead-lettered. Replaying it with the documented
/// recipe and `portshift resume` delivers the webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_webhook_on_a_finished_job_is_delivered() {
    let h = Harness::start(Harness::sim_config(3, 23)).await;
    let out = tempfile::tempdir().unwrap();
    let (hook, accept, accepted) = flaky_webhook().await;
    let job = JobId::new();
    let spec = pipeline::JobSpec {
        chorus_url: h.sim.api_url.to_string(),
        from: "2024-01-01T00:00:00Z".parse().unwrap(),
        to: "2024-12-31T23:59:59Z".parse().unwrap(),
        kinds: ExportKinds::default(),
        destination: format!("file://{}", out.path().display()),
        webhook_url: Some(hook),
        schedule: None,
        options: Default::default(),
        trust: pipeline::Trust::Operator,
    };
    h.store
        .create_job(&job, "org", "tester", &spec)
        .await
        .unwrap();
    pipeline::topology::publish_json(
        &h.js,
        Stage::List.subject(&job),
        &pipeline::topology::msg_id(&job, "list", &["0"]),
        &pipeline::messages::ListTask {
            job: job.clone(),
            page: 0,
            continuation_key: None,
        },
    )
    .await
    .unwrap();
    let mut options = fast_options();
    options.runner.max_deliveries = 1;
    let (status, _) = h.run_worker(&job, options, Duration::from_secs(60)).await;
    assert_eq!(status, JobStatus::Finished);
    let record = h.store.job(&job).await.unwrap();
    assert!(
        record
            .status_reason
            .as_deref()
            .unwrap_or_default()
            .contains("webhook"),
        "{record:?}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 0);

    accept.store(true, Ordering::SeqCst);
    let dlq = h.js.get_stream(DLQ_STREAM).await.unwrap();
    let info = dlq.clone().get_info().await.unwrap();
    let mut replayed = 0;
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let Ok(m) = dlq.get_raw_message(seq).await else {
            continue;
        };
        if m.subject.as_str() != Stage::Notify.dlq_subject(&job) {
            continue;
        }
        let subject = m
            .headers
            .get("Portshift-Original-Subject")
            .unwrap()
            .as_str()
            .to_string();
        let msg_id = m
            .headers
            .get("Portshift-Original-Msg-Id")
            .unwrap()
            .as_str()
            .to_string();
        nats_pub_j(
            &h,
            subject,
            &format!("{msg_id}.replay.{seq}"),
            m.payload.clone(),
        )
        .await;
        assert!(dlq.delete_message(seq).await.unwrap());
        replayed += 1;
    }
    assert_eq!(replayed, 1);
    let resumed = portshift(&h, &["resume", job.as_str()]);
    assert!(
        resumed.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&resumed.stdout),
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the webhook was not delivered"
    );
    let record = h.store.job(&job).await.unwrap();
    assert_eq!(
        (record.status, record.status_reason),
        (JobStatus::Finished, None)
    );
    assert_eq!(sha256sum_check(out.path()), 9);

    // With nothing queued, resume says so rather than pretending to run.
    let again = portshift(&h, &["resume", job.as_str()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already finished"));
}
