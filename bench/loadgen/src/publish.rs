//! Publishers: Redis PUBLISH, Redis SET (the gateway hears keyspace
//! notifications) and HTTP POST (Nchan's `/pub/{job}`), paced open-loop.
//!
//! Message k of the run goes to job k % J with seq k + 1 (so a seed document
//! with seq 0 never hides the first one). Each job is pinned to one publisher
//! connection, which keeps its states in order, as one worker writes them.

use crate::wire::{Dechunker, UrlTemplate, parse_head, payload};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublishKind {
    None,
    RedisPublish,
    RedisSet,
    HttpPost,
}

pub struct PubConfig {
    pub kind: PublishKind,
    pub redis: Option<String>,
    pub channel_template: String,
    pub key_template: String,
    pub ttl_secs: u64,
    pub url: Option<UrlTemplate>,
    pub headers: Vec<(String, String)>,
    pub conns: usize,
    pub timeout: Duration,
    pub owner: String,
    pub pad: usize,
}

/// What one phase of publishing did.
#[derive(Default, Debug)]
pub struct PhaseOut {
    pub published: u64,
    pub errors: u64,
    pub unsent: u64,
    /// Seqs that did not go out (error or unsent): nobody should expect them.
    pub failed: Vec<u64>,
    pub first_error: Option<String>,
    pub window_secs: f64,
}

pub async fn redis_conn(url: &str) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("redis {url}: {e}"))
}

/// SETs every job's key to `doc` (`{job}` replaced) before anyone connects, for
/// gateways that refuse to watch a job they know nothing of.
pub async fn seed(cfg: &PubConfig, url: &str, doc: &str, jobs: &[String]) -> Result<(), String> {
    let mut c = redis_conn(url).await?;
    for job in jobs {
        redis::cmd("SET")
            .arg(cfg.key_template.replace("{job}", job))
            .arg(doc.replace("{job}", job))
            .arg("EX")
            .arg(cfg.ttl_secs)
            .query_async::<()>(&mut c)
            .await
            .map_err(|e| format!("seed {job}: {e}"))?;
    }
    Ok(())
}

enum Conn {
    Redis(redis::aio::MultiplexedConnection),
    Http(Option<HttpConn>),
}

struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn send(&mut self, cfg: &PubConfig, job: &str, body: &str) -> Result<(), String> {
        match self {
            Conn::Redis(c) if cfg.kind == PublishKind::RedisSet => redis::cmd("SET")
                .arg(cfg.key_template.replace("{job}", job))
                .arg(body)
                .arg("EX")
                .arg(cfg.ttl_secs)
                .query_async::<()>(c)
                .await
                .map_err(|e| e.to_string()),
            Conn::Redis(c) => redis::cmd("PUBLISH")
                .arg(cfg.channel_template.replace("{job}", job))
                .arg(body)
                .query_async::<i64>(c)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Conn::Http(slot) => {
                let url = cfg.url.as_ref().ok_or("no --publish-url-template")?;
                if slot.is_none() {
                    let stream = TcpStream::connect(url.addr)
                        .await
                        .map_err(|e| e.to_string())?;
                    let _ = stream.set_nodelay(true);
                    *slot = Some(HttpConn {
                        stream,
                        buf: Vec::new(),
                    });
                }
                let conn = slot.as_mut().expect("just set");
                let r = post(conn, url, &cfg.headers, &url.path_for(job), body).await;
                if r.is_err() {
                    // The connection is in an unknown state: the next message opens another.
                    *slot = None;
                }
                r
            }
        }
    }
}

async fn post(
    c: &mut HttpConn,
    url: &UrlTemplate,
    headers: &[(String, String)],
    path: &str,
    body: &str,
) -> Result<(), String> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        url.authority,
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    c.stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    c.buf.clear();
    let mut tmp = [0u8; 2048];
    let (head, len) = loop {
        if let Some(h) = parse_head(&c.buf)? {
            break h;
        }
        let n = c.stream.read(&mut tmp).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("publish connection closed".into());
        }
        c.buf.extend_from_slice(&tmp[..n]);
    };
    // Read the whole response body, so the next response starts clean.
    let mut rest = c.buf.split_off(len);
    if head.chunked {
        let mut d = Dechunker::default();
        let mut sink = Vec::new();
        d.feed(&rest, &mut sink)?;
        while !d.done {
            let n = c.stream.read(&mut tmp).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("publish connection closed".into());
            }
            d.feed(&tmp[..n], &mut sink)?;
        }
    } else {
        let want = head.content_length.unwrap_or(0);
        while rest.len() < want {
            let n = c.stream.read(&mut tmp).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("publish connection closed".into());
            }
            rest.extend_from_slice(&tmp[..n]);
        }
    }
    if (200..300).contains(&head.status) {
        Ok(())
    } else {
        Err(format!("http {}", head.status))
    }
}

pub struct Publisher {
    cfg: Arc<PubConfig>,
    conns: Vec<Conn>,
}

impl Publisher {
    pub async fn connect(cfg: Arc<PubConfig>) -> Result<Self, String> {
        let mut conns = Vec::new();
        for _ in 0..cfg.conns.max(1) {
            conns.push(match cfg.kind {
                PublishKind::RedisPublish | PublishKind::RedisSet => Conn::Redis(
                    redis_conn(cfg.redis.as_deref().ok_or("--redis is required")?).await?,
                ),
                _ => Conn::Http(None),
            });
        }
        Ok(Self { cfg, conns })
    }

    /// Publishes messages `lo..lo + n` at `rate` per second over `duration`.
    /// `terminal`: the last message of every job carries a terminal status.
    /// New sends stop one second after the nominal end; the rest is `unsent`.
    pub async fn phase(
        &mut self,
        lo: u64,
        n: u64,
        rate: f64,
        duration: f64,
        jobs: &Arc<Vec<String>>,
        terminal: bool,
    ) -> PhaseOut {
        let j = jobs.len() as u64;
        let hi = lo + n;
        let terminal_from = if terminal {
            hi.saturating_sub(j).max(lo)
        } else {
            u64::MAX
        };
        let t0 = Instant::now();
        let cutoff = t0 + Duration::from_secs_f64(duration + 1.0);
        let k_conns = self.conns.len();
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for mut conn in std::mem::take(&mut self.conns) {
            let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
            senders.push(tx);
            let (cfg, jobs) = (self.cfg.clone(), jobs.clone());
            workers.push(tokio::spawn(async move {
                let mut out = PhaseOut::default();
                let mut last_done = t0;
                while let Some(k) = rx.recv().await {
                    let seq = k + 1;
                    if Instant::now() > cutoff {
                        out.unsent += 1;
                        out.failed.push(seq);
                        continue;
                    }
                    let job = &jobs[(k % j) as usize];
                    // Stamped as late as possible: publisher lag must not count as latency.
                    let body = payload(
                        seq,
                        crate::sys::wall_ns(),
                        &cfg.owner,
                        k >= terminal_from,
                        cfg.pad,
                    );
                    match tokio::time::timeout(cfg.timeout, conn.send(&cfg, job, &body)).await {
                        Ok(Ok(())) => out.published += 1,
                        r => {
                            out.errors += 1;
                            out.failed.push(seq);
                            out.first_error.get_or_insert(match r {
                                Ok(Err(e)) => e,
                                _ => "publish timeout".into(),
                            });
                        }
                    }
                    last_done = Instant::now();
                }
                out.window_secs = last_done.duration_since(t0).as_secs_f64();
                (conn, out)
            }));
        }
        for i in 0..n {
            let due = t0 + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            let k = lo + i;
            let _ = senders[((k % j) as usize) % k_conns].send(k);
        }
        drop(senders);
        let mut total = PhaseOut::default();
        for w in workers {
            let (conn, out) = w.await.expect("publisher task");
            self.conns.push(conn);
            total.published += out.published;
            total.errors += out.errors;
            total.unsent += out.unsent;
            total.failed.extend(out.failed);
            total.window_secs = total.window_secs.max(out.window_secs);
            if total.first_error.is_none() {
                total.first_error = out.first_error;
            }
        }
        total.failed.sort_unstable();
        total.window_secs = total.window_secs.max(duration);
        total
    }
}
