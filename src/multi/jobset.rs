//! The jobs of one multi-job connection, and what the client is owed of each.
//! Every job is a receiver of its feed (the same refcounted feed a single
//! watcher joins), all of them polled by the connection's own task through
//! one `StreamMap`: no task per job, and a slow connection conflates each
//! job to its newest state like a single watcher does.
//!
//! The rules, per job: a state the cursor has seen is not sent again; a
//! terminal state owes its `done` after its `progress`, and once `done` is
//! out the job's subscription is let go; `stalled` is sent once per stalled
//! state. The cursor moves as each item is handed out, so the `id:` of an
//! event covers that event. A list stream is over when every job has ended
//! with its `done` handed out; a group stream never is.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::watch;
use tokio_stream::StreamMap;

use crate::event::{Stalled, Update};
use crate::fanout::FeedState;
use crate::hub::{Hub, Watch};
use crate::job::JobId;
use crate::multi::cursor::{JobTag, StreamCursor};

/// What a multi-job stream writes next.
#[derive(Debug, Clone)]
pub enum Item {
    /// A job that joined a watched group after the stream opened.
    Joined(JobId),
    Progress(JobId, Arc<Update>),
    Done(JobId, Arc<Update>),
    Stalled(JobId, Arc<Stalled>),
}

impl Item {
    pub fn job(&self) -> &JobId {
        match self {
            Item::Joined(j) | Item::Progress(j, _) | Item::Done(j, _) | Item::Stalled(j, _) => j,
        }
    }
}

/// The members of a group as its registry entry publishes them.
pub type Members = Arc<BTreeSet<JobId>>;

type Changes = Pin<Box<dyn Stream<Item = FeedState> + Send>>;

struct Slot {
    tag: JobTag,
    /// The job's subscription; let go once its `done` is out.
    watch: Option<Watch>,
    /// The newest state considered (compared by identity).
    last: Option<Arc<Update>>,
    /// The stalled mark last sent (compared by identity).
    stalled: Option<Arc<Stalled>>,
    ended: bool,
}

/// A group the set follows: members that appear are joined.
struct Follow {
    members: watch::Receiver<Members>,
    hub: Arc<Hub>,
}

pub struct JobSet {
    /// The jobs in the order they were added (`connected` lists them).
    order: Vec<JobId>,
    slots: HashMap<JobId, Slot>,
    changes: StreamMap<JobId, Changes>,
    owed: VecDeque<Item>,
    cursor: StreamCursor,
    follow: Option<Follow>,
    /// Most jobs this set takes (`JOBCAST_MAX_JOBS_PER_STREAM`).
    max: usize,
    /// Group members not taken because the set was full (logged once).
    overflow_logged: bool,
}

/// A feed receiver as a stream of its newest states (ends with the feed).
fn changes(rx: watch::Receiver<FeedState>) -> Changes {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let state = rx.borrow_and_update().clone();
        Some((state, rx))
    }))
}

impl JobSet {
    pub fn new(cursor: StreamCursor, max: usize) -> JobSet {
        JobSet {
            order: Vec::new(),
            slots: HashMap::new(),
            changes: StreamMap::new(),
            owed: VecDeque::new(),
            cursor,
            follow: None,
            max,
            overflow_logged: false,
        }
    }

    /// Follows a group: members that appear later are joined (`joined`
    /// first), members present now are joined as they are.
    pub fn follow(&mut self, hub: Arc<Hub>, members: watch::Receiver<Members>) {
        self.follow = Some(Follow { members, hub });
        self.take_new_members(false);
    }

    pub fn contains(&self, job: &JobId) -> bool {
        self.slots.contains_key(job)
    }

    pub fn is_full(&self) -> bool {
        self.slots.len() >= self.max
    }

    pub fn jobs(&self) -> impl Iterator<Item = &JobId> {
        self.order.iter()
    }

    /// Adds a job through its watch, owing the client what it has not seen
    /// of the job's current state (with `joined`, announced first).
    pub fn add(&mut self, watch: Watch, joined: bool) {
        let job = watch.feed.job.clone();
        if self.slots.contains_key(&job) {
            return;
        }
        let mut rx = watch.feed.subscribe();
        let now = rx.borrow_and_update().clone();
        self.slots.insert(
            job.clone(),
            Slot {
                tag: JobTag::of(&job),
                watch: Some(watch),
                last: None,
                stalled: None,
                ended: false,
            },
        );
        self.order.push(job.clone());
        if joined {
            self.owed.push_back(Item::Joined(job.clone()));
        }
        self.changes.insert(job.clone(), changes(rx));
        self.consider(&job, now);
    }

    /// Stops watching `job` (in-band `unwatch`); false if it was not watched.
    pub fn remove(&mut self, job: &JobId) -> bool {
        let Some(slot) = self.slots.remove(job) else {
            return false;
        };
        self.changes.remove(job);
        self.order.retain(|j| j != job);
        self.owed.retain(|i| i.job() != job);
        self.cursor.forget(slot.tag);
        true
    }

    /// The cursor covering every item handed out so far.
    pub fn cursor_text(&self) -> String {
        self.cursor.encode()
    }

    /// A list whose every job ended with its `done` handed out. (A set that
    /// follows a group, or that unwatching emptied, is never over.)
    pub fn is_over(&self) -> bool {
        self.follow.is_none()
            && !self.slots.is_empty()
            && self.owed.is_empty()
            && self.slots.values().all(|s| s.ended)
    }

    /// Queues what the client is owed of `state`, the newest of `job`.
    fn consider(&mut self, job: &JobId, state: FeedState) {
        let Some(slot) = self.slots.get_mut(job) else {
            return;
        };
        if slot.ended {
            return;
        }
        if let Some(update) = state
            .latest
            .filter(|u| !slot.last.as_ref().is_some_and(|l| Arc::ptr_eq(l, u)))
        {
            slot.last = Some(update.clone());
            slot.stalled = None;
            // Conflation: a newer state replaces what is still queued.
            self.owed.retain(|i| {
                !(i.job() == job && matches!(i, Item::Progress(..) | Item::Stalled(..)))
            });
            let terminal = update.is_done();
            if terminal && self.cursor.saw_end(slot.tag, &update.id) {
                // Resumed after the client saw this end: nothing more to say.
                slot.ended = true;
                slot.watch = None;
                self.changes.remove(job);
                return;
            }
            if !self.cursor.has_seen(slot.tag, &update.id) {
                self.owed
                    .push_back(Item::Progress(job.clone(), update.clone()));
            }
            if terminal {
                self.owed.push_back(Item::Done(job.clone(), update));
                return;
            }
        }
        let not_terminal = slot.last.as_ref().is_some_and(|u| !u.is_done());
        if let Some(stalled) = state.stalled
            && not_terminal
            && !slot
                .stalled
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, &stalled))
        {
            slot.stalled = Some(stalled.clone());
            self.owed.push_back(Item::Stalled(job.clone(), stalled));
        }
    }

    /// Moves the cursor (and ends the job) for an item handed out.
    fn hand_out(&mut self, item: &Item) {
        match item {
            Item::Progress(job, update) => {
                if let Some(slot) = self.slots.get(job) {
                    self.cursor.saw(slot.tag, &update.id, false);
                }
            }
            Item::Done(job, update) => {
                if let Some(slot) = self.slots.get_mut(job) {
                    self.cursor.saw(slot.tag, &update.id, true);
                    slot.ended = true;
                    slot.watch = None;
                    self.changes.remove(job);
                }
            }
            Item::Joined(_) | Item::Stalled(..) => {}
        }
    }

    /// The next item owed without waiting, if any (long-poll gathers these).
    pub fn next_ready(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.owed.pop_front() {
                self.hand_out(&item);
                return Some(item);
            }
            let ready = self.changes.next().now_or_never().flatten();
            match ready {
                Some((job, state)) => self.consider(&job, state),
                None => return None,
            }
        }
    }

    /// The next item; `None` once a list is over. Cancel-safe.
    pub async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.owed.pop_front() {
                self.hand_out(&item);
                return Some(item);
            }
            if self.is_over() {
                return None;
            }
            let members = async {
                match &mut self.follow {
                    Some(f) => f.members.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some((job, state)) = self.changes.next(), if !self.changes.is_empty() => {
                    self.consider(&job, state);
                }
                alive = members => {
                    if alive {
                        self.take_new_members(true);
                    } else {
                        // The group's registry entry is gone: nothing joins any more.
                        self.follow = None;
                    }
                }
            }
        }
    }

    /// Joins the members not watched yet (with `joined`: announced).
    fn take_new_members(&mut self, joined: bool) {
        let Some(follow) = &mut self.follow else {
            return;
        };
        let members = follow.members.borrow_and_update().clone();
        let hub = follow.hub.clone();
        for job in members.iter() {
            if self.slots.contains_key(job) {
                continue;
            }
            if self.is_full() {
                if !self.overflow_logged {
                    self.overflow_logged = true;
                    tracing::warn!(
                        max = self.max,
                        "group has more jobs than one stream carries (JOBCAST_MAX_JOBS_PER_STREAM); later members are not streamed"
                    );
                }
                break;
            }
            let watch = hub.join(job.clone());
            self.add(watch, joined);
        }
    }
}
