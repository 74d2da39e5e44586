//! Response shapes more than one route sends.

use bytes::Bytes;
use warp::http::{HeaderValue, header};
use warp::reply::Response;

/// A job's document as stored, never cached: `GET /jobs/{id}` and the poll
/// transport's answer. Callers add their own `x-jobcast-*` headers.
pub fn json_document(json: Bytes) -> Response {
    let mut res = Response::new(json.into());
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
