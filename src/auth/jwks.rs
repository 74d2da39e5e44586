//! Keys from an identity provider's JWK Set (`JWT_JWKS_URL`): fetched at start,
//! refreshed on a timer (`JOBCAST_JWKS_REFRESH_SECS`, or the set's
//! `Cache-Control: max-age` when shorter) and at once — at most every
//! [`UNKNOWN_KID_MIN_INTERVAL`] — when a token names a `kid` the set lacks, so a
//! provider's key rotation needs no restart. A failed refresh keeps the last
//! good set, logs a warning and counts `jobcast_jwks_refresh_errors_total`.
//!
//! Only RS256 (RSA) and ES256 (EC P-256) signature keys with a `kid` are used;
//! a token's `alg` must be its key's, so a JWKS key id never lets an HS256 (or
//! any other) token through.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::claims::Claims;

/// Unknown-`kid` refreshes happen at most this often, so tokens with made-up
/// key ids cannot turn the gateway into a load generator against the provider.
pub const UNKNOWN_KID_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// A `Cache-Control: max-age` shorter than this is read as this.
pub const MIN_MAX_AGE: Duration = UNKNOWN_KID_MIN_INTERVAL;
/// After a failed refresh the next try comes at most this much later.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// Bound on one fetch (connect + headers + body): a request waiting on an
/// unknown-`kid` refresh waits at most this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWK Set accepted (real ones are a few KiB).
const MAX_JWKS_BYTES: usize = 512 * 1024;

/// Why a JWK Set could not be used; the message names the URL and the fix.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("JWT_JWKS_URL {url} could not be read: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("JWT_JWKS_URL {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("JWT_JWKS_URL {url} is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge { url: String },
    #[error("JWT_JWKS_URL {url} is not a JWK Set (JSON with a \"keys\" array): {reason}")]
    NotAJwkSet { url: String, reason: String },
    #[error(
        "JWT_JWKS_URL {url} has no usable key: jobcast needs RS256 (RSA) or ES256 (EC P-256) signing keys with a \"kid\""
    )]
    NoUsableKey { url: String },
}

/// One usable key of the set.
struct SetKey {
    key: DecodingKey,
    alg: Algorithm,
}

type KeyMap = HashMap<String, Arc<SetKey>>;

/// The provider's current keys and how to refresh them.
pub struct Jwks {
    url: String,
    client: reqwest::Client,
    refresh_every: Duration,
    keys: RwLock<Arc<KeyMap>>,
    /// `max-age` of the last good fetch.
    max_age: RwLock<Option<Duration>>,
    /// When the last unknown-`kid` refresh started; held across that refresh,
    /// so concurrent requests with the new `kid` share one fetch.
    unknown_kid_gate: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    /// A set with no keys yet; [`Jwks::refresh`] fills it.
    pub fn new(url: &str, refresh_secs: u64) -> anyhow::Result<Arc<Jwks>> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .user_agent(concat!("jobcast/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("JWT_JWKS_URL: cannot build an HTTP client: {e}"))?;
        Ok(Arc::new(Jwks {
            url: url.to_owned(),
            client,
            refresh_every: Duration::from_secs(refresh_secs.max(1)),
            keys: RwLock::new(Arc::default()),
            max_age: RwLock::new(None),
            unknown_kid_gate: tokio::sync::Mutex::new(None),
        }))
    }

    fn current(&self) -> Arc<KeyMap> {
        crate::sync::read(&self.keys).clone()
    }

    /// Whether the set holds a key with this id.
    pub fn knows(&self, kid: &str) -> bool {
        self.current().contains_key(kid)
    }

    /// Fetches the set and, when it is usable, replaces the keys; else keeps
    /// the last good set, logs and counts the failure. `why` labels the log.
    pub async fn refresh(&self, why: &'static str) -> Result<usize, JwksError> {
        match self.fetch().await {
            Ok((keys, max_age)) => {
                let n = keys.len();
                let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
                kids.sort_unstable();
                info!(url = %self.url, why, keys = n, kids = ?kids, "JWK Set loaded");
                *crate::sync::write(&self.keys) = Arc::new(keys);
                *crate::sync::write(&self.max_age) = max_age;
                Ok(n)
            }
            Err(e) => {
                metrics::counter!("jobcast_jwks_refresh_errors_total").increment(1);
                warn!(error = %e, why, kept_keys = self.current().len(), "JWK Set refresh failed; keeping the last good set");
                Err(e)
            }
        }
    }

    /// A refresh for a token whose `kid` the set lacks, unless one ran within
    /// [`UNKNOWN_KID_MIN_INTERVAL`]. Returns whether the set now knows `kid`.
    pub async fn refresh_for_unknown_kid(&self, kid: &str) -> bool {
        let mut last = self.unknown_kid_gate.lock().await;
        // Another request may have refreshed while this one waited for the gate.
        if self.knows(kid) {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < UNKNOWN_KID_MIN_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        let _ = self.refresh("unknown_kid").await;
        self.knows(kid)
    }

    /// Time until the next timed refresh: the configured period, shortened to
    /// the set's `max-age`, and to [`RETRY_AFTER_FAILURE`] after a failure.
    fn next_wait(&self, last_ok: bool) -> Duration {
        let max_age = *crate::sync::read(&self.max_age);
        let mut wait = self.refresh_every;
        if let Some(age) = max_age {
            wait = wait.min(age.max(MIN_MAX_AGE));
        }
        if !last_ok {
            wait = wait.min(RETRY_AFTER_FAILURE);
        }
        wait
    }

    /// Refreshes on a timer until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut wait = self.next_wait(!self.current().is_empty());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let ok = self.refresh("timer").await.is_ok();
            wait = self.next_wait(ok);
        }
    }

    async fn fetch(&self) -> Result<(KeyMap, Option<Duration>), JwksError> {
        let url = || self.url.clone();
        let unreachable = |e: reqwest::Error| JwksError::Unreachable {
            url: url(),
            reason: e.to_string(),
        };
        let mut res = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(unreachable)?;
        if !res.status().is_success() {
            return Err(JwksError::Status {
                url: url(),
                status: res.status().as_u16(),
            });
        }
        if res
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(JwksError::TooLarge { url: url() });
        }
        let max_age = res
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksError::TooLarge { url: url() });
            }
            body.extend_from_slice(&chunk);
        }
        let keys =
            parse_set(&body).map_err(|reason| JwksError::NotAJwkSet { url: url(), reason })?;
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey { url: url() });
        }
        Ok((keys, max_age))
    }

    /// Verifies `token` with the set's key when its header names a `kid` the
    /// set holds; `None` when the set has nothing to say about it (no `kid`,
    /// unknown `kid`, no readable header). The token's `alg` must be the key's.
    pub fn verify(
        &self,
        token: &str,
        base: &Validation,
    ) -> Option<Result<Claims, jsonwebtoken::errors::Error>> {
        let header = decode_header(token).ok()?;
        let key = self.current().get(header.kid.as_deref()?)?.clone();
        if header.alg != key.alg {
            return Some(Err(jsonwebtoken::errors::ErrorKind::InvalidAlgorithm.into()));
        }
        let mut validation = base.clone();
        validation.algorithms = vec![key.alg];
        Some(decode::<Claims>(token, &key.key, &validation).map(|d| d.claims))
    }
}

/// The `kid` a token's header names, if it can be read.
pub fn token_kid(token: &str) -> Option<String> {
    decode_header(token).ok()?.kid
}

/// `max-age` of a `Cache-Control` value (`no-store`/`no-cache` read as 0).
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|d| {
        let d = d.trim();
        if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        let (k, v) = d.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| {
                v.trim()
                    .trim_matches('"')
                    .parse()
                    .ok()
                    .map(Duration::from_secs)
            })
            .flatten()
    })
}

/// The usable keys of a JWK Set document. Keys jobcast cannot use (encryption
/// keys, other algorithms or curves, no `kid`, unknown key types) are skipped,
/// so one exotic key does not cost the whole set.
fn parse_set(body: &[u8]) -> Result<KeyMap, String> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut keys = KeyMap::new();
    for value in raw.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
                if p.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.insert(kid, Arc::new(SetKey { key, alg }));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_JWK: &str = r#"{"kty":"RSA","kid":"r1","use":"sig","alg":"RS256","e":"AQAB","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw"}"#;

    #[test]
    fn keeps_signing_keys_and_skips_the_rest() {
        let set = format!(
            r#"{{"keys":[{RSA_JWK},
            {{"kty":"RSA","kid":"enc","use":"enc","e":"AQAB","n":"sXch"}},
            {{"kty":"oct","kid":"h","k":"c2VjcmV0"}},
            {{"kty":"RSA","e":"AQAB","n":"sXch"}},
            {{"kty":"weird","kid":"w"}}]}}"#
        );
        let keys = parse_set(set.as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["r1"]);
        assert_eq!(keys["r1"].alg, Algorithm::RS256);
    }

    #[test]
    fn not_a_set_is_an_error() {
        assert!(parse_set(b"<html>").is_err());
        assert!(parse_set(br#"{"no_keys":[]}"#).is_err());
        assert!(parse_set(br#"{"keys":[]}"#).unwrap().is_empty());
    }

    #[test]
    fn max_age_is_read() {
        assert_eq!(max_age("public, max-age=60"), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-cache"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=junk"), None);
    }

    #[test]
    fn wait_honours_a_shorter_max_age_within_bounds() {
        let j = Jwks::new("http://127.0.0.1:1/jwks", 300).unwrap();
        assert_eq!(j.next_wait(true), Duration::from_secs(300));
        *j.max_age.write().unwrap() = Some(Duration::from_secs(120));
        assert_eq!(j.next_wait(true), Duration::from_secs(120));
        *j.max_age.write().unwrap() = Some(Duration::from_secs(3600));
        assert_eq!(j.next_wait(true), Duration::from_secs(300));
        *j.max_age.write().unwrap() = Some(Duration::ZERO);
        assert_eq!(j.next_wait(true), MIN_MAX_AGE);
        *j.max_age.write().unwrap() = None;
        assert_eq!(j.next_wait(false), RETRY_AFTER_FAILURE);
    }
}
