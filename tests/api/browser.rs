//! The demo page (`static/index.html` + `static/jobcast.js`) in a real headless
//! Chromium, loaded THROUGH the strict nginx, watching a job the test drives
//! like a worker: it reaches 100% and "done" over SSE, falls back to WebSocket
//! when nginx refuses the SSE route and to long-poll when it refuses both, and
//! a reload mid-job resumes without a duplicate or a step backwards.
//!
//! Screenshots of the finished page go to `target/test-artifacts/`.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::Value;

use crate::app::{TestApp, spawn_app};
use crate::support::chromium::{Page, artifact_path};
use crate::support::{Chromium, Nginx, wait_for};

/// Bound on the page noticing a state the test caused.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Progress documents before the terminal one, and the pause between writes.
const STEPS: i64 = 10;
const STEP_INTERVAL: Duration = Duration::from_millis(150);
const STAGES: [&str; 4] = ["queued", "fetching_data", "solving", "writing_report"];

/// Progress document `seq` of `total` (`seq == total` completes the job).
fn progress_doc(seq: i64, total: i64) -> String {
    let pct = (seq - 1) as f64 * 100.0 / (total - 1) as f64;
    // Equal quarters; the last one ends at 100%.
    let quarter = 100.0 / STAGES.len() as f64;
    let stage_index = ((pct / quarter) as usize).min(STAGES.len() - 1);
    let stage_progress = (pct - quarter * stage_index as f64) * STAGES.len() as f64;
    let status = if seq == total { "completed" } else { "running" };
    serde_json::json!({
        "seq": seq,
        "owner_id": "alice",
        "status": status,
        "stage": STAGES[stage_index],
        "stages": STAGES,
        "stage_progress": stage_progress,
        "overall_progress": pct,
        "eta_seconds": (total - seq) as f64 * 0.15,
    })
    .to_string()
}

/// `/?job=..&token=..` on the proxy, plus `extra` query parameters.
fn page_url(nginx: &Nginx, app: &TestApp, job: &str, extra: &str) -> String {
    nginx.url(&format!("/?job={job}&token={}{extra}", app.token("alice")))
}

/// The ids the page delivered to its UI, in order (`window.__jobcast.ids`),
/// or `None` while the page (re)loads.
async fn page_ids(page: &Page) -> Option<Vec<i64>> {
    let v = page
        .eval("window.__jobcast ? window.__jobcast.ids.slice() : null")
        .await
        .ok()?;
    let ids = v.as_array()?;
    Some(
        ids.iter()
            .map(|id| match id {
                Value::String(s) => s.parse().expect("numeric id"),
                Value::Number(n) => n.as_i64().expect("integer id"),
                other => panic!("unexpected id {other:?}"),
            })
            .collect(),
    )
}

fn assert_strictly_increasing(ids: &[i64], what: &str) {
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "{what}: ids must strictly increase (no duplicate, no step back): {ids:?}"
    );
}

/// Writes documents 2..=total, `STEP_INTERVAL` apart, as a worker would.
async fn drive_job(app: &TestApp, job: &str, total: i64) {
    let mut redis = app.redis().await;
    let key = app.key(job);
    for seq in 2..=total {
        let _: () = redis
            .set_ex(&key, progress_doc(seq, total), 7200)
            .await
            .expect("SET");
        // Pacing, not synchronisation: a job that takes a moment.
        tokio::time::sleep(STEP_INTERVAL).await;
    }
}

/// The whole scenario for one transport: the page loads through `nginx`,
/// connects over `transport`, the test drives the job to completion, and the
/// page shows 100% and "done". Leaves a screenshot named `shot`.
async fn page_follows_job_to_done(nginx: &Nginx, app: &TestApp, transport: &str, shot: &str) {
    let total = STEPS + 1;
    app.set("job1", &progress_doc(1, total)).await;
    let browser = Chromium::launch().await;
    let page = browser.new_page().await;

    page.goto(&page_url(nginx, app, "job1", "")).await;
    page.wait_text("transport", transport, PAGE_TIMEOUT).await;
    page.wait_text("conn-state", "Live", PAGE_TIMEOUT).await;

    drive_job(app, "job1", total).await;

    page.wait_text("status", "done", PAGE_TIMEOUT).await;
    page.wait_text("overall-pct", "100%", PAGE_TIMEOUT).await;
    page.wait_at_rest(PAGE_TIMEOUT).await;
    let path = artifact_path(shot);
    page.screenshot(&path).await;
    eprintln!("screenshot of the finished page: {}", path.display());

    let ids = page_ids(&page).await.expect("window.__jobcast.ids");
    assert_strictly_increasing(&ids, transport);
    assert_eq!(ids.last(), Some(&total), "the terminal document was shown");
    assert!(
        ids.len() >= 3,
        "the page followed the job live, not just its end: {ids:?}"
    );
    assert_eq!(
        page.text("transport").await.as_deref(),
        Some(transport),
        "the transport did not change during the job"
    );
    assert_eq!(
        page.text("error").await.as_deref(),
        Some(""),
        "no error shown"
    );
}

#[tokio::test]
async fn demo_page_through_strict_nginx_reaches_done_over_sse() {
    let app = spawn_app().await;
    let nginx = Nginx::strict(app.addr.port()).start().await;
    page_follows_job_to_done(&nginx, &app, "sse", "demo-page-sse.png").await;
}

#[tokio::test]
async fn demo_page_falls_back_to_websocket_when_nginx_blocks_sse() {
    let app = spawn_app().await;
    let nginx = Nginx::strict(app.addr.port()).block_sse().start().await;
    page_follows_job_to_done(&nginx, &app, "ws", "demo-page-ws.png").await;
}

#[tokio::test]
async fn demo_page_falls_back_to_long_poll_when_nginx_blocks_sse_and_ws() {
    let app = spawn_app().await;
    let nginx = Nginx::strict(app.addr.port())
        .block_sse()
        .block_ws()
        .start()
        .await;
    page_follows_job_to_done(&nginx, &app, "poll", "demo-page-poll.png").await;
}

#[tokio::test]
async fn page_reload_mid_job_resumes_without_duplicate_or_backwards_step() {
    let app = spawn_app().await;
    let nginx = Nginx::strict(app.addr.port()).start().await;
    let total = 30;
    app.set("job1", &progress_doc(1, total)).await;
    let browser = Chromium::launch().await;
    let page = browser.new_page().await;
    page.goto(&page_url(&nginx, &app, "job1", "")).await;
    page.wait_text("transport", "sse", PAGE_TIMEOUT).await;

    // The worker keeps writing while the user reloads.
    let worker = {
        let redis = app.redis.client();
        let key = app.key("job1");
        tokio::spawn(async move {
            let mut redis = redis
                .get_multiplexed_async_connection()
                .await
                .expect("redis");
            for seq in 2..=total {
                let _: () = redis
                    .set_ex(&key, progress_doc(seq, total), 7200)
                    .await
                    .expect("SET");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let before = wait_for(PAGE_TIMEOUT, "the page has shown 5 updates", || async {
        page_ids(&page).await.filter(|ids| ids.len() >= 5)
    })
    .await;
    page.screenshot(&artifact_path("demo-page-mid-job.png"))
        .await;
    page.reload().await;
    page.wait_text("status", "done", PAGE_TIMEOUT).await;
    tokio::time::timeout(PAGE_TIMEOUT, worker)
        .await
        .expect("worker finished")
        .expect("worker");
    let after = page_ids(&page).await.expect("ids after reload");
    let first_log = page
        .eval("document.querySelector('#log').lastElementChild.textContent")
        .await
        .expect("event log");
    eprintln!("ids before reload {before:?}; after reload {after:?}");

    assert_strictly_increasing(&before, "before reload");
    assert_strictly_increasing(&after, "after reload");
    // The reloaded page first shows what this browser already had (from
    // localStorage), at or after the last id seen before reload, then resumes.
    assert!(
        first_log.as_str().is_some_and(|t| t.contains("cached")),
        "the reloaded page starts from the remembered state: {first_log}"
    );
    assert!(
        after[0] >= *before.last().unwrap(),
        "a step backwards across the reload: before {before:?}, after {after:?}"
    );
    assert_eq!(after.last(), Some(&total), "the reloaded page saw the end");
    assert!(
        after.len() >= 2,
        "the reloaded page got live updates: {after:?}"
    );
    page.wait_text("overall-pct", "100%", PAGE_TIMEOUT).await;
}

/// A stream ends at its token's `exp`; the browser client asks its
/// `getToken` callback for a fresh token and resumes, on SSE and on WebSocket,
/// without a duplicate or a step backwards.
#[tokio::test]
async fn client_renews_an_expired_token_through_get_token_and_resumes() {
    for transport in ["sse", "ws"] {
        let app = spawn_app().await;
        let job = format!("renew-{transport}");
        app.set(&job, &progress_doc(1, 6)).await;
        let mut short = crate::app::claims("alice");
        short.exp = jobcast::auth::claims::now_secs() + 3;
        let short = crate::app::sign(&short);
        let fresh = app.token("alice");

        let browser = Chromium::launch().await;
        let page = browser.new_page().await;
        // Any page of the gateway's origin will do: the test drives the module.
        page.open(&app.url("/healthz"), PAGE_TIMEOUT).await;
        let script = format!(
            r#"(async () => {{
                const m = await import('/static/jobcast.js');
                window.__seen = []; window.__renewals = 0; window.__done = false; window.__errors = [];
                window.__h = m.watch({job:?}, {{
                    token: {short:?},
                    transports: [{transport:?}],
                    resume: false,
                    getToken: async () => {{ window.__renewals += 1; return {fresh:?}; }},
                    onProgress: (doc) => window.__seen.push(doc.seq),
                    onDone: () => {{ window.__done = true; }},
                    onError: (e) => window.__errors.push(String(e && e.code)),
                }});
                return true;
            }})()"#
        );
        page.eval(&script).await.expect("watch() starts");
        page.wait_js(
            "window.__seen.includes(1)",
            "the first state arrives",
            PAGE_TIMEOUT,
        )
        .await;

        // Past the short token's exp, the gateway ends the stream with token_expired.
        page.wait_js(
            "window.__renewals >= 1",
            "getToken is asked for a fresh token",
            PAGE_TIMEOUT,
        )
        .await;
        for seq in 2..=6 {
            app.set(&job, &progress_doc(seq, 6)).await;
            tokio::time::sleep(STEP_INTERVAL).await;
        }
        page.wait_js(
            "window.__done === true",
            "the job is followed to done",
            PAGE_TIMEOUT,
        )
        .await;
        let seen = page.eval("window.__seen").await.expect("seen");
        let seen: Vec<i64> = seen
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_i64)
            .collect();
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "{transport}: strictly increasing, got {seen:?}"
        );
        assert_eq!(
            seen.last(),
            Some(&6),
            "{transport}: reached the terminal state, got {seen:?}"
        );
        let errors = page.eval("window.__errors").await.expect("errors");
        assert_eq!(
            errors,
            serde_json::json!([]),
            "{transport}: no error surfaced to the app"
        );
    }
}

/// A running job that goes silent: the browser client calls `onStalled` with
/// the seconds of silence, and with `null` when the next state comes, on
/// every transport (long-poll reads `X-Jobcast-Stalled`).
#[tokio::test]
async fn client_reports_a_silent_job_stalled_until_its_next_state_on_every_transport() {
    let browser = Chromium::launch().await;
    for transport in ["sse", "ws", "poll"] {
        let app = spawn_app().await;
        let job = format!("silent-{transport}");
        app.set(
            &job,
            r#"{"seq":1,"owner_id":"alice","status":"running","stall_after_s":1}"#,
        )
        .await;
        let token = app.token("alice");
        let page = browser.new_page().await;
        page.open(&app.url("/healthz"), PAGE_TIMEOUT).await;
        let script = format!(
            r#"(async () => {{
                const m = await import('/static/jobcast.js');
                window.__seen = []; window.__stalled = []; window.__errors = [];
                window.__h = m.watch({job:?}, {{
                    token: {token:?},
                    transports: [{transport:?}],
                    resume: false,
                    onProgress: (doc) => window.__seen.push(doc.seq),
                    onStalled: (s) => window.__stalled.push(s),
                    onError: (e) => window.__errors.push(String(e && e.code)),
                }});
                return true;
            }})()"#
        );
        page.eval(&script).await.expect("watch() starts");
        page.wait_js(
            "window.__stalled.some((s) => typeof s === 'number' && s >= 1)",
            &format!("{transport}: onStalled with the seconds of silence"),
            PAGE_TIMEOUT,
        )
        .await;
        app.set(
            &job,
            r#"{"seq":2,"owner_id":"alice","status":"running","stall_after_s":60}"#,
        )
        .await;
        page.wait_js(
            "window.__seen.includes(2) && window.__stalled[window.__stalled.length - 1] === null",
            &format!("{transport}: the next state clears it"),
            PAGE_TIMEOUT,
        )
        .await;
        let errors = page.eval("window.__errors").await.expect("errors");
        assert_eq!(errors, serde_json::json!([]), "{transport}");
        page.eval("window.__h.close(); true").await.expect("close");
    }
}
