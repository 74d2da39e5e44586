//! A watcher's place in its job's feed, shared by the SSE, WebSocket and
//! long-poll writers: where to start (the state `open` authorised against, or
//! newer), and the next state newer than the last one handed out. Only the
//! newest state is ever handed out (latest-value conflation).

use std::sync::{Arc, OnceLock};

use metrics::{Counter, Histogram};

use tokio::sync::watch;

use crate::event::{Stalled, Update};
use crate::fanout::FeedState;
use crate::stream::Opened;
use crate::stream::Transport;

pub struct FeedCursor {
    rx: watch::Receiver<FeedState>,
    /// The state handed out last, compared by identity: every accepted state is
    /// a new `Arc`, so this needs no id arithmetic.
    last: Option<Arc<Update>>,
    /// The stall mark handed out last, compared by identity likewise.
    stalled: Option<Arc<Stalled>>,
}

/// What changed in a job's feed.
pub enum FeedChange {
    /// A newer state.
    State(Arc<Update>),
    /// The job's timer found its newest (running) state silent too long.
    Stalled(Arc<Stalled>),
}

impl FeedCursor {
    /// The cursor and the state to start from, if the job has one.
    pub fn start(opened: &Opened) -> (FeedCursor, Option<Arc<Update>>) {
        let mut rx = opened.watch.feed.subscribe();
        let first = rx
            .borrow_and_update()
            .latest
            .clone()
            .or_else(|| opened.state.latest.clone());
        let last = first.clone();
        let cursor = FeedCursor {
            rx,
            last,
            stalled: None,
        };
        (cursor, first)
    }

    /// The state handed out last.
    pub fn last(&self) -> Option<&Arc<Update>> {
        self.last.as_ref()
    }

    /// Records a state that reached the client another way (written by the
    /// feed itself), so it is not handed out again.
    pub fn set_last(&mut self, update: Arc<Update>) {
        self.last = Some(update);
    }

    /// Waits for a state newer than the last one handed out, or a stall mark
    /// not handed out yet (one the job already had when the cursor started
    /// included); `None` once the feed is gone. Cancel-safe (for `select!`):
    /// nothing is consumed until it is returned.
    pub async fn next(&mut self) -> Option<FeedChange> {
        loop {
            if let Some(change) = self.unseen() {
                return Some(change);
            }
            self.rx.changed().await.ok()?;
        }
    }

    /// What the feed holds now that was not handed out yet.
    fn unseen(&mut self) -> Option<FeedChange> {
        let (latest, stalled) = {
            let state = self.rx.borrow_and_update();
            (state.latest.clone(), state.stalled.clone())
        };
        if let Some(update) =
            latest.filter(|u| !self.last.as_ref().is_some_and(|l| Arc::ptr_eq(l, u)))
        {
            self.last = Some(update.clone());
            return Some(FeedChange::State(update));
        }
        let stalled =
            stalled.filter(|s| !self.stalled.as_ref().is_some_and(|l| Arc::ptr_eq(l, s)))?;
        self.stalled = Some(stalled.clone());
        Some(FeedChange::Stalled(stalled))
    }
}

/// The id a client says it has seen (`Last-Event-ID`, `last_event_id`,
/// `after`), trimmed; blank means none. Ids jobcast hands out are short, so
/// anything longer than [`MAX_CLIENT_ID_LEN`] cannot be one and is ignored
/// (the client then gets the current state, never less).
pub fn seen_id(raw: Option<&str>) -> Option<String> {
    raw.map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= MAX_CLIENT_ID_LEN)
        .map(str::to_owned)
}

/// Longest id a client may hand back, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 64;

/// True unless the client says it already has this state (`Last-Event-ID`,
/// `last_event_id`, or long-poll's `after`). Only the very id suppresses: an
/// older, newer-looking or foreign id never hides the current state.
pub fn is_news(update: &Update, client_has: Option<&str>) -> bool {
    client_has != Some(&*update.id)
}

/// Counts a state written to a client, and how long it took since it arrived.
/// The metric handles are looked up once per process, not per delivery.
pub fn delivered(update: &Update, transport: Transport) {
    // In declaration order: `transport as usize` indexes the handles.
    const ALL: [Transport; 4] = [
        Transport::Sse,
        Transport::Ws,
        Transport::Poll,
        Transport::Snapshot,
    ];
    static HANDLES: OnceLock<[(Counter, Histogram); 4]> = OnceLock::new();
    let handles = HANDLES.get_or_init(|| {
        ALL.map(|t| {
            (
                metrics::counter!("jobcast_events_delivered_total", "transport" => t.as_str()),
                metrics::histogram!("jobcast_delivery_latency_seconds"),
            )
        })
    });
    debug_assert!(ALL[transport as usize] == transport);
    let (counter, latency) = &handles[transport as usize];
    counter.increment(1);
    latency.record(update.received.elapsed().as_secs_f64());
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::event::Source;
    use crate::job::{JobId, ProgressDoc};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn seen_id_is_trimmed_bounded_or_none(raw in ".{0,100}") {
            match seen_id(Some(&raw)) {
                Some(id) => {
                    prop_assert_eq!(id.as_str(), raw.trim());
                    prop_assert!(!id.is_empty() && id.len() <= MAX_CLIENT_ID_LEN);
                }
                None => prop_assert!(raw.trim().is_empty() || raw.trim().len() > MAX_CLIENT_ID_LEN),
            }
        }

        #[test]
        fn only_the_exact_id_suppresses_a_state(seq in 0i64..1_000_000, raw in ".{0,40}") {
            let job = JobId::parse("j").unwrap();
            let update = Update::encode(&job, ProgressDoc::for_tests(&format!(r#"{{"seq":{seq}}}"#)), Source::RedisKey);
            let seen = seen_id(Some(&raw));
            prop_assert_eq!(is_news(&update, seen.as_deref()), seen.as_deref() != Some(&*update.id));
        }
    }
}
