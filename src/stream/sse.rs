//! The Server-Sent Events writer. The response body IS the watcher: a stream
//! that the connection's task polls (on the direct path, or hyper's), which
//! turns the [`Watcher`]'s steps into pre-encoded, shared bytes. No task or
//! queue of its own, so a watcher costs its connection and a feed receiver,
//! and a state reaches the socket with one wake-up. Headers defeat proxy
//! compression and buffering.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::json;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};

use crate::auth::Credentials;
use crate::event::{Frames, Update};
use crate::http::direct::{StreamConn, chunk_size_line};
use crate::http::stall::StallFlag;
use crate::state::SharedState;
use crate::stream::Transport;
use crate::stream::cursor::{delivered, seen_id};
use crate::stream::sink::DirectSink;
use crate::stream::watcher::{CloseReason, Step, Watcher};
use crate::stream::{Opened, closed, open, reconnect};

pub async fn handle(
    app: SharedState,
    job: String,
    creds: Credentials,
    last_event_id: Option<String>,
    conn: StreamConn,
) -> Result<Response, Infallible> {
    let mut opened = match open(&app, &job, &creds, Transport::Sse).await {
        Ok(o) => o,
        Err(e) => return Ok(e.into_response()),
    };
    let seen = seen_id(last_event_id.as_deref());
    let watcher = Watcher::new(&app, &mut opened, seen.as_deref());
    // An ended job whose end the client has seen: 204 stops EventSource for good.
    if watcher.job.end_seen() {
        closed(Transport::Sse, CloseReason::AlreadyDone);
        return Ok(
            warp::reply::with_status(warp::reply::reply(), StatusCode::NO_CONTENT).into_response(),
        );
    }
    let writer = SseWriter {
        app,
        opened,
        watcher,
        preamble_sent: false,
        stall: conn.stall(),
        sink: conn
            .socket()
            .map(|socket| DirectSink::new(socket, progress_chunk, Transport::Sse)),
    };
    let body = futures::stream::unfold(writer, |mut w| async move {
        let chunk = w.next_chunk().await?;
        Some((chunk, w))
    });
    Ok(conn.respond(body))
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

/// One watcher's stream. Dropped by hyper when the client goes away, which
/// releases the job's subscription and the connection slot.
struct SseWriter {
    app: SharedState,
    opened: Opened,
    watcher: Watcher,
    /// `retry:`, padding and `connected` come first.
    preamble_sent: bool,
    /// Set by the connection when it was cut for not reading.
    stall: Option<StallFlag>,
    /// On the direct path: where the feed writes new states itself while
    /// the client has the newest one.
    sink: Option<Arc<DirectSink>>,
}

impl Drop for SseWriter {
    fn drop(&mut self) {
        if let Some(sink) = &self.sink {
            self.watcher.job.detach(sink);
        }
        let stalled = self.stall.as_ref().is_some_and(StallFlag::is_set);
        let reason = match self.watcher.ended() {
            Some(reason) => reason,
            None if stalled => CloseReason::WriteStalled,
            None => CloseReason::ClientGone,
        };
        closed(Transport::Sse, reason);
        tracing::debug!(parent: &self.opened.span, reason = reason.as_str(), "sse stream ended");
    }
}

impl SseWriter {
    /// The next chunk to write, or `None` to end the response.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.preamble_sent {
            self.preamble_sent = true;
            let s = &self.app.settings;
            return Some(sse_preamble(
                &json!({"job_id": self.opened.job.as_str()}),
                reconnect::stream_retry_ms(s),
                s.sse_padding,
            ));
        }
        let step = match &self.sink {
            Some(sink) => self.watcher.next_attached(sink).await?,
            None => self.watcher.next().await?,
        };
        Some(match step {
            Step::Progress(update) => {
                delivered(&update, Transport::Sse);
                frames(&update).progress.clone()
            }
            Step::Done(update) => frames(&update).done.clone()?,
            Step::Stalled(stalled) => stalled.sse.clone(),
            Step::Heartbeat => Bytes::from_static(SSE_PING),
            Step::Expired => sse_error("token_expired"),
            Step::Revoked => sse_error("forbidden"),
            Step::Shutdown => sse_retry(reconnect::drain_retry_ms(&self.app.settings)),
            Step::FeedClosed => return None,
        })
    }
}

/// This update's SSE bytes, encoded by the first SSE watcher that sends it and
/// shared by every other.
pub fn frames(update: &Update) -> &Frames {
    update.wire.sse.get_or_init(|| encode(update))
}

/// This update's `progress` event framed as one HTTP/1.1 chunk, built once.
pub fn progress_chunk(update: &Update) -> &Bytes {
    update.wire.sse_chunk.get_or_init(|| {
        let event = &frames(update).progress;
        let size = chunk_size_line(event.len());
        let mut chunk = BytesMut::with_capacity(size.as_bytes().len() + event.len() + 2);
        chunk.put_slice(size.as_bytes());
        chunk.put_slice(event);
        chunk.put_slice(b"\r\n");
        chunk.freeze()
    })
}

/// `id: N\nevent: progress\ndata: {...}\n\n`, and for a terminal document
/// `event: done\ndata: {"job_id":...,"status":...}\n\n`.
fn encode(update: &Update) -> Frames {
    Frames {
        progress: update.splice(b"id: ", b"\nevent: progress\ndata: ", b"\n\n"),
        done: update.is_done().then(|| {
            let data = json!({"job_id": update.job.as_str(), "status": update.status()});
            Bytes::from(format!("event: done\ndata: {data}\n\n"))
        }),
    }
}

/// The start of every SSE stream: `retry:`, optional padding, `connected`
/// (with `data` naming the job, or the jobs of a multi-job stream).
pub fn sse_preamble(connected: &serde_json::Value, retry_ms: u64, padding: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(64 + padding);
    b.put_slice(format!("retry: {retry_ms}\n\n").as_bytes());
    if padding > 0 {
        b.put_slice(b":");
        b.put_bytes(b' ', padding);
        b.put_slice(b"\n\n");
    }
    b.put_slice(format!("event: connected\ndata: {connected}\n\n").as_bytes());
    b.freeze()
}

pub const SSE_PING: &[u8] = b": ping\n\n";

pub fn sse_error(code: &str) -> Bytes {
    Bytes::from(format!(
        "event: error\ndata: {}\n\n",
        json!({"error": code})
    ))
}

/// The last words of a stream the server drains: reconnect after `retry_ms`.
pub fn sse_retry(retry_ms: u64) -> Bytes {
    Bytes::from(format!("retry: {retry_ms}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_encodes_progress_once_and_done_when_terminal() {
        let u = Update::for_tests(r#"{"seq":42}"#);
        let f = frames(&u);
        assert_eq!(
            &f.progress[..],
            b"id: 42\nevent: progress\ndata: {\"seq\":42}\n\n"
        );
        assert!(
            f.done.is_none() && std::ptr::eq(f, frames(&u)),
            "one encoding"
        );
        let u = Update::for_tests(r#"{"status":"completed"}"#);
        assert_eq!(
            &frames(&u).done.clone().unwrap()[..],
            b"event: done\ndata: {\"job_id\":\"j1\",\"status\":\"completed\"}\n\n"
        );
    }

    #[test]
    fn preamble_pads_after_retry() {
        let p = sse_preamble(&json!({"job_id": "j1"}), 2000, 10);
        let text = std::str::from_utf8(&p).unwrap();
        assert!(text.starts_with("retry: 2000\n\n:          \n\nevent: connected\n"));
    }
}
