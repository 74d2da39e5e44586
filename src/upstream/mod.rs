//! Where updates come from. `redis_setup` checks the keyspace-notification
//! config at start and periodically; `redis_selftest` checks the Redis user's
//! permissions at start; `resync` re-reads watched jobs on a slow timer;
//! `redis_listener` holds the one pub/sub connection and feeds
//! the hub; `redis_reader` reads (and, for publishers, writes) state keys
//! through the pool; `pg_listener` turns Postgres NOTIFYs into hub updates.
//!
//! Where Redis is (`redis_target`: one server, a cluster, or a primary named by
//! sentinels) decides the rest: `redis_conn` gives command connections to
//! any of them; in a cluster `cluster_listener` replaces `redis_listener`,
//! subscribing each job on its slot's primary (`cluster_topology`); behind
//! sentinels `sentinel` follows the primary and both follow it.

pub mod backoff;
pub mod cluster_listener;
pub mod cluster_topology;
pub mod pg_listener;
pub mod redis_conn;
pub mod redis_listener;
pub mod redis_reader;
pub mod redis_selftest;
pub mod redis_setup;
pub mod redis_target;
pub mod resync;
pub mod sentinel;
