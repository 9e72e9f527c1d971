//! Serde types of the Chorus API responses the exporter reads: the `/v3/engagements`
//! page and its engagements. Every field but the id is optional and unknown fields are
//! kept (`extra`), so the metadata file we export carries everything Chorus sent.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One engagement (call, meeting, e-mail, ...) as listed by `GET /v3/engagements`.
///
/// Ids of users and people (`user_id`, `person_id`, `account_id`) are kept as raw JSON
/// values: the spec's example mixes integers and strings for them, and the exporter
/// only copies them into the metadata file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Engagement {
    /// Opaque id (usually 32 upper-case hex characters); also the v1 conversation id.
    pub engagement_id: String,
    /// `meeting`, `dialer`, `email`, `content_viewed`, `unrecorded_meeting`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engagement_type: Option<String>,
    /// Start of the engagement, epoch seconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "whole_seconds"
    )]
    pub date_time: Option<f64>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `done` once the recording is processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default)]
    pub participants: Vec<Participant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opportunity_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opportunity_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<String>,
    /// Everything else Chorus sent (trackers, dispositions, question counts, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Writes a whole number of seconds as an integer (`1632490362`, as Chorus sends it)
/// rather than `1632490362.0`, so the exported metadata matches the source.
fn whole_seconds<S: serde::Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match *value {
        Some(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => s.serialize_i64(v as i64),
        Some(v) => s.serialize_f64(v),
        None => s.serialize_none(),
    }
}

/// A participant of an engagement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Participant {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `rep` or `prospect`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub participant_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One page of `GET /v3/engagements`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngagementPage {
    #[serde(default)]
    pub continuation_key: Option<String>,
    #[serde(default)]
    pub engagements: Vec<Engagement>,
}

impl EngagementPage {
    /// The key to ask for the next page with, or `None` when the listing is complete.
    ///
    /// Chorus does not document how the last page is signalled (a final key of `" "`
    /// has been reported), so this stops on a missing or blank key, on a key equal to
    /// `previous` (never loop on a key already used) and on an empty page.
    pub fn next_key(&self, previous: Option<&str>) -> Option<String> {
        if self.engagements.is_empty() {
            return None;
        }
        let key = self.continuation_key.as_deref()?;
        if key.trim().is_empty() || Some(key) == previous {
            return None;
        }
        Some(key.to_owned())
    }
}

impl Engagement {
    /// Whether this engagement has media to export: a meeting or dialer call (or no
    /// type given) whose processing is done (or not stated). E-mails, page views,
    /// unrecorded meetings and calls still processing have none.
    pub fn has_recording(&self) -> bool {
        let recorded_type = matches!(
            self.engagement_type.as_deref(),
            None | Some("meeting") | Some("dialer")
        );
        let processed = matches!(self.processing_state.as_deref(), None | Some("done"));
        recorded_type && processed
    }

    /// When the engagement took place (`date_time`, epoch seconds), if given and sane.
    pub fn recorded_at(&self) -> Option<DateTime<Utc>> {
        let secs = self.date_time?;
        if !secs.is_finite() {
            return None;
        }
        let whole = secs.floor();
        // Out-of-range values (far beyond year 262143) give None rather than wrapping.
        if whole < i64::MIN as f64 || whole > i64::MAX as f64 {
            return None;
        }
        let nanos = ((secs - whole) * 1e9).round().clamp(0.0, 999_999_999.0) as u32;
        DateTime::from_timestamp(whole as i64, nanos)
    }
}

/// Parses an engagements page, reporting where a mismatch is (`engagements[3].date_time:
/// invalid type: ...`) so a Chorus API change is easy to diagnose.
pub fn parse_engagement_page(body: &[u8]) -> Result<EngagementPage, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut top) = value else {
        return Err(format!("expected a JSON object, found {}", kind(&value)));
    };
    let continuation_key = match top.remove("continuation_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(key)) => Some(key),
        Some(other) => {
            return Err(format!(
                "continuation_key: expected a string, found {}",
                kind(&other)
            ));
        }
    };
    let items = match top.remove("engagements") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(format!(
                "engagements: expected an array, found {}",
                kind(&other)
            ));
        }
    };
    let mut engagements = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        engagements.push(parse_engagement(item).map_err(|e| format!("engagements[{i}]{e}"))?);
    }
    Ok(EngagementPage {
        continuation_key,
        engagements,
    })
}

/// A conversation's `_modified_at` (its `data` member, as `parse_conversation` returns
/// it), verbatim and at most 64 characters; `None` when absent or not a string.
pub fn modified_at(data: &Value) -> Option<String> {
    data.pointer("/attributes/_modified_at")
        .and_then(Value::as_str)
        .map(|s| s.chars().take(64).collect())
}

/// Checks a `GET /api/v1/conversations/{id}` answer and returns its `data` object: the
/// body must be a JSON:API document (an object) whose `data` is an object with `id`
/// equal to `expected_id` and an `attributes` object. The error says what is wrong
/// without quoting values (they may be personal).
pub fn parse_conversation(body: &[u8], expected_id: &str) -> Result<Value, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut doc) = doc else {
        return Err(format!(
            "expected a JSON:API document (an object), found {}",
            kind(&doc)
        ));
    };
    let data = match doc.remove("data") {
        Some(data @ Value::Object(_)) => data,
        Some(other) => return Err(format!("`data` must be an object, found {}", kind(&other))),
        None => return Err("the document has no `data` member".into()),
    };
    match data.get("id") {
        Some(Value::String(got)) if got == expected_id => {}
        Some(Value::String(_)) => return Err("`data.id` names a different conversation".into()),
        Some(other) => return Err(format!("`data.id` must be a string, found {}", kind(other))),
        None => return Err("`data` has no `id`".into()),
    }
    match data.get("attributes") {
        Some(Value::Object(_)) => Ok(data),
        Some(other) => Err(format!(
            "`data.attributes` must be an object, found {}",
            kind(other)
        )),
        None => Err("`data` has no `attributes`".into()),
    }
}

/// Parses one engagement; the error starts with the path below the engagement
/// (`.participants[0].email: ...`) or with `: ` when the engagement itself is wrong.
fn parse_engagement(item: Value) -> Result<Engagement, String> {
    let Value::Object(obj) = &item else {
        return Err(format!(": expected an object, found {}", kind(&item)));
    };
    match obj.get("engagement_id") {
        Some(Value::String(_)) => {}
        None => return Err(": missing field `engagement_id`".to_owned()),
        Some(other) => {
            return Err(format!(
                ".engagement_id: expected a string, found {}",
                kind(other)
            ));
        }
    }
    if let Some(Value::Array(participants)) = obj.get("participants") {
        for (j, p) in participants.iter().enumerate() {
            if let Err(e) = Participant::deserialize(p) {
                let field = match p {
                    Value::Object(fields) => culprit::<Participant>(fields, &Map::new()),
                    _ => None,
                };
                return Err(match field {
                    Some((f, v)) => format!(".participants[{j}].{f}: {}", describe(&e, v)),
                    None => format!(".participants[{j}]: {}", describe(&e, p)),
                });
            }
        }
    }
    Engagement::deserialize(&item).map_err(|e| {
        let mut base = Map::new();
        base.insert("engagement_id".to_owned(), Value::String(String::new()));
        match culprit::<Engagement>(obj, &base) {
            Some((f, v)) => format!(".{f}: {}", describe(&e, v)),
            None => format!(": {}", describe(&e, &item)),
        }
    })
}

/// serde's message without the offending value: serde quotes strings verbatim, and an
/// engagement's strings are names and e-mail addresses that must not reach the logs.
fn describe(err: &serde_json::Error, value: &Value) -> String {
    let msg = err.to_string();
    for prefix in ["invalid type", "invalid value"] {
        if let (true, Some(at)) = (msg.starts_with(prefix), msg.find(", expected ")) {
            let expected = &msg[at + ", expected ".len()..];
            return format!("{prefix}: found {}, expected {expected}", kind(value));
        }
    }
    msg
}

/// Finds the first field whose value alone makes `T` fail to deserialize (serde's own
/// messages say what was wrong but not where).
fn culprit<'a, T: serde::de::DeserializeOwned>(
    fields: &'a Map<String, Value>,
    base: &Map<String, Value>,
) -> Option<(&'a str, &'a Value)> {
    fields.iter().find_map(|(name, value)| {
        if base.contains_key(name) {
            return None;
        }
        let mut probe = base.clone();
        probe.insert(name.clone(), value.clone());
        T::deserialize(Value::Object(probe))
            .is_err()
            .then_some((name.as_str(), value))
    })
}

/// The JSON type of a value, for error messages (never the value: it may be personal).
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
