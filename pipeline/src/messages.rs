//! The stage messages: small JSON documents, never file bytes. Their JSON Schemas are
//! generated into `schemas/` (see `schema`) and are a stable contract for operators who
//! replay messages with the NATS CLI.
//!
//! Parsing (serde, `deny_unknown_fields`) checks the shape; [`Validate`] checks what a
//! shape cannot say (an empty or absurdly long id, a digest that is not 64 hex digits).
//! The runner dead-letters a payload that fails either, with the error as its reason, so
//! the limits here are part of the contract and are mirrored in the JSON Schemas.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::JobId;

/// Longest recording id accepted in a message, in bytes. Chorus ids are 32 characters;
/// anything past this is not an id but a broken or hostile payload.
pub const MAX_RECORDING_ID_BYTES: usize = 1024;
/// Longest Chorus continuation key accepted in a list task, in bytes.
pub const MAX_CONTINUATION_KEY_BYTES: usize = 4096;

/// Why a message that parsed is still not acceptable. The text names the field and the
/// rule, never the value (a recording id can be long or hostile).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct InvalidMessage {
    pub field: &'static str,
    pub rule: String,
}

/// The checks a message must pass after it parsed.
pub trait Validate {
    fn validate(&self) -> Result<(), InvalidMessage>;
}

fn recording_id(id: &str) -> Result<(), InvalidMessage> {
    if id.is_empty() {
        return Err(InvalidMessage {
            field: "recording_id",
            rule: "must not be empty".into(),
        });
    }
    if id.len() > MAX_RECORDING_ID_BYTES {
        return Err(InvalidMessage {
            field: "recording_id",
            rule: format!(
                "is {} bytes long; at most {MAX_RECORDING_ID_BYTES} are accepted",
                id.len()
            ),
        });
    }
    Ok(())
}

/// `portshift.list.<job>`: list one page of the job's engagement listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListTask {
    pub job: JobId,
    /// 0 for the first page.
    pub page: u32,
    /// Chorus's cursor for this page; absent on the first page.
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub continuation_key: Option<String>,
}

impl Validate for ListTask {
    fn validate(&self) -> Result<(), InvalidMessage> {
        match &self.continuation_key {
            Some(key) if key.len() > MAX_CONTINUATION_KEY_BYTES => Err(InvalidMessage {
                field: "continuation_key",
                rule: format!(
                    "is {} bytes long; at most {MAX_CONTINUATION_KEY_BYTES} are accepted",
                    key.len()
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// `portshift.fetch.<job>`: export one recording's files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchTask {
    pub job: JobId,
    #[schemars(length(min = 1, max = 1024))]
    pub recording_id: String,
    /// Engagement time, epoch seconds (decides the key's date folders).
    #[serde(default)]
    pub recorded_at: Option<i64>,
}

impl Validate for FetchTask {
    fn validate(&self) -> Result<(), InvalidMessage> {
        recording_id(&self.recording_id)
    }
}

/// Longest worker id accepted in a hash or upload record, in bytes (portshift's own are
/// 32 hex digits).
pub const MAX_WORKER_ID_BYTES: usize = 64;

/// `portshift.hash.<job>`: what one worker hashed since its previous hash record, one
/// record a second at most (see `RECORD_EVERY` in the stages crate). Counts, not a record
/// per file: each file's SHA-256 is in the job store and the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HashRecord {
    pub job: JobId,
    /// The publishing worker's id (random, one per worker run).
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[0-9A-Za-z_-]+$"))]
    pub worker: String,
    /// This worker's record number for the job, from 1: the msg-id's last part.
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// Files whose streaming pass (hash and upload) finished in the interval.
    #[schemars(range(min = 1))]
    pub files: u64,
    pub bytes: u64,
}

impl Validate for HashRecord {
    fn validate(&self) -> Result<(), InvalidMessage> {
        record_source(&self.worker, self.seq, self.files)
    }
}

/// `portshift.upload.<job>`: what one worker durably wrote at final keys since its
/// previous upload record (published together with the hash record of the same
/// interval), with the time those writes took, summed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadRecord {
    pub job: JobId,
    /// The publishing worker's id (random, one per worker run).
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[0-9A-Za-z_-]+$"))]
    pub worker: String,
    /// This worker's record number for the job, from 1: the msg-id's last part.
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// Files written in the interval.
    #[schemars(range(min = 1))]
    pub files: u64,
    pub bytes: u64,
    /// The files' upload times added up (with parallel transfers, more than the interval).
    pub elapsed_ms: u64,
}

impl Validate for UploadRecord {
    fn validate(&self) -> Result<(), InvalidMessage> {
        record_source(&self.worker, self.seq, self.files)
    }
}

/// The checks both records share: a usable worker id (it goes into the msg-id), a
/// sequence number and at least one file (an empty interval publishes nothing).
fn record_source(worker: &str, seq: u64, files: u64) -> Result<(), InvalidMessage> {
    let fail = |field, rule: &str| {
        Err(InvalidMessage {
            field,
            rule: rule.into(),
        })
    };
    if worker.is_empty()
        || worker.len() > MAX_WORKER_ID_BYTES
        || !worker
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return fail("worker", "must be 1 to 64 letters, digits, '-' or '_'");
    }
    if seq == 0 {
        return fail("seq", "must be at least 1");
    }
    if files == 0 {
        return fail(
            "files",
            "must be at least 1 (an empty interval is not published)",
        );
    }
    Ok(())
}

/// `portshift.manifest.<job>`: every recording is settled; write the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManifestTask {
    pub job: JobId,
}

impl Validate for ManifestTask {
    fn validate(&self) -> Result<(), InvalidMessage> {
        Ok(())
    }
}

/// `portshift.notify.<job>`: the manifest is written; notify and finish the job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyTask {
    pub job: JobId,
}

impl Validate for NotifyTask {
    fn validate(&self) -> Result<(), InvalidMessage> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;

    const JOB: &str = "0123456789abcdef0123456789abcdef";
    const WORKER: &str = "5f0c2b3a9d8e4f6a8b7c6d5e4f3a2b1c";

    fn decode<T: DeserializeOwned + Validate>(json: &str) -> Result<T, String> {
        let t: T = serde_json::from_str(json).map_err(|e| format!("parse: {e}"))?;
        t.validate().map_err(|e| format!("validate: {e}"))?;
        Ok(t)
    }

    #[test]
    fn good_messages_pass() {
        decode::<ListTask>(&format!(r#"{{"job":"{JOB}","page":0}}"#)).unwrap();
        decode::<FetchTask>(&format!(r#"{{"job":"{JOB}","recording_id":"A"}}"#)).unwrap();
        decode::<HashRecord>(&format!(
            r#"{{"job":"{JOB}","worker":"{WORKER}","seq":1,"files":3,"bytes":0}}"#
        ))
        .unwrap();
        decode::<UploadRecord>(&format!(
            r#"{{"job":"{JOB}","worker":"{WORKER}","seq":7,"files":1,"bytes":1,"elapsed_ms":2}}"#
        ))
        .unwrap();
        decode::<ManifestTask>(&format!(r#"{{"job":"{JOB}"}}"#)).unwrap();
        decode::<NotifyTask>(&format!(r#"{{"job":"{JOB}"}}"#)).unwrap();
    }

    #[test]
    fn validation_names_the_field_and_rule_but_not_the_value() {
        let long = "v".repeat(MAX_RECORDING_ID_BYTES + 1);
        let cases: Vec<(String, &str)> = vec![
            (
                decode::<FetchTask>(&format!(r#"{{"job":"{JOB}","recording_id":""}}"#))
                    .unwrap_err(),
                "recording_id: must not be empty",
            ),
            (
                decode::<FetchTask>(&format!(r#"{{"job":"{JOB}","recording_id":"{long}"}}"#))
                    .unwrap_err(),
                "recording_id: is 1025 bytes long",
            ),
            (
                decode::<ListTask>(&format!(
                    r#"{{"job":"{JOB}","page":1,"continuation_key":"{}"}}"#,
                    "k".repeat(MAX_CONTINUATION_KEY_BYTES + 1)
                ))
                .unwrap_err(),
                "continuation_key: is 4097 bytes long",
            ),
            (
                decode::<HashRecord>(&format!(
                    r#"{{"job":"{JOB}","worker":"a.b","seq":1,"files":1,"bytes":1}}"#
                ))
                .unwrap_err(),
                "worker: must be 1 to 64 letters",
            ),
            (
                decode::<HashRecord>(&format!(
                    r#"{{"job":"{JOB}","worker":"{}","seq":1,"files":1,"bytes":1}}"#,
                    "v".repeat(MAX_WORKER_ID_BYTES + 1)
                ))
                .unwrap_err(),
                "worker: must be 1 to 64 letters",
            ),
            (
                decode::<UploadRecord>(&format!(
                    r#"{{"job":"{JOB}","worker":"{WORKER}","seq":0,"files":1,"bytes":1,"elapsed_ms":2}}"#
                ))
                .unwrap_err(),
                "seq: must be at least 1",
            ),
            (
                decode::<UploadRecord>(&format!(
                    r#"{{"job":"{JOB}","worker":"{WORKER}","seq":1,"files":0,"bytes":0,"elapsed_ms":0}}"#
                ))
                .unwrap_err(),
                "files: must be at least 1",
            ),
        ];
        for (err, want) in cases {
            assert!(err.starts_with("validate: "), "{err}");
            assert!(err.contains(want), "{err} does not say {want}");
            assert!(!err.contains("vvvv") && !err.contains("kkkk"), "{err}");
        }
    }

    #[test]
    fn schema_limits_match_the_validation_constants() {
        let schema = serde_json::to_value(schemars::schema_for!(FetchTask)).unwrap();
        assert_eq!(
            schema["properties"]["recording_id"]["maxLength"],
            MAX_RECORDING_ID_BYTES
        );
        let schema = serde_json::to_value(schemars::schema_for!(ListTask)).unwrap();
        assert_eq!(
            schema["properties"]["continuation_key"]["maxLength"],
            MAX_CONTINUATION_KEY_BYTES
        );
        for schema in [
            serde_json::to_value(schemars::schema_for!(HashRecord)).unwrap(),
            serde_json::to_value(schemars::schema_for!(UploadRecord)).unwrap(),
        ] {
            assert_eq!(
                schema["properties"]["worker"]["maxLength"],
                MAX_WORKER_ID_BYTES
            );
        }
    }
}
