//! Trust rules at the public surface: who may publish to a job, that a job's
//! owner never changes, that a refusal tells nothing of a job's existence,
//! that secrets and cross-site requests are handled safely, and that the
//! gateway refuses to start with a weak or unsafe configuration.

use std::time::Duration;

use serde_json::Value;

use crate::app::{Options, SECRET, TestApp, bearer, claims, sign, spawn_app, spawn_app_with};
use crate::child::ChildApp;
use crate::clients::{EVENT_TIMEOUT, Gateway as _};
use crate::support::{RedisServer, TestDb, wait_until};

/// Bound on a `jobcast` process that is expected to exit by itself.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

fn publisher(jobs: &[&str]) -> String {
    let mut c = claims("svc");
    c.roles = vec!["publisher".into()];
    c.jobs = jobs.iter().map(|j| j.to_string()).collect();
    sign(&c)
}

/// `POST /jobs/{job}` with `body` and extra headers; (status, JSON body).
async fn post_with(
    app: &TestApp,
    job: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(app.url(&format!("/jobs/{job}")));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let res = req.body(body.to_owned()).send().await.expect("POST");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn post(app: &TestApp, job: &str, token: &str, body: &str) -> (u16, Value) {
    post_with(app, job, &[("authorization", bearer(token))], body).await
}

/// A P-256 public key (any will do: only start-up is tested with it).
const EC_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEKJ9IHWlkp/7iYvnnI8fce3v5FYWb
KfvNqiBCz23ewCMlQ40e/ggOGQxv8Vh7jFe0EAMo4qtyNutll3WlQueHUQ==
-----END PUBLIC KEY-----
";

/// Runs `jobcast ARGS` with a clean environment plus `envs`, for at most
/// `bound`; (exited successfully, stdout + stderr). A process still running at
/// the bound is killed and counts as not successful.
async fn jobcast_for(envs: &[(&str, &str)], args: &[&str], bound: Duration) -> (bool, String) {
    let path = std::env::temp_dir().join(format!("jobcast-out-{:016x}.log", rand::random::<u64>()));
    let file = std::fs::File::create(&path).expect("output file");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobcast"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "debug")
        .args(args)
        .stdout(file.try_clone().expect("dup"))
        .stderr(file)
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn jobcast");
    let success = match tokio::time::timeout(bound, child.wait()).await {
        Ok(status) => status.map(|s| s.success()).unwrap_or(false),
        Err(_) => {
            let _ = child.kill().await;
            false
        }
    };
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    (success, text)
}

async fn jobcast(envs: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    jobcast_for(envs, args, EXIT_TIMEOUT).await
}

// ---------------------------------------------------------------- publishing

#[tokio::test]
async fn a_publisher_token_publishes_only_to_the_jobs_it_names() {
    let app = spawn_app().await;
    let doc = r#"{"seq":1,"owner_id":"alice"}"#;

    let (status, _) = post(&app, "mine", &publisher(&["mine"]), doc).await;
    assert_eq!(status, 201, "named job");
    let (status, err) = post(&app, "other", &publisher(&["mine"]), doc).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (403, Some("forbidden")),
        "{err}"
    );
    let (status, err) = post(&app, "mine", &publisher(&[]), doc).await;
    assert_eq!(status, 403, "no jobs claim publishes nowhere: {err}");
    let (status, _) = post(&app, "any-job", &publisher(&["*"]), doc).await;
    assert_eq!(status, 201, "`*` is every job");

    assert!(!app.exists("other").await, "a refused POST writes nothing");
}

#[tokio::test]
async fn post_takes_its_token_from_the_authorization_header_only() {
    let app = spawn_app().await;
    let token = publisher(&["*"]);
    let doc = r#"{"seq":1,"owner_id":"alice"}"#;

    // A cross-site form or fetch carries cookies and can put anything in the query.
    let (status, err) = post_with(
        &app,
        "csrf",
        &[("cookie", format!("jobcast_token={token}"))],
        doc,
    )
    .await;
    assert_eq!(status, 401, "cookie: {err}");
    let (status, err) = post_with(&app, &format!("csrf?access_token={token}"), &[], doc).await;
    assert_eq!(status, 401, "query: {err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or("")
            .contains("Authorization")
    );

    assert!(!app.exists("csrf").await, "nothing was published");
    let (status, _) = post(&app, "csrf", &token, doc).await;
    assert_eq!(status, 201, "the same token in the header works");
}

#[tokio::test]
async fn the_cli_warns_when_it_mints_a_publisher_for_every_job() {
    let (ok, out) = jobcast(
        &[("JWT_SECRET", SECRET)],
        &["token", "--sub", "svc", "--role", "publisher", "--job", "*"],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("EVERY job"), "{out}");
    let (ok, out) = jobcast(
        &[("JWT_SECRET", SECRET)],
        &[
            "token",
            "--sub",
            "svc",
            "--role",
            "publisher",
            "--job",
            "j1",
        ],
    )
    .await;
    assert!(ok && !out.contains("warning"), "{out}");
}

// ---------------------------------------------------------------- ownership

#[tokio::test]
async fn post_naming_another_owner_is_409_and_changes_nothing() {
    let app = spawn_app().await;
    app.set("owned", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let token = publisher(&["owned"]);

    let (status, err) = post(&app, "owned", &token, r#"{"seq":2,"owner_id":"mallory"}"#).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (409, Some("conflict")),
        "{err}"
    );
    let (status, _) = post(&app, "owned", &token, r#"{"seq":3,"owner_id":"alice"}"#).await;
    assert_eq!(status, 201, "the same owner");
    let (status, _) = post(&app, "owned", &token, r#"{"seq":4}"#).await;
    assert_eq!(status, 201, "no owner field keeps the owner");

    let mallory = app.token("mallory");
    let res = reqwest::Client::new()
        .get(app.url("/jobs/owned"))
        .bearer_auth(&mallory)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);
}

#[tokio::test]
async fn a_redis_document_naming_another_owner_is_dropped_and_counted() {
    let redis = RedisServer::start().await;
    let child = ChildApp::spawn(&redis.url(), &[]).await;
    redis
        .set("progress:job:steal", r#"{"seq":1,"owner_id":"alice"}"#)
        .await;
    let alice = sign(&claims("alice"));
    let mut sse = child.sse("/jobs/steal/events", &bearer(&alice)).await;
    sse.expect("connected").await;
    assert_eq!(sse.expect("progress").await.id.as_deref(), Some("1"));

    // Act: a write that tries to hand the job to someone else, then a normal one.
    redis
        .publish(
            "progress:job:steal",
            r#"{"seq":2,"owner_id":"mallory","x":"hijack"}"#,
        )
        .await;
    redis
        .set("progress:job:steal", r#"{"seq":3,"owner_id":"mallory"}"#)
        .await;
    // The SET is heard as a keyspace event and read back; a newer state
    // arriving before that read would make it stale instead.
    wait_until(
        Duration::from_secs(10),
        "both hijacks dropped as owner_changed",
        || async {
            child
                .metric(
                    "jobcast_documents_dropped_total",
                    r#"reason="owner_changed""#,
                )
                .await
                >= 2.0
        },
    )
    .await;
    redis
        .publish("progress:job:steal", r#"{"seq":4,"status":"completed"}"#)
        .await;

    // Assert: alice never sees the hijack, and still gets the end.
    let next = sse.expect("progress").await;
    assert_eq!(next.id.as_deref(), Some("4"), "{next:?}");
    sse.expect("done").await;
    let mallory = sign(&claims("mallory"));
    let res = reqwest::Client::new()
        .get(child.url("/jobs/steal/events"))
        .bearer_auth(&mallory)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403, "the owner did not change");
    let dropped = child
        .metric(
            "jobcast_documents_dropped_total",
            r#"reason="owner_changed""#,
        )
        .await;
    assert!(dropped >= 2.0, "dropped {dropped}");
    assert!(child.log().contains("another owner"), "a warning is logged");
}

#[tokio::test]
async fn the_postgres_row_fixes_the_owner_and_write_behind_never_rewrites_it() {
    let app = spawn_app_with(Options {
        postgres: true,
        ..Options::default()
    })
    .await;
    let pool = app.db.as_ref().expect("db").pool().await;
    sqlx::query(
        "INSERT INTO jobcast.jobs (id, owner_id, status, snapshot, seq) VALUES ('rowed', 'alice', 'running', '{\"seq\":1,\"owner_id\":\"alice\"}', 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    // A Redis state that names another owner (written before anyone watches).
    app.set("rowed", r#"{"seq":5,"owner_id":"mallory"}"#).await;

    let mallory = app.token("mallory");
    let res = reqwest::Client::new()
        .get(app.url("/jobs/rowed/events"))
        .bearer_auth(&mallory)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403, "the row's owner decides");

    let alice = app.token("alice");
    let mut sse = app.sse("/jobs/rowed/events", &bearer(&alice)).await;
    sse.expect("connected").await;
    assert_eq!(
        sse.expect("progress").await.id.as_deref(),
        Some("1"),
        "the row's state"
    );
    app.set(
        "rowed",
        r#"{"seq":6,"owner_id":"alice","status":"completed"}"#,
    )
    .await;
    assert_eq!(sse.expect("progress").await.id.as_deref(), Some("6"));
    sse.expect("done").await;

    let (owner, seq): (String, Option<i64>) =
        sqlx::query_as("SELECT owner_id, seq FROM jobcast.jobs WHERE id = 'rowed'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((owner.as_str(), seq), ("alice", Some(6)));
}

// ---------------------------------------------------------------- no existence oracle

#[tokio::test]
async fn a_refused_job_answers_the_same_whether_or_not_it_exists() {
    let app = spawn_app().await;
    app.set("bobs", r#"{"seq":1,"owner_id":"bob"}"#).await;
    let alice = app.token("alice");

    let mut answers = Vec::new();
    for job in ["bobs", "nobody-has-this-job"] {
        for path in [
            format!("/jobs/{job}/events"),
            format!("/jobs/{job}"),
            format!("/jobs/{job}/poll?timeout=1"),
        ] {
            let res = reqwest::Client::new()
                .get(app.url(&path))
                .bearer_auth(&alice)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap();
            let message = body["message"].as_str().unwrap_or("").replace(job, "JOB");
            answers.push((path.replace(job, "JOB"), status, message));
        }
    }
    let (existing, missing) = answers.split_at(3);
    assert_eq!(existing, missing, "same status and message");
    assert!(existing.iter().all(|(_, s, _)| *s == 403), "{existing:?}");
}

/// Calls of a Redis command so far, from `INFO commandstats`.
async fn command_calls(app: &TestApp, command: &str) -> u64 {
    let mut conn = app.redis().await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_caller_the_known_owner_rules_out_costs_no_subscription_or_read() {
    let app = spawn_app().await;
    app.set("known", r#"{"seq":1,"owner_id":"alice"}"#).await;
    // Alice's stream fixes the owner; when she leaves, the gateway remembers it.
    let mut sse = app.sse("/jobs/known/events", &app.bearer("alice")).await;
    sse.expect("connected").await;
    sse.expect("progress").await;
    drop(sse);
    let channel = app.key("known");
    wait_until(EVENT_TIMEOUT, "the feed is dropped", || async {
        app.numsub(&channel).await == 0
    })
    .await;
    let (subscribes, reads) = (
        command_calls(&app, "subscribe").await,
        command_calls(&app, "evalsha").await,
    );

    let mallory = app.token("mallory");
    for _ in 0..20 {
        let res = reqwest::Client::new()
            .get(app.url("/jobs/known/events"))
            .bearer_auth(&mallory)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 403);
    }

    assert_eq!(
        command_calls(&app, "subscribe").await,
        subscribes,
        "no SUBSCRIBE for refused callers"
    );
    assert_eq!(
        command_calls(&app, "evalsha").await,
        reads,
        "no read for refused callers"
    );
}

// ---------------------------------------------------------------- origins

#[tokio::test]
async fn origins_compare_scheme_host_and_port_and_null_is_never_allowed() {
    let app = spawn_app_with(Options {
        tweak: Box::new(|s| s.allowed_origins = vec!["https://app.example.test".into()]),
        ..Options::default()
    })
    .await;
    let acao = |origin: &'static str| {
        let url = app.url("/healthz");
        async move {
            let res = reqwest::Client::new()
                .get(url)
                .header("origin", origin)
                .send()
                .await
                .unwrap();
            res.headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap().to_owned())
        }
    };
    assert_eq!(
        acao("https://app.example.test").await.as_deref(),
        Some("https://app.example.test")
    );
    assert!(
        acao("https://app.example.test:443").await.is_some(),
        "default port"
    );
    for refused in [
        "http://app.example.test",
        "https://app.example.test:8443",
        "https://app.example.test.evil.test",
        "null",
    ] {
        assert_eq!(acao(refused).await, None, "{refused}");
    }
}

#[tokio::test]
async fn a_cookie_websocket_from_another_port_of_the_same_host_is_refused() {
    let app = spawn_app().await;
    app.set("wsj", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let token = app.token("alice");
    let cookie = format!("jobcast_token={token}");
    let other_port = format!("http://127.0.0.1:{}", app.addr.port() + 1);
    let own = format!("http://127.0.0.1:{}", app.addr.port());

    let refused = app
        .ws_with(
            "/jobs/wsj/ws",
            &[("cookie", &cookie), ("origin", &other_port)],
        )
        .await;
    assert_eq!(refused.err().map(|(s, _)| s), Some(403));
    let mut ws = app
        .ws_with("/jobs/wsj/ws", &[("cookie", &cookie), ("origin", &own)])
        .await
        .expect("own origin");
    ws.expect("connected").await;
}

// ---------------------------------------------------------------- start-up refusals

#[tokio::test]
async fn a_short_or_empty_jwt_secret_refuses_to_start_and_says_why() {
    for secret in ["", "short-secret-of-31-bytes-------"] {
        let (ok, out) = jobcast(
            &[("JWT_SECRET", secret), ("JOBCAST_LISTEN", "127.0.0.1:0")],
            &["serve"],
        )
        .await;
        assert!(!ok, "secret {secret:?} must be refused: {out}");
        assert!(out.contains("JWT_SECRET") && out.contains("32"), "{out}");
    }
}

#[tokio::test]
async fn allowed_origins_star_refuses_to_start() {
    let (ok, out) = jobcast(
        &[
            ("JWT_SECRET", SECRET),
            ("JOBCAST_ALLOWED_ORIGINS", "*"),
            ("JOBCAST_LISTEN", "127.0.0.1:0"),
        ],
        &["serve"],
    )
    .await;
    assert!(!ok && out.contains("JOBCAST_ALLOWED_ORIGINS"), "{out}");
}

#[tokio::test]
async fn out_of_range_numbers_are_refused_at_start_without_a_panic() {
    for (name, value) in [
        ("JOBCAST_HEARTBEAT_SECS", "18446744073709551615"),
        ("JOBCAST_SHUTDOWN_SECS", "18446744073709551615"),
        ("JOBCAST_SSE_RETRY_MS", "99999999999999"),
        ("JOBCAST_HEARTBEAT_SECS", "0"),
    ] {
        let (ok, out) = jobcast(
            &[
                ("JWT_SECRET", SECRET),
                (name, value),
                ("JOBCAST_LISTEN", "127.0.0.1:0"),
            ],
            &["serve"],
        )
        .await;
        assert!(!ok, "{name}={value}");
        assert!(
            out.contains(name) && !out.contains("panicked"),
            "{name}: {out}"
        );
    }
}

#[tokio::test]
async fn a_public_key_without_an_audience_is_warned_about() {
    let redis = RedisServer::start().await;
    let dir = std::env::temp_dir().join(format!("jobcast-pem-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("key.pem");
    std::fs::write(&pem, EC_PUBLIC_PEM).unwrap();
    let child = ChildApp::spawn(
        &redis.url(),
        &[("JWT_PUBLIC_KEY_FILE", pem.display().to_string())],
    )
    .await;
    wait_until(EVENT_TIMEOUT, "the start-up warning is logged", || async {
        child.log().contains("JWT_AUDIENCE")
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn database_and_redis_passwords_never_reach_help_errors_or_logs() {
    let db = TestDb::create().await;
    let leaky_db = db
        .url()
        .replacen("postgres://", "postgres://leakuser:pg-hunter2@", 1);
    let envs = [
        ("JWT_SECRET", SECRET),
        ("REDIS_URL", "redis://:redis-hunter2@127.0.0.1:1/0"),
        ("DATABASE_URL", leaky_db.as_str()),
        ("JOBCAST_LISTEN", "127.0.0.1:0"),
    ];
    let (_, help) = jobcast(&envs, &["--help"]).await;
    // Redis is unreachable, which the gateway rides out: give it a few seconds
    // of retries and errors to log, then stop it.
    let (serve_ok, serve) = jobcast_for(&envs, &["serve"], Duration::from_secs(4)).await;
    let (_, migrate) = jobcast(&envs, &["migrate"]).await;
    let bad_url = [
        ("JWT_SECRET", SECRET),
        ("REDIS_URL", "rediss//:redis-hunter2@x"),
    ];
    let (_, invalid) = jobcast(&bad_url, &["serve"]).await;
    assert!(help.contains("REDIS_URL"), "{help}");
    assert!(!serve_ok, "nothing to connect to: {serve}");
    for (what, out) in [
        ("help", help),
        ("serve", serve),
        ("migrate", migrate),
        ("bad url", invalid),
    ] {
        assert!(!out.contains("hunter2"), "{what} leaks a password:\n{out}");
    }
}
