//! What every handler shares: settings, the hub, the loader, the Redis
//! connections, the token verifier, limits, the shutdown token and the health
//! of the upstreams. Built once by `startup`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::auth::hook::AuthHook;
use crate::config::Settings;
use crate::http::origin::Origin;
use crate::hub::Hub;
use crate::job::DocRules;
use crate::limits::Limits;
use crate::limits::rate::ConnectRate;
use crate::multi::groups::Groups;
use crate::readiness::Readiness;
use crate::upstream::loader::Loader;
use crate::upstream::redis_reader::RedisReader;

pub struct AppState {
    pub settings: Settings,
    pub hub: Arc<Hub>,
    /// Reads a job's state from Redis, then Postgres (snapshots, publish checks).
    pub loader: Arc<Loader>,
    /// Pooled Redis commands (`POST /jobs/{id}` writes through it).
    pub redis: RedisReader,
    /// What a valid document is (`JOBCAST_MAX_DOCUMENT_BYTES`, terminal statuses).
    pub rules: DocRules,
    /// Group name → members, for group streams.
    pub groups: Arc<Groups>,
    pub verifier: Verifier,
    /// `JOBCAST_AUTH_URL`: the app decides for requests without a valid JWT.
    pub auth_hook: Option<Arc<AuthHook>>,
    pub limits: Arc<Limits>,
    /// `JOBCAST_MAX_CONNECT_RATE`: new streams per second.
    pub connect_rate: ConnectRate,
    /// Cancelled on SIGTERM: every stream says goodbye and ends.
    pub shutdown: CancellationToken,
    /// True while the Redis pub/sub connection is up.
    pub redis_up: Arc<AtomicBool>,
    /// What `/readyz` answers, refreshed in the background.
    pub readiness: Arc<Readiness>,
    /// Pre-parsed `JOBCAST_ALLOWED_ORIGINS` (never `*`: refused at start).
    pub allowed_origins: Vec<Origin>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    /// Is `origin` listed in `JOBCAST_ALLOWED_ORIGINS`? (`null` and junk never are.)
    pub fn origin_listed(&self, origin: &str) -> bool {
        Origin::parse(origin).is_some_and(|o| self.allowed_origins.contains(&o))
    }

    /// Is `origin` the gateway's own (same host and port as the request) or listed?
    pub fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let Some(parsed) = Origin::parse(origin) else {
            return false;
        };
        host.is_some_and(|h| parsed.is_host(h)) || self.allowed_origins.contains(&parsed)
    }
}
