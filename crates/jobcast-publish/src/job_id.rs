//! [`JobId`]: a validated job id, safe to splice into Redis keys and channel
//! names (no glob characters, no spaces). The gateway uses this same type.

use std::fmt;
use std::sync::Arc;

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
        if Self::is_valid(s) {
            Ok(JobId(Arc::from(s)))
        } else {
            Err(InvalidJobId)
        }
    }

    /// The rule without the allocation: 1 to [`MAX_JOB_ID_LEN`] bytes of ASCII
    /// letters, digits and `.` `_` `:` `-`. Group names follow it too.
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= MAX_JOB_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
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
