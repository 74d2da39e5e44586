//! jobcast's integration tests: ONE test binary (fast to link), each test with
//! its own `redis-server` and, where it needs one, its own Postgres database,
//! talking to a real gateway over real sockets.

mod support;

mod app;
mod child;
mod clients;

mod auth;
mod auth_causes;
mod auth_hook;
mod browser;
mod browser_many;
mod deploy;
mod distributed_redis;
mod durable;
mod fanout;
mod final_state;
mod fleet;
mod huge_values;
mod js_client;
mod jwks;
mod keyspace;
mod many_jobs;
mod openapi;
mod operate;
mod otel_traces;
mod pg_schema;
mod poll_snapshot;
mod progress_columns;
mod proxy;
mod publish;
mod publish_groups;
mod python_client;
mod read_retry;
mod readiness;
mod recorder;
mod redis_acl;
mod security;
mod selftest;
mod sse;
mod stalled;
mod storm;
mod stream_connection;
mod tail;
mod ws;
