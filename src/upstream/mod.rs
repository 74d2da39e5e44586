//! Where updates come from. `redis_setup` checks the keyspace-notification
//! config at start and periodically; `redis_selftest` checks the Redis user's
//! permissions at start; `resync` re-reads watched jobs on a slow timer;
//! `redis_listener` holds the one pub/sub connection and feeds
//! the hub; `redis_reader` reads (and, for publishers, writes) state keys
//! through the pool; `pg_listener` turns Postgres NOTIFYs into hub updates.

pub mod backoff;
pub mod pg_listener;
pub mod redis_listener;
pub mod redis_reader;
pub mod redis_selftest;
pub mod redis_setup;
pub mod resync;
