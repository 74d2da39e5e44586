//! The one error type of the HTTP edge: each variant is a status code and a JSON
//! body `{"error":"<code>","message":"<text>"}`. Caller faults
//! are logged at debug; ours (`Internal`) with their cause at error. `recover`
//! maps warp's own rejections (unknown route, wrong method...) the same way.

use std::convert::Infallible;

use serde_json::json;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};
use warp::{Rejection, reject};

use crate::auth::AuthError;
use crate::auth::hook::HookRefusal;
use crate::auth::policy::Refusal;
use crate::limits::LimitError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(AuthError),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    TooManyConnections(String),
    /// A connection slot refused by `limits` (`Retry-After` for the connect rate).
    #[error("{0}")]
    Limit(LimitError),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyConnections(_) | ApiError::Limit(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::TooManyConnections(_) | ApiError::Limit(_) => "too_many_connections",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::Unauthorized(e)
    }
}

impl From<Refusal> for ApiError {
    fn from(e: Refusal) -> Self {
        match e {
            Refusal::UnknownJob(_) => ApiError::NotFound(e.to_string()),
            _ => ApiError::Forbidden(e.to_string()),
        }
    }
}

impl From<HookRefusal> for ApiError {
    fn from(e: HookRefusal) -> Self {
        match e {
            HookRefusal::SessionRefused => ApiError::Unauthorized(AuthError::SessionRefused),
            HookRefusal::Forbidden(_) => ApiError::Forbidden(e.to_string()),
            HookRefusal::Unavailable(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<LimitError> for ApiError {
    fn from(e: LimitError) -> Self {
        ApiError::Limit(e)
    }
}

/// A handler's outcome as the response: its own, or the error's JSON.
pub fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(Reply::into_response)
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = ?cause, "request failed");
        } else {
            tracing::debug!(code = self.code(), message = %self, "request refused");
        }
        let body = json!({"error": self.code(), "message": self.to_string()});
        let mut res =
            warp::reply::with_status(warp::reply::json(&body), self.status()).into_response();
        if let ApiError::Limit(LimitError::ConnectRate { retry_after_secs }) = &self {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        if let ApiError::Unauthorized(cause) = &self {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, www_authenticate(cause));
        }
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    }
}

impl reject::Reject for ApiError {}

/// The RFC 6750 challenge for a refused token: a request without one gets the
/// bare challenge (§3.1: no error code when no credentials were sent), a bad
/// one `invalid_token` — or `invalid_request` for a token sent where the route
/// does not read it — with the same cause as the JSON body's `message`.
fn www_authenticate(cause: &AuthError) -> HeaderValue {
    const BARE: &str = "Bearer realm=\"jobcast\"";
    let code = match cause {
        AuthError::Missing => return HeaderValue::from_static(BARE),
        AuthError::NotInHeader => "invalid_request",
        _ => "invalid_token",
    };
    // error_description allows printable ASCII except `"` and `\` (§3).
    let description: String = cause
        .to_string()
        .chars()
        .filter(|c| matches!(c, ' '..='~') && *c != '"' && *c != '\\')
        .collect();
    HeaderValue::from_str(&format!(
        "{BARE}, error=\"{code}\", error_description=\"{description}\""
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(BARE))
}

/// Maps every rejection that reaches the top to the contract's JSON errors.
pub async fn recover(err: Rejection) -> Result<Response, Infallible> {
    if err.is_not_found() {
        return Ok(ApiError::NotFound("no such route".into()).into_response());
    }
    if err.find::<reject::MethodNotAllowed>().is_some() {
        let body =
            json!({"error": "method_not_allowed", "message": "method not allowed on this route"});
        return Ok(warp::reply::with_status(
            warp::reply::json(&body),
            StatusCode::METHOD_NOT_ALLOWED,
        )
        .into_response());
    }
    if err.find::<crate::http::upgrade::NotAnUpgrade>().is_some() {
        return Ok(ApiError::BadRequest(
            "this route speaks WebSocket: send an Upgrade: websocket request (version 13)".into(),
        )
        .into_response());
    }
    if let Some(e) = err.find::<reject::PayloadTooLarge>() {
        return Ok(ApiError::PayloadTooLarge(e.to_string()).into_response());
    }
    if err.find::<reject::InvalidQuery>().is_some()
        || err.find::<reject::InvalidHeader>().is_some()
        || err.find::<reject::MissingHeader>().is_some()
        || err
            .find::<warp::filters::body::BodyDeserializeError>()
            .is_some()
        || err.find::<reject::UnsupportedMediaType>().is_some()
        || err.find::<reject::LengthRequired>().is_some()
    {
        return Ok(ApiError::BadRequest(format!("{err:?}")).into_response());
    }
    Ok(ApiError::Internal(anyhow::anyhow!("unhandled rejection: {err:?}")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(cause: AuthError) -> String {
        www_authenticate(&cause).to_str().unwrap().to_owned()
    }

    #[test]
    fn a_missing_token_gets_the_bare_challenge() {
        assert_eq!(challenge(AuthError::Missing), r#"Bearer realm="jobcast""#);
    }

    #[test]
    fn a_token_in_the_wrong_place_is_an_invalid_request() {
        assert!(challenge(AuthError::NotInHeader).contains(r#"error="invalid_request""#));
    }

    #[test]
    fn a_bad_token_gets_invalid_token_with_its_cause() {
        assert_eq!(
            challenge(AuthError::WrongIssuer),
            r#"Bearer realm="jobcast", error="invalid_token", error_description="the token issuer (iss) is not accepted""#
        );
        for cause in [
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::BadSignature,
            AuthError::WrongAudience,
            AuthError::Malformed,
            AuthError::UnknownKeyId,
        ] {
            let c = challenge(cause.clone());
            assert!(c.contains(&format!("error_description=\"{cause}\"")), "{c}");
        }
    }
}
