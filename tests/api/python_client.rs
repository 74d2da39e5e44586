//! The Python package (`clients/python`, installed by scripts/test.sh into
//! `.jobcast/venv`) against the real gateway: its tracker writes, step by step
//! under the same clock, the very documents the Rust tracker writes, and an SSE
//! watcher sees each one; the asyncio flavour and the context manager end jobs
//! as promised; `mint_token` makes HS256, ES256 and RS256 tokens the gateway
//! accepts; `watch()` follows a job across a gateway restart without a gap or
//! a duplicate; the FastAPI and Celery examples (examples/python) create a job
//! whose token watches it to done. The driver scripts are in `tests/api/python/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use jobcast_publish::{Clock, EndpointStatus, ProgressTracker, Publisher};
use redis::AsyncCommands;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::app::{Options, SECRET, TestApp, spawn_app, spawn_app_with};
use crate::child::ChildApp;
use crate::clients::{Gateway as _, Sse};
use crate::support::{RedisServer, free_port};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Bound on one line from a driver script.
const LINE_TIMEOUT: Duration = Duration::from_secs(15);

/// The interpreter with the `jobcast` package installed: `JOBCAST_PYTHON`
/// (scripts/test.sh exports it), else the venv test.sh makes. Fails loudly when
/// the package cannot be imported: these tests must not pass by not running.
pub(crate) fn python() -> String {
    let py = std::env::var("JOBCAST_PYTHON").unwrap_or_else(|_| {
        let venv = format!("{REPO}/.jobcast/venv/bin/python");
        if std::path::Path::new(&venv).exists() {
            venv
        } else {
            "python3".into()
        }
    });
    let ok = std::process::Command::new(&py)
        .args(["-c", "import jobcast, redis, jwt"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{py} cannot import jobcast: run scripts/test.sh (it installs clients/python into \
         .jobcast/venv), or pip install './clients/python[crypto]'"
    );
    py
}

pub(crate) fn script(name: &str) -> String {
    format!("{REPO}/tests/api/python/{name}")
}

pub(crate) async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>, what: &str) -> String {
    tokio::time::timeout(LINE_TIMEOUT, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("no line from the script within {LINE_TIMEOUT:?} ({what})"))
        .expect("read stdout")
        .unwrap_or_else(|| panic!("the script closed stdout early ({what})"))
}

async fn run_script(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        LINE_TIMEOUT,
        Command::new(python())
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the script finished in time")
    .expect("spawn python");
    assert!(
        out.status.success(),
        "{args:?} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

// ---------------------------------------------------------------- the same documents

/// A clock the test sets before each step.
struct FixedClock(Mutex<DateTime<Utc>>);

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

const STAGES: &[(&str, f64)] = &[("loading", 5.0), ("solving", 80.0), ("exporting", 15.0)];
const T0_MS: i64 = 1_763_910_000_000;

/// One step for both trackers: (ms after T0, op, args).
fn steps(ending: &str) -> Vec<(i64, &'static str, Value)> {
    let mut s = vec![
        (0, "start_stage", json!(["loading"])),
        (700, "update_stage_progress", json!([1, 3])),
        (1_450, "complete_stage", json!([])),
        (2_000, "start_stage", json!(["solving"])),
        (3_123, "update_stage_progress", json!([5, 30])),
        (4_999, "update_stage_progress", json!([15, 30])),
        (5_000, "update_stage_progress", json!([15, 30])),
        (7_777, "set_endpoint", json!(["geo", "processed"])),
        (8_100, "update_stage_progress", json!([29, 30])),
        (9_000, "set_message", json!(["almost there"])),
        (9_500, "start_stage", json!(["exporting"])),
        (10_250, "update_stage_progress", json!([1, 3])),
        (11_000, "publish", json!([])),
    ];
    s.push(match ending {
        "complete" => (12_345, "complete", json!([])),
        "fail" => (12_345, "fail", json!(["solver crashed"])),
        _ => (12_345, "cancel", json!([])),
    });
    s
}

async fn rust_step(t: &mut ProgressTracker, op: &str, args: &Value) {
    let s = |i: usize| args[i].as_str().unwrap();
    let n = |i: usize| args[i].as_u64().unwrap();
    match op {
        "start_stage" => t.start_stage(s(0)).await,
        "update_stage_progress" => t.update_stage_progress(n(0), n(1)).await,
        "complete_stage" => t.complete_stage().await,
        "set_endpoint" => {
            assert_eq!(s(1), "processed");
            t.set_endpoint(s(0), EndpointStatus::Processed).await
        }
        "set_message" => t.set_message(Some(s(0).to_owned())).await,
        "publish" => t.publish().await,
        "complete" => t.mark_completed().await,
        "fail" => t.mark_failed(s(0)).await,
        "cancel" => t.mark_cancelled().await,
        other => panic!("no such step {other}"),
    }
    .unwrap_or_else(|e| panic!("rust {op}: {e}"));
}

/// Runs the same steps, at the same clock times, through the Rust tracker
/// (job `rs-…`) and the Python one (job `py-…`, driven over stdin); after each
/// step an SSE watcher of the Python job must see the step's document, and it
/// must equal what the Rust tracker stored, field for field, but `job_id`.
async fn same_documents_as_rust(ending: &str) {
    let app = spawn_app().await;
    let (py_job, rs_job) = (format!("py-{ending}"), format!("rs-{ending}"));
    let clock = Arc::new(FixedClock(Mutex::new(
        Utc.timestamp_millis_opt(T0_MS).unwrap(),
    )));
    let mut rust = ProgressTracker::with_clock(
        Publisher::connect(&app.settings.redis_url).unwrap(),
        &rs_job,
        "alice",
        STAGES,
        clock.clone(),
    )
    .unwrap();
    let stages_json = serde_json::to_string(
        &STAGES
            .iter()
            .map(|(n, w)| json!([n, w]))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let mut child = Command::new(python())
        .args([
            &script("tracker_driver.py"),
            &app.redis.url(),
            &py_job,
            "alice",
            &stages_json,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut conn = app.redis().await;
    let mut sse: Option<Sse> = None;

    for (i, (at, op, args)) in steps(ending).into_iter().enumerate() {
        let now = Utc.timestamp_millis_opt(T0_MS + at).unwrap();
        *clock.0.lock().unwrap() = now;
        rust_step(&mut rust, op, &args).await;
        let line = json!({"at_ms": T0_MS + at, "op": op, "args": args}).to_string() + "\n";
        stdin.write_all(line.as_bytes()).await.unwrap();
        assert_eq!(next_line(&mut lines, op).await, "ok", "python {op}");

        // The watcher opens once the job exists (it has an owner from then on).
        let s = match &mut sse {
            Some(s) => s,
            None => {
                let mut s = app
                    .sse(&format!("/jobs/{py_job}/events"), &app.bearer("alice"))
                    .await;
                assert_eq!(s.status, 200);
                s.expect("connected").await;
                sse.insert(s)
            }
        };
        let ev = s.expect("progress").await;
        let mut seen = ev.json();
        let stored: String = conn.get(app.key(&rs_job)).await.unwrap();
        let mut want: Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(seen["job_id"], py_job.as_str());
        assert_eq!(
            ev.id.as_deref(),
            Some(seen["seq"].to_string().as_str()),
            "the event id is the document's seq"
        );
        seen["job_id"] = Value::Null;
        want["job_id"] = Value::Null;
        assert_eq!(
            seen, want,
            "step {i} ({op} at +{at} ms): python (left) and rust (right) documents differ"
        );
        // Byte for byte, too (field order, number formatting), but for the id.
        assert_eq!(
            ev.data.replace(&py_job, &rs_job),
            stored,
            "step {i} ({op}): the bytes differ"
        );
    }
    let done = sse.as_mut().unwrap().expect("done").await.json();
    let want_status = match ending {
        "complete" => "completed",
        "fail" => "failed",
        _ => "cancelled",
    };
    assert_eq!(done["status"], want_status);
    drop(stdin);
    exits_cleanly(&mut child, "driver exits").await;
}

/// Waits (bounded) for `child` to exit, and asserts it exited 0.
async fn exits_cleanly(child: &mut tokio::process::Child, what: &str) {
    let status = tokio::time::timeout(LINE_TIMEOUT, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what}: no exit within {LINE_TIMEOUT:?}"))
        .expect("wait");
    assert!(status.success(), "{what}: {status:?}");
}

#[tokio::test]
async fn python_tracker_writes_the_rust_trackers_documents_to_completion() {
    same_documents_as_rust("complete").await;
}

#[tokio::test]
async fn python_tracker_fails_and_cancels_like_the_rust_tracker() {
    same_documents_as_rust("fail").await;
    same_documents_as_rust("cancel").await;
}

#[tokio::test]
async fn python_tracker_group_adds_the_job_to_the_group_set_with_the_ttl() {
    let redis = RedisServer::start().await;
    let mut child = Command::new(python())
        .args([
            &script("tracker_driver.py"),
            &redis.url(),
            "grouped-1",
            "alice",
            r#"[["only", 100]]"#,
            "batch-7",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    stdin
        .write_all(br#"{"at_ms": 1763910000000, "op": "start_stage", "args": ["only"]}"#)
        .await
        .unwrap();
    stdin.write_all(b"\n").await.unwrap();
    assert_eq!(next_line(&mut lines, "start_stage").await, "ok");

    let mut conn = redis.connection().await;
    let doc: String = conn.get("progress:job:grouped-1").await.unwrap();
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["group_id"], "batch-7");
    let members: Vec<String> = conn.smembers("progress:group:batch-7").await.unwrap();
    assert_eq!(members, vec!["grouped-1".to_owned()]);
    let (key_ttl, group_ttl): (i64, i64) = (
        conn.ttl("progress:job:grouped-1").await.unwrap(),
        conn.ttl("progress:group:batch-7").await.unwrap(),
    );
    assert!(
        (7100..=7200).contains(&key_ttl) && (7100..=7200).contains(&group_ttl),
        "state key TTL {key_ttl}, group set TTL {group_ttl}"
    );
}

// ---------------------------------------------------------------- asyncio, context managers

async fn watch_to_done(app: &TestApp, job: &str) -> Vec<Value> {
    let mut s = app
        .sse(&format!("/jobs/{job}/events"), &app.bearer("alice"))
        .await;
    assert_eq!(s.status, 200, "{job}");
    s.expect("connected").await;
    let mut docs = Vec::new();
    loop {
        let ev = s.next_event().await.expect("the stream lasts until done");
        match ev.event.as_str() {
            "progress" => docs.push(ev.json()),
            "done" => return docs,
            other => panic!("unexpected {other}"),
        }
    }
}

#[tokio::test]
async fn async_tracker_completes_on_leaving_the_block_and_with_marks_failed_on_exception() {
    let app = spawn_app().await;
    let out = run_script(&[
        &script("async_and_context.py"),
        &app.redis.url(),
        "async-ok",
        "ctx-fail",
        "alice",
    ])
    .await;
    assert_eq!(out.trim(), "ok");

    let ok = watch_to_done(&app, "async-ok").await;
    let last = ok.last().expect("a document");
    assert_eq!(last["status"], "completed");
    assert_eq!(last["overall_progress"], 100.0);
    assert_eq!(last["stage"], "compute");

    let failed = watch_to_done(&app, "ctx-fail").await;
    let last = failed.last().expect("a document");
    assert_eq!(last["status"], "failed");
    assert_eq!(last["error"], "RuntimeError: disk full");
    assert_eq!(last["stage"], "fetch");
}

// ---------------------------------------------------------------- tokens

#[tokio::test]
async fn mint_token_hs256_watcher_and_publisher_tokens_are_accepted() {
    let app = spawn_app().await;
    app.set("minted-1", r#"{"seq":1,"owner_id":"someone-else"}"#)
        .await;
    let out = run_script(&[&script("mint.py"), "hs256", SECRET, "bob", "minted-1"]).await;
    let mut tokens = out.lines();
    let (watcher, publisher) = (tokens.next().unwrap(), tokens.next().unwrap());

    // bob does not own the job: the `jobs` claim is what lets him in.
    let res = reqwest::Client::new()
        .get(app.url("/jobs/minted-1"))
        .bearer_auth(watcher)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let other = reqwest::Client::new()
        .get(app.url("/jobs/not-named"))
        .bearer_auth(watcher)
        .send()
        .await
        .unwrap();
    assert_eq!(
        other.status().as_u16(),
        403,
        "a job the token does not name"
    );

    let res = reqwest::Client::new()
        .post(app.url("/jobs/minted-1"))
        .bearer_auth(publisher)
        .body(r#"{"seq":2,"owner_id":"someone-else","status":"running"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);

    let refused = run_script(&[&script("mint.py"), "short"]).await;
    assert_eq!(refused.lines().count(), 2, "{refused}");
}

async fn asymmetric_token_is_accepted(mode: &str) {
    let dir = std::env::temp_dir().join(format!("jobcast-keys-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem: PathBuf = dir.join("public.pem");
    let out = run_script(&[&script("mint.py"), mode, pem.to_str().unwrap(), "carol"]).await;
    let token = out.trim().to_owned();
    let key = pem.clone();
    let app = spawn_app_with(Options {
        tweak: Box::new(move |s| {
            s.jwt_secret = None;
            s.jwt_public_key_file = Some(key);
        }),
        ..Default::default()
    })
    .await;
    app.set("asym-1", r#"{"seq":1,"owner_id":"dave"}"#).await;

    let res = reqwest::Client::new()
        .get(app.url("/jobs/asym-1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "{mode} token with jobs=*");
    let hs = reqwest::Client::new()
        .get(app.url("/jobs/asym-1"))
        .bearer_auth(app.token("carol"))
        .send()
        .await
        .unwrap();
    assert_eq!(hs.status().as_u16(), 401, "an HS256 token is not accepted");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn mint_token_es256_and_rs256_tokens_are_accepted_by_a_public_key_gateway() {
    asymmetric_token_is_accepted("es256").await;
    asymmetric_token_is_accepted("rs256").await;
}

// ---------------------------------------------------------------- watch()

async fn write(redis: &RedisServer, job: &str, seq: i64, status: &str) {
    let doc = json!({"seq": seq, "owner_id": "alice", "status": status}).to_string();
    redis.set(&format!("progress:job:{job}"), &doc).await;
    redis.publish(&format!("progress:job:{job}"), &doc).await;
}

async fn expect_seq(lines: &mut Lines<BufReader<ChildStdout>>, seq: i64) {
    let line = next_line(lines, &format!("document seq {seq}")).await;
    let doc: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
    assert_eq!(doc["seq"], seq, "{line}");
}

fn spawn_watch(url: &str, job: &str, token: &str) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(python())
        .args([&script("watch_job.py"), url, job, token])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

#[tokio::test]
async fn python_watch_resumes_after_the_gateway_restarts() {
    let redis = RedisServer::start().await;
    let port = free_port();
    let gateway = ChildApp::spawn_at(port, &redis.url(), &[]).await;
    write(&redis, "restart-1", 1, "running").await;
    let token = crate::app::sign(&crate::app::claims("alice"));
    let (mut child, mut lines) = spawn_watch(&gateway.url(""), "restart-1", &token);
    expect_seq(&mut lines, 1).await;
    write(&redis, "restart-1", 2, "running").await;
    expect_seq(&mut lines, 2).await;

    // The gateway goes away (SIGTERM: streams get a final retry: and close);
    // the job moves on meanwhile.
    let mut gateway = gateway;
    gateway.signal(libc::SIGTERM);
    tokio::time::timeout(Duration::from_secs(15), gateway.child.wait())
        .await
        .expect("the gateway exits")
        .unwrap();
    write(&redis, "restart-1", 3, "running").await;

    // A new gateway on the same address: the watcher finds it, resumes after
    // id 2, and gets what it missed, then the rest.
    let _again = ChildApp::spawn_at(port, &redis.url(), &[]).await;
    expect_seq(&mut lines, 3).await;
    write(&redis, "restart-1", 4, "completed").await;
    expect_seq(&mut lines, 4).await;
    assert_eq!(next_line(&mut lines, "END after done").await, "END");
    exits_cleanly(&mut child, "watch() returned at done").await;
}

#[tokio::test]
async fn python_watch_raises_on_a_job_it_may_not_see() {
    let app = spawn_app().await;
    app.set("private-1", r#"{"seq":1,"owner_id":"alice"}"#)
        .await;
    let out = tokio::time::timeout(
        LINE_TIMEOUT,
        Command::new(python())
            .args([
                &script("watch_job.py"),
                &app.url(""),
                "private-1",
                &app.token("mallory"),
            ])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("watch() gave up at once")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WatchError") && stderr.contains("403"),
        "{stderr}"
    );
}

#[tokio::test]
async fn python_watch_hears_a_silent_job_stalled_until_its_next_state() {
    // Arrange: a running job that asks to be called stalled after 1 s.
    let app = spawn_app().await;
    app.set(
        "quiet-1",
        r#"{"seq":1,"owner_id":"alice","status":"running","stall_after_s":1}"#,
    )
    .await;
    let (mut child, mut lines) = spawn_watch(&app.url(""), "quiet-1", &app.token("alice"));
    expect_seq(&mut lines, 1).await;

    // Act + Assert: silence, then a state, then the end.
    let stalled = next_line(&mut lines, "STALLED").await;
    let seconds: u64 = stalled
        .strip_prefix("STALLED ")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("on_stalled(seconds): {stalled}"));
    assert!(seconds >= 1, "{stalled}");
    app.set(
        "quiet-1",
        r#"{"seq":2,"owner_id":"alice","status":"completed"}"#,
    )
    .await;
    assert_eq!(next_line(&mut lines, "STALLED None").await, "STALLED None");
    expect_seq(&mut lines, 2).await;
    assert_eq!(next_line(&mut lines, "END after done").await, "END");
    exits_cleanly(&mut child, "watch() returned at done").await;
}

// ---------------------------------------------------------------- examples

#[tokio::test]
async fn fastapi_and_celery_examples_create_a_job_whose_token_watches_it_to_done() {
    let py = python();
    let has_frameworks = std::process::Command::new(&py)
        .args(["-c", "import fastapi, httpx, celery"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_frameworks,
        "{py} lacks fastapi/httpx/celery for the examples: run scripts/test.sh \
         (it installs them into .jobcast/venv)"
    );
    let app = spawn_app().await;
    let out = tokio::time::timeout(
        LINE_TIMEOUT,
        Command::new(&py)
            .args([
                &script("run_examples.py"),
                &format!("{REPO}/examples/python"),
            ])
            .env("REDIS_URL", app.redis.url())
            .env("JWT_SECRET", SECRET)
            .env("DEMO_USER", "erin")
            .env("JOBCAST_URL", app.url(""))
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the examples ran in time")
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(
        result["other_status"], 404,
        "no token for someone else's job"
    );
    let job = result["job"]["job_id"].as_str().unwrap();
    assert_eq!(
        result["job"]["events_url"],
        app.url(&format!("/jobs/{job}/events")).as_str()
    );

    // The token the endpoint handed out watches the job the task ran.
    for token in [&result["job"]["token"], &result["renewed"]] {
        let mut s = app
            .sse_with(
                &format!("/jobs/{job}/events"),
                &[(
                    "authorization",
                    &format!("Bearer {}", token.as_str().unwrap()),
                )],
            )
            .await;
        assert_eq!(s.status, 200);
        s.expect("connected").await;
        let last = s.expect("progress").await.json();
        assert_eq!(last["status"], "completed");
        assert_eq!(last["owner_id"], "erin");
        assert_eq!(last["stage"], "exporting");
        assert_eq!(last["message"], "report ready");
        s.expect("done").await;
    }
}

#[tokio::test]
async fn python_watch_renews_an_expired_token_through_its_callable() {
    let app = spawn_app().await;
    write(&app.redis, "renew-1", 1, "running").await;
    let mut child = Command::new(python())
        .args([
            &script("watch_job.py"),
            &app.url(""),
            "renew-1",
            "--mint",
            SECRET,
            "bob",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(next_line(&mut lines, "the first token").await, "TOKEN 1");
    expect_seq(&mut lines, 1).await;
    // The gateway ends the stream at the 2 s token's exp (event: error
    // token_expired); watch() asks its callable again and reconnects.
    assert_eq!(next_line(&mut lines, "a renewed token").await, "TOKEN 2");
    write(&app.redis, "renew-1", 2, "completed").await;
    expect_seq(&mut lines, 2).await;
    assert_eq!(next_line(&mut lines, "END after done").await, "END");
    exits_cleanly(&mut child, "watch() returned at done").await;
}
