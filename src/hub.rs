//! The hub: job id → [`Feed`], with a watcher count per job. The first watcher of a
//! job asks the Redis listener to subscribe (keyspace channel + job channel); the
//! last one to leave asks it to unsubscribe. So Redis holds ONE subscription per
//! job per gateway, whatever the number of watchers.
//!
//! The hub also runs the reads that turn "something changed" into a document:
//! a coalesced read of the state key through the pool, falling back to Postgres
//! where Redis has no state (or is down) on a job's first load. A read that
//! fails is retried with backoff, the feed staying dirty, so the event that
//! asked for it (maybe the job's last) is never lost to a busy Redis.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::event::Source;
use crate::fanout::{Feed, Offer};
use crate::job::{DocError, DocRules, JobId, ProgressDoc};
use crate::store::Store;
use crate::store::write_behind::WriteBehind;
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

/// What the hub asks of the Redis listener. The channel carrying these is
/// unbounded because the hub cannot wait in `Drop`; its rate is bounded by
/// connection churn and the listener drains it continuously.
pub enum UpstreamCmd {
    Subscribe(Arc<Feed>),
    Unsubscribe(JobId),
}

struct Entry {
    feed: Arc<Feed>,
    watchers: usize,
}

/// Owners of jobs whose feeds are gone, remembered so that a feed rebuilt for
/// the same job (the next watcher) keeps the owner the first one fixed, even
/// where Redis meanwhile holds a document naming another. Bounded: the oldest
/// are forgotten first (Postgres rows, where there are any, outrank this).
const REMEMBERED_OWNERS: usize = 65_536;

#[derive(Default)]
struct OwnerMemory {
    owners: HashMap<JobId, Arc<str>>,
    order: std::collections::VecDeque<JobId>,
}

impl OwnerMemory {
    fn remember(&mut self, job: JobId, owner: Arc<str>) {
        if self.owners.insert(job.clone(), owner).is_none() {
            self.order.push_back(job);
        }
        while self.order.len() > REMEMBERED_OWNERS {
            if let Some(old) = self.order.pop_front() {
                self.owners.remove(&old);
            }
        }
    }
}

pub struct Hub {
    feeds: Mutex<HashMap<JobId, Entry>>,
    remembered: Mutex<OwnerMemory>,
    upstream: mpsc::UnboundedSender<UpstreamCmd>,
    reader: RedisReader,
    store: Option<Store>,
    write_behind: Option<WriteBehind>,
    rules: DocRules,
    /// Is the Redis pub/sub connection up? While it is down a failed read is not
    /// retried: the reconnect re-reads every watched job anyway.
    redis_up: Arc<AtomicBool>,
}

/// A watcher's membership of a job: keeps the job's subscription alive while held.
pub struct Watch {
    hub: Arc<Hub>,
    pub feed: Arc<Feed>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.hub.leave(&self.feed.job);
    }
}

impl Hub {
    pub fn new(
        reader: RedisReader,
        store: Option<Store>,
        write_behind: Option<WriteBehind>,
        rules: DocRules,
        redis_up: Arc<AtomicBool>,
    ) -> (Arc<Hub>, mpsc::UnboundedReceiver<UpstreamCmd>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Hub {
            feeds: Mutex::new(HashMap::new()),
            remembered: Mutex::new(OwnerMemory::default()),
            upstream: tx,
            reader,
            store,
            write_behind,
            rules,
            redis_up,
        };
        (Arc::new(hub), rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Entry>> {
        crate::sync::lock(&self.feeds)
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, OwnerMemory> {
        crate::sync::lock(&self.remembered)
    }

    pub fn rules(&self) -> &DocRules {
        &self.rules
    }

    pub fn reader(&self) -> &RedisReader {
        &self.reader
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Joins `job`'s feed, creating it (and its upstream subscription) if this is
    /// the first watcher. Await [`Feed::wait_ready`] before reading its state.
    pub fn join(self: &Arc<Self>, job: JobId) -> Watch {
        let mut feeds = self.lock();
        let entry = feeds.entry(job.clone()).or_insert_with(|| {
            let feed = Arc::new(Feed::new(job.clone()));
            if let Some(owner) = self.memory().owners.get(job.as_str()) {
                feed.set_stored_owner(owner);
            }
            let _ = self.upstream.send(UpstreamCmd::Subscribe(feed.clone()));
            metrics::gauge!("jobcast_active_jobs").increment(1.0);
            Entry { feed, watchers: 0 }
        });
        entry.watchers += 1;
        let feed = entry.feed.clone();
        drop(feeds);
        metrics::gauge!("jobcast_watchers").increment(1.0);
        Watch {
            hub: self.clone(),
            feed,
        }
    }

    fn leave(&self, job: &JobId) {
        let mut feeds = self.lock();
        let Some(entry) = feeds.get_mut(job) else {
            return;
        };
        entry.watchers -= 1;
        if entry.watchers == 0 {
            if let Some(owner) = entry.feed.snapshot().owner {
                self.memory().remember(job.clone(), owner);
            }
            feeds.remove(job);
            let _ = self.upstream.send(UpstreamCmd::Unsubscribe(job.clone()));
            metrics::gauge!("jobcast_active_jobs").decrement(1.0);
        }
        drop(feeds);
        metrics::gauge!("jobcast_watchers").decrement(1.0);
    }

    /// The job's owner where this gateway knows it without any I/O: fixed in a
    /// live feed's first load, or remembered from an earlier feed.
    pub fn known_owner(&self, job: &JobId) -> Option<Arc<str>> {
        if let Some(feed) = self.feed(job.as_str()) {
            let state = feed.snapshot();
            return state.ready.then_some(state.owner).flatten();
        }
        self.memory().owners.get(job.as_str()).cloned()
    }

    /// The feed of a job that has watchers here.
    pub fn feed(&self, job: &str) -> Option<Arc<Feed>> {
        self.lock().get(job).map(|e| e.feed.clone())
    }

    /// Every feed with watchers (the listener re-subscribes these after a reconnect).
    pub fn feeds(&self) -> Vec<Arc<Feed>> {
        self.lock().values().map(|e| e.feed.clone()).collect()
    }

    pub fn is_watched(&self, job: &JobId) -> bool {
        self.lock().contains_key(job)
    }

    /// Offers a parsed document to a feed, counting what happened.
    pub fn offer(&self, feed: &Feed, doc: ProgressDoc, source: Source) -> Offer {
        let span = tracing::debug_span!(
            "fanout",
            job = %feed.job,
            source = source.as_str(),
            outcome = tracing::field::Empty,
            watchers = tracing::field::Empty,
            encode_us = tracing::field::Empty,
        );
        // Only while spans are recorded (OpenTelemetry on, or debug logs).
        if !span.is_disabled() {
            if let Some(tp) = crate::telemetry::otel::traceparent(&doc.json) {
                crate::telemetry::otel::set_remote_parent(&span, &tp);
            }
            let watchers = self.lock().get(&feed.job).map_or(0, |e| e.watchers);
            span.record("watchers", watchers);
        }
        let _entered = span.enter();
        let started = std::time::Instant::now();
        let offer = feed.offer(doc, source);
        span.record("encode_us", started.elapsed().as_micros() as u64);
        span.record(
            "outcome",
            match &offer {
                Offer::Accepted(_) => "accepted",
                Offer::Stale => "dropped_stale",
                Offer::Duplicate => "dropped_duplicate",
                Offer::OwnerChanged => "dropped_owner_changed",
            },
        );
        match &offer {
            Offer::Accepted(update) => {
                metrics::counter!("jobcast_updates_total", "source" => source.as_str())
                    .increment(1);
                // A state read from Postgres is already there; writing it back
                // would only echo through NOTIFY.
                match &self.write_behind {
                    Some(wb) if source != Source::Postgres => {
                        wb.push(&feed.job, update.clone());
                    }
                    _ => update.durable.settle(),
                }
            }
            Offer::Stale => {
                metrics::counter!("jobcast_documents_dropped_total", "reason" => "stale")
                    .increment(1);
            }
            Offer::Duplicate => {
                metrics::counter!("jobcast_documents_dropped_total", "reason" => "duplicate")
                    .increment(1);
            }
            Offer::OwnerChanged => {
                warn!(job = %feed.job, source = source.as_str(), owner = ?feed.snapshot().owner(),
                    "document names another owner than the job's; dropped (a job's owner never changes)");
                metrics::counter!("jobcast_documents_dropped_total", "reason" => "owner_changed")
                    .increment(1);
            }
        }
        offer
    }

    /// Parses raw bytes from a channel message and offers them; bad documents are
    /// dropped with a warning and a metric, never forwarded.
    pub fn offer_raw(&self, feed: &Feed, raw: &[u8], source: Source) {
        match ProgressDoc::parse(raw, &self.rules) {
            Ok(doc) => {
                self.offer(feed, doc, source);
            }
            Err(e) => drop_invalid(&feed.job, e, source),
        }
    }

    /// Asks for a read of `feed`'s state key; coalesced with one in flight.
    pub fn request_read(self: &Arc<Self>, feed: &Arc<Feed>) {
        if feed.request_read() {
            let hub = self.clone();
            let feed = feed.clone();
            tokio::spawn(async move { hub.read_until_clean(&feed).await });
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

    /// Is `feed` still the watched feed of its job (not left by every watcher)?
    fn is_current(&self, feed: &Feed) -> bool {
        self.lock()
            .get(&feed.job)
            .is_some_and(|e| std::ptr::eq(Arc::as_ptr(&e.feed), feed))
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
        let remembered = self.memory().owners.get(job.as_str()).cloned();
        if let Some(owner) = remembered {
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

/// What [`Hub::fetch`] found.
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
