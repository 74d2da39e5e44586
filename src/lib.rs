//! # jobcast — a push gateway for long-running job progress
//!
//! One update's path, file by file:
//!
//! ```text
//! worker ─ SET/HSET/PUBLISH ─▶ Redis ──▶ upstream/redis_listener  (one pub/sub connection)
//!        ─ UPDATE jobcast.jobs ▶ Postgres ─▶ upstream/pg_listener
//!                                           ▼
//!                                         upstream/loader  reads (redis_reader, then Postgres), parses
//!                                           ▼
//!                                         hub         registry: job id → feed; one subscription per job
//!                                           ▼
//!                                         fanout      latest state (watch) behind the seq gate,
//!                                           │         (event: the update; each transport's
//!                                           │         encoding cached on it once, shared)
//!                                           ▼
//!                                         stream/watcher  one lifecycle: steps for every transport
//!                  ┌────────────────────────┼──────────────────────┐
//!                  ▼                        ▼                      ▼
//!            stream/sse               stream/ws              stream/poll
//! ```
//!
//! Around it: `config` (settings), `startup` (App::build/run, shared with tests),
//! `http` (routes, and `http::error`: the JSON errors), `auth` (tokens and ownership),
//! `limits`, `metrics`, `store` (Postgres: reads, and the one recorder of a
//! fleet that writes states behind), `demo` (simulated jobs), `shutdown`.
//! The worker side (Publisher, ProgressTracker) is the `jobcast-publish` crate.

pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod event;
pub mod fanout;
pub mod http;
pub mod hub;
pub mod job;
pub mod limits;
pub mod metrics;
pub mod multi;
pub mod readiness;
pub mod shutdown;
pub mod stall;
pub mod startup;
pub mod state;
pub mod store;
pub mod stream;
pub mod sync;
pub mod sys;
pub mod telemetry;
pub mod upstream;
