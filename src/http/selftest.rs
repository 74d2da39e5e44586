//! The server side of the buffering self-test (`static/buffering.html`,
//! `jobcast.selfTest()`): routes under `/debug/` that need no token, so a user
//! can open them through their own proxy and see what it does to a stream.
//!
//! - `GET /debug/buffering`: an event stream with the headers of a real one —
//!   [`TICKS`] × `event: tick` `{"n","sent_at_ms"}`, [`TICK_INTERVAL`] apart,
//!   each padded to [`EVENT_BYTES`], then `event: verdict` with what the server
//!   saw of the request (HTTP version, proxy headers). The verdict itself is
//!   computed by the client from the arrival spacing: only it can see that.
//! - `GET /debug/ws`: a WebSocket that sends a few `tick` frames and closes.
//! - `GET /debug/poll`: one JSON answer, as a long-poll would get.
//!
//! Every request is rate-limited per client address ([`REQUESTS_PER_MINUTE`]),
//! and streams open at once are capped ([`MAX_OPEN_PROBES`]): these routes are
//! public and must not become a cheap way to tie the gateway up. The client
//! address is the peer's, or — when the peer is a proxy on the same machine —
//! the one that proxy appended last to `X-Forwarded-For` (or `X-Real-IP`), so
//! users behind the shipped nginx do not share one budget.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use crate::http::client_info::{ClientInfo, client_info};
use crate::http::error::{ApiError, respond};
use crate::http::reply::no_store;
use crate::http::upgrade::{WsHandshake, handshake};

/// Tick events per self-test stream.
pub const TICKS: u64 = 10;
/// Pause between two ticks: far apart enough that buffering shows as a burst.
pub const TICK_INTERVAL: Duration = Duration::from_millis(200);
/// Size of one tick event on the wire: a proxy that buffers by the kilobyte
/// holds several back.
pub const EVENT_BYTES: usize = 1024;
/// Frames the WebSocket probe sends before it closes.
const WS_PROBE_FRAMES: u64 = 3;
/// Requests one client address may make to `/debug/` per minute (a self-test
/// run makes two to four).
pub const REQUESTS_PER_MINUTE: u32 = 30;
/// Self-test streams and sockets open at once, over all clients.
pub const MAX_OPEN_PROBES: usize = 64;
/// Addresses remembered by the rate limiter before idle ones are forgotten.
const MAX_TRACKED_ADDRESSES: usize = 10_000;
/// `retry:` for the self-test stream: the client closes it after the verdict,
/// so a reconnect only happens on failure and need not be quick.
const RETRY_MS: u64 = 10_000;

/// Rate limit and cap shared by the `/debug/` routes.
struct Gate {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    open: Arc<Semaphore>,
}

impl Gate {
    fn new() -> Self {
        let per_minute = NonZeroU32::new(REQUESTS_PER_MINUTE).unwrap_or(NonZeroU32::MIN);
        Gate {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            open: Arc::new(Semaphore::new(MAX_OPEN_PROBES)),
        }
    }

    /// Admits one request from `client`, or says why not (429).
    fn admit(
        &self,
        client: Option<ClientInfo>,
        headers: &HeaderMap,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        if self.limiter.len() > MAX_TRACKED_ADDRESSES {
            self.limiter.retain_recent();
        }
        let ip = client_ip(client, headers);
        if self.limiter.check_key(&ip).is_err() {
            metrics::counter!("jobcast_selftest_refused_total", "reason" => "rate_limited")
                .increment(1);
            return Err(ApiError::TooManyConnections(format!(
                "the self-test allows {REQUESTS_PER_MINUTE} requests a minute per address; retry in a minute"
            )));
        }
        self.open.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("jobcast_selftest_refused_total", "reason" => "busy").increment(1);
            ApiError::TooManyConnections(
                "too many self-tests are running; retry in a few seconds".into(),
            )
        })
    }
}

/// The address a request is counted against. A loopback peer is a local proxy
/// (jobcast listens on 127.0.0.1 behind one): its last `X-Forwarded-For` entry
/// is the address it saw, which a client cannot forge (a proxy appends to what
/// the client sent). Any other peer is taken as it is.
fn client_ip(client: Option<ClientInfo>, headers: &HeaderMap) -> IpAddr {
    // Without a peer (never, under our accept loop) all share one bucket.
    let Some(peer) = client.map(|c| c.peer.ip()) else {
        return IpAddr::from([0, 0, 0, 0]);
    };
    if !peer.is_loopback() {
        return peer;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    header("x-forwarded-for")
        .and_then(|v| v.rsplit(',').next())
        .or_else(|| header("x-real-ip"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(peer)
}

/// `/debug/buffering`, `/debug/ws` and `/debug/poll`.
pub fn routes() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let gate = Arc::new(Gate::new());
    let with_gate = warp::any().map(move || gate.clone());

    let buffering = warp::path!("debug" / "buffering")
        .and(warp::get())
        .and(with_gate.clone())
        .and(client_info())
        .and(warp::header::headers_cloned())
        .map(|gate: Arc<Gate>, client, headers: HeaderMap| {
            respond(
                gate.admit(client, &headers)
                    .map(|permit| buffering(permit, client, &headers)),
            )
        });

    let ws = warp::path!("debug" / "ws")
        .and(warp::get())
        .and(with_gate.clone())
        .and(client_info())
        .and(warp::header::headers_cloned())
        .and(handshake())
        .map(
            |gate: Arc<Gate>, client, headers: HeaderMap, hs: WsHandshake| {
                respond(
                    gate.admit(client, &headers)
                        .map(|permit| ws_probe(permit, hs)),
                )
            },
        );

    let poll = warp::path!("debug" / "poll")
        .and(warp::get())
        .and(with_gate)
        .and(client_info())
        .and(warp::header::headers_cloned())
        .map(|gate: Arc<Gate>, client, headers: HeaderMap| {
            respond(gate.admit(client, &headers).map(|_permit| poll_probe()))
        });

    buffering.or(ws).unify().or(poll).unify()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `event: tick` number `n`, padded with a comment line to [`EVENT_BYTES`].
pub fn tick_event(n: u64, sent_at_ms: u64) -> Bytes {
    let head = format!(
        "event: tick\ndata: {}\n",
        json!({"n": n, "sent_at_ms": sent_at_ms})
    );
    // ": " + padding + "\n" + the blank line that ends the event.
    let pad = EVENT_BYTES.saturating_sub(head.len() + 4);
    let mut out = String::with_capacity(EVENT_BYTES);
    out.push_str(&head);
    out.push_str(": ");
    out.extend(std::iter::repeat_n('.', pad));
    out.push_str("\n\n");
    Bytes::from(out)
}

/// What the server saw of the request, for the client to explain a verdict:
/// the HTTP version the last hop spoke, whether it looks proxied, and the
/// encodings it forwarded.
fn request_facts(client: Option<ClientInfo>, headers: &HeaderMap) -> serde_json::Value {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let forwarded = ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|h| headers.contains_key(*h));
    json!({
        "ticks": TICKS,
        "interval_ms": TICK_INTERVAL.as_millis() as u64,
        "event_bytes": EVENT_BYTES,
        "http_version": client.map(|c| c.version_str()),
        "via": header("via"),
        "forwarded": forwarded,
        "accept_encoding": header("accept-encoding"),
        "sent_at_ms": now_ms(),
    })
}

fn buffering(
    permit: OwnedSemaphorePermit,
    client: Option<ClientInfo>,
    headers: &HeaderMap,
) -> Response {
    let facts = request_facts(client, headers);
    tracing::debug!(facts = %facts, "buffering self-test started");
    let mut ticks = tokio::time::interval(TICK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Step 0: preamble; 1..=TICKS: ticks; TICKS + 1: verdict; then the end.
    // The permit lives as long as the stream.
    let state = (0u64, ticks, Some(facts), permit);
    let body = futures::stream::unfold(state, |(step, mut ticks, facts, permit)| async move {
        let chunk = match step {
            0 => Bytes::from(format!(
                "retry: {RETRY_MS}\n: jobcast buffering self-test\n\n"
            )),
            n if n <= TICKS => {
                ticks.tick().await;
                tick_event(n, now_ms())
            }
            n if n == TICKS + 1 => {
                ticks.tick().await;
                let mut facts = facts.clone().unwrap_or_default();
                facts["sent_at_ms"] = now_ms().into();
                Bytes::from(format!("event: verdict\ndata: {facts}\n\n"))
            }
            _ => return None,
        };
        Some((
            Ok::<Bytes, std::convert::Infallible>(chunk),
            (step + 1, ticks, facts, permit),
        ))
    });
    let mut res =
        warp::reply::stream(sync_wrapper::SyncStream::new(Box::pin(body))).into_response();
    crate::stream::sse::stream_headers(res.headers_mut());
    res
}

fn ws_probe(permit: OwnedSemaphorePermit, hs: WsHandshake) -> Response {
    let Some(on_upgrade) = hs.slot.as_ref().and_then(|s| s.take()) else {
        return ApiError::BadRequest("this connection cannot be upgraded".into()).into_response();
    };
    tokio::spawn(async move {
        let _permit = permit;
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(4096))
            .max_frame_size(Some(4096));
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let mut ticks = tokio::time::interval(TICK_INTERVAL);
        for n in 1..=WS_PROBE_FRAMES {
            ticks.tick().await;
            let frame = json!({"event": "tick", "n": n, "sent_at_ms": now_ms()}).to_string();
            let sent =
                tokio::time::timeout(Duration::from_secs(5), socket.send(Message::text(frame)));
            if !matches!(sent.await, Ok(Ok(()))) {
                return;
            }
        }
        let close = Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: Utf8Bytes::from_static("self-test done"),
        }));
        let _ = tokio::time::timeout(Duration::from_secs(5), socket.send(close)).await;
    });
    let mut res = Response::default();
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(hs.key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    res
}

fn poll_probe() -> Response {
    let body = json!({"transport": "poll", "sent_at_ms": now_ms()});
    no_store(warp::reply::json(&body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_one_kibibyte_events() {
        let e = tick_event(7, 1_700_000_000_000);
        assert_eq!(e.len(), EVENT_BYTES);
        let text = std::str::from_utf8(&e).unwrap();
        assert!(text.starts_with("event: tick\ndata: {\"n\":7,\"sent_at_ms\":1700000000000}\n: "));
        assert!(text.ends_with("\n\n"));
        assert_eq!(text.matches("\n\n").count(), 1, "one event");
    }

    #[test]
    fn the_gate_limits_per_address() {
        let gate = Gate::new();
        let info = |ip: [u8; 4]| {
            Some(ClientInfo {
                peer: (ip, 1234).into(),
                version: warp::http::Version::HTTP_11,
            })
        };
        let none = HeaderMap::new();
        for _ in 0..REQUESTS_PER_MINUTE {
            assert!(gate.admit(info([127, 0, 0, 2]), &none).is_ok());
        }
        let refused = gate.admit(info([127, 0, 0, 2]), &none).unwrap_err();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            gate.admit(info([127, 0, 0, 3]), &none).is_ok(),
            "another address"
        );
        // Behind a local proxy, each forwarded client has its own budget.
        let mut forwarded = HeaderMap::new();
        forwarded.insert("x-forwarded-for", "10.9.9.9, 192.0.2.7".parse().unwrap());
        assert!(gate.admit(info([127, 0, 0, 2]), &forwarded).is_ok());
    }

    #[test]
    fn forwarded_addresses_count_only_from_a_local_proxy() {
        let info = |ip: [u8; 4]| {
            Some(ClientInfo {
                peer: (ip, 1234).into(),
                version: warp::http::Version::HTTP_11,
            })
        };
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.1, 192.0.2.7".parse().unwrap());
        assert_eq!(
            client_ip(info([127, 0, 0, 1]), &h),
            IpAddr::from([192, 0, 2, 7])
        );
        assert_eq!(
            client_ip(info([198, 51, 100, 4]), &h),
            IpAddr::from([198, 51, 100, 4]),
            "a remote peer cannot pick its address"
        );
        h.insert("x-forwarded-for", "junk".parse().unwrap());
        assert_eq!(
            client_ip(info([127, 0, 0, 1]), &h),
            IpAddr::from([127, 0, 0, 1])
        );
        let mut real = HeaderMap::new();
        real.insert("x-real-ip", "192.0.2.9".parse().unwrap());
        assert_eq!(
            client_ip(info([127, 0, 0, 1]), &real),
            IpAddr::from([192, 0, 2, 9])
        );
    }
}
