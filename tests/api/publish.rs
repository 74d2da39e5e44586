//! The publisher side: `ProgressTracker` writes (atomic SET+PUBLISH, TTL on every
//! write), `POST /jobs/{id}` and each of its answers, the CLI round trip
//! (`jobcast token` → `jobcast publish` → a watcher sees it), `jobcast demo`, and
//! the Python (and, where Node and ioredis are installed, Node) examples end to
//! end against the real gateway.

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use jobcast_publish::{EndpointStatus, ProgressTracker, Publisher};
use redis::AsyncCommands;
use serde_json::Value;
use tokio::process::Command;

use crate::app::{Options, SECRET, TestApp, bearer, claims, sign, spawn_app, spawn_app_with};
use crate::clients::Gateway as _;
use crate::support::{RedisServer, wait_until};

const STAGES: &[(&str, f64)] = &[("loading", 10.0), ("solving", 80.0), ("exporting", 10.0)];
/// Bound on a child process (CLI, example script) from start to exit.
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a whole example run being watched to `done`.
const EXAMPLE_TIMEOUT: Duration = Duration::from_secs(40);
const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn publisher(redis: &RedisServer) -> Publisher {
    Publisher::connect(&redis.url()).expect("publisher")
}

async fn get_doc(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Value> {
    let raw: Option<String> = conn.get(key).await.expect("GET");
    raw.map(|s| serde_json::from_str(&s).expect("the key holds JSON"))
}

// ---------------------------------------------------------------- tracker

#[tokio::test]
async fn a_subscriber_never_sees_a_message_before_its_state_is_in_the_key() {
    let redis = RedisServer::start().await;
    let key = "progress:job:atomic-1";
    let client = redis::Client::open(redis.url()).unwrap();
    let mut sub = client.get_async_pubsub().await.expect("pubsub");
    sub.subscribe(key).await.expect("SUBSCRIBE");
    let mut reads = redis.connection().await;

    // Arrange: a worker racing through many updates while we watch.
    const UPDATES: u64 = 150;
    let mut tracker = ProgressTracker::new(publisher(&redis), "atomic-1", "alice", STAGES).unwrap();
    let writer = tokio::spawn(async move {
        tracker.start_stage("solving").await.unwrap();
        for i in 1..=UPDATES {
            tracker.update_stage_progress(i, UPDATES).await.unwrap();
        }
        tracker.mark_completed().await.unwrap();
        tracker.progress().seq()
    });

    // Act + assert: for every message, the key already holds it or newer.
    let mut messages = sub.into_on_message();
    let mut seen = 0u64;
    let mut last_seq = 0;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("a message within 5 s")
            .expect("pubsub open");
        let published: Value = serde_json::from_slice(msg.get_payload_bytes()).unwrap();
        let msg_seq = published["seq"].as_i64().unwrap();
        let stored = get_doc(&mut reads, key).await.expect("the key exists");
        let key_seq = stored["seq"].as_i64().unwrap();
        assert!(
            key_seq >= msg_seq,
            "message seq {msg_seq} arrived while the key still held seq {key_seq}"
        );
        assert!(msg_seq > last_seq, "seq increases");
        last_seq = msg_seq;
        seen += 1;
        if published["status"] == "completed" {
            break;
        }
    }
    let final_seq = writer.await.unwrap();
    assert_eq!(last_seq, final_seq);
    assert_eq!(seen, UPDATES + 2, "start + every update + completed");
}

/// Asserts the key has a TTL of at most 120 s, then drops it (as a PERSIST by
/// someone else would), so the next write must set it again.
async fn assert_ttl_then_persist(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    what: &str,
) {
    let ttl: i64 = conn.ttl(key).await.unwrap();
    assert!(
        (1..=120).contains(&ttl),
        "TTL after {what} is {ttl}, want 1..=120"
    );
    let _: bool = conn.persist(key).await.unwrap();
}

#[tokio::test]
async fn every_tracker_write_sets_the_ttl() {
    let redis = RedisServer::start().await;
    let key = "progress:job:ttl-1";
    let mut conn = redis.connection().await;
    let mut t =
        ProgressTracker::new(publisher(&redis).with_ttl(120), "ttl-1", "alice", STAGES).unwrap();

    t.start_stage("loading").await.unwrap();
    assert_ttl_then_persist(&mut conn, key, "start_stage").await;
    t.update_stage_progress(1, 2).await.unwrap();
    assert_ttl_then_persist(&mut conn, key, "update_stage_progress").await;
    t.complete_stage().await.unwrap();
    assert_ttl_then_persist(&mut conn, key, "complete_stage").await;
    t.set_endpoint("geo", EndpointStatus::Processing)
        .await
        .unwrap();
    assert_ttl_then_persist(&mut conn, key, "set_endpoint").await;
    t.publish().await.unwrap();
    assert_ttl_then_persist(&mut conn, key, "publish").await;
    t.mark_failed("out of memory").await.unwrap();
    assert_ttl_then_persist(&mut conn, key, "mark_failed").await;

    let doc = get_doc(&mut conn, key).await.unwrap();
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc["error"], "out of memory");
    assert_eq!(doc["endpoints"]["geo"], "processing");
}

#[tokio::test]
async fn a_watcher_sees_a_tracker_job_from_first_stage_to_done() {
    let app = spawn_app().await;
    let mut t = ProgressTracker::new(
        Publisher::connect(&app.settings.redis_url).unwrap(),
        "tracked-1",
        "alice",
        STAGES,
    )
    .unwrap();
    t.start_stage("loading").await.unwrap();

    let token = app.token("alice");
    let mut s = app.sse("/jobs/tracked-1/events", &bearer(&token)).await;
    assert_eq!(s.status, 200);
    s.expect("connected").await;
    let first = s.expect("progress").await.json();
    assert_eq!(first["stage"], "loading");
    assert_eq!(first["owner_id"], "alice");
    assert_eq!(first["stages"][1]["weight"], 80.0);

    t.start_stage("solving").await.unwrap();
    t.update_stage_progress(1, 2).await.unwrap();
    let mut last = s.expect("progress").await.json();
    if last["stage_progress"] == 0.0 {
        last = s.expect("progress").await.json();
    }
    assert_eq!(last["overall_progress"], 50.0, "10 + 80 × 1/2");
    t.mark_completed().await.unwrap();
    assert_eq!(s.expect("progress").await.json()["status"], "completed");
    assert_eq!(s.expect("done").await.json()["status"], "completed");
}

// ---------------------------------------------------------------- POST /jobs/{id}

const SMALL_LIMIT: usize = 1024;

async fn small_limit_app() -> TestApp {
    spawn_app_with(Options {
        tweak: Box::new(|s| s.max_document_bytes = SMALL_LIMIT),
        ..Default::default()
    })
    .await
}

/// A publisher token for every job (`jobs: ["*"]`), as a trusted service holds.
pub(crate) fn publisher_token(sub: &str) -> String {
    let mut c = claims(sub);
    c.roles = vec!["publisher".into()];
    c.jobs = vec!["*".into()];
    sign(&c)
}

pub(crate) async fn post(
    app: &TestApp,
    job: &str,
    token: Option<&str>,
    body: reqwest::Body,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(app.url(&format!("/jobs/{job}")));
    if let Some(t) = token {
        req = req.header("authorization", bearer(t));
    }
    let res = tokio::time::timeout(Duration::from_secs(5), req.body(body).send())
        .await
        .expect("answer in time")
        .expect("request");
    let status = res.status().as_u16();
    let body: Value = res.json().await.expect("a JSON body");
    (status, body)
}

fn chunked(parts: Vec<String>) -> reqwest::Body {
    let stream = futures::stream::iter(parts.into_iter().map(Ok::<_, std::io::Error>));
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test]
async fn post_writes_like_a_worker_and_answers_201() {
    let app = small_limit_app().await;
    let token = publisher_token("svc");
    let doc = r#"{"seq":7,"owner_id":"alice","status":"running","overall_progress":12.5}"#;

    let (status, body) = post(&app, "posted-1", Some(&token), doc.into()).await;

    assert_eq!(status, 201, "{body}");
    assert_eq!(body, serde_json::json!({"job_id": "posted-1", "seq": 7}));
    let mut conn = app.redis().await;
    let stored: String = conn.get(app.key("posted-1")).await.unwrap();
    assert_eq!(stored, doc, "forwarded unchanged");
    let ttl: i64 = conn.ttl(app.key("posted-1")).await.unwrap();
    assert!(ttl > 0, "POST sets a TTL, got {ttl}");
}

#[tokio::test]
async fn post_is_seen_by_a_watcher() {
    let app = small_limit_app().await;
    let token = publisher_token("svc");
    app.set("posted-2", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let mut s = app.sse("/jobs/posted-2/events", &app.bearer("alice")).await;
    s.expect("connected").await;
    s.expect("progress").await;

    let doc = r#"{"seq":2,"owner_id":"alice","status":"completed"}"#;
    let (status, _) = post(&app, "posted-2", Some(&token), doc.into()).await;

    assert_eq!(status, 201);
    assert_eq!(s.expect("progress").await.id.as_deref(), Some("2"));
    s.expect("done").await;
}

#[tokio::test]
async fn post_accepts_a_chunked_body_within_the_limit() {
    let app = small_limit_app().await;
    let token = publisher_token("svc");
    let body = chunked(vec![
        r#"{"seq":3,"owner_id":"alice","#.into(),
        r#""status":"running"}"#.into(),
    ]);

    let (status, body) = post(&app, "chunked-1", Some(&token), body).await;

    assert_eq!(status, 201, "{body}");
    assert_eq!(body["seq"], 3);
}

#[tokio::test]
async fn post_refuses_bad_requests_with_400() {
    let app = small_limit_app().await;
    let token = publisher_token("svc");
    for (job, body, why) in [
        ("ok-1", "not json", "not JSON"),
        ("ok-1", "[1,2,3]", "not an object"),
        ("ok-1", r#""text""#, "a JSON string"),
        ("ok-1", "", "empty"),
        ("bad$id", r#"{"seq":1}"#, "invalid job id"),
    ] {
        let (status, err) = post(&app, job, Some(&token), body.to_owned().into()).await;
        assert_eq!(status, 400, "{why}: {err}");
        assert_eq!(err["error"], "bad_request", "{why}");
        assert!(err["message"].is_string(), "{why}");
    }
    assert!(!app.exists("ok-1").await, "nothing was written");
}

#[tokio::test]
async fn post_without_a_valid_token_is_401() {
    let app = small_limit_app().await;
    let expired = {
        let mut c = claims("svc");
        c.roles = vec!["publisher".into()];
        c.exp = c.iat.unwrap() - 10;
        sign(&c)
    };
    let forged = crate::app::sign_with(&claims("svc"), "not-the-secret");
    for token in [
        None,
        Some("garbage"),
        Some(expired.as_str()),
        Some(forged.as_str()),
    ] {
        let mut req = reqwest::Client::new().post(app.url("/jobs/j401"));
        if let Some(t) = token {
            req = req.header("authorization", bearer(t));
        }
        let res = req.body(r#"{"seq":1}"#).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 401, "token {token:?}");
        assert!(res.headers().get("www-authenticate").is_some());
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"], "unauthorized");
    }
}

#[tokio::test]
async fn post_without_the_publisher_role_is_403() {
    let app = small_limit_app().await;
    let mut admin = claims("root");
    admin.roles = vec!["admin".into()];
    admin.jobs = vec!["*".into()];
    for token in [app.token("alice"), sign(&admin)] {
        let (status, err) = post(&app, "j403", Some(&token), r#"{"seq":1}"#.into()).await;
        assert_eq!(status, 403, "{err}");
        assert_eq!(err["error"], "forbidden");
    }
}

/// A JSON object of exactly `len` bytes.
fn sized(len: usize) -> String {
    let doc = format!(r#"{{"seq":1,"pad":"{}"}}"#, "x".repeat(len - 18));
    assert_eq!(doc.len(), len);
    doc
}

#[tokio::test]
async fn post_over_the_size_limit_is_413_with_or_without_content_length() {
    let app = small_limit_app().await;
    let token = publisher_token("svc");
    let big = sized(4 * SMALL_LIMIT);
    let just_over = sized(SMALL_LIMIT + 1);

    // Content-Length declared over the limit: refused before the body is read.
    let (status, err) = post(&app, "j413", Some(&token), big.clone().into()).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (413, Some("payload_too_large")),
        "{err}"
    );
    // One byte over.
    let (status, err) = post(&app, "j413", Some(&token), just_over.clone().into()).await;
    assert_eq!(status, 413, "{err}");
    // Chunked (no Content-Length): refused once the stream passes the limit.
    let parts = big
        .as_bytes()
        .chunks(256)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let (status, err) = post(&app, "j413", Some(&token), chunked(parts)).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (413, Some("payload_too_large")),
        "{err}"
    );
    // Exactly at the limit is fine.
    let (status, err) = post(&app, "j413", Some(&token), sized(SMALL_LIMIT).into()).await;
    assert_eq!(status, 201, "{err}");
}

// ---------------------------------------------------------------- CLI

/// `jobcast <args>` against the test's Redis with the test's secret; every
/// other jobcast variable removed so the machine's environment cannot leak in.
pub(crate) fn jobcast(app: &TestApp, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobcast"));
    for var in [
        "JWT_PUBLIC_KEY_FILE",
        "JWT_AUDIENCE",
        "JWT_ISSUER",
        "JOBCAST_KEY_PREFIX",
        "JOBCAST_MAX_DOCUMENT_BYTES",
        "DATABASE_URL",
        "JOBCAST_DEV",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .env("REDIS_URL", app.redis.url())
        .env("JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

pub(crate) async fn run_ok(mut cmd: Command) -> String {
    let out = tokio::time::timeout(CHILD_TIMEOUT, cmd.output())
        .await
        .expect("the command finished in time")
        .expect("spawn");
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn cli_token_then_publish_reaches_a_watcher() {
    let app = spawn_app().await;

    // Act: mint a watcher token and a publisher token with the CLI.
    let watcher = run_ok(jobcast(
        &app,
        &["token", "--sub", "alice", "--job", "cli-1", "--ttl", "120"],
    ))
    .await
    .trim()
    .to_owned();
    let service = run_ok(jobcast(
        &app,
        &[
            "token",
            "--sub",
            "svc",
            "--role",
            "publisher",
            "--job",
            "cli-1",
        ],
    ))
    .await
    .trim()
    .to_owned();
    assert_eq!(
        watcher.split('.').count(),
        3,
        "stdout is the token alone: {watcher:?}"
    );

    let out = run_ok(jobcast(
        &app,
        &[
            "publish",
            "cli-1",
            r#"{"seq":1,"owner_id":"bob","status":"running","overall_progress":10}"#,
        ],
    ))
    .await;
    assert!(out.contains("progress:job:cli-1"), "{out}");

    // The CLI's token opens the stream (it names the job) and sees the CLI's writes.
    let mut s = app.sse("/jobs/cli-1/events", &bearer(&watcher)).await;
    assert_eq!(s.status, 200);
    s.expect("connected").await;
    assert_eq!(s.expect("progress").await.json()["overall_progress"], 10);

    let mut stdin_publish = jobcast(&app, &["publish", "cli-1", "-", "--ttl", "60"]);
    stdin_publish
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = stdin_publish.spawn().unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(br#"{"seq":2,"owner_id":"bob","status":"running","overall_progress":60}"#)
            .await
            .unwrap();
    }
    let out = tokio::time::timeout(CHILD_TIMEOUT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.expect("progress").await.json()["overall_progress"], 60);
    let mut conn = app.redis().await;
    let ttl: i64 = conn.ttl(app.key("cli-1")).await.unwrap();
    assert!((1..=60).contains(&ttl), "--ttl 60 gave {ttl}");

    // The CLI's publisher token works on POST /jobs/{id}.
    let (status, err) = post(
        &app,
        "cli-1",
        Some(&service),
        r#"{"seq":3,"owner_id":"bob","status":"completed"}"#.into(),
    )
    .await;
    assert_eq!(status, 201, "{err}");
    assert_eq!(s.expect("progress").await.json()["status"], "completed");
    s.expect("done").await;
}

#[tokio::test]
async fn cli_publish_refuses_what_the_gateway_would_drop() {
    let app = spawn_app().await;
    for (job, doc) in [("ok", "nope"), ("ok", "[1]"), ("bad id", "{}")] {
        let out = tokio::time::timeout(
            CHILD_TIMEOUT,
            jobcast(&app, &["publish", job, doc]).output(),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(!out.status.success(), "{job} {doc}");
        assert!(!out.stderr.is_empty());
    }
    assert!(!app.exists("ok").await, "nothing was written");
}

#[tokio::test]
async fn cli_demo_runs_n_jobs() {
    let app = spawn_app().await;
    let mut child = jobcast(&app, &["demo", "--jobs", "2", "--owner", "carol"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let mut conn = app.redis().await;
    for job in ["demo-1", "demo-2"] {
        let key = app.key(job);
        wait_until(
            Duration::from_secs(10),
            &format!("{job} is written"),
            || {
                let mut c = conn.clone();
                let key = key.clone();
                async move { c.exists::<_, bool>(&key).await.unwrap_or(false) }
            },
        )
        .await;
        let doc = get_doc(&mut conn, &key).await.unwrap();
        assert_eq!(doc["owner_id"], "carol");
        assert_eq!(doc["status"], "running");
        assert_eq!(doc["stages"].as_array().map(Vec::len), Some(5));
    }
    child.kill().await.unwrap();
}

// ---------------------------------------------------------------- other languages

/// Runs an example script against the test's gateway and watches it to `done`.
async fn watch_example_to_completion(mut cmd: Command, app: &TestApp, job: &str) {
    cmd.env("REDIS_URL", app.redis.url())
        .env("JOBCAST_KEY_PREFIX", &app.settings.key_prefix)
        .env("STEP_SECONDS", "0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn the example");
    let mut conn = app.redis().await;
    let key = app.key(job);

    // The job exists (and so has an owner) once the first update is in.
    wait_until(
        Duration::from_secs(15),
        "the example's first update",
        || {
            let mut c = conn.clone();
            let key = key.clone();
            async move { c.exists::<_, bool>(&key).await.unwrap_or(false) }
        },
    )
    .await;
    let mut s = app
        .sse(&format!("/jobs/{job}/events"), &bearer(&app.token("alice")))
        .await;
    assert_eq!(s.status, 200);
    s.expect("connected").await;

    let watched = async {
        let mut seqs = Vec::new();
        let mut last = Value::Null;
        loop {
            let ev = s
                .next_event()
                .await
                .expect("the stream stays open until done");
            match ev.event.as_str() {
                "progress" => {
                    last = ev.json();
                    seqs.push(last["seq"].as_i64().expect("seq"));
                }
                "done" => return (seqs, last, ev.json()),
                other => panic!("unexpected event {other}: {}", ev.data),
            }
        }
    };
    let (seqs, last, done) = tokio::time::timeout(EXAMPLE_TIMEOUT, watched)
        .await
        .expect("the example ran to done in time");
    let out = tokio::time::timeout(CHILD_TIMEOUT, child.wait_with_output())
        .await
        .expect("the example exited")
        .unwrap();
    assert!(
        out.status.success(),
        "example failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(seqs.len() >= 3, "several updates were seen live: {seqs:?}");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq increases: {seqs:?}"
    );
    assert_eq!(last["status"], "completed");
    assert_eq!(last["overall_progress"], 100.0);
    assert_eq!(last["owner_id"], "alice");
    assert_eq!(done["status"], "completed");
    let ttl: i64 = conn.ttl(&key).await.unwrap();
    assert!(ttl > 0, "the example sets a TTL");
}

#[tokio::test]
async fn python_example_reports_a_job_to_completion() {
    let check = std::process::Command::new("python3")
        .args(["-c", "import redis"])
        .output();
    match check {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "the Python example needs python3 with redis-py: python3 -m pip install redis \
             (scripts/test.sh installs it)"
        ),
    }
    let app = spawn_app().await;
    let mut cmd = Command::new("python3");
    cmd.arg(format!("{REPO}/examples/python/publish_progress.py"))
        .args(["py-1", "alice"]);
    watch_example_to_completion(cmd, &app, "py-1").await;
}

/// The Node example needs node and ioredis; a test that runs it fails with
/// how to install them where they are missing.
pub(crate) fn require_node_example() {
    let ioredis = format!("{REPO}/examples/node/node_modules/ioredis");
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        matches!(node, Ok(ref o) if o.status.success()) && std::path::Path::new(&ioredis).exists(),
        "this test needs node and ioredis: scripts/test.sh installs both \
         (npm install --prefix examples/node --no-audit --no-fund)"
    );
}

#[tokio::test]
async fn node_example_reports_a_job_to_completion() {
    require_node_example();
    let app = spawn_app().await;
    let mut cmd = Command::new("node");
    cmd.arg(format!("{REPO}/examples/node/publish_progress.mjs"))
        .args(["node-1", "alice"]);
    watch_example_to_completion(cmd, &app, "node-1").await;
}

/// The README's (docs/publishing.md) five Python lines, run as printed.
#[tokio::test]
async fn readme_python_five_lines_publish_a_watchable_job() {
    let readme = std::fs::read_to_string(format!("{REPO}/docs/publishing.md")).unwrap();
    let code = readme
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a python block in docs/publishing.md");
    assert_eq!(code.lines().count(), 5, "five lines, as promised:\n{code}");
    let app = spawn_app().await;

    let out = tokio::time::timeout(
        CHILD_TIMEOUT,
        Command::new("python3")
            .args(["-c", code])
            .env("REDIS_URL", app.redis.url())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("ran in time")
    .expect("python3");

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let res = reqwest::Client::new()
        .get(app.url("/jobs/8ae7f267"))
        .bearer_auth(app.token("user-42"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["overall_progress"], 40.0);
    assert!(doc["seq"].is_i64());
    let mut conn = app.redis().await;
    let ttl: i64 = conn.ttl(app.key("8ae7f267")).await.unwrap();
    assert!(ttl > 0);
}
