//! Simulated jobs for demos: a timetable-solver-like pipeline of weighted stages
//! with uneven speed, written like a real worker would (SET with TTL + PUBLISH,
//! increasing `seq`). Each run ends `completed`; the next run of the same job id
//! starts after a pause and keeps counting `seq`, so reloading the page shows it.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::job::JobId;
use crate::upstream::redis_reader::RedisReader;

/// (stage, weight in % of the whole job, steps, milliseconds per step)
const STAGES: &[(&str, f64, u32, u64)] = &[
    ("loading_data", 5.0, 5, 300),
    ("clustering", 10.0, 8, 350),
    ("cpsat_solving", 60.0, 30, 400),
    ("validating", 15.0, 8, 300),
    ("exporting", 10.0, 5, 300),
];
/// Pause between the end of a run and the start of the next.
const PAUSE_BETWEEN_RUNS: Duration = Duration::from_secs(15);
pub const DEMO_TTL_SECS: u64 = 7200;

/// Runs `job` through the stages, then again after a pause, until `stop`
/// (or once, with `once`).
pub async fn run(
    reader: RedisReader,
    job: JobId,
    owner: String,
    once: bool,
    stop: CancellationToken,
) {
    let mut seq: i64 = now_millis();
    loop {
        if let Err(e) = one_run(&reader, &job, &owner, &mut seq, &stop).await {
            warn!(job = %job, error = %e, "demo job could not write to Redis; retrying");
        }
        if once || stop.is_cancelled() {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PAUSE_BETWEEN_RUNS) => {}
        }
    }
}

async fn one_run(
    reader: &RedisReader,
    job: &JobId,
    owner: &str,
    seq: &mut i64,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let started_at = chrono::Utc::now().to_rfc3339();
    let stages: Vec<_> = STAGES
        .iter()
        .map(|(n, w, _, _)| json!({"name": n, "weight": w}))
        .collect();
    info!(job = %job, "demo job started");
    let mut done_weight = 0.0;
    for (name, weight, steps, step_ms) in STAGES {
        for step in 0..=*steps {
            let stage_progress = 100.0 * f64::from(step) / f64::from(*steps);
            let overall = done_weight + weight * stage_progress / 100.0;
            let elapsed = started.elapsed().as_secs_f64();
            let eta = if overall > 0.5 {
                elapsed * (100.0 - overall) / overall
            } else {
                0.0
            };
            *seq += 1;
            let doc = json!({
                "job_id": job.as_str(), "seq": *seq, "status": "running", "owner_id": owner,
                "stage": name, "stage_progress": round2(stage_progress), "overall_progress": round2(overall),
                "eta_seconds": eta.round(), "stages": stages, "started_at": started_at,
                "last_updated": chrono::Utc::now().to_rfc3339(),
            });
            reader
                .write(job, doc.to_string().as_bytes(), DEMO_TTL_SECS)
                .await?;
            // Uneven speed, as real solvers have: ±50 % per step.
            let jitter = rand::random_range(0.5..1.5);
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(*step_ms).mul_f64(jitter)) => {}
            }
        }
        done_weight += weight;
    }
    *seq += 1;
    let doc = json!({
        "job_id": job.as_str(), "seq": *seq, "status": "completed", "owner_id": owner,
        "stage": "done", "stage_progress": 100.0, "overall_progress": 100.0, "eta_seconds": 0,
        "stages": stages, "started_at": started_at, "last_updated": chrono::Utc::now().to_rfc3339(),
    });
    reader
        .write(job, doc.to_string().as_bytes(), DEMO_TTL_SECS)
        .await?;
    info!(job = %job, "demo job completed");
    Ok(())
}

fn round2(x: f64) -> f64 {
    (x.clamp(0.0, 100.0) * 100.0).round() / 100.0
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
