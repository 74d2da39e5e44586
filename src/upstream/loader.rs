//! The loader: turns "something changed" into a document offered to the hub.
//! A coalesced read of the state key through the pool, falling back to
//! Postgres where Redis has no state (or is down) on a job's first load. A
//! read that fails is retried with backoff, the feed staying dirty, so the
//! event that asked for it (maybe the job's last) is never lost to a busy Redis.
//!
//! It is also the one thing the listeners deliver to: they find a watched
//! job's feed, offer it what a channel or a row held, and ask for reads here,
//! never on the hub itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tracing::{debug, warn};

use crate::event::Source;
use crate::fanout::Feed;
use crate::hub::Hub;
use crate::job::{DocError, DocRules, JobId, ProgressDoc};
use crate::store::Store;
use crate::upstream::backoff::Backoff;
use crate::upstream::redis_reader::{KeyState, RedisReader};

/// First pause before a failed state read is tried again; doubles up to
/// [`READ_RETRY_MAX`].
const READ_RETRY_START: Duration = Duration::from_millis(100);
const READ_RETRY_MAX: Duration = Duration::from_secs(5);
/// State reads at once when every watched job is re-read (after a reconnect, on
/// the resync timer): well below the pool size, so first states and snapshots
/// asked for meanwhile still find a connection.
pub const REREAD_CONCURRENCY: usize = 8;

pub struct Loader {
    hub: Arc<Hub>,
    reader: RedisReader,
    store: Option<Store>,
    rules: DocRules,
    /// Is the Redis pub/sub connection up? While it is down a failed read is not
    /// retried: the reconnect re-reads every watched job anyway.
    redis_up: Arc<AtomicBool>,
}

impl Loader {
    pub fn new(
        hub: Arc<Hub>,
        reader: RedisReader,
        store: Option<Store>,
        rules: DocRules,
        redis_up: Arc<AtomicBool>,
    ) -> Arc<Loader> {
        Arc::new(Loader {
            hub,
            reader,
            store,
            rules,
            redis_up,
        })
    }

    /// The feed of a job that has watchers here.
    pub fn feed(&self, job: &str) -> Option<Arc<Feed>> {
        self.hub.feed(job)
    }

    /// Every feed with watchers.
    pub fn feeds(&self) -> Vec<Arc<Feed>> {
        self.hub.feeds()
    }

    pub fn is_watched(&self, job: &JobId) -> bool {
        self.hub.is_watched(job)
    }

    /// Is `feed` still the watched feed of its job (not left by every watcher)?
    pub fn is_current(&self, feed: &Feed) -> bool {
        self.hub.is_current(feed)
    }

    /// Offers a parsed document to its feed (the hub counts what happened).
    pub fn offer(&self, feed: &Feed, doc: ProgressDoc, source: Source) {
        self.hub.offer(feed, doc, source);
    }

    /// Parses raw bytes from a channel message and offers them; bad documents are
    /// dropped with a warning and a metric, never forwarded.
    pub fn offer_raw(&self, feed: &Feed, raw: &[u8], source: Source) {
        match ProgressDoc::parse(raw, &self.rules) {
            Ok(doc) => self.offer(feed, doc, source),
            Err(e) => drop_invalid(&feed.job, e, source),
        }
    }

    /// Asks for a read of `feed`'s state key; coalesced with one in flight.
    pub fn request_read(self: &Arc<Self>, feed: &Arc<Feed>) {
        if feed.request_read() {
            let loader = self.clone();
            let feed = feed.clone();
            tokio::spawn(async move { loader.read_until_clean(&feed).await });
        }
    }

    /// Reads `feed`'s state key now, in the caller's task, unless a read is in
    /// flight (which is then told to go once more).
    pub async fn reread(&self, feed: &Feed) {
        if feed.request_read() {
            self.read_until_clean(feed).await;
        }
    }

    /// Re-reads every watched job, [`REREAD_CONCURRENCY`] at a time, so a
    /// gateway with thousands of jobs does not empty the pool in one burst.
    pub async fn reread_all(&self) {
        let feeds = self.feeds();
        futures::stream::iter(feeds)
            .for_each_concurrent(REREAD_CONCURRENCY, |feed| async move {
                self.reread(&feed).await;
            })
            .await;
    }

    /// Reads until a read succeeded with no request left pending. A failed
    /// Redis read keeps the feed dirty and is retried with backoff while the
    /// job is watched and the pub/sub connection is up.
    async fn read_until_clean(&self, feed: &Feed) {
        let mut backoff = Backoff::new(READ_RETRY_START, READ_RETRY_MAX);
        let mut failures = 0u32;
        loop {
            let redis_answered = self.load(feed).await;
            if !redis_answered && self.is_current(feed) && self.redis_up.load(Ordering::Acquire) {
                failures += 1;
                metrics::counter!("jobcast_redis_read_retries_total").increment(1);
                let delay = backoff.next_delay();
                if failures == 1 {
                    warn!(job = %feed.job, retry_in = ?delay, "redis state read failed; retrying with backoff");
                } else {
                    debug!(job = %feed.job, failures, retry_in = ?delay, "redis state read failed again");
                }
                tokio::time::sleep(delay).await;
                continue;
            }
            if failures > 0 && redis_answered {
                debug!(job = %feed.job, failures, "redis state read succeeded after retries");
            }
            failures = 0;
            backoff.reset();
            if !feed.read_finished() {
                break;
            }
        }
    }

    /// One read of the job's state: Redis first; Postgres where Redis has nothing
    /// or fails on the job's first load, or where the owner is still unknown.
    /// Returns whether Redis answered.
    async fn load(&self, feed: &Feed) -> bool {
        let first_load = !feed.snapshot().ready;
        let fetched = self.fetch(&feed.job, first_load).await;
        let redis_answered = !fetched.redis_failed;
        if let Some(owner) = &fetched.stored_owner {
            feed.set_stored_owner(owner);
        }
        if let Some((doc, source)) = fetched.doc {
            self.offer(feed, doc, source);
        }
        feed.mark_ready(fetched.row, fetched.unavailable);
        redis_answered
    }

    /// Reads what the sources hold of `job`. With `fallback`, Postgres is asked
    /// too: its row fixes the job's owner, and its snapshot stands in where Redis
    /// has no document, fails, or has one naming another owner.
    pub async fn fetch(&self, job: &JobId, fallback: bool) -> Fetched {
        let mut out = Fetched::default();
        metrics::counter!("jobcast_redis_reads_total").increment(1);
        match self.reader.read(job).await {
            Ok(KeyState::Doc(doc)) => out.doc = Some((doc, Source::RedisKey)),
            Ok(KeyState::Missing) => {}
            Ok(KeyState::Invalid(e)) => drop_invalid(job, e, Source::RedisKey),
            Ok(KeyState::WrongType(t)) => {
                warn!(job = %job, key_type = %t, "state key is neither a string nor a hash; ignored");
                metrics::counter!("jobcast_documents_dropped_total", "reason" => "wrong_type")
                    .increment(1);
            }
            Err(e) => {
                debug!(job = %job, error = %e, "redis read failed");
                out.redis_failed = true;
            }
        }
        if let Some(owner) = self.hub.remembered_owner(job) {
            drop_if_foreign(job, &mut out.doc, &owner);
            out.stored_owner = Some(owner.to_string());
        }
        if !fallback {
            return out;
        }
        let Some(store) = &self.store else {
            out.unavailable = out.doc.is_none() && out.redis_failed;
            return out;
        };
        match store.load(job).await {
            Ok(Some(stored)) => {
                out.row = true;
                drop_if_foreign(job, &mut out.doc, &stored.owner_id);
                out.stored_owner = Some(stored.owner_id);
                if out.doc.is_none()
                    && let Some(doc) = stored.doc
                {
                    metrics::counter!("jobcast_postgres_fallbacks_total").increment(1);
                    out.doc = Some((doc, Source::Postgres));
                }
            }
            Ok(None) => {}
            Err(e) => {
                debug!(job = %job, error = %e, "postgres read failed");
                out.store_failed = true;
            }
        }
        out.unavailable = out.doc.is_none() && !out.row && out.redis_failed && out.store_failed;
        out
    }
}

/// What [`Loader::fetch`] found.
#[derive(Debug, Default)]
pub struct Fetched {
    pub doc: Option<(ProgressDoc, Source)>,
    pub stored_owner: Option<String>,
    /// Postgres has a row for the job.
    pub row: bool,
    pub redis_failed: bool,
    pub store_failed: bool,
    /// Nothing is known and no source could be asked: the caller should be told
    /// to retry (503), not that the job is someone else's.
    pub unavailable: bool,
}

impl Fetched {
    pub fn known(&self) -> bool {
        self.doc.is_some() || self.row
    }
    /// The job's owner: the Postgres row's, else the document's.
    pub fn owner(&self) -> Option<&str> {
        self.stored_owner
            .as_deref()
            .or_else(|| self.doc.as_ref().and_then(|(d, _)| d.owner.as_deref()))
    }
}

/// Drops a read document that names another owner than the job's.
fn drop_if_foreign(job: &JobId, doc: &mut Option<(ProgressDoc, Source)>, owner: &str) {
    if doc
        .as_ref()
        .is_some_and(|(d, _)| d.owner.as_deref().is_some_and(|o| o != owner))
    {
        warn!(job = %job, "state key names another owner than the job's; dropped");
        metrics::counter!("jobcast_documents_dropped_total", "reason" => "owner_changed")
            .increment(1);
        *doc = None;
    }
}

pub fn drop_invalid(job: &JobId, e: DocError, source: Source) {
    warn!(job = %job, source = source.as_str(), reason = e.reason(), "document dropped: {e}");
    metrics::counter!("jobcast_documents_dropped_total", "reason" => e.reason()).increment(1);
}
