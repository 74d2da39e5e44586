//! The direct path of event streams and single-job WebSockets: after warp has
//! answered a stream request (auth, limits, headers, CORS — the same filters
//! as every route), the response head and then each event are written
//! straight to the socket by the connection's task, as one chunk each
//! (`writev` of the chunk header, the shared event bytes and the CRLF), or
//! after a `101` the WebSocket runs on the socket ([`DirectIo`]), without
//! hyper's per-connection dispatcher and its read and write buffers. A write that would block waits
//! for the socket at most the write-stall bound; meanwhile the watcher does not
//! read its feed, so it conflates to the newest state as before.
//!
//! A handler offers its body through the request's [`StreamConn`]: where the
//! accept loop put one, the body goes into the slot and the response carries
//! only the head; elsewhere (a stream requested on a kept-alive connection
//! that hyper serves) [`StreamConn::respond`] makes it hyper's streaming body.
//! A single-job stream whose client has the newest state attaches its
//! socket to the job's feed, which then writes each new state (pre-framed
//! as one chunk) to every attached socket in one loop, without waking the
//! connections' tasks ([`DirectSocket::try_send`]); a socket that cannot take
//! a whole chunk keeps the rest for its task, which detaches and carries on
//! by itself, conflating while the socket is full.
//! When a stream ends by itself (`done`), the connection goes back to hyper for
//! the client's next request; a response without a stream (an error, `204`)
//! is written here and the connection then goes to hyper as well.

use std::convert::Infallible;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use sync_wrapper::SyncStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use warp::Filter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};

use crate::http::stall::StallFlag;

/// A connection on the direct path: its socket, and what a feed left
/// unwritten when the socket was full.
pub struct DirectSocket {
    sock: TcpStream,
    /// The rest of a chunk a feed wrote in part; the connection's task writes
    /// it before anything else.
    pending: Mutex<Option<Bytes>>,
    /// Wakes the connection's task to write `pending`.
    parked: Notify,
}

/// Most bytes [`DirectSocket::send_or_queue`] keeps for a client that does
/// not read; more and the connection is given up.
pub const MAX_QUEUED: usize = 64 * 1024;

/// How much of a chunk [`DirectSocket::try_send`] wrote.
pub enum Sent {
    All,
    /// Part of it; the rest waits in `pending` for the connection's task.
    Part,
    /// Nothing: the socket is full, broken, or has a rest waiting.
    Nothing,
}

impl DirectSocket {
    pub fn new(sock: TcpStream) -> Self {
        DirectSocket {
            sock,
            pending: Mutex::new(None),
            parked: Notify::new(),
        }
    }

    /// Writes `chunk` without waiting (one `write()`), from any thread.
    pub fn try_send(&self, chunk: &Bytes) -> Sent {
        let mut pending = crate::sync::lock(&self.pending);
        if pending.is_some() {
            return Sent::Nothing;
        }
        match self.sock.try_write(chunk) {
            Ok(n) if n == chunk.len() => Sent::All,
            Ok(n) if n > 0 => {
                *pending = Some(chunk.slice(n..));
                self.parked.notify_one();
                Sent::Part
            }
            _ => Sent::Nothing,
        }
    }

    /// Whether a rest of a chunk waits to be written.
    pub fn has_pending(&self) -> bool {
        crate::sync::lock(&self.pending).is_some()
    }

    /// Writes `bytes` after whatever waits, without waiting: what the socket
    /// does not take now is kept (at most [`MAX_QUEUED`] bytes) for
    /// [`DirectSocket::flush`]. For writers that share the socket with a feed
    /// (a WebSocket's replies to pings).
    pub fn send_or_queue(&self, bytes: &[u8]) -> io::Result<()> {
        let mut pending = crate::sync::lock(&self.pending);
        if let Some(waiting) = pending.as_mut() {
            if waiting.len() + bytes.len() > MAX_QUEUED {
                return Err(io::Error::other("client stopped reading"));
            }
            let mut joined = BytesMut::with_capacity(waiting.len() + bytes.len());
            joined.put_slice(waiting);
            joined.put_slice(bytes);
            *waiting = joined.freeze();
            return Ok(());
        }
        let written = match self.sock.try_write(bytes) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if written < bytes.len() {
            *pending = Some(Bytes::copy_from_slice(&bytes[written..]));
            self.parked.notify_one();
        }
        Ok(())
    }

    /// Writes what waits, each write under the lock (so no feed write comes
    /// between), waiting for the socket at most `bound` at a time.
    pub async fn flush(&self, bound: Duration) -> io::Result<()> {
        loop {
            {
                let mut pending = crate::sync::lock(&self.pending);
                let Some(rest) = pending.take() else {
                    return Ok(());
                };
                match self.sock.try_write(&rest) {
                    Ok(n) if n == rest.len() => continue,
                    Ok(n) => *pending = Some(rest.slice(n..)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => *pending = Some(rest),
                    Err(e) => return Err(e),
                }
            }
            writable_within(&self.sock, bound).await?;
        }
    }

    /// Resolves when a write left something waiting.
    pub async fn parked(&self) {
        self.parked.notified().await;
    }

    /// The socket, once nothing else holds this connection.
    pub fn into_inner(self) -> TcpStream {
        self.sock
    }
}

/// What runs on the socket after a `101 Switching Protocols`: the socket,
/// and the bytes the client sent after its request head.
pub type Upgrade = Box<dyn FnOnce(Arc<DirectSocket>, BytesMut) -> BoxFuture<'static, ()> + Send>;

/// Where a stream handler leaves its body (or, for a WebSocket, what runs
/// after the `101`) for the direct path, and the connection's socket for a
/// feed to write to.
#[derive(Clone)]
pub struct DirectSlot {
    body: Arc<Mutex<Option<BoxStream<'static, Bytes>>>>,
    upgrade: Arc<Mutex<Option<Upgrade>>>,
    socket: Arc<DirectSocket>,
}

impl DirectSlot {
    pub fn new(socket: Arc<DirectSocket>) -> Self {
        DirectSlot {
            body: Arc::default(),
            upgrade: Arc::default(),
            socket,
        }
    }

    fn take(&self) -> Option<BoxStream<'static, Bytes>> {
        crate::sync::lock(&self.body).take()
    }

    fn take_upgrade(&self) -> Option<Upgrade> {
        crate::sync::lock(&self.upgrade).take()
    }

    /// Leaves what runs on the socket once the `101` is written.
    pub fn upgrade_with(&self, upgrade: Upgrade) {
        *crate::sync::lock(&self.upgrade) = Some(upgrade);
    }
}

/// What the connection offers a stream handler: the slot for the direct
/// path (where the accept loop answers on the socket itself) and the flag set
/// when the connection is cut for not reading.
#[derive(Clone, Default)]
pub struct StreamConn {
    stall: Option<StallFlag>,
    direct: Option<DirectSlot>,
}

impl StreamConn {
    pub fn stall(&self) -> Option<StallFlag> {
        self.stall.clone()
    }

    /// The socket, on the direct path.
    pub fn socket(&self) -> Option<Arc<DirectSocket>> {
        self.direct.as_ref().map(|d| d.socket.clone())
    }

    /// The direct path's slot, where the accept loop answers on the socket.
    pub fn direct(&self) -> Option<&DirectSlot> {
        self.direct.as_ref()
    }

    /// A `200` event-stream response with `body` and the stream headers: the
    /// head only, with the body in the direct path's slot, or a streaming
    /// body hyper writes.
    pub fn respond<S>(&self, body: S) -> Response
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let mut res = match &self.direct {
            Some(slot) => {
                *crate::sync::lock(&slot.body) = Some(body.boxed());
                Response::new(Default::default())
            }
            None => {
                let body = body.map(Ok::<Bytes, Infallible>);
                warp::reply::stream(SyncStream::new(Box::pin(body))).into_response()
            }
        };
        crate::stream::sse::stream_headers(res.headers_mut());
        res
    }
}

/// The request's [`StreamConn`].
pub fn stream_conn() -> impl Filter<Extract = (StreamConn,), Error = Infallible> + Clone {
    warp::ext::optional::<StallFlag>()
        .and(warp::ext::optional::<DirectSlot>())
        .map(|stall, direct| StreamConn { stall, direct })
}

/// How a response on the direct path ended.
pub enum Ended {
    /// Complete: the connection may carry the client's next request.
    KeepAlive,
    /// The connection is over (client gone, write failed or stalled, or it
    /// asked to close).
    Close,
    /// The `101` is written: the socket belongs to this.
    Upgraded(Upgrade),
}

/// Writes `res` to `sock`: the head, then the stream left in `slot` (chunked),
/// or the response's own (small) body with its length.
pub async fn write_response(
    res: Response,
    slot: &DirectSlot,
    close: bool,
    stall_after: Duration,
    stall: &StallFlag,
) -> Ended {
    let socket = &*slot.socket;
    let sock = &socket.sock;
    let (mut parts, body) = res.into_parts();
    if close {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(upgrade) = slot.take_upgrade() else {
            return Ended::Close;
        };
        let head = encode_head(&parts);
        return match write_all(sock, &[&head], stall_after, stall).await {
            Ok(()) => Ended::Upgraded(upgrade),
            Err(_) => Ended::Close,
        };
    }
    let stream = match slot.take() {
        Some(stream) => stream,
        // Errors and `204`: small, complete bodies, written with their length.
        None if body.size_hint().exact().is_some() => {
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => return Ended::Close,
            };
            let bodyless = parts.status == StatusCode::NO_CONTENT
                || parts.status == StatusCode::NOT_MODIFIED
                || parts.status.is_informational();
            if !bodyless {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            }
            let head = encode_head(&parts);
            return match write_all(sock, &[&head, &body], stall_after, stall).await {
                Ok(()) if !close => Ended::KeepAlive,
                _ => Ended::Close,
            };
        }
        // A body of unknown length that did not use the slot: chunked too.
        None => body
            .into_data_stream()
            .take_while(|data| futures::future::ready(data.is_ok()))
            .filter_map(|data| futures::future::ready(data.ok()))
            .boxed(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    let head = encode_head(&parts);
    // A stream lives for hours: keep nothing of the response but its body.
    drop(parts);
    if write_all(sock, &[&head], stall_after, stall).await.is_err() {
        return Ended::Close;
    }
    drop(head);
    match pump(socket, stream, stall_after, stall).await {
        Ok(()) if !close => Ended::KeepAlive,
        _ => Ended::Close,
    }
}

/// Writes the stream's items as chunks until it ends (then the last chunk),
/// the client goes away or a write fails. The body is dropped before this
/// returns, after the stall flag is set where the client stopped reading.
async fn pump(
    socket: &DirectSocket,
    mut stream: BoxStream<'static, Bytes>,
    stall_after: Duration,
    stall: &StallFlag,
) -> io::Result<()> {
    let sock = &socket.sock;
    let mut scratch = [0u8; 256];
    let outcome = loop {
        tokio::select! {
            biased;
            () = socket.parked.notified() => {
                if let Err(e) = flush_pending(socket, stall_after, stall).await {
                    break Err(e);
                }
            }
            item = stream.next() => {
                if let Err(e) = flush_pending(socket, stall_after, stall).await {
                    break Err(e);
                }
                let Some(event) = item else {
                    break write_all(sock, &[b"0\r\n\r\n"], stall_after, stall).await;
                };
                if event.is_empty() {
                    continue;
                }
                let size = chunk_size_line(event.len());
                if let Err(e) = write_all(sock, &[size.as_bytes(), &event, b"\r\n"], stall_after, stall).await {
                    break Err(e);
                }
            }
            ready = sock.readable() => {
                if let Err(e) = ready {
                    break Err(e);
                }
                // A client sends nothing on an event stream; what it sends
                // (a pipelined request) is read and dropped, and end-of-file
                // means it has gone.
                match sock.try_read(&mut scratch) {
                    Ok(0) => break Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => break Err(e),
                }
            }
        }
    };
    drop(stream);
    outcome
}

/// Writes the rest of a chunk a feed could not finish, if any; the stall
/// flag is set where the client stopped reading.
async fn flush_pending(
    socket: &DirectSocket,
    stall_after: Duration,
    stall: &StallFlag,
) -> io::Result<()> {
    let flushed = socket.flush(stall_after).await;
    if matches!(&flushed, Err(e) if e.kind() == io::ErrorKind::TimedOut) {
        stall.set();
    }
    flushed
}

/// A [`DirectSocket`] as an async byte stream, for a protocol library
/// (WebSocket) that reads and writes it beside a feed: reads wait for the
/// socket; writes never wait (they queue behind what waits, see
/// [`DirectSocket::send_or_queue`]) and the owner flushes.
pub struct DirectIo(pub Arc<DirectSocket>);

impl AsyncRead for DirectIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.0.sock.poll_read_ready(cx))?;
            match self.0.sock.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for DirectIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.0.send_or_queue(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// `{len:x}\r\n`, without allocating.
pub fn chunk_size_line(len: usize) -> ChunkSize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 18];
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in buf[..digits].iter_mut().enumerate() {
        *slot = HEX[(len >> (4 * (digits - 1 - i))) & 0xf];
    }
    buf[digits..digits + 2].copy_from_slice(b"\r\n");
    ChunkSize {
        buf,
        len: digits + 2,
    }
}

pub struct ChunkSize {
    buf: [u8; 18],
    len: usize,
}

impl ChunkSize {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Most parts one [`write_all`] takes: chunk size, event, CRLF.
const MAX_PARTS: usize = 3;

/// Writes all of `parts` (at most [`MAX_PARTS`]) in as few `writev`s as the
/// socket takes: a write that would block waits for the socket, at most
/// `stall_after` without any progress, after which the stall flag is set and
/// the write fails.
async fn write_all(
    sock: &TcpStream,
    parts: &[&[u8]],
    stall_after: Duration,
    stall: &StallFlag,
) -> io::Result<()> {
    debug_assert!(parts.len() <= MAX_PARTS);
    let parts = &parts[..parts.len().min(MAX_PARTS)];
    let (mut part, mut offset) = (0, 0);
    while part < parts.len() {
        let mut slices = [IoSlice::new(&[]); MAX_PARTS];
        for (i, p) in parts[part..].iter().enumerate() {
            slices[i] = IoSlice::new(if i == 0 { &p[offset..] } else { p });
        }
        match sock.try_write_vectored(&slices[..parts.len() - part]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(mut n) => {
                while part < parts.len() && n >= parts[part].len() - offset {
                    n -= parts[part].len() - offset;
                    part += 1;
                    offset = 0;
                }
                offset += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = writable_within(sock, stall_after).await {
                    if e.kind() == io::ErrorKind::TimedOut {
                        stall.set();
                    }
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Waits until `sock` takes writes again, at most `bound` (then `TimedOut`).
async fn writable_within(sock: &TcpStream, bound: Duration) -> io::Result<()> {
    match tokio::time::timeout(bound, sock.writable()).await {
        Ok(ready) => ready,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// `HTTP/1.1 {status}\r\n`, the headers, a `date`, and the blank line.
fn encode_head(parts: &warp::http::response::Parts) -> Bytes {
    let mut head = BytesMut::with_capacity(512);
    head.put_slice(b"HTTP/1.1 ");
    head.put_slice(parts.status.as_str().as_bytes());
    head.put_u8(b' ');
    head.put_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    head.put_slice(b"\r\n");
    for (name, value) in &parts.headers {
        head.put_slice(name.as_str().as_bytes());
        head.put_slice(b": ");
        head.put_slice(value.as_bytes());
        head.put_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        head.put_slice(b"date: ");
        head.put_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        head.put_slice(b"\r\n");
    }
    head.put_slice(b"\r\n");
    head.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_hex() {
        assert_eq!(chunk_size_line(0xbe).as_bytes(), b"be\r\n");
        assert_eq!(chunk_size_line(1).as_bytes(), b"1\r\n");
        assert_eq!(chunk_size_line(0).as_bytes(), b"0\r\n");
        assert_eq!(chunk_size_line(0x1000).as_bytes(), b"1000\r\n");
    }

    #[test]
    fn the_head_names_status_headers_and_date() {
        let mut res = Response::new(Bytes::new().into());
        *res.status_mut() = StatusCode::FORBIDDEN;
        res.headers_mut()
            .insert("x-a", HeaderValue::from_static("b"));
        let (parts, _) = res.into_parts();
        let head = String::from_utf8(encode_head(&parts).to_vec()).unwrap();
        assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\nx-a: b\r\ndate: "));
        assert!(head.ends_with("GMT\r\n\r\n"));
    }
}
