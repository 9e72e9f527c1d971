//! Jobs that a test only stores (the console lists them, retention ages them), never
//! runs: one spec for them all.

use pipeline::store::JobStore;
use pipeline::{JobId, JobSpec};

/// An operator's export of January 2024 from a Chorus that does not exist, into
/// `destination`: a job to store, never to run.
pub fn stored_only_spec(destination: &str) -> JobSpec {
    JobSpec {
        chorus_url: "https://chorus.example/".into(),
        from: "2024-01-01T00:00:00Z".parse().unwrap(),
        to: "2024-01-31T23:59:59Z".parse().unwrap(),
        kinds: Default::default(),
        destination: destination.into(),
        webhook_url: None,
        schedule: None,
        options: Default::default(),
        trust: pipeline::Trust::Operator,
    }
}

/// Stores a new job of `org`, started by `by`, exporting into `destination` (a
/// [`stored_only_spec`]); returns its id.
pub async fn stored_job(store: &JobStore, org: &str, by: &str, destination: &str) -> JobId {
    let job = JobId::new();
    store
        .create_job(&job, org, by, &stored_only_spec(destination))
        .await
        .unwrap();
    job
}
