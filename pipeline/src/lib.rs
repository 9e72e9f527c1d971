//! portshift's core: the job model, the stage messages and their JetStream topology,
//! the stage runner (pull, ack only when durable, nak with backoff, dead-letter), the
//! job store (SQLite or PostgreSQL), secrets and the embedded `nats-server`.
//!
//! This crate knows nothing of Chorus, destinations or the console: stages and the UI
//! depend on it, never the other way round.

pub mod accounts;
pub mod aws_role;
pub mod backoff;
pub mod backup;
pub mod billing;
pub mod config;
pub mod destination_url;
pub mod embedded_nats;
pub mod http_client;
pub mod job;
pub mod keys;
pub mod leases;
pub mod memory;
pub mod messages;
pub mod rate_budget;
pub mod replay;
pub mod retention;
pub mod runner;
pub mod schedules;
pub mod schema;
pub mod secrets;
pub mod shutdown;
pub mod signing;
pub mod store;
pub mod tenancy;
pub mod tls;
pub mod topology;
pub mod worker_process;

pub use job::{ExportKinds, ExportOptions, FileKind, JobId, JobSpec, JobStatus, Layout};

pub use job::{Trust, TrustLevel};
