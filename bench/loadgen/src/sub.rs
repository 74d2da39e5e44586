//! Subscribers: SSE over raw TCP (HTTP/1.1, chunked or not) and WebSocket
//! (tokio-tungstenite), each stamping every state it receives with the wall clock.
//! A shard is the set of subscribers one process holds; each subscriber has a
//! job and one of the subscriber URLs.

use crate::account::{Counts, account};
use crate::wire::{Dechunker, SseParser, UrlTemplate, parse_head, scan_u64};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Sse,
    Ws,
}

pub struct SubConfig {
    /// Subscriber URLs (several gateway instances); each subscriber is given one.
    pub urls: Vec<UrlTemplate>,
    /// Loopback source addresses the client sockets are bound to, each subscriber
    /// given one; empty: the kernel picks (127.0.0.1).
    pub sources: Vec<IpAddr>,
    pub transport: Transport,
    pub headers: Vec<(String, String)>,
    pub connect_timeout: Duration,
    /// States sent before this instant are replays from an earlier run.
    pub run_start_ns: u64,
}

/// What one subscriber has seen since the last report.
#[derive(Default)]
struct SubState {
    /// (seq, latency in µs) in arrival order.
    received: Vec<(u64, u32)>,
    connected: bool,
    closed: Option<String>,
    stale: u64,
    without_seq: u64,
}

/// Which job a subscriber watches, through which of the subscriber URLs, from
/// which of the source addresses (ignored when there are none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    pub job: usize,
    pub url: usize,
    pub source: usize,
}

pub struct Subscriber {
    pub job: usize,
    state: Mutex<SubState>,
}

impl Subscriber {
    fn on_data(&self, data: &[u8], run_start_ns: u64) {
        let now = crate::sys::wall_ns();
        let mut st = self.state.lock().unwrap();
        match (scan_u64(data, "seq"), scan_u64(data, "sent_ns")) {
            (Some(seq), Some(sent)) if sent >= run_start_ns => {
                let lat_us = (now.saturating_sub(sent) / 1000).min(u64::from(u32::MAX)) as u32;
                st.received.push((seq, lat_us));
            }
            (Some(_), Some(_)) => st.stale += 1,
            // `connected` events, comments, the seed snapshot.
            _ => st.without_seq += 1,
        }
    }

    fn close(&self, why: String) {
        let mut st = self.state.lock().unwrap();
        if st.closed.is_none() {
            st.closed = Some(why);
        }
    }
}

pub struct Shard {
    subs: Vec<Arc<Subscriber>>,
}

/// How the connection phase went.
#[derive(Debug)]
pub struct ConnectSummary {
    /// Subscribers connected through each URL.
    pub per_url: Vec<u64>,
    pub kinds: BTreeMap<String, u64>,
    pub first: Option<String>,
    /// Until every attempt had finished.
    pub secs: f64,
    /// Seconds after the start of the first and of the last failed attempt.
    pub error_secs: Option<(f64, f64)>,
    /// Most a connection was opened behind its schedule (the harness lagging).
    pub max_lag_secs: f64,
    /// Time from the start of an attempt to the response head (or upgrade), µs.
    pub connect_us: Histogram<u64>,
}

impl ConnectSummary {
    pub fn new(urls: usize) -> Self {
        Self {
            per_url: vec![0; urls],
            kinds: BTreeMap::new(),
            first: None,
            secs: 0.0,
            error_secs: None,
            max_lag_secs: 0.0,
            connect_us: new_histogram(),
        }
    }

    /// Adds the summary of another subscriber process (as `to_json` wrote it).
    pub fn merge_json(&mut self, v: &Value) {
        let arr = |k: &str| v[k].as_array().cloned().unwrap_or_default();
        for (sum, n) in self.per_url.iter_mut().zip(arr("connected_per_url")) {
            *sum += n.as_u64().unwrap_or(0);
        }
        if let Some(m) = v["connect_error_kinds"].as_object() {
            for (k, n) in m {
                *self.kinds.entry(k.clone()).or_insert(0) += n.as_u64().unwrap_or(0);
            }
        }
        if self.first.is_none() {
            self.first = v["first_connect_error"].as_str().map(str::to_string);
        }
        self.secs = self.secs.max(v["connect_secs"].as_f64().unwrap_or(0.0));
        self.max_lag_secs = self
            .max_lag_secs
            .max(v["connect_max_lag_secs"].as_f64().unwrap_or(0.0));
        if let [a, b] = &arr("connect_error_secs")[..]
            && let (Some(a), Some(b)) = (a.as_f64(), b.as_f64())
        {
            self.error_at(a);
            self.error_at(b);
        }
        for pair in arr("connect_hist") {
            let (x, n) = (pair[0].as_u64().unwrap_or(1), pair[1].as_u64().unwrap_or(0));
            let _ = self.connect_us.record_n(x.max(1), n);
        }
    }

    fn error_at(&mut self, secs: f64) {
        self.error_secs = Some(match self.error_secs {
            None => (secs, secs),
            Some((a, b)) => (a.min(secs), b.max(secs)),
        });
    }

    /// The summary as it goes into the run's JSON (and from a subscriber process
    /// to the parent: `connect_hist` then carries the histogram).
    pub fn to_json(&self, with_hist: bool) -> Value {
        let h = &self.connect_us;
        let ms = |q: f64| crate::sys::round1(h.value_at_quantile(q) as f64 / 1000.0);
        let mut v = json!({
            "connected": self.per_url.iter().sum::<u64>(),
            "connected_per_url": self.per_url,
            "connect_errors": self.kinds.values().sum::<u64>(),
            "connect_error_kinds": self.kinds,
            "first_connect_error": self.first,
            "connect_error_secs": self.error_secs.map(|(a, b)| [crate::sys::round1(a), crate::sys::round1(b)]),
            "connect_secs": crate::sys::round1(self.secs),
            "connect_max_lag_secs": crate::sys::round1(self.max_lag_secs),
            "connect_ms": (!h.is_empty()).then(|| json!({
                "p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999),
                "max": crate::sys::round1(h.max() as f64 / 1000.0),
            })),
        });
        if with_hist {
            v["connect_hist"] = json!(
                h.iter_recorded()
                    .map(|x| [x.value_iterated_to(), x.count_at_value()])
                    .collect::<Vec<_>>()
            );
        }
        v
    }
}

/// One connection attempt's outcome: its URL, when it started and ended, and how.
struct Attempt {
    url: usize,
    started: Instant,
    ended: Instant,
    result: Result<(), String>,
}

/// A short, countable name for a connect error.
fn error_kind(e: &str) -> String {
    let l = e.to_ascii_lowercase();
    if let Some(code) = l.strip_prefix("http ") {
        format!("http_{}", code.split(' ').next().unwrap_or(""))
    } else if l.contains("refused") {
        "refused".into()
    } else if l.contains("timeout in tcp connect") {
        "timeout_tcp_connect".into()
    } else if l.contains("timeout") || l.contains("timed out") {
        "timeout".into()
    } else if l.contains("too many open files") {
        "too_many_open_files".into()
    } else if l.contains("address not available") {
        "addr_not_available".into()
    } else {
        "other".into()
    }
}

impl Shard {
    /// Opens one subscriber per entry of `assigned` (its job and URL), paced
    /// at `rate` per second, and waits until every attempt has finished.
    pub async fn connect(
        cfg: Arc<SubConfig>,
        jobs: Arc<Vec<String>>,
        assigned: Vec<Assignment>,
        rate: f64,
    ) -> (Self, ConnectSummary) {
        let t0 = Instant::now();
        let (tx, mut rx) = mpsc::unbounded_channel::<Attempt>();
        let mut subs = Vec::with_capacity(assigned.len());
        let mut sum = ConnectSummary::new(cfg.urls.len());
        for (i, &Assignment { job, url, source }) in assigned.iter().enumerate() {
            let due = t0 + Duration::from_secs_f64(i as f64 / rate.max(1.0));
            tokio::time::sleep_until(due.into()).await;
            sum.max_lag_secs = sum
                .max_lag_secs
                .max(Instant::now().saturating_duration_since(due).as_secs_f64());
            let sub = Arc::new(Subscriber {
                job,
                state: Mutex::default(),
            });
            subs.push(sub.clone());
            let (cfg, jobs, tx) = (cfg.clone(), jobs.clone(), tx.clone());
            let source = cfg.sources.get(source).copied();
            tokio::spawn(
                async move { run_subscriber(cfg, url, source, &jobs[job], sub, tx).await },
            );
        }
        drop(tx);
        // Every subscriber answers once (its task keeps the sender while it reads).
        for _ in 0..subs.len() {
            let Some(a) = rx.recv().await else {
                break;
            };
            match a.result {
                Ok(()) => {
                    sum.per_url[a.url] += 1;
                    let us = a.ended.duration_since(a.started).as_micros() as u64;
                    sum.connect_us.saturating_record(us.max(1));
                }
                Err(e) => {
                    *sum.kinds.entry(error_kind(&e)).or_default() += 1;
                    sum.first.get_or_insert(e);
                    sum.error_at(a.started.duration_since(t0).as_secs_f64());
                }
            }
        }
        sum.secs = t0.elapsed().as_secs_f64();
        (Self { subs }, sum)
    }

    /// Accounts the phase whose messages had global indexes `lo..hi` (seq = index + 1,
    /// message k to job k % jobs), less those in `failed` (seqs never published),
    /// and forgets what was received. `terminal`: the phase ended every job.
    pub fn report(&self, lo: u64, hi: u64, jobs: usize, failed: &[u64], terminal: bool) -> Value {
        let mut published: HashMap<usize, Vec<u64>> = HashMap::new();
        let mut hist = new_histogram();
        let (mut counts, mut open, mut disconnects, mut first_disconnect) =
            (Counts::default(), 0u64, 0u64, None);
        let (mut stale, mut without_seq, mut late) = (0u64, 0u64, 0u64);
        for sub in &self.subs {
            let mut st = sub.state.lock().unwrap();
            if !st.connected {
                continue;
            }
            let p = published.entry(sub.job).or_insert_with(|| {
                (lo..hi)
                    .filter(|k| (*k % jobs as u64) as usize == sub.job)
                    .map(|k| k + 1)
                    .filter(|s| !failed.contains(s))
                    .collect()
            });
            let seqs: Vec<u64> = st.received.iter().map(|r| r.0).collect();
            let c = account(p, &seqs);
            for &(seq, lat) in &st.received {
                if seq <= lo {
                    late += 1;
                } else if p.binary_search(&seq).is_ok() {
                    hist.saturating_record(u64::from(lat).max(1));
                }
            }
            counts.add(&c);
            match &st.closed {
                None => open += 1,
                // A gateway ends the stream after a terminal state: that is a goodbye.
                Some(_) if terminal && c.final_missed == 0 => {}
                Some(why) => {
                    disconnects += 1;
                    first_disconnect.get_or_insert_with(|| why.clone());
                }
            }
            stale += std::mem::take(&mut st.stale);
            without_seq += std::mem::take(&mut st.without_seq);
            st.received.clear();
        }
        json!({
            "counts": counts.to_json(),
            "hist": hist.iter_recorded().map(|v| [v.value_iterated_to(), v.count_at_value()]).collect::<Vec<_>>(),
            "open_at_end": open,
            "disconnects": disconnects,
            "first_disconnect": first_disconnect,
            "stale_ignored": stale,
            "events_without_seq": without_seq,
            "late_from_prev_phase": late,
        })
    }
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

async fn run_subscriber(
    cfg: Arc<SubConfig>,
    url: usize,
    source: Option<IpAddr>,
    job: &str,
    sub: Arc<Subscriber>,
    ready: mpsc::UnboundedSender<Attempt>,
) {
    let started = Instant::now();
    let deadline = started + cfg.connect_timeout;
    let conn = open(&cfg, &cfg.urls[url], source, job, deadline).await;
    let attempt = |result| Attempt {
        url,
        started,
        ended: Instant::now(),
        result,
    };
    match conn {
        Err(e) => {
            let _ = ready.send(attempt(Err(e)));
        }
        Ok(conn) => {
            sub.state.lock().unwrap().connected = true;
            let _ = ready.send(attempt(Ok(())));
            let why = match conn {
                Conn::Sse {
                    stream,
                    rest,
                    chunked,
                } => read_sse(stream, rest, chunked, &sub, cfg.run_start_ns).await,
                Conn::Ws(ws) => read_ws(ws, &sub, cfg.run_start_ns).await,
            };
            sub.close(why);
        }
    }
}

enum Conn {
    Sse {
        stream: TcpStream,
        rest: Vec<u8>,
        chunked: bool,
    },
    Ws(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
}

/// Connects and reads the response head (or upgrades) by `deadline`; a timeout
/// says which of the two it was waiting for.
async fn open(
    cfg: &SubConfig,
    target: &UrlTemplate,
    source: Option<IpAddr>,
    job: &str,
    deadline: Instant,
) -> Result<Conn, String> {
    let stream = tokio::time::timeout_at(deadline.into(), connect_from(source, target.addr))
        .await
        .map_err(|_| "timeout in TCP connect".to_string())?
        .map_err(|e| e.to_string())?;
    tokio::time::timeout_at(deadline.into(), open_stream(cfg, target, job, stream))
        .await
        .map_err(|_| "timeout waiting for the response head".to_string())?
}

/// TCP connect, from `source` if given. The source is bound with
/// IP_BIND_ADDRESS_NO_PORT, so the kernel still picks the port at connect()
/// time, per (source, destination) pair, instead of one unique port per bind.
async fn connect_from(source: Option<IpAddr>, to: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(ip) = source else {
        return TcpStream::connect(to).await;
    };
    let sock = match ip {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a socket this function owns, with a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    sock.bind(SocketAddr::new(ip, 0))?;
    sock.connect(to).await
}

async fn open_stream(
    cfg: &SubConfig,
    target: &UrlTemplate,
    job: &str,
    stream: TcpStream,
) -> Result<Conn, String> {
    let _ = stream.set_nodelay(true);
    let path = target.path_for(job);
    match cfg.transport {
        Transport::Sse => open_sse(stream, cfg, &target.authority, &path).await,
        Transport::Ws => {
            let url = format!("ws://{}{}", target.authority, path);
            let mut req = url.into_client_request().map_err(|e| e.to_string())?;
            for (k, v) in &cfg.headers {
                let name: tokio_tungstenite::tungstenite::http::HeaderName =
                    k.parse().map_err(|_| format!("bad header name {k}"))?;
                req.headers_mut()
                    .insert(name, HeaderValue::from_str(v).map_err(|e| e.to_string())?);
            }
            // Small read buffers: the harness holds thousands of sockets.
            let wcfg = WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0);
            let (ws, resp) = tokio_tungstenite::client_async_with_config(req, stream, Some(wcfg))
                .await
                .map_err(|e| match e {
                    tokio_tungstenite::tungstenite::Error::Http(r) => {
                        format!("http {}", r.status().as_u16())
                    }
                    e => e.to_string(),
                })?;
            if resp.status().as_u16() != 101 {
                return Err(format!("http {}", resp.status().as_u16()));
            }
            Ok(Conn::Ws(Box::new(ws)))
        }
    }
}

async fn open_sse(
    mut stream: TcpStream,
    cfg: &SubConfig,
    authority: &str,
    path: &str,
) -> Result<Conn, String> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n"
    );
    for (k, v) in &cfg.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some((head, len)) = parse_head(&buf)? {
            if head.status != 200 {
                return Err(format!("http {}", head.status));
            }
            return Ok(Conn::Sse {
                stream,
                rest: buf.split_off(len),
                chunked: head.chunked,
            });
        }
        if buf.len() > 16 * 1024 {
            return Err("response head over 16 KiB".into());
        }
        let mut tmp = [0u8; 1024];
        let n = stream.read(&mut tmp).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the response head".into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

async fn read_sse(
    mut stream: TcpStream,
    rest: Vec<u8>,
    chunked: bool,
    sub: &Subscriber,
    run_start_ns: u64,
) -> String {
    let mut parser = SseParser::default();
    let mut dechunker = chunked.then(Dechunker::default);
    let mut body = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut input = rest;
    loop {
        let data: &[u8] = match &mut dechunker {
            Some(d) => {
                body.clear();
                if let Err(e) = d.feed(&input, &mut body) {
                    return e;
                }
                &body
            }
            None => &input,
        };
        parser.feed(data, |ev| sub.on_data(ev, run_start_ns));
        if dechunker.as_ref().is_some_and(|d| d.done) {
            return "end of stream".into();
        }
        match stream.read(&mut buf).await {
            Ok(0) => return "eof".into(),
            Ok(n) => {
                input.clear();
                input.extend_from_slice(&buf[..n]);
            }
            Err(e) => return e.to_string(),
        }
    }
}

async fn read_ws(
    mut ws: Box<tokio_tungstenite::WebSocketStream<TcpStream>>,
    sub: &Subscriber,
    run_start_ns: u64,
) -> String {
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) => sub.on_data(t.as_bytes(), run_start_ns),
            Ok(Message::Binary(b)) => sub.on_data(&b, run_start_ns),
            Ok(Message::Close(_)) => return "websocket close".into(),
            // Pings are answered by tungstenite on the next read.
            Ok(_) => {}
            Err(e) => return e.to_string(),
        }
    }
    "eof".into()
}
