//! What goes over the wire: URL templates (loopback only), the benchmark payload,
//! the scanner that finds `seq` and `sent_ns` in whatever the gateway sends, the
//! HTTP/1.1 response head, chunked transfer decoding and the SSE event parser.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// A subscriber or publisher URL with `{job}` in it, resolved once to a loopback address.
#[derive(Debug, Clone)]
pub struct UrlTemplate {
    pub scheme: Scheme,
    pub addr: SocketAddr,
    /// `host[:port]` as written, for the Host header.
    pub authority: String,
    /// Path and query, `{job}` still in it.
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Ws,
}

pub fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

impl UrlTemplate {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
            (Scheme::Http, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (Scheme::Ws, r)
        } else {
            return Err(format!(
                "{url}: only http:// and ws:// URLs (no TLS on loopback)"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let hostport = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = loopback_addr(url, &hostport)?;
        Ok(Self {
            scheme,
            addr,
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    pub fn path_for(&self, job: &str) -> String {
        self.path.replace("{job}", job)
    }
}

/// A Redis URL must name a loopback host too.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| format!("{url}: only redis:// URLs"))?;
    let hostport = rest.split('/').next().unwrap_or("");
    let hostport = hostport.rsplit('@').next().unwrap_or(hostport);
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:6379")
    };
    loopback_addr(url, &hostport).map(|_| ())
}

/// Resolves `host:port` of `url` and refuses anything but this machine: the
/// harness opens thousands of connections and can saturate what it points at.
fn loopback_addr(url: &str, hostport: &str) -> Result<SocketAddr, String> {
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    if !is_loopback(addr.ip()) {
        return Err(format!("{url}: not a loopback address ({})", addr.ip()));
    }
    Ok(addr)
}

/// `Name: value` from the command line.
pub fn parse_header(h: &str) -> Result<(String, String), String> {
    let (k, v) = h
        .split_once(':')
        .ok_or_else(|| format!("header '{h}': expected 'Name: value'"))?;
    let k = k.trim();
    if k.is_empty() || k.contains(char::is_whitespace) {
        return Err(format!("header '{h}': bad name"));
    }
    Ok((k.to_string(), v.trim().to_string()))
}

/// The document published for message `seq`: small, valid for jobcast (seq,
/// owner_id, status) and opaque to Nchan. `pad` sets the size.
pub fn payload(seq: u64, sent_ns: u64, owner: &str, terminal: bool, pad: usize) -> String {
    let status = if terminal { "completed" } else { "running" };
    let mut s = String::with_capacity(120 + owner.len() + pad);
    s.push_str(&format!(
        "{{\"seq\":{seq},\"sent_ns\":{sent_ns},\"owner_id\":\"{owner}\",\"status\":\"{status}\",\"pad\":\""
    ));
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// The unsigned integer after `"name":` anywhere in `s`, also when the document
/// travels as an escaped JSON string inside an envelope (`\"name\":`).
pub fn scan_u64(s: &[u8], name: &str) -> Option<u64> {
    let n = name.as_bytes();
    let mut from = 0;
    while from + n.len() <= s.len() {
        let i = from + find(&s[from..], n)?;
        from = i + n.len();
        // The name must be a whole JSON key: a quote right before it.
        if i == 0 || s[i - 1] != b'"' {
            continue;
        }
        let mut j = i + n.len();
        if s.get(j) == Some(&b'\\') {
            j += 1;
        }
        if s.get(j) != Some(&b'"') {
            continue;
        }
        j += 1;
        while matches!(s.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        if s.get(j) != Some(&b':') {
            continue;
        }
        j += 1;
        while matches!(s.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        let start = j;
        let mut v: u64 = 0;
        while let Some(d @ b'0'..=b'9') = s.get(j) {
            v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            j += 1;
        }
        return (j > start).then_some(v);
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Status code and whether the body is chunked, from a complete response head.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<usize>,
}

/// Parses the head if `buf` holds all of it; returns it and its length.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line '{status_line}'"))?;
    let mut chunked = false;
    let mut content_length = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            } else if k.eq_ignore_ascii_case("content-length") {
                content_length = v.parse().ok();
            }
        }
    }
    Ok(Some((
        Head {
            status,
            chunked,
            content_length,
        },
        end + 4,
    )))
}

/// Undoes `Transfer-Encoding: chunked` incrementally.
#[derive(Default)]
pub struct Dechunker {
    pending: Vec<u8>,
    /// Bytes of data left in the current chunk, then its CRLF.
    left: usize,
    in_data: bool,
    pub done: bool,
}

impl Dechunker {
    /// Appends the body bytes found in `input` to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        self.pending.extend_from_slice(input);
        let mut pos = 0;
        let buf = &self.pending;
        while !self.done {
            if self.in_data {
                let take = self.left.min(buf.len() - pos);
                out.extend_from_slice(&buf[pos..pos + take]);
                pos += take;
                self.left -= take;
                if self.left > 0 {
                    break;
                }
                if buf.len() - pos < 2 {
                    break;
                }
                if &buf[pos..pos + 2] != b"\r\n" {
                    return Err("chunk not followed by CRLF".into());
                }
                pos += 2;
                self.in_data = false;
            } else {
                let Some(eol) = find(&buf[pos..], b"\r\n") else {
                    if buf.len() - pos > 1024 {
                        return Err("chunk size line too long".into());
                    }
                    break;
                };
                let line = &buf[pos..pos + eol];
                let hex = line.split(|&b| b == b';').next().unwrap_or(b"");
                let hex = std::str::from_utf8(hex)
                    .map_err(|_| "bad chunk size")?
                    .trim();
                let size = usize::from_str_radix(hex, 16)
                    .map_err(|_| format!("bad chunk size '{hex}'"))?;
                pos += eol + 2;
                if size == 0 {
                    self.done = true;
                } else {
                    self.left = size;
                    self.in_data = true;
                }
            }
        }
        self.pending.drain(..pos);
        Ok(())
    }
}

/// Splits an SSE body into events and hands each event's `data` (lines joined
/// with `\n`) to the caller. Comments, `event:`, `id:` and `retry:` are skipped.
#[derive(Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
}

impl SseParser {
    pub fn feed(&mut self, bytes: &[u8], mut on_event: impl FnMut(&[u8])) {
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&rest[..nl]);
            rest = &rest[nl + 1..];
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            if self.line.is_empty() {
                if self.has_data {
                    on_event(&self.data);
                }
                self.data.clear();
                self.has_data = false;
            } else if let Some(v) = self.line.strip_prefix(b"data:") {
                let v = v.strip_prefix(b" ").unwrap_or(v);
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(v);
                self.has_data = true;
            }
            self.line.clear();
        }
        self.line.extend_from_slice(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_plain_and_escaped_documents() {
        let p = payload(17, 1_795_446_712_123_456_789, "bench", false, 4);
        assert_eq!(scan_u64(p.as_bytes(), "seq"), Some(17));
        assert_eq!(
            scan_u64(p.as_bytes(), "sent_ns"),
            Some(1_795_446_712_123_456_789)
        );
        let env = format!(
            "{{\"event\":\"progress\",\"data\":{}}}",
            serde_json::Value::String(p)
        );
        assert_eq!(scan_u64(env.as_bytes(), "seq"), Some(17));
        // A key that only ends with the name is not the name.
        assert_eq!(scan_u64(br#"{"subseq":5,"seq": 6}"#, "seq"), Some(6));
        assert_eq!(scan_u64(br#"{"seq":"6"}"#, "seq"), None);
        assert_eq!(scan_u64(br#"{"status":"running"}"#, "seq"), None);
    }

    #[test]
    fn dechunks_across_arbitrary_splits() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for split in 0..body.len() {
            let mut d = Dechunker::default();
            let mut out = Vec::new();
            d.feed(&body[..split], &mut out).unwrap();
            d.feed(&body[split..], &mut out).unwrap();
            assert_eq!(out, b"hello, world", "split at {split}");
            assert!(d.done);
        }
        assert!(
            Dechunker::default()
                .feed(b"zz\r\n", &mut Vec::new())
                .is_err()
        );
    }

    #[test]
    fn sse_events_join_data_lines_and_skip_the_rest() {
        let mut p = SseParser::default();
        let mut got = Vec::new();
        let stream = b": hi\r\n\r\nevent: progress\r\nid: 3\r\ndata: {\"a\":1,\r\ndata: \"b\":2}\r\n\r\ndata:x\n\nretry: 5\n\n";
        for b in stream.chunks(3) {
            p.feed(b, |d| got.push(String::from_utf8(d.to_vec()).unwrap()));
        }
        assert_eq!(
            got,
            vec!["{\"a\":1,\n\"b\":2}".to_string(), "x".to_string()]
        );
    }

    #[test]
    fn heads_and_urls() {
        let (h, n) = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.chunked, n), (200, true, 47));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        let u = UrlTemplate::parse("http://127.0.0.1:8080/jobs/{job}/events").unwrap();
        assert_eq!(u.path_for("j-1"), "/jobs/j-1/events");
        assert_eq!(u.scheme, Scheme::Http);
        assert!(UrlTemplate::parse("http://192.0.2.1:80/x").is_err());
        assert!(UrlTemplate::parse("https://127.0.0.1/x").is_err());
        assert!(check_redis_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(check_redis_url("redis://192.0.2.1:6379").is_err());
    }
}
