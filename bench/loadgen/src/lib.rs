//! The load generator of `bench/run.sh`: SSE and WebSocket subscribers over
//! loopback, Redis and HTTP publishers, and /proc sampling of the servers under
//! test, so jobcast and nginx + Nchan are measured by the same code in one run.

pub mod account;
pub mod echo;
pub mod publish;
pub mod run;
pub mod sub;
pub mod sys;
pub mod wire;
