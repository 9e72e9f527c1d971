//! What the job page shows, gathered in one place: the job record and its progress rows,
//! the per-stage counters and throughput series read from the hash and upload records in
//! `PORTSHIFT_RECORDS` (incrementally: the console remembers how far it read each job),
//! the DLQ count, and the throughput chart as server-rendered SVG.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use pipeline::JobId;
use pipeline::messages::{HashRecord, UploadRecord};
use pipeline::store::{JobRecord, JobStore, Problem, Progress};
use pipeline::topology::{self, DLQ_STREAM, RECORD_STREAM};
use serde::Serialize;

/// Per-second totals of one stage.
#[derive(Clone, Debug, Default)]
struct Series {
    items: u64,
    bytes: u64,
    per_second: BTreeMap<i64, u64>,
}

impl Series {
    /// `files` files of `bytes` in all, recorded at second `at_s`.
    fn add(&mut self, at_s: i64, files: u64, bytes: u64) {
        self.items += files;
        self.bytes += bytes;
        *self.per_second.entry(at_s).or_default() += bytes;
    }
}

#[derive(Debug, Default)]
struct JobStreams {
    next_seq: u64,
    hash: Series,
    upload: Series,
    upload_elapsed_ms: u64,
}

/// Per-job record-stream readers, shared by every page view and SSE stream.
#[derive(Clone, Default)]
pub struct StatsCache {
    jobs: Arc<Mutex<HashMap<JobId, Arc<tokio::sync::Mutex<JobStreams>>>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Store(#[from] pipeline::store::StoreError),
    #[error("could not read the job's records from JetStream: {0}. Check the NATS connection")]
    Nats(String),
}

/// One stage row of the job page.
#[derive(Clone, Debug, Serialize)]
pub struct StageView {
    pub stage: &'static str,
    pub items: u64,
    pub bytes: u64,
    /// Bytes per second over the last 10 seconds (the whole run once the job is final).
    pub throughput_bps: f64,
    pub note: String,
    /// Bytes per chart bucket, oldest first (empty for stages that move no bytes).
    #[serde(skip)]
    pub series: Vec<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    pub id: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub started_by: String,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
    pub destination: String,
    pub from: String,
    pub to: String,
    pub listed: u64,
    pub exported: u64,
    pub skipped: u64,
    pub failed: u64,
    pub files: u64,
    pub bytes: u64,
    pub stages: Vec<StageView>,
    pub problems: Vec<ProblemView>,
    pub dead_letters: u64,
    pub manifest_key: Option<String>,
    pub manifest_sha256: Option<String>,
    /// The console's current signing public key (minisign format), shown beside the
    /// manifest; `None` when the console signs nothing.
    pub signing_public_key: Option<String>,
    pub is_final: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProblemView {
    pub recording_id: String,
    pub status: String,
    pub reason: String,
}

const CHART_POINTS: usize = 40;

impl StatsCache {
    async fn streams(
        &self,
        js: &jetstream::Context,
        job: &JobId,
    ) -> Result<(Series, Series, u64), LiveError> {
        let entry = {
            let mut map = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(job.clone()).or_default().clone()
        };
        let mut s = entry.lock().await;
        read_records(js, job, &mut s).await?;
        Ok((s.hash.clone(), s.upload.clone(), s.upload_elapsed_ms))
    }

    /// Per-stage totals over every job this console has read (for `/metrics`).
    pub async fn totals(&self) -> [(u64, u64); 2] {
        let entries: Vec<_> = {
            let map = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            map.values().cloned().collect()
        };
        let mut out = [(0, 0); 2];
        for e in entries {
            let s = e.lock().await;
            out[0].0 += s.hash.items;
            out[0].1 += s.hash.bytes;
            out[1].0 += s.upload.items;
            out[1].1 += s.upload.bytes;
        }
        out
    }
}

/// Reads the job's hash and upload records published since the last read.
async fn read_records(
    js: &jetstream::Context,
    job: &JobId,
    s: &mut JobStreams,
) -> Result<(), LiveError> {
    let nats = |e: &dyn std::fmt::Display| LiveError::Nats(e.to_string());
    let stream = js.get_stream(RECORD_STREAM).await.map_err(|e| nats(&e))?;
    let deliver_policy = if s.next_seq == 0 {
        consumer::DeliverPolicy::All
    } else {
        consumer::DeliverPolicy::ByStartSequence {
            start_sequence: s.next_seq,
        }
    };
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subjects: vec![topology::hash_subject(job), topology::upload_subject(job)],
            deliver_policy,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(10),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|e| nats(&e))?;
    let mut pending = consumer.cached_info().num_pending;
    let hash_subject = topology::hash_subject(job);
    while pending > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(pending.min(2000) as usize)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .map_err(|e| nats(&e))?;
        let mut got = 0;
        while let Some(msg) = batch.next().await {
            let msg = msg.map_err(|e| nats(&e))?;
            got += 1;
            let Ok(info) = msg.info() else { continue };
            s.next_seq = info.stream_sequence + 1;
            pending = info.pending;
            let at_s = info.published.unix_timestamp();
            if msg.subject.as_str() == hash_subject {
                if let Ok(r) = serde_json::from_slice::<HashRecord>(&msg.payload) {
                    s.hash.add(at_s, r.files, r.bytes);
                }
            } else if let Ok(r) = serde_json::from_slice::<UploadRecord>(&msg.payload) {
                s.upload.add(at_s, r.files, r.bytes);
                s.upload_elapsed_ms += r.elapsed_ms;
            }
        }
        if got == 0 {
            break;
        }
    }
    let name = consumer.cached_info().name.clone();
    let _ = stream.delete_consumer(&name).await;
    Ok(())
}

/// The number of the job's messages waiting in the dead-letter stream.
pub async fn dead_letter_count(js: &jetstream::Context, job: &JobId) -> Result<u64, LiveError> {
    let nats = |e: &dyn std::fmt::Display| LiveError::Nats(e.to_string());
    let stream = js.get_stream(DLQ_STREAM).await.map_err(|e| nats(&e))?;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: format!("portshift.dlq.*.{job}"),
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(5),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|e| nats(&e))?;
    let n = consumer.cached_info().num_pending;
    let name = consumer.cached_info().name.clone();
    let _ = stream.delete_consumer(&name).await;
    Ok(n)
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Throughput and chart buckets of one series between `start_s` and `end_s`.
fn shape(series: &Series, start_s: i64, end_s: i64, is_final: bool) -> (f64, Vec<u64>) {
    let span = (end_s - start_s + 1).max(1);
    let bucket = (span as usize).div_ceil(CHART_POINTS).max(1) as i64;
    let mut buckets = vec![0u64; (span / bucket + 1) as usize];
    for (&t, &b) in &series.per_second {
        let i = ((t - start_s).max(0) / bucket) as usize;
        if let Some(slot) = buckets.get_mut(i) {
            *slot += b;
        } else if let Some(last) = buckets.last_mut() {
            *last += b;
        }
    }
    let rate = if is_final {
        series.bytes as f64 / span as f64
    } else {
        let recent: u64 = series
            .per_second
            .range(end_s - 9..=end_s)
            .map(|(_, b)| b)
            .sum();
        recent as f64 / 10.0
    };
    (rate, buckets)
}

/// `3 min`, `1 h 05 min`, `under a minute`.
fn minutes_text(d: Duration) -> String {
    let m = d.as_secs().div_ceil(60);
    match m {
        0 | 1 => "a minute".into(),
        2..=59 => format!("{m} min"),
        _ => format!("{} h {:02} min", m / 60, m % 60),
    }
}

pub async fn job_view(
    store: &JobStore,
    js: &jetstream::Context,
    cache: &StatsCache,
    job: &JobRecord,
) -> Result<JobView, LiveError> {
    let p: Progress = store.progress(&job.id).await?;
    let problems: Vec<Problem> = store.problems(&job.id).await?;
    let (hash, upload, _elapsed) = cache.streams(js, &job.id).await?;
    let dead_letters = dead_letter_count(js, &job.id).await?;
    let is_final = job.status.is_final();
    let start_s = job.created_ms / 1000;
    let end_s = job.finished_ms.map(|f| f / 1000).unwrap_or_else(now_s);
    let (hash_rate, hash_series) = shape(&hash, start_s, end_s, is_final);
    let (up_rate, up_series) = shape(&upload, start_s, end_s, is_final);
    let settled = p.exported + p.skipped + p.dead;
    let mut fetch_note = format!("{} of {} recordings settled", settled, p.listed);
    if !is_final {
        let elapsed_s = (now_s() - start_s).max(1) as f64;
        let dates = (job.spec.from.timestamp(), job.spec.to.timestamp());
        if let Some((left, expected)) = p.time_left(dates, elapsed_s) {
            fetch_note.push_str(&format!(
                ", about {} left{}",
                minutes_text(left),
                expected.note()
            ));
        }
        // The Chorus request budget the job's workers share (see pipeline::rate_budget).
        if let Some(budget) = pipeline::rate_budget::job_view(js, &job.id).await
            && budget.waiting
        {
            fetch_note.push_str(&format!(
                " · waiting for Chorus rate limit ({:.1} req/s)",
                budget.rate
            ));
        }
    }
    let stages = vec![
        StageView {
            stage: "list",
            items: p.listed,
            bytes: 0,
            throughput_bps: 0.0,
            note: if p.listing_complete {
                format!("listing complete: {} recordings", p.listed)
            } else {
                "listing Chorus engagements…".into()
            },
            series: vec![],
        },
        StageView {
            stage: "fetch",
            items: settled,
            bytes: hash.bytes,
            throughput_bps: hash_rate,
            note: fetch_note,
            series: hash_series.clone(),
        },
        StageView {
            stage: "hash",
            items: hash.items,
            bytes: hash.bytes,
            throughput_bps: hash_rate,
            note: "SHA-256 while streaming".into(),
            series: hash_series,
        },
        StageView {
            stage: "upload",
            // Records expire after a day; the progress rows are the durable count.
            items: upload.items.max(p.files),
            bytes: upload.bytes.max(p.bytes),
            throughput_bps: up_rate,
            note: "written at the final key".into(),
            series: up_series,
        },
        StageView {
            stage: "manifest",
            items: u64::from(job.manifest_key.is_some()),
            bytes: 0,
            throughput_bps: 0.0,
            note: job
                .manifest_key
                .clone()
                .unwrap_or_else(|| "waits for every recording to settle".into()),
            series: vec![],
        },
        StageView {
            stage: "notify",
            items: u64::from(is_final && job.manifest_key.is_some()),
            bytes: 0,
            throughput_bps: 0.0,
            note: if is_final {
                format!("job {}", job.status)
            } else {
                "runs last".into()
            },
            series: vec![],
        },
    ];
    Ok(JobView {
        id: job.id.to_string(),
        status: job.status.as_str().into(),
        status_reason: job.status_reason.clone(),
        started_by: job.started_by.clone(),
        created_ms: job.created_ms,
        finished_ms: job.finished_ms,
        destination: job.spec.destination.clone(),
        from: job.spec.from.date_naive().to_string(),
        to: job.spec.to.date_naive().to_string(),
        listed: p.listed,
        exported: p.exported,
        skipped: p.skipped,
        failed: p.dead,
        files: p.files,
        bytes: p.bytes,
        stages,
        problems: problems
            .into_iter()
            .take(200)
            .map(|p| ProblemView {
                recording_id: p.recording_id,
                status: p.status,
                reason: p.reason,
            })
            .collect(),
        dead_letters,
        manifest_key: job.manifest_key.clone(),
        manifest_sha256: job.manifest_sha256.clone(),
        signing_public_key: None,
        is_final,
    })
}

/// A small bar chart of bytes per bucket, as SVG markup (numbers only: nothing to escape).
pub fn chart_svg(series: &[u64]) -> String {
    const W: f64 = 240.0;
    const H: f64 = 40.0;
    let max = series.iter().copied().max().unwrap_or(0).max(1) as f64;
    let n = series.len().max(1) as f64;
    let bw = W / n;
    let mut bars = String::new();
    for (i, &v) in series.iter().enumerate() {
        let h = (v as f64 / max) * (H - 2.0);
        bars.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\"></rect>",
            i as f64 * bw,
            H - h,
            (bw - 1.0).max(0.5),
            h
        ));
    }
    format!(
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" \
         aria-label=\"throughput over time\"><line x1=\"0\" y1=\"{H}\" x2=\"{W}\" y2=\"{H}\"></line>{bars}</svg>"
    )
}

// The pages name it through this module, next to the other figures it renders.
pub use pipeline::human::human_bytes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_and_shape() {
        let mut s = Series::default();
        s.add(100, 1, 10);
        s.add(105, 3, 30);
        assert_eq!((s.items, s.bytes), (4, 40));
        let (rate, buckets) = shape(&s, 100, 109, true);
        assert_eq!(buckets.iter().sum::<u64>(), 40);
        assert!((rate - 4.0).abs() < 1e-9);
        let svg = chart_svg(&buckets);
        assert!(svg.starts_with("<svg") && svg.contains("<rect"));
    }
}
