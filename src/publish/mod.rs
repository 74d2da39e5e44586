//! The worker side: what a job writes and how. `demo` simulates realistic
//! multi-stage jobs (used by `--dev` and `jobcast demo`).

pub mod demo;
