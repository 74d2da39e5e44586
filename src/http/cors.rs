//! Browsers on other origins: for an `Origin` listed in
//! `JOBCAST_ALLOWED_ORIGINS`, every response carries the allow headers and
//! preflights are answered. Same-origin requests need none of this.
//!
//! Not `warp::cors()`, which cannot keep this behaviour: it compares the
//! `Origin` header byte for byte with its list (`https://app.example.test:443`
//! would not match `https://app.example.test`, nor a host in other case), and
//! it rejects (403) every request whose `Origin` is not listed, so a page the
//! gateway serves itself, or a non-browser client sending an `Origin`, would be
//! refused instead of served without the allow headers. It also answers
//! preflights only on routes it wraps, where this answers `OPTIONS` on any
//! path without turning another method's 404 into a 405.

use std::convert::Infallible;

use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::state::SharedState;

fn add_headers(res: &mut Response, origin: &str) {
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(
                "x-jobcast-source, x-jobcast-event-id, x-jobcast-done, x-jobcast-stalled",
            ),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// Wraps every reply: allow headers for an allowed `Origin`.
pub fn decorate<F, R>(
    app: SharedState,
    inner: F,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone
where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    R: Reply,
{
    warp::header::optional::<String>("origin")
        .or(warp::any().map(|| None))
        .unify()
        .and(inner)
        .map(move |origin: Option<String>, reply: R| {
            let mut res = reply.into_response();
            if let Some(origin) = origin.filter(|o| app.origin_listed(o)) {
                add_headers(&mut res, &origin);
            }
            res
        })
}

/// `OPTIONS` on any route: 204 with the allowed methods and headers.
pub fn preflight(
    app: SharedState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    // Not `warp::options()`: its rejection (405) would outrank the 404 of an
    // unknown route for every other method.
    warp::method()
        .and_then(|m: warp::http::Method| async move {
            if m == warp::http::Method::OPTIONS {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(warp::header::optional::<String>("origin"))
        .map(move |origin: Option<String>| {
            let mut res =
                warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response();
            if origin.is_some_and(|o| app.origin_listed(&o)) {
                let h = res.headers_mut();
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static("GET, POST, OPTIONS"),
                );
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static("authorization, content-type, last-event-id"),
                );
                h.insert(
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from_static("600"),
                );
            }
            res
        })
}
