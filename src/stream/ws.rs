//! The WebSocket writer: the same events as SSE, as JSON text frames. The server
//! pings every heartbeat and closes a connection that missed two pongs; client
//! frames other than pong and close are ignored. Close codes: 1000 after `done`,
//! 1012 when the gateway drains (the reason names when to come back), 1008
//! when the token expired or the auth hook's app revoked the session.
//!
//! The handshake is answered here (see `http::upgrade`), so the socket is ours
//! to configure: small buffers (a watcher only ever receives pongs), and text
//! frames that share the job's encoded bytes instead of copying them. On the
//! direct path (a connection's first request) the accept loop writes the
//! `101` and this runs on the socket itself: states go out as one pre-framed
//! frame each, written by the job's feed while the client has the newest.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tracing::Instrument;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};

use crate::auth::credentials::WS_PROTOCOL;
use crate::auth::{Credentials, TokenSource};
use crate::event::{Frames, Update};
use crate::http::direct::{DirectIo, DirectSocket, StreamConn};
use crate::http::error::ApiError;
use crate::http::head::Rewind;
use crate::http::upgrade::WsHandshake;
use crate::job::JobId;
use crate::state::SharedState;
use crate::stream::Transport;
use crate::stream::cursor::{delivered, seen_id};
use crate::stream::sink::DirectSink;
use crate::stream::watcher::{CloseReason, Step, Watcher};
use crate::stream::{Opened, closed, open, reconnect};

/// Pings a client may leave unanswered before the connection is closed.
pub(crate) const MAX_MISSED_PONGS: u32 = 2;
/// Bound on writing one frame; a client that accepts nothing for this long is gone.
pub(crate) const WS_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest message a client may send (it has nothing to say but pongs).
const WS_MAX_CLIENT_MESSAGE: usize = 4096;
/// Read buffer per connection: client frames are pongs and closes.
const WS_READ_BUFFER: usize = 256;

pub(crate) type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Sends one frame, waiting at most [`WS_SEND_TIMEOUT`]; `false` when the
/// client is gone or stopped reading.
pub(crate) async fn send_within<S>(tx: &mut S, msg: Message) -> bool
where
    S: futures::Sink<Message> + Unpin,
{
    matches!(
        tokio::time::timeout(WS_SEND_TIMEOUT, tx.send(msg)).await,
        Ok(Ok(()))
    )
}

fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(WS_MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(WS_MAX_CLIENT_MESSAGE))
}

pub async fn handle(
    app: SharedState,
    job: String,
    creds: Credentials,
    last_event_id: Option<String>,
    handshake: WsHandshake,
    conn: StreamConn,
) -> Result<Response, Infallible> {
    if let Some(direct) = conn.direct() {
        // On the direct path the accept loop writes the `101` and runs the
        // stream on the socket itself.
        let opened = match check_origin(&app, &creds) {
            Ok(()) => open(&app, &job, &creds, Transport::Ws).await,
            Err(e) => Err(e),
        };
        let opened = match opened {
            Ok(o) => o,
            Err(e) => return Ok(e.into_response()),
        };
        let span = opened.span.clone();
        direct.upgrade_with(Box::new(move |socket, pre| {
            Box::pin(run_direct(app, opened, socket, pre, last_event_id).instrument(span))
        }));
        return Ok(switching_protocols(&handshake, &creds));
    }
    let on_upgrade = match upgrade_slot(&app, &creds, &handshake) {
        Ok(on) => on,
        Err(e) => return Ok(e.into_response()),
    };
    let opened = match open(&app, &job, &creds, Transport::Ws).await {
        Ok(o) => o,
        Err(e) => return Ok(e.into_response()),
    };
    let span = opened.span.clone();
    tokio::spawn(
        async move {
            if let Some(socket) = accept(on_upgrade).await {
                run(app, opened, socket, last_event_id).await;
            }
        }
        .instrument(span),
    );
    Ok(switching_protocols(&handshake, &creds))
}

/// Takes the connection's pending upgrade, refusing a cookie-borne token from
/// a foreign origin first. Cross-site WebSocket hijacking: a browser sends
/// cookies with any upgrade, so a cookie token is only honoured from our own
/// or an allowed origin.
pub(crate) fn upgrade_slot(
    app: &SharedState,
    creds: &Credentials,
    handshake: &WsHandshake,
) -> Result<hyper::upgrade::OnUpgrade, ApiError> {
    check_origin(app, creds)?;
    handshake
        .slot
        .as_ref()
        .and_then(|s| s.take())
        .ok_or_else(|| ApiError::BadRequest("this connection cannot be upgraded".into()))
}

/// Refuses a cookie-borne token from a foreign origin.
fn check_origin(app: &SharedState, creds: &Credentials) -> Result<(), ApiError> {
    if let (Some((_, TokenSource::Cookie)), Some(origin)) = (&creds.token, &creds.origin)
        && !app.origin_allowed(origin, creds.host.as_deref())
    {
        metrics::counter!("jobcast_auth_failures_total", "reason" => "origin").increment(1);
        return Err(ApiError::Forbidden(format!(
            "origin {origin} may not use the cookie token"
        )));
    }
    Ok(())
}

/// The socket, once the `101` went out; `None` (counted) where the upgrade failed.
pub(crate) async fn accept(on_upgrade: hyper::upgrade::OnUpgrade) -> Option<Socket> {
    match on_upgrade.await {
        Ok(upgraded) => Some(
            WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(socket_config()),
            )
            .await,
        ),
        Err(e) => {
            closed(Transport::Ws, CloseReason::UpgradeFailed);
            tracing::debug!(error = %e, "websocket upgrade failed");
            None
        }
    }
}

/// The `101 Switching Protocols` answer to a handshake.
pub(crate) fn switching_protocols(handshake: &WsHandshake, creds: &Credentials) -> Response {
    let mut res = Response::default();
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(handshake.key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if creds.offers_ws_protocol {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(WS_PROTOCOL),
        );
    }
    res
}

async fn run(app: SharedState, mut opened: Opened, socket: Socket, last_event_id: Option<String>) {
    let seen = seen_id(last_event_id.as_deref());
    let watcher = Watcher::new(&app, &mut opened, seen.as_deref());
    let reason = serve(&app, &opened.job, watcher, socket, None).await;
    closed(Transport::Ws, reason);
    tracing::debug!(reason = reason.as_str(), "websocket ended");
}

/// A WebSocket on the direct path: tungstenite reads the client's frames and
/// writes the control frames; states go out as pre-framed shared bytes, by
/// this task or, while the client has the newest state, by the job's feed.
async fn run_direct(
    app: SharedState,
    mut opened: Opened,
    socket: Arc<DirectSocket>,
    pre: BytesMut,
    last_event_id: Option<String>,
) {
    let seen = seen_id(last_event_id.as_deref());
    let watcher = Watcher::new(&app, &mut opened, seen.as_deref());
    let io = Rewind::new(pre, DirectIo(socket.clone()));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(socket_config())).await;
    let reason = serve(&app, &opened.job, watcher, ws, Some(socket)).await;
    closed(Transport::Ws, reason);
    tracing::debug!(reason = reason.as_str(), "websocket ended");
}

/// The stream's loop; `direct` is the socket on the direct path, where every
/// frame sent is flushed by this task (bounded) and states are written as
/// shared frames.
async fn serve<S>(
    app: &SharedState,
    job: &JobId,
    mut watcher: Watcher,
    socket: WebSocketStream<S>,
    direct: Option<Arc<DirectSocket>>,
) -> CloseReason
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx_client) = socket.split();
    let sink = direct
        .as_ref()
        .map(|socket| DirectSink::new(socket.clone(), progress_frame, Transport::Ws));
    let flushed = async |direct: &Option<Arc<DirectSocket>>| match direct {
        Some(socket) => socket.flush(WS_SEND_TIMEOUT).await.is_ok(),
        None => true,
    };
    macro_rules! send {
        ($msg:expr) => {
            if !send_within(&mut tx, $msg).await || !flushed(&direct).await {
                return CloseReason::ClientGone;
            }
        };
    }
    macro_rules! last {
        ($msg:expr) => {
            let _ = tx.send($msg).await;
            let _ = flushed(&direct).await;
        };
    }
    send!(Message::text(ws_connected(job)));
    let mut missed_pongs = 0u32;
    let reason = loop {
        let next = async {
            match &sink {
                Some(sink) => watcher.next_attached(sink).await,
                None => watcher.next().await,
            }
        };
        let parked = async {
            match &direct {
                Some(socket) => socket.parked().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = parked => {
                if !flushed(&direct).await {
                    break CloseReason::ClientGone;
                }
            }
            step = next => match step {
                None | Some(Step::FeedClosed) => break CloseReason::FeedClosed,
                Some(Step::Progress(update)) => {
                    match &direct {
                        Some(socket) => {
                            if socket.send_or_queue(progress_frame(&update)).is_err()
                                || !flushed(&direct).await
                            {
                                break CloseReason::ClientGone;
                            }
                        }
                        None => send!(text(&frames(&update).progress)),
                    }
                    delivered(&update, Transport::Ws);
                }
                Some(Step::Done(update)) => {
                    if let Some(done) = &frames(&update).done {
                        send!(text(done));
                    }
                    last!(close(CloseCode::Normal, "done"));
                    break CloseReason::Done;
                }
                Some(Step::Stalled(stalled)) => send!(text(&stalled.ws)),
                Some(Step::Heartbeat) => {
                    if missed_pongs >= MAX_MISSED_PONGS {
                        last!(close(CloseCode::Away, "no pong"));
                        break CloseReason::NoPong;
                    }
                    missed_pongs += 1;
                    send!(Message::Ping(Default::default()));
                }
                Some(Step::Shutdown) => {
                    // The reason names when to come back, spread over the drain window.
                    let reason = reconnect::ws_drain_reason(reconnect::drain_retry_ms(&app.settings));
                    let _ = tokio::time::timeout(Duration::from_millis(500), async {
                        last!(close(CloseCode::Restart, reason));
                    }).await;
                    break CloseReason::Shutdown;
                }
                Some(Step::Expired) => {
                    send!(Message::text(ws_error("token_expired")));
                    last!(close(CloseCode::Policy, "token expired"));
                    break CloseReason::TokenExpired;
                }
                Some(Step::Revoked) => {
                    send!(Message::text(ws_error("forbidden")));
                    last!(close(CloseCode::Policy, "session revoked"));
                    break CloseReason::Revoked;
                }
            },
            incoming = rx_client.next() => match incoming {
                Some(Ok(Message::Pong(_))) => missed_pongs = 0,
                Some(Ok(Message::Close(_))) => {
                    // tungstenite queued the reply to the close.
                    let _ = flushed(&direct).await;
                    break CloseReason::ClientClosed;
                }
                Some(Ok(_)) => {
                    // A ping's pong may be waiting.
                    if !flushed(&direct).await {
                        break CloseReason::ClientGone;
                    }
                }
                Some(Err(_)) | None => break CloseReason::ClientGone,
            },
        }
    };
    if let Some(sink) = &sink {
        watcher.job.detach(sink);
    }
    reason
}

/// This update's `progress` text frame with its header (tungstenite's
/// encoding, unmasked as a server's), built once.
pub fn progress_frame(update: &Update) -> &Bytes {
    update.wire.ws_frame.get_or_init(|| {
        let frame = Frame::message(
            frames(update).progress.clone(),
            OpCode::Data(Data::Text),
            true,
        );
        let mut out = Vec::with_capacity(frame.len());
        // Writing into a Vec cannot fail.
        frame.format(&mut out).expect("a frame formats into memory");
        Bytes::from(out)
    })
}

pub fn ws_connected(job: &JobId) -> String {
    json!({"event": "connected", "job_id": job.as_str()}).to_string()
}

pub fn ws_error(code: &str) -> String {
    json!({"event": "error", "error": code}).to_string()
}

/// This update's WebSocket text, encoded by the first WebSocket watcher that
/// sends it and shared by every other.
pub fn frames(update: &Update) -> &Frames {
    update.wire.ws.get_or_init(|| encode(update))
}

/// `{"event":"progress","id":"N","data":{...}}`, and for a terminal document
/// `{"event":"done","job_id":...,"status":...}`.
fn encode(update: &Update) -> Frames {
    Frames {
        progress: update.splice(b"{\"event\":\"progress\",\"id\":\"", b"\",\"data\":", b"}"),
        done: update.is_done().then(|| {
            let done =
                json!({"event": "done", "job_id": update.job.as_str(), "status": update.status()});
            Bytes::from(done.to_string())
        }),
    }
}

/// A text frame over the job's shared encoding: no copy per watcher. The bytes
/// were built from valid UTF-8 JSON.
pub(crate) fn text(bytes: &bytes::Bytes) -> Message {
    match Utf8Bytes::try_from(bytes.clone()) {
        Ok(t) => Message::Text(t),
        Err(_) => Message::Text(String::from_utf8_lossy(bytes).into_owned().into()),
    }
}

pub(crate) fn close(code: CloseCode, reason: impl Into<Utf8Bytes>) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_frame_is_an_unmasked_text_frame_of_the_shared_text() {
        let u = Update::for_tests(r#"{"seq":42}"#);
        let frame = progress_frame(&u);
        let text = &frames(&u).progress;
        assert_eq!(&frame[..2], &[0x81, text.len() as u8]);
        assert_eq!(&frame[2..], &text[..]);
        let long = format!(r#"{{"seq":1,"pad":"{}"}}"#, "x".repeat(300));
        let u = Update::for_tests(&long);
        let frame = progress_frame(&u);
        let len = frames(&u).progress.len();
        assert_eq!(&frame[..4], &[0x81, 126, (len >> 8) as u8, len as u8]);
    }

    #[test]
    fn ws_encodes_progress_once_and_done_when_terminal() {
        let u = Update::for_tests(r#"{"seq":42}"#);
        let f = frames(&u);
        let ws: serde_json::Value = serde_json::from_slice(&f.progress).unwrap();
        assert_eq!(ws, json!({"event":"progress","id":"42","data":{"seq":42}}));
        assert!(
            f.done.is_none() && std::ptr::eq(f, frames(&u)),
            "one encoding"
        );
        let u = Update::for_tests(r#"{"status":"completed"}"#);
        let done: serde_json::Value =
            serde_json::from_slice(&frames(&u).done.clone().unwrap()).unwrap();
        assert_eq!(
            done,
            json!({"event":"done","job_id":"j1","status":"completed"})
        );
    }
}
