//! Where updates come from. `redis_setup` checks the keyspace-notification
//! config at start and periodically; `redis_selftest` checks the Redis user's
//! permissions at start; `resync` re-reads watched jobs on a slow timer;
//! `redis_listener` holds the one pub/sub connection; `redis_reader` reads
//! (and, for publishers, writes) state keys through the command connections;
//! `pg_listener` turns Postgres NOTIFYs into updates; `loader` is what the
//! listeners deliver to: it reads a job's state (Redis, then Postgres) and
//! offers it to the hub.
//!
//! Where Redis is (`redis_target`: one server, a cluster, or a primary named by
//! sentinels) decides the rest: `redis_conn` gives command connections to
//! any of them; in a cluster `cluster_listener` replaces `redis_listener`,
//! subscribing each job on its slot's primary (`cluster_topology`); behind
//! sentinels `sentinel` follows the primary and both follow it.

pub mod backoff;
pub mod cluster_listener;
pub mod cluster_topology;
pub mod loader;
pub mod pg_listener;
pub mod redis_conn;
pub mod redis_listener;
pub mod redis_reader;
pub mod redis_selftest;
pub mod redis_setup;
pub mod redis_target;
pub mod resync;
pub mod sentinel;

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
    /// Behind sentinels: they named another primary; the Redis listener
    /// moves there at once, without backoff.
    Switched,
}
