//! Server-Sent Events for multi-job streams (`/events?job=…`,
//! `/groups/{group}/events`). Like the single-job writer, the response body
//! is the watcher (no task of its own): it polls the connection's job set and
//! writes each item as the job's shared bytes between a small prefix that
//! carries this connection's cursor as the `id:`.

use std::convert::Infallible;

use bytes::Bytes;
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::auth::Credentials;
use crate::event;
use crate::http::direct::StreamConn;
use crate::http::stall::StallFlag;
use crate::multi::door::{OpenedMany, open_group, open_list};
use crate::multi::jobset::Item;
use crate::multi::list::{parse_jobs, resume_cursor};
use crate::multi::{Refusal, connected};
use crate::state::SharedState;
use crate::stream::Transport;
use crate::stream::cursor::delivered;
use crate::stream::sse::{SSE_PING, sse_error, sse_preamble, sse_retry};
use crate::stream::watcher::{CloseReason, Lifecycle, Signal};
use crate::stream::{closed, reconnect};

/// `GET /events?job=A&job=B…`
pub async fn list(
    app: SharedState,
    creds: Credentials,
    last_event_id: Option<String>,
    query: String,
    conn: StreamConn,
) -> Result<Response, Infallible> {
    let opened = async {
        let jobs = parse_jobs(&query, app.settings.max_jobs_per_stream)?;
        let cursor = resume_cursor(last_event_id.as_deref(), &query);
        open_list(&app, jobs, &creds, Transport::Sse, cursor).await
    };
    Ok(respond(app.clone(), opened.await, conn))
}

/// `GET /groups/{group}/events`
pub async fn group(
    app: SharedState,
    group: String,
    creds: Credentials,
    last_event_id: Option<String>,
    query: String,
    conn: StreamConn,
) -> Result<Response, Infallible> {
    let cursor = resume_cursor(last_event_id.as_deref(), &query);
    let opened = open_group(&app, &group, &creds, Transport::Sse, cursor).await;
    Ok(respond(app.clone(), opened, conn))
}

fn respond(app: SharedState, opened: Result<OpenedMany, Refusal>, conn: StreamConn) -> Response {
    let opened = match opened {
        Ok(o) => o,
        Err(refusal) => return refusal.into_response(),
    };
    // Every job ended and every end seen: 204 stops EventSource for good.
    if opened.set.is_over() {
        closed(Transport::Sse, CloseReason::AlreadyDone);
        return warp::reply::with_status(warp::reply::reply(), StatusCode::NO_CONTENT)
            .into_response();
    }
    let writer = Writer::new(app, opened, conn.stall());
    let body = futures::stream::unfold(writer, |mut w| async move {
        let chunks = w.next_chunks().await?;
        Some((futures::stream::iter(chunks), w))
    });
    conn.respond(futures::StreamExt::flatten(body))
}

/// One connection's stream; dropped by hyper when the client goes away,
/// which lets go of every job's subscription and the one connection slot.
struct Writer {
    app: SharedState,
    opened: OpenedMany,
    preamble_sent: bool,
    lifecycle: Lifecycle,
    /// Why the stream ended; unset = client gone.
    ended: Option<CloseReason>,
    stall: Option<StallFlag>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        let stalled = self.stall.as_ref().is_some_and(StallFlag::is_set);
        let reason = match self.ended {
            Some(reason) => reason,
            None if stalled => CloseReason::WriteStalled,
            None => CloseReason::ClientGone,
        };
        closed(Transport::Sse, reason);
        tracing::debug!(parent: &self.opened.span, reason = reason.as_str(), "multi-job sse stream ended");
    }
}

impl Writer {
    fn new(app: SharedState, mut opened: OpenedMany, stall: Option<StallFlag>) -> Self {
        let lifecycle = Lifecycle::new(&app, opened.token_ttl(), opened.revocation());
        Writer {
            app,
            opened,
            preamble_sent: false,
            lifecycle,
            ended: None,
            stall,
        }
    }

    /// The next chunks to write, or `None` to end the response.
    async fn next_chunks(&mut self) -> Option<Vec<Bytes>> {
        if self.ended.is_some() {
            return None;
        }
        if !self.preamble_sent {
            self.preamble_sent = true;
            let s = &self.app.settings;
            return Some(vec![sse_preamble(
                &connected(&self.opened),
                reconnect::stream_retry_ms(s),
                s.sse_padding,
            )]);
        }
        tokio::select! {
            signal = self.lifecycle.next() => Some(vec![match signal {
                Signal::Heartbeat => Bytes::from_static(SSE_PING),
                Signal::Shutdown => {
                    self.ended = Some(CloseReason::Shutdown);
                    sse_retry(reconnect::drain_retry_ms(&self.app.settings))
                }
                Signal::Expired => {
                    self.ended = Some(CloseReason::TokenExpired);
                    sse_error("token_expired")
                }
                Signal::Revoked => {
                    self.ended = Some(CloseReason::Revoked);
                    sse_error("forbidden")
                }
            }]),
            item = self.opened.set.next() => match item {
                Some(item) => Some(self.chunks(item).await),
                None => {
                    self.ended = Some(CloseReason::Done);
                    None
                }
            },
        }
    }

    async fn chunks(&mut self, item: Item) -> Vec<Bytes> {
        match item {
            Item::Progress(job, update) => {
                delivered(&update, Transport::Sse);
                let forms = update.many(&job);
                let head = format!(
                    "id: {}\nevent: progress\ndata: ",
                    self.opened.set.cursor_text()
                );
                vec![
                    Bytes::from(head),
                    forms.data.clone(),
                    Bytes::from_static(b"\n\n"),
                ]
            }
            Item::Done(_, update) => {
                // `done` promises the end state is durable: bounded wait.
                update.durable.wait(event::DURABLE_WAIT).await;
                let head = format!("id: {}\n", self.opened.set.cursor_text());
                match &crate::stream::sse::frames(&update).done {
                    Some(sse) => vec![Bytes::from(head), sse.clone()],
                    None => Vec::new(),
                }
            }
            Item::Stalled(_, stalled) => vec![stalled.sse.clone()],
            Item::Joined(job) => vec![Bytes::from(format!(
                "event: joined\ndata: {}\n\n",
                json!({"job_id": job.as_str()})
            ))],
        }
    }
}
