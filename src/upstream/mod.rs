//! Where updates come from. `redis_setup` checks the keyspace-notification
//! config at start and periodically; `redis_selftest` checks the Redis user's
//! permissions at start; `resync` re-reads watched jobs on a slow timer;
//! `redis_listener` holds the one pub/sub connection; `redis_reader` reads
//! (and, for publishers, writes) state keys through the pool; `pg_listener`
//! turns Postgres NOTIFYs into updates; `loader` is what the listeners deliver
//! to: it reads a job's state (Redis, then Postgres) and offers it to the hub.

pub mod backoff;
pub mod loader;
pub mod pg_listener;
pub mod redis_listener;
pub mod redis_reader;
pub mod redis_selftest;
pub mod redis_setup;
pub mod resync;

use std::sync::Arc;

use crate::fanout::Feed;
use crate::job::JobId;

/// What the hub asks of the Redis listener: the first watcher of a job came
/// (subscribe, then read its state), or the last one left.
pub enum UpstreamCmd {
    Subscribe(Arc<Feed>),
    Unsubscribe(JobId),
}

/// How a listener's connection stopped serving: the loop that owns it either
/// returns (shutdown) or reconnects with backoff (lost).
pub(crate) enum Ended {
    Shutdown,
    Lost(String),
}
