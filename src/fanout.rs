//! One job's shared state: the latest accepted [`Update`] in a `tokio::sync::watch`
//! channel, behind the `seq` gate. Every watcher of the job holds a receiver of
//! that channel, so a slow watcher skips to the newest state (latest-value
//! conflation) and the memory of a job is one update however many watchers it has.
//!
//! Invariants: the `seq` of delivered documents strictly increases (documents
//! without `seq` pass between them without moving the gate); a job's owner is
//! fixed by the first state known (the Postgres row, else the first document)
//! and a document naming another owner is dropped. The gate and the `send`
//! happen under one lock, so two sources racing cannot reorder them.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tokio::sync::watch;

use crate::event::{Source, Stalled, Update};
use crate::job::{JobId, ProgressDoc};

/// What a watcher sees of a job.
#[derive(Clone, Debug, Default)]
pub struct FeedState {
    /// The newest accepted state, if any source has one.
    pub latest: Option<Arc<Update>>,
    /// True once the first load (subscribe, then read) has finished, found or not.
    pub ready: bool,
    /// The job's owner, fixed by the first state known: the Postgres row's
    /// `owner_id`, else the owner field of the first document seen.
    pub owner: Option<Arc<str>>,
    /// True where some source knows the job (a document or a row).
    pub known: bool,
    /// True when the last load could ask no source (Redis and Postgres down).
    pub unavailable: bool,
    /// Set by the job's stall timer when `latest` (not terminal) has been the
    /// newest state for the job's stall period; cleared by the next state.
    pub stalled: Option<Arc<Stalled>>,
}

impl FeedState {
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }
}

/// The result of offering a document to a feed.
#[derive(Debug)]
pub enum Offer {
    Accepted(Arc<Update>),
    /// `seq` lower than or equal to the last delivered one.
    Stale,
    /// No `seq`, and byte-identical to the last document.
    Duplicate,
    /// Names an owner other than the job's.
    OwnerChanged,
}

#[derive(Default)]
struct Gate {
    /// The last delivered document `seq`; documents without one leave it be, so
    /// `seq:1`, a seq-less state, then `seq:2` delivers all three.
    last_seq: Option<i64>,
    last_json: Option<Bytes>,
    /// Mirrors `FeedState::owner`, under the gate's lock.
    owner: Option<Arc<str>>,
}

const READ_IDLE: u8 = 0;
const READ_RUNNING: u8 = 1;
const READ_RUNNING_DIRTY: u8 = 2;

/// A client connection the feed writes its states to itself, while the
/// connection's own task sleeps (`stream::sink` on the direct path): one loop
/// of writes per state in the feed's fan-out task instead of one task
/// wake-up per watcher.
pub trait FeedSink: Send + Sync {
    /// Writes `update` to the client now, unless it was detached or released
    /// meanwhile or already has it. `false` when the feed must stop writing
    /// to this sink (the socket is full or broken, or it was let go); the
    /// sink has then been woken to carry on by itself.
    fn write(&self, update: &Arc<Update>) -> bool;
    /// Marks the sink attached, its client having `last`.
    fn attached(&self, last: &Arc<Update>);
    /// Whether the sink is attached (not let go since it last attached).
    fn is_attached(&self) -> bool;
    /// Lets go of the sink: once this returns, the feed writes nothing more
    /// to it; `wake` also wakes its task to carry on by itself (the feed has
    /// something a sink does not write: a terminal state, a stall mark).
    fn let_go(&self, wake: bool);
}

/// Attached sockets a feed writes itself when a state arrives; with more,
/// its fan-out task writes them, beside the listener.
const INLINE_FAN_OUT: usize = 16;

/// The sockets attached to a feed and its fan-out task's work.
#[derive(Default)]
struct Sinks {
    list: Vec<Arc<dyn FeedSink>>,
    /// The newest state not yet written to the sinks: the fan-out task
    /// takes it, so states that arrive faster than it writes are conflated.
    next: Option<Arc<Update>>,
    /// True while a fan-out task runs (at most one per feed, so writes keep
    /// their order).
    writing: bool,
}

pub struct Feed {
    pub job: JobId,
    state: watch::Sender<FeedState>,
    gate: Mutex<Gate>,
    /// Attached sinks and the state the fan-out task writes to them next.
    sinks: Mutex<Sinks>,
    /// This feed, for the fan-out task it starts.
    me: Weak<Feed>,
    /// Read coalescing: events that arrive while a read is in flight cost one more
    /// read in total, not one each.
    read: AtomicU8,
    /// The newest state of the job's earlier feed and since when it was
    /// silent (see [`Feed::silent_since`]).
    resumed_silence: std::sync::OnceLock<(Box<str>, std::time::Instant)>,
}

impl Feed {
    pub fn new(job: JobId) -> Arc<Self> {
        let (state, _) = watch::channel(FeedState::default());
        Arc::new_cyclic(|me| Feed {
            job,
            state,
            gate: Mutex::new(Gate::default()),
            sinks: Mutex::new(Sinks::default()),
            me: me.clone(),
            read: AtomicU8::new(READ_IDLE),
            resumed_silence: std::sync::OnceLock::new(),
        })
    }

    /// The job's earlier feed held the state with event id `id`, silent since
    /// `since`: if this feed's newest state is that one, its silence goes on
    /// from then.
    pub fn resume_silence(&self, id: &str, since: std::time::Instant) {
        let _ = self.resumed_silence.set((id.into(), since));
    }

    /// Since when `update` has been the job's newest state: when this
    /// gateway first received it, by this feed or an earlier one of the job.
    pub fn silent_since(&self, update: &Update) -> std::time::Instant {
        match self.resumed_silence.get() {
            Some((id, since)) if *id == update.id => *since,
            _ => update.received,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<FeedState> {
        self.state.subscribe()
    }

    pub fn snapshot(&self) -> FeedState {
        self.state.borrow().clone()
    }

    /// Passes `doc` through the `seq` gate and, if it is news, publishes it.
    pub fn offer(&self, doc: ProgressDoc, source: Source) -> Offer {
        let mut gate = crate::sync::lock(&self.gate);
        match (doc.seq, gate.last_seq) {
            (Some(seq), Some(last)) if seq <= last => return Offer::Stale,
            (None, _) if gate.last_json.as_ref() == Some(&doc.json) => return Offer::Duplicate,
            _ => {}
        }
        let new_owner = match (&gate.owner, doc.owner.as_deref()) {
            (Some(owner), Some(named)) if &**owner != named => return Offer::OwnerChanged,
            (None, Some(named)) => Some(Arc::<str>::from(named)),
            _ => None,
        };
        if doc.seq.is_some() {
            gate.last_seq = doc.seq;
        }
        gate.last_json = Some(doc.json.clone());
        if new_owner.is_some() {
            gate.owner.clone_from(&new_owner);
        }
        let update = Arc::new(Update::encode(&self.job, doc, source));
        self.state.send_modify(|s| {
            s.latest = Some(update.clone());
            s.known = true;
            if new_owner.is_some() {
                s.owner = new_owner;
            }
            if s.stalled.take().is_some() {
                metrics::gauge!("jobcast_stalled_jobs").decrement(1.0);
            }
        });
        self.write_sinks(&update);
        Offer::Accepted(update)
    }

    /// Hands `update` to the attached sinks (under the gate): written here
    /// to a few, else by the fan-out task (which may take a newer one
    /// first); a terminal state lets them all go, to send it and `done`
    /// themselves.
    fn write_sinks(&self, update: &Arc<Update>) {
        let mut sinks = crate::sync::lock(&self.sinks);
        if sinks.list.is_empty() {
            return;
        }
        if update.is_done() {
            sinks.next = None;
            sinks.list.drain(..).for_each(|s| s.let_go(true));
            return;
        }
        if sinks.writing {
            // The running fan-out task takes it (or a newer one) next.
            sinks.next = Some(update.clone());
        } else if sinks.list.len() <= INLINE_FAN_OUT {
            // A few sockets: written here, in order under the gate, without
            // a task's hop to another thread.
            sinks.list.retain(|s| s.write(update));
        } else {
            sinks.next = Some(update.clone());
            sinks.writing = true;
            tokio::spawn(fan_out(self.me.clone()));
        }
    }

    /// Attaches `sink` if the client has the newest state (`last`), which is
    /// not terminal, and the job is not marked stalled: from now on the feed
    /// writes the job's states to it until it detaches or is let go.
    pub fn attach(&self, sink: &Arc<dyn FeedSink>, last: &Arc<Update>) -> bool {
        let _gate = crate::sync::lock(&self.gate);
        {
            let state = self.state.borrow();
            let newest = state.latest.as_ref().is_some_and(|l| Arc::ptr_eq(l, last));
            if !newest || last.is_done() || state.stalled.is_some() {
                return false;
            }
        }
        sink.attached(last);
        let mut sinks = crate::sync::lock(&self.sinks);
        if !sinks.list.iter().any(|s| Arc::ptr_eq(s, sink)) {
            sinks.list.push(sink.clone());
        }
        true
    }

    /// Detaches `sink`; once this returns, the feed is not writing to it.
    pub fn detach(&self, sink: &Arc<dyn FeedSink>) {
        sink.let_go(false);
        crate::sync::lock(&self.sinks)
            .list
            .retain(|s| !Arc::ptr_eq(s, sink));
    }

    /// Fixes the owner from the job's Postgres row, which outranks a document
    /// seen before the first load finished; later rows never move it.
    pub fn set_stored_owner(&self, owner: &str) {
        let mut gate = crate::sync::lock(&self.gate);
        match &gate.owner {
            Some(fixed) if &**fixed == owner => return,
            Some(_) if self.state.borrow().ready => return,
            _ => {}
        }
        let owner = Arc::<str>::from(owner);
        gate.owner = Some(owner.clone());
        self.state.send_modify(|s| s.owner = Some(owner));
    }

    /// Records what the first load found besides a document, and wakes the
    /// watchers waiting for it.
    pub fn mark_ready(&self, row_exists: bool, unavailable: bool) {
        self.state.send_modify(|s| {
            s.unavailable = unavailable && !s.known && !row_exists;
            s.known |= row_exists;
            s.ready = true;
        });
    }

    /// Waits (bounded) until the first load finished; returns the state then.
    pub async fn wait_ready(&self, bound: std::time::Duration) -> FeedState {
        let mut rx = self.subscribe();
        let _ = tokio::time::timeout(bound, rx.wait_for(|s| s.ready)).await;

        rx.borrow().clone()
    }

    /// Reports the job stalled, if `update` is still its newest state (under
    /// the gate's lock, so a state accepted meanwhile wins).
    pub fn mark_stalled(&self, update: &Arc<Update>) {
        let _gate = crate::sync::lock(&self.gate);
        self.state.send_if_modified(|s| {
            let current = s.latest.as_ref().is_some_and(|l| Arc::ptr_eq(l, update));
            if !current || s.stalled.is_some() || update.doc.terminal {
                return false;
            }
            // tokio's clock: the one the timer slept on.
            let silent = tokio::time::Instant::from_std(self.silent_since(update))
                .elapsed()
                .as_secs();
            s.stalled = Some(Arc::new(Stalled::encode(&self.job, silent)));
            metrics::gauge!("jobcast_stalled_jobs").increment(1.0);
            true
        });
        if self.state.borrow().stalled.is_some() {
            let mut sinks = crate::sync::lock(&self.sinks);
            sinks.next = None;
            sinks.list.drain(..).for_each(|s| s.let_go(true));
        }
    }

    /// Asks for a read of the state key. Returns true when the caller must start
    /// the read (nothing was in flight); false when one is running and has been
    /// told to go once more.
    pub fn request_read(&self) -> bool {
        let mut cur = self.read.load(Ordering::Acquire);
        loop {
            let next = match cur {
                READ_IDLE => READ_RUNNING,
                _ => READ_RUNNING_DIRTY,
            };
            if next == cur {
                return false;
            }
            match self
                .read
                .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return cur == READ_IDLE,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Called by the reader after each read: true when another read was asked for
    /// meanwhile (and must run), false when the reader may stop.
    pub fn read_finished(&self) -> bool {
        if self
            .read
            .compare_exchange(
                READ_RUNNING_DIRTY,
                READ_RUNNING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            return true;
        }
        self.read.store(READ_IDLE, Ordering::Release);
        false
    }
}

/// A feed's fan-out task: writes the newest unwritten state to every
/// attached sink, one non-blocking write each, until there is none; sinks
/// that could not take it are dropped from the list (they carry on by
/// themselves). Runs beside the listener that offers states, so a fan-out
/// that falls behind conflates instead of holding up the job's next states.
async fn fan_out(feed: Weak<Feed>) {
    loop {
        let Some(feed) = feed.upgrade() else {
            return;
        };
        let (update, targets) = {
            let mut sinks = crate::sync::lock(&feed.sinks);
            match sinks.next.take() {
                Some(update) => (update, sinks.list.clone()),
                None => {
                    sinks.writing = false;
                    return;
                }
            }
        };
        let stopped = targets.iter().filter(|s| !s.write(&update)).count();
        if stopped > 0 {
            // By attachment, not by identity: a sink that stopped may have
            // attached again since, and must stay.
            crate::sync::lock(&feed.sinks)
                .list
                .retain(|s| s.is_attached());
        }
        drop(feed);
        tokio::task::yield_now().await;
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        if self.state.borrow().stalled.is_some() {
            metrics::gauge!("jobcast_stalled_jobs").decrement(1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(raw: &str) -> ProgressDoc {
        ProgressDoc::for_tests(raw)
    }
    fn feed() -> Arc<Feed> {
        Feed::new(JobId::parse("j").unwrap())
    }

    #[test]
    fn same_seq_twice_is_delivered_once() {
        let f = feed();
        assert!(matches!(
            f.offer(doc(r#"{"seq":5}"#), Source::RedisKey),
            Offer::Accepted(_)
        ));
        assert!(matches!(
            f.offer(doc(r#"{"seq":5}"#), Source::RedisChannel),
            Offer::Stale
        ));
    }

    #[test]
    fn lower_seq_after_higher_is_dropped() {
        let f = feed();
        f.offer(doc(r#"{"seq":9}"#), Source::RedisKey);
        assert!(matches!(
            f.offer(doc(r#"{"seq":3}"#), Source::RedisKey),
            Offer::Stale
        ));
        assert_eq!(&*f.snapshot().latest.unwrap().id, "9");
    }

    #[test]
    fn without_seq_identical_repeat_is_dropped() {
        let f = feed();
        let Offer::Accepted(a) = f.offer(doc(r#"{"p":1}"#), Source::RedisKey) else {
            panic!()
        };
        assert!(matches!(
            f.offer(doc(r#"{"p":1}"#), Source::RedisChannel),
            Offer::Duplicate
        ));
        let Offer::Accepted(b) = f.offer(doc(r#"{"p":2}"#), Source::RedisKey) else {
            panic!()
        };
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn seq_less_documents_do_not_move_the_seq_gate() {
        let f = feed();
        f.offer(doc(r#"{"seq":1}"#), Source::RedisKey);
        assert!(matches!(
            f.offer(doc(r#"{"note":"x"}"#), Source::RedisChannel),
            Offer::Accepted(_)
        ));
        let end = f.offer(doc(r#"{"seq":2,"status":"completed"}"#), Source::RedisKey);
        assert!(
            matches!(end, Offer::Accepted(_)),
            "the terminal state is not stale"
        );
    }

    #[test]
    fn a_document_naming_another_owner_is_dropped() {
        let f = feed();
        f.offer(doc(r#"{"seq":1,"owner_id":"alice"}"#), Source::RedisKey);
        assert!(matches!(
            f.offer(
                doc(r#"{"seq":2,"owner_id":"mallory"}"#),
                Source::RedisChannel
            ),
            Offer::OwnerChanged
        ));
        assert!(matches!(
            f.offer(doc(r#"{"seq":3}"#), Source::RedisKey),
            Offer::Accepted(_)
        ));
        assert_eq!(f.snapshot().owner(), Some("alice"));
    }

    #[test]
    fn seq_zero_is_accepted_first() {
        let f = feed();
        assert!(matches!(
            f.offer(doc(r#"{"seq":0}"#), Source::RedisKey),
            Offer::Accepted(_)
        ));
    }

    #[tokio::test]
    async fn slow_watcher_gets_latest_state_not_backlog() {
        let f = feed();
        let mut rx = f.subscribe();
        for i in 1..=10_000 {
            f.offer(doc(&format!(r#"{{"seq":{i}}}"#)), Source::RedisChannel);
        }
        rx.changed().await.unwrap();
        assert_eq!(
            &*rx.borrow_and_update().latest.as_ref().unwrap().id,
            "10000"
        );
        assert!(
            !rx.has_changed().unwrap(),
            "no backlog behind the latest state"
        );
    }

    #[test]
    fn reads_coalesce_while_one_is_in_flight() {
        let f = feed();
        assert!(f.request_read(), "first request starts a read");
        assert!(!f.request_read());
        assert!(!f.request_read());
        assert!(
            f.read_finished(),
            "requests during the read cost one more read"
        );
        assert!(!f.read_finished(), "and only one");
        assert!(f.request_read());
    }

    #[test]
    fn stalled_is_set_on_the_newest_state_only_and_cleared_by_the_next() {
        let f = feed();
        let Offer::Accepted(first) = f.offer(doc(r#"{"seq":1}"#), Source::RedisKey) else {
            panic!()
        };
        f.mark_stalled(&first);
        assert!(f.snapshot().stalled.is_some());
        f.offer(doc(r#"{"seq":2}"#), Source::RedisKey);
        assert!(f.snapshot().stalled.is_none(), "the next state clears it");
        f.mark_stalled(&first);
        assert!(
            f.snapshot().stalled.is_none(),
            "an older state never stalls"
        );
        let Offer::Accepted(end) = f.offer(doc(r#"{"seq":3,"status":"failed"}"#), Source::RedisKey)
        else {
            panic!()
        };
        f.mark_stalled(&end);
        assert!(f.snapshot().stalled.is_none(), "an ended job never stalls");
    }

    #[test]
    fn the_row_owner_outranks_documents() {
        let f = feed();
        f.set_stored_owner("row-owner");
        f.mark_ready(true, false);
        assert_eq!(f.snapshot().owner(), Some("row-owner"));
        assert!(matches!(
            f.offer(doc(r#"{"owner_id":"doc-owner"}"#), Source::RedisKey),
            Offer::OwnerChanged
        ));
        f.set_stored_owner("later-row-owner");
        assert_eq!(f.snapshot().owner(), Some("row-owner"), "fixed once ready");
    }
}
