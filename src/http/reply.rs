//! Response shapes more than one route sends.

use bytes::Bytes;
use warp::http::{HeaderValue, header};
use warp::reply::Response;

/// Marks a response `Cache-Control: no-store`.
pub fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// A job's document as stored, never cached: `GET /jobs/{id}` and the poll
/// transport's answer. Callers add their own `x-jobcast-*` headers.
pub fn json_document(json: Bytes) -> Response {
    let mut res = Response::new(json.into());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    no_store(res)
}
