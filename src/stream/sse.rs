//! The Server-Sent Events writer: one task per watcher, reading its job's feed
//! (latest state only) and writing pre-encoded bytes into a small bounded channel
//! that is the response body. Headers defeat proxy compression and buffering.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};

use crate::auth::Credentials;
use crate::event;
use crate::limits::Transport;
use crate::state::SharedState;
use crate::stream::cursor::{FeedCursor, delivered, is_news};
use crate::stream::{Opened, closed, heartbeat_timer, open};

/// Chunks queued between the writer task and the socket. Small on purpose: a slow
/// client holds at most this many shared chunks; newer states wait in the feed,
/// where they replace each other.
const SSE_BODY_QUEUE: usize = 4;

pub async fn handle(
    app: SharedState,
    job: String,
    creds: Credentials,
    last_event_id: Option<String>,
) -> Result<Response, Infallible> {
    let opened = match open(&app, &job, &creds, Transport::Sse).await {
        Ok(o) => o,
        Err(e) => return Ok(e.into_response()),
    };
    let last_event_id = last_event_id
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    // An ended job whose end the client has seen: 204 stops EventSource for good.
    if let Some(update) = &opened.state.latest {
        if update.done.is_some() && last_event_id.as_deref() == Some(update.id_string().as_str()) {
            closed(Transport::Sse, "already_done");
            return Ok(
                warp::reply::with_status(warp::reply::reply(), StatusCode::NO_CONTENT)
                    .into_response(),
            );
        }
    }
    let (tx, rx) = mpsc::channel::<Bytes>(SSE_BODY_QUEUE);
    let span = opened.span.clone();
    tokio::spawn(write(app, opened, tx, last_event_id).instrument(span));
    let body = ReceiverStream::new(rx);
    let stream = futures::StreamExt::map(body, Ok::<Bytes, Infallible>);
    let mut res = warp::reply::stream(stream).into_response();
    let h = res.headers_mut();
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
    Ok(res)
}

/// Why a writer stopped (the `reason` label of the closed-connections metric).
async fn write(
    app: SharedState,
    opened: Opened,
    tx: mpsc::Sender<Bytes>,
    last_event_id: Option<String>,
) {
    let reason = run(&app, &opened, &tx, last_event_id).await;
    closed(Transport::Sse, reason);
    tracing::debug!(reason, "sse stream ended");
}

async fn run(
    app: &SharedState,
    opened: &Opened,
    tx: &mpsc::Sender<Bytes>,
    last_event_id: Option<String>,
) -> &'static str {
    let s = &app.settings;
    let send = |bytes: Bytes| async move {
        tokio::select! {
            r = tx.send(bytes) => r.is_ok(),
            _ = app.shutdown.cancelled() => false,
        }
    };
    if !send(event::sse_preamble(
        &opened.job,
        s.sse_retry_ms,
        s.sse_padding,
    ))
    .await
    {
        return "client_gone";
    }
    let (mut cursor, first) = FeedCursor::start(opened);
    if let Some(update) = first {
        if is_news(&update, last_event_id.as_deref()) {
            if !send(update.sse.clone()).await {
                return "client_gone";
            }
            delivered(&update, Transport::Sse);
        }
        if let Some((done, _)) = &update.done {
            // `done` promises the end state is durable (PROTOCOL §5): bounded wait.
            update.durable.wait(event::DURABLE_WAIT).await;
            send(done.clone()).await;
            return "done";
        }
    }
    let mut heartbeat = heartbeat_timer(s.heartbeat());
    let expiry = tokio::time::sleep(opened.token_ttl());
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            _ = tx.closed() => return "client_gone",
            _ = app.shutdown.cancelled() => {
                // Best effort, bounded: a stalled client must not hold the drain.
                let _ = tokio::time::timeout(Duration::from_millis(200), tx.send(event::sse_retry(s.sse_retry_ms))).await;
                return "shutdown";
            }
            _ = &mut expiry => {
                let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(event::sse_error("token_expired"))).await;
                return "token_expired";
            }
            _ = heartbeat.tick() => {
                if !send(Bytes::from_static(event::SSE_PING)).await {
                    return "client_gone";
                }
            }
            next = cursor.next() => {
                let Some(update) = next else { return "feed_closed" };
                if !send(update.sse.clone()).await {
                    return "client_gone";
                }
                delivered(&update, Transport::Sse);
                if let Some((done, _)) = &update.done {
                    update.durable.wait(event::DURABLE_WAIT).await;
                    send(done.clone()).await;
                    return "done";
                }
            }
        }
    }
}
