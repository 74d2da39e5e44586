//! The cursor of a stream that carries several jobs: which state of each job
//! the client has seen, and whether it saw the job's `done`. It travels as the
//! SSE `id:` of every event and as `cursor` in WebSocket frames and long-poll
//! answers; clients store the newest and hand it back, never parse it.
//!
//! Wire form: URL-safe base64 (no padding) of a version byte, then one entry
//! per job: 6 bytes of SHA-256 of the job id (not the id: ids run to 200
//! characters and 100 of them must fit in a header), a flags byte, and the
//! job's event id — a `seq` as a LEB128 varint (at most 8 bytes for 2^53), or
//! the 8 digest bytes of an `h` + 16 hex id. So an entry is at most 15 bytes
//! and 100 jobs at most ~2 KiB of text, whatever their ids.
//!
//! A cursor that does not decode is taken as empty: the client is then sent
//! every job's current state again, never less than it has. A cursor only
//! ever hides states from the stream it is sent to, so it needs no signature.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::job::JobId;

/// Format version, the first byte; a cursor of another version is ignored.
const VERSION: u8 = 1;
/// Bytes of the job id's digest in an entry. 48 bits: two jobs of one stream
/// share a tag with odds ~ n²/2^49, below 10^-10 for 100 jobs.
pub const TAG_BYTES: usize = 6;
/// The event id is the 8 digest bytes of an `h` id (else a `seq` varint).
const FLAG_DIGEST: u8 = 0b01;
/// The client saw this state's `done`.
const FLAG_DONE: u8 = 0b10;
/// Longest cursor text read; longer is not a cursor this gateway wrote
/// (1000 jobs' worth, ten times the default list limit).
pub const MAX_CURSOR_CHARS: usize = 20_480;

/// A job's short digest, the key of its cursor entry. Computed once per job
/// of a stream, not per event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobTag([u8; TAG_BYTES]);

impl JobTag {
    pub fn of(job: &JobId) -> JobTag {
        let digest = Sha256::digest(job.as_str().as_bytes());
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&digest[..TAG_BYTES]);
        JobTag(tag)
    }
}

/// A job's event id in compact form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeenId {
    Seq(u64),
    Digest([u8; 8]),
}

impl SeenId {
    /// The compact form of an event id jobcast handed out (`seq` in decimal,
    /// or `h` + 16 hex digits); `None` for anything else.
    pub fn parse(id: &str) -> Option<SeenId> {
        if let Some(hex) = id.strip_prefix('h') {
            if hex.len() != 16 {
                return None;
            }
            let mut out = [0u8; 8];
            for (i, b) in out.iter_mut().enumerate() {
                *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            return Some(SeenId::Digest(out));
        }
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        id.parse().ok().map(SeenId::Seq)
    }
}

/// What the client has seen of one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub id: SeenId,
    /// The client saw this (terminal) state's `done`.
    pub done: bool,
}

/// Every job's entry of one stream's cursor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamCursor {
    entries: BTreeMap<JobTag, Seen>,
}

impl StreamCursor {
    /// Reads a cursor a client handed back; anything that is not one this
    /// gateway wrote reads as empty.
    pub fn decode(raw: &str) -> StreamCursor {
        let raw = raw.trim();
        if raw.is_empty() || raw.len() > MAX_CURSOR_CHARS {
            return StreamCursor::default();
        }
        URL_SAFE_NO_PAD
            .decode(raw)
            .ok()
            .and_then(|bytes| Self::from_bytes(&bytes))
            .unwrap_or_default()
    }

    fn from_bytes(bytes: &[u8]) -> Option<StreamCursor> {
        let (&version, mut rest) = bytes.split_first()?;
        if version != VERSION {
            return None;
        }
        let mut entries = BTreeMap::new();
        while !rest.is_empty() {
            let tag: [u8; TAG_BYTES] = rest.get(..TAG_BYTES)?.try_into().ok()?;
            let flags = *rest.get(TAG_BYTES)?;
            if flags & !(FLAG_DIGEST | FLAG_DONE) != 0 {
                return None;
            }
            rest = &rest[TAG_BYTES + 1..];
            let id = if flags & FLAG_DIGEST != 0 {
                let digest: [u8; 8] = rest.get(..8)?.try_into().ok()?;
                rest = &rest[8..];
                SeenId::Digest(digest)
            } else {
                let (seq, used) = read_varint(rest)?;
                rest = &rest[used..];
                SeenId::Seq(seq)
            };
            let done = flags & FLAG_DONE != 0;
            entries.insert(JobTag(tag), Seen { id, done });
        }
        Some(StreamCursor { entries })
    }

    /// The text form (URL-safe base64, no padding).
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(1 + self.entries.len() * (TAG_BYTES + 9));
        bytes.push(VERSION);
        for (tag, seen) in &self.entries {
            bytes.extend_from_slice(&tag.0);
            let done = if seen.done { FLAG_DONE } else { 0 };
            match seen.id {
                SeenId::Seq(seq) => {
                    bytes.push(done);
                    write_varint(&mut bytes, seq);
                }
                SeenId::Digest(d) => {
                    bytes.push(done | FLAG_DIGEST);
                    bytes.extend_from_slice(&d);
                }
            }
        }
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn get(&self, tag: JobTag) -> Option<Seen> {
        self.entries.get(&tag).copied()
    }

    /// Records that the client was sent the state `id` of a job (and, with
    /// `done`, its end). An id jobcast did not hand out is not recorded.
    pub fn saw(&mut self, tag: JobTag, id: &str, done: bool) {
        match SeenId::parse(id) {
            Some(id) => {
                self.entries.insert(tag, Seen { id, done });
            }
            None => {
                self.entries.remove(&tag);
            }
        }
    }

    /// Has the client seen the state `id` of this job?
    pub fn has_seen(&self, tag: JobTag, id: &str) -> bool {
        self.get(tag)
            .is_some_and(|s| SeenId::parse(id) == Some(s.id))
    }

    /// Has the client seen the state `id` of this job and its `done`?
    pub fn saw_end(&self, tag: JobTag, id: &str) -> bool {
        self.get(tag)
            .is_some_and(|s| s.done && SeenId::parse(id) == Some(s.id))
    }

    /// Keeps only the entries of these jobs (a job unwatched leaves the cursor).
    pub fn forget(&mut self, tag: JobTag) {
        self.entries.remove(&tag);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A LEB128 varint of at most 10 bytes; the value and the bytes it used.
fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        let shift = 7 * i as u32;
        if shift == 63 && part > 1 {
            return None;
        }
        v |= part << shift;
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(job: &str) -> JobTag {
        JobTag::of(&JobId::parse(job).unwrap())
    }

    #[test]
    fn ids_jobcast_hands_out_have_a_compact_form() {
        assert_eq!(SeenId::parse("42"), Some(SeenId::Seq(42)));
        assert_eq!(
            SeenId::parse("h00ff00ff00ff00ff"),
            Some(SeenId::Digest([0, 255, 0, 255, 0, 255, 0, 255]))
        );
        for junk in [
            "",
            "-1",
            "h12",
            "hzzzzzzzzzzzzzzzz",
            "1e3",
            " 1",
            "99999999999999999999",
        ] {
            assert_eq!(SeenId::parse(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn a_cursor_remembers_states_and_ends_per_job() {
        let mut c = StreamCursor::default();
        c.saw(tag("a"), "3", false);
        c.saw(tag("b"), "h0123456789abcdef", true);
        let back = StreamCursor::decode(&c.encode());
        assert!(back.has_seen(tag("a"), "3"));
        assert!(!back.has_seen(tag("a"), "4"));
        assert!(!back.saw_end(tag("a"), "3"));
        assert!(back.saw_end(tag("b"), "h0123456789abcdef"));
        assert!(!back.has_seen(tag("c"), "3"));
    }

    #[test]
    fn a_hundred_jobs_with_the_longest_ids_fit_in_about_two_kib() {
        let mut c = StreamCursor::default();
        for i in 0..100 {
            let job = format!("{i:03}{}", "x".repeat(197));
            c.saw(tag(&job), "h0123456789abcdef", true);
        }
        let text = c.encode();
        assert!(text.len() <= 2048, "{} chars", text.len());
        assert_eq!(StreamCursor::decode(&text), c);
    }

    #[test]
    fn junk_reads_as_empty() {
        for junk in [
            "",
            "!!!",
            "AQ",
            "Ag",
            "AQAAAAAAAP8",
            &"A".repeat(MAX_CURSOR_CHARS + 4),
        ] {
            assert!(StreamCursor::decode(junk).is_empty(), "{junk:?}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn seen_id() -> impl Strategy<Value = SeenId> {
        prop_oneof![
            (0u64..=(1 << 53)).prop_map(SeenId::Seq),
            any::<[u8; 8]>().prop_map(SeenId::Digest),
        ]
    }

    fn id_text(id: SeenId) -> String {
        match id {
            SeenId::Seq(s) => s.to_string(),
            SeenId::Digest(d) => format!(
                "h{}",
                d.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        }
    }

    proptest! {
        #[test]
        fn every_cursor_round_trips(entries in proptest::collection::vec(("[a-z0-9]{1,200}", seen_id(), any::<bool>()), 0..120)) {
            let mut c = StreamCursor::default();
            for (job, id, done) in &entries {
                c.saw(JobTag::of(&JobId::parse(job).unwrap()), &id_text(*id), *done);
            }
            let text = c.encode();
            prop_assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(StreamCursor::decode(&text), c.clone());
            // 15 bytes an entry at most, base64 4/3, the version byte.
            prop_assert!(text.len() <= (1 + 15 * c.len()).div_ceil(3) * 4);
        }

        #[test]
        fn any_text_decodes_to_a_cursor_that_re_encodes_stably(raw in "\\PC{0,300}") {
            let c = StreamCursor::decode(&raw);
            prop_assert_eq!(StreamCursor::decode(&c.encode()), c);
        }

        #[test]
        fn any_bytes_after_the_version_decode_or_read_as_empty(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut raw = vec![VERSION];
            raw.extend(bytes);
            let c = StreamCursor::decode(&URL_SAFE_NO_PAD.encode(&raw));
            prop_assert_eq!(StreamCursor::decode(&c.encode()), c);
        }
    }
}
