//! One watcher → one client. [`open`] is the door every transport goes through
//! (job id → token (`http::caller`) → limits → join the job's feed → first state → ownership), so
//! a stream that cannot be opened is refused with its status code before any
//! event is written. `watcher` runs the stream's lifecycle; `sse`, `ws` and
//! `poll` turn its steps into bytes, frames or responses.

pub mod cursor;
pub mod poll;
pub mod reconnect;
pub mod sink;
pub mod sse;
pub mod transport;
pub mod watcher;
pub mod ws;

use std::time::Duration;

use tracing::Span;

use crate::auth::hook::Recheck;
use crate::auth::policy::{JobFacts, authorize};
use crate::auth::{Claims, Credentials};
use crate::config::FIRST_STATE_TIMEOUT;
use crate::fanout::FeedState;
use crate::http::caller::{authenticate, parse_job};
use crate::http::error::ApiError;
use crate::hub::Watch;
use crate::job::JobId;
use crate::limits::ConnGuard;
use crate::state::AppState;

pub use transport::Transport;

/// An authorised watcher, holding its job's subscription and its connection slot.
pub struct Opened {
    pub job: JobId,
    pub claims: Claims,
    pub watch: Watch,
    pub state: FeedState,
    pub guard: ConnGuard,
    pub span: Span,
    /// Set where the app's auth hook let the caller in: asked again while open.
    pub recheck: Option<Recheck>,
}

impl Opened {
    /// Time left until the token's `exp`.
    pub fn token_ttl(&self) -> Duration {
        let now = crate::auth::claims::now_secs();
        Duration::from_secs(self.claims.exp.saturating_sub(now))
    }
}

/// Opens a watcher on `raw_job` for the request's caller, or says why not.
pub async fn open(
    app: &AppState,
    raw_job: &str,
    creds: &Credentials,
    transport: Transport,
) -> Result<Opened, ApiError> {
    let job = parse_job(raw_job)?;
    app.connect_rate.admit()?;
    let (claims, recheck) = authenticate(app, creds, &job, Some(transport)).await?;
    // Debug level: a span per stream costs nothing unless logs or traces want it.
    let span = tracing::debug_span!(
        "stream",
        job = %job,
        transport = transport.as_str(),
        user_digest = %crate::telemetry::otel::user_digest(&claims.sub),
    );
    // Cheap facts first: where this gateway already knows the job's owner (a
    // live feed, or one remembered), a caller it rules out is refused before
    // the job costs a subscription or a read.
    if let Some(owner) = app.hub.known_owner(&job)
        && let Err(e) = authorize(
            &claims,
            &job,
            JobFacts {
                known: true,
                owner: Some(&owner),
            },
        )
    {
        metrics::counter!("jobcast_auth_failures_total", "reason" => e.reason()).increment(1);
        return Err(e.into());
    }
    let guard = app.limits.acquire(&claims.sub, transport)?;
    let watch = app.hub.join(job.clone());
    let state = watch.feed.wait_ready(FIRST_STATE_TIMEOUT).await;
    if !state.known && (state.unavailable || !state.ready) {
        return Err(ApiError::Unavailable(
            "neither Redis nor Postgres answered in time; retry shortly".into(),
        ));
    }
    let facts = JobFacts {
        known: state.known,
        owner: state.owner(),
    };
    if let Err(e) = authorize(&claims, &job, facts) {
        metrics::counter!("jobcast_auth_failures_total", "reason" => e.reason()).increment(1);
        return Err(e.into());
    }
    Ok(Opened {
        job,
        claims,
        watch,
        state,
        guard,
        span,
        recheck,
    })
}

/// Resolves when the app revokes the caller's session (streams let in by the
/// auth hook); never for a JWT caller, whose limit is the token's `exp`.
pub fn revocation(opened: &mut Opened) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    match opened.recheck.take() {
        Some(recheck) => Box::pin(recheck.revoked()),
        None => Box::pin(std::future::pending()),
    }
}

/// Counts a closed stream with why it closed.
pub fn closed(transport: Transport, reason: watcher::CloseReason) {
    metrics::counter!("jobcast_connections_closed_total", "transport" => transport.as_str(), "reason" => reason.as_str())
        .increment(1);
}

/// First tick of a heartbeat timer at a random point of the period, so that
/// thousands of streams opened together do not ping together.
pub fn heartbeat_timer(period: Duration) -> tokio::time::Interval {
    let offset = period.mul_f64(rand::random_range(0.5..1.0));
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}
