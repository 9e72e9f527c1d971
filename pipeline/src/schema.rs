//! JSON Schemas of the stage messages, generated from the Rust types. `schemas/` holds
//! the committed copies; a test regenerates them and fails on drift.

use schemars::schema_for;

use crate::messages::*;

/// `(file name, pretty JSON)` for every message schema this crate owns.
pub fn message_schemas() -> Vec<(&'static str, String)> {
    let pretty = |v: schemars::Schema| serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
    vec![
        ("list-task.schema.json", pretty(schema_for!(ListTask))),
        ("fetch-task.schema.json", pretty(schema_for!(FetchTask))),
        ("hash-record.schema.json", pretty(schema_for!(HashRecord))),
        (
            "upload-record.schema.json",
            pretty(schema_for!(UploadRecord)),
        ),
        (
            "manifest-task.schema.json",
            pretty(schema_for!(ManifestTask)),
        ),
        ("notify-task.schema.json", pretty(schema_for!(NotifyTask))),
    ]
}
