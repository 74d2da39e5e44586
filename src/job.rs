//! The two values every layer passes around, parsed once at the edge:
//! [`JobId`] (a validated job id, safe to splice into Redis keys and channels) and
//! [`ProgressDoc`] (a worker's JSON object with `seq`, `status` and owner read out).
//! Nothing downstream re-validates either.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};

/// Longest accepted job id, in characters.
pub const MAX_JOB_ID_LEN: usize = 200;

/// A job id: 1–200 characters from `A-Z a-z 0-9 . _ : -`. No glob characters, no
/// spaces, so it can never widen a Redis key or pattern.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(Arc<str>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("job id must be 1-{MAX_JOB_ID_LEN} characters from A-Z a-z 0-9 . _ : -")]
pub struct InvalidJobId;

impl JobId {
    pub fn parse(s: &str) -> Result<Self, InvalidJobId> {
        let ok = !s.is_empty()
            && s.len() <= MAX_JOB_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if ok {
            Ok(JobId(Arc::from(s)))
        } else {
            Err(InvalidJobId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets the hub look a job up by the `&str` cut from a Redis channel name
/// without allocating a `JobId` per message (`Arc<str>` hashes as `str`).
impl std::borrow::Borrow<str> for JobId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", &self.0)
    }
}

/// How a document is read: the parts of the settings the parser needs.
#[derive(Clone, Debug)]
pub struct DocRules {
    pub max_bytes: usize,
    pub owner_field: String,
    pub terminal_statuses: Vec<String>,
}

impl DocRules {
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        DocRules {
            max_bytes: s.max_document_bytes,
            owner_field: s.owner_field.clone(),
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
}

impl DocError {
    pub fn reason(self) -> &'static str {
        match self {
            DocError::TooLarge => "too_large",
            DocError::NotJson => "invalid",
            DocError::NotObject => "not_object",
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
    pub terminal: bool,
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
        Ok(Self::from_parts(json, &map, rules))
    }

    /// Builds a document from an already-parsed object (hash keys, Postgres rows).
    pub fn from_object(map: &Map<String, Value>, rules: &DocRules) -> Result<Self, DocError> {
        let json = serde_json::to_vec(map).map_err(|_| DocError::NotJson)?;
        if json.len() > rules.max_bytes {
            return Err(DocError::TooLarge);
        }
        Ok(Self::from_parts(Bytes::from(json), map, rules))
    }

    fn from_parts(json: Bytes, map: &Map<String, Value>, rules: &DocRules) -> Self {
        let seq = map.get("seq").and_then(parse_seq);
        let status = map.get("status").and_then(Value::as_str).map(str::to_owned);
        let owner = map.get(&rules.owner_field).and_then(|v| match v {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        let terminal = status.as_deref().is_some_and(|s| rules.is_terminal(s));
        ProgressDoc {
            json,
            seq,
            status,
            owner,
            terminal,
        }
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

/// `seq` as an integer: a JSON integer, an integral float, or a string of digits.
fn parse_seq(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
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
    fn seq_accepts_integral_forms_only() {
        assert_eq!(parse_seq(&serde_json::json!(3)), Some(3));
        assert_eq!(parse_seq(&serde_json::json!(3.0)), Some(3));
        assert_eq!(parse_seq(&serde_json::json!("12")), Some(12));
        assert_eq!(parse_seq(&serde_json::json!(3.5)), None);
        assert_eq!(parse_seq(&serde_json::json!(null)), None);
    }
}
