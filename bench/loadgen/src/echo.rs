//! A tiny in-memory gateway for the self-tests, on loopback only:
//! `GET /sub/{job}` streams SSE (chunked), or WebSocket text frames with the
//! document in an envelope when asked to upgrade; `POST /pub/{job}` forwards
//! the body to that job's subscribers. Jobs named `drop-odd-*` forward only even seqs,
//! so a test can check that the skipped states are told apart from lost ones.

use crate::wire::{parse_head, scan_u64};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Bytes, Message};

type Jobs = Arc<Mutex<HashMap<String, broadcast::Sender<Arc<str>>>>>;

/// Binds `127.0.0.1:0`, serves in the background; returns the address.
pub async fn spawn() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let jobs: Jobs = Arc::default();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s, jobs.clone()));
        }
    });
    Ok(addr)
}

fn channel(jobs: &Jobs, job: &str) -> broadcast::Sender<Arc<str>> {
    jobs.lock()
        .unwrap()
        .entry(job.to_string())
        .or_insert_with(|| broadcast::channel(65536).0)
        .clone()
}

async fn serve(mut s: TcpStream, jobs: Jobs) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        // Requests come in as a head (and for POST a body); reuse parse_head,
        // whose "status" is the second word: the path here.
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let mut words = head.split(' ');
        let (method, path) = (
            words.next().unwrap_or(""),
            words.next().unwrap_or("").to_string(),
        );
        let len = parse_head(
            format!(
                "HTTP/1.1 200 x\r\n{}\r\n\r\n",
                head.split_once("\r\n").map_or("", |x| x.1)
            )
            .as_bytes(),
        )
        .ok()
        .flatten()
        .and_then(|(h, _)| h.content_length)
        .unwrap_or(0);
        while buf.len() < end + 4 + len {
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let body: Vec<u8> = buf[end + 4..end + 4 + len].to_vec();
        buf.drain(..end + 4 + len);
        if let (Some(job), "POST") = (path.strip_prefix("/pub/"), method) {
            let keep =
                !job.starts_with("drop-odd-") || scan_u64(&body, "seq").is_some_and(|s| s % 2 == 0);
            if keep {
                let _ =
                    channel(&jobs, job).send(Arc::from(String::from_utf8_lossy(&body).as_ref()));
            }
            if s.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
        } else if let (Some(job), "GET") = (path.strip_prefix("/sub/"), method) {
            let mut rx = channel(&jobs, job).subscribe();
            let ws_key = head
                .lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key"))
                })
                .map(|(_, v)| v.trim().to_string());
            if let Some(key) = ws_key {
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    derive_accept_key(key.as_bytes())
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
                let mut ws = WebSocketStream::from_raw_socket(s, Role::Server, None).await;
                // An envelope, as some gateways send: the scanner must see through it.
                while let Ok(doc) = rx.recv().await {
                    let frame = format!("{{\"event\":\"progress\",\"data\":{doc}}}");
                    if futures_util::SinkExt::send(
                        &mut ws,
                        Message::Text(Bytes::from(frame).try_into().expect("UTF-8")),
                    )
                    .await
                    .is_err()
                    {
                        return;
                    }
                }
                return;
            }
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
            // A comment first, as real gateways send: it carries no seq.
            if s.write_all(format!("{head}6\r\n: hi\n\n\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            while let Ok(doc) = rx.recv().await {
                let ev = format!("data: {doc}\n\n");
                if s.write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
            return;
        } else {
            let _ = s
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .await;
            return;
        }
    }
}
