//! The door of multi-job streams, the single-job door's rules applied to
//! every job before anything is written: connect rate, the caller (once),
//! cheap refusals from owners already known, ONE connection slot for the
//! whole stream, then every job's feed joined and its first load awaited
//! together, and each job authorised in the order listed. The first refusal
//! answers, naming its job. A group stream is let in by the `groups` claim
//! (or `admin`) alone, and then follows every job of the group.

use futures::future::join_all;
use tracing::Span;

use crate::auth::hook::Recheck;
use crate::auth::policy::{self, JobFacts, authorize, authorize_group};
use crate::auth::{Claims, Credentials};
use crate::config::FIRST_STATE_TIMEOUT;
use crate::http::caller::{authenticate, verify};
use crate::http::error::ApiError;
use crate::hub::Watch;
use crate::job::JobId;
use crate::limits::ConnGuard;
use crate::multi::Refusal;
use crate::multi::cursor::StreamCursor;
use crate::multi::groups::GroupWatch;
use crate::multi::jobset::JobSet;
use crate::multi::list::GroupName;
use crate::state::AppState;
use crate::stream::Transport;

/// An authorised multi-job stream: its jobs, its one connection slot.
pub struct OpenedMany {
    pub claims: Claims,
    pub set: JobSet,
    /// The group a group stream follows (its subscription lives as long).
    pub group: Option<GroupWatch>,
    pub guard: ConnGuard,
    pub span: Span,
    /// Set where the app's auth hook let the caller in: one per job, asked
    /// again while the stream is open.
    pub rechecks: Vec<Recheck>,
}

impl OpenedMany {
    /// Time left until the token's `exp`.
    pub fn token_ttl(&self) -> std::time::Duration {
        let now = crate::auth::claims::now_secs();
        std::time::Duration::from_secs(self.claims.exp.saturating_sub(now))
    }

    /// Resolves when the app revokes the session for any of the stream's
    /// jobs; never for a JWT caller.
    pub fn revocation(&mut self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let rechecks = std::mem::take(&mut self.rechecks);
        if rechecks.is_empty() {
            return Box::pin(std::future::pending());
        }
        Box::pin(async move {
            futures::future::select_all(rechecks.into_iter().map(|r| Box::pin(r.revoked()))).await;
        })
    }
}

/// A job the policy refuses, counted under the refusal's own reason.
fn refuse(job: &JobId, e: policy::Refusal) -> Refusal {
    metrics::counter!("jobcast_auth_failures_total", "reason" => e.reason()).increment(1);
    Refusal::for_job(e.into(), job.as_str())
}

/// Refuses `job` where this gateway already knows an owner that rules the
/// caller out (no I/O).
fn known_refusal(app: &AppState, claims: &Claims, job: &JobId) -> Result<(), Refusal> {
    if let Some(owner) = app.hub.known_owner(job) {
        let facts = JobFacts {
            known: true,
            owner: Some(&owner),
        };
        authorize(claims, job, facts).map_err(|e| refuse(job, e))?;
    }
    Ok(())
}

/// Joins `job` for `claims` after its first load, or says why not (the
/// single-job rule: 403 for another's and unknown alike, 404 for a claim
/// holder's unknown job, 503 where no source answered).
pub async fn admit(app: &AppState, claims: &Claims, job: &JobId) -> Result<Watch, Refusal> {
    known_refusal(app, claims, job)?;
    let watch = app.hub.join(job.clone());
    let state = watch.feed.wait_ready(FIRST_STATE_TIMEOUT).await;
    check(claims, job, &state)?;
    Ok(watch)
}

fn check(claims: &Claims, job: &JobId, state: &crate::fanout::FeedState) -> Result<(), Refusal> {
    if !state.known && (state.unavailable || !state.ready) {
        return Err(Refusal::for_job(
            ApiError::Unavailable(
                "neither Redis nor Postgres answered in time; retry shortly".into(),
            ),
            job.as_str(),
        ));
    }
    let facts = JobFacts {
        known: state.known,
        owner: state.owner(),
    };
    authorize(claims, job, facts).map_err(|e| refuse(job, e))
}

/// Opens a stream on a `?job=` list for the request's caller, or says why not.
pub async fn open_list(
    app: &AppState,
    jobs: Vec<JobId>,
    creds: &Credentials,
    transport: Transport,
    cursor: StreamCursor,
) -> Result<OpenedMany, Refusal> {
    app.connect_rate.admit()?;
    // The token is the caller's for every job; the app's hook (no valid
    // token) decides per job, as it does for single-job streams.
    let (claims, first) = authenticate(app, creds, &jobs[0], Some(transport))
        .await
        .map_err(|e| Refusal::for_job(e, jobs[0].as_str()))?;
    let mut rechecks = Vec::new();
    if let Some(recheck) = first {
        rechecks.push(recheck);
        for job in &jobs[1..] {
            let (_, recheck) = authenticate(app, creds, job, Some(transport))
                .await
                .map_err(|e| Refusal::for_job(e, job.as_str()))?;
            rechecks.extend(recheck);
        }
    }
    for job in &jobs {
        known_refusal(app, &claims, job)?;
    }
    let guard = app.limits.acquire(&claims.sub, transport)?;
    let span = tracing::debug_span!(
        "stream",
        jobs = jobs.len(),
        transport = transport.as_str(),
        user_digest = %crate::telemetry::otel::user_digest(&claims.sub),
    );
    let watches: Vec<Watch> = jobs.iter().map(|j| app.hub.join(j.clone())).collect();
    let states = join_all(
        watches
            .iter()
            .map(|w| w.feed.wait_ready(FIRST_STATE_TIMEOUT)),
    )
    .await;
    for (job, state) in jobs.iter().zip(&states) {
        check(&claims, job, state)?;
    }
    let mut set = JobSet::new(cursor, app.settings.max_jobs_per_stream);
    for watch in watches {
        set.add(watch, false);
    }
    Ok(OpenedMany {
        claims,
        set,
        group: None,
        guard,
        span,
        rechecks,
    })
}

/// Opens a stream on every job of `group`, or says why not. Group streams
/// take a token (the app's hook answers for single jobs, not for groups).
pub async fn open_group(
    app: &AppState,
    group: &str,
    creds: &Credentials,
    transport: Transport,
    cursor: StreamCursor,
) -> Result<OpenedMany, Refusal> {
    let group = GroupName::parse(group)?;
    app.connect_rate.admit()?;
    let claims = verify(app, creds).await?;
    if let Err(e) = authorize_group(&claims, group.as_str()) {
        metrics::counter!("jobcast_auth_failures_total", "reason" => "not_in_group").increment(1);
        return Err(e.into());
    }
    let guard = app.limits.acquire(&claims.sub, transport)?;
    let span = tracing::debug_span!(
        "stream",
        group = %group,
        transport = transport.as_str(),
        user_digest = %crate::telemetry::otel::user_digest(&claims.sub),
    );
    let watch = app.groups.join(group.clone());
    app.groups.load(&group).await;
    let mut set = JobSet::new(cursor, app.settings.max_jobs_per_stream);
    set.follow(app.hub.clone(), watch.members.clone());
    // The members' first states, together, so the stream opens with them.
    let feeds: Vec<_> = set
        .jobs()
        .filter_map(|j| app.hub.feed(j.as_str()))
        .collect();
    join_all(feeds.iter().map(|f| f.wait_ready(FIRST_STATE_TIMEOUT))).await;
    Ok(OpenedMany {
        claims,
        set,
        group: Some(watch),
        guard,
        span,
        rechecks: Vec::new(),
    })
}
