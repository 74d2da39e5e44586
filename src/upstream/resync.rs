//! The slow re-read: every `JOBCAST_RESYNC_SECS` each watched job's state key
//! is read again (a bounded number at a time). Keyspace notifications can be
//! lost without the pub/sub connection noticing — turned off by another
//! application, refused by a managed Redis — and a worker that writes only
//! `SET` would then never reach its watchers; this bounds that delay.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::upstream::loader::Loader;

/// Runs until `shutdown`. While the pub/sub connection is down nothing is read:
/// its reconnect re-reads every watched job itself.
pub async fn run(
    loader: Arc<Loader>,
    period: Duration,
    redis_up: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut timer = tokio::time::interval(period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = timer.tick() => {}
        }
        if !redis_up.load(Ordering::Acquire) {
            continue;
        }
        let started = tokio::time::Instant::now();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = loader.reread_all() => {}
        }
        metrics::counter!("jobcast_resyncs_total").increment(1);
        debug!(took = ?started.elapsed(), "re-read every watched job");
    }
}
