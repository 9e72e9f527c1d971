//! portshift's stages and the things they talk to.
//!
//! - `list`, `fetch` (with the in-stream `hash` tee and the destination upload),
//!   `manifest`, `notify`: one module per stage, each a [`pipeline::runner::StageHandler`];
//! - `worker`: runs all stages of one job until it reaches a final state;
//! - `chorus`: the Chorus API client and its simulator;
//! - `destination`: local folder, S3, Azure Blob and GCS behind one trait;
//! - `bigquery`: the optional metadata sink (one row per exported recording);
//! - `gcp_auth`: Google access tokens (service-account key or keyless) for GCS and BigQuery;
//! - `http`: the one place outbound HTTP clients are built (rustls, validation on);
//! - `upload_journal`: the job store noting open multipart uploads (killed workers');
//! - `scheduler`: due schedule runs, each in its own `portshift worker` process;
//! - `aws_role`: STS AssumeRole and Secrets Manager reads for cross-account roles;
//! - `metrics`: `/metrics` for workers and the scheduler (`--metrics-addr`).

pub mod aws_role;
pub mod bigquery;
pub mod chorus;
pub mod context;
pub mod destination;
pub mod fetch;
pub mod gcp_auth;
pub mod hash;
pub mod http;
pub mod list;
pub mod manifest;
pub mod metrics;
pub mod notify;
pub mod records;
pub mod scheduler;
pub mod upload_journal;
pub mod verify;
pub mod worker;
