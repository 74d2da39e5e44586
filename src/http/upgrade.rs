//! WebSocket upgrades without warp's `ws()` filter, whose socket configuration
//! cannot be changed (a 128 KiB read buffer per connection) and whose text frames
//! must own a `String` (a copy per watcher). The accept loop moves hyper's
//! upgrade handle into an [`UpgradeSlot`] extension; the `/ws` route checks the
//! handshake headers with [`handshake`], authorises, answers `101` itself and
//! takes the slot to get the raw connection.

use std::sync::{Arc, Mutex};

use hyper::upgrade::OnUpgrade;
use warp::Filter;
use warp::http::HeaderMap;

use crate::http::stall::StallFlag;

/// The pending upgrade of one request (hyper's handle is not `Clone`, warp's
/// extension filter needs `Clone`).
#[derive(Clone)]
pub struct UpgradeSlot(Arc<Mutex<Option<OnUpgrade>>>);

impl UpgradeSlot {
    pub fn new(on: OnUpgrade) -> Self {
        UpgradeSlot(Arc::new(Mutex::new(Some(on))))
    }

    pub fn take(&self) -> Option<OnUpgrade> {
        crate::sync::lock(&self.0).take()
    }
}

/// A valid WebSocket handshake request: its key and the connection's upgrade.
pub struct WsHandshake {
    pub key: String,
    pub slot: Option<UpgradeSlot>,
}

#[derive(Debug)]
pub struct NotAnUpgrade;
impl warp::reject::Reject for NotAnUpgrade {}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Accepts a GET carrying `Connection: upgrade`, `Upgrade: websocket`,
/// `Sec-WebSocket-Version: 13` and a key; rejects anything else with
/// [`NotAnUpgrade`] (answered `400`).
pub fn handshake() -> impl Filter<Extract = (WsHandshake,), Error = warp::Rejection> + Clone {
    warp::header::headers_cloned()
        .and(warp::ext::optional::<UpgradeSlot>())
        .and_then(|h: HeaderMap, slot: Option<UpgradeSlot>| async move {
            let connection_upgrade = header(&h, "connection")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
            let upgrade_ws = header(&h, "upgrade").eq_ignore_ascii_case("websocket");
            let version_13 = header(&h, "sec-websocket-version") == "13";
            let key = header(&h, "sec-websocket-key").trim().to_owned();
            if connection_upgrade && upgrade_ws && version_13 && !key.is_empty() {
                Ok(WsHandshake { key, slot })
            } else {
                Err(warp::reject::custom(NotAnUpgrade))
            }
        })
}

/// Wraps the service the accept loop runs: moves hyper's upgrade handle into
/// an [`UpgradeSlot`] where warp's filters can reach it, hands every request
/// its connection's [`StallFlag`], and boxes the route
/// future. The box matters for memory: hyper reserves room for one in-flight
/// service future per connection for the connection's whole life, and the
/// routes' future is ~14 KiB; boxed, an open stream keeps a pointer instead.
#[derive(Clone)]
pub struct WithUpgradeSlot<S>(pub S, pub StallFlag);

impl<S, B> hyper::service::Service<hyper::Request<B>> for WithUpgradeSlot<S>
where
    S: hyper::service::Service<hyper::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, mut req: hyper::Request<B>) -> Self::Future {
        if let Some(on) = req.extensions_mut().remove::<OnUpgrade>() {
            req.extensions_mut().insert(UpgradeSlot::new(on));
        }
        req.extensions_mut().insert(self.1.clone());
        Box::pin(self.0.call(req))
    }
}
