//! The simulator's deterministic synthetic dataset: recording ids, metadata, transcripts
//! and media bytes, all pure functions of `(seed, index)` so any test can recompute what
//! an export must contain (e.g. a file's SHA-256) without storing it.
//!
//! Media bytes come from a counter-based generator (splitmix64 over the recording key and
//! the word index), so any offset is produced directly, at memory speed, and every file
//! carries [`MEDIA_MARKER`] so a test can prove that no recording bytes leaked into a
//! store that must never hold them.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// Appears in every synthetic media file at offset 0 and then every [`MARKER_PERIOD`]
/// bytes; the leak-canary test greps stores for it.
pub const MEDIA_MARKER: &[u8] = b"PORTSHIFT-SIM-MEDIA-MARKER";

/// Distance between two markers in a media file (well under the promised 1 MiB).
pub const MARKER_PERIOD: u64 = 256 * 1024;

/// Field names `GET /api/v1/conversations/{id}?fields=` accepts (the spec's list).
/// The simulator fills the common ones and leaves the others out of the answer.
pub const CONVERSATION_FIELDS: &[&str] = &[
    "account",
    "company_name",
    "_created_at",
    "_modified_at",
    "deal",
    "disposition",
    "language",
    "metrics",
    "meeting.id",
    "name",
    "owner",
    "owner.email",
    "participants",
    "private",
    "recording",
    "recording.audio_only",
    "recording.autojoin",
    "recording.autojoin_reason",
    "recording.clusters",
    "recording.duration",
    "recording.end_reason",
    "recording.recordable",
    "recording.schedule_end_time",
    "recording.schedule_start_time",
    "recording.start_time",
    "recording.thumbnails",
    "recording.trackers",
    "recording.utterances",
    "source",
    "status",
    "user_company_name",
];

/// How large the synthetic media files are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaSizes {
    /// Smallest size, bytes (inclusive).
    pub min: u64,
    /// Largest size, bytes (inclusive).
    pub max: u64,
    /// Every `large_every`-th recording (1-based) gets `large_size` instead; 0 = never.
    pub large_every: u64,
    pub large_size: u64,
}

impl Default for MediaSizes {
    fn default() -> Self {
        MediaSizes {
            min: 64 * 1024,
            max: 4 * 1024 * 1024,
            large_every: 0,
            large_size: 0,
        }
    }
}

/// One synthetic recording.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthRecording {
    /// 32 upper-case hex characters derived from the seed and the index.
    pub id: String,
    /// Start, epoch seconds.
    pub date_time: i64,
    /// Seconds.
    pub duration: f64,
    pub media_size: u64,
    /// `video/mp4` or `audio/mpeg`.
    pub media_content_type: &'static str,
    /// Private: absent from listings, 404 on details and media.
    pub private: bool,
    /// Deleted: listed, but 404 on details and media.
    pub deleted: bool,
    /// Mostly `meeting`, some `dialer`; `unrecorded_meeting` only when asked for.
    pub engagement_type: &'static str,
    /// `(name, e-mail)`; the first one is the owner (the rep).
    pub participants: Vec<(String, String)>,
    /// How often Chorus re-processed it (test knob, see [`Dataset::reprocess`]): each
    /// time the transcript changes and `_modified_at` moves on. 0 = as recorded.
    pub revision: u32,
    /// `_modified_at` after the last re-processing (epoch seconds); `None` = the end
    /// of the call.
    pub modified_at: Option<i64>,
}

impl SynthRecording {
    /// Whether the simulator serves details and media for it.
    pub fn is_served(&self) -> bool {
        !self.private && !self.deleted
    }

    /// Whether it has media (unrecorded meetings have none).
    pub fn has_media(&self) -> bool {
        self.engagement_type != "unrecorded_meeting"
    }

    /// The file extension an exporter should pick from the content type.
    pub fn media_extension(&self) -> &'static str {
        match self.media_content_type {
            "video/mp4" => "mp4",
            _ => "mp3",
        }
    }
}

/// Which recordings are private, deleted or unrecorded: every n-th (1-based), 0 = none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Knobs {
    pub private_every: u64,
    pub deleted_every: u64,
    pub unrecorded_every: u64,
}

/// A deterministic dataset of synthetic recordings.
#[derive(Debug, Clone)]
pub struct Dataset {
    seed: u64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    sizes: MediaSizes,
    knobs: Knobs,
    recordings: Vec<SynthRecording>,
    by_id: HashMap<String, usize>,
    /// Indices into `recordings`, newest first (date desc, then id desc): the listing
    /// order, kept sorted so a page is a binary search plus a short scan.
    order: Vec<usize>,
}

impl Dataset {
    /// `count` recordings dated uniformly between `from` and `to`.
    pub fn new(
        seed: u64,
        count: usize,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        sizes: MediaSizes,
    ) -> Self {
        let (from, to) = if from <= to { (from, to) } else { (to, from) };
        let mut dataset = Dataset {
            seed,
            from,
            to,
            sizes,
            knobs: Knobs::default(),
            recordings: Vec::with_capacity(count),
            by_id: HashMap::with_capacity(count),
            order: Vec::new(),
        };
        for index in 0..count {
            let date = dataset.spread_date(index);
            dataset.push(index, date);
        }
        dataset.reorder();
        dataset
    }

    /// Applies the private/deleted/unrecorded knobs (they are pure functions of the
    /// index, so they also apply to recordings added later).
    pub fn with_knobs(mut self, knobs: Knobs) -> Self {
        self.set_knobs(knobs);
        self
    }

    pub fn set_knobs(&mut self, knobs: Knobs) {
        self.knobs = knobs;
        for index in 0..self.recordings.len() {
            let (private, deleted, engagement_type) = self.classify(index);
            let r = &mut self.recordings[index];
            r.private = private;
            r.deleted = deleted;
            r.engagement_type = engagement_type;
        }
    }

    pub fn knobs(&self) -> Knobs {
        self.knobs
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// All recordings in index order (including private and deleted ones).
    pub fn recordings(&self) -> &[SynthRecording] {
        &self.recordings
    }

    pub fn get(&self, id: &str) -> Option<&SynthRecording> {
        self.by_id.get(id).map(|&i| &self.recordings[i])
    }

    /// Test knob: Chorus deletes recording `id` (like the knob's deleted recordings it
    /// stays listed, but details and media answer 404 from now on). `false` when there
    /// is no such recording. A later `set_knobs` recomputes deletions from the
    /// knobs and undoes this.
    pub fn delete(&mut self, id: &str) -> bool {
        match self.by_id.get(id) {
            Some(&i) => {
                self.recordings[i].deleted = true;
                true
            }
            None => false,
        }
    }

    /// Test knob: Chorus re-processes recording `id` at `at`: its transcript becomes a
    /// new one and `_modified_at` becomes `at`. Returns the new revision, `None` when
    /// there is no such recording.
    pub fn reprocess(&mut self, id: &str, at: DateTime<Utc>) -> Option<u32> {
        let &i = self.by_id.get(id)?;
        let r = &mut self.recordings[i];
        r.revision += 1;
        r.modified_at = Some(at.timestamp());
        Some(r.revision)
    }

    /// Adds `n` recordings dated `at` (for incremental-sync tests); returns their ids.
    pub fn add_recordings(&mut self, n: usize, at: DateTime<Utc>) -> Vec<String> {
        let start = self.recordings.len();
        let ids = (start..start + n)
            .map(|index| self.push(index, at.timestamp()))
            .collect();
        self.reorder();
        ids
    }

    /// Gives the first recordings the ids in `ids`, in order, instead of their generated
    /// ones: for tests with hostile ids (path traversal, control characters, look-alike
    /// letters, very long ids). Everything else about a recording (date, media bytes,
    /// metadata) stays a pure function of its index and new id. An id already in use is
    /// skipped; returns how many recordings were renamed.
    pub fn set_ids(&mut self, ids: &[String]) -> usize {
        let mut renamed = 0;
        for id in ids {
            if renamed >= self.recordings.len() || self.by_id.contains_key(id) {
                continue;
            }
            let old = std::mem::replace(&mut self.recordings[renamed].id, id.clone());
            self.by_id.remove(&old);
            self.by_id.insert(id.clone(), renamed);
            renamed += 1;
        }
        self.reorder();
        renamed
    }

    /// Recordings as `/v3/engagements` lists them: newest first, private ones left out,
    /// filtered by date (inclusive bounds, epoch seconds) and type, strictly after the
    /// `(date_time, id)` cursor, at most `limit`.
    pub fn list_page(
        &self,
        min_date: Option<i64>,
        max_date: Option<i64>,
        engagement_type: Option<&str>,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Vec<&SynthRecording> {
        let key = |i: usize| {
            let r = &self.recordings[i];
            (r.date_time, r.id.as_str())
        };
        let mut start = 0;
        if let Some(max) = max_date {
            start = start.max(self.order.partition_point(|&i| key(i).0 > max));
        }
        if let Some(cursor) = after {
            start = start.max(self.order.partition_point(|&i| key(i) >= cursor));
        }
        self.order[start..]
            .iter()
            .map(|&i| &self.recordings[i])
            .take_while(|r| min_date.is_none_or(|min| r.date_time >= min))
            .filter(|r| !r.private)
            .filter(|r| engagement_type.is_none_or(|t| r.engagement_type == t))
            .take(limit)
            .collect()
    }

    /// The `/v3/engagements` JSON of a recording (field names and types as in the
    /// spec's example).
    pub fn engagement_json(&self, r: &SynthRecording) -> Value {
        let mut rng = self.rng_for(&r.id, 1);
        let (owner_name, owner_email) = owner(r);
        let company = prospect_company(r);
        let participants: Vec<Value> = r
            .participants
            .iter()
            .enumerate()
            .map(|(i, (name, email))| {
                let rep = i == 0 || email.ends_with("@portshift-demo.example");
                let title = TITLES
                    [(mix(self.seed ^ fnv1a(email.as_bytes())) % TITLES.len() as u64) as usize];
                let mut p = json!({
                    "name": name,
                    "email": email,
                    "company_name": if rep { "Portshift Demo" } else { company.as_str() },
                    "title": title,
                    "type": if rep { "rep" } else { "prospect" },
                    "person_id": person_id(email),
                });
                // Only Chorus users (reps) have a user id.
                if rep {
                    p["user_id"] = json!(user_id(email));
                }
                p
            })
            .collect();
        json!({
            "engagement_id": r.id,
            "engagement_type": r.engagement_type,
            "date_time": r.date_time,
            "duration": r.duration,
            "subject": subject(r),
            "processing_state": "done",
            "language": language(&mut rng),
            "participants": participants,
            "user_email": owner_email,
            "user_id": user_id(&owner_email),
            "user_name": owner_name,
            "url": format!("https://chorus.example/meeting/{}", r.id),
            "account_id": "",
            "account_name": company,
            "opportunity_id": format!("OPP-{:06}", rng.below(1_000_000)),
            "opportunity_name": format!("{company} renewal"),
            "compliance": "non-compliant",
            "initiator": owner_email,
            "no_show": false,
            "num_cust_questions": rng.below(12),
            "num_engaging_questions": rng.below(6),
            "disposition_connected": r.engagement_type == "dialer",
            "disposition_gatekeeper": false,
            "disposition_tree": false,
            "disposition_voicemail": false,
            "tracker_matches": [
                {"name": "Next Steps & To Do's", "num_matches": 1 + rng.below(4), "type": "chorus"}
            ],
        })
    }

    /// The JSON:API document of `GET /api/v1/conversations/{id}` for `fields` (empty =
    /// the default set: everything but the transcript). `Err(name)` for a field name
    /// the spec does not know.
    pub fn conversation_json(&self, r: &SynthRecording, fields: &[&str]) -> Result<Value, String> {
        if let Some(unknown) = fields.iter().find(|f| !CONVERSATION_FIELDS.contains(f)) {
            return Err((*unknown).to_owned());
        }
        const DEFAULT: &[&str] = &[
            "name",
            "owner",
            "participants",
            "language",
            "status",
            "account",
            "private",
            "_created_at",
            "_modified_at",
            "recording.start_time",
            "recording.duration",
            "recording.audio_only",
        ];
        let fields = if fields.is_empty() { DEFAULT } else { fields };
        let want = |name: &str| fields.contains(&name);
        let want_recording = |name: &str| want("recording") || want(name);
        let engagement = self.engagement_json(r);
        let (owner_name, owner_email) = owner(r);
        let start = DateTime::from_timestamp(r.date_time, 0).unwrap_or(self.from);
        let mut attributes = Map::new();
        if want("name") {
            attributes.insert("name".into(), engagement["subject"].clone());
        }
        if want("owner") {
            attributes.insert(
                "owner".into(),
                json!({
                    "name": owner_name,
                    "email": owner_email,
                    "person_id": person_id(&owner_email),
                    "user_id": user_id(&owner_email),
                }),
            );
        } else if want("owner.email") {
            attributes.insert("owner".into(), json!({ "email": owner_email }));
        }
        if want("participants") {
            let participants: Vec<Value> = engagement["participants"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let mut p = p.clone();
                    if let Value::Object(o) = &mut p {
                        let mine = o.get("type").and_then(Value::as_str) == Some("rep");
                        o.insert("is_my_team".into(), Value::Bool(mine));
                    }
                    p
                })
                .collect();
            attributes.insert("participants".into(), Value::Array(participants));
        }
        if want("language") {
            attributes.insert("language".into(), engagement["language"].clone());
        }
        if want("status") {
            attributes.insert("status".into(), json!("done"));
        }
        if want("private") {
            attributes.insert("private".into(), json!(r.private));
        }
        if want("account") {
            attributes.insert(
                "account".into(),
                json!({"id": fnv1a(prospect_company(r).as_bytes()) % 1_000_000, "name": prospect_company(r)}),
            );
        }
        if want("company_name") {
            attributes.insert("company_name".into(), json!(prospect_company(r)));
        }
        let end = start + chrono::Duration::milliseconds((r.duration * 1000.0) as i64);
        if want("_created_at") {
            attributes.insert("_created_at".into(), json!(rfc3339(start)));
        }
        if want("_modified_at") {
            let modified = r
                .modified_at
                .and_then(|t| DateTime::from_timestamp(t, 0))
                .unwrap_or(end);
            attributes.insert("_modified_at".into(), json!(rfc3339(modified)));
        }
        let mut recording = Map::new();
        if r.has_media() {
            if want_recording("recording.start_time") {
                recording.insert("start_time".into(), json!(rfc3339(start)));
            }
            if want_recording("recording.duration") {
                recording.insert("duration".into(), json!(r.duration));
            }
            if want_recording("recording.audio_only") {
                recording.insert(
                    "audio_only".into(),
                    json!(r.media_content_type.starts_with("audio/")),
                );
            }
            if want_recording("recording.utterances") {
                recording.insert("utterances".into(), self.utterances(r));
            }
        } else if want("recording") || fields.iter().any(|f| f.starts_with("recording.")) {
            recording.insert("unrecorded_reason".into(), json!("not recorded"));
        }
        if !recording.is_empty() {
            attributes.insert("recording".into(), Value::Object(recording));
        }
        Ok(json!({
            "data": {
                "type": "recording",
                "id": r.id,
                "attributes": attributes,
            }
        }))
    }

    /// The transcript: 3 to 20 synthetic utterances, in the spec's utterance shape.
    pub fn utterances(&self, r: &SynthRecording) -> Value {
        // Revision 0 keeps the original stream, so unchanged datasets stay as they were.
        let mut rng = self.rng_for(&r.id, 2 + 0x1_0000 * u64::from(r.revision));
        let count = 3 + rng.below(18) as usize;
        let start = DateTime::from_timestamp(r.date_time, 0).unwrap_or(self.from);
        let slot = r.duration.max(1.0) / count as f64;
        let utterances: Vec<Value> = (0..count)
            .map(|index| {
                let speaker = rng.below(r.participants.len().max(1) as u64) as usize;
                let (name, _) = r
                    .participants
                    .get(speaker)
                    .cloned()
                    .unwrap_or_else(|| ("Unknown".into(), String::new()));
                let words = 4 + rng.below(20) as usize;
                let snippet = sentence(&mut rng, words);
                let snippet_time = (index as f64 * slot * 100.0).round() / 100.0;
                let snippet_length = ((slot * 0.8) * 100.0).round() / 100.0;
                let at = start + chrono::Duration::milliseconds((snippet_time * 1000.0) as i64);
                json!({
                    "id": format!("{}-{index}", r.id),
                    "index": index,
                    "participant": speaker,
                    "speaker_id": speaker,
                    "speaker_name": name,
                    "speaker_type": if speaker == 0 { "rep" } else { "cust" },
                    "snippet": snippet,
                    "snippet_time": snippet_time,
                    "snippet_length": snippet_length,
                    "snippet_word_count": words,
                    "date_time": rfc3339(at),
                    "engaging": rng.below(4) == 0,
                    "expired": false,
                })
            })
            .collect();
        Value::Array(utterances)
    }

    fn spread_date(&self, index: usize) -> i64 {
        let from = self.from.timestamp();
        let span = (self.to.timestamp() - from).max(0) as u64;
        let mut rng = Rng::new(mix(self.seed ^ 0xD47E) ^ mix(index as u64));
        from + rng.below(span.saturating_add(1)) as i64
    }

    /// Private, deleted and engagement type of the recording at `index`.
    fn classify(&self, index: usize) -> (bool, bool, &'static str) {
        let nth = index as u64 + 1;
        let every = |n: u64| n > 0 && nth.is_multiple_of(n);
        let private = every(self.knobs.private_every);
        let deleted = !private && every(self.knobs.deleted_every);
        let mut rng = Rng::new(mix(self.seed ^ 0x7E7E) ^ mix(index as u64));
        let engagement_type = if every(self.knobs.unrecorded_every) {
            "unrecorded_meeting"
        } else if rng.below(100) < 15 {
            "dialer"
        } else {
            "meeting"
        };
        (private, deleted, engagement_type)
    }

    fn push(&mut self, index: usize, date_time: i64) -> String {
        let mut rng = Rng::new(mix(self.seed) ^ mix(index as u64 ^ 0x5EED_0000_0000));
        let id = format!("{:016X}{:016X}", rng.next_u64(), rng.next_u64());
        let (private, deleted, engagement_type) = self.classify(index);
        // The media type must not change with the knobs, so it is drawn independently
        // of `engagement_type`'s randomness (dialer calls are audio).
        let video = rng.below(100) < 70;
        let media_content_type = if engagement_type == "dialer" || !video {
            "audio/mpeg"
        } else {
            "video/mp4"
        };
        let duration_secs = if engagement_type == "dialer" {
            30 + rng.below(870)
        } else {
            300 + rng.below(3300)
        };
        let duration = duration_secs as f64 + rng.below(4) as f64 * 0.25;
        let sizes = self.sizes;
        let (lo, hi) = if sizes.min <= sizes.max {
            (sizes.min, sizes.max)
        } else {
            (sizes.max, sizes.min)
        };
        let media_size =
            if sizes.large_every > 0 && (index as u64 + 1).is_multiple_of(sizes.large_every) {
                sizes.large_size
            } else {
                lo + rng.below((hi - lo).saturating_add(1))
            };
        let company = COMPANIES[rng.below(COMPANIES.len() as u64) as usize];
        let others = 1 + rng.below(4) as usize;
        let mut participants = Vec::with_capacity(others + 1);
        participants.push(person(&mut rng, "portshift-demo.example"));
        for _ in 0..others {
            participants.push(person(&mut rng, &format!("{}.example", slug(company))));
        }
        let recording = SynthRecording {
            id: id.clone(),
            date_time,
            duration,
            media_size,
            media_content_type,
            private,
            deleted,
            engagement_type,
            participants,
            revision: 0,
            modified_at: None,
        };
        self.by_id.insert(id.clone(), self.recordings.len());
        self.recordings.push(recording);
        id
    }

    fn reorder(&mut self) {
        let recordings = &self.recordings;
        let mut order: Vec<usize> = (0..recordings.len()).collect();
        order.sort_unstable_by(|&a, &b| {
            let (ra, rb) = (&recordings[a], &recordings[b]);
            (rb.date_time, rb.id.as_str()).cmp(&(ra.date_time, ra.id.as_str()))
        });
        self.order = order;
    }

    fn rng_for(&self, id: &str, stream: u64) -> Rng {
        Rng::new(mix(self.seed ^ fnv1a(id.as_bytes())) ^ mix(stream))
    }
}

/// Deterministic media bytes: fills `buf` with the bytes at `offset` of recording `id`'s
/// media (for the dataset of `seed`). Any offset is computed directly, so a server can
/// stream a file (or a range) in chunks and a test can hash it independently.
pub fn fill_media(seed: u64, id: &str, offset: u64, buf: &mut [u8]) {
    let key = media_key(seed, id);
    let mut pos = offset;
    let mut rest: &mut [u8] = buf;
    // Unaligned head: part of one 8-byte word.
    let skew = (pos % 8) as usize;
    if skew != 0 && !rest.is_empty() {
        let word = media_word(key, pos / 8).to_le_bytes();
        let n = (8 - skew).min(rest.len());
        rest[..n].copy_from_slice(&word[skew..skew + n]);
        rest = &mut rest[n..];
        pos += n as u64;
    }
    // Aligned middle, one word at a time (the hot loop).
    let mut word_index = pos / 8;
    let mut chunks = rest.chunks_exact_mut(8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&media_word(key, word_index).to_le_bytes());
        word_index += 1;
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let word = media_word(key, word_index).to_le_bytes();
        let n = tail.len();
        tail.copy_from_slice(&word[..n]);
    }
    overlay_markers(offset, buf);
}

/// SHA-256 of the first `size` bytes of recording `id`'s media.
pub fn media_sha256(seed: u64, id: &str, size: u64) -> [u8; 32] {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut offset = 0;
    while offset < size {
        let n = (size - offset).min(buf.len() as u64) as usize;
        fill_media(seed, id, offset, &mut buf[..n]);
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    hasher.finalize().into()
}

fn overlay_markers(offset: u64, buf: &mut [u8]) {
    let end = offset + buf.len() as u64;
    let marker_len = MEDIA_MARKER.len() as u64;
    // The marker that may straddle `offset` starts at the period boundary at or before it.
    let mut start = offset / MARKER_PERIOD * MARKER_PERIOD;
    while start < end {
        let lo = start.max(offset);
        let hi = (start + marker_len).min(end);
        if lo < hi {
            let src = &MEDIA_MARKER[(lo - start) as usize..(hi - start) as usize];
            buf[(lo - offset) as usize..(hi - offset) as usize].copy_from_slice(src);
        }
        start += MARKER_PERIOD;
    }
}

fn media_key(seed: u64, id: &str) -> u64 {
    mix(seed ^ mix(fnv1a(id.as_bytes()) ^ 0x004D_4544_4941))
}

#[inline(always)]
fn media_word(key: u64, index: u64) -> u64 {
    mix(key.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

/// The splitmix64 finaliser: a fast, well-mixed bijection on u64.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// splitmix64 as a sequence generator. Ours rather than a crate's so the dataset stays
/// the same whatever version of a random-number crate is locked.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform-enough in `0..n` (0 when `n` is 0); the modulo bias is irrelevant here.
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

const FIRST_NAMES: &[&str] = &[
    "Ada", "Bruno", "Chiara", "Dmitri", "Elif", "Farah", "Gustav", "Hana", "Ines", "Jonas",
    "Kwame", "Lena", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tariq", "Uma",
    "Viktor", "Wen", "Ximena", "Yusuf", "Zoe",
];
const LAST_NAMES: &[&str] = &[
    "Andersen", "Brook", "Castillo", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ivanova",
    "Jensen", "Kowalski", "Larsen", "Moreau", "Novak", "Okafor", "Petrov", "Quinn", "Rossi",
    "Schmidt", "Tanaka", "Urban", "Varga", "Weber", "Yilmaz", "Zhang",
];
const COMPANIES: &[&str] = &[
    "Acme Widgets",
    "Blue Harbor",
    "Copperleaf",
    "Delta Freight",
    "Evergreen Labs",
    "Foxglove Health",
    "Granite Bank",
    "Helix Robotics",
    "Ironwood Media",
    "Juniper Foods",
];
const TITLES: &[&str] = &[
    "Account Executive",
    "Head of Operations",
    "VP Sales",
    "Procurement Lead",
    "CTO",
    "Engineering Manager",
];
const TOPICS: &[&str] = &[
    "Discovery call",
    "Product demo",
    "Pricing review",
    "Quarterly business review",
    "Onboarding",
    "Renewal discussion",
    "Security questionnaire",
];
const WORDS: &[&str] = &[
    "we",
    "could",
    "schedule",
    "the",
    "rollout",
    "next",
    "quarter",
    "pricing",
    "looks",
    "reasonable",
    "our",
    "team",
    "needs",
    "a",
    "pilot",
    "first",
    "security",
    "review",
    "is",
    "done",
    "integration",
    "with",
    "the",
    "crm",
    "works",
    "great",
    "budget",
    "approval",
    "timeline",
    "contract",
    "renewal",
    "follow",
    "up",
    "on",
    "friday",
    "thanks",
    "everyone",
];
const LANGUAGES: &[&str] = &["en", "en", "en", "en", "en", "en", "de", "fr", "es"];

fn person(rng: &mut Rng, domain: &str) -> (String, String) {
    let first = FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize];
    let last = LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize];
    let email = format!(
        "{}.{}@{domain}",
        first.to_ascii_lowercase(),
        last.to_ascii_lowercase()
    );
    (format!("{first} {last}"), email)
}

fn owner(r: &SynthRecording) -> (String, String) {
    r.participants.first().cloned().unwrap_or_default()
}

fn prospect_company(r: &SynthRecording) -> String {
    // The company is encoded in the prospects' e-mail domain; recover its display name.
    r.participants
        .get(1)
        .and_then(|(_, email)| email.split('@').nth(1))
        .and_then(|domain| {
            COMPANIES
                .iter()
                .find(|c| format!("{}.example", slug(c)) == domain)
        })
        .map(|c| (*c).to_owned())
        .unwrap_or_else(|| "Unknown".to_owned())
}

fn subject(r: &SynthRecording) -> String {
    let topic = TOPICS[(fnv1a(r.id.as_bytes()) % TOPICS.len() as u64) as usize];
    format!("{topic} with {}", prospect_company(r))
}

fn language(rng: &mut Rng) -> &'static str {
    LANGUAGES[rng.below(LANGUAGES.len() as u64) as usize]
}

fn sentence(rng: &mut Rng, words: usize) -> String {
    let mut out = String::new();
    for i in 0..words {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    out.push('.');
    out
}

fn slug(s: &str) -> String {
    s.to_ascii_lowercase().replace(' ', "-")
}

fn person_id(email: &str) -> u64 {
    10_000_000 + fnv1a(email.as_bytes()) % 90_000_000
}

fn user_id(email: &str) -> u64 {
    100_000 + fnv1a(email.as_bytes()) % 900_000
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}
