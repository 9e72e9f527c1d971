//! Replay of dead letters, both ways docs/replay.md documents: the stock `nats` CLI
//! recipe (read from the page and run command by command; see
//! [`the_documented_nats_cli_recipe_completes_the_job`]) followed by
//! `portshift resume`, and `portshift replay --all --run`. Either way the job completes
//! and every recording appears once.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use futures::StreamExt;
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
        .args(["--database-url", &h.database_url()])
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

/// The commands of docs/replay.md's "With the stock `nats` CLI" section, as written
/// there: each `sh` block of that section, in order.
fn documented_recipe() -> Vec<String> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/replay.md")).unwrap();
    let section = doc
        .split("## With the stock `nats` CLI")
        .nth(1)
        .expect("docs/replay.md has a section on the stock nats CLI")
        .split("\n## ")
        .next()
        .unwrap();
    let mut blocks = vec![];
    let mut block: Option<String> = None;
    for line in section.lines().map(str::trim) {
        match (&mut block, line) {
            (None, "```sh") => block = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(b.trim().to_string());
                block = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// Fills the recipe's `<placeholders>` the way a reader would, quoting nothing: each
/// value goes where the placeholder stands (all of them sit inside single quotes or in
/// plain words, and no value holds a quote or a blank).
fn fill(command: &str, values: &[(&str, &str)]) -> String {
    let mut out = command.to_string();
    for (name, value) in values {
        assert!(
            !value.contains('\''),
            "{name} holds a quote; the recipe's quoting would break"
        );
        out = out.replace(name, value);
    }
    out
}

/// Splits a command line into words as the shell does for what the recipe uses: blanks
/// separate words, '…' is literal, "…" keeps blanks, a backslash escapes one character.
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut in_word) = (vec![], String::new(), false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        q => word.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The four `nats` subcommands the recipe uses, reimplemented on a NATS client (the
/// stock binary is in none of the registries this project installs from). Each takes
/// exactly the arguments and flags natscli documents for it and refuses any other, so a
/// recipe line this does not reproduce fails the test instead of passing untested.
/// Returns what the command prints, in natscli's layout.
async fn nats(h: &Harness, line: &str) -> String {
    let words = shell_words(line);
    assert_eq!(words.first().map(String::as_str), Some("nats"), "{line}");
    let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
    match args.as_slice() {
        // nats stream view STREAM --subject SUBJECT: every message of the stream on
        // SUBJECT (wildcards allowed), read through an ordered consumer.
        ["stream", "view", stream, "--subject", subject] => {
            let stream = h.js.get_stream(*stream).await.unwrap();
            let consumer = stream
                .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                    filter_subject: subject.to_string(),
                    ..Default::default()
                })
                .await
                .unwrap();
            let mut messages = consumer.messages().await.unwrap();
            let mut out = String::new();
            loop {
                let next = tokio::time::timeout(Duration::from_secs(2), messages.next()).await;
                let Ok(Some(m)) = next else { break };
                let m = m.unwrap();
                let info = m.info().unwrap();
                out.push_str(&format!(
                    "[{}] Subject: {} Received: {}\n",
                    info.stream_sequence, m.subject, info.published
                ));
                for (name, values) in m.headers.iter().flat_map(|h| h.iter()) {
                    for v in values {
                        out.push_str(&format!("  {name}: {v}\n"));
                    }
                }
                out.push_str(&format!("\n{}\n\n", String::from_utf8_lossy(&m.payload)));
                if info.pending == 0 {
                    break;
                }
            }
            out
        }
        // nats stream get STREAM SEQ: one message, headers and payload.
        ["stream", "get", stream, seq] => {
            let stream = h.js.get_stream(*stream).await.unwrap();
            let m = stream.get_raw_message(seq.parse().unwrap()).await.unwrap();
            let mut out = format!(
                "Item: {}#{} received {} on Subject {}\n\nHeaders:\n",
                stream.cached_info().config.name,
                m.sequence,
                m.time,
                m.subject
            );
            for (name, values) in m.headers.iter() {
                for v in values {
                    out.push_str(&format!("  {name}: {v}\n"));
                }
            }
            out.push_str(&format!("\n{}\n", String::from_utf8_lossy(&m.payload)));
            out
        }
        // nats pub [-J] [--no-templates] SUBJECT BODY [-H NAME:VALUE]...
        ["pub", rest @ ..] => {
            let (mut jetstream, mut no_templates) = (false, false);
            let mut headers = async_nats::HeaderMap::new();
            let mut positional = vec![];
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                match *a {
                    "-J" | "--jetstream" => jetstream = true,
                    "--no-templates" => no_templates = true,
                    "-H" | "--header" => {
                        let h = it.next().expect("-H takes NAME:VALUE");
                        let (name, value) = h.split_once(':').expect("-H takes NAME:VALUE");
                        headers.append(name, value);
                    }
                    a if a.starts_with('-') => {
                        panic!("nats pub flag {a} is not reproduced here: {line}")
                    }
                    a => positional.push(a),
                }
            }
            let [subject, body] = positional[..] else {
                panic!("nats pub takes SUBJECT BODY: {line}");
            };
            // Without --no-templates natscli runs the body through Go templates; a JSON
            // body has no `{{`, but this stand-in does not reproduce templates at all.
            assert!(
                no_templates || !body.contains("{{"),
                "plain nats pub would expand Go templates in this body: {line}"
            );
            let payload = bytes::Bytes::from(body.to_string());
            if jetstream {
                // -J: publish through JetStream and wait for the stream's acknowledgement.
                let ack =
                    h.js.publish_with_headers(subject.to_string(), headers, payload)
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                assert!(
                    !ack.duplicate,
                    "the replay was dropped as a duplicate: {line}"
                );
                format!(
                    "Published {} bytes to \"{subject}\"\nStored in Stream: {} Sequence: {}\n",
                    body.len(),
                    ack.stream,
                    ack.sequence
                )
            } else {
                h.client
                    .publish_with_headers(subject.to_string(), headers, payload)
                    .await
                    .unwrap();
                h.client.flush().await.unwrap();
                format!("Published {} bytes to \"{subject}\"\n", body.len())
            }
        }
        // nats stream rmm STREAM SEQ -f: removes one message without asking.
        ["stream", "rmm", stream, seq, "-f" | "--force"] => {
            let stream = h.js.get_stream(*stream).await.unwrap();
            assert!(stream.delete_message(seq.parse().unwrap()).await.unwrap());
            String::new()
        }
        _ => panic!("this nats command is not reproduced by tests/replay.rs: {line}"),
    }
}

/// docs/replay.md's stock `nats` CLI recipe, command by command as the page writes it
/// (read from the page, so an edit there is tested here), on a job whose every fetch
/// was dead-lettered; then the page's `portshift resume` line, run as written by a shell.
///
/// Which commands could not run as written: the four `nats` lines (`stream view`,
/// `stream get`, `pub -J --no-templates`, `stream rmm -f`), because the `nats` binary
/// (natscli) is in none of the registries this project installs from (crates.io, PyPI,
/// Debian, npm). [`nats`] reproduces each on a NATS client with the same arguments and
/// flags (refusing any it does not reproduce); the operator's reading of their output
/// (the sequences from `stream view`, the headers and payload from `stream get`) is done
/// on that output. The `portshift resume` line runs as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_documented_nats_cli_recipe_completes_the_job() {
    let h = Harness::start(Harness::sim_config(6, 21)).await;
    let out = tempfile::tempdir().unwrap();
    let job = failed_job(&h, &format!("file://{}", out.path().display())).await;

    let recipe = documented_recipe();
    let [view, get, publish, rmm, resume] = &recipe[..] else {
        panic!("docs/replay.md's nats recipe changed shape: {recipe:#?}");
    };
    assert!(view.starts_with("nats stream view"), "{view}");
    assert!(get.starts_with("nats stream get"), "{get}");
    assert!(
        publish.starts_with("nats pub -J --no-templates"),
        "{publish}"
    );
    assert!(rmm.starts_with("nats stream rmm"), "{rmm}");
    assert!(resume.contains("portshift resume"), "{resume}");

    // 1. List the job's dead letters.
    let listed = nats(&h, &fill(view, &[("<job>", job.as_str())])).await;
    let seqs: Vec<String> = listed
        .lines()
        .filter_map(|l| {
            l.strip_prefix('[')?
                .split_once(']')
                .map(|(s, _)| s.to_string())
        })
        .collect();
    assert_eq!(seqs.len(), 6, "{listed}");
    for seq in &seqs {
        // 2. Inspect one: its headers and payload, as printed.
        let shown = nats(&h, &fill(get, &[("<seq>", seq)])).await;
        let header = |name: &str| {
            shown
                .lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
                .unwrap_or_else(|| panic!("{name} not shown:\n{shown}"))
                .to_string()
        };
        assert!(header("Portshift-Error").contains("cut short"));
        let payload = shown.trim_end().lines().last().unwrap().to_string();
        assert!(payload.starts_with('{'), "{shown}");
        // 3. Publish it back with a new msg-id, 4. remove it from the DLQ.
        let sent = nats(
            &h,
            &fill(
                publish,
                &[
                    (
                        "<Portshift-Original-Subject>",
                        &header("Portshift-Original-Subject"),
                    ),
                    (
                        "<Portshift-Original-Msg-Id>",
                        &header("Portshift-Original-Msg-Id"),
                    ),
                    ("<seq>", seq),
                    ("<payload>", &payload),
                ],
            ),
        )
        .await;
        assert!(sent.contains("Stored in Stream: PORTSHIFT_WORK"), "{sent}");
        nats(&h, &fill(rmm, &[("<seq>", seq)])).await;
    }
    assert!(
        nats(&h, &fill(view, &[("<job>", job.as_str())]))
            .await
            .is_empty()
    );

    // 5. portshift resume <job>, through a shell, as written (the token placeholder `...`
    // filled in); the services come from the environment, as an operator's would.
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_portshift"))
        .parent()
        .unwrap();
    let line = fill(
        resume,
        &[
            ("<job>", job.as_str()),
            ("CHORUS_API_TOKEN=...", &format!("CHORUS_API_TOKEN={TOKEN}")),
        ],
    );
    let resumed = Command::new("bash")
        .args(["-c", &line])
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("PORTSHIFT_NATS_URL", h.nats.as_ref().unwrap().url())
        .env("PORTSHIFT_DATABASE_URL", h.database_url())
        .env("PORTSHIFT_CHORUS_RATE", "1000")
        .env("PORTSHIFT_CHORUS_BURST", "1000")
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{line}\n{}\n{}",
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
    pipeline::start::start_job(&h.store, &h.js, &job, "org", "tester", &spec)
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
