//! The code under fuzzing and the properties checked on every input.
//!
//! The key sanitiser (`pipeline/src/keys.rs`) and the Chorus response parsers
//! (`stages/src/chorus/model.rs`) are compiled here from their source files rather than
//! through the `pipeline` and `stages` crates: those pull in sqlx, the AWS, Azure and
//! Google SDKs, and building all of that with coverage instrumentation in release mode
//! would take most of the test command's time on a 2-core machine. Both files depend only
//! on serde, chrono, sha2 and hex (plus `crate::FileKind` below), so what is fuzzed is
//! exactly the code the pipeline runs.

#[path = "../../pipeline/src/keys.rs"]
pub mod keys;

#[path = "../../stages/src/chorus/model.rs"]
pub mod model;

/// Stand-in for `pipeline::FileKind`, which `keys.rs` names as `crate::FileKind`. If a
/// kind is added there, `keys.rs` stops compiling here until it is added below too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Media,
    Transcript,
    Metadata,
}

impl FileKind {
    pub const ALL: [FileKind; 3] = [FileKind::Metadata, FileKind::Transcript, FileKind::Media];
}

/// Longest segment [`keys::sanitize_segment`] may return: 96 kept characters, `-` and
/// 32 hex digits.
pub const MAX_SEGMENT_OUT: usize = 96 + 1 + 32;

/// The key sanitiser's properties for one input: every output is safe under an export
/// root and in a `sha256sum` manifest, bounded, and the same on every call; clean short
/// ids are kept verbatim; a prefix is either refused or free of dot segments.
pub fn check_keys(data: &[u8]) {
    use chrono::TimeZone;

    let from_bytes = keys::sanitize_segment_bytes(data);
    assert!(
        keys::is_safe_relative(&from_bytes),
        "{data:?} -> {from_bytes:?}"
    );
    assert!(from_bytes.len() <= MAX_SEGMENT_OUT, "{from_bytes}");
    assert_eq!(from_bytes, keys::sanitize_segment_bytes(data));

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let segment = keys::sanitize_segment(text);
    assert_eq!(segment, from_bytes, "UTF-8 input: both forms agree");
    assert!(keys::is_safe_relative(&segment), "{text:?} -> {segment:?}");
    assert_eq!(segment, keys::sanitize_segment(text), "deterministic");
    let clean = !text.is_empty()
        && text.len() <= 96
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if clean && segment != text {
        // Only a clean id that imitates a sanitised one is changed.
        assert!(segment.starts_with(text) && segment.len() == text.len() + 33);
    }
    if !clean {
        assert_ne!(segment, text, "a changed id must not come out as itself");
    }

    // A date from the first bytes, so dated and undated paths are both exercised.
    let secs = data
        .iter()
        .take(8)
        .fold(0i64, |acc, b| acc.wrapping_mul(256).wrapping_add(*b as i64));
    let at = chrono::Utc.timestamp_opt(secs, 0).single();
    for kind in FileKind::ALL {
        let rel = keys::relative_path(text, at, kind, text);
        assert!(keys::is_safe_relative(&rel), "{text:?} -> {rel:?}");
        assert_eq!(rel, keys::relative_path(text, at, kind, text));
    }

    if let Ok(prefix) = keys::normalize_prefix(text) {
        assert!(
            !prefix.starts_with('/') && !prefix.ends_with('/'),
            "{prefix:?}"
        );
        for seg in prefix.split('/').filter(|_| !prefix.is_empty()) {
            assert!(!seg.is_empty() && seg != "." && seg != "..", "{prefix:?}");
            assert!(
                !seg.chars().any(|c| c.is_control() || c == '\\'),
                "{prefix:?}"
            );
        }
        let key = keys::join(
            &prefix,
            &keys::relative_path(text, at, FileKind::Media, "mp4"),
        );
        assert!(key.starts_with(&prefix), "{key} escapes {prefix}");
    }
}

/// JSON equality where floats may differ in their last bits: serde_json without its
/// `float_roundtrip` feature parses some decimal floats one unit in the last place off,
/// so `9.222222222222225e28` can come back as `9.222222222222223e28` (found by this
/// target). Everything else must be exactly equal.
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || ((x - y).abs() <= x.abs().max(y.abs()) * 1e-15)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// The Chorus parsers' properties for one input: they return a value or an error,
/// never panic; a parsed page survives a serialise-and-parse round trip unchanged, its
/// next key is never blank, and a parsed conversation names the id that was asked for.
pub fn check_chorus(data: &[u8]) {
    if let Ok(page) = model::parse_engagement_page(data) {
        for e in &page.engagements {
            let _ = e.recorded_at();
            let _ = e.has_recording();
        }
        if let Some(key) = page.next_key(None) {
            assert!(!key.trim().is_empty());
            assert_eq!(
                page.next_key(Some(&key)),
                None,
                "a repeated key ends the listing"
            );
        }
        let bytes = serde_json::to_vec(&page).expect("a parsed page serialises");
        let again = model::parse_engagement_page(&bytes).expect("its serialisation parses");
        let (a, b) = (
            serde_json::to_value(&page).unwrap(),
            serde_json::to_value(&again).unwrap(),
        );
        assert!(same_json(&a, &b), "round trip:\n{a}\n{b}");
    }
    for id in ["A1", "EE8ED5BBBC254177B8201B9D84855949"] {
        if let Ok(data) = model::parse_conversation(data, id) {
            assert_eq!(data["id"], serde_json::Value::String(id.into()));
            assert!(data["attributes"].is_object());
        }
    }
    // The id the document names, if any: the parser must accept it.
    if let Ok(serde_json::Value::Object(doc)) = serde_json::from_slice::<serde_json::Value>(data)
        && let Some(serde_json::Value::String(id)) = doc.get("data").and_then(|d| d.get("id"))
        && doc["data"]["attributes"].is_object()
    {
        assert!(model::parse_conversation(data, id).is_ok());
    }
}
