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

use crate::{FileKind, JobId};

/// Longest recording id accepted in a message, in bytes. Chorus ids are 32 characters;
/// anything past this is not an id but a broken or hostile payload.
pub const MAX_RECORDING_ID_BYTES: usize = 1024;
/// Longest Chorus continuation key accepted in a list task, in bytes.
pub const MAX_CONTINUATION_KEY_BYTES: usize = 4096;
/// Longest object key accepted in an upload record, in bytes (S3's own limit).
pub const MAX_OBJECT_KEY_BYTES: usize = 1024;

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

/// `portshift.hash.<job>`: one file's digest, published when its streaming pass finished.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HashRecord {
    pub job: JobId,
    #[schemars(length(min = 1, max = 1024))]
    pub recording_id: String,
    pub file: FileKind,
    /// 64 lower-case hex digits.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: String,
    pub bytes: u64,
}

impl Validate for HashRecord {
    fn validate(&self) -> Result<(), InvalidMessage> {
        recording_id(&self.recording_id)?;
        let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if self.sha256.len() != 64 || !self.sha256.bytes().all(hex) {
            return Err(InvalidMessage {
                field: "sha256",
                rule: "must be 64 lower-case hex digits".into(),
            });
        }
        Ok(())
    }
}

/// `portshift.upload.<job>`: one file durably written at its final key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadRecord {
    pub job: JobId,
    #[schemars(length(min = 1, max = 1024))]
    pub recording_id: String,
    pub file: FileKind,
    /// The full object key (prefix included).
    #[schemars(length(min = 1, max = 1024))]
    pub key: String,
    pub bytes: u64,
    pub elapsed_ms: u64,
}

impl Validate for UploadRecord {
    fn validate(&self) -> Result<(), InvalidMessage> {
        recording_id(&self.recording_id)?;
        let key = &self.key;
        let rule = if key.is_empty() {
            Some("must not be empty".to_string())
        } else if key.len() > MAX_OBJECT_KEY_BYTES {
            Some(format!(
                "is {} bytes long; at most {MAX_OBJECT_KEY_BYTES} are accepted",
                key.len()
            ))
        } else if key.starts_with('/')
            || key
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            Some("must be a relative key without empty, '.' or '..' segments".to_string())
        } else if key.chars().any(|c| c.is_control() || c == '\\') {
            Some("must not contain control characters or backslashes".to_string())
        } else {
            None
        };
        match rule {
            Some(rule) => Err(InvalidMessage { field: "key", rule }),
            None => Ok(()),
        }
    }
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
    const SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

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
            r#"{{"job":"{JOB}","recording_id":"A","file":"media","sha256":"{SHA}","bytes":1}}"#
        ))
        .unwrap();
        decode::<UploadRecord>(&format!(
            r#"{{"job":"{JOB}","recording_id":"A","file":"media","key":"p/2024/A.mp4","bytes":1,"elapsed_ms":2}}"#
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
                    r#"{{"job":"{JOB}","recording_id":"A","file":"media","sha256":"{}","bytes":1}}"#,
                    SHA.to_uppercase()
                ))
                .unwrap_err(),
                "sha256: must be 64 lower-case hex digits",
            ),
            (
                decode::<UploadRecord>(&format!(
                    r#"{{"job":"{JOB}","recording_id":"A","file":"media","key":"p/../x","bytes":1,"elapsed_ms":2}}"#
                ))
                .unwrap_err(),
                "key: must be a relative key",
            ),
            (
                decode::<UploadRecord>(&format!(
                    r#"{{"job":"{JOB}","recording_id":"A","file":"media","key":"p/a\\b","bytes":1,"elapsed_ms":2}}"#
                ))
                .unwrap_err(),
                "key: must not contain control characters or backslashes",
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
        let schema = serde_json::to_value(schemars::schema_for!(UploadRecord)).unwrap();
        assert_eq!(
            schema["properties"]["key"]["maxLength"],
            MAX_OBJECT_KEY_BYTES
        );
    }
}
