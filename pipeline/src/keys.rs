//! Object keys: a pure function of the recording, so a redelivered upload lands on the
//! same key and overwrites identical bytes. Recording ids come from the network, so
//! every piece of a key is sanitised here: a key can never escape the export prefix,
//! and every key is a valid `sha256sum` manifest path (no spaces, newlines or backslashes).

use chrono::{DateTime, Datelike, Utc};
use sha2::{Digest, Sha256};

use crate::FileKind;

/// The manifest's names at the root of an export (a chained schedule run's manifests
/// are named per run by the manifest stage).
pub const MANIFEST_TXT: &str = "portshift-manifest.txt";
pub const MANIFEST_JSON: &str = "portshift-manifest.json";

/// Longest recording-id segment kept verbatim; longer ids are cut and suffixed with a hash.
const MAX_SEGMENT: usize = 96;

/// Bytes of SHA-256 in the suffix of a changed id: 128 bits, so even ids crafted to
/// collide would need a 2^64 birthday search.
const SUFFIX_BYTES: usize = 16;

/// Whether `s` ends like a sanitised id does (`-` and 32 lower-case hex digits). Such an
/// id is suffixed even if it is otherwise clean, so a clean id can never equal another
/// id's sanitised form.
fn has_hash_suffix(s: &str) -> bool {
    let n = SUFFIX_BYTES * 2;
    s.len() > n
        && s.as_bytes()[s.len() - n - 1] == b'-'
        && s.as_bytes()[s.len() - n..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

fn hash_suffix(raw: &[u8]) -> String {
    let digest = Sha256::digest(raw);
    format!("-{}", hex::encode(&digest[..SUFFIX_BYTES]))
}

/// Makes an opaque id safe as one path segment: keeps `[A-Za-z0-9_-]`, replaces anything
/// else with `_`, and when it changed anything (or had to cut, or the id already ends
/// like a sanitised one) appends `-` and 32 hex digits of the original's SHA-256. Clean
/// ids never end that way and changed ones always do, so two different ids map to the
/// same segment only if SHA-256 truncated to 128 bits collides.
pub fn sanitize_segment(raw: &str) -> String {
    let mut out: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let changed = out != raw || out.is_empty() || out.len() > MAX_SEGMENT || has_hash_suffix(raw);
    if changed {
        // Only ASCII is left, so any byte index is a char boundary.
        out.truncate(MAX_SEGMENT);
        out.push_str(&hash_suffix(raw.as_bytes()));
    }
    out
}

/// Same as [`sanitize_segment`] for ids that arrived as raw bytes (possibly not UTF-8).
pub fn sanitize_segment_bytes(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(s) => sanitize_segment(s),
        Err(_) => {
            let lossy: String = String::from_utf8_lossy(raw).into_owned();
            let mut s = sanitize_segment(&lossy);
            // The lossy form always changed (it holds U+FFFD), so `s` ends in the hash
            // of the lossy text; the suffix must come from the bytes instead.
            s.truncate(s.len() - (SUFFIX_BYTES * 2 + 1));
            s.push_str(&hash_suffix(raw));
            s
        }
    }
}

/// Normalises a user-given prefix: no leading/trailing slashes, no empty, `.` or `..`
/// segments. Returns an error naming the problem (prefixes come from the user).
pub fn normalize_prefix(prefix: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for part in prefix.split('/') {
        match part {
            "" => continue,
            "." | ".." => {
                return Err(format!(
                    "the prefix {prefix:?} contains {part:?}: give a plain path such as calls/2024"
                ));
            }
            p if p.chars().any(|c| c.is_control() || c == '\\') => {
                return Err(format!(
                    "the prefix {prefix:?} contains a control character or backslash: use letters, digits, '-', '_' and '/'"
                ));
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// The path of a recording's file relative to the export root:
/// `<yyyy>/<mm>/<dd>/<id>/<id>.<suffix>` (`undated/<id>/...` without a date).
pub fn relative_path(
    recording_id: &str,
    recorded_at: Option<DateTime<Utc>>,
    kind: FileKind,
    media_extension: &str,
) -> String {
    let id = sanitize_segment(recording_id);
    let dir = match recorded_at {
        Some(t) => format!("{:04}/{:02}/{:02}", t.year(), t.month(), t.day()),
        None => "undated".to_string(),
    };
    let suffix = match kind {
        FileKind::Media => {
            let ext: String = media_extension
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(8)
                .collect::<String>()
                .to_ascii_lowercase();
            if ext.is_empty() {
                "bin".to_string()
            } else {
                ext
            }
        }
        FileKind::Transcript => "transcript.json".to_string(),
        FileKind::Metadata => "metadata.json".to_string(),
    };
    format!("{dir}/{id}/{id}.{suffix}")
}

/// Joins a normalised prefix and a relative path into a full object key.
pub fn join(prefix: &str, relative: &str) -> String {
    if prefix.is_empty() {
        relative.to_string()
    } else {
        format!("{prefix}/{relative}")
    }
}

/// Whether a relative path is safe to write under an export root and to list in a
/// `sha256sum` manifest. Every key portshift makes satisfies this; destinations check it
/// again before writing, as a last line of defence.
pub fn is_safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn clean_ids_are_kept_verbatim() {
        assert_eq!(
            sanitize_segment("EE8ED5BBBC254177B8201B9D84855949"),
            "EE8ED5BBBC254177B8201B9D84855949"
        );
        let t = Utc.with_ymd_and_hms(2024, 3, 9, 12, 0, 0).unwrap();
        assert_eq!(
            relative_path("ABC", Some(t), FileKind::Media, "mp4"),
            "2024/03/09/ABC/ABC.mp4"
        );
        assert_eq!(
            relative_path("ABC", None, FileKind::Transcript, ""),
            "undated/ABC/ABC.transcript.json"
        );
    }

    #[test]
    fn hostile_ids_stay_inside_the_prefix_and_stay_distinct() {
        let hostile: Vec<String> = vec![
            "../../etc/passwd".into(),
            "..".into(),
            "a/b".into(),
            "a\\b".into(),
            "line\nbreak".into(),
            "tab\there".into(),
            " spaced ".into(),
            "".into(),
            "x".repeat(5000),
            "ünïcødé".into(),
            "a_b".into(),
            "a-b".into(),
            "%2e%2e%2f".into(),
        ];
        let mut seen = std::collections::HashSet::new();
        for id in &hostile {
            let rel = relative_path(id, None, FileKind::Media, "../mp4\n");
            assert!(is_safe_relative(&rel), "{id:?} -> {rel:?}");
            assert!(rel.len() < 300, "{rel}");
            assert!(seen.insert(sanitize_segment(id)), "collision for {id:?}");
        }
        let bad_utf8 = sanitize_segment_bytes(&[0x41, 0xff, 0x2f, 0x2e, 0x2e]);
        assert!(is_safe_relative(&bad_utf8));
        assert_ne!(
            bad_utf8,
            sanitize_segment_bytes(&[0x41, 0xfe, 0x2f, 0x2e, 0x2e])
        );
    }

    /// Hostile ids a listing could carry: each must give a safe, bounded, distinct key.
    fn hostile_ids() -> Vec<String> {
        let mut ids: Vec<String> = vec![
            "../../etc/passwd".into(),
            "..".into(),
            ".".into(),
            "...".into(),
            "/abs".into(),
            "a/b".into(),
            "a\\b".into(),
            "..\\..\\windows".into(),
            "line\nbreak".into(),
            "cr\rlf\r\n".into(),
            "nul\0byte".into(),
            "\0".into(),
            "tab\there".into(),
            " spaced ".into(),
            "-".into(),
            "--help".into(),
            "-rf".into(),
            "~".into(),
            "$HOME".into(),
            "*?[]".into(),
            "%2e%2e%2f".into(),
            "%00".into(),
            "CON".into(),
            "nul".into(),
            "ünïcødé".into(),
            "ABC".into(),
            "\u{0410}\u{0412}\u{0421}".into(), // Cyrillic look-alikes of ABC
            "\u{FF21}\u{FF22}\u{FF23}".into(), // fullwidth ABC
            "A\u{200B}BC".into(),              // zero-width space
            "\u{202E}cba".into(),              // right-to-left override
            "e\u{301}".into(),                 // e + combining acute
            "\u{E9}".into(),                   // precomposed é
            "\u{2028}".into(),                 // line separator
            "\u{85}".into(),                   // next line (C1 control)
            "\u{FEFF}bom".into(),
            "a_b".into(),
            "a-b".into(),
            "x".repeat(96),
            "x".repeat(97),
            "x".repeat(5000),
            "\u{1F600}".repeat(300),
            String::new(),
        ];
        // An id crafted to look like another id's sanitised form.
        let crafted = sanitize_segment("a.");
        ids.push(crafted);
        ids
    }

    #[test]
    fn hostile_ids_give_safe_bounded_distinct_keys() {
        let ids = hostile_ids();
        let mut seen = std::collections::HashMap::new();
        for id in &ids {
            for kind in FileKind::ALL {
                let rel = relative_path(id, None, kind, "../mp4\n");
                assert!(is_safe_relative(&rel), "{id:?} -> {rel:?}");
                assert!(rel.len() < 300, "{rel}");
                assert!(!rel.contains(".."), "{rel}");
            }
            let seg = sanitize_segment(id);
            assert_eq!(seg, sanitize_segment(id), "deterministic");
            assert!(seg.len() <= MAX_SEGMENT + 1 + SUFFIX_BYTES * 2, "{seg}");
            if let Some(other) = seen.insert(seg.clone(), id.clone()) {
                panic!("{id:?} and {other:?} both map to {seg}");
            }
        }
        // The crafted id does not take the place of the id it imitates.
        assert_ne!(
            sanitize_segment("a."),
            sanitize_segment(&sanitize_segment("a."))
        );
    }

    /// A small deterministic generator (xorshift64*), so the randomised tests below need
    /// no extra crate and fail the same way every run.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Bounded randomised check (the fuzz target's property, run on every `cargo test`):
    /// for random ids built from troublesome characters, keys are safe, bounded,
    /// deterministic, and distinct ids never share a segment.
    #[test]
    fn random_ids_always_give_safe_distinct_keys() {
        const PIECES: &[&str] = &[
            "a",
            "Z",
            "0",
            "-",
            "_",
            ".",
            "..",
            "/",
            "\\",
            "\n",
            "\r",
            "\0",
            " ",
            "%",
            "%2f",
            "\u{FF0F}",
            "\u{2215}",
            "\u{202E}",
            "\u{200B}",
            "é",
            "e\u{301}",
            "\u{1F600}",
            "\u{7F}",
            "\u{85}",
            "~",
            ":",
            "*",
            "\"",
            "'",
            "<",
            ">",
            "|",
            "?",
        ];
        let mut rng = XorShift(0x5EED_CAFE_F00D_D00D);
        let mut seen: std::collections::HashMap<String, String> = Default::default();
        let t = chrono::Utc
            .with_ymd_and_hms(2024, 2, 29, 23, 59, 59)
            .unwrap();
        const ROUNDS: usize = 20_000;
        for _ in 0..ROUNDS {
            let len = rng.below(40);
            let mut id = String::new();
            for _ in 0..len {
                id.push_str(PIECES[rng.below(PIECES.len())]);
            }
            if rng.below(50) == 0 {
                id = id.repeat(1 + rng.below(200));
            }
            let seg = sanitize_segment(&id);
            assert_eq!(seg, sanitize_segment(&id));
            let rel = relative_path(&id, Some(t), FileKind::Media, &id);
            assert!(is_safe_relative(&rel), "{id:?} -> {rel:?}");
            assert!(rel.len() < 300, "{rel}");
            if let Some(other) = seen.insert(seg.clone(), id.clone()) {
                assert_eq!(other, id, "two ids share the segment {seg}");
            }
        }
        // Raw bytes, mostly not UTF-8.
        let mut seen_bytes: std::collections::HashMap<String, Vec<u8>> = Default::default();
        for _ in 0..ROUNDS {
            let len = rng.below(48);
            let raw: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let seg = sanitize_segment_bytes(&raw);
            assert_eq!(seg, sanitize_segment_bytes(&raw));
            assert!(is_safe_relative(&seg), "{raw:?} -> {seg:?}");
            if let Some(other) = seen_bytes.insert(seg.clone(), raw.clone()) {
                assert_eq!(other, raw, "two byte ids share the segment {seg}");
            }
        }
        eprintln!(
            "keys: {} random ids and {} random byte ids checked",
            ROUNDS, ROUNDS
        );
    }

    #[test]
    fn prefixes_are_normalised_or_refused() {
        assert_eq!(normalize_prefix("/calls//2024/").unwrap(), "calls/2024");
        assert_eq!(normalize_prefix("").unwrap(), "");
        assert!(normalize_prefix("calls/../x").is_err());
        assert!(normalize_prefix("calls/\n").is_err());
    }
}
