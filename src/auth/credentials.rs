//! Finding the token in a request, first found wins:
//! `Authorization: Bearer`, the `jobcast.bearer.<jwt>` WebSocket subprotocol,
//! the `jobcast_token` cookie, the `access_token` query parameter.

use headers::HeaderMapExt as _;
use warp::Filter;
use warp::http::HeaderMap;

use crate::config::Secret;

/// The WebSocket subprotocol a client offers (and the server answers).
pub const WS_PROTOCOL: &str = "jobcast.v1";
const WS_BEARER_PREFIX: &str = "jobcast.bearer.";
const COOKIE_NAME: &str = "jobcast_token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Subprotocol,
    Cookie,
    Query,
}

/// What the request carried: the token (if any), where it came from, and whether
/// the client offered the `jobcast.v1` subprotocol.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub token: Option<(Secret, TokenSource)>,
    pub offers_ws_protocol: bool,
    pub origin: Option<String>,
    pub host: Option<String>,
    /// The request's headers, for the auth hook to pick the ones it forwards.
    pub headers: RequestHeaders,
}

/// A request's headers, with a `Debug` that never prints them (cookies).
#[derive(Clone, Default)]
pub struct RequestHeaders(pub HeaderMap);

impl std::fmt::Debug for RequestHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} headers]", self.0.len())
    }
}

impl Credentials {
    /// Takes the header map by value: it is kept (for the auth hook) rather
    /// than copied.
    pub fn from_parts(headers: HeaderMap, query: &str) -> Self {
        let header_str = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let bearer = header_str("authorization").and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
        let protocols: Vec<&str> = headers
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let offers_ws_protocol = protocols.contains(&WS_PROTOCOL);
        let subprotocol = protocols
            .iter()
            .find_map(|p| p.strip_prefix(WS_BEARER_PREFIX))
            .map(str::to_owned);
        let cookie = headers
            .typed_get::<headers::Cookie>()
            .and_then(|c| c.get(COOKIE_NAME).map(str::to_owned));
        let query_token = query_param(query, "access_token");
        let token = [
            (bearer, TokenSource::Header),
            (subprotocol, TokenSource::Subprotocol),
            (cookie, TokenSource::Cookie),
            (query_token, TokenSource::Query),
        ]
        .into_iter()
        .find_map(|(t, src)| t.filter(|t| !t.is_empty()).map(|t| (Secret::new(t), src)));
        let origin = header_str("origin").map(str::to_owned);
        let host = header_str("host").map(str::to_owned);
        Credentials {
            token,
            offers_ws_protocol,
            origin,
            host,
            headers: RequestHeaders(headers),
        }
    }
}

/// One query parameter (`application/x-www-form-urlencoded`: `+` is a space,
/// malformed escapes stay as they are, bytes that are not UTF-8 become U+FFFD).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query_params(query, name).next()
}

/// Every value of a repeated query parameter (`job=a&job=b`), percent-decoded, in order.
pub fn query_params<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = String> + 'a {
    form_urlencoded::parse(query.as_bytes())
        .filter(move |(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A filter extracting [`Credentials`] from any request.
pub fn credentials()
-> impl Filter<Extract = (Credentials,), Error = std::convert::Infallible> + Clone {
    warp::header::headers_cloned()
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .map(|headers: HeaderMap, query: String| Credentials::from_parts(headers, &query))
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    fn creds(pairs: &[(&'static str, &str)], query: &str) -> Credentials {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        Credentials::from_parts(h, query)
    }

    #[test]
    fn header_wins_over_everything() {
        let c = creds(
            &[
                ("authorization", "Bearer aaa"),
                ("cookie", "jobcast_token=ccc"),
            ],
            "access_token=qqq",
        );
        let (t, src) = c.token.unwrap();
        assert_eq!((t.expose(), src), ("aaa", TokenSource::Header));
    }

    #[test]
    fn subprotocol_then_cookie_then_query() {
        let c = creds(
            &[("sec-websocket-protocol", "jobcast.v1, jobcast.bearer.sss")],
            "access_token=q",
        );
        assert_eq!(c.token.as_ref().unwrap().1, TokenSource::Subprotocol);
        assert!(c.offers_ws_protocol);
        let c = creds(&[("cookie", "a=1; jobcast_token=ccc")], "access_token=q");
        assert_eq!(c.token.as_ref().unwrap().0.expose(), "ccc");
        let c = creds(&[], "x=1&access_token=q%2Eq");
        assert_eq!(c.token.as_ref().unwrap().0.expose(), "q.q");
        assert!(creds(&[], "").token.is_none());
    }

    #[test]
    fn query_params_decode() {
        assert_eq!(query_param("a=1&b=x%20y", "b").as_deref(), Some("x y"));
        assert_eq!(query_param("a=%zz", "a").as_deref(), Some("%zz"));
        assert_eq!(query_param("a=%4", "a").as_deref(), Some("%4"));
        assert_eq!(query_param("a", "a").as_deref(), Some(""));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use warp::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.append(*k, v);
            }
        }
        h
    }

    proptest! {
        #[test]
        fn any_request_parts_yield_credentials_without_panicking(
            auth in "\\PC{0,60}", proto in "\\PC{0,60}", cookie in "\\PC{0,60}", query in "\\PC{0,60}"
        ) {
            let c = Credentials::from_parts(
                headers(&[("authorization", &auth), ("sec-websocket-protocol", &proto), ("cookie", &cookie)]),
                &query,
            );
            if let Some((token, _)) = &c.token {
                prop_assert!(!token.expose().is_empty());
            }
        }

        #[test]
        fn a_bearer_header_wins_over_every_other_source(token in "[A-Za-z0-9._-]{1,60}", other in "[A-Za-z0-9._-]{1,60}") {
            let c = Credentials::from_parts(
                headers(&[
                    ("authorization", &format!("Bearer {token}")),
                    ("sec-websocket-protocol", &format!("jobcast.v1, jobcast.bearer.{other}")),
                    ("cookie", &format!("jobcast_token={other}")),
                ]),
                &format!("access_token={other}"),
            );
            let (found, source) = c.token.expect("a token");
            prop_assert_eq!(found.expose(), token.as_str());
            prop_assert_eq!(source, TokenSource::Header);
        }

        #[test]
        fn each_source_is_found_alone(token in "[A-Za-z0-9._-]{1,60}") {
            let cases = [
                (headers(&[("sec-websocket-protocol", &format!("jobcast.v1, jobcast.bearer.{token}"))]), String::new(), TokenSource::Subprotocol),
                (headers(&[("cookie", &format!("a=b; jobcast_token={token}"))]), String::new(), TokenSource::Cookie),
                (HeaderMap::new(), format!("x=1&access_token={token}"), TokenSource::Query),
            ];
            for (h, q, want) in cases {
                let (found, source) = Credentials::from_parts(h, &q).token.expect("a token");
                prop_assert_eq!(found.expose(), token.as_str());
                prop_assert_eq!(source, want);
            }
        }

        #[test]
        fn query_params_decode_any_input(query in "\\PC{0,80}", name in "[a-z_]{1,8}") {
            let _ = query_param(&query, &name);
        }
    }
}
