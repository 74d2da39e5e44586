//! `jobcast tail`: the real binary follows a job through a real gateway,
//! prints each state as one JSON line, resumes after dropped connections
//! without printing a state twice, exits 0 after `done`, and non-zero with the
//! gateway's reason on refusals.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::app::{Options, TestApp, claims, doc, sign, spawn_app_with};
use crate::durable::pg_proxy::PgProxy;
use crate::support::wait_until;

/// Bound on one line (or the exit) of the tail process.
const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway whose `retry:` is short, so a dropped tail comes back quickly.
async fn app() -> TestApp {
    spawn_app_with(Options {
        tweak: Box::new(|s| s.sse_retry_ms = 200),
        ..Default::default()
    })
    .await
}

fn tail(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_jobcast"))
        .arg("tail")
        .args(args)
        .env("JWT_SECRET", crate::app::SECRET)
        .env_remove("JOBCAST_TOKEN")
        .env_remove("JWT_AUDIENCE")
        .env_remove("JWT_ISSUER")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn jobcast tail")
}

fn lines(child: &mut Child) -> Lines<BufReader<ChildStdout>> {
    BufReader::new(child.stdout.take().expect("stdout")).lines()
}

async fn next_seq(out: &mut Lines<BufReader<ChildStdout>>) -> i64 {
    let line = tokio::time::timeout(LINE_TIMEOUT, out.next_line())
        .await
        .expect("a line in time")
        .expect("read stdout")
        .expect("a line before the end");
    let doc: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON line ({e}): {line}"));
    doc["seq"].as_i64().expect("seq")
}

async fn exit_of(mut child: Child) -> (std::process::ExitStatus, String) {
    let status = tokio::time::timeout(LINE_TIMEOUT, child.wait())
        .await
        .expect("tail exits in time")
        .expect("wait");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut err).await;
    }
    (status, err)
}

#[tokio::test]
async fn tail_prints_each_state_as_a_json_line_and_exits_0_after_done() {
    let app = app().await;
    app.set("t", &doc(1, "running")).await;
    let url = format!("http://{}", app.addr);
    let mut child = tail(&["t", "--url", &url]);
    let mut out = lines(&mut child);
    assert_eq!(next_seq(&mut out).await, 1, "the current state first");
    app.set("t", &doc(2, "running")).await;
    assert_eq!(next_seq(&mut out).await, 2);
    app.set("t", &doc(3, "completed")).await;
    assert_eq!(next_seq(&mut out).await, 3);
    let (status, err) = exit_of(child).await;
    assert!(status.success(), "exit 0 after done, got {status:?}: {err}");
    assert!(
        out.next_line().await.expect("read").is_none(),
        "nothing after the terminal state"
    );
}

#[tokio::test]
async fn tail_resumes_after_dropped_connections_without_printing_a_state_twice() {
    let app = app().await;
    let proxy = PgProxy::start(app.addr).await;
    let key = app.key("r");
    app.set("r", &doc(1, "running")).await;
    let url = format!("http://127.0.0.1:{}", proxy.port());
    // A user token (not minted): the resumed stream is authorised the same way.
    let token = sign(&claims("alice"));
    let mut child = tail(&["r", "--url", &url, "--token", &token]);
    let mut out = lines(&mut child);
    assert_eq!(next_seq(&mut out).await, 1);

    // Drop the connection with nothing new meanwhile: the resumed stream
    // (Last-Event-ID: 1) must not print state 1 again.
    proxy.cut();
    wait_until(LINE_TIMEOUT, "the gateway sees the tail gone", || async {
        app.numsub(&key).await == 0
    })
    .await;
    proxy.restore();
    wait_until(LINE_TIMEOUT, "the tail is back", || async {
        app.numsub(&key).await == 1
    })
    .await;
    app.set("r", &doc(2, "running")).await;
    assert_eq!(next_seq(&mut out).await, 2, "state 1 is not repeated");

    // Drop it again and write a state while it is away: resumed, it gets it.
    proxy.cut();
    wait_until(LINE_TIMEOUT, "the gateway sees the tail gone", || async {
        app.numsub(&key).await == 0
    })
    .await;
    app.set("r", &doc(3, "running")).await;
    proxy.restore();
    assert_eq!(next_seq(&mut out).await, 3, "the state written meanwhile");
    app.set("r", &doc(4, "completed")).await;
    assert_eq!(next_seq(&mut out).await, 4);
    let (status, err) = exit_of(child).await;
    assert!(status.success(), "exit 0 after done, got {status:?}: {err}");
}

#[tokio::test]
async fn tail_exits_non_zero_with_the_reason_on_401_403_404() {
    let app = app().await;
    app.set("j", &doc(1, "running")).await;
    let url = format!("http://{}", app.addr);
    let mallory = sign(&claims("mallory"));
    let cases = [
        (
            vec!["j", "--url", &url, "--token", "not-a-jwt"],
            "401",
            "malformed",
        ),
        (
            vec!["j", "--url", &url, "--token", &mallory],
            "403",
            "may not watch",
        ),
        // The minted admin token is allowed by claim, so an unknown job is 404.
        (vec!["nope", "--url", &url], "404", "not known"),
    ];
    for (args, status_code, reason) in cases {
        let child = tail(&args);
        let (status, err) = exit_of(child).await;
        assert!(
            !status.success(),
            "{status_code}: non-zero exit, stderr: {err}"
        );
        assert!(
            err.contains(status_code) && err.contains(reason),
            "{status_code}: stderr names the status and the reason: {err}"
        );
    }
}
