//! Durable state: Postgres snapshots when Redis has none,
//! Postgres as a push source (LISTEN/NOTIFY), streams that survive a Redis
//! crash, the write-behind and its seq guard, the retention sweep, and a
//! Postgres that goes away mid-stream. Every test has its own database.

pub mod pg_proxy;

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use jobcast::config::Secret;
use jobcast::event::{Source, Update};
use jobcast::job::{DocRules, JobId, ProgressDoc};
use jobcast::store::Store;
use jobcast::store::write_behind::WriteBehind;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::time::Instant;

use crate::app::{Options, TestApp, spawn_app_with};
use crate::clients::{Gateway as _, Sse, Ws};
use crate::support::{TestDb, wait_for, wait_until};
use pg_proxy::PgProxy;

/// Bound on the write-behind reaching the row (one interval plus slack).
const WRITE_BEHIND_WAIT: Duration = Duration::from_secs(10);

async fn pg_app() -> TestApp {
    spawn_app_with(Options {
        postgres: true,
        ..Options::default()
    })
    .await
}

async fn pool(app: &TestApp) -> PgPool {
    app.db.as_ref().expect("test has a database").pool().await
}

async fn sse_watch(app: &TestApp, job: &str, auth: &str) -> Sse {
    let mut sse = app.sse(&format!("/jobs/{job}/events"), auth).await;
    assert_eq!(sse.status, 200, "SSE stream on {job} opens");
    sse.expect("connected").await;
    sse
}

async fn ws_watch(app: &TestApp, job: &str, auth: &str) -> Ws {
    let mut ws = app
        .ws_with(&format!("/jobs/{job}/ws"), &[("authorization", auth)])
        .await
        .unwrap_or_else(|(status, body)| panic!("ws on {job} refused: {status} {body}"));
    ws.expect("connected").await;
    ws
}

/// The next `progress` document on an SSE stream, within `bound` (pings skipped).
async fn sse_progress(sse: &mut Sse, bound: Duration) -> Value {
    let deadline = Instant::now() + bound;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match sse.next_within(left).await {
            Some(ev) if ev.event == "progress" => return ev.json(),
            Some(ev) if ev.event == ":comment" => continue,
            other => panic!("expected an SSE progress event, got {other:?}"),
        }
    }
}

/// The next `progress` document on a WebSocket, within `bound`.
async fn ws_progress(ws: &mut Ws, bound: Duration) -> Value {
    let frame = tokio::time::timeout(bound, ws.expect("progress"))
        .await
        .unwrap_or_else(|_| panic!("no ws progress within {bound:?}"));
    frame["data"].clone()
}

/// `(seq, snapshot, status, completed)` of a job's row.
async fn row(pool: &PgPool, job: &str) -> Option<(Option<i64>, Value, Option<String>, bool)> {
    sqlx::query_as::<_, (Option<i64>, Option<Value>, Option<String>, bool)>(
        "SELECT seq, snapshot, status, completed_at IS NOT NULL FROM jobcast.jobs WHERE id = $1",
    )
    .bind(job)
    .fetch_optional(pool)
    .await
    .expect("read the row")
    .map(|(seq, snap, status, done)| (seq, snap.unwrap_or(Value::Null), status, done))
}

async fn wait_row_seq(pool: &PgPool, job: &str, seq: i64) {
    wait_until(
        WRITE_BEHIND_WAIT,
        &format!("row {job} holds seq {seq}"),
        || async { row(pool, job).await.is_some_and(|r| r.0 == Some(seq)) },
    )
    .await;
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    let res = reqwest::get(app.url("/readyz")).await.expect("readyz");
    let status = res.status().as_u16();
    (status, res.json().await.expect("readyz JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crash_keeps_streams_open_and_pushes_from_postgres() {
    // Arrange: a stock Redis (notifications off until jobcast turns them on,
    // which a restart undoes), 50 SSE and 50 WS watchers on one job, its state
    // written behind.
    let mut app = spawn_app_with(Options {
        postgres: true,
        tweak: Box::new(|s| s.max_connections_per_user = 0),
        ..Options::default()
    })
    .await;
    let pool = pool(&app).await;
    let job = "crash";
    app.set(job, r#"{"seq":1,"owner_id":"alice","stage":"start"}"#)
        .await;
    let auth = app.bearer("alice");
    let mut sses = join_all((0..50).map(|_| sse_watch(&app, job, &auth))).await;
    let mut wss = join_all((0..50).map(|_| ws_watch(&app, job, &auth))).await;
    let firsts = join_all(
        sses.iter_mut()
            .map(|s| sse_progress(s, Duration::from_secs(5))),
    )
    .await;
    assert!(firsts.iter().all(|d| d["seq"] == 1));
    let firsts = join_all(
        wss.iter_mut()
            .map(|w| ws_progress(w, Duration::from_secs(5))),
    )
    .await;
    assert!(firsts.iter().all(|d| d["seq"] == 1));
    wait_row_seq(&pool, job, 1).await;

    // Act 1: Redis dies; a worker updates the row instead.
    app.redis.kill();
    let pushed_at = Instant::now();
    exec(
        &pool,
        r#"UPDATE jobcast.jobs SET snapshot = '{"seq":2,"owner_id":"alice","stage":"from-postgres"}', seq = 2 WHERE id = 'crash'"#,
    )
    .await;

    // Assert 1: every watcher, still connected, has it within 1 s.
    let bound = Duration::from_secs(1);
    let (sse_docs, ws_docs) = tokio::join!(
        join_all(sses.iter_mut().map(|s| sse_progress(s, bound))),
        join_all(wss.iter_mut().map(|w| ws_progress(w, bound))),
    );
    assert!(
        pushed_at.elapsed() < Duration::from_millis(1500),
        "pushed to all 100 watchers in about a second"
    );
    for doc in sse_docs.iter().chain(&ws_docs) {
        assert_eq!(doc["stage"], "from-postgres");
    }

    // Act 2: Redis returns (empty); the worker writes a newer state there.
    app.redis.restart().await;
    // Once the listener is back (its subscriptions are visible in Redis), a SET
    // is heard only if jobcast re-enabled the notifications a restart dropped.
    wait_until(
        Duration::from_secs(40),
        "the listener re-subscribes",
        || async { app.numsub(&app.keyspace_channel(job)).await >= 1 },
    )
    .await;
    app.set(job, r#"{"seq":3,"owner_id":"alice","stage":"redis-again"}"#)
        .await;

    // Assert 2: everyone gets it once the listener reconnected (backoff ≤ 8 s here).
    let bound = Duration::from_secs(30);
    let (sse_docs, ws_docs) = tokio::join!(
        join_all(sses.iter_mut().map(|s| sse_progress(s, bound))),
        join_all(wss.iter_mut().map(|w| ws_progress(w, bound))),
    );
    for doc in sse_docs.iter().chain(&ws_docs) {
        assert_eq!(doc["seq"], 3);
    }

    // Act 3 / Assert 3: the terminal state reaches everyone as `done`.
    app.set(job, r#"{"seq":4,"owner_id":"alice","status":"completed"}"#)
        .await;
    join_all(sses.iter_mut().map(|s| async move {
        assert_eq!(sse_progress(s, Duration::from_secs(5)).await["seq"], 4);
        assert_eq!(s.expect("done").await.json()["status"], "completed");
        s.expect_end().await;
    }))
    .await;
    join_all(wss.iter_mut().map(|w| async move {
        assert_eq!(ws_progress(w, Duration::from_secs(5)).await["seq"], 4);
        assert_eq!(w.expect("done").await["status"], "completed");
        assert_eq!(w.expect_close().await, 1000);
    }))
    .await;
}

#[tokio::test]
async fn deleted_or_expired_key_serves_the_postgres_snapshot() {
    // Arrange: two jobs watched once, so their states are written behind.
    let app = pg_app().await;
    let pool = pool(&app).await;
    let auth = app.bearer("alice");
    for job in ["gone", "expired"] {
        app.set(job, r#"{"seq":7,"owner_id":"alice","stage":"kept"}"#)
            .await;
        let mut sse = sse_watch(&app, job, &auth).await;
        assert_eq!(
            sse_progress(&mut sse, Duration::from_secs(5)).await["seq"],
            7
        );
        wait_row_seq(&pool, job, 7).await;
    }

    // Act: one key is deleted, the other expires.
    let mut r = app.redis().await;
    let _: i64 = redis::cmd("DEL")
        .arg(app.key("gone"))
        .query_async(&mut r)
        .await
        .unwrap();
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(app.key("expired"))
        .arg(50)
        .query_async(&mut r)
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "the key expires", || {
        let mut r = r.clone();
        let key = app.key("expired");
        async move {
            !redis::cmd("EXISTS")
                .arg(key)
                .query_async::<bool>(&mut r)
                .await
                .unwrap_or(true)
        }
    })
    .await;

    // Assert: a new watcher starts from the Postgres snapshot; the snapshot
    // route names Postgres as its source.
    let client = reqwest::Client::new();
    for job in ["gone", "expired"] {
        let mut sse = sse_watch(&app, job, &auth).await;
        let first = sse_progress(&mut sse, Duration::from_secs(5)).await;
        assert_eq!(
            (first["seq"].clone(), first["stage"].clone()),
            (json!(7), json!("kept"))
        );
        let res = client
            .get(app.url(&format!("/jobs/{job}")))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-jobcast-source"], "postgres");
        assert_eq!(res.json::<Value>().await.unwrap()["stage"], "kept");
    }
}

#[tokio::test]
async fn job_written_only_to_postgres_streams_live() {
    // Arrange: the row is the only source (no Redis state at all).
    let app = pg_app().await;
    let pool = pool(&app).await;
    exec(
        &pool,
        r#"INSERT INTO jobcast.jobs (id, owner_id, status, snapshot, seq)
           VALUES ('pgonly', 'alice', 'running', '{"seq":1,"stage":"queued"}', 1)"#,
    )
    .await;
    let auth = app.bearer("alice");
    let mut sse = sse_watch(&app, "pgonly", &auth).await;
    let mut ws = ws_watch(&app, "pgonly", &auth).await;
    assert_eq!(
        sse_progress(&mut sse, Duration::from_secs(5)).await["stage"],
        "queued"
    );
    assert_eq!(
        ws_progress(&mut ws, Duration::from_secs(5)).await["stage"],
        "queued"
    );

    // Act / Assert: every UPDATE of the row is pushed, the terminal one ends it.
    for (seq, stage) in [(2, "solving"), (3, "writing")] {
        exec(
            &pool,
            &format!(
                r#"UPDATE jobcast.jobs SET snapshot = '{{"seq":{seq},"stage":"{stage}"}}', seq = {seq} WHERE id = 'pgonly'"#
            ),
        )
        .await;
        assert_eq!(
            sse_progress(&mut sse, Duration::from_secs(2)).await["stage"],
            stage
        );
        assert_eq!(
            ws_progress(&mut ws, Duration::from_secs(2)).await["stage"],
            stage
        );
    }
    exec(
        &pool,
        r#"UPDATE jobcast.jobs SET snapshot = '{"seq":4,"status":"completed"}', seq = 4, status = 'completed' WHERE id = 'pgonly'"#,
    )
    .await;
    assert_eq!(
        sse_progress(&mut sse, Duration::from_secs(2)).await["seq"],
        4
    );
    sse.expect("done").await;
    sse.expect_end().await;
    assert_eq!(ws_progress(&mut ws, Duration::from_secs(2)).await["seq"], 4);
    ws.expect("done").await;
    assert_eq!(ws.expect_close().await, 1000);
    assert_eq!(
        row(&pool, "pgonly").await.map(|r| r.0),
        Some(Some(4)),
        "states read from Postgres are not written back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_holds_the_last_seq_after_a_burst_and_terminal_before_done() {
    // Arrange: one watched job.
    let app = pg_app().await;
    let pool = pool(&app).await;
    let auth = app.bearer("alice");
    let job = "burst";
    app.set(job, r#"{"seq":0,"owner_id":"alice"}"#).await;
    let mut sse = sse_watch(&app, job, &auth).await;
    sse_progress(&mut sse, Duration::from_secs(5)).await;

    // Act: 1,000 updates as fast as Redis takes them (one pipeline).
    let mut pipe = redis::pipe();
    for seq in 1..=1000 {
        pipe.cmd("SET")
            .arg(app.key(job))
            .arg(format!(r#"{{"seq":{seq},"owner_id":"alice","p":{seq}}}"#))
            .ignore();
    }
    let mut r = app.redis().await;
    let _: () = pipe.query_async(&mut r).await.expect("burst");

    // Assert: the row ends at the last one (at most once a second per job).
    wait_row_seq(&pool, job, 1000).await;
    let (_, snapshot, _, completed) = row(&pool, job).await.expect("row");
    assert_eq!(snapshot["p"], 1000);
    assert!(!completed);

    // Act: the job ends while the row is locked (a slow Postgres).
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM jobcast.jobs WHERE id = $1 FOR UPDATE")
        .bind(job)
        .execute(&mut *blocker)
        .await
        .unwrap();
    app.set(
        job,
        r#"{"seq":1001,"owner_id":"alice","status":"completed"}"#,
    )
    .await;

    // Assert: the terminal progress comes at once (after what the burst left
    // in flight), `done` waits for the write...
    let deadline = Instant::now() + Duration::from_secs(5);
    while sse_progress(&mut sse, deadline.saturating_duration_since(Instant::now())).await["seq"]
        != 1001
    {}
    let early = tokio::time::timeout(Duration::from_millis(800), sse.next_event()).await;
    assert!(
        early.is_err(),
        "done held back while the write is blocked: {early:?}"
    );
    blocker.rollback().await.unwrap();
    // ...and once it is sent, the row holds the terminal state.
    sse.expect("done").await;
    let (seq, snapshot, status, completed) = row(&pool, job).await.expect("row");
    assert_eq!(seq, Some(1001), "terminal state written before done");
    assert_eq!(snapshot["status"], "completed");
    assert_eq!(status.as_deref(), Some("completed"));
    assert!(completed, "completed_at set for a terminal state");
}

pub(crate) fn rules() -> DocRules {
    DocRules {
        max_bytes: 65536,
        owner_field: "owner_id".into(),
        group_field: "group_id".into(),
        terminal_statuses: vec!["completed".into(), "failed".into(), "cancelled".into()],
    }
}

fn update(job: &JobId, raw: &str) -> Arc<Update> {
    let doc = ProgressDoc::parse(raw.as_bytes(), &rules()).expect("doc");
    Arc::new(Update::encode(job, doc, Source::RedisKey))
}

async fn migrated_store(db: &TestDb) -> Store {
    let store = Store::connect_lazy(db.url(), rules()).expect("store");
    store.migrate().await.expect("migrate");
    store
}

#[tokio::test]
async fn an_older_seq_written_later_never_overwrites_a_newer_one() {
    // Arrange: a row at seq 10, as another gateway wrote it.
    let db = TestDb::create().await;
    let store = migrated_store(&db).await;
    let pool = db.pool().await;
    let wb = WriteBehind::new(store);
    let job = JobId::parse("guarded").unwrap();
    wb.push(
        &job,
        update(&job, r#"{"seq":10,"owner_id":"alice","v":"new"}"#),
    );
    assert_eq!(wb.flush(Duration::from_secs(5)).await, 0);

    // Act: a gateway that saw an older state writes it later.
    let stale = update(&job, r#"{"seq":5,"owner_id":"bob","v":"old"}"#);
    wb.push(&job, stale.clone());
    assert_eq!(wb.flush(Duration::from_secs(5)).await, 0);

    // Assert: the guard in SQL kept the newer state (and the owner).
    assert!(stale.durable.is_settled(), "the write was attempted");
    let (seq, snapshot, _, _) = row(&pool, "guarded").await.expect("row");
    assert_eq!((seq, snapshot["v"].clone()), (Some(10), json!("new")));
    let owner: String =
        sqlx::query_scalar("SELECT owner_id FROM jobcast.jobs WHERE id = 'guarded'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(owner, "alice");

    // A document without an owner updates an existing row but makes none.
    let ownerless = JobId::parse("ownerless").unwrap();
    wb.push(&ownerless, update(&ownerless, r#"{"seq":1}"#));
    wb.push(&job, update(&job, r#"{"seq":11,"v":"newest"}"#));
    assert_eq!(wb.flush(Duration::from_secs(5)).await, 0);
    assert!(row(&pool, "ownerless").await.is_none());
    assert_eq!(row(&pool, "guarded").await.unwrap().1["v"], "newest");
}

#[tokio::test]
async fn a_document_postgres_refuses_does_not_wedge_the_queue() {
    // jsonb cannot hold \u0000; that one row is dropped, its batch-mates written.
    let db = TestDb::create().await;
    let wb = WriteBehind::new(migrated_store(&db).await);
    let pool = db.pool().await;
    let (bad, good) = (JobId::parse("bad").unwrap(), JobId::parse("good").unwrap());
    wb.push(
        &bad,
        update(&bad, r#"{"seq":1,"owner_id":"a","x":"\u0000"}"#),
    );
    wb.push(&good, update(&good, r#"{"seq":1,"owner_id":"a"}"#));
    assert_eq!(wb.flush(Duration::from_secs(5)).await, 0, "nothing left");
    assert!(row(&pool, "bad").await.is_none());
    assert_eq!(row(&pool, "good").await.unwrap().0, Some(1));
}

#[tokio::test]
async fn retention_deletes_old_finished_jobs_once_with_two_sweepers() {
    // Arrange: old finished, recent finished, old unfinished.
    let db = TestDb::create().await;
    let (a, b) = (migrated_store(&db).await, migrated_store(&db).await);
    let pool = db.pool().await;
    exec(
        &pool,
        "INSERT INTO jobcast.jobs (id, owner_id, status, created_at, completed_at) VALUES
           ('old-done', 'u', 'completed', now() - interval '30 days', now() - interval '11 days'),
           ('new-done', 'u', 'completed', now() - interval '2 days',  now() - interval '1 day'),
           ('old-running', 'u', 'running', now() - interval '30 days', NULL)",
    )
    .await;

    // Act: two instances sweep at once.
    let (ra, rb) = tokio::join!(a.sweep(10), b.sweep(10));

    // Assert: exactly one deleted the one old finished job.
    let mut results = [ra.expect("sweep a"), rb.expect("sweep b")];
    results.sort();
    assert!(
        matches!(results, [None, Some(1)] | [Some(0), Some(1)]),
        "one sweeper deletes, the other finds the lock held or nothing left: {results:?}"
    );
    let mut left: Vec<String> = sqlx::query_scalar("SELECT id FROM jobcast.jobs")
        .fetch_all(&pool)
        .await
        .unwrap();
    left.sort();
    assert_eq!(left, ["new-done", "old-running"]);

    // And a sweeper that finds the lock held does nothing at all.
    exec(
        &pool,
        "INSERT INTO jobcast.jobs (id, owner_id, completed_at) VALUES ('old-2', 'u', now() - interval '20 days')",
    )
    .await;
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(jobcast::store::retention::RETENTION_LOCK_KEY)
        .execute(&mut *holder)
        .await
        .unwrap();
    assert_eq!(a.sweep(10).await.unwrap(), None);
    holder.rollback().await.unwrap();
    assert_eq!(a.sweep(10).await.unwrap(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_mid_stream_leaves_redis_streams_and_recovers() {
    // Arrange: jobcast reaches Postgres through a proxy the test can cut.
    let admin = reqwest::Url::parse(&TestDb::admin_url()).expect("admin URL");
    let upstream = tokio::net::lookup_host((
        admin.host_str().expect("host"),
        admin.port().unwrap_or(5432),
    ))
    .await
    .expect("resolve Postgres")
    .next()
    .expect("an address");
    let proxy = PgProxy::start(upstream).await;
    let port = proxy.port();
    let app = spawn_app_with(Options {
        postgres: true,
        tweak: Box::new(move |s| {
            let url = s.database_url.as_ref().expect("database URL").expose();
            let mut url = reqwest::Url::parse(url).expect("database URL");
            url.set_host(Some("127.0.0.1")).expect("host");
            url.set_port(Some(port)).expect("port");
            s.database_url = Some(Secret::new(String::from(url)));
        }),
        ..Options::default()
    })
    .await;
    let pool = pool(&app).await; // direct, not through the proxy
    let auth = app.bearer("alice");
    app.set("pgdown", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let mut sse = sse_watch(&app, "pgdown", &auth).await;
    assert_eq!(
        sse_progress(&mut sse, Duration::from_secs(5)).await["seq"],
        1
    );
    wait_row_seq(&pool, "pgdown", 1).await;
    assert_eq!(readyz(&app).await.1["postgres"], "up");

    // Act: Postgres goes away.
    proxy.cut();

    // Assert: readyz says degraded; Redis streams go on, new ones open (owner
    // from the document), and a terminal state still ends them promptly.
    let body = wait_for(
        Duration::from_secs(10),
        "readyz reports postgres down",
        || async {
            let (status, body) = readyz(&app).await;
            (body["postgres"] == "down").then_some((status, body))
        },
    )
    .await;
    assert_eq!(body.0, 200);
    assert_eq!(
        (body.1["status"].clone(), body.1["redis"].clone()),
        (json!("degraded"), json!("up"))
    );
    app.set("pgdown", r#"{"seq":2,"owner_id":"alice"}"#).await;
    assert_eq!(
        sse_progress(&mut sse, Duration::from_secs(5)).await["seq"],
        2
    );
    app.set(
        "other",
        r#"{"seq":1,"owner_id":"alice","status":"completed"}"#,
    )
    .await;
    let mut ended = sse_watch(&app, "other", &auth).await;
    let started = Instant::now();
    sse_progress(&mut ended, Duration::from_secs(5)).await;
    ended.expect("done").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a dead Postgres holds done back boundedly"
    );

    // Act: Postgres returns.
    proxy.restore();

    // Assert: ready again, and the write-behind catches up with what it missed.
    wait_until(
        Duration::from_secs(15),
        "readyz reports postgres up",
        || async { readyz(&app).await.1["postgres"] == "up" },
    )
    .await;
    wait_until(
        Duration::from_secs(40),
        "the missed state is written behind",
        || async { row(&pool, "pgdown").await.is_some_and(|r| r.0 == Some(2)) },
    )
    .await;
    app.set("pgdown", r#"{"seq":3,"owner_id":"alice"}"#).await;
    assert_eq!(
        sse_progress(&mut sse, Duration::from_secs(5)).await["seq"],
        3
    );
}

#[tokio::test]
async fn junk_notifies_and_non_object_snapshots_are_ignored() {
    // Arrange: a watched job with its row.
    let app = pg_app().await;
    let pool = pool(&app).await;
    let auth = app.bearer("alice");
    app.set("junk", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let mut sse = sse_watch(&app, "junk", &auth).await;
    sse_progress(&mut sse, Duration::from_secs(5)).await;
    wait_row_seq(&pool, "junk", 1).await;

    // Act: NOTIFYs for an unknown job and a non-id, and a row whose snapshot
    // is not an object.
    exec(
        &pool,
        "SELECT pg_notify('jobcast_jobs', 'nobody-watches-this')",
    )
    .await;
    exec(&pool, "SELECT pg_notify('jobcast_jobs', 'not a job id*')").await;
    exec(&pool, "SELECT pg_notify('jobcast_jobs', '')").await;
    exec(
        &pool,
        r#"UPDATE jobcast.jobs SET snapshot = '[1,2,3]', seq = 5 WHERE id = 'junk'"#,
    )
    .await;
    exec(
        &pool,
        r#"UPDATE jobcast.jobs SET snapshot = '"text"', seq = 6 WHERE id = 'junk'"#,
    )
    .await;

    // Assert: nothing of that reaches the watcher; the listener is alive and
    // the next good row is delivered as the very next event.
    exec(
        &pool,
        r#"UPDATE jobcast.jobs SET snapshot = '{"seq":7,"owner_id":"alice","ok":true}', seq = 7 WHERE id = 'junk'"#,
    )
    .await;
    let next = sse_progress(&mut sse, Duration::from_secs(5)).await;
    assert_eq!(
        (next["seq"].clone(), next["ok"].clone()),
        (json!(7), json!(true))
    );
    let (status, _) = readyz(&app).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_database_migrated_before_the_first_migrations_comment_was_reworded_still_migrates() {
    let db = TestDb::create().await;
    let store = migrated_store(&db).await;
    let pool = db.pool().await;
    // What such a database records: the checksum of the earlier text.
    let old = "498fd940eebc3efb60dd5ec492f8ae53d749a538d1b090219c55a6584f89c6748fd364aec9b0e204720782f7d84fa2b6";
    sqlx::query(
        "UPDATE jobcast._sqlx_migrations SET checksum = decode($1, 'hex') WHERE version = 20261123000001",
    )
    .bind(old)
    .execute(&pool)
    .await
    .unwrap();
    store
        .migrate()
        .await
        .expect("the reworded migration is accepted");
    let (now,): (String,) = sqlx::query_as(
        "SELECT encode(checksum, 'hex') FROM jobcast._sqlx_migrations WHERE version = 20261123000001",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_ne!(now, old, "the record moved to the current text");

    // Any other difference is still refused.
    sqlx::query(
        "UPDATE jobcast._sqlx_migrations SET checksum = decode('00', 'hex') WHERE version = 20261123000001",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert!(
        store.migrate().await.is_err(),
        "a modified migration is refused"
    );
}

#[tokio::test]
async fn migrations_run_twice_and_concurrently_are_harmless() {
    // Two instances starting at once, then a third start: sqlx serialises them
    // with its own advisory lock; the SQL is idempotent besides.
    let db = TestDb::create().await;
    let (a, b) = (
        Store::connect_lazy(db.url(), rules()).unwrap(),
        Store::connect_lazy(db.url(), rules()).unwrap(),
    );
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.expect("first instance migrates");
    rb.expect("second instance migrates");
    a.migrate().await.expect("a second run is a no-op");
    let pool = db.pool().await;
    let triggers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_trigger WHERE tgname = 'jobs_notify'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(triggers, 1);
}

#[tokio::test]
async fn shutdown_writes_states_still_waiting_for_their_interval() {
    // Arrange: seq 1 is written at once (first write of the job); seq 2 then
    // waits out the one-second interval in the queue.
    let mut app = pg_app().await;
    let pool = pool(&app).await;
    let auth = app.bearer("alice");
    app.set("flush", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let mut sse = sse_watch(&app, "flush", &auth).await;
    sse_progress(&mut sse, Duration::from_secs(5)).await;
    wait_row_seq(&pool, "flush", 1).await;
    app.set("flush", r#"{"seq":2,"owner_id":"alice"}"#).await;
    assert_eq!(
        sse_progress(&mut sse, Duration::from_secs(5)).await["seq"],
        2
    );

    // Act: the gateway stops.
    app.stop().await;

    // Assert: by the time it has stopped, the queued state is in the row.
    assert_eq!(row(&pool, "flush").await.expect("row").0, Some(2));
}

#[tokio::test]
async fn documents_without_seq_are_not_echoed_back_from_postgres() {
    // Arrange: a worker that sends no seq; jobcast names its events.
    let app = pg_app().await;
    let pool = pool(&app).await;
    let auth = app.bearer("alice");
    // Spacing and key order that jsonb does not keep: the row's copy differs
    // in bytes from what watchers already have.
    app.set("noseq", r#"{"p":1, "owner_id":"alice"}"#).await;
    let mut sse = sse_watch(&app, "noseq", &auth).await;

    // Act: each state is written behind (and NOTIFYs back) before the next.
    let mut seen = Vec::new();
    for p in 1..=3 {
        if p > 1 {
            app.set("noseq", &format!(r#"{{"p":{p}, "owner_id":"alice"}}"#))
                .await;
        }
        let ev = sse.expect("progress").await;
        seen.push((ev.id.clone().unwrap_or_default(), ev.json()["p"].clone()));
        wait_until(WRITE_BEHIND_WAIT, "the state is written behind", || async {
            row(&pool, "noseq").await.is_some_and(|r| r.1["p"] == p)
        })
        .await;
    }

    // Assert: each state once, in order, with distinct ids; the echoes of
    // the rows were not news.
    let values: Vec<_> = seen.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(values, [json!(1), json!(2), json!(3)]);
    let ids: std::collections::HashSet<_> = seen.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids.len(), 3, "distinct ids: {seen:?}");
}
