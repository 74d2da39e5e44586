//! What every handler shares: settings, the hub, the token verifier, limits, the
//! shutdown token and the health of the upstreams. Built once by `startup`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::config::Settings;
use crate::hub::Hub;
use crate::limits::Limits;

pub struct AppState {
    pub settings: Settings,
    pub hub: Arc<Hub>,
    pub verifier: Verifier,
    pub limits: Arc<Limits>,
    /// Cancelled on SIGTERM: every stream says goodbye and ends.
    pub shutdown: CancellationToken,
    /// True while the Redis pub/sub connection is up.
    pub redis_up: Arc<AtomicBool>,
    /// Pre-parsed `JOBCAST_ALLOWED_ORIGINS`.
    pub allowed_origins: Vec<String>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    /// Is `origin` the gateway's own (same host as the request) or allowed?
    pub fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
        host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host))
            || self
                .allowed_origins
                .iter()
                .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}
