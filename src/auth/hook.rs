//! The application decides (`JOBCAST_AUTH_URL`): for a request without a
//! valid JWT, jobcast asks the app's backend `GET {url}?job={id}` with the
//! user's own headers (`JOBCAST_AUTH_FORWARD_HEADERS`, default `Cookie` and
//! `Authorization`), so a cookie-session app adopts jobcast without minting
//! tokens. `200 {"sub":"…"[,"cache_secs":N]}` allows, `401`/`403` refuse;
//! anything else — a timeout (2 s), a `5xx`, a body without `sub` — is
//! `503 unavailable`, never an allow.
//!
//! Decisions are cached per (digest of the forwarded headers, job) for
//! `JOBCAST_AUTH_CACHE_SECS` (or the app's `cache_secs`): the raw cookie is
//! neither a key nor ever logged. Concurrent requests for one key share one
//! call (moka's entry API coalesces them), so a page that opens 50 streams
//! with one cookie costs the app one request. Open streams are re-checked
//! every cache period ([`Recheck`]); a revoked session's streams end.

use std::sync::Arc;
use std::time::Duration;

use moka::Expiry;
use moka::future::Cache;
use sha2::{Digest, Sha256};
use warp::http::{HeaderMap, HeaderName, HeaderValue};

use crate::auth::{AuthError, Claims};
use crate::config::Settings;
use crate::job::JobId;

/// Bound on one call to the app: past it the request is `503`, never allowed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(2);
/// Decisions held at once; beyond it the least used are dropped (and asked again).
const CACHE_CAPACITY: u64 = 100_000;
/// Shortest re-check period of an open stream, whatever `cache_secs` says.
const MIN_RECHECK: Duration = Duration::from_secs(1);
/// A hook-authorised caller has no token `exp`: its stream lives until the
/// app revokes it (re-checks) or the job ends.
const GRANT_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

/// What the app answered, as cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow { sub: String, ttl: Duration },
    Unauthorized { ttl: Duration },
    Forbidden { ttl: Duration },
}

impl Decision {
    fn ttl(&self) -> Duration {
        match self {
            Decision::Allow { ttl, .. }
            | Decision::Unauthorized { ttl }
            | Decision::Forbidden { ttl } => *ttl,
        }
    }
}

/// Why the app could not be asked; each is a `503`.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("the application's auth endpoint did not answer within {HOOK_TIMEOUT:?}")]
    Timeout,
    #[error("the application's auth endpoint cannot be reached")]
    Unreachable,
    #[error("the application's auth endpoint answered {0}")]
    Status(u16),
    #[error("the application's auth endpoint answered 200 without a \"sub\"")]
    InvalidBody,
}

impl HookError {
    fn reason(&self) -> &'static str {
        match self {
            HookError::Timeout => "timeout",
            HookError::Unreachable => "unreachable",
            HookError::Status(_) => "status",
            HookError::InvalidBody => "invalid_body",
        }
    }
}

/// The headers of one request that the app gets to see, and their digest
/// (the cache key). `Debug` never shows the values.
#[derive(Clone)]
pub struct Forwarded {
    headers: Vec<(HeaderName, HeaderValue)>,
    digest: [u8; 32],
}

impl std::fmt::Debug for Forwarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Forwarded")
            .field("headers", &names)
            .finish()
    }
}

#[derive(Clone, Hash, PartialEq, Eq)]
struct Key {
    credential: [u8; 32],
    job: JobId,
}

struct PerDecision;

impl Expiry<Key, Decision> for PerDecision {
    fn expire_after_create(
        &self,
        _key: &Key,
        value: &Decision,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl())
    }
}

pub struct AuthHook {
    client: reqwest::Client,
    url: String,
    forward: Vec<HeaderName>,
    default_ttl: Duration,
    cache: Cache<Key, Decision>,
}

#[derive(serde::Deserialize)]
struct Allowed {
    sub: String,
    #[serde(default)]
    cache_secs: Option<u64>,
}

impl AuthHook {
    /// The hook where `JOBCAST_AUTH_URL` is set.
    pub fn from_settings(s: &Settings) -> anyhow::Result<Option<Arc<AuthHook>>> {
        let Some(url) = s.auth_url.as_ref().filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        let url = url.trim().to_owned();
        reqwest::Url::parse(&url)
            .map_err(|e| anyhow::anyhow!("JOBCAST_AUTH_URL {url:?} is not a URL: {e}"))?;
        let forward = s
            .auth_forward_headers
            .iter()
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    anyhow::anyhow!("JOBCAST_AUTH_FORWARD_HEADERS: {h:?} is not a header name")
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let client = reqwest::Client::builder()
            .timeout(HOOK_TIMEOUT)
            .connect_timeout(HOOK_TIMEOUT)
            .build()?;
        Ok(Some(Arc::new(AuthHook {
            client,
            url,
            forward,
            default_ttl: Duration::from_secs(s.auth_cache_secs),
            cache: Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .expire_after(PerDecision)
                .build(),
        })))
    }

    /// The configured headers of a request, in configuration order.
    pub fn forwarded(&self, headers: &HeaderMap) -> Forwarded {
        let mut digest = Sha256::new();
        let mut kept = Vec::new();
        for name in &self.forward {
            for value in headers.get_all(name) {
                digest.update(name.as_str().as_bytes());
                digest.update([0]);
                digest.update(value.as_bytes());
                digest.update([0]);
                kept.push((name.clone(), value.clone()));
            }
        }
        Forwarded {
            headers: kept,
            digest: digest.finalize().into(),
        }
    }

    /// The app's decision for these headers and this job: from the cache, or
    /// from one call shared by every concurrent asker.
    pub async fn decide(&self, fwd: &Forwarded, job: &JobId) -> Result<Decision, Arc<HookError>> {
        let key = Key {
            credential: fwd.digest,
            job: job.clone(),
        };
        let entry = self
            .cache
            .entry(key)
            .or_try_insert_with(self.call(fwd, job))
            .await;
        match entry {
            Ok(entry) => {
                if !entry.is_fresh() {
                    metrics::counter!("jobcast_auth_hook_cache_hits_total").increment(1);
                }
                Ok(entry.into_value())
            }
            Err(e) => Err(e),
        }
    }

    async fn call(&self, fwd: &Forwarded, job: &JobId) -> Result<Decision, HookError> {
        let mut req = self.client.get(&self.url).query(&[("job", job.as_str())]);
        for (name, value) in &fwd.headers {
            req = req.header(name, value);
        }
        let result = self.answer(req).await;
        let label = match &result {
            Ok(Decision::Allow { .. }) => "allow",
            Ok(Decision::Unauthorized { .. }) => "unauthorized",
            Ok(Decision::Forbidden { .. }) => "forbidden",
            Err(e) => {
                metrics::counter!("jobcast_auth_hook_failures_total", "reason" => e.reason())
                    .increment(1);
                tracing::warn!(error = %e, job = %job, "auth hook failed");
                "unavailable"
            }
        };
        metrics::counter!("jobcast_auth_hook_calls_total", "result" => label).increment(1);
        result
    }

    async fn answer(&self, req: reqwest::RequestBuilder) -> Result<Decision, HookError> {
        let res = req.send().await.map_err(|e| {
            if e.is_timeout() {
                HookError::Timeout
            } else {
                HookError::Unreachable
            }
        })?;
        let ttl = self.default_ttl;
        match res.status().as_u16() {
            200 => {
                let body: Allowed = res.json().await.map_err(|e| {
                    if e.is_timeout() {
                        HookError::Timeout
                    } else {
                        HookError::InvalidBody
                    }
                })?;
                if body.sub.is_empty() {
                    return Err(HookError::InvalidBody);
                }
                Ok(Decision::Allow {
                    sub: body.sub,
                    ttl: body.cache_secs.map(Duration::from_secs).unwrap_or(ttl),
                })
            }
            401 => Ok(Decision::Unauthorized { ttl }),
            403 => Ok(Decision::Forbidden { ttl }),
            other => Err(HookError::Status(other)),
        }
    }
}

/// The caller as the app vouched for it: allowed to watch this one job.
pub fn grant_claims(sub: String, job: &JobId) -> Claims {
    let now = crate::auth::claims::now_secs();
    Claims {
        sub,
        exp: now + GRANT_LIFETIME_SECS,
        nbf: None,
        iat: Some(now),
        jobs: vec![job.as_str().to_owned()],
        roles: Vec::new(),
        groups: Vec::new(),
    }
}

/// Why the app's answer does not let the caller in; the HTTP edge turns each
/// into its status (401, 403, 503).
#[derive(Debug, thiserror::Error)]
pub enum HookRefusal {
    #[error("{}", AuthError::SessionRefused)]
    SessionRefused,
    #[error("the application does not let this session watch job {0}")]
    Forbidden(JobId),
    #[error("{0}; retry shortly")]
    Unavailable(Arc<HookError>),
}

impl HookRefusal {
    /// The `reason` label of `jobcast_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            HookRefusal::SessionRefused => "session_refused",
            HookRefusal::Forbidden(_) => "app_forbidden",
            HookRefusal::Unavailable(_) => "hook_unavailable",
        }
    }
}

/// Maps a decision to the caller's claims or the refusal the client gets.
pub fn into_claims(
    decision: Result<Decision, Arc<HookError>>,
    job: &JobId,
) -> Result<(Claims, Duration), HookRefusal> {
    match decision {
        Ok(Decision::Allow { sub, ttl }) => Ok((grant_claims(sub, job), ttl)),
        Ok(Decision::Unauthorized { .. }) => Err(HookRefusal::SessionRefused),
        Ok(Decision::Forbidden { .. }) => Err(HookRefusal::Forbidden(job.clone())),
        Err(e) => Err(HookRefusal::Unavailable(e)),
    }
}

/// An open stream's standing with the app, asked again every cache period.
pub struct Recheck {
    pub hook: Arc<AuthHook>,
    pub forwarded: Forwarded,
    pub job: JobId,
    pub period: Duration,
}

impl Recheck {
    /// Resolves once the app no longer lets this session watch the job. An
    /// app that cannot be asked does not end streams (it is logged): only a
    /// refusal does.
    pub async fn revoked(self) {
        let mut period = self.period.max(MIN_RECHECK);
        loop {
            tokio::time::sleep(period).await;
            match self.hook.decide(&self.forwarded, &self.job).await {
                Ok(Decision::Allow { ttl, .. }) => period = ttl.max(MIN_RECHECK),
                Ok(_) => {
                    metrics::counter!("jobcast_auth_failures_total", "reason" => "revoked")
                        .increment(1);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, job = %self.job, "re-check failed; the stream stays open")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(forward: &str) -> Arc<AuthHook> {
        let mut s = Settings::defaults();
        s.auth_url = Some("http://127.0.0.1:9/auth".into());
        s.auth_forward_headers = forward.split(',').map(str::to_owned).collect();
        AuthHook::from_settings(&s).unwrap().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_the_configured_headers_are_forwarded_and_digested() {
        let hook = hook("Cookie,Authorization");
        let a = hook.forwarded(&headers(&[("cookie", "sid=1"), ("x-other", "a")]));
        let b = hook.forwarded(&headers(&[("cookie", "sid=1"), ("x-other", "b")]));
        let c = hook.forwarded(&headers(&[("cookie", "sid=2")]));
        assert_eq!(a.digest, b.digest, "other headers do not matter");
        assert_ne!(a.digest, c.digest);
        assert_eq!(a.headers.len(), 1);
        assert!(!format!("{a:?}").contains("sid=1"), "Debug hides values");
    }

    #[test]
    fn no_url_means_no_hook_and_a_bad_header_name_is_refused() {
        assert!(
            AuthHook::from_settings(&Settings::defaults())
                .unwrap()
                .is_none()
        );
        let mut s = Settings::defaults();
        s.auth_url = Some("http://127.0.0.1:9/auth".into());
        s.auth_forward_headers = vec!["bad header".into()];
        assert!(AuthHook::from_settings(&s).is_err());
    }
}
