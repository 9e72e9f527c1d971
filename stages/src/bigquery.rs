//! The optional BigQuery metadata sink, with `gcp-bigquery-client`: one row per exported
//! recording (ids, times, duration, participants' count, each file's key, size and
//! SHA-256, the job id), streamed with `tabledata.insertAll` and `insertId` = the
//! recording id, so a redelivered recording does not add a second row (BigQuery drops
//! rows whose insertId it saw in the last minute or so; the `(job_id, recording_id)`
//! pair identifies a row for anything longer). The dataset and table are created if
//! missing, with the schema documented in `docs/bigquery.md`.
//!
//! It is asked for by options on the destination URL
//! (`&bigquery=project.dataset.table[&bigquery_endpoint=..]`) and authenticates like
//! the GCS destination (service-account key or keyless), through our own HTTP client
//! (rustls, certificate validation always on, optional extra CA bundle).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gcp_bigquery_client::Client;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::dataset::Dataset;
use gcp_bigquery_client::model::table::Table;
use gcp_bigquery_client::model::table_data_insert_all_request::TableDataInsertAllRequest;
use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use gcp_bigquery_client::model::table_schema::TableSchema;
use pipeline::FileKind;
use pipeline::store::FileRow;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::sync::OnceCell;

use crate::destination::url::BigQueryUrl;
use crate::gcp_auth::{GcpAuthError, SCOPE_BIGQUERY, TokenSource};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Retrying cannot help: credentials, permissions, a table of another shape.
    #[error("BigQuery {table}: {detail}")]
    Refused { table: String, detail: String },
    #[error("BigQuery {table}: {detail}")]
    Transient { table: String, detail: String },
}

/// One row of the metadata table (see `docs/bigquery.md`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RecordingRow {
    pub job_id: String,
    pub recording_id: String,
    pub recorded_at: Option<String>,
    pub duration_s: Option<f64>,
    pub participants: Option<i64>,
    pub exported_at: String,
    pub media_key: Option<String>,
    pub media_sha256: Option<String>,
    pub media_bytes: Option<i64>,
    pub transcript_key: Option<String>,
    pub transcript_sha256: Option<String>,
    pub transcript_bytes: Option<i64>,
    pub metadata_key: Option<String>,
    pub metadata_sha256: Option<String>,
    pub metadata_bytes: Option<i64>,
}

impl RecordingRow {
    /// The row for a recording from its files and its Chorus conversation document.
    pub fn new(
        job_id: &str,
        recording_id: &str,
        recorded_at: Option<i64>,
        conversation: &serde_json::Value,
        files: &[FileRow],
    ) -> Self {
        // The Chorus client hands back the conversation's `data` object; accept the
        // whole response document too.
        let attributes = conversation
            .pointer("/attributes")
            .or_else(|| conversation.pointer("/data/attributes"))
            .unwrap_or(conversation);
        let duration_s = attributes
            .pointer("/recording/duration")
            .and_then(serde_json::Value::as_f64);
        let participants = attributes
            .get("participants")
            .and_then(serde_json::Value::as_array)
            .map(|p| p.len() as i64);
        let ts = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string();
        let mut row = RecordingRow {
            job_id: job_id.to_string(),
            recording_id: recording_id.to_string(),
            recorded_at: recorded_at
                .and_then(|s| DateTime::from_timestamp(s, 0))
                .map(ts),
            duration_s,
            participants,
            exported_at: ts(Utc::now()),
            media_key: None,
            media_sha256: None,
            media_bytes: None,
            transcript_key: None,
            transcript_sha256: None,
            transcript_bytes: None,
            metadata_key: None,
            metadata_sha256: None,
            metadata_bytes: None,
        };
        for f in files {
            let (key, sha, bytes) = match f.file {
                FileKind::Media => (
                    &mut row.media_key,
                    &mut row.media_sha256,
                    &mut row.media_bytes,
                ),
                FileKind::Transcript => (
                    &mut row.transcript_key,
                    &mut row.transcript_sha256,
                    &mut row.transcript_bytes,
                ),
                FileKind::Metadata => (
                    &mut row.metadata_key,
                    &mut row.metadata_sha256,
                    &mut row.metadata_bytes,
                ),
            };
            *key = Some(f.key.clone());
            *sha = Some(f.sha256.clone());
            *bytes = Some(f.bytes as i64);
        }
        row
    }
}

/// The table's schema: every column of [`RecordingRow`], in order.
pub fn schema() -> TableSchema {
    let required = |mut f: TableFieldSchema| {
        f.mode = Some("REQUIRED".into());
        f
    };
    TableSchema::new(vec![
        required(TableFieldSchema::string("job_id")),
        required(TableFieldSchema::string("recording_id")),
        TableFieldSchema::timestamp("recorded_at"),
        TableFieldSchema::float("duration_s"),
        TableFieldSchema::integer("participants"),
        required(TableFieldSchema::timestamp("exported_at")),
        TableFieldSchema::string("media_key"),
        TableFieldSchema::string("media_sha256"),
        TableFieldSchema::integer("media_bytes"),
        TableFieldSchema::string("transcript_key"),
        TableFieldSchema::string("transcript_sha256"),
        TableFieldSchema::integer("transcript_bytes"),
        TableFieldSchema::string("metadata_key"),
        TableFieldSchema::string("metadata_sha256"),
        TableFieldSchema::integer("metadata_bytes"),
    ])
}

/// Our token source as the client's authenticator.
#[derive(Clone)]
struct Tokens(TokenSource);

#[async_trait]
impl Authenticator for Tokens {
    async fn access_token(&self) -> Result<String, BQError> {
        let token: SecretString = self.0.token().await.map_err(|e| {
            BQError::InvalidServiceAccountAuthenticator(std::io::Error::other(e.to_string()))
        })?;
        Ok(token.expose_secret().to_string())
    }
}

pub struct BigQuerySink {
    client: Client,
    target: BigQueryUrl,
    name: String,
    ready: OnceCell<()>,
}

impl BigQuerySink {
    pub async fn connect(
        target: &BigQueryUrl,
        credentials: Option<&pipeline::secrets::GcsCredentials>,
        extra_ca_file: Option<&Path>,
        egress: &crate::http::Egress,
    ) -> Result<Self, SinkError> {
        let name = format!("{}.{}.{}", target.project, target.dataset, target.table);
        let refused = |detail: String| SinkError::Refused {
            table: name.clone(),
            detail,
        };
        let tokens = TokenSource::resolve(
            credentials.map(|c| &c.service_account_json),
            SCOPE_BIGQUERY,
            extra_ca_file,
            egress,
        )
        .map_err(|e: GcpAuthError| refused(e.to_string()))?;
        if let Some(ep) = &target.endpoint {
            let ep = url::Url::parse(ep)
                .map_err(|e| refused(format!("the BigQuery endpoint is not a URL: {e}")))?;
            egress
                .check_url("BigQuery endpoint", &ep)
                .map_err(|e| refused(e.to_string()))?;
        }
        let http = crate::http::no_redirect_client(extra_ca_file, egress)
            .map_err(|e| refused(e.to_string()))?;
        let mut builder = gcp_bigquery_client::client_builder::ClientBuilder::new();
        builder.with_client(http);
        if let Some(ep) = &target.endpoint {
            builder.with_v2_base_url(ep.clone());
        }
        let client = builder
            .build_from_authenticator(Arc::new(Tokens(tokens)))
            .await
            .map_err(|e| refused(e.to_string()))?;
        Ok(Self {
            client,
            target: target.clone(),
            name,
            ready: OnceCell::new(),
        })
    }

    pub fn table_name(&self) -> &str {
        &self.name
    }

    fn error(&self, what: &str, e: BQError) -> SinkError {
        let table = self.name.clone();
        match &e {
            BQError::ResponseError { error } => {
                let code = error.error.code;
                let detail = format!(
                    "{what} failed with HTTP {code} {}",
                    error.error.message.chars().take(300).collect::<String>()
                );
                match code {
                    401 | 403 => SinkError::Refused {
                        table,
                        detail: format!(
                            "{detail}: the service account needs roles/bigquery.dataEditor on the dataset (and bigquery.datasets.create on the project if the dataset is to be created); see docs/permissions.md"
                        ),
                    },
                    400 => SinkError::Refused {
                        table,
                        detail: format!(
                            "{detail}: the table's schema may differ from portshift's (docs/bigquery.md); use a new table name or fix its columns"
                        ),
                    },
                    _ => SinkError::Transient { table, detail },
                }
            }
            BQError::InvalidServiceAccountAuthenticator(inner) => SinkError::Refused {
                table,
                detail: inner.to_string(),
            },
            _ => SinkError::Transient {
                table,
                detail: format!("{what} failed: {e}"),
            },
        }
    }

    fn is_not_found(e: &BQError) -> bool {
        matches!(e, BQError::ResponseError { error } if error.error.code == 404)
    }

    fn is_conflict(e: &BQError) -> bool {
        matches!(e, BQError::ResponseError { error } if error.error.code == 409)
    }

    /// Creates the dataset and the table if they do not exist (once per worker).
    async fn ensure_table(&self) -> Result<(), SinkError> {
        self.ready
            .get_or_try_init(|| async {
                let t = &self.target;
                match self.client.dataset().get(&t.project, &t.dataset).await {
                    Ok(_) => {}
                    Err(e) if Self::is_not_found(&e) => {
                        match self
                            .client
                            .dataset()
                            .create(Dataset::new(&t.project, &t.dataset))
                            .await
                        {
                            Ok(_) => {}
                            Err(e) if Self::is_conflict(&e) => {}
                            Err(e) => return Err(self.error("creating the dataset", e)),
                        }
                    }
                    Err(e) => return Err(self.error("reading the dataset", e)),
                }
                match self
                    .client
                    .table()
                    .get(&t.project, &t.dataset, &t.table, None)
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) if Self::is_not_found(&e) => {
                        let table = Table::new(&t.project, &t.dataset, &t.table, schema())
                            .description("Chorus recordings exported by portshift: one row per recording (docs/bigquery.md)");
                        match self.client.table().create(table).await {
                            Ok(_) => Ok(()),
                            Err(e) if Self::is_conflict(&e) => Ok(()),
                            Err(e) => Err(self.error("creating the table", e)),
                        }
                    }
                    Err(e) => Err(self.error("reading the table", e)),
                }
            })
            .await
            .map(|_| ())
    }

    /// Streams one recording's row (`insertId` = recording id).
    pub async fn insert(&self, row: &RecordingRow) -> Result<(), SinkError> {
        self.ensure_table().await?;
        let t = &self.target;
        let mut request = TableDataInsertAllRequest::new();
        request
            .add_row(Some(row.recording_id.clone()), row)
            .map_err(|e| self.error("encoding the row", e))?;
        let response = self
            .client
            .tabledata()
            .insert_all(&t.project, &t.dataset, &t.table, request)
            .await
            .map_err(|e| self.error("insertAll", e))?;
        if let Some(errors) = response.insert_errors.filter(|e| !e.is_empty()) {
            let reasons: Vec<String> = errors
                .iter()
                .flat_map(|e| e.errors.iter().flatten())
                .map(|p| {
                    format!(
                        "{} {}",
                        p.reason.clone().unwrap_or_default(),
                        p.message.clone().unwrap_or_default()
                    )
                })
                .take(3)
                .collect();
            return Err(SinkError::Refused {
                table: self.name.clone(),
                detail: format!(
                    "the row for {} was rejected: {}; the table's schema must match docs/bigquery.md",
                    row.recording_id,
                    reasons.join("; ")
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_takes_facts_and_files() {
        let conv = serde_json::json!({"attributes": {
            "participants": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
            "recording": {"duration": 61.5}
        }});
        let files = vec![FileRow {
            recording_id: "r1".into(),
            file: FileKind::Media,
            key: "2024/01/02/r1/r1.mp4".into(),
            bytes: 42,
            sha256: "ab".repeat(32),
            content_type: "video/mp4".into(),
        }];
        let whole = serde_json::json!({"data": conv.clone()});
        assert_eq!(
            RecordingRow::new("j", "r1", None, &whole, &[]).participants,
            Some(3)
        );
        let row = RecordingRow::new("job-1", "r1", Some(1_704_153_600), &conv, &files);
        assert_eq!(row.participants, Some(3));
        assert_eq!(row.duration_s, Some(61.5));
        assert_eq!(row.media_bytes, Some(42));
        assert_eq!(row.transcript_key, None);
        assert_eq!(
            row.recorded_at.as_deref(),
            Some("2024-01-02 00:00:00.000000 UTC")
        );
        let names: Vec<String> = schema()
            .fields()
            .clone()
            .unwrap()
            .iter()
            .map(|f| f.name.clone())
            .collect();
        let serialized = serde_json::to_value(&row).unwrap();
        let keys: Vec<&String> = serialized.as_object().unwrap().keys().collect();
        assert_eq!(names.len(), keys.len());
        for n in &names {
            assert!(serialized.get(n).is_some(), "column {n} is not in the row");
        }
    }
}
