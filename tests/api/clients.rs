//! Real clients for the tests: an SSE client that parses the event stream off a
//! plain HTTP response, a WebSocket client (tokio-tungstenite), and
//! [`Gateway`], the stream and `/metrics` helpers every gateway under test
//! (in-process, child process, behind nginx) offers. Every read has a bound.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::header::HeaderMap;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A gateway the tests talk to: given its URLs, opens streams and scrapes
/// `/metrics`.
pub trait Gateway {
    fn url(&self, path: &str) -> String;
    fn ws_url(&self, path: &str) -> String;

    /// Opens the SSE stream at `path` with this `Authorization` header value.
    async fn sse(&self, path: &str, authorization: &str) -> Sse {
        self.sse_with(path, &[("authorization", authorization)])
            .await
    }

    /// Opens the SSE stream at `path` with these request headers.
    async fn sse_with(&self, path: &str, headers: &[(&str, &str)]) -> Sse {
        Sse::connect(&self.url(path), headers).await
    }

    /// Opens the WebSocket at `path` with this `Authorization` header value;
    /// panics when the upgrade is refused.
    async fn ws(&self, path: &str, authorization: &str) -> Ws {
        self.ws_with(path, &[("authorization", authorization)])
            .await
            .unwrap_or_else(|(status, body)| panic!("ws {path} refused: {status} {body}"))
    }

    /// Opens the WebSocket at `path` with these request headers; `Err` carries
    /// the status and body of a refused upgrade.
    async fn ws_with(&self, path: &str, headers: &[(&str, &str)]) -> Result<Ws, (u16, String)> {
        ws_connect(&self.ws_url(path), headers).await
    }

    /// The `/metrics` page. An in-process gateway shares the process-wide
    /// recorder with every other test: assert there only on values no other
    /// test moves, or use a `ChildApp`.
    async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("scrape /metrics")
            .text()
            .await
            .expect("/metrics body")
    }

    /// One sample of a metric (summed over matching label sets).
    async fn metric(&self, name: &str, labels: &str) -> f64 {
        crate::child::metric_value(&self.metrics().await, name, labels)
    }
}

/// Default bound on waiting for one event.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SseEvent {
    /// `event:` (or `message`), or `:comment` for comment lines.
    pub event: String,
    pub id: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
    }
}

pub struct Sse {
    pub status: u16,
    pub headers: HeaderMap,
    body: Option<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send + Unpin>>,
    buf: String,
}

impl Sse {
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Sse {
        let client = reqwest::Client::new();
        let mut req = client.get(url).header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = tokio::time::timeout(EVENT_TIMEOUT, req.send())
            .await
            .expect("SSE response head in time")
            .expect("SSE request");
        Sse {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body: Some(Box::new(res.bytes_stream())),
            buf: String::new(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The next event or comment; `None` once the server ended the stream.
    pub async fn next_within(&mut self, bound: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            if let Some(pos) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..pos + 2).collect();
                if let Some(ev) = parse_block(&block) {
                    return Some(ev);
                }
                continue;
            }
            let body = self.body.as_mut()?;
            match tokio::time::timeout_at(deadline, body.next()).await {
                Err(_) => panic!("no SSE event within {bound:?}; buffered: {:?}", self.buf),
                Ok(None) | Ok(Some(Err(_))) => {
                    self.body = None;
                    return None;
                }
                Ok(Some(Ok(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
            }
        }
    }

    pub async fn next(&mut self) -> Option<SseEvent> {
        self.next_within(EVENT_TIMEOUT).await
    }

    /// The next event that is not a comment (pings, padding).
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            let ev = self.next().await?;
            if ev.event != ":comment" && !(ev.event.is_empty() && ev.retry.is_some()) {
                return Some(ev);
            }
        }
    }

    /// Asserts the next real event has this name and returns it.
    pub async fn expect(&mut self, event: &str) -> SseEvent {
        match self.next_event().await {
            Some(ev) if ev.event == event => ev,
            other => panic!("expected `{event}`, got {other:?}"),
        }
    }

    /// Asserts the server ends the stream (within the bound) without another event.
    pub async fn expect_end(&mut self) {
        loop {
            match self.next().await {
                None => return,
                Some(ev) if ev.event == ":comment" => continue,
                Some(ev) => panic!("expected the end of the stream, got {ev:?}"),
            }
        }
    }
}

fn parse_block(block: &str) -> Option<SseEvent> {
    let mut ev = SseEvent::default();
    let mut data: Vec<&str> = Vec::new();
    let mut comment = false;
    for line in block.lines() {
        if let Some(rest) = line.strip_prefix(':') {
            comment = true;
            data.push(rest.trim());
            continue;
        }
        let (field, value) = line
            .split_once(':')
            .map(|(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)))
            .unwrap_or((line, ""));
        match field {
            "event" => ev.event = value.to_owned(),
            "id" => ev.id = Some(value.to_owned()),
            "data" => data.push(value),
            "retry" => ev.retry = value.parse().ok(),
            _ => {}
        }
    }
    if comment && ev.event.is_empty() && ev.id.is_none() {
        ev.event = ":comment".into();
    } else if ev.event.is_empty() && !data.is_empty() {
        ev.event = "message".into();
    }
    ev.data = data.join("\n");
    if ev.event.is_empty() && ev.retry.is_none() {
        return None;
    }
    Some(ev)
}

pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Ws {
    pub stream: WsStream,
    pub response_headers: HeaderMap,
}

/// Opens a WebSocket; `Err(status)` when the upgrade is refused.
pub async fn ws_connect(url: &str, headers: &[(&str, &str)]) -> Result<Ws, (u16, String)> {
    let mut req = url.into_client_request().expect("ws request");
    for (k, v) in headers {
        req.headers_mut().insert(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("header value"),
        );
    }
    match tokio::time::timeout(EVENT_TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .expect("ws connect in time")
    {
        Ok((stream, res)) => {
            let mut response_headers = HeaderMap::new();
            for (k, v) in res.headers() {
                response_headers.insert(k.clone(), v.clone());
            }
            Ok(Ws {
                stream,
                response_headers,
            })
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            let body = res
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((res.status().as_u16(), body))
        }
        Err(e) => panic!("ws connect failed: {e}"),
    }
}

impl Ws {
    /// The next JSON text frame; `None` at a close frame or the end.
    pub async fn next_json(&mut self) -> Option<serde_json::Value> {
        loop {
            let msg = tokio::time::timeout(EVENT_TIMEOUT, self.stream.next())
                .await
                .expect("ws frame in time")?;
            match msg {
                Ok(Message::Text(t)) => {
                    return Some(serde_json::from_str(t.as_str()).expect("ws frame is JSON"));
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    pub async fn expect(&mut self, event: &str) -> serde_json::Value {
        match self.next_json().await {
            Some(v) if v["event"] == event => v,
            other => panic!("expected ws `{event}`, got {other:?}"),
        }
    }

    /// Reads until the close frame and returns its code.
    pub async fn expect_close(&mut self) -> u16 {
        self.expect_close_frame().await.0
    }

    /// Reads until the close frame and returns its code and reason.
    pub async fn expect_close_frame(&mut self) -> (u16, String) {
        loop {
            let msg = tokio::time::timeout(EVENT_TIMEOUT, self.stream.next())
                .await
                .expect("close in time");
            match msg {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frame.code.into(), frame.reason.as_str().to_owned());
                }
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(Message::Text(t))) => panic!("expected close, got frame {t}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("ws error before close: {e}"),
                None => panic!("ws ended without a close frame"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.send(Message::Close(None)).await;
    }
}
