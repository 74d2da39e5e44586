//! `LISTEN jobcast_jobs`: Postgres as a push source. The
//! trigger of `migrations/` NOTIFYs the job id whenever a row's snapshot
//! changes; for a job with watchers here the listener reads the row and offers
//! its snapshot to the loader, exactly as a Redis event would be. So a worker that
//! only updates `jobs` is pushed live, and so is every update while Redis is down.
//!
//! The seq gate of the feed drops what watchers already have, which includes the
//! echo of jobcast's own write-behind (it NOTIFYs too). States offered from here
//! are never written behind, so there is no write → NOTIFY → write loop.
//!
//! The NOTIFY of a row that holds a watched job's latest state also settles
//! that state as durable: that is how a stream learns that the recorder,
//! maybe on another instance, has written the terminal state it holds `done` for.
//!
//! One connection per gateway, whatever the number of jobs. When it fails the
//! listener reconnects with backoff and then re-reads every watched job's row,
//! since NOTIFYs sent while it was away are gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use sqlx::postgres::PgListener as SqlxListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::event::Source;
use crate::fanout::Feed;
use crate::job::{JobId, ProgressDoc};
use crate::multi::groups::Groups;
use crate::store::{Store, StoredJob};
use crate::upstream::Ended;
use crate::upstream::backoff::Backoff;
use crate::upstream::loader::Loader;

/// The NOTIFY channel of the `jobs` trigger.
pub const CHANNEL: &str = "jobcast_jobs";
/// Bound on connecting and issuing `LISTEN`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Rows read at once when re-reading every watched job after a reconnect.
const RESYNC_CONCURRENCY: usize = 4;

pub struct PgListener {
    loader: Arc<Loader>,
    store: Store,
    /// A row whose `group_id` names a watched group adds its job there.
    groups: Arc<Groups>,
    /// Is the Redis pub/sub connection up? Decides what a row without `seq` means
    /// (see [`PgListener::is_echo`]).
    redis_up: Arc<AtomicBool>,
}

impl PgListener {
    pub fn new(
        loader: Arc<Loader>,
        store: Store,
        groups: Arc<Groups>,
        redis_up: Arc<AtomicBool>,
    ) -> Self {
        PgListener {
            loader,
            store,
            groups,
            redis_up,
        }
    }

    /// Runs until `shutdown`: listen, serve, and on failure back off and retry.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut was_up = true;
        loop {
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = tokio::time::timeout(CONNECT_TIMEOUT, self.connect()) => c,
            };
            match connected {
                Ok(Ok(listener)) => {
                    backoff.reset();
                    set_up(true);
                    if !was_up {
                        info!("postgres LISTEN connection is back; re-reading watched jobs");
                    }
                    self.resync().await;
                    match self.serve(listener, &shutdown).await {
                        Ended::Shutdown => return,
                        Ended::Lost(why) => {
                            warn!(error = %why, "postgres LISTEN connection lost; Redis streams go on, reconnecting");
                        }
                        // A Redis primary switch; never a Postgres ending.
                        Ended::Switched => {}
                    }
                    set_up(false);
                    was_up = false;
                }
                Ok(Err(e)) => {
                    set_up(false);
                    if was_up {
                        warn!(error = %e, "postgres LISTEN failed; retrying with backoff");
                    } else {
                        debug!(error = %e, "postgres LISTEN still failing");
                    }
                    was_up = false;
                }
                Err(_) => {
                    set_up(false);
                    if was_up {
                        warn!(timeout = ?CONNECT_TIMEOUT, "postgres LISTEN timed out; retrying with backoff");
                    }
                    was_up = false;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    async fn connect(&self) -> Result<SqlxListener, sqlx::Error> {
        let mut listener = SqlxListener::connect_with(self.store.pool()).await?;
        // A lost connection ends `serve` at once; this loop owns reconnecting
        // (with backoff, and with the re-read that covers the NOTIFYs missed).
        listener.eager_reconnect(false);
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }

    async fn serve(&self, mut listener: SqlxListener, shutdown: &CancellationToken) -> Ended {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                n = listener.try_recv() => match n {
                    Ok(Some(n)) => self.on_notify(n.payload()).await,
                    Ok(None) => return Ended::Lost("connection closed".into()),
                    Err(e) => return Ended::Lost(e.to_string()),
                },
            }
        }
    }

    async fn on_notify(&self, payload: &str) {
        metrics::counter!("jobcast_postgres_notifies_total").increment(1);
        let Ok(job) = JobId::parse(payload) else {
            debug!(payload, "NOTIFY payload is not a job id; ignored");
            return;
        };
        if self.groups.any_watched() {
            self.join_group(&job).await;
        }
        let Some(feed) = self.loader.feed(job.as_str()) else {
            debug!(job = %job, "NOTIFY for a job without watchers here; ignored");
            return;
        };
        self.refresh(&feed).await;
    }

    /// Adds the job to its row's group, where that group has streams here
    /// (one query per NOTIFY, and only while some group is watched).
    async fn join_group(&self, job: &JobId) {
        match self.store.job_group(job).await {
            Ok(Some(group)) if self.groups.is_watched(&group) => {
                self.groups.add_members(&group, [job.clone()]);
            }
            Ok(_) => {}
            Err(e) => debug!(job = %job, error = %e, "could not read the job's group"),
        }
    }

    /// Re-reads every watched job's row (after a (re)connect).
    async fn resync(&self) {
        let feeds = self.loader.feeds();
        if feeds.is_empty() {
            return;
        }
        futures::stream::iter(feeds)
            .for_each_concurrent(RESYNC_CONCURRENCY, |feed| async move {
                self.refresh(&feed).await;
            })
            .await;
    }

    /// Reads the job's row and offers its snapshot; the seq gate decides.
    async fn refresh(&self, feed: &Feed) {
        let job = &feed.job;
        match self.store.load(job).await {
            Ok(Some(StoredJob {
                doc: Some(doc),
                owner_id,
            })) => {
                // A row that appears for a job with no owner yet fixes it.
                feed.set_stored_owner(&owner_id);
                settle_if_written(feed, &doc);
                if self.is_echo(feed, &doc) {
                    debug!(job = %job, "row without seq matches what Redis gave; ignored");
                    return;
                }
                self.loader.offer(feed, doc, Source::Postgres);
            }
            // Not an object, or no snapshot yet: `load` said why where it matters.
            Ok(Some(StoredJob { doc: None, .. })) => {
                debug!(job = %job, "row has no usable snapshot; ignored")
            }
            Ok(None) => debug!(job = %job, "NOTIFY for a row that is gone; ignored"),
            Err(e) => warn!(job = %job, error = %e, "could not read the job's row after NOTIFY"),
        }
    }

    /// A row WITHOUT `seq` cannot be ordered against the states Redis gave: it
    /// may be the echo of an older state written behind. While Redis is up and
    /// gave the job's latest state, Redis is taken as the authority and such a
    /// row ignored; when Redis is down, or the row is the only source, it is news.
    /// (Rows with `seq` need none of this: the seq gate orders them.) Workers that
    /// write both Redis and Postgres should put a `seq` in their documents.
    fn is_echo(&self, feed: &Feed, doc: &ProgressDoc) -> bool {
        if doc.seq.is_some() {
            return false;
        }
        let Some(latest) = feed.snapshot().latest else {
            return false;
        };
        if same_json(&latest.doc.json, &doc.json) {
            return true;
        }
        latest.source != Source::Postgres && self.redis_up.load(Ordering::Acquire)
    }
}

/// The recorder (this instance or another) wrote the row: the feed's latest
/// state is durable once the row holds it or a later one, and a stream holding
/// `done` for it may go on.
fn settle_if_written(feed: &Feed, row: &ProgressDoc) {
    let Some(latest) = feed.snapshot().latest else {
        return;
    };
    let written = match (row.seq, latest.doc.seq) {
        (Some(row), Some(latest)) => row >= latest,
        _ => same_json(&row.json, &latest.doc.json),
    };
    if written {
        latest.durable.settle();
    }
}

/// Equal as JSON values (jsonb reorders keys and drops whitespace, so the bytes
/// of a row's snapshot differ from the worker's text it came from).
fn same_json(a: &[u8], b: &[u8]) -> bool {
    match (
        serde_json::from_slice::<serde_json::Value>(a),
        serde_json::from_slice::<serde_json::Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn set_up(up: bool) {
    metrics::gauge!("jobcast_postgres_up").set(if up { 1.0 } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_equality_ignores_key_order_and_spacing() {
        assert!(same_json(br#"{"b":1, "a":[1,2]}"#, br#"{"a":[1,2],"b":1}"#));
        assert!(!same_json(br#"{"a":1}"#, br#"{"a":2}"#));
        assert!(!same_json(b"nope", b"nope"));
    }
}
