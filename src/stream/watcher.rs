//! One stream's lifecycle, written once for every transport. A [`Watcher`]
//! yields [`Step`]s — a state to send, the job's end, a heartbeat, or why the
//! stream must end (shutdown, token expiry, revoked session, feed gone) — and
//! `sse`, `ws` and `poll` only turn steps into bytes, frames or responses.
//!
//! The per-job rules live in [`JobWatch`] (which state comes first, whether the
//! client already has it, that a terminal state owes `done` once it is
//! durable), so a stream over several jobs can hold one per job.

use std::pin::Pin;
use std::sync::Arc;

use tokio::time::{Interval, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::event::{self, Stalled, Update};
use crate::fanout::{Feed, FeedSink};
use crate::job::JobId;
use crate::state::AppState;
use crate::stream::cursor::{FeedChange, FeedCursor, is_news};
use crate::stream::sink::DirectSink;
use crate::stream::{Opened, heartbeat_timer, revocation};

/// Why a stream ended: the `reason` label of `jobcast_connections_closed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The job ended and `done` was sent.
    Done,
    /// The job had ended and the client had seen its end: answered `204`.
    AlreadyDone,
    /// The gateway drains.
    Shutdown,
    TokenExpired,
    /// The app's auth hook revoked the session.
    Revoked,
    /// The job's feed went away.
    FeedClosed,
    ClientGone,
    ClientClosed,
    /// The connection was cut for not reading.
    WriteStalled,
    NoPong,
    UpgradeFailed,
    /// A long-poll answered with a document.
    Answered,
    /// A long-poll answered `204` after waiting.
    Timeout,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Done => "done",
            CloseReason::AlreadyDone => "already_done",
            CloseReason::Shutdown => "shutdown",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Revoked => "revoked",
            CloseReason::FeedClosed => "feed_closed",
            CloseReason::ClientGone => "client_gone",
            CloseReason::ClientClosed => "client_closed",
            CloseReason::WriteStalled => "write_stalled",
            CloseReason::NoPong => "no_pong",
            CloseReason::UpgradeFailed => "upgrade_failed",
            CloseReason::Answered => "answered",
            CloseReason::Timeout => "timeout",
        }
    }
}

/// What one job has for its client next.
pub enum JobStep {
    /// A state the client does not have.
    Progress(Arc<Update>),
    /// The job ended: its terminal state is durable (or the bounded wait is
    /// over), `done` may be sent.
    Done(Arc<Update>),
    /// The job went silent for its stall period (until its next state).
    Stalled(Arc<Stalled>),
}

/// One job as one client sees it.
pub struct JobWatch {
    pub job: JobId,
    feed: Arc<Feed>,
    cursor: FeedCursor,
    /// The state to send before any newer one: the one `open` authorised
    /// against (or newer), where the client does not have it.
    first: Option<Arc<Update>>,
    /// A terminal state sent (or already seen) whose `done` comes next.
    owed_done: Option<Arc<Update>>,
}

impl JobWatch {
    /// Starts where the client is: `seen` is the id it says it has.
    pub fn start(opened: &Opened, seen: Option<&str>) -> JobWatch {
        let (cursor, first) = FeedCursor::start(opened);
        let mut watch = JobWatch {
            job: opened.job.clone(),
            feed: opened.watch.feed.clone(),
            cursor,
            first: None,
            owed_done: None,
        };
        if let Some(update) = first {
            if is_news(&update, seen) {
                watch.first = Some(update);
            } else if update.is_done() {
                watch.owed_done = Some(update);
            }
        }
        watch
    }

    /// The job has ended and the client has its end state: all that is left
    /// is `done`.
    pub fn end_seen(&self) -> bool {
        self.first.is_none() && self.owed_done.is_some()
    }

    /// Seconds since the job's newest state came, if it is running and has
    /// been silent for its stall period (`default_after`: the gateway's) and
    /// `update` (when given) is that newest state. Read off the clock, not
    /// off the feed's stall mark, which its timer sets a moment later.
    pub fn stalled_seconds(
        &self,
        update: Option<&Arc<Update>>,
        default_after: Option<std::time::Duration>,
    ) -> Option<u64> {
        let latest = self.feed.snapshot().latest?;
        if update.is_some_and(|u| !Arc::ptr_eq(u, &latest)) || latest.doc.terminal {
            return None;
        }
        let period = crate::stall::period(&latest.doc, default_after)?;
        let silent = self.feed.silent_since(&latest).elapsed();
        (silent >= period).then_some(silent.as_secs())
    }

    /// Attaches `sink` to the feed if the client has the newest state and
    /// nothing is due: the feed then writes new states to it itself.
    fn attach(&mut self, sink: &Arc<DirectSink>) -> bool {
        if self.has_due() || !sink.can_attach() {
            return false;
        }
        let Some(last) = self.cursor.last() else {
            return false;
        };
        self.feed.attach(&(sink.clone() as Arc<dyn FeedSink>), last)
    }

    /// Detaches `sink`; the states the feed wrote count as handed out.
    pub fn detach(&mut self, sink: &Arc<DirectSink>) {
        self.feed.detach(&(sink.clone() as Arc<dyn FeedSink>));
        if let Some(update) = sink.take_last() {
            self.cursor.set_last(update);
        }
    }

    /// Is a step due without waiting for the feed?
    fn has_due(&self) -> bool {
        self.first.is_some() || self.owed_done.is_some()
    }

    /// The next step; `None` once the feed is gone. Cancel-safe: a state is
    /// only consumed when it is returned (an interrupted wait for durability
    /// starts again, bounded).
    pub async fn next(&mut self) -> Option<JobStep> {
        if let Some(update) = &self.owed_done {
            // `done` promises the end state is durable: bounded wait.
            update.durable.wait(event::DURABLE_WAIT).await;
            return self.owed_done.take().map(JobStep::Done);
        }
        let update = match self.first.take() {
            Some(update) => update,
            None => match self.cursor.next().await? {
                FeedChange::State(update) => update,
                FeedChange::Stalled(stalled) => return Some(JobStep::Stalled(stalled)),
            },
        };
        if update.is_done() {
            self.owed_done = Some(update.clone());
        }
        Some(JobStep::Progress(update))
    }
}

/// What a stream does next.
pub enum Step {
    Progress(Arc<Update>),
    /// Send `done`, then end.
    Done(Arc<Update>),
    /// The job went silent: say so.
    Stalled(Arc<Stalled>),
    /// Time to show the connection is alive.
    Heartbeat,
    /// The token expired: say so and end.
    Expired,
    /// The app revoked the session: say so and end.
    Revoked,
    /// The gateway drains: tell the client when to come back, and end.
    Shutdown,
    /// The job's feed is gone: end.
    FeedClosed,
}

impl Step {
    /// Why the stream ends after this step, if it does.
    pub fn close_reason(&self) -> Option<CloseReason> {
        match self {
            Step::Progress(_) | Step::Heartbeat | Step::Stalled(_) => None,
            Step::Done(_) => Some(CloseReason::Done),
            Step::Expired => Some(CloseReason::TokenExpired),
            Step::Revoked => Some(CloseReason::Revoked),
            Step::Shutdown => Some(CloseReason::Shutdown),
            Step::FeedClosed => Some(CloseReason::FeedClosed),
        }
    }
}

/// What punctuates or ends any stream, whatever it carries.
pub enum Signal {
    Heartbeat,
    Expired,
    Revoked,
    Shutdown,
}

impl From<Signal> for Step {
    fn from(signal: Signal) -> Step {
        match signal {
            Signal::Heartbeat => Step::Heartbeat,
            Signal::Expired => Step::Expired,
            Signal::Revoked => Step::Revoked,
            Signal::Shutdown => Step::Shutdown,
        }
    }
}

/// The timers and signals of one stream, shared by single-job watchers and
/// multi-job streams: heartbeat, the token's expiry, a revoked session, the
/// drain.
pub struct Lifecycle {
    heartbeat: Interval,
    expiry: Pin<Box<Sleep>>,
    /// The app revoked the session (auth hook callers only).
    revoked: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Registered once with the shutdown token, not on every poll.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Lifecycle {
    pub fn new(
        app: &AppState,
        token_ttl: std::time::Duration,
        revoked: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Lifecycle {
        Lifecycle {
            heartbeat: heartbeat_timer(app.settings.heartbeat()),
            expiry: Box::pin(tokio::time::sleep(token_ttl)),
            revoked,
            shutdown: Box::pin(app.shutdown.clone().cancelled_owned()),
        }
    }

    /// The next signal. Cancel-safe.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = &mut self.shutdown => Signal::Shutdown,
            _ = &mut self.expiry => Signal::Expired,
            _ = &mut self.revoked => Signal::Revoked,
            _ = self.heartbeat.tick() => Signal::Heartbeat,
        }
    }
}

/// A streaming watcher: its job, and the timers and signals that end it.
pub struct Watcher {
    pub job: JobWatch,
    lifecycle: Lifecycle,
    /// Set once a step ended the stream: nothing follows.
    ended: Option<CloseReason>,
}

impl Watcher {
    pub fn new(app: &AppState, opened: &mut Opened, seen: Option<&str>) -> Watcher {
        Watcher {
            job: JobWatch::start(opened, seen),
            lifecycle: Lifecycle::new(app, opened.token_ttl(), revocation(opened)),
            ended: None,
        }
    }

    /// Why the stream ended, once a step ended it.
    pub fn ended(&self) -> Option<CloseReason> {
        self.ended
    }

    /// The next step; `None` after a step that ended the stream. States owed
    /// (the first, or `done` after a terminal one) come before anything else;
    /// then whichever of shutdown, expiry, revocation, heartbeat or a new
    /// state is first. Cancel-safe, so a transport may `select!` on it.
    pub async fn next(&mut self) -> Option<Step> {
        if self.ended.is_some() {
            return None;
        }
        let step = if self.job.has_due() {
            job_step(self.job.next().await)
        } else {
            tokio::select! {
                signal = self.lifecycle.next() => signal.into(),
                next = self.job.next() => job_step(next),
            }
        };
        self.ended = step.close_reason();
        Some(step)
    }
}

impl Watcher {
    /// As [`Watcher::next`], but while the client has the newest state the
    /// feed writes new states to `sink` and this only waits for the stream's
    /// signals or for the feed to let go; then it detaches and carries on.
    /// Cancel-safe like `next` (a cancelled wait leaves the sink attached
    /// until the next call or `detach`).
    pub async fn next_attached(&mut self, sink: &Arc<DirectSink>) -> Option<Step> {
        if self.ended.is_none() && self.job.attach(sink) {
            let signal = tokio::select! {
                signal = self.lifecycle.next() => Some(signal),
                () = sink.released() => None,
            };
            self.job.detach(sink);
            if let Some(signal) = signal {
                let step = Step::from(signal);
                self.ended = step.close_reason();
                return Some(step);
            }
        }
        self.next().await
    }
}

fn job_step(step: Option<JobStep>) -> Step {
    match step {
        Some(JobStep::Progress(update)) => Step::Progress(update),
        Some(JobStep::Done(update)) => Step::Done(update),
        Some(JobStep::Stalled(stalled)) => Step::Stalled(stalled),
        None => Step::FeedClosed,
    }
}
