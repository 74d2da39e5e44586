//! The worker side: what a job writes and how (docs/protocol.md is the wire
//! format for other languages). [`Publisher`] is the one write path — SET the
//! state key with its TTL and PUBLISH on the job channel, atomically — shared by
//! [`ProgressTracker`] (Rust workers), `POST /jobs/{id}`, `jobcast publish` and
//! `demo` (simulated jobs for `--dev` and `jobcast demo`).

pub mod demo;
pub mod tracker;

pub use tracker::{
    Clock, EndpointStatus, EtaEstimator, JobProgress, ProgressError, ProgressTracker, Stage,
    Status, SystemClock, TrackerError,
};

use crate::job::{DocRules, JobId};
use crate::upstream::redis_reader::{RedisError, RedisReader};

/// TTL of a state key, in seconds, unless the worker says otherwise: long enough
/// for a watcher to come back after a lunch break, short enough that abandoned
/// jobs leave Redis on their own.
pub const DEFAULT_TTL_SECS: u64 = 7200;
/// The gateway's default `JOBCAST_MAX_DOCUMENT_BYTES`; a larger document would be
/// dropped by the gateway, so the tracker refuses to write it.
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 65536;
/// The gateway's default `JOBCAST_KEY_PREFIX`.
pub const DEFAULT_KEY_PREFIX: &str = "progress:job:";

/// Writes progress documents to Redis like every jobcast worker should: one
/// atomic round trip that SETs `PREFIX{job}` (with the TTL) and PUBLISHes the
/// same bytes on the channel `PREFIX{job}`. Cheap to clone (a pool handle).
#[derive(Clone)]
pub struct Publisher {
    reader: RedisReader,
    ttl_secs: u64,
    max_document_bytes: usize,
}

impl Publisher {
    /// A publisher with the default prefix, TTL and size limit. Connects lazily.
    pub fn connect(redis_url: &str) -> anyhow::Result<Self> {
        Self::connect_with_prefix(redis_url, DEFAULT_KEY_PREFIX)
    }

    pub fn connect_with_prefix(redis_url: &str, key_prefix: &str) -> anyhow::Result<Self> {
        let rules = DocRules {
            max_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
            owner_field: "owner_id".into(),
            terminal_statuses: vec!["completed".into(), "failed".into(), "cancelled".into()],
        };
        Ok(Self::from_reader(RedisReader::new(
            redis_url, key_prefix, rules,
        )?))
    }

    /// Shares the gateway's own pool (demo jobs in `--dev`, `POST /jobs/{id}`).
    pub fn from_reader(reader: RedisReader) -> Self {
        Publisher {
            reader,
            ttl_secs: DEFAULT_TTL_SECS,
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
        }
    }

    /// TTL of the state key in seconds; 0 keeps the key forever.
    pub fn with_ttl(mut self, ttl_secs: u64) -> Self {
        self.ttl_secs = ttl_secs;
        self
    }

    /// The gateway's `JOBCAST_MAX_DOCUMENT_BYTES`, where it is not the default.
    pub fn with_max_document_bytes(mut self, max: usize) -> Self {
        self.max_document_bytes = max;
        self
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    pub fn max_document_bytes(&self) -> usize {
        self.max_document_bytes
    }

    /// The state key (and channel) of `job`.
    pub fn key(&self, job: &JobId) -> String {
        self.reader.key(job)
    }

    /// SET + PUBLISH of `json` (a JSON object; not checked here) in one atomic
    /// script. Returns how many channel subscribers received it.
    pub async fn write(&self, job: &JobId, json: &[u8]) -> Result<i64, RedisError> {
        self.reader.write(job, json, self.ttl_secs).await
    }
}
