//! Retention: rows of jobs that ended more than
//! `JOBCAST_RETENTION_DAYS` ago are deleted. [`Store::sweep`] does one sweep
//! (`jobcast cleanup` calls it for cron users); [`run`] repeats it every
//! [`SWEEP_INTERVAL`] inside `serve`. Every gateway of a fleet runs the task; a
//! Postgres advisory lock makes sure only one of them sweeps at a time.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::store::Store;

/// How often a gateway tries to sweep.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// The first sweep waits this long after start, so a fleet restarting together
/// does not sweep while it is busy reconnecting every watcher.
pub const FIRST_SWEEP_DELAY: Duration = Duration::from_secs(60);

/// Advisory-lock key of the retention sweep ("jobcast" in ASCII, as a number).
pub const RETENTION_LOCK_KEY: i64 = 0x006a_6f62_6361_7374;

impl Store {
    /// Deletes rows of jobs that ended more than `days` ago. Guarded by a
    /// transaction-scoped advisory lock so one instance sweeps at a time;
    /// `None` where another instance holds it. The lock is released with the
    /// transaction, so a sweeper that dies never leaves it held.
    pub async fn sweep(&self, days: u32) -> Result<Option<u64>, sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RETENTION_LOCK_KEY)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(None);
        }
        // `completed_at IS NOT NULL`: unfinished jobs stay, however old.
        let sql = format!(
            "DELETE FROM {} WHERE completed_at IS NOT NULL AND completed_at < now() - make_interval(days => $1)",
            self.jobs_table()
        );
        let deleted = sqlx::query(&sql)
            .bind(days as i32)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(Some(deleted))
    }
}

/// Sweeps every [`SWEEP_INTERVAL`] (the first after [`FIRST_SWEEP_DELAY`])
/// until `shutdown`. A failed sweep is logged and tried again next time.
pub async fn run(store: Store, days: u32, shutdown: CancellationToken) {
    let mut next = tokio::time::Instant::now() + FIRST_SWEEP_DELAY;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        next += SWEEP_INTERVAL;
        match store.sweep(days).await {
            Ok(Some(0)) => debug!(days, "retention sweep: nothing to delete"),
            Ok(Some(n)) => {
                metrics::counter!("jobcast_retention_deleted_total").increment(n);
                info!(deleted = n, days, "retention sweep deleted finished jobs");
            }
            Ok(None) => debug!("retention sweep: another instance is sweeping"),
            Err(e) => warn!(error = %e, "retention sweep failed; next try in an hour"),
        }
    }
}
