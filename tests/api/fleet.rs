//! A fleet: three real `jobcast` processes behind the shipped
//! `nginx/cluster.conf`, sharing one Redis. Watchers over SSE, WebSocket and
//! the browser client reach their jobs through nginx; one instance is killed
//! (`SIGKILL`) mid-job; every watcher reconnects through nginx with its last
//! id and follows its job to the end on another instance.
//!
//! What a watcher must see, across all its connections: `seq` strictly
//! increasing (no state twice, none older than one already seen), the job's
//! final state, then `done`. States may be skipped only where a newer one
//! superseded them before delivery (jobcast sends a job's latest state, and a
//! reconnect resumes from the current one); the final state has no successor,
//! so it can never be skipped.

use crate::clients::Gateway as _;
use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::app::{claims, sign};
use crate::child::ChildApp;
use crate::clients::{Sse, Ws, ws_connect};
use crate::support::chromium::Page;
use crate::support::{Chromium, Nginx, RedisServer};

const JOBS: usize = 30;
/// Per job: this many SSE watchers and as many WebSocket watchers (300 in all).
const WATCHERS_PER_TRANSPORT: usize = 5;
/// States per job (the last one terminal), written this far apart.
const STATES: i64 = 20;
const STATE_INTERVAL: Duration = Duration::from_millis(100);
/// The state after which one instance is killed.
const KILL_AFTER: i64 = 8;
/// Bound on a watcher following its job to the end, reconnects included.
const WATCH_BOUND: Duration = Duration::from_secs(30);
/// Pages run by the browser client.
const BROWSER_PAGES: usize = 3;
const KEY_PREFIX: &str = "progress:job:";

fn doc(seq: i64) -> String {
    let status = if seq == STATES {
        "completed"
    } else {
        "running"
    };
    format!(
        r#"{{"seq":{seq},"owner_id":"alice","status":"{status}","overall_progress":{}}}"#,
        seq * 5
    )
}

/// What one watcher saw over all its connections.
#[derive(Debug, Default)]
struct Seen {
    seqs: Vec<i64>,
    done: bool,
    connections: usize,
}

/// An SSE watcher through nginx: reconnects with `Last-Event-ID` whenever the
/// stream ends before `done`.
async fn sse_watcher(nginx_url: String, token: String) -> Seen {
    let mut seen = Seen::default();
    let deadline = Instant::now() + WATCH_BOUND;
    while !seen.done && Instant::now() < deadline {
        let auth = format!("Bearer {token}");
        let last = seen.seqs.last().map(i64::to_string);
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(last) = &last {
            headers.push(("last-event-id", last.as_str()));
        }
        let mut sse = Sse::connect(&nginx_url, &headers).await;
        seen.connections += 1;
        if sse.status != 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        while let Some(ev) = sse.next_within(left).await {
            match ev.event.as_str() {
                "progress" => seen.seqs.push(
                    ev.id
                        .as_deref()
                        .and_then(|id| id.parse().ok())
                        .expect("numeric id"),
                ),
                "done" => {
                    seen.done = true;
                    break;
                }
                _ => {}
            }
        }
    }
    seen
}

/// A WebSocket watcher through nginx: reconnects with `last_event_id`.
async fn ws_watcher(nginx_ws_url: String, token: String) -> Seen {
    let mut seen = Seen::default();
    let deadline = Instant::now() + WATCH_BOUND;
    while !seen.done && Instant::now() < deadline {
        let url = match seen.seqs.last() {
            Some(last) => format!("{nginx_ws_url}?last_event_id={last}"),
            None => nginx_ws_url.clone(),
        };
        let auth = format!("Bearer {token}");
        let Ok(mut ws) = ws_connect(&url, &[("authorization", &auth)]).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        seen.connections += 1;
        while let Some(frame) = next_frame(&mut ws, deadline).await {
            match frame["event"].as_str() {
                Some("progress") => seen.seqs.push(
                    frame["id"]
                        .as_str()
                        .and_then(|id| id.parse().ok())
                        .expect("numeric id"),
                ),
                Some("done") => {
                    seen.done = true;
                    break;
                }
                _ => {}
            }
        }
    }
    seen
}

/// The next JSON text frame before `deadline`; `None` when the connection
/// ends (close, error) or the deadline passes.
async fn next_frame(ws: &mut Ws, deadline: Instant) -> Option<serde_json::Value> {
    loop {
        match tokio::time::timeout_at(deadline, ws.stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Some(Ok(Message::Close(_)) | Err(_))) | Ok(None) | Err(_) => return None,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

fn check(what: &str, seen: &Seen) {
    assert!(
        seen.seqs.windows(2).all(|w| w[0] < w[1]),
        "{what}: seq must strictly increase across reconnects: {seen:?}"
    );
    assert_eq!(
        seen.seqs.last(),
        Some(&STATES),
        "{what}: final state seen: {seen:?}"
    );
    assert!(seen.done, "{what}: ended with done: {seen:?}");
}

/// The ids the demo page delivered (`window.__jobcast.ids`) and its status text.
async fn page_state(page: &Page) -> Option<(Vec<i64>, String)> {
    let v = page
        .eval("window.__jobcast ? [window.__jobcast.ids.map(Number), document.getElementById('status').textContent] : null")
        .await
        .ok()?;
    let ids = v[0].as_array()?.iter().filter_map(|n| n.as_i64()).collect();
    Some((ids, v[1].as_str()?.to_owned()))
}

#[tokio::test]
async fn watchers_behind_nginx_survive_the_loss_of_an_instance() {
    let redis = RedisServer::start().await;
    let mut apps = Vec::new();
    for _ in 0..3 {
        // Every watcher is one user's (the job owner's): lift the per-user cap.
        let envs = [("JOBCAST_MAX_CONNECTIONS_PER_USER", "0".to_owned())];
        apps.push(ChildApp::spawn(&redis.url(), &envs).await);
    }
    let ports: Vec<u16> = apps.iter().map(|a| a.port).collect();
    let nginx = Nginx::cluster(&ports).start().await;
    let token = sign(&claims("alice"));
    let jobs: Vec<String> = (0..JOBS).map(|i| format!("fleet-{i}")).collect();
    let mut conn = redis.connection().await;
    for job in &jobs {
        let _: () = conn
            .set_ex(format!("{KEY_PREFIX}{job}"), doc(1), 600)
            .await
            .expect("SET");
    }

    let browser = Chromium::launch().await;
    let mut pages = Vec::new();
    for job in jobs.iter().take(BROWSER_PAGES) {
        let page = browser.new_page().await;
        page.goto(&nginx.url(&format!("/?job={job}&token={token}")))
            .await;
        page.wait_text("conn-state", "Live", Duration::from_secs(10))
            .await;
        pages.push((job.clone(), page));
    }
    // The instance to kill: one that streams to a browser page, so the
    // browser client's reconnect is part of what is shown.
    let mut victim = None;
    for (i, app) in apps.iter().enumerate() {
        if app.metric("jobcast_watchers", "").await > 0.0 {
            victim = Some(i);
            break;
        }
    }
    let victim = victim.expect("some instance streams to a page");
    let mut watchers = Vec::new();
    for job in &jobs {
        for _ in 0..WATCHERS_PER_TRANSPORT {
            let url = nginx.url(&format!("/jobs/{job}/events"));
            watchers.push((
                format!("sse {job}"),
                tokio::spawn(sse_watcher(url, token.clone())),
            ));
            let url = nginx.ws_url(&format!("/jobs/{job}/ws"));
            watchers.push((
                format!("ws {job}"),
                tokio::spawn(ws_watcher(url, token.clone())),
            ));
        }
    }
    // Every watcher is connected once every instance counts its share.
    crate::support::wait_until(
        Duration::from_secs(20),
        "300 watchers are connected",
        || async {
            let mut total = 0.0;
            for app in &apps {
                total += app.metric("jobcast_watchers", "").await;
            }
            total >= (JOBS * WATCHERS_PER_TRANSPORT * 2 + BROWSER_PAGES) as f64
        },
    )
    .await;
    let before: Vec<f64> = {
        let mut v = Vec::new();
        for app in &apps {
            v.push(app.metric("jobcast_watchers", "").await);
        }
        v
    };
    assert!(
        before.iter().all(|n| *n > 0.0),
        "nginx spreads watchers over every instance: {before:?}"
    );

    for seq in 2..=STATES {
        for job in &jobs {
            let _: () = conn
                .set_ex(format!("{KEY_PREFIX}{job}"), doc(seq), 600)
                .await
                .expect("SET");
        }
        if seq == KILL_AFTER {
            apps[victim]
                .child
                .kill()
                .await
                .expect("kill -9 one instance");
        }
        tokio::time::sleep(STATE_INTERVAL).await;
    }

    let mut reconnected = 0;
    for (what, handle) in watchers {
        let seen = handle.await.expect("watcher task");
        check(&what, &seen);
        if seen.connections > 1 {
            reconnected += 1;
        }
    }
    eprintln!("watchers per instance before the kill: {before:?}; reconnected: {reconnected}");
    // Round robin put about a third of them on the killed instance.
    let on_victim = before[victim] as usize;
    assert!(
        reconnected >= on_victim.saturating_sub(BROWSER_PAGES),
        "every watcher of the killed instance reconnected: {reconnected} of {on_victim}"
    );
    assert!(reconnected > 0, "some watchers reconnected");
    for (job, page) in &pages {
        page.wait_text("status", "done", Duration::from_secs(15))
            .await;
        let (ids, _) = page_state(page).await.expect("page state");
        let seen = Seen {
            seqs: ids,
            done: true,
            connections: 1,
        };
        check(&format!("browser {job}"), &seen);
    }
}
