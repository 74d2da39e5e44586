//! The hub: job id → [`Feed`], with a watcher count per job. The first watcher of a
//! job asks the Redis listener to subscribe (keyspace channel + job channel); the
//! last one to leave asks it to unsubscribe. So Redis holds ONE subscription per
//! job per gateway, whatever the number of watchers.
//!
//! The hub is a registry only: it neither reads nor parses. What a job holds
//! is loaded by `upstream::loader`, which offers it here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tracing::warn;

use crate::event::Source;
use crate::fanout::{Feed, Offer};
use crate::job::{JobId, ProgressDoc};
use crate::multi::groups::Groups;
use crate::upstream::UpstreamCmd;

struct Entry {
    feed: Arc<Feed>,
    watchers: usize,
}

/// Jobs whose feeds are gone, remembered per job: bounded, the oldest are
/// forgotten first.
const REMEMBERED_JOBS: usize = 65_536;

struct Memory<V> {
    entries: HashMap<JobId, V>,
    order: std::collections::VecDeque<JobId>,
}

impl<V> Default for Memory<V> {
    fn default() -> Self {
        Memory {
            entries: HashMap::new(),
            order: std::collections::VecDeque::new(),
        }
    }
}

impl<V> Memory<V> {
    fn remember(&mut self, job: JobId, value: V) {
        if self.entries.insert(job.clone(), value).is_none() {
            self.order.push_back(job);
        }
        while self.order.len() > REMEMBERED_JOBS {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }

    fn get(&self, job: &str) -> Option<&V> {
        self.entries.get(job)
    }
}

/// What a job's last feed knew that its next one must not forget: the owner
/// the first one fixed (kept even where Redis meanwhile holds a document
/// naming another; Postgres rows, where there are any, outrank this), and
/// since when its newest running state has been silent (so a long-poll
/// client, whose every request builds the feed again, still sees the job
/// stall, and a stream that reconnects does not restart the stall clock).
#[derive(Default)]
struct Remembered {
    owners: Memory<Arc<str>>,
    silences: Memory<(Box<str>, std::time::Instant)>,
}

pub struct Hub {
    feeds: Mutex<HashMap<JobId, Entry>>,
    remembered: Mutex<Remembered>,
    /// Unbounded because the hub cannot wait in `Drop`; its rate is bounded by
    /// connection churn and the listener drains it continuously.
    upstream: mpsc::UnboundedSender<UpstreamCmd>,
    /// Is there a database where states are recorded? Without one, a state is
    /// as durable as it will ever be the moment it is accepted.
    recorded: bool,
    /// `JOBCAST_STALL_SECS` (`None`: off unless a document asks): each feed's
    /// stall timer starts with the feed.
    stall_after: Option<std::time::Duration>,
    /// A state whose group field names a watched group adds its job there.
    groups: Arc<Groups>,
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
    /// `recorded`: whether a database records states (`DATABASE_URL` is set);
    /// `stall_after`: `JOBCAST_STALL_SECS`.
    pub fn new(
        recorded: bool,
        stall_after: Option<std::time::Duration>,
        groups: Arc<Groups>,
    ) -> (Arc<Hub>, mpsc::UnboundedReceiver<UpstreamCmd>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Hub {
            feeds: Mutex::new(HashMap::new()),
            remembered: Mutex::new(Remembered::default()),
            upstream: tx,
            recorded,
            stall_after,
            groups,
        };
        (Arc::new(hub), rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Entry>> {
        crate::sync::lock(&self.feeds)
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Remembered> {
        crate::sync::lock(&self.remembered)
    }

    /// `JOBCAST_STALL_SECS` (`None`: off unless a document asks).
    pub fn stall_after(&self) -> Option<std::time::Duration> {
        self.stall_after
    }

    /// Joins `job`'s feed, creating it (and its upstream subscription) if this is
    /// the first watcher. Await [`Feed::wait_ready`] before reading its state.
    pub fn join(self: &Arc<Self>, job: JobId) -> Watch {
        let mut feeds = self.lock();
        let entry = feeds.entry(job.clone()).or_insert_with(|| {
            let feed = Feed::new(job.clone());
            let memory = self.memory();
            if let Some(owner) = memory.owners.get(job.as_str()) {
                feed.set_stored_owner(owner);
            }
            if let Some((id, since)) = memory.silences.get(job.as_str()) {
                feed.resume_silence(id, *since);
            }
            drop(memory);
            crate::stall::start(&feed, self.stall_after);
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
            let state = entry.feed.snapshot();
            let mut memory = self.memory();
            if let Some(owner) = state.owner {
                memory.owners.remember(job.clone(), owner);
            }
            if let Some(latest) = state.latest.filter(|u| !u.doc.terminal) {
                let since = entry.feed.silent_since(&latest);
                memory
                    .silences
                    .remember(job.clone(), (latest.id.clone(), since));
            }
            drop(memory);
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

    /// The owner remembered from a job's earlier feed, if any.
    pub fn remembered_owner(&self, job: &JobId) -> Option<Arc<str>> {
        self.memory().owners.get(job.as_str()).cloned()
    }

    /// Is `feed` still the watched feed of its job (not left by every watcher)?
    pub fn is_current(&self, feed: &Feed) -> bool {
        self.lock()
            .get(&feed.job)
            .is_some_and(|e| std::ptr::eq(Arc::as_ptr(&e.feed), feed))
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
                // The hub writes nothing: the recorder (maybe another instance)
                // does. A state read from Postgres is there already; any other
                // is settled when the row's NOTIFY shows it written (see
                // `PgListener`), or by the streams' bounded wait.
                if !self.recorded || source == Source::Postgres {
                    update.durable.settle();
                }
                if let Some(group) = &update.doc.group
                    && self.groups.is_watched(group)
                {
                    self.groups.add_members(group, [feed.job.clone()]);
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
}
