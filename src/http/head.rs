//! The first request head of a connection, read by the accept loop before
//! hyper sees the connection: event-stream requests (a plain `GET …/events`
//! over HTTP/1.1) and single-job WebSocket upgrades (`GET /jobs/{id}/ws`)
//! are answered on the direct path ([`crate::http::direct`]);
//! everything else — and anything unusual — goes to hyper with the bytes
//! already read put back in front of the socket ([`Rewind`]), so hyper parses,
//! answers and errors exactly as it would have.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use warp::http::{self, HeaderName, HeaderValue, Method, Request, Uri, Version};

/// Most headers a request head may have on the direct path; more go to hyper.
const MAX_HEADERS: usize = 64;
/// The first read's room: a browser's or a proxy's SSE request head fits.
const FIRST_READ: usize = 1024;

/// What the accept loop read before deciding who answers.
pub enum FirstRequest {
    /// A request for the direct path, and the bytes that followed its head.
    Stream(Box<Request<()>>, BytesMut),
    /// For hyper: everything read so far, to be replayed.
    Other(BytesMut),
    /// The client closed (or failed) before sending a head.
    Gone,
}

/// Reads the first request head (at most `max_head` bytes). Only a complete,
/// well-formed HTTP/1.1 `GET` of an event-stream path without a body or an
/// upgrade comes back as [`FirstRequest::Stream`].
pub async fn read_first<R: AsyncRead + Unpin>(io: &mut R, max_head: usize) -> FirstRequest {
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    loop {
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) if buf.is_empty() => return FirstRequest::Gone,
            Ok(0) | Err(_) => return FirstRequest::Other(buf),
            Ok(_) => {}
        }
        match parse(&buf) {
            Parsed::Partial if buf.len() < max_head => {
                // Grow up to the cap; hyper answers a head that does not fit.
                buf.reserve((max_head - buf.len()).min(FIRST_READ));
            }
            Parsed::Partial | Parsed::NotForUs => return FirstRequest::Other(buf),
            Parsed::Stream(req, len) => {
                // Only what followed the head is kept, in a buffer of its own
                // size: the read buffer would live as long as the stream.
                return FirstRequest::Stream(req, BytesMut::from(&buf[len..]));
            }
        }
    }
}

enum Parsed {
    Partial,
    NotForUs,
    /// The request and the length of its head.
    Stream(Box<Request<()>>, usize),
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::NotForUs,
    };
    let (Some("GET"), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::NotForUs;
    };
    let websocket = is_websocket_path(path);
    if !websocket && !is_stream_path(path) {
        return Parsed::NotForUs;
    }
    // A WebSocket route comes here only as an upgrade to WebSocket.
    let upgrade = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
        .map(|h| h.value.eq_ignore_ascii_case(b"websocket"));
    if upgrade != websocket.then_some(true) {
        return Parsed::NotForUs;
    }
    let mut builder = Request::builder()
        .method(Method::GET)
        .version(Version::HTTP_11);
    let Ok(uri) = Uri::try_from(path) else {
        return Parsed::NotForUs;
    };
    builder = builder.uri(uri);
    for h in req.headers.iter() {
        if has_body(h) {
            return Parsed::NotForUs;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::NotForUs;
        };
        builder = builder.header(name, value);
    }
    match builder.body(()) {
        Ok(req) => Parsed::Stream(Box::new(req), len),
        Err(_) => Parsed::NotForUs,
    }
}

/// `/jobs/{id}/events`, `/events` and `/groups/{g}/events`: the routes that
/// answer with an event stream.
fn is_stream_path(path_and_query: &str) -> bool {
    let path = path_and_query.split('?').next().unwrap_or("");
    path == "/events" || (path.ends_with("/events") && path.starts_with('/'))
}

/// `/jobs/{id}/ws`: the single-job WebSocket route.
fn is_websocket_path(path_and_query: &str) -> bool {
    let path = path_and_query.split('?').next().unwrap_or("");
    path.strip_prefix("/jobs/")
        .and_then(|rest| rest.strip_suffix("/ws"))
        .is_some_and(|job| !job.is_empty() && !job.contains('/'))
}

/// A request with a body or an expectation is hyper's.
fn has_body(h: &httparse::Header<'_>) -> bool {
    let name = h.name;
    (name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
        || name.eq_ignore_ascii_case("transfer-encoding")
        || name.eq_ignore_ascii_case("expect")
}

/// Does the request ask to close the connection after the response?
pub fn wants_close(req: &http::request::Parts) -> bool {
    req.headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"))
}

/// A socket with bytes already read from it put back in front.
pub struct Rewind<T> {
    pre: BytesMut,
    io: T,
}

impl<T> Rewind<T> {
    pub fn new(pre: BytesMut, io: T) -> Self {
        Rewind { pre, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            if self.pre.is_empty() {
                // Give the memory back: this connection may live for hours.
                self.pre = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(bytes: &[u8]) -> FirstRequest {
        let mut io = bytes;
        futures::executor::block_on(read_first(&mut io, 8192))
    }

    #[test]
    fn a_plain_sse_get_is_for_the_direct_path_with_what_followed() {
        let head = b"GET /jobs/j1/events?x=1 HTTP/1.1\r\nHost: a\r\nLast-Event-ID: 4\r\n\r\nrest";
        let FirstRequest::Stream(req, rest) = first(head) else {
            panic!("direct path expected");
        };
        assert_eq!(req.uri().path(), "/jobs/j1/events");
        assert_eq!(req.uri().query(), Some("x=1"));
        assert_eq!(req.headers()["last-event-id"], "4");
        assert_eq!(&rest[..], b"rest");
    }

    #[test]
    fn everything_else_goes_to_hyper_with_every_byte() {
        for head in [
            &b"GET /jobs/j1 HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET /jobs/j1/events HTTP/1.0\r\n\r\n",
            b"HEAD /jobs/j1/events HTTP/1.1\r\n\r\n",
            b"GET /jobs/j1/events HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"GET /jobs/j1/events HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"GET /jobs/j1/events HTTP/1.1\r\nBad Header\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /jobs/j1/events HTTP/1.1\r\nHost: a\r\n",
        ] {
            match first(head) {
                FirstRequest::Other(buf) => assert_eq!(&buf[..], head),
                _ => panic!("hyper's: {}", String::from_utf8_lossy(head)),
            }
        }
        assert!(matches!(first(b""), FirstRequest::Gone));
    }

    #[test]
    fn the_stream_routes_are_recognised_by_path() {
        assert!(is_stream_path("/events?job=a&job=b"));
        assert!(is_stream_path("/groups/g/events"));
        assert!(is_stream_path("/jobs/j/events"));
        assert!(!is_stream_path("/jobs/j/eventsx"));
        assert!(!is_stream_path("/jobs/j/ws"));
        assert!(is_websocket_path("/jobs/j/ws?x=1"));
        assert!(!is_websocket_path("/groups/g/ws"));
        assert!(!is_websocket_path("/jobs/a/b/ws"));
    }

    #[test]
    fn a_job_websocket_upgrade_is_for_the_direct_path_and_only_an_upgrade() {
        let up = b"GET /jobs/j1/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert!(matches!(first(up), FirstRequest::Stream(..)));
        let plain = b"GET /jobs/j1/ws HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(matches!(first(plain), FirstRequest::Other(_)));
        let other = b"GET /jobs/j1/ws HTTP/1.1\r\nUpgrade: h2c\r\n\r\n";
        assert!(matches!(first(other), FirstRequest::Other(_)));
    }

    #[tokio::test]
    async fn rewind_replays_then_reads_the_socket() {
        let mut r = Rewind::new(BytesMut::from(&b"ab"[..]), &b"cd"[..]);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "abcd");
    }
}
