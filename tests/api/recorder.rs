//! The recorder: one instance of a fleet records every job's states into
//! Postgres, watched or not; the others write nothing; when it dies another
//! takes over and the final state still lands. Real `jobcast` processes
//! (for `kill -9` and one metrics registry each), one Redis, one database.

use crate::clients::Gateway as _;
use std::time::Duration;

use sqlx::PgPool;

use crate::app::{Options, claims, sign, spawn_app_with};
use crate::child::ChildApp;
use crate::clients::Sse;
use crate::support::{RedisServer, TestDb, wait_for, wait_until};

/// Bound on a state reaching its row (a terminal state goes at once).
const ROW_WAIT: Duration = Duration::from_secs(10);
/// The takeover promise (5 s) plus the slack of a loaded test machine.
const TAKEOVER_WAIT: Duration = Duration::from_secs(7);

/// The row's `(seq, completed)`, if the row exists.
pub(crate) async fn row(pool: &PgPool, job: &str) -> Option<(Option<i64>, bool)> {
    sqlx::query_as::<_, (Option<i64>, bool)>(
        "SELECT seq, completed_at IS NOT NULL FROM jobcast.jobs WHERE id = $1",
    )
    .bind(job)
    .fetch_optional(pool)
    .await
    .ok()
    .flatten()
}

pub(crate) async fn wait_row(pool: &PgPool, job: &str, seq: i64, completed: bool) {
    wait_until(
        ROW_WAIT,
        &format!("{job}'s row holds seq {seq}"),
        || async { row(pool, job).await == Some((Some(seq), completed)) },
    )
    .await;
}

/// `n` instances sharing `redis` and `db`, each free to record.
async fn fleet(n: usize, redis: &RedisServer, db: &TestDb) -> Vec<ChildApp> {
    let mut apps = Vec::with_capacity(n);
    for _ in 0..n {
        let envs = [("DATABASE_URL", db.url().to_owned())];
        apps.push(ChildApp::spawn(&redis.url(), &envs).await);
    }
    apps
}

/// The index of the one instance whose `jobcast_recorder` is 1, once exactly
/// one is (the others 0).
async fn recorder_of(apps: &[&ChildApp], bound: Duration) -> usize {
    wait_for(bound, "exactly one instance is the recorder", || async {
        let mut on = Vec::new();
        for (i, app) in apps.iter().enumerate() {
            if app.metric("jobcast_recorder", "").await == 1.0 {
                on.push(i);
            }
        }
        (on.len() == 1).then(|| on[0])
    })
    .await
}

fn doc(seq: i64, status: &str) -> String {
    format!(r#"{{"seq":{seq},"owner_id":"alice","status":"{status}"}}"#)
}

#[tokio::test]
async fn a_job_nobody_watches_is_served_from_postgres_after_redis_is_lost() {
    let mut app = spawn_app_with(Options {
        postgres: true,
        ..Options::default()
    })
    .await;
    let pool = app.db.as_ref().expect("database").pool().await;
    let job = "unwatched";
    // Written whether or not the recorder holds its lock yet: taking it, the
    // recorder reads every live key.
    for seq in 1..=3 {
        app.set(job, &doc(seq, "running")).await;
    }
    app.set(job, &doc(4, "completed")).await;
    wait_row(&pool, job, 4, true).await;
    app.redis.kill();

    assert_final_state_from_postgres(&app.url(&format!("/jobs/{job}")), &app.token("alice"), 4)
        .await;
    app.stop().await;
}

/// Asserts that `GET url` (a `/jobs/{id}`) answers, from Postgres, the
/// completed state `seq`.
pub(crate) async fn assert_final_state_from_postgres(url: &str, token: &str, seq: i64) {
    let res = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("GET /jobs/{id}");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-jobcast-source"], "postgres");
    let body: serde_json::Value = res.json().await.expect("JSON");
    assert_eq!(body["seq"], seq, "the final state: {body}");
    assert_eq!(body["status"], "completed");
}

/// Every INSERT or UPDATE of a `jobs` row, logged with the document's `step`
/// by a trigger of the test's.
async fn log_writes(pool: &PgPool) {
    for sql in [
        "CREATE TABLE job_writes (id text, step bigint)",
        "CREATE FUNCTION log_job_write() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO job_writes VALUES (NEW.id, (NEW.snapshot->>'step')::bigint);
         RETURN NEW; END $$",
        "CREATE TRIGGER log_job_write AFTER INSERT OR UPDATE ON jobcast.jobs
         FOR EACH ROW EXECUTE FUNCTION log_job_write()",
    ] {
        sqlx::query(sql).execute(pool).await.expect("test trigger");
    }
}

#[tokio::test]
async fn three_instances_write_each_state_once() {
    let redis = RedisServer::start().await;
    let db = TestDb::create().await;
    let apps = fleet(3, &redis, &db).await;
    let pool = db.pool().await;
    log_writes(&pool).await;
    let refs: Vec<&ChildApp> = apps.iter().collect();
    recorder_of(&refs, TAKEOVER_WAIT).await;

    let jobs: Vec<String> = (0..5).map(|i| format!("counted-{i}")).collect();
    let conn = redis.connection().await;
    let write = |job: &str, seq: i64| {
        let (mut c, key) = (conn.clone(), format!("progress:job:{job}"));
        let status = if seq == 3 { "completed" } else { "running" };
        // No `seq`: the SQL guard lets every write of such a document through,
        // so a second writer would show as a second row write.
        let doc = format!(r#"{{"step":{seq},"owner_id":"alice","status":"{status}"}}"#);
        async move {
            let _: () = redis::AsyncCommands::set(&mut c, key, doc)
                .await
                .expect("SET");
        }
    };
    for job in &jobs {
        write(job, 1).await;
    }
    // Every job watched on every instance: before the recorder, each of them
    // wrote what its watchers saw.
    let token = sign(&claims("alice"));
    let mut watchers = Vec::new();
    for app in &apps {
        for job in &jobs {
            let mut sse = Sse::connect(
                &app.url(&format!("/jobs/{job}/events")),
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await;
            assert_eq!(sse.status, 200);
            sse.expect("connected").await;
            watchers.push(sse);
        }
    }
    // States 1.2 s apart: each is due for its own write (none conflated).
    for seq in 2..=3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        for job in &jobs {
            write(job, seq).await;
        }
    }
    for job in &jobs {
        wait_until(ROW_WAIT, &format!("{job}'s final state is written"), || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT completed_at IS NOT NULL AND snapshot->>'step' = '3' FROM jobcast.jobs WHERE id = $1",
            )
            .bind(job)
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
        })
        .await;
    }
    for sse in &mut watchers {
        loop {
            match sse.next_event().await {
                Some(ev) if ev.event == "done" => break,
                Some(ev) if ev.event == "progress" => continue,
                other => panic!("expected progress until done, got {other:?}"),
            }
        }
    }

    let counts: Vec<(String, Option<i64>, i64)> = sqlx::query_as(
        "SELECT id, step, count(*) FROM job_writes GROUP BY id, step ORDER BY id, step",
    )
    .fetch_all(&pool)
    .await
    .expect("count writes");
    for (job, step, n) in &counts {
        assert_eq!(
            *n, 1,
            "{job} step {step:?} was written {n} times: {counts:?}"
        );
    }
    assert_eq!(
        counts.len(),
        jobs.len() * 3,
        "every state of every job written exactly once: {counts:?}"
    );
}

#[tokio::test]
async fn a_killed_recorder_is_replaced_and_the_final_state_lands() {
    let redis = RedisServer::start().await;
    let db = TestDb::create().await;
    let mut apps = fleet(3, &redis, &db).await;
    let pool = db.pool().await;
    let refs: Vec<&ChildApp> = apps.iter().collect();
    let first = recorder_of(&refs, TAKEOVER_WAIT).await;

    let job = "takeover";
    redis
        .set(&format!("progress:job:{job}"), &doc(1, "running"))
        .await;
    wait_row(&pool, job, 1, false).await;

    let mut dead = apps.remove(first);
    dead.child.kill().await.expect("kill -9 the recorder");
    let killed = tokio::time::Instant::now();
    // Written while nobody records: the next recorder reads the live key.
    redis
        .set(&format!("progress:job:{job}"), &doc(2, "running"))
        .await;
    redis
        .set(&format!("progress:job:{job}"), &doc(3, "completed"))
        .await;

    let refs: Vec<&ChildApp> = apps.iter().collect();
    recorder_of(&refs, TAKEOVER_WAIT).await;
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_secs(5),
        "another instance took over within 5 s, not {takeover:?}"
    );
    wait_row(&pool, job, 3, true).await;
}

#[tokio::test]
async fn an_instance_with_the_recorder_off_writes_nothing() {
    // Arrange: one instance that may record, one that may not, one database.
    let redis = RedisServer::start().await;
    let db = TestDb::create().await;
    let pool = db.pool().await;
    let off = ChildApp::spawn(
        &redis.url(),
        &[
            ("DATABASE_URL", db.url().to_owned()),
            ("JOBCAST_RECORDER", "off".to_owned()),
        ],
    )
    .await;
    let mut auto = ChildApp::spawn(&redis.url(), &[("DATABASE_URL", db.url().to_owned())]).await;
    assert_eq!(recorder_of(&[&off, &auto], TAKEOVER_WAIT).await, 1);
    redis
        .set("progress:job:while-auto-runs", &doc(1, "completed"))
        .await;
    wait_row(&pool, "while-auto-runs", 1, true).await;

    // Act: the instance that records is gone; a job nobody watches ends.
    auto.child.kill().await.expect("kill -9 the recorder");
    let job = "only-off-runs";
    redis
        .set(&format!("progress:job:{job}"), &doc(1, "completed"))
        .await;

    // Assert: past the time an `auto` instance takes the free lock over and
    // records the live key, the `off` one has neither taken it nor written.
    let until = tokio::time::Instant::now() + TAKEOVER_WAIT;
    while tokio::time::Instant::now() < until {
        assert_eq!(off.metric("jobcast_recorder", "").await, 0.0);
        assert_eq!(
            row(&pool, job).await,
            None,
            "the `off` instance wrote {job}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // An `auto` instance on the same database records it (the key was there
    // to be recorded all along).
    let again = ChildApp::spawn(&redis.url(), &[("DATABASE_URL", db.url().to_owned())]).await;
    assert_eq!(recorder_of(&[&off, &again], TAKEOVER_WAIT).await, 1);
    wait_row(&pool, job, 1, true).await;
}
