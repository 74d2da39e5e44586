//! WebSocket for multi-job streams (`/ws?job=…`, `/groups/{group}/ws`): the
//! same items as SSE, one JSON text frame each with a `type`, progress and
//! done frames carrying the cursor. Clients change the set in band with
//! `{"type":"watch","job":"C"}` and `{"type":"unwatch","job":"C"}`: a watch
//! is authorised with the connection's caller like a listed job, and a
//! refusal is an `error` frame naming the job (the connection stays open).
//! Close codes as single-job: 1000 once every job of a list ended (a set
//! emptied by `unwatch` stays open), 1012 on drain, 1008 on token expiry.

use std::convert::Infallible;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::Instrument;
use warp::reply::{Reply, Response};

use crate::auth::Credentials;
use crate::event;
use crate::http::upgrade::WsHandshake;
use crate::job::JobId;
use crate::multi::door::{OpenedMany, admit, open_group, open_list};
use crate::multi::jobset::Item;
use crate::multi::list::{parse_jobs, resume_cursor};
use crate::multi::{Refusal, connected};
use crate::state::SharedState;
use crate::stream::Transport;
use crate::stream::cursor::delivered;
use crate::stream::watcher::{CloseReason, Lifecycle, Signal};
use crate::stream::ws::{
    MAX_MISSED_PONGS, Socket, accept, close, send_within, switching_protocols, text, upgrade_slot,
};
use crate::stream::{closed, reconnect};

/// `GET /ws?job=A&job=B…`
pub async fn list(
    app: SharedState,
    creds: Credentials,
    query: String,
    handshake: WsHandshake,
) -> Result<Response, Infallible> {
    let jobs = match parse_jobs(&query, app.settings.max_jobs_per_stream) {
        Ok(jobs) => jobs,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    let cursor = resume_cursor(None, &query);
    Ok(upgrade(app, creds, handshake, |app, creds| async move {
        open_list(&app, jobs, &creds, Transport::Ws, cursor).await
    })
    .await)
}

/// `GET /groups/{group}/ws`
pub async fn group(
    app: SharedState,
    group: String,
    creds: Credentials,
    query: String,
    handshake: WsHandshake,
) -> Result<Response, Infallible> {
    let cursor = resume_cursor(None, &query);
    Ok(upgrade(app, creds, handshake, |app, creds| async move {
        open_group(&app, &group, &creds, Transport::Ws, cursor).await
    })
    .await)
}

async fn upgrade<F, Fut>(
    app: SharedState,
    creds: Credentials,
    handshake: WsHandshake,
    open: F,
) -> Response
where
    F: FnOnce(SharedState, Credentials) -> Fut,
    Fut: Future<Output = Result<OpenedMany, Refusal>>,
{
    let on_upgrade = match upgrade_slot(&app, &creds, &handshake) {
        Ok(on) => on,
        Err(e) => return e.into_response(),
    };
    let response = switching_protocols(&handshake, &creds);
    let opened = match open(app.clone(), creds).await {
        Ok(o) => o,
        Err(refusal) => return refusal.into_response(),
    };
    let span = opened.span.clone();
    tokio::spawn(
        async move {
            if let Some(socket) = accept(on_upgrade).await {
                let reason = serve(&app, opened, socket).await;
                closed(Transport::Ws, reason);
                tracing::debug!(reason = reason.as_str(), "multi-job websocket ended");
            }
        }
        .instrument(span),
    );
    response
}

/// What a client may send besides pongs.
#[derive(Deserialize)]
struct ClientFrame {
    #[serde(rename = "type")]
    kind: String,
    job: String,
}

/// A frame that ends with this connection's cursor: `open` is the job's
/// shared encoding up to its closing brace.
fn with_cursor(open: &Bytes, cursor: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(open.len() + cursor.len() + 16);
    b.put_slice(open);
    b.put_slice(b",\"cursor\":\"");
    b.put_slice(cursor.as_bytes());
    b.put_slice(b"\"}");
    b.freeze()
}

fn frame(value: serde_json::Value) -> Message {
    Message::text(value.to_string())
}

async fn serve(app: &SharedState, mut opened: OpenedMany, socket: Socket) -> CloseReason {
    let (mut tx, mut rx_client) = socket.split();
    macro_rules! send {
        ($msg:expr) => {
            if !send_within(&mut tx, $msg).await {
                return CloseReason::ClientGone;
            }
        };
    }
    let mut hello = connected(&opened);
    hello["type"] = json!("connected");
    send!(frame(hello));
    let mut lifecycle = Lifecycle::new(app, opened.token_ttl(), opened.revocation());
    let mut missed_pongs = 0u32;
    loop {
        tokio::select! {
            signal = lifecycle.next() => match signal {
                Signal::Shutdown => {
                    let reason = reconnect::ws_drain_reason(reconnect::drain_retry_ms(&app.settings));
                    let _ = tokio::time::timeout(Duration::from_millis(500),
                        tx.send(close(CloseCode::Restart, reason))).await;
                    return CloseReason::Shutdown;
                }
                Signal::Expired => {
                    send!(frame(json!({"type": "error", "error": "token_expired"})));
                    let _ = tx.send(close(CloseCode::Policy, "token expired")).await;
                    return CloseReason::TokenExpired;
                }
                Signal::Revoked => {
                    send!(frame(json!({"type": "error", "error": "forbidden"})));
                    let _ = tx.send(close(CloseCode::Policy, "session revoked")).await;
                    return CloseReason::Revoked;
                }
                Signal::Heartbeat => {
                    if missed_pongs >= MAX_MISSED_PONGS {
                        let _ = tx.send(close(CloseCode::Away, "no pong")).await;
                        return CloseReason::NoPong;
                    }
                    missed_pongs += 1;
                    send!(Message::Ping(Default::default()));
                }
            },
            incoming = rx_client.next() => match incoming {
                Some(Ok(Message::Pong(_))) => missed_pongs = 0,
                Some(Ok(Message::Close(_))) => return CloseReason::ClientClosed,
                Some(Ok(Message::Text(t))) => {
                    let answer = in_band(app, &mut opened, t.as_str()).await;
                    send!(frame(answer));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return CloseReason::ClientGone,
            },
            item = opened.set.next() => {
                let Some(item) = item else {
                    let _ = tx.send(close(CloseCode::Normal, "done")).await;
                    return CloseReason::Done;
                };
                let msg = match item {
                    Item::Progress(job, update) => {
                        delivered(&update, Transport::Ws);
                        text(&with_cursor(&update.many(&job).ws_open, &opened.set.cursor_text()))
                    }
                    Item::Done(job, update) => {
                        update.durable.wait(event::DURABLE_WAIT).await;
                        match &update.many(&job).ws_done_open {
                            Some(open) => text(&with_cursor(open, &opened.set.cursor_text())),
                            None => continue,
                        }
                    }
                    Item::Stalled(_, stalled) => text(&stalled.ws_many),
                    Item::Joined(job) => frame(json!({"type": "joined", "job_id": job.as_str()})),
                };
                send!(msg);
            }
        }
    }
}

/// Answers a client's `watch` or `unwatch`.
async fn in_band(app: &SharedState, opened: &mut OpenedMany, raw: &str) -> serde_json::Value {
    let Ok(ask) = serde_json::from_str::<ClientFrame>(raw) else {
        return json!({"type": "error", "error": "bad_request",
            "message": "send {\"type\":\"watch\"|\"unwatch\",\"job\":\"…\"}"});
    };
    let refuse = |code: &str| json!({"type": "error", "job": ask.job, "error": code});
    let Ok(job) = JobId::parse(&ask.job) else {
        return refuse("bad_request");
    };
    match ask.kind.as_str() {
        "watch" => {
            if !opened.set.contains(&job) {
                if opened.set.is_full() {
                    return refuse("too_many_jobs");
                }
                match admit(app, &opened.claims, &job).await {
                    Ok(watch) => opened.set.add(watch, false),
                    Err(refusal) => return refuse(refusal.error.code()),
                }
            }
            json!({"type": "watching", "job": job.as_str()})
        }
        "unwatch" => {
            opened.set.remove(&job);
            json!({"type": "unwatching", "job": job.as_str()})
        }
        _ => refuse("bad_request"),
    }
}
