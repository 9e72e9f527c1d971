//! Dev-only helpers shared by portshift's test crates (the binary's `tests/`,
//! `pipeline/tests`, `stages/tests`, `ui/tests`), so each helper is written once: the
//! variables the local servers export, buckets and containers on those servers, fresh
//! PostgreSQL databases, loopback HTTP servers, searching files on disk, child processes
//! (found in /proc, stopped the way systemd stops them), stored-only jobs, organisations
//! with members and schedules, and an organisation on a paid plan.
//!
//! Nothing here starts the `portshift` binary: `env!("CARGO_BIN_EXE_portshift")` exists
//! only in the binary's own tests, whose `tests/common` starts it and re-exports this
//! crate. This crate depends on `pipeline` alone, so it can serve `stages` and `ui` too,
//! and `pipeline`'s own integration tests (never its unit tests, whose `pipeline` is
//! another build of the crate).

pub mod cloud;
pub mod files;
pub mod http;
pub mod jobs;
pub mod orgs;
pub mod plans;
pub mod postgres;
pub mod process;
pub mod s3;

/// The value of a variable the local servers' start script exports; a test without it
/// fails saying how to get it (it is never skipped).
pub fn env_or_fail(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite with scripts/test, or source .data/services.env (deploy/local/start.sh starts the local servers and exports it)")
    })
}
