//! The manifest stage: once every recording is settled, writes at the export root
//! `portshift-manifest.txt` (`sha256sum` format, one line per exported file, so
//! `sha256sum -c portshift-manifest.txt` checks a downloaded copy with no portshift
//! tooling) and `portshift-manifest.json` (totals and per-file detail). Both are built
//! from the job's progress rows, never by listing the customer's bucket, and each
//! recording appears once however often it was delivered. Its SHA-256 goes into the
//! job record so later tampering is evident.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use pipeline::messages::{ManifestTask, NotifyTask};
use pipeline::runner::{StageError, StageHandler};
use pipeline::store::{FileRow, ManifestCursor, ManifestRow, RecordingWithFiles};
use pipeline::topology::{self, Stage};
use pipeline::{ExportKinds, FileKind};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::context::{JobContext, PAGE_ROWS, publish_err, store_err};

pub use pipeline::keys::{MANIFEST_JSON, MANIFEST_TXT};

/// The manifest's file names: `portshift-manifest.txt`/`.json` for an export, and
/// `portshift-manifest-<job>.txt`/`.json` for a scheduled run, so each run of a schedule
/// keeps its own manifest beside the others in the same destination.
pub fn manifest_names(spec: &pipeline::JobSpec, job: &pipeline::JobId) -> (String, String) {
    match spec.schedule {
        None => (MANIFEST_TXT.to_string(), MANIFEST_JSON.to_string()),
        Some(_) => (
            format!("portshift-manifest-{job}.txt"),
            format!("portshift-manifest-{job}.json"),
        ),
    }
}

/// `portshift-manifest.json` as it is read back: every section in memory.
pub type ManifestDocument =
    ManifestDocumentOf<Vec<ManifestFile>, Vec<ManifestRecording>, Vec<ManifestProblem>>;

// The manifest stage writes it with its four lists as `Paged` sections read from the
// job store as they are rendered; readers use `ManifestDocument`. (Not a doc comment:
// the doc comment is the schema's description.)
/// `portshift-manifest.json`. Stable; its schema is `schemas/manifest.schema.json`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "ManifestDocument")]
pub struct ManifestDocumentOf<Files, Recordings, Problems> {
    /// Always `portshift-manifest/1` for this layout.
    pub format: String,
    pub job_id: String,
    pub exported_at: DateTime<Utc>,
    pub source: String,
    pub destination: String,
    pub filter: ManifestFilter,
    pub totals: ManifestTotals,
    pub files: Files,
    pub recordings: Recordings,
    /// Recordings not exported on purpose (deleted, private, nothing recorded).
    pub skipped: Problems,
    /// Recordings that failed after every retry (replayable, see docs/replay.md).
    pub failed: Problems,
    /// Whether the `.txt` manifest is signed, and with which key. Absent in manifests
    /// written before signing existed (read it as unsigned).
    #[serde(default)]
    pub signature: ManifestSignature,
    /// For a scheduled run: the previous run's manifest for the same schedule and
    /// destination. Its line is also in the `.txt` manifest (`<sha256>  <path>`), so
    /// `sha256sum -c` on each run checks the link to the one before.
    #[serde(default)]
    pub previous_manifest: Option<ManifestLink>,
    /// `bagit` when the export is a BagIt bag; `bag` is then its folder (`""` for the
    /// export root).
    #[serde(default)]
    pub layout: pipeline::Layout,
    #[serde(default)]
    pub bag: Option<String>,
}

/// A link to an earlier run's `.txt` manifest.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ManifestLink {
    pub job_id: String,
    /// Relative to the export root.
    pub path: String,
    /// SHA-256 of that manifest's bytes.
    pub sha256: String,
}

/// How the `.txt` manifest is signed: a minisign signature `<manifest>.txt.minisig`
/// beside it, whose trusted comment holds the job id, the time and this JSON's SHA-256.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct ManifestSignature {
    pub signed: bool,
    /// The signature file, relative to the export root.
    pub file: Option<String>,
    /// minisign's key id of the signing key (16 hex digits, as `minisign` prints it).
    pub key_id: Option<String>,
    /// The public key that verifies it (`minisign -p` file contents).
    pub public_key: Option<String>,
    /// In plain words: what is signed, or that nothing is.
    pub note: String,
}

impl ManifestSignature {
    pub fn unsigned() -> Self {
        Self {
            signed: false,
            file: None,
            key_id: None,
            public_key: None,
            note: UNSIGNED_NOTE.into(),
        }
    }
}

/// What an unsigned export says about itself (manifest JSON and CLI output).
pub const UNSIGNED_NOTE: &str = "UNSIGNED: no signing key was configured (--signing-key / PORTSHIFT_SIGNING_KEY), so nothing proves portshift wrote this manifest; its hashes still prove the files match it";

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ManifestFilter {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub kinds: ExportKinds,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ManifestTotals {
    pub recordings: u64,
    pub files: u64,
    pub bytes: u64,
    pub skipped: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ManifestFile {
    /// Relative to the export root, as in the `.txt` manifest.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    pub recording_id: String,
    pub kind: FileKind,
    pub content_type: String,
    /// Which version of the recording this file is: Chorus's `_modified_at` as read
    /// when the file was fetched (verbatim). A transcript re-processed in Chorus gets a
    /// later `_modified_at`; `null` when Chorus did not give one (or for files written
    /// before portshift recorded it).
    #[serde(default)]
    pub source_modified_at: Option<String>,
    /// When these bytes were written at `path` in this job. A redelivery that wrote the
    /// same bytes again keeps the first time; a replay that wrote different bytes (a
    /// newer version) sets a new one.
    #[serde(default)]
    pub exported_at: Option<DateTime<Utc>>,
}

/// The recording's metadata as the manifest keeps it: facts only, no personal data
/// (participants are in the exported metadata file, not here).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ManifestRecording {
    pub recording_id: String,
    pub recorded_at: Option<DateTime<Utc>>,
    pub duration_s: Option<f64>,
    pub engagement_type: Option<String>,
    /// The newest Chorus `_modified_at` among the recording's files (each file's own is
    /// in `files`: they differ when Chorus re-processed the recording between the calls).
    #[serde(default)]
    pub source_modified_at: Option<String>,
    /// When the last of its files was written.
    #[serde(default)]
    pub exported_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ManifestProblem {
    pub recording_id: String,
    pub reason: String,
    /// What happened, in one word (absent in manifests written before it existed).
    #[serde(default)]
    pub state: Option<ProblemState>,
    /// When portshift found it out.
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
}

/// Why a recording is in `skipped` or `failed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemState {
    /// The listing returned it, then Chorus answered 404: deleted in Chorus (or made
    /// private) during the export. Files of it written before that stay in `files`.
    DeletedInSource,
    /// Not exported on purpose for another permanent reason (e.g. no media, an id
    /// that cannot be requested); `reason` says which.
    Skipped,
    /// Failed after every retry, or its file read back different (`--verify-after`):
    /// replayable (docs/replay.md).
    Failed,
}

fn problem(p: pipeline::store::Problem) -> ManifestProblem {
    let state = match (p.status.as_str(), p.source_state.as_deref()) {
        (_, Some(pipeline::store::DELETED_IN_SOURCE)) => ProblemState::DeletedInSource,
        ("skipped", _) => ProblemState::Skipped,
        _ => ProblemState::Failed,
    };
    ManifestProblem {
        recording_id: p.recording_id,
        reason: p.reason,
        state: Some(state),
        at: DateTime::from_timestamp_millis(p.at_ms),
    }
}

/// The later of two Chorus `_modified_at` values (compared as times when both parse,
/// else as text).
fn newest(a: Option<String>, b: Option<&String>) -> Option<String> {
    match (a, b) {
        (None, b) => b.cloned(),
        (a, None) => a,
        (Some(a), Some(b)) => {
            let later = match (
                DateTime::parse_from_rfc3339(&a),
                DateTime::parse_from_rfc3339(b),
            ) {
                (Ok(x), Ok(y)) => y > x,
                _ => b.as_str() > a.as_str(),
            };
            Some(if later { b.clone() } else { a })
        }
    }
}

/// The last run of the same schedule that wrote a manifest to the same destination,
/// before this job (runs of a schedule never overlap, so it is final).
pub async fn previous_run_manifest(
    store: &pipeline::store::JobStore,
    spec: &pipeline::JobSpec,
    job: &pipeline::JobId,
) -> Result<Option<ManifestLink>, pipeline::store::StoreError> {
    let Some(schedule) = &spec.schedule else {
        return Ok(None);
    };
    let me = store.job(job).await?;
    for run in store.schedule_runs(schedule, 10_000).await? {
        let Some(id) = run
            .job_id
            .as_deref()
            .and_then(|j| j.parse::<pipeline::JobId>().ok())
        else {
            continue;
        };
        if &id == job {
            continue;
        }
        let Ok(record) = store.job(&id).await else {
            continue;
        };
        if record.created_ms > me.created_ms || record.spec.destination != spec.destination {
            continue;
        }
        if let (Some(_), Some(sha)) = (&record.manifest_key, &record.manifest_sha256) {
            return Ok(Some(ManifestLink {
                path: manifest_names(&record.spec, &id).0,
                job_id: id.to_string(),
                sha256: sha.clone(),
            }));
        }
    }
    Ok(None)
}

/// A failure met while a section was read from the store for a write already under
/// way: the stage reports it as what it is (an unsafe key is [`StageError::Invalid`],
/// a store hiccup transient), not as the destination's error that the cut-short body
/// causes.
type SectionFailure = Arc<Mutex<Option<StageError>>>;

fn record_failure(slot: &SectionFailure, e: StageError) -> std::io::Error {
    let message = e.to_string();
    if let Ok(mut slot) = slot.lock() {
        slot.get_or_insert(e);
    }
    std::io::Error::other(message)
}

fn take_failure(slot: &SectionFailure) -> Option<StageError> {
    slot.lock().ok().and_then(|mut s| s.take())
}

/// One JSON array of the manifest, read from the job store a page at a time while it
/// is rendered, so a 100,000-recording manifest is never whole in memory. An empty
/// page ends the array. Rendered once (a second rendering would find it exhausted).
pub struct Paged<T> {
    next_page: Mutex<Box<NextPage<T>>>,
    failure: SectionFailure,
}

/// Reads the next page of a [`Paged`] section (empty at the end).
type NextPage<T> = dyn FnMut() -> Result<Vec<T>, StageError> + Send;

impl<T> Paged<T> {
    fn new(
        failure: &SectionFailure,
        next_page: impl FnMut() -> Result<Vec<T>, StageError> + Send + 'static,
    ) -> Self {
        Self {
            next_page: Mutex::new(Box::new(next_page)),
            failure: failure.clone(),
        }
    }
}

impl<T: Serialize> Serialize for Paged<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut next_page = self
            .next_page
            .lock()
            .map_err(|_| S::Error::custom("manifest section poisoned"))?;
        let mut seq = serializer.serialize_seq(None)?;
        let next_page = &mut **next_page;
        loop {
            let page = match next_page() {
                Ok(page) => page,
                Err(e) => return Err(S::Error::custom(record_failure(&self.failure, e))),
            };
            if page.is_empty() {
                break;
            }
            for item in &page {
                seq.serialize_element(item)?;
            }
        }
        seq.end()
    }
}

/// The manifest as the stage writes it.
type StreamedDocument =
    ManifestDocumentOf<Paged<ManifestFile>, Paged<ManifestRecording>, Paged<ManifestProblem>>;

/// A manifest row as the JSON's `files` entry; a key that is not a safe relative path
/// (a corrupt row) stops the manifest.
fn manifest_file(row: ManifestRow) -> Result<ManifestFile, StageError> {
    let f = row.file;
    if !pipeline::keys::is_safe_relative(&f.key) {
        return Err(StageError::Invalid(format!(
            "unsafe path {:?} in the progress rows",
            f.key
        )));
    }
    Ok(ManifestFile {
        source_modified_at: row.source_modified_at,
        exported_at: row.exported_ms.and_then(DateTime::from_timestamp_millis),
        path: f.key,
        sha256: f.sha256,
        bytes: f.bytes,
        recording_id: f.recording_id,
        kind: f.file,
        content_type: f.content_type,
    })
}

/// An exported recording as the JSON's `recordings` entry: the newest version and the
/// last write among its files.
fn manifest_recording(r: RecordingWithFiles) -> ManifestRecording {
    let (source_modified_at, exported_ms) = r.files.iter().fold(
        (None, None),
        |(newest_so_far, last), (modified, written)| {
            (newest(newest_so_far, modified.as_ref()), last.max(*written))
        },
    );
    let r = r.recording;
    ManifestRecording {
        recorded_at: r.recorded_at.and_then(|s| DateTime::from_timestamp(s, 0)),
        recording_id: r.recording_id,
        duration_s: r.duration_s,
        engagement_type: r.engagement_type,
        source_modified_at,
        exported_at: exported_ms.and_then(DateTime::from_timestamp_millis),
    }
}

/// The manifest's four lists, each read from the store page by page (on the blocking
/// thread that renders the JSON, hence `block_on`).
fn paged_sections(
    ctx: &JobContext,
    failure: &SectionFailure,
) -> (
    Paged<ManifestFile>,
    Paged<ManifestRecording>,
    Paged<ManifestProblem>,
    Paged<ManifestProblem>,
) {
    let runtime = tokio::runtime::Handle::current();
    let files = {
        let (store, job, runtime) = (ctx.store.clone(), ctx.job.clone(), runtime.clone());
        let mut cursor = ManifestCursor::default();
        Paged::new(failure, move || {
            let (rows, next) = runtime
                .block_on(store.manifest_page(&job, &cursor, PAGE_ROWS))
                .map_err(store_err)?;
            cursor = next;
            rows.into_iter().map(manifest_file).collect()
        })
    };
    let recordings = {
        let (store, job, runtime) = (ctx.store.clone(), ctx.job.clone(), runtime.clone());
        let mut after: Option<String> = None;
        Paged::new(failure, move || {
            let page = runtime
                .block_on(store.exported_recordings_page(&job, after.as_deref(), PAGE_ROWS))
                .map_err(store_err)?;
            if let Some(last) = page.last() {
                after = Some(last.recording.recording_id.clone());
            }
            Ok(page.into_iter().map(manifest_recording).collect())
        })
    };
    let problems = |status: &'static str| {
        let (store, job, runtime) = (ctx.store.clone(), ctx.job.clone(), runtime.clone());
        let mut after: Option<String> = None;
        Paged::new(failure, move || {
            let page = runtime
                .block_on(store.problems_page(&job, status, after.as_deref(), PAGE_ROWS))
                .map_err(store_err)?;
            if let Some(last) = page.last() {
                after = Some(last.recording_id.clone());
            }
            Ok(page.into_iter().map(problem).collect())
        })
    };
    (files, recordings, problems("skipped"), problems("dead"))
}

/// A text file of one line per manifest row (in key order, read from the store page by
/// page), then `tail`. Each chunk goes to `copy` (the signer) before the destination
/// sees it; a failure reaches `copy` as an error too, so nothing signs a cut-short
/// text.
fn lines_stream(
    ctx: &JobContext,
    line: impl Fn(&FileRow, &mut String) -> Result<(), StageError> + Send + 'static,
    tail: String,
    copy: Option<tokio::sync::mpsc::Sender<std::io::Result<Bytes>>>,
    failure: &SectionFailure,
) -> crate::destination::ByteStream {
    struct Lines<L> {
        store: pipeline::store::JobStore,
        job: pipeline::JobId,
        cursor: ManifestCursor,
        line: L,
        tail: Option<String>,
        copy: Option<tokio::sync::mpsc::Sender<std::io::Result<Bytes>>>,
        failure: SectionFailure,
        first: bool,
    }
    impl<L: Fn(&FileRow, &mut String) -> Result<(), StageError>> Lines<L> {
        /// The next chunk, and whether another may follow.
        async fn next_chunk(&mut self) -> Result<Option<(String, bool)>, StageError> {
            let (rows, next) = self
                .store
                .manifest_page(&self.job, &self.cursor, PAGE_ROWS)
                .await
                .map_err(store_err)?;
            if rows.is_empty() {
                let tail = self.tail.take().unwrap_or_default();
                // An empty file is still one (empty) chunk: a body, not no body.
                return Ok((self.first || !tail.is_empty()).then_some((tail, false)));
            }
            self.cursor = next;
            let mut chunk = String::with_capacity(rows.len() * 120);
            for row in &rows {
                (self.line)(&row.file, &mut chunk)?;
            }
            Ok(Some((chunk, true)))
        }
    }
    let lines = Lines {
        store: ctx.store.clone(),
        job: ctx.job.clone(),
        cursor: ManifestCursor::default(),
        line,
        tail: Some(tail),
        copy,
        failure: failure.clone(),
        first: true,
    };
    Box::pin(futures::stream::unfold(Some(lines), |lines| async move {
        let mut lines = lines?;
        match lines.next_chunk().await {
            Ok(Some((chunk, more))) => {
                lines.first = false;
                let chunk = Bytes::from(chunk);
                let copied = match &lines.copy {
                    Some(copy) => copy.send(Ok(chunk.clone())).await.is_ok(),
                    None => true,
                };
                if copied {
                    Some((Ok(chunk), more.then_some(lines)))
                } else {
                    let e = StageError::Transient(
                        "the manifest signer stopped; the manifest is written again".into(),
                    );
                    Some((Err(record_failure(&lines.failure, e)), None))
                }
            }
            // Dropping `lines` closes `copy`: the signer has the whole text.
            Ok(None) => None,
            Err(e) => {
                if let Some(copy) = &lines.copy {
                    let _ = copy.send(Err(std::io::Error::other(e.to_string()))).await;
                }
                Some((Err(record_failure(&lines.failure, e)), None))
            }
        }
    }))
}

/// Reads the chunks of [`lines_stream`]'s copy as one text (for minisign, which hashes
/// what it signs from a reader).
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Bytes per chunk of the streamed manifest JSON.
const JSON_CHUNK: usize = 256 * 1024;

/// Renders `doc` as pretty JSON on a blocking thread into a stream of bounded chunks
/// (its [`Paged`] sections read the store as they go). A rendering error ends the
/// stream with an error, so the destination commits nothing. (The caller hashes the
/// stream with [`crate::hash::tee`], as it does every exported file.)
fn json_stream<D: Serialize + Send + Sync + 'static>(
    doc: Arc<D>,
) -> crate::destination::ByteStream {
    struct ChunkSender {
        buf: Vec<u8>,
        tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    }
    impl ChunkSender {
        fn send_chunk(&mut self) -> std::io::Result<()> {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(JSON_CHUNK));
            self.tx.blocking_send(Ok(Bytes::from(chunk))).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the destination stopped reading the manifest",
                )
            })
        }
    }
    impl std::io::Write for ChunkSender {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.buf.extend_from_slice(data);
            if self.buf.len() >= JSON_CHUNK {
                self.send_chunk()?;
            }
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkSender {
            buf: Vec::with_capacity(JSON_CHUNK),
            tx,
        };
        let rendered = serde_json::to_writer_pretty(&mut out, &*doc)
            .map_err(std::io::Error::other)
            .and_then(|()| out.send_chunk());
        if let Err(e) = rendered {
            // Fails only when the destination already stopped reading: it has its own
            // error then.
            let _ = out.tx.blocking_send(Err(e));
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }))
}

pub struct ManifestStage(pub Arc<JobContext>);

impl ManifestStage {
    /// Writes one manifest file at `name` from `body`, hashed on its way by
    /// [`crate::hash::tee`] as every exported file is, and returns where it went and
    /// its SHA-256. A failure of the section that fed the body is reported as itself
    /// (see [`SectionFailure`]); a body the destination did not read to its end is
    /// transient, so the stage writes the manifest again.
    async fn put_streamed(
        &self,
        name: &str,
        body: crate::destination::ByteStream,
        content_type: &str,
        failure: &SectionFailure,
    ) -> Result<(crate::destination::Written, String), StageError> {
        let ctx = &self.0;
        let (body, digest) = crate::hash::tee(body, None);
        let written = ctx.destination.put(name, body, content_type, None).await;
        if let Some(e) = take_failure(failure) {
            return Err(e);
        }
        let written = match written {
            Ok(w) => w,
            Err(e) => return Err(ctx.destination_error(e).await),
        };
        let sha256 = digest
            .result()
            .ok_or_else(|| {
                StageError::Transient(format!(
                    "{name} was not read to its end by the destination; the manifest is written again"
                ))
            })?
            .sha256;
        Ok((written, sha256))
    }

    /// `--layout bagit`: the bag's tag files (RFC 8493), written after the payload and
    /// before the portshift manifests: `manifest-sha256.txt` (payload paths relative to
    /// the bag), `bagit.txt`, `bag-info.txt` (source, job, dates, counts, Payload-Oxum),
    /// `tagmanifest-sha256.txt` over those three, and with a signing key
    /// `tagmanifest-sha256.txt.minisig`, whose trust covers the whole bag.
    async fn write_bag<F, R, P>(
        &self,
        root: &str,
        doc: &ManifestDocumentOf<F, R, P>,
        json_sha: &str,
    ) -> Result<(), StageError> {
        let ctx = &self.0;
        let failure = SectionFailure::default();
        let inside_root = root.to_string();
        let payload_line = move |f: &FileRow, out: &mut String| -> Result<(), StageError> {
            let Some(inside) = f
                .key
                .strip_prefix(inside_root.as_str())
                .filter(|k| k.starts_with("data/"))
            else {
                return Err(StageError::Invalid(format!(
                    "{} is outside the bag's data/ folder",
                    f.key
                )));
            };
            out.push_str(&f.sha256);
            out.push_str("  ");
            out.push_str(inside);
            out.push('\n');
            Ok(())
        };
        let (_, manifest_sha) = self
            .put_streamed(
                &format!("{root}manifest-sha256.txt"),
                lines_stream(ctx, payload_line, String::new(), None, &failure),
                "text/plain; charset=utf-8",
                &failure,
            )
            .await?;
        let bagit = "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n".to_string();
        let one_line = |s: &str| s.replace(['\r', '\n'], " ");
        let info = format!(
            "Source-Organization: {}\n\
             External-Identifier: portshift job {}\n\
             External-Description: Chorus recordings, transcripts and metadata recorded {} to {}, exported by portshift\n\
             Bagging-Date: {}\n\
             Portshift-Exported-At: {}\n\
             Portshift-Source: {}\n\
             Portshift-Recordings: {}\n\
             Portshift-Skipped: {}\n\
             Portshift-Failed: {}\n\
             Payload-Oxum: {}.{}\n",
            one_line(&doc.source),
            doc.job_id,
            doc.filter.from.to_rfc3339(),
            doc.filter.to.to_rfc3339(),
            doc.exported_at.date_naive(),
            doc.exported_at.to_rfc3339(),
            one_line(&doc.source),
            doc.totals.recordings,
            doc.totals.skipped,
            doc.totals.failed,
            doc.totals.bytes,
            doc.totals.files,
        );
        let mut tags = String::new();
        for (name, sha) in [
            ("bagit.txt", hex::encode(Sha256::digest(bagit.as_bytes()))),
            ("bag-info.txt", hex::encode(Sha256::digest(info.as_bytes()))),
            ("manifest-sha256.txt", manifest_sha),
        ] {
            tags.push_str(&format!("{sha}  {name}\n"));
        }
        let signature = match &ctx.signing_key {
            Some(key) => Some(
                key.sign(
                    tags.as_bytes(),
                    &pipeline::signing::trusted_comment(&doc.job_id, &doc.exported_at, json_sha),
                )
                .map_err(|e| StageError::Invalid(e.to_string()))?,
            ),
            None => None,
        };
        let mut writes = vec![
            ("bagit.txt", bagit),
            ("bag-info.txt", info),
            ("tagmanifest-sha256.txt", tags),
        ];
        if let Some(sig) = signature {
            writes.push(("tagmanifest-sha256.txt.minisig", sig));
        }
        for (name, body) in writes {
            if let Err(e) = ctx
                .destination
                .put_bytes(
                    &format!("{root}{name}"),
                    Bytes::from(body),
                    "text/plain; charset=utf-8",
                )
                .await
            {
                return Err(ctx.destination_error(e).await);
            }
        }
        Ok(())
    }

    /// `--verify-after`: reads the manifest and every file back from the destination and
    /// compares them with what was written. A manifest that reads back different is
    /// written again (the stage retries); a file that differs or is missing fails its
    /// recording with the reason and parks the recording's fetch in the dead-letter
    /// stream, so `portshift replay` exports it again.
    async fn verify_after(&self, txt_name: &str, txt_sha: &str) -> Result<(), StageError> {
        let ctx = &self.0;
        let report = match crate::verify::verify_manifest(ctx.destination.as_ref(), txt_name, 8)
            .await
        {
            Ok(r) => r,
            Err(crate::verify::VerifyError::NoManifest { source, .. })
            | Err(crate::verify::VerifyError::Read { source, .. })
                if source.is_refused() =>
            {
                return Err(ctx
                        .blocked(format!(
                            "read-back verification (--verify-after) needs read permission on the destination (docs/permissions.md): {source}"
                        ))
                        .await);
            }
            Err(e) => {
                return Err(StageError::Transient(format!(
                    "read-back verification: {e}"
                )));
            }
        };
        if report.manifest_sha256 != txt_sha {
            return Err(StageError::Transient(format!(
                "read-back verification: {txt_name} reads back different from what was written; writing it again"
            )));
        }
        let bad: Vec<(&str, &str)> = report
            .mismatched
            .iter()
            .map(|p| (p.as_str(), "differs from the manifest"))
            .chain(report.missing.iter().map(|p| (p.as_str(), "is missing")))
            .collect();
        if bad.is_empty() {
            tracing::info!(job = %ctx.job, files = report.checked, "read-back verification passed");
            return Ok(());
        }
        let tag = Utc::now().timestamp_millis().to_string();
        for (path, what) in bad {
            let Some((recording_id, recorded_at)) = ctx
                .store
                .recording_at_key(&ctx.job, path)
                .await
                .map_err(store_err)?
            else {
                continue;
            };
            let reason = format!(
                "read-back verification: {path} {what} (altered or removed at the destination after upload); replay to export it again"
            );
            tracing::warn!(job = %ctx.job, %reason);
            pipeline::replay::park_fetch(
                &ctx.js,
                &pipeline::messages::FetchTask {
                    job: ctx.job.clone(),
                    recording_id: recording_id.clone(),
                    recorded_at,
                },
                &reason,
                &tag,
            )
            .await
            .map_err(|e| StageError::Transient(e.to_string()))?;
            ctx.store
                .mark_unverified(&ctx.job, &recording_id, path, &reason)
                .await
                .map_err(store_err)?;
        }
        Ok(())
    }

    async fn request_notify(&self) -> Result<(), StageError> {
        let ctx = &self.0;
        // The same content digest as the manifest request: a rewritten manifest (new
        // file hashes, same counts) is announced again.
        let signature = ctx.manifest_signature().await?;
        topology::publish_json(
            &ctx.js,
            Stage::Notify.subject(&ctx.job),
            &topology::msg_id(&ctx.job, "notify", &[&signature]),
            &NotifyTask {
                job: ctx.job.clone(),
            },
        )
        .await
        .map_err(publish_err)
    }
}

#[async_trait]
impl StageHandler for ManifestStage {
    type Task = ManifestTask;

    fn stage(&self) -> Stage {
        Stage::Manifest
    }

    async fn handle(&self, _task: ManifestTask) -> Result<(), StageError> {
        let ctx = &self.0;
        let progress = ctx.store.progress(&ctx.job).await.map_err(store_err)?;
        if !progress.settled() {
            // A stale request (e.g. replayed by hand): the last settling will ask again.
            return Ok(());
        }
        // This worker's last counts go out now rather than within a second, so the
        // console's stage totals are whole by the time the job shows as finished.
        ctx.records.publish(&ctx.js).await;
        // Every file is settled: an upload still open is a killed worker's leftover.
        match ctx.destination.abort_left_open().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(job = %ctx.job, aborted = n, "aborted multipart uploads left by earlier workers")
            }
            Err(e) => {
                tracing::warn!(job = %ctx.job, error = %e, "could not abort every leftover multipart upload; a bucket lifecycle rule for incomplete uploads cleans them (docs/permissions.md)")
            }
        }
        if ctx.spec.schedule.is_some() && progress.files == 0 {
            // A scheduled run that found nothing new writes nothing: a schedule running
            // every few minutes must not fill the bucket with empty manifests. The run's
            // history (in the job store) says it ran and found nothing.
            return self.request_notify().await;
        }
        let previous = previous_run_manifest(&ctx.store, &ctx.spec, &ctx.job)
            .await
            .map_err(store_err)?;
        let (txt_name, json_name) = manifest_names(&ctx.spec, &ctx.job);
        let sig_name = pipeline::signing::signature_name(&txt_name);
        let signature = match &ctx.signing_key {
            Some(key) => ManifestSignature {
                signed: true,
                file: Some(sig_name.clone()),
                key_id: Some(key.key_id()),
                public_key: Some(key.public_key_file()),
                note: format!(
                    "{txt_name} is signed with minisign key {}: check it with `minisign -Vm {txt_name} -p portshift-signing-key.pub`; the trusted comment carries this JSON's SHA-256",
                    key.key_id()
                ),
            },
            None => ManifestSignature::unsigned(),
        };
        // No key check here: `SigningKey::from_material` signed and verified a probe
        // when the worker loaded the key, so a damaged key stopped the worker before
        // anything was written, and leaves no half-set behind.
        // Every list is read from the store page by page as it is written (here and in
        // the text below): memory stays flat in the number of recordings.
        let failure = SectionFailure::default();
        let (files, recordings, skipped, failed) = paged_sections(ctx, &failure);
        let doc: Arc<StreamedDocument> = Arc::new(ManifestDocumentOf {
            format: "portshift-manifest/1".into(),
            job_id: ctx.job.to_string(),
            exported_at: Utc::now(),
            source: ctx.spec.chorus_url.clone(),
            destination: ctx.destination.location(),
            filter: ManifestFilter {
                from: ctx.spec.from,
                to: ctx.spec.to,
                kinds: ctx.spec.kinds.clone(),
            },
            totals: ManifestTotals {
                recordings: progress.exported,
                files: progress.files,
                bytes: progress.bytes,
                skipped: progress.skipped,
                failed: progress.dead,
            },
            files,
            recordings,
            skipped,
            failed,
            signature,
            previous_manifest: previous.clone(),
            layout: ctx.spec.options.layout,
            bag: ctx.spec.bag_root(&ctx.job),
        });
        let (_, json_sha) = self
            .put_streamed(
                &json_name,
                json_stream(doc.clone()),
                "application/json",
                &failure,
            )
            .await?;
        if let Some(root) = ctx.spec.bag_root(&ctx.job) {
            self.write_bag(&root, &*doc, &json_sha).await?;
        }
        // The `.txt` manifest: `sha256sum` lines in key order, then the link to the
        // previous run's manifest. The signer reads the very chunks the destination
        // gets, on a thread of its own.
        let tail = previous
            .as_ref()
            .map(|link| format!("{}  {}\n", link.sha256, link.path))
            .unwrap_or_default();
        let (copy, signer) = match &ctx.signing_key {
            Some(key) => {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                let key = key.clone();
                let comment =
                    pipeline::signing::trusted_comment(&doc.job_id, &doc.exported_at, &json_sha);
                let reader = ChunkReader {
                    rx,
                    current: Bytes::new(),
                };
                let signer = tokio::task::spawn_blocking(move || key.sign_reader(reader, &comment));
                (Some(tx), Some(signer))
            }
            None => (None, None),
        };
        let sha256sum_line = |f: &FileRow, out: &mut String| -> Result<(), StageError> {
            out.push_str(&f.sha256);
            out.push_str("  ");
            out.push_str(&f.key);
            out.push('\n');
            Ok(())
        };
        let (written, txt_sha) = self
            .put_streamed(
                &txt_name,
                lines_stream(ctx, sha256sum_line, tail, copy, &failure),
                "text/plain; charset=utf-8",
                &failure,
            )
            .await?;
        if let Some(signer) = signer {
            let signature = signer
                .await
                .map_err(|e| {
                    StageError::Transient(format!(
                        "the manifest signer stopped ({e}); the manifest is written again"
                    ))
                })?
                .map_err(|e| StageError::Invalid(e.to_string()))?;
            if let Err(e) = ctx
                .destination
                .put_bytes(
                    &sig_name,
                    Bytes::from(signature),
                    "text/plain; charset=utf-8",
                )
                .await
            {
                return Err(ctx.destination_error(e).await);
            }
        }
        ctx.store
            .set_manifest(&ctx.job, &written.key, &txt_sha)
            .await
            .map_err(store_err)?;
        if ctx.spec.options.verify_after {
            self.verify_after(&txt_name, &txt_sha).await?;
        }
        self.request_notify().await
    }

    async fn on_dead(&self, _task: Option<ManifestTask>, reason: &str) -> Result<(), StageError> {
        let ctx = &self.0;
        ctx.set_status(
            pipeline::JobStatus::Failed,
            Some(&format!("writing the manifest failed: {reason}")),
        )
        .await
        .map_err(store_err)
    }
}

/// `(file name, pretty JSON)` of the manifest document's schema.
pub fn manifest_schema() -> (&'static str, String) {
    let schema = schemars::schema_for!(ManifestDocument);
    (
        "manifest.schema.json",
        serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n",
    )
}
