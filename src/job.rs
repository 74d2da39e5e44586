//! The two values every layer passes around, parsed once at the edge:
//! [`JobId`] (a validated job id, safe to splice into Redis keys and channels) and
//! [`ProgressDoc`] (a worker's JSON object with `seq`, `status` and owner read out).
//! Nothing downstream re-validates either.

use bytes::Bytes;
use serde_json::{Map, Value};

/// The job id type is the publisher library's, so workers and the gateway
/// validate ids with the very same rule.
pub use jobcast_publish::{InvalidJobId, JobId, MAX_JOB_ID_LEN};

/// How a document is read: the parts of the settings the parser needs.
#[derive(Clone, Debug)]
pub struct DocRules {
    pub max_bytes: usize,
    pub owner_field: String,
    /// The field naming the job's group (JOBCAST_GROUP_FIELD).
    pub group_field: String,
    pub terminal_statuses: Vec<String>,
}

impl DocRules {
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        DocRules {
            max_bytes: s.max_document_bytes,
            owner_field: s.owner_field.clone(),
            group_field: s.group_field.clone(),
            terminal_statuses: s
                .terminal_statuses
                .iter()
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect(),
        }
    }

    fn is_terminal(&self, status: &str) -> bool {
        self.terminal_statuses
            .iter()
            .any(|t| t.eq_ignore_ascii_case(status))
    }
}

#[cfg(test)]
impl DocRules {
    /// The defaults' rules with a 4 KiB limit, for unit tests across modules.
    pub(crate) fn for_tests() -> Self {
        DocRules {
            max_bytes: 4096,
            owner_field: "owner_id".into(),
            group_field: "group_id".into(),
            terminal_statuses: vec!["completed".into(), "failed".into(), "cancelled".into()],
        }
    }
}

#[cfg(test)]
impl ProgressDoc {
    /// Parses a document a unit test knows to be valid.
    pub(crate) fn for_tests(raw: &str) -> Self {
        ProgressDoc::parse(raw.as_bytes(), &DocRules::for_tests()).expect("a valid test document")
    }
}

/// Why a document was dropped; also the `reason` label of the drop metric.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum DocError {
    #[error("document is larger than the limit")]
    TooLarge,
    #[error("document is not valid JSON")]
    NotJson,
    #[error("document is not a JSON object")]
    NotObject,
    #[error("seq must be an integer from 0 to 2^53-1")]
    BadSeq,
}

impl DocError {
    pub fn reason(self) -> &'static str {
        match self {
            DocError::TooLarge => "too_large",
            DocError::NotJson => "invalid",
            DocError::NotObject => "not_object",
            DocError::BadSeq => "invalid",
        }
    }
}

/// A worker's progress document. `json` is the object as one line of JSON text,
/// forwarded unchanged (re-serialised only when the worker's text spans lines,
/// which an SSE `data:` line cannot carry).
#[derive(Clone, Debug)]
pub struct ProgressDoc {
    pub json: Bytes,
    pub seq: Option<i64>,
    pub status: Option<String>,
    pub owner: Option<String>,
    /// The group field, where it is a valid group name; anything else is no group.
    pub group: Option<String>,
    pub terminal: bool,
    /// `stall_after_s`: this job's silence, in seconds, before it is reported
    /// stalled (overrides `JOBCAST_STALL_SECS`; 0 never).
    pub stall_after_s: Option<u64>,
}

impl ProgressDoc {
    /// Parses a document from bytes (a string key's value or a channel message).
    pub fn parse(raw: &[u8], rules: &DocRules) -> Result<Self, DocError> {
        if raw.len() > rules.max_bytes {
            return Err(DocError::TooLarge);
        }
        let value: Value = serde_json::from_slice(raw).map_err(|_| DocError::NotJson)?;
        let Value::Object(map) = value else {
            return Err(DocError::NotObject);
        };
        let json = if raw.contains(&b'\n') || raw.contains(&b'\r') {
            Bytes::from(serde_json::to_vec(&map).map_err(|_| DocError::NotJson)?)
        } else {
            Bytes::copy_from_slice(raw)
        };
        Self::from_parts(json, &map, rules)
    }

    /// Builds a document from an already-parsed object (hash keys, Postgres rows).
    pub fn from_object(map: &Map<String, Value>, rules: &DocRules) -> Result<Self, DocError> {
        let json = serde_json::to_vec(map).map_err(|_| DocError::NotJson)?;
        if json.len() > rules.max_bytes {
            return Err(DocError::TooLarge);
        }
        Self::from_parts(Bytes::from(json), map, rules)
    }

    fn from_parts(
        json: Bytes,
        map: &Map<String, Value>,
        rules: &DocRules,
    ) -> Result<Self, DocError> {
        let seq = match map.get("seq") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_seq(v).ok_or(DocError::BadSeq)?),
        };
        let status = map.get("status").and_then(Value::as_str).map(str::to_owned);
        let owner = map.get(&rules.owner_field).and_then(|v| match v {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        let group = map
            .get(&rules.group_field)
            .and_then(Value::as_str)
            .filter(|g| JobId::is_valid(g))
            .map(str::to_owned);
        let terminal = status.as_deref().is_some_and(|s| rules.is_terminal(s));
        let stall_after_s = map.get("stall_after_s").and_then(|v| match v {
            Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f.ceil() as u64)
            }),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        });
        Ok(ProgressDoc {
            json,
            seq,
            status,
            owner,
            group,
            terminal,
            stall_after_s,
        })
    }

    /// A Redis hash as a document: each field whose value parses as JSON is embedded
    /// as JSON, any other as a string. Binary junk (not UTF-8) is rejected.
    pub fn from_hash(fields: Vec<(Vec<u8>, Vec<u8>)>, rules: &DocRules) -> Result<Self, DocError> {
        let mut map = Map::with_capacity(fields.len());
        let mut size = 0usize;
        for (k, v) in fields {
            size += k.len() + v.len();
            if size > rules.max_bytes {
                return Err(DocError::TooLarge);
            }
            let key = String::from_utf8(k).map_err(|_| DocError::NotJson)?;
            let text = String::from_utf8(v).map_err(|_| DocError::NotJson)?;
            let value = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
            map.insert(key, value);
        }
        Self::from_object(&map, rules)
    }
}

pub use jobcast_publish::wire::MAX_SEQ;

/// `seq` as an integer in 0..=[`MAX_SEQ`]: a JSON integer, an integral float, or
/// a string of digits. Anything else (negative, larger, fractional) is `None`.
fn parse_seq(v: &Value) -> Option<i64> {
    let seq = match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=MAX_SEQ as f64).contains(f))
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }?;
    (0..=MAX_SEQ).contains(&seq).then_some(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> DocRules {
        DocRules::for_tests()
    }

    #[test]
    fn job_id_accepts_the_allowed_alphabet() {
        assert!(JobId::parse("8ae7f267").is_ok());
        assert!(JobId::parse("a.b_c:d-E9").is_ok());
        assert!(JobId::parse(&"x".repeat(200)).is_ok());
    }

    #[test]
    fn job_id_rejects_injection_and_bounds() {
        for bad in ["", "a*", "a?", "a b", "a[b]", "a\nb", "ä", "a/b", "a\\b"] {
            assert_eq!(JobId::parse(bad), Err(InvalidJobId), "{bad:?}");
        }
        assert!(JobId::parse(&"x".repeat(201)).is_err());
    }

    #[test]
    fn doc_reads_seq_status_owner() {
        let d = ProgressDoc::parse(
            br#"{"seq":42,"status":"Completed","owner_id":"u1"}"#,
            &rules(),
        )
        .unwrap();
        assert_eq!(d.seq, Some(42));
        assert_eq!(d.owner.as_deref(), Some("u1"));
        assert!(d.terminal, "terminal status compares case-insensitively");
    }

    #[test]
    fn doc_is_forwarded_unchanged_unless_multiline() {
        let raw = br#"{"b":1,  "a":2}"#;
        assert_eq!(&ProgressDoc::parse(raw, &rules()).unwrap().json[..], raw);
        let multi = b"{\"a\":\n1}";
        assert_eq!(
            &ProgressDoc::parse(multi, &rules()).unwrap().json[..],
            br#"{"a":1}"#
        );
    }

    #[test]
    fn bad_docs_are_rejected_with_a_reason() {
        assert_eq!(
            ProgressDoc::parse(b"nope", &rules()).unwrap_err(),
            DocError::NotJson
        );
        assert_eq!(
            ProgressDoc::parse(b"[1]", &rules()).unwrap_err(),
            DocError::NotObject
        );
        let big = format!("{{\"p\":\"{}\"}}", "x".repeat(5000));
        assert_eq!(
            ProgressDoc::parse(big.as_bytes(), &rules()).unwrap_err(),
            DocError::TooLarge
        );
    }

    #[test]
    fn hash_fields_embed_json_or_strings() {
        let d = ProgressDoc::from_hash(
            vec![
                (b"seq".to_vec(), b"7".to_vec()),
                (b"ep1".to_vec(), br#"{"status":"processed"}"#.to_vec()),
                (b"stage".to_vec(), b"loading data".to_vec()),
            ],
            &rules(),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&d.json).unwrap();
        assert_eq!(v["ep1"]["status"], "processed");
        assert_eq!(v["stage"], "loading data");
        assert_eq!(d.seq, Some(7));
        assert!(ProgressDoc::from_hash(vec![(b"k".to_vec(), vec![0xff, 0xfe])], &rules()).is_err());
    }

    #[test]
    fn stall_after_is_read_in_whole_seconds() {
        let stall = |raw: &str| {
            ProgressDoc::parse(raw.as_bytes(), &rules())
                .unwrap()
                .stall_after_s
        };
        assert_eq!(stall(r#"{"stall_after_s":2}"#), Some(2));
        assert_eq!(stall(r#"{"stall_after_s":1.5}"#), Some(2));
        assert_eq!(stall(r#"{"stall_after_s":"30"}"#), Some(30));
        assert_eq!(stall(r#"{"stall_after_s":-1}"#), None);
        assert_eq!(stall(r#"{"p":1}"#), None);
    }

    #[test]
    fn seq_accepts_integral_forms_only() {
        assert_eq!(parse_seq(&serde_json::json!(3)), Some(3));
        assert_eq!(parse_seq(&serde_json::json!(3.0)), Some(3));
        assert_eq!(parse_seq(&serde_json::json!("12")), Some(12));
        assert_eq!(parse_seq(&serde_json::json!(3.5)), None);
        assert_eq!(parse_seq(&serde_json::json!(null)), None);
        assert_eq!(parse_seq(&serde_json::json!(MAX_SEQ)), Some(MAX_SEQ));
        assert_eq!(parse_seq(&serde_json::json!(MAX_SEQ + 1)), None);
        assert_eq!(parse_seq(&serde_json::json!(-1)), None);
        assert_eq!(parse_seq(&serde_json::json!(u64::MAX)), None);
        assert_eq!(parse_seq(&serde_json::json!("-3")), None);
    }

    #[test]
    fn out_of_range_seq_rejects_the_document() {
        for bad in [
            r#"{"seq":-1}"#,
            r#"{"seq":9007199254740992}"#,
            r#"{"seq":1.5}"#,
            r#"{"seq":true}"#,
        ] {
            assert_eq!(
                ProgressDoc::parse(bad.as_bytes(), &rules()).unwrap_err(),
                DocError::BadSeq,
                "{bad}"
            );
        }
        assert_eq!(
            ProgressDoc::parse(br#"{"seq":null}"#, &rules())
                .unwrap()
                .seq,
            None
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn allowed(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
    }

    proptest! {
        #[test]
        fn job_ids_are_exactly_the_documented_alphabet_and_length(s in "\\PC{0,210}|[A-Za-z0-9._:-]{0,210}") {
            let valid = !s.is_empty() && s.len() <= MAX_JOB_ID_LEN && s.chars().all(allowed);
            match JobId::parse(&s) {
                Ok(id) => { prop_assert!(valid); prop_assert_eq!(id.as_str(), s.as_str()); }
                Err(e) => { prop_assert!(!valid); prop_assert_eq!(e, InvalidJobId); }
            }
        }

        #[test]
        fn any_bytes_parse_to_a_document_or_a_documented_error(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let rules = DocRules::for_tests();
            match ProgressDoc::parse(&raw, &rules) {
                Ok(doc) => {
                    let v: Value = serde_json::from_slice(&doc.json).expect("forwarded bytes are JSON");
                    prop_assert!(v.is_object());
                    prop_assert!(!doc.json.contains(&b'\n'), "one SSE data line");
                    prop_assert!(doc.seq.is_none_or(|s| (0..=MAX_SEQ).contains(&s)));
                }
                Err(DocError::NotJson) => prop_assert!(serde_json::from_slice::<Value>(&raw).is_err()),
                Err(DocError::NotObject) => prop_assert!(!serde_json::from_slice::<Value>(&raw).unwrap().is_object()),
                Err(DocError::TooLarge) => prop_assert!(raw.len() > rules.max_bytes),
                Err(DocError::BadSeq) => prop_assert!(serde_json::from_slice::<Value>(&raw).unwrap().get("seq").is_some()),
            }
        }

        #[test]
        fn json_objects_with_any_seq_keep_it_only_in_range(seq in any::<i64>(), status in "[a-zA-Z]{0,12}", owner in ".{0,20}") {
            let raw = serde_json::json!({"seq": seq, "status": status, "owner_id": owner}).to_string();
            let parsed = ProgressDoc::parse(raw.as_bytes(), &DocRules::for_tests());
            if (0..=MAX_SEQ).contains(&seq) {
                let doc = parsed.expect("in range");
                prop_assert_eq!(doc.seq, Some(seq));
                prop_assert_eq!(doc.terminal, ["completed", "failed", "cancelled"].iter().any(|t| t.eq_ignore_ascii_case(&status)));
                prop_assert_eq!(doc.owner, (!owner.is_empty()).then_some(owner));
            } else {
                prop_assert_eq!(parsed.unwrap_err(), DocError::BadSeq);
            }
        }

        #[test]
        fn any_hash_parses_to_an_object_of_its_fields_or_a_documented_error(
            fields in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..12), proptest::collection::vec(any::<u8>(), 0..40)), 0..12)
        ) {
            let rules = DocRules::for_tests();
            let keys: Vec<Vec<u8>> = fields.iter().map(|(k, _)| k.clone()).collect();
            match ProgressDoc::from_hash(fields, &rules) {
                Ok(doc) => {
                    let v: Value = serde_json::from_slice(&doc.json).unwrap();
                    let obj = v.as_object().expect("an object");
                    for k in keys {
                        prop_assert!(obj.contains_key(std::str::from_utf8(&k).unwrap()));
                    }
                }
                Err(e) => prop_assert!(matches!(e, DocError::NotJson | DocError::TooLarge | DocError::BadSeq)),
            }
        }
    }
}
