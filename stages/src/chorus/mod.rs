//! Chorus: the typed API client the list and fetch stages use, the serde model of its
//! answers, and a simulator (with its deterministic synthetic dataset) for demos and tests.
//!
//! The API contract these follow is summarised in `shared/reference/chorus-api.md`:
//! raw-token `Authorization`, `/v3/engagements` paged by `continuation_key`,
//! `/api/v1/conversations/{id}` (JSON:API) and `/api/v1/conversations/{id}/media`
//! (a redirect to a storage host that must never see the token).

pub mod client;
pub mod model;
pub mod sim;
pub mod synth;

pub use client::{
    ChorusClient, ChorusConfig, ChorusError, EngagementFilter, MAX_JSON_BYTES, MediaStream,
    extension_for,
};
pub use model::{Engagement, EngagementPage, Participant};
pub use sim::{Faults, SimConfig, SimHandle, SimStats, SimStatsSnapshot};
pub use synth::{
    Dataset, Knobs, MEDIA_MARKER, MediaSizes, SynthRecording, fill_media, media_sha256,
};

/// Conversation fields exported as the metadata file (everything but the transcript,
/// which is its own file).
pub const METADATA_FIELDS: &[&str] = &[
    "name",
    "owner",
    "participants",
    "account",
    "deal",
    "language",
    "metrics",
    "status",
    "recording.start_time",
    "recording.duration",
    "recording.trackers",
    "_created_at",
    "_modified_at",
];
