//! A watcher's place in its job's feed, shared by the SSE, WebSocket and
//! long-poll writers: where to start (the state `open` authorised against, or
//! newer), and the next state newer than the last one handed out. Only the
//! newest state is ever handed out (latest-value conflation).

use std::sync::Arc;

use tokio::sync::watch;

use crate::event::Update;
use crate::fanout::FeedState;
use crate::limits::Transport;
use crate::stream::Opened;

pub struct FeedCursor {
    rx: watch::Receiver<FeedState>,
    last: Option<i64>,
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
        let last = first.as_ref().map(|u| u.id);
        (FeedCursor { rx, last }, first)
    }

    /// Waits for a state newer than the last one handed out; `None` once the
    /// feed is gone. Cancel-safe (for `select!`): nothing is consumed until the
    /// state is returned.
    pub async fn next(&mut self) -> Option<Arc<Update>> {
        loop {
            self.rx.changed().await.ok()?;
            let latest = self.rx.borrow_and_update().latest.clone();
            if let Some(update) = latest.filter(|u| Some(u.id) != self.last) {
                self.last = Some(update.id);
                return Some(update);
            }
        }
    }
}

/// True unless the client says it already has this state (`Last-Event-ID`,
/// `last_event_id`, or long-poll's `after`).
pub fn is_news(update: &Update, client_has: Option<&str>) -> bool {
    client_has != Some(update.id_string().as_str())
}

/// Counts a state written to a client, and how long it took since it arrived.
pub fn delivered(update: &Update, transport: Transport) {
    metrics::counter!("jobcast_events_delivered_total", "transport" => transport.as_str())
        .increment(1);
    metrics::histogram!("jobcast_delivery_latency_seconds")
        .record(update.received.elapsed().as_secs_f64());
}
