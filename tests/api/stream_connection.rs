//! An event stream's connection over raw HTTP/1.1: the stream that opens a
//! connection, one asked for on a kept-alive connection, and what the
//! connection carries after a stream ends or is refused.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::app::{doc, spawn_app};

const READ_BOUND: Duration = Duration::from_secs(10);

/// One HTTP/1.1 response read off `conn`: its head, and its body (de-chunked,
/// or `Content-Length` bytes). `until` stops a chunked body early once the
/// body so far contains it.
async fn response(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    until: Option<&str>,
) -> (String, String) {
    let read = async {
        loop {
            if let Some(end) = find(buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let mut rest = buf[end + 4..].to_vec();
                let body = if head.contains("transfer-encoding: chunked") {
                    dechunk(conn, &mut rest, until).await
                } else {
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.trim().parse::<usize>().expect("content-length"));
                    while rest.len() < len {
                        read_more(conn, &mut rest).await;
                    }
                    let body = String::from_utf8_lossy(&rest[..len]).into_owned();
                    rest.drain(..len);
                    body
                };
                *buf = rest;
                return (head, body);
            }
            read_more(conn, buf).await;
        }
    };
    tokio::time::timeout(READ_BOUND, read)
        .await
        .expect("a whole response in time")
}

async fn dechunk(conn: &mut TcpStream, rest: &mut Vec<u8>, until: Option<&str>) -> String {
    let mut body = Vec::new();
    loop {
        if until.is_some_and(|u| find(&body, u.as_bytes()).is_some()) {
            return String::from_utf8_lossy(&body).into_owned();
        }
        let Some(line_end) = find(rest, b"\r\n") else {
            read_more(conn, rest).await;
            continue;
        };
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16)
            .expect("chunk size");
        while rest.len() < line_end + 2 + size + 2 {
            read_more(conn, rest).await;
        }
        body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        rest.drain(..line_end + 2 + size + 2);
        if size == 0 {
            return String::from_utf8_lossy(&body).into_owned();
        }
    }
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = conn.read(&mut chunk).await.expect("read");
    assert!(n > 0, "the server closed the connection");
    buf.extend_from_slice(&chunk[..n]);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn get(path: &str, token: Option<&str>) -> Vec<u8> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n").into_bytes()
}

#[tokio::test]
async fn a_stream_that_ends_with_done_leaves_its_connection_for_the_next_request() {
    let app = spawn_app().await;
    app.set("job1", &doc(3, "completed")).await;
    let token = app.token("alice");
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    let mut buf = Vec::new();

    conn.write_all(&get("/jobs/job1/events", Some(&token)))
        .await
        .unwrap();
    let (head, body) = response(&mut conn, &mut buf, None).await;
    assert!(head.starts_with("http/1.1 200 ok"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("content-encoding: identity"), "{head}");
    assert!(head.contains("date: "), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(body.contains("id: 3\nevent: progress\n"), "{body}");
    assert!(
        body.ends_with("event: done\ndata: {\"job_id\":\"job1\",\"status\":\"completed\"}\n\n"),
        "{body}"
    );

    conn.write_all(&get("/healthz", None)).await.unwrap();
    let (head, _) = response(&mut conn, &mut buf, None).await;
    assert!(
        head.starts_with("http/1.1 200"),
        "same connection, next request: {head}"
    );
}

#[tokio::test]
async fn a_refused_stream_answers_with_its_length_and_keeps_the_connection() {
    let app = spawn_app().await;
    app.set("job1", &doc(1, "running")).await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    let mut buf = Vec::new();

    conn.write_all(&get("/jobs/job1/events", None))
        .await
        .unwrap();
    let (head, body) = response(&mut conn, &mut buf, None).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    let err: serde_json::Value = serde_json::from_str(&body).expect("a JSON error body");
    assert!(err["error"].is_string(), "{body}");

    conn.write_all(&get("/healthz", None)).await.unwrap();
    let (head, _) = response(&mut conn, &mut buf, None).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
}

#[tokio::test]
async fn a_stream_asked_for_on_a_kept_alive_connection_streams_live() {
    let app = spawn_app().await;
    app.set("job1", &doc(1, "running")).await;
    let token = app.token("alice");
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    let mut buf = Vec::new();

    conn.write_all(&get("/healthz", None)).await.unwrap();
    let (head, _) = response(&mut conn, &mut buf, None).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");

    conn.write_all(&get("/jobs/job1/events", Some(&token)))
        .await
        .unwrap();
    let (head, body) = response(&mut conn, &mut buf, Some("id: 1\n")).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(body.contains("event: connected"), "{body}");

    app.set("job1", &doc(2, "completed")).await;
    let rest = dechunk(&mut conn, &mut buf, None).await;
    assert!(rest.contains("id: 2\nevent: progress\n"), "{rest}");
    assert!(rest.contains("event: done\n"), "{rest}");
}
