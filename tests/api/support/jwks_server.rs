//! [`JwksServer`]: a tiny HTTP server on a free loopback port standing in for an
//! identity provider's JWKS endpoint. Every request gets the answer set last
//! (status, body, `Cache-Control`), which a test swaps at run time to rotate
//! keys or break the set; it counts the requests it answered, and [`stop`]
//! takes it down (connections are refused from then on).
//!
//! [`stop`]: JwksServer::stop

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head read; a JWKS fetch is one short GET.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Bound on reading one request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Answer {
    status: u16,
    body: String,
    cache_control: Option<String>,
}

struct Shared {
    answer: Mutex<Answer>,
    fetches: AtomicUsize,
}

pub struct JwksServer {
    port: u16,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl JwksServer {
    /// Starts serving `body` (status 200, no `Cache-Control`).
    pub async fn start(body: &str) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the JWKS server");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            answer: Mutex::new(Answer {
                status: 200,
                body: body.to_owned(),
                cache_control: None,
            }),
            fetches: AtomicUsize::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conns.spawn(answer(stream, Arc::clone(&accept_shared)));
                // Reap finished connections so the set stays small.
                while conns.try_join_next().is_some() {}
            }
        });
        JwksServer {
            port,
            shared,
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/.well-known/jwks.json", self.port)
    }

    /// Requests answered so far.
    pub fn fetches(&self) -> usize {
        self.shared.fetches.load(Ordering::SeqCst)
    }

    /// Answers `200` with `body` from now on.
    pub fn serve(&self, body: &str) {
        self.set(200, body, None);
    }

    /// Answers `status` with `body` and an optional `Cache-Control` from now on.
    pub fn set(&self, status: u16, body: &str, cache_control: Option<&str>) {
        *self.shared.answer.lock().unwrap() = Answer {
            status,
            body: body.to_owned(),
            cache_control: cache_control.map(str::to_owned),
        };
    }

    /// Closes the listening socket and every open connection.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads one request head (bounded), answers it and closes the connection.
async fn answer(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut head = Vec::with_capacity(1024);
    let read = async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.extend_from_slice(&buf[..n]);
        }
        std::io::Result::Ok(())
    };
    if !matches!(tokio::time::timeout(READ_TIMEOUT, read).await, Ok(Ok(()))) {
        return;
    }
    let a = shared.answer.lock().unwrap().clone();
    shared.fetches.fetch_add(1, Ordering::SeqCst);
    let cache = a
        .cache_control
        .map(|c| format!("cache-control: {c}\r\n"))
        .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{cache}connection: close\r\n\r\n{}",
        a.status,
        a.body.len(),
        a.body
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
