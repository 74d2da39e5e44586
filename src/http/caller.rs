//! Who is calling, for every route that names a job: the job id (400), the
//! token (401), or — where `JOBCAST_AUTH_URL` is set — the app's word on the
//! session. Streams (`stream::open`) and the one-shot routes (`http::jobs`)
//! come through the same door.

use crate::auth::hook::Recheck;
use crate::auth::{AuthError, Claims, Credentials};
use crate::http::error::ApiError;
use crate::job::JobId;
use crate::state::AppState;
use crate::stream::Transport;

pub fn parse_job(raw: &str) -> Result<JobId, ApiError> {
    JobId::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// Verifies the request's token (401 where missing or bad). May wait for one
/// bounded JWK Set refresh when the token names an unknown `kid`.
pub async fn verify(app: &AppState, creds: &Credentials) -> Result<Claims, ApiError> {
    let result = match &creds.token {
        None => Err(AuthError::Missing),
        Some((token, _)) => app.verifier.verify_fresh(token.expose()).await,
    };
    result.map_err(|e| {
        metrics::counter!("jobcast_auth_failures_total", "reason" => e.reason()).increment(1);
        ApiError::Unauthorized(e)
    })
}

/// Who the caller is: a valid JWT's claims, else — where `JOBCAST_AUTH_URL`
/// is set — what the app says of the request's own headers (cookie), with the
/// re-check an open stream needs. A WebSocket from a foreign origin is never
/// vouched for by the app: its cookies come along with any cross-site page
/// (cross-site WebSocket hijacking).
pub async fn authenticate(
    app: &AppState,
    creds: &Credentials,
    job: &JobId,
    transport: Option<Transport>,
) -> Result<(Claims, Option<Recheck>), ApiError> {
    let Some(hook) = &app.auth_hook else {
        return Ok((verify(app, creds).await?, None));
    };
    if let Some((token, _)) = &creds.token
        && let Ok(claims) = app.verifier.verify_fresh(token.expose()).await
    {
        return Ok((claims, None));
    }
    if transport == Some(Transport::Ws)
        && let Some(origin) = &creds.origin
        && !app.origin_allowed(origin, creds.host.as_deref())
    {
        metrics::counter!("jobcast_auth_failures_total", "reason" => "origin").increment(1);
        return Err(ApiError::Forbidden(format!(
            "origin {origin} may not open a WebSocket with this session"
        )));
    }
    let forwarded = hook.forwarded(&creds.headers.0);
    let decision = hook.decide(&forwarded, job).await;
    let (claims, period) = crate::auth::hook::into_claims(decision, job).inspect_err(|e| {
        metrics::counter!("jobcast_auth_failures_total", "reason" => e.reason()).increment(1);
    })?;
    let recheck = Recheck {
        hook: hook.clone(),
        forwarded,
        job: job.clone(),
        period,
    };
    Ok((claims, Some(recheck)))
}
