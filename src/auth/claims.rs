//! Token verification with `jsonwebtoken`: HS256 with `JWT_SECRET`, or RS256 /
//! ES256 with the PEM in `JWT_PUBLIC_KEY_FILE`; `aud` and `iss` checked where
//! configured; `sub` and `exp` required. No leeway on `exp` (a token past `exp`
//! is refused, and the stream opened with it ends at `exp`), [`NBF_LEEWAY_SECS`]
//! on `nbf` (an issuer whose clock runs a little ahead must not see its fresh
//! tokens refused). `alg: none` and any algorithm other than the key's are
//! refused by construction. With `JWT_JWKS_URL`, a token whose `kid` names a
//! key of the provider's set is verified with that key alone (see
//! [`crate::auth::jwks`]); other tokens with the static key, where one is
//! configured.

use std::collections::HashSet;
use std::sync::Arc;

use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
};
use serde::{Deserialize, Deserializer, Serialize};

use crate::auth::jwks::{self, Jwks};
use crate::config::{Secret, Settings};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Jobs the bearer may watch; `"*"` means every job.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub jobs: Vec<String>,
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub roles: Vec<String>,
    /// Groups (projects) whose group streams the bearer may watch; `"*"`
    /// means every group.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub groups: Vec<String>,
}

/// The roles the gateway acts on; a token's other roles are carried but ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Watches every job.
    Admin,
    /// Publishes through `POST /jobs/{id}` to the jobs its `jobs` claim names.
    Publisher,
}

impl Role {
    /// The role's name in the token's `roles` claim.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Publisher => "publisher",
        }
    }
}

impl Claims {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.iter().any(|r| r == role.as_str())
    }
    pub fn names_job(&self, job: &str) -> bool {
        self.jobs.iter().any(|j| j == "*" || j == job)
    }
    pub fn names_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == "*" || g == group)
    }
}

/// Accepts `"x"` or `["x","y"]` (issuers differ on how they write list claims).
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
        Null(()),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
        OneOrMany::Null(()) => Vec::new(),
    })
}

/// Why a token was refused; `reason()` is the metric label, never the token.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error(
        "no token: send Authorization: Bearer <jwt>, the jobcast.bearer.<jwt> WebSocket subprotocol, the jobcast_token cookie or access_token"
    )]
    Missing,
    #[error("the token has expired (exp)")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token signature or algorithm is not accepted")]
    BadSignature,
    #[error("the token audience (aud) is not accepted")]
    WrongAudience,
    #[error("the token issuer (iss) is not accepted")]
    WrongIssuer,
    #[error("the token is malformed or lacks required claims (sub, exp)")]
    Malformed,
    #[error(
        "this route takes its token from the Authorization: Bearer header only, never a cookie or query parameter"
    )]
    NotInHeader,
    #[error("the token names a key id (kid) that no configured key has")]
    UnknownKeyId,
    #[error("no valid token, and the application did not accept this session (JOBCAST_AUTH_URL)")]
    SessionRefused,
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadSignature => "bad_signature",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::Malformed => "malformed",
            AuthError::NotInHeader => "not_in_header",
            AuthError::UnknownKeyId => "unknown_key_id",
            AuthError::SessionRefused => "session_refused",
        }
    }
}

/// Clock skew tolerated on `nbf`, in seconds; `exp` gets none.
pub const NBF_LEEWAY_SECS: u64 = 30;

pub struct Verifier {
    /// The static key (`JWT_PUBLIC_KEY_FILE` or `JWT_SECRET`); none when the
    /// provider's JWK Set is the only source of keys.
    key: Option<DecodingKey>,
    validation: Validation,
    /// Set for HS256 only: lets `jobcast token` and `--dev` mint tokens.
    signer: Option<EncodingKey>,
    /// The provider's keys, by `kid` (`JWT_JWKS_URL`).
    jwks: Option<Arc<Jwks>>,
}

impl Verifier {
    /// Builds the verifier from the settings; `dev_secret` is used in `--dev` mode
    /// when no key is configured.
    pub fn from_settings(s: &Settings, dev_secret: Option<&Secret>) -> anyhow::Result<Self> {
        let (key, algorithms, signer) = if let Some(path) = &s.jwt_public_key_file {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("JWT_PUBLIC_KEY_FILE {}: {e}", path.display()))?;
            if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                (Some(k), vec![Algorithm::RS256], None)
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                (Some(k), vec![Algorithm::ES256], None)
            } else {
                anyhow::bail!(
                    "JWT_PUBLIC_KEY_FILE {} is neither an RSA nor an EC public key in PEM",
                    path.display()
                );
            }
        } else if let Some(secret) = s.jwt_secret.as_ref().or(dev_secret) {
            let bytes = secret.expose().as_bytes();
            (
                Some(DecodingKey::from_secret(bytes)),
                vec![Algorithm::HS256],
                Some(EncodingKey::from_secret(bytes)),
            )
        } else if s.jwt_jwks_url.is_some() {
            // Keys come from the set alone; the algorithm here is a placeholder
            // (each set key brings its own).
            (None, vec![Algorithm::RS256], None)
        } else {
            anyhow::bail!("no token key: set JWT_SECRET or JWT_PUBLIC_KEY_FILE, or run with --dev");
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = 0;
        // jsonwebtoken has one leeway for both; `nbf` is checked in `verify`.
        validation.validate_nbf = false;
        validation.required_spec_claims = HashSet::from(["exp".to_owned(), "sub".to_owned()]);
        match &s.jwt_audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &s.jwt_issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Verifier {
            key,
            validation,
            signer,
            jwks: None,
        })
    }

    /// Adds the provider's JWK Set as a source of keys.
    pub fn with_jwks(mut self, jwks: Arc<Jwks>) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// Whether a static key (`JWT_SECRET`, `JWT_PUBLIC_KEY_FILE`, `--dev`) is set.
    pub fn has_static_key(&self) -> bool {
        self.key.is_some()
    }

    /// [`Verifier::verify`], after refreshing the JWK Set once (rate-limited)
    /// when the token names a `kid` the set does not hold: the provider may
    /// have rotated its keys since the last refresh.
    pub async fn verify_fresh(&self, token: &str) -> Result<Claims, AuthError> {
        let result = self.verify(token);
        if result.is_ok() {
            return result;
        }
        let (Some(jwks), Some(kid)) = (&self.jwks, jwks::token_kid(token)) else {
            return result;
        };
        if jwks.knows(&kid) || !jwks.refresh_for_unknown_kid(&kid).await {
            return result;
        }
        self.verify(token)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        use jsonwebtoken::errors::ErrorKind as K;
        let from_set = self
            .jwks
            .as_ref()
            .and_then(|j| j.verify(token, &self.validation));
        // A kid the set does not hold, and no static key to fall back on.
        if from_set.is_none()
            && self.key.is_none()
            && let Some(jwks) = &self.jwks
            && jwks::token_kid(token).is_some_and(|kid| !jwks.knows(&kid))
        {
            return Err(AuthError::UnknownKeyId);
        }
        let result = match (from_set, &self.key) {
            (Some(r), _) => r,
            (None, Some(key)) => decode::<Claims>(token, key, &self.validation).map(|d| d.claims),
            (None, None) => Err(decode_header(token)
                .err()
                .unwrap_or_else(|| K::InvalidSignature.into())),
        };
        let claims = result.map_err(|e| match e.kind() {
            K::ExpiredSignature => AuthError::Expired,
            K::ImmatureSignature => AuthError::NotYetValid,
            K::InvalidSignature
            | K::InvalidAlgorithm
            | K::InvalidAlgorithmName
            | K::MissingAlgorithm => AuthError::BadSignature,
            K::InvalidAudience => AuthError::WrongAudience,
            K::InvalidIssuer => AuthError::WrongIssuer,
            _ => AuthError::Malformed,
        })?;
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now_secs().saturating_add(NBF_LEEWAY_SECS))
        {
            return Err(AuthError::NotYetValid);
        }
        Ok(claims)
    }

    /// Mints an HS256 token (only with a shared secret).
    pub fn mint(&self, claims: &Claims) -> anyhow::Result<String> {
        let signer = self.signer.as_ref().ok_or_else(|| {
            anyhow::anyhow!("minting tokens needs JWT_SECRET (HS256); a public key cannot sign")
        })?;
        Ok(encode(&Header::new(Algorithm::HS256), claims, signer)?)
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(secret: &str) -> Verifier {
        let mut s = Settings::defaults();
        s.jwt_secret = Some(Secret::new(secret));
        Verifier::from_settings(&s, None).unwrap()
    }

    fn claims(exp_in: i64) -> Claims {
        Claims {
            sub: "u1".into(),
            exp: (now_secs() as i64 + exp_in) as u64,
            nbf: None,
            iat: None,
            jobs: vec![],
            roles: vec![],
            groups: vec![],
        }
    }

    #[test]
    fn round_trip() {
        let v = verifier("s3cret");
        let t = v.mint(&claims(60)).unwrap();
        assert_eq!(v.verify(&t).unwrap().sub, "u1");
    }

    #[test]
    fn expired_and_wrong_key_are_refused() {
        let v = verifier("s3cret");
        assert_eq!(
            v.verify(&v.mint(&claims(-5)).unwrap()),
            Err(AuthError::Expired)
        );
        let other = verifier("other");
        assert_eq!(
            v.verify(&other.mint(&claims(60)).unwrap()),
            Err(AuthError::BadSignature)
        );
        assert_eq!(v.verify("not.a.jwt"), Err(AuthError::Malformed));
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64.encode(serde_json::to_vec(&claims(60)).unwrap());
        let token = format!("{header}.{body}.");
        assert!(verifier("s3cret").verify(&token).is_err());
    }

    #[test]
    fn nbf_gets_thirty_seconds_of_leeway_and_exp_none() {
        let v = verifier("s3cret");
        let mut soon = claims(120);
        soon.nbf = Some(now_secs() + 20);
        assert!(v.verify(&v.mint(&soon).unwrap()).is_ok());
        let mut later = claims(120);
        later.nbf = Some(now_secs() + 90);
        assert_eq!(
            v.verify(&v.mint(&later).unwrap()),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(
            v.verify(&v.mint(&claims(-1)).unwrap()),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn list_claims_accept_a_single_string() {
        let c: Claims = serde_json::from_str(
            r#"{"sub":"u","exp":1,"jobs":"*","roles":["admin"],"groups":"p1"}"#,
        )
        .unwrap();
        assert!(c.names_job("anything"));
        assert!(c.has_role(Role::Admin));
        assert!(c.names_group("p1") && !c.names_group("p2"));
    }
}
