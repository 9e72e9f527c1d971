//! The hash and upload records of one worker's job: what its streaming passes hashed and
//! wrote, counted in memory and published once a second (`RECORD_EVERY`) as one hash and
//! one upload record, for the console's per-stage throughput. Observations, not state:
//! each file's durable effect is its row in the job store, so a record that cannot be
//! published is logged and its counts dropped rather than failing an upload that
//! succeeded. One message per file made JetStream store, index and ack two messages per
//! file only to draw a chart.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use pipeline::JobId;
use pipeline::messages::{HashRecord, UploadRecord};
use pipeline::runner::JobTask;
use pipeline::topology;
use tokio::sync::watch;

/// How often a worker publishes what it counted (nothing when it counted nothing). The
/// console's throughput chart has a point a second.
pub const RECORD_EVERY: Duration = Duration::from_secs(1);

/// What the streaming passes finished since the last publish.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    files: u64,
    bytes: u64,
    elapsed_ms: u64,
}

/// The job's records as this worker counts them. `add` is cheap and synchronous (the
/// fetch stage calls it per file); `run` publishes until the worker stops, then once
/// more, so what the last transfers wrote is counted too.
pub struct JobRecords {
    job: JobId,
    /// Random per worker run, so two workers' records never share a msg-id.
    worker: String,
    seq: AtomicU64,
    counts: Mutex<Counts>,
}

impl JobRecords {
    pub fn new(job: JobId) -> Self {
        Self {
            job,
            worker: uuid::Uuid::new_v4().simple().to_string(),
            seq: AtomicU64::new(0),
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Counts one file whose streaming pass finished: `bytes` hashed and written at its
    /// final key in `took`.
    pub fn add(&self, bytes: u64, took: Duration) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.files += 1;
        c.bytes = c.bytes.saturating_add(bytes);
        c.elapsed_ms = c.elapsed_ms.saturating_add(took.as_millis() as u64);
    }

    fn take(&self) -> Counts {
        std::mem::take(&mut *self.counts.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Publishes what was counted since the last publish, if anything: one hash and one
    /// upload record, their acks awaited together.
    pub async fn publish(&self, js: &jetstream::Context) {
        let c = self.take();
        if c.files == 0 {
            return;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let hash = HashRecord {
            job: self.job.clone(),
            worker: self.worker.clone(),
            seq,
            files: c.files,
            bytes: c.bytes,
        };
        let upload = UploadRecord {
            job: self.job.clone(),
            worker: self.worker.clone(),
            seq,
            files: c.files,
            bytes: c.bytes,
            elapsed_ms: c.elapsed_ms,
        };
        let (hash_id, upload_id) = (hash.canonical_msg_id(), upload.canonical_msg_id());
        let (r1, r2) = futures::join!(
            topology::publish_json(js, topology::hash_subject(&self.job), &hash_id, &hash),
            topology::publish_json(js, topology::upload_subject(&self.job), &upload_id, &upload),
        );
        if let Err(e) = r1.and(r2) {
            tracing::warn!(job = %self.job, files = c.files, error = %e, "could not publish a progress record; the console's throughput misses these files (the export is not affected)");
        }
    }

    /// Publishes every [`RECORD_EVERY`] until `stop` turns true (or its sender is gone),
    /// then once more.
    pub async fn run(&self, js: &jetstream::Context, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(RECORD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*stop.borrow() {
            tokio::select! {
                _ = tick.tick() => self.publish(js).await,
                changed = stop.changed() => if changed.is_err() { break },
            }
        }
        self.publish(js).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_start_again_after_each_take() {
        let r = JobRecords::new(JobId::new());
        r.add(10, Duration::from_millis(5));
        r.add(32, Duration::from_millis(7));
        assert_eq!(
            r.take(),
            Counts {
                files: 2,
                bytes: 42,
                elapsed_ms: 12
            }
        );
        assert_eq!(r.take(), Counts::default());
    }
}
