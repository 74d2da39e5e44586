//! The Server-Sent Events writer. The response body IS the watcher: a stream
//! that hyper's connection task polls, which reads its job's feed (latest state
//! only) and yields pre-encoded, shared bytes. No task or queue of its own, so a
//! watcher costs one connection's buffers and a feed receiver, and a state
//! reaches the socket with one wake-up. Headers defeat proxy compression and
//! buffering.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use sync_wrapper::SyncStream;
use tokio::time::{Interval, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};

use crate::auth::Credentials;
use crate::event::{self, Update};
use crate::http::stall::StallFlag;
use crate::limits::Transport;
use crate::state::SharedState;
use crate::stream::cursor::{FeedCursor, delivered, is_news, seen_id};
use crate::stream::{Opened, closed, heartbeat_timer, open, reconnect, revocation};

pub async fn handle(
    app: SharedState,
    job: String,
    creds: Credentials,
    last_event_id: Option<String>,
    stall: Option<StallFlag>,
) -> Result<Response, Infallible> {
    let opened = match open(&app, &job, &creds, Transport::Sse).await {
        Ok(o) => o,
        Err(e) => return Ok(e.into_response()),
    };
    let last_event_id = seen_id(last_event_id.as_deref());
    // An ended job whose end the client has seen: 204 stops EventSource for good.
    if let Some(update) = &opened.state.latest
        && update.done.is_some()
        && !is_news(update, last_event_id.as_deref())
    {
        closed(Transport::Sse, "already_done");
        return Ok(
            warp::reply::with_status(warp::reply::reply(), StatusCode::NO_CONTENT).into_response(),
        );
    }
    let writer = SseWriter::new(app, opened, last_event_id, stall);
    let body = futures::stream::unfold(writer, |mut w| async move {
        let chunk = w.next_chunk().await?;
        Some((Ok::<Bytes, Infallible>(chunk), w))
    });
    let mut res = warp::reply::stream(SyncStream::new(body)).into_response();
    stream_headers(res.headers_mut());
    Ok(res)
}

/// The headers of every event stream (jobs and the buffering self-test): they
/// tell proxies not to compress (`identity`, `no-transform`), cache or buffer
/// (`X-Accel-Buffering: no`) the response.
pub fn stream_headers(h: &mut warp::http::HeaderMap) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    h.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

enum Phase {
    /// `retry:`, padding and `connected` come next.
    Preamble,
    /// The state `open` authorised against (or newer) comes next, if any.
    First,
    Live,
    /// Nothing more after what is owed.
    Ended,
}

/// One watcher's stream. Dropped by hyper when the client goes away, which
/// releases the job's subscription and the connection slot.
struct SseWriter {
    app: SharedState,
    opened: Opened,
    cursor: FeedCursor,
    first: Option<Arc<Update>>,
    last_event_id: Option<String>,
    phase: Phase,
    /// A terminal state whose `done` is owed after its `progress` event.
    owed_done: Option<Arc<Update>>,
    heartbeat: Interval,
    expiry: Pin<Box<Sleep>>,
    /// The app revoked the session (auth hook callers only).
    revoked: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Registered once with the shutdown token, not on every poll.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Why the stream ended (the closed-connections metric); unset = client gone.
    ended: Option<&'static str>,
    /// Set by the connection when it was cut for not reading.
    stall: Option<StallFlag>,
}

impl Drop for SseWriter {
    fn drop(&mut self) {
        let stalled = self.stall.as_ref().is_some_and(StallFlag::is_set);
        let reason = match self.ended {
            Some(reason) => reason,
            None if stalled => "write_stalled",
            None => "client_gone",
        };
        closed(Transport::Sse, reason);
        tracing::debug!(parent: &self.opened.span, reason, "sse stream ended");
    }
}

impl SseWriter {
    fn new(
        app: SharedState,
        mut opened: Opened,
        last_event_id: Option<String>,
        stall: Option<StallFlag>,
    ) -> Self {
        let revoked = revocation(&mut opened);
        let (cursor, first) = FeedCursor::start(&opened);
        let heartbeat = heartbeat_timer(app.settings.heartbeat());
        let expiry = Box::pin(tokio::time::sleep(opened.token_ttl()));
        let shutdown = Box::pin(app.shutdown.clone().cancelled_owned());
        SseWriter {
            app,
            opened,
            cursor,
            first,
            last_event_id,
            phase: Phase::Preamble,
            owed_done: None,
            heartbeat,
            expiry,
            revoked,
            shutdown,
            ended: None,
            stall,
        }
    }

    fn end(&mut self, reason: &'static str) {
        self.ended = Some(reason);
        self.phase = Phase::Ended;
    }

    /// A progress event for `update`; a terminal one owes its `done` next.
    fn progress(&mut self, update: Arc<Update>) -> Bytes {
        delivered(&update, Transport::Sse);
        let bytes = update.sse.clone();
        if update.done.is_some() {
            self.owed_done = Some(update);
            self.end("done");
        }
        bytes
    }

    /// The next chunk to write, or `None` to end the response.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(update) = self.owed_done.take() {
            // `done` promises the end state is durable: bounded wait.
            update.durable.wait(event::DURABLE_WAIT).await;
            return update.done.as_ref().map(|(sse, _)| sse.clone());
        }
        match self.phase {
            Phase::Ended => return None,
            Phase::Preamble => {
                self.phase = Phase::First;
                let s = &self.app.settings;
                return Some(event::sse_preamble(
                    &self.opened.job,
                    reconnect::stream_retry_ms(s),
                    s.sse_padding,
                ));
            }
            Phase::First => {
                self.phase = Phase::Live;
                if let Some(update) = self.first.take() {
                    if is_news(&update, self.last_event_id.as_deref()) {
                        return Some(self.progress(update));
                    }
                    if let Some((done, _)) = &update.done {
                        self.end("done");
                        update.durable.wait(event::DURABLE_WAIT).await;
                        return Some(done.clone());
                    }
                }
            }
            Phase::Live => {}
        }
        tokio::select! {
            _ = &mut self.shutdown => {
                self.end("shutdown");
                Some(event::sse_retry(reconnect::drain_retry_ms(&self.app.settings)))
            }
            _ = &mut self.expiry => {
                self.end("token_expired");
                Some(event::sse_error("token_expired"))
            }
            _ = &mut self.revoked => {
                self.end("revoked");
                Some(event::sse_error("forbidden"))
            }
            _ = self.heartbeat.tick() => Some(Bytes::from_static(event::SSE_PING)),
            next = self.cursor.next() => match next {
                Some(update) => Some(self.progress(update)),
                None => {
                    self.end("feed_closed");
                    None
                }
            },
        }
    }
}
