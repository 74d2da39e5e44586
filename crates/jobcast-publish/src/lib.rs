//! # jobcast-publish — report a job's progress to jobcast from a Rust worker
//!
//! A worker depends on this crate alone (Redis and serde, no web stack):
//!
//! ```text
//! ProgressTracker ── one change ──▶ progress::JobProgress (stages, %, seq, ETA via eta)
//!        │                                   │ to_json: the document
//!        ▼                                   ▼
//!    Publisher ───────────────────────▶ wire: SET state key + PUBLISH, one script
//! ```
//!
//! `redis_url` reads where Redis is (one server, or a cluster's seeds, where
//! the channel is sharded: SPUBLISH).
//!
//! `job_id` is the id rule shared with the gateway. The document's fields are
//! described in the gateway's docs/protocol.md.

pub mod eta;
pub mod job_id;
pub mod progress;
pub mod publisher;
pub mod redis_url;
pub mod tracker;
pub mod wire;

pub use eta::EtaEstimator;
pub use job_id::{InvalidJobId, JobId, MAX_JOB_ID_LEN};
pub use progress::{EndpointStatus, JobProgress, ProgressError, Stage, Status};
pub use publisher::{PublishError, Publisher};
pub use redis_url::{RedisLocation, RedisUrlError};
pub use tracker::{Clock, ProgressTracker, SystemClock, TrackerError};
pub use wire::{
    DEFAULT_GROUP_PREFIX, DEFAULT_KEY_PREFIX, DEFAULT_MAX_DOCUMENT_BYTES, DEFAULT_TTL_SECS,
};
