//! The Chorus request budget end to end: the simulator enforces a hard limit of 5
//! requests per second (more gets 429), and 500 recordings (metadata only, so the test
//! is about requests, not bytes) are exported through the real stages and nats-server.
//!
//! - With a budget of 4 requests per second no 429 is seen, and the export takes at
//!   least the time that rate implies for the requests it made.
//! - With a budget of 10 per second 429s happen, the budget backs off (far fewer 429s
//!   than the requests over the limit a fixed rate would draw), and every recording
//!   is exported.
//!
//! Both run at once (separate simulators, nats-servers and accounts), so the test costs
//! the slower of the two: about two and a half minutes of wall time, almost no CPU.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pipeline::rate_budget::BudgetConfig;
use pipeline::{ExportKinds, JobStatus};
use stages::chorus::Faults;

const RECORDINGS: usize = 500;
const LIMIT: u32 = 5;

struct Outcome {
    status: JobStatus,
    took: Duration,
    api_requests: u64,
    rate_limited: u64,
    exported: u64,
    dead: u64,
    throttled_seen: u64,
}

async fn export_with_budget(seed: u64, budget: BudgetConfig, retry_after_secs: u64) -> Outcome {
    let mut sim = Harness::sim_config(RECORDINGS, seed);
    sim.faults = Faults {
        limit_per_sec: LIMIT,
        retry_after_secs,
        ..Faults::default()
    };
    let h = Harness::start(sim).await;
    let out = tempfile::tempdir().unwrap();
    let job = h
        .start_job(
            &format!("file://{}", out.path().join("export").display()),
            ExportKinds {
                media: false,
                transcript: false,
                metadata: true,
            },
        )
        .await;
    let mut options = fast_options();
    options.chorus_budget = budget;
    let started = Instant::now();
    let (status, _) = h.run_worker(&job, options, Duration::from_secs(900)).await;
    let took = started.elapsed();
    let stats = h.sim.stats.snapshot();
    let p = h.store.progress(&job).await.unwrap();
    let view = pipeline::rate_budget::job_view(&h.js, &job)
        .await
        .expect("the job's budget is in the shared bucket");
    eprintln!(
        "budget {budget:?}: {status} in {:.1} s, {} API requests, {} refused by the limit, budget saw {} 429s, rate now {:.2}/s",
        took.as_secs_f64(),
        stats.api_requests,
        stats.rate_limited,
        view.throttled,
        view.rate
    );
    Outcome {
        status,
        took,
        api_requests: stats.api_requests,
        rate_limited: stats.rate_limited,
        exported: p.exported,
        dead: p.dead,
        throttled_seen: view.throttled,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_under_the_limit_sees_no_429_and_one_over_it_backs_off() {
    // Burst 1: a burst of B at a rate R can put B + R requests into one second.
    let under = BudgetConfig::new(4.0, 1).unwrap();
    let over = BudgetConfig::new(10.0, 4).unwrap();
    let (under, over) = tokio::join!(
        export_with_budget(41, under, 0),
        export_with_budget(42, over, 1)
    );

    assert_eq!(under.status, JobStatus::Finished);
    assert_eq!(under.exported, RECORDINGS as u64);
    assert_eq!(under.rate_limited, 0, "a 429 was seen under the budget");
    assert_eq!(under.throttled_seen, 0);
    // One slot every 250 ms: N requests span at least (N - 1) / 4 seconds.
    let least = Duration::from_millis((under.api_requests - 1) * 250);
    assert!(under.api_requests > RECORDINGS as u64);
    assert!(
        under.took >= least,
        "{} requests in {:?}: faster than 4 per second",
        under.api_requests,
        under.took
    );

    assert_eq!(over.status, JobStatus::Finished);
    assert_eq!(
        over.exported, RECORDINGS as u64,
        "not everything was exported"
    );
    assert_eq!(over.dead, 0);
    assert!(over.rate_limited > 0, "the limit never refused a request");
    assert_eq!(over.throttled_seen, over.rate_limited);
    // A fixed 10 per second against a limit of 5 would have half its requests refused;
    // backing off keeps the refusals to a few per cut.
    assert!(
        over.rate_limited * 10 < over.api_requests,
        "{} of {} requests refused: the budget did not back off",
        over.rate_limited,
        over.api_requests
    );
}
