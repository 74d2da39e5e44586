//! The browser client on streams of many jobs, in a real headless Chromium
//! against a jobcast process of its own (so that `/metrics` counts this test's
//! connections only): the project dashboard (`/?group=`) follows twelve jobs
//! of one group live over ONE connection; two tabs share one connection;
//! closing the tab that holds it hands the stream to the other without losing
//! a `done`; a job that goes silent shows its stalled badge until its next
//! state (on the dashboard and on the single-job page); and `watchMany()`
//! follows a list to its end over each transport.
//!
//! Screenshots go to `target/test-artifacts/`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::app::{claims, sign};
use crate::child::ChildApp;
use crate::clients::Gateway;
use crate::support::chromium::{Page, artifact_path};
use crate::support::{Chromium, RedisServer, wait_until};

/// Bound on the page noticing a state the test caused.
const PAGE_TIMEOUT: Duration = Duration::from_secs(15);
const GROUP: &str = "proj-7";
/// The gateway's defaults for job keys and group sets.
const KEY_PREFIX: &str = "progress:job:";
const GROUP_PREFIX: &str = "progress:group:";
const TTL_SECS: u64 = 7200;

/// A gateway process, its Redis, and a worker's connection to it.
struct Project {
    child: ChildApp,
    conn: redis::aio::MultiplexedConnection,
    _redis: RedisServer,
}

impl Project {
    async fn start() -> Project {
        let redis = RedisServer::start().await;
        let child = ChildApp::spawn(&redis.url(), &[]).await;
        let conn = redis.connection().await;
        Project {
            child,
            conn,
            _redis: redis,
        }
    }

    /// A project whose `n` jobs are each at state `seq` of `total`.
    async fn with_jobs(n: usize, seq: i64, total: i64) -> (Project, Vec<String>) {
        let p = Project::start().await;
        let jobs: Vec<String> = (1..=n).map(|i| format!("job-{i:02}")).collect();
        for job in &jobs {
            p.write(job, doc(job, seq, total)).await;
        }
        (p, jobs)
    }

    /// A token for alice that may watch the group.
    fn token(&self) -> String {
        let mut c = claims("alice");
        c.groups = vec![GROUP.into()];
        sign(&c)
    }

    fn dashboard_url(&self) -> String {
        self.child
            .url(&format!("/?group={GROUP}&token={}", self.token()))
    }

    /// Writes a job's state as a worker in the group does: the state key, and
    /// the job's membership of the group's set, both with a TTL.
    async fn write(&self, job: &str, doc: Value) {
        let mut c = self.conn.clone();
        let set = format!("{GROUP_PREFIX}{GROUP}");
        let _: () = redis::pipe()
            .atomic()
            .sadd(&set, job)
            .ignore()
            .expire(&set, TTL_SECS as i64)
            .ignore()
            .set_ex(format!("{KEY_PREFIX}{job}"), doc.to_string(), TTL_SECS)
            .ignore()
            .query_async(&mut c)
            .await
            .expect("SADD + SET");
    }

    /// Open streams of every transport (the `jobcast_connections` gauge).
    async fn connections(&self) -> f64 {
        self.child.metric("jobcast_connections", "").await
    }

    /// Waits until the gauge reads `want` (a closed tab's stream takes a moment to go).
    async fn wait_connections(&self, want: f64, what: &str) {
        wait_until(PAGE_TIMEOUT, what, || async {
            self.connections().await == want
        })
        .await;
    }
}

/// State `seq` of `total` of `job` (`seq == total` completes it).
fn doc(job: &str, seq: i64, total: i64) -> Value {
    json!({
        "seq": seq,
        "job_id": job,
        "owner_id": "alice",
        "group_id": GROUP,
        "status": if seq == total { "completed" } else { "running" },
        "stage": "solving",
        "overall_progress": (seq - 1) as f64 * 100.0 / (total - 1) as f64,
    })
}

/// `data-`attribute `attr` of the running row of `job` (None while it has no row).
async fn row_attr(page: &Page, job: &str, attr: &str) -> Option<String> {
    let expr =
        format!("document.querySelector('#jobs li[data-job={job:?}]')?.dataset.{attr} ?? null");
    page.eval(&expr)
        .await
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
}

/// Waits until every running row shows the state with id `seq`.
async fn wait_rows_at(page: &Page, jobs: &[String], seq: i64) {
    let expr = format!(
        "(() => {{ const rows = [...document.querySelectorAll('#jobs li')]; \
         return rows.length === {n} && rows.every(li => li.dataset.seq === '{seq}'); }})()",
        n = jobs.len()
    );
    page.wait_js(&expr, &format!("every row shows state {seq}"), PAGE_TIMEOUT)
        .await;
}

async fn wait_role(page: &Page, role: &str) {
    page.wait_js(
        &format!("document.getElementById('group-role')?.dataset.role === {role:?}"),
        &format!("this tab is the {role}"),
        PAGE_TIMEOUT,
    )
    .await;
}

/// The states the page delivered for `job`, in order (`window.__jobcastGroup.seen`).
async fn seen(page: &Page, job: &str) -> Vec<i64> {
    let v = page
        .eval(&format!("window.__jobcastGroup.seen[{job:?}] || []"))
        .await
        .expect("seen");
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("numeric id"))
        .collect()
}

fn assert_strictly_increasing(ids: &[i64], what: &str) {
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "{what}: states must strictly increase (no duplicate, no step back): {ids:?}"
    );
}

/// Opens the dashboard in a new tab and waits until it shows `running` rows.
async fn open_dashboard(browser: &Chromium, p: &Project, running: usize) -> Page {
    let page = browser.new_page().await;
    page.goto(&p.dashboard_url()).await;
    page.wait_text("group-conn", "Live", PAGE_TIMEOUT).await;
    page.wait_text("running-count", &running.to_string(), PAGE_TIMEOUT)
        .await;
    page
}

/// Two tabs of one browser on the dashboard: the first holds the connection,
/// the second follows it.
async fn holder_and_follower(browser: &Chromium, p: &Project, jobs: &[String]) -> (Page, Page) {
    let a = open_dashboard(browser, p, jobs.len()).await;
    wait_role(&a, "holder").await;
    let b = open_dashboard(browser, p, jobs.len()).await;
    wait_role(&b, "follower").await;
    (a, b)
}

#[tokio::test]
async fn dashboard_follows_twelve_jobs_of_a_group_live_over_one_connection() {
    let total = 6;
    let (p, jobs) = Project::with_jobs(12, 1, total).await;
    let browser = Chromium::launch().await;
    let page = open_dashboard(&browser, &p, jobs.len()).await;
    wait_rows_at(&page, &jobs, 1).await;
    assert_eq!(p.connections().await, 1.0, "twelve jobs, one connection");

    // Every step of every job reaches the page before the next is written:
    // twelve bars move live (six would be the browser's limit per origin
    // with one connection per job).
    for seq in 2..total {
        for job in &jobs {
            p.write(job, doc(job, seq, total)).await;
        }
        wait_rows_at(&page, &jobs, seq).await;
        assert_eq!(p.connections().await, 1.0, "still one connection at {seq}");
    }
    page.wait_at_rest(PAGE_TIMEOUT).await;
    page.screenshot(&artifact_path("dashboard-twelve-jobs.png"))
        .await;

    for job in &jobs {
        p.write(job, doc(job, total, total)).await;
    }
    page.wait_text("finished-count", "12", PAGE_TIMEOUT).await;
    page.wait_text("running-count", "0", PAGE_TIMEOUT).await;
    let done = page.eval("window.__jobcastGroup.done").await.expect("done");
    for job in &jobs {
        assert_eq!(done[job], "completed", "{job} ended completed: {done}");
        let ids = seen(&page, job).await;
        assert_strictly_increasing(&ids, job);
        assert_eq!(
            ids[..(total - 1) as usize],
            (1..total).collect::<Vec<_>>(),
            "{job}: every state was shown"
        );
    }
    assert_eq!(p.connections().await, 1.0, "a group stream stays open");
    page.screenshot(&artifact_path("dashboard-finished.png"))
        .await;
}

#[tokio::test]
async fn the_dashboard_follows_a_group_over_websocket_and_long_poll_too() {
    let (p, jobs) = Project::with_jobs(3, 1, 10).await;
    let browser = Chromium::launch().await;
    for (step, transport) in [(2, "ws"), (3, "poll")] {
        let page = browser.new_page().await;
        page.goto(&format!("{}&transports={transport}", p.dashboard_url()))
            .await;
        page.wait_text("group-transport", transport, PAGE_TIMEOUT)
            .await;
        page.wait_text("running-count", "3", PAGE_TIMEOUT).await;
        for job in &jobs {
            p.write(job, doc(job, step, 10)).await;
        }
        wait_rows_at(&page, &jobs, step).await;
        // A long-poll is a connection while it waits (between two of them
        // the gauge may read 0 for a moment): one, never more.
        p.wait_connections(1.0, &format!("{transport}: one connection"))
            .await;
        assert!(p.connections().await <= 1.0, "{transport}: one connection");
        // Closed, so that the next tab holds its own connection.
        page.close().await;
        p.wait_connections(0.0, "the closed tab's connection is gone")
            .await;
    }
}

#[tokio::test]
async fn two_tabs_of_a_browser_share_one_connection() {
    let (p, jobs) = Project::with_jobs(3, 1, 5).await;
    let browser = Chromium::launch().await;
    let (a, b) = holder_and_follower(&browser, &p, &jobs).await;
    assert_eq!(p.connections().await, 1.0, "two tabs, one connection");

    for seq in 2..=3 {
        for job in &jobs {
            p.write(job, doc(job, seq, 5)).await;
        }
        wait_rows_at(&a, &jobs, seq).await;
        wait_rows_at(&b, &jobs, seq).await;
    }
    assert_eq!(
        b.text("group-transport").await.as_deref(),
        Some("sse"),
        "the follower shows the holder's transport"
    );
    for job in &jobs {
        assert_strictly_increasing(&seen(&b, job).await, job);
    }
    assert_eq!(p.connections().await, 1.0, "still one connection");
    wait_role(&a, "holder").await;
}

#[tokio::test]
async fn closing_the_holder_tab_hands_over_without_losing_done() {
    let total = 5;
    let (p, jobs) = Project::with_jobs(3, 2, total).await;
    let browser = Chromium::launch().await;
    let (a, b) = holder_and_follower(&browser, &p, &jobs).await;
    wait_rows_at(&b, &jobs, 2).await;

    // One job ends as the holder tab closes, another just after: the tab
    // that takes over resumes from the last cursor it was given.
    p.write(&jobs[0], doc(&jobs[0], total, total)).await;
    a.close().await;
    p.write(&jobs[1], doc(&jobs[1], total, total)).await;
    p.write(&jobs[2], doc(&jobs[2], 3, total)).await;

    wait_role(&b, "holder").await;
    b.wait_text("finished-count", "2", PAGE_TIMEOUT).await;
    let done = b.eval("window.__jobcastGroup.done").await.expect("done");
    assert_eq!(done[&jobs[0]], "completed", "{done}");
    assert_eq!(done[&jobs[1]], "completed", "{done}");
    wait_until(PAGE_TIMEOUT, "the running job moves on", || async {
        row_attr(&b, &jobs[2], "seq").await.as_deref() == Some("3")
    })
    .await;
    for job in &jobs {
        assert_strictly_increasing(&seen(&b, job).await, job);
    }
    p.wait_connections(1.0, "the new holder's connection is the only one")
        .await;
    b.wait_text("group-conn", "Live", PAGE_TIMEOUT).await;
}

#[tokio::test]
async fn a_reload_shows_the_remembered_jobs_at_once_and_resumes() {
    let total = 4;
    let (p, jobs) = Project::with_jobs(2, 1, total).await;
    let browser = Chromium::launch().await;
    let page = open_dashboard(&browser, &p, jobs.len()).await;
    p.write(&jobs[0], doc(&jobs[0], total, total)).await;
    p.write(&jobs[1], doc(&jobs[1], 2, total)).await;
    page.wait_text("finished-count", "1", PAGE_TIMEOUT).await;
    wait_until(PAGE_TIMEOUT, "the running job shows state 2", || async {
        row_attr(&page, &jobs[1], "seq").await.as_deref() == Some("2")
    })
    .await;

    page.reload().await;
    page.wait_text("group-conn", "Live", PAGE_TIMEOUT).await;
    page.wait_text("finished-count", "1", PAGE_TIMEOUT).await;
    p.write(&jobs[1], doc(&jobs[1], 3, total)).await;
    wait_until(
        PAGE_TIMEOUT,
        "the running job moves on after the reload",
        || async { row_attr(&page, &jobs[1], "seq").await.as_deref() == Some("3") },
    )
    .await;
    let cached = page
        .eval("window.__jobcastGroup.cached")
        .await
        .expect("cached");
    assert_eq!(
        cached,
        json!([&jobs[0], &jobs[1]]),
        "both jobs were shown from localStorage first"
    );
    // The remembered state, then only what came after it: nothing twice.
    assert_eq!(seen(&page, &jobs[1]).await, [2, 3]);
    assert_eq!(
        seen(&page, &jobs[0]).await.len(),
        1,
        "the finished job's remembered state, and nothing re-sent"
    );
    let done = page.eval("window.__jobcastGroup.done").await.expect("done");
    assert_eq!(done[&jobs[0]], "completed", "{done}");
}

#[tokio::test]
async fn a_job_that_goes_silent_shows_stalled_until_its_next_state() {
    let p = Project::start().await;
    let mut quiet = doc("quiet", 1, 5);
    quiet["stall_after_s"] = json!(1);
    p.write("quiet", quiet).await;
    p.write("busy", doc("busy", 1, 5)).await;
    let browser = Chromium::launch().await;
    let page = open_dashboard(&browser, &p, 2).await;

    wait_until(PAGE_TIMEOUT, "the silent job shows stalled", || async {
        row_attr(&page, "quiet", "stalled").await.as_deref() == Some("true")
    })
    .await;
    let badge = page
        .eval("document.querySelector('#jobs li[data-job=\"quiet\"] .stalled-badge').textContent")
        .await
        .expect("badge");
    assert!(
        badge.as_str().is_some_and(|t| t.contains("stalled")),
        "the badge says so: {badge}"
    );
    assert_eq!(
        row_attr(&page, "busy", "stalled").await.as_deref(),
        Some("false"),
        "the job within its stall time is not stalled"
    );
    page.wait_at_rest(PAGE_TIMEOUT).await;
    page.screenshot(&artifact_path("dashboard-stalled.png"))
        .await;

    // Its next state clears the badge.
    let mut next = doc("quiet", 2, 5);
    next["stall_after_s"] = json!(600);
    p.write("quiet", next).await;
    wait_until(PAGE_TIMEOUT, "the next state clears stalled", || async {
        row_attr(&page, "quiet", "stalled").await.as_deref() == Some("false")
    })
    .await;
    assert_eq!(row_attr(&page, "quiet", "seq").await.as_deref(), Some("2"));
}

/// The single-job page shows the same stalled state (`watch()`'s `onStalled`).
#[tokio::test]
async fn the_job_page_shows_a_silent_job_stalled_until_its_next_state() {
    let p = Project::start().await;
    let mut quiet = doc("quiet", 1, 5);
    quiet["stall_after_s"] = json!(1);
    p.write("quiet", quiet).await;
    let browser = Chromium::launch().await;
    let page = browser.new_page().await;
    page.goto(&p.child.url(&format!("/?job=quiet&token={}", p.token())))
        .await;
    page.wait_text("conn-state", "Live", PAGE_TIMEOUT).await;
    let badge = "(() => { const b = document.getElementById('stalled'); return b.hidden ? '' : b.textContent; })()";
    page.wait_js(
        &format!("{badge}.includes('stalled')"),
        "the badge shows the silent job stalled",
        PAGE_TIMEOUT,
    )
    .await;
    let mut next = doc("quiet", 2, 5);
    next["stall_after_s"] = json!(600);
    p.write("quiet", next).await;
    page.wait_js(
        &format!("{badge} === ''"),
        "the next state clears the badge",
        PAGE_TIMEOUT,
    )
    .await;
    page.wait_text("overall-pct", "25%", PAGE_TIMEOUT).await;
}

#[tokio::test]
async fn watch_many_follows_a_list_to_its_end_over_each_transport() {
    let p = Project::start().await;
    let browser = Chromium::launch().await;
    let page = browser.new_page().await;
    // Any page of the gateway's origin will do: the test drives the module.
    page.open(&p.child.url("/healthz"), PAGE_TIMEOUT).await;
    page.wait_js(
        "document.readyState === 'complete'",
        "the origin page loads",
        PAGE_TIMEOUT,
    )
    .await;
    let total = 4;
    for transport in ["sse", "poll", "ws"] {
        let jobs: Vec<String> = (1..=3).map(|i| format!("{transport}-{i}")).collect();
        for job in &jobs {
            p.write(job, doc(job, 1, total)).await;
        }
        let script = format!(
            r#"(async () => {{
                const m = await import('/static/jobcast.js');
                const r = window.__many = {{ seen: {{}}, done: {{}}, states: [], errors: [], transports: [] }};
                r.handle = m.watchMany({jobs:?}, {{
                    token: {token:?},
                    transports: [{transport:?}],
                    resume: false,
                    shared: false,
                    onProgress: (job, doc, meta) => (r.seen[job] ||= []).push(Number(meta.id)),
                    onDone: (job, status) => {{ r.done[job] = status; }},
                    onState: (s) => r.states.push(s),
                    onTransport: (t) => r.transports.push(t),
                    onError: (e) => r.errors.push(String(e && e.code)),
                }});
                return true;
            }})()"#,
            token = p.token(),
        );
        page.eval(&script).await.expect("watchMany() starts");
        page.wait_js(
            "window.__many.states.includes('live')",
            &format!("{transport}: live"),
            PAGE_TIMEOUT,
        )
        .await;
        for seq in 2..=total {
            for job in &jobs {
                p.write(job, doc(job, seq, total)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await; // pacing, not synchronisation
        }
        page.wait_js(
            "window.__many.handle.state === 'done'",
            &format!("{transport}: the list ends when every job ended"),
            PAGE_TIMEOUT,
        )
        .await;
        let r = page.eval("window.__many").await.expect("result");
        assert_eq!(r["errors"], json!([]), "{transport}: no error: {r}");
        assert_eq!(r["transports"], json!([transport]), "{transport}: {r}");
        for job in &jobs {
            assert_eq!(r["done"][job], "completed", "{transport}: {r}");
            let ids: Vec<i64> = r["seen"][job]
                .as_array()
                .unwrap_or_else(|| panic!("{transport}: {job} seen: {r}"))
                .iter()
                .filter_map(Value::as_i64)
                .collect();
            assert_strictly_increasing(&ids, job);
            assert!(!ids.is_empty(), "{transport}: {job} delivered states: {r}");
        }
        p.wait_connections(
            0.0,
            &format!("{transport}: the ended list closed its connection"),
        )
        .await;
    }
}
