//! Simulated jobs for demos: a timetable-solver-like pipeline of weighted stages
//! with uneven speed, written through [`ProgressTracker`] exactly as a real Rust
//! worker would (its first user). Each run ends `completed`; the next run of the same job id
//! starts after a pause and keeps counting `seq`, so reloading the page shows it. Jobs of
//! one group (a project) show together on the demo page's dashboard (`/?group=`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use jobcast_publish::{JobId, ProgressTracker, Publisher};

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

/// Runs `job` (in `group`, if any) through the stages, then again after a
/// pause, until `stop` (or once, with `once`).
pub async fn run(
    publisher: Publisher,
    job: JobId,
    owner: String,
    group: Option<String>,
    once: bool,
    stop: CancellationToken,
) {
    let publisher = publisher.with_ttl(DEMO_TTL_SECS);
    // Each run is a new tracker; its seqs start above the last run's.
    let mut last_seq = 0;
    loop {
        match one_run(&publisher, &job, &owner, group.as_deref(), last_seq, &stop).await {
            Ok(seq) => last_seq = seq,
            Err(e) => warn!(job = %job, error = %e, "demo job could not write to Redis; retrying"),
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

/// One run to `completed` (or until `stop`); returns the last `seq` written.
async fn one_run(
    publisher: &Publisher,
    job: &JobId,
    owner: &str,
    group: Option<&str>,
    last_seq: i64,
    stop: &CancellationToken,
) -> anyhow::Result<i64> {
    let stages: Vec<(&str, f64)> = STAGES.iter().map(|(n, w, _, _)| (*n, *w)).collect();
    let mut tracker = ProgressTracker::new(publisher.clone(), job.as_str(), owner, &stages)?;
    if let Some(group) = group {
        tracker = tracker.in_group(group)?;
    }
    tracker.resume_after_seq(last_seq);
    info!(job = %job, "demo job started");
    for (name, _, steps, step_ms) in STAGES {
        tracker.start_stage(name).await?;
        for step in 1..=*steps + 1 {
            // Uneven speed, as real solvers have: ±50 % per step.
            let jitter = rand::random_range(0.5..1.5);
            tokio::select! {
                _ = stop.cancelled() => return Ok(tracker.progress().seq()),
                _ = tokio::time::sleep(Duration::from_millis(*step_ms).mul_f64(jitter)) => {}
            }
            if step <= *steps {
                tracker
                    .update_stage_progress(u64::from(step), u64::from(*steps))
                    .await?;
            }
        }
    }
    tracker.mark_completed().await?;
    info!(job = %job, "demo job completed");
    Ok(tracker.progress().seq())
}
