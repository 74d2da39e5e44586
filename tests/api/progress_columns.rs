//! The progress-columns recipe (`docs/recipes/progress-columns.sql`): an
//! application's own `public.jobs` with `progress_*` columns, written only by
//! its own SQL functions, served live by jobcast with no Redis write at all.
//! The recipe is applied with the real `psql -f`, as a user would.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use crate::app::{Options, TestApp, spawn_app_with};
use crate::clients::{Gateway, Sse};

const RECIPE: &str = "docs/recipes/progress-columns.sql";
const EVENT_WAIT: Duration = Duration::from_secs(5);

/// The application's table and functions, written as the application would
/// (nothing here knows jobcast exists).
const APP_SCHEMA: &str = r#"
CREATE TABLE public.jobs (
    id text PRIMARY KEY,
    project_id text NOT NULL,
    user_id text NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    progress_stage text,
    progress_current int,
    progress_total int,
    progress_message text,
    progress_updated_at timestamptz
);

CREATE FUNCTION update_job_progress(job_id text, stage text, current_step int,
                                    total_steps int, message text) RETURNS void
LANGUAGE sql AS $$
    UPDATE public.jobs SET status = 'running', progress_stage = stage,
        progress_current = current_step, progress_total = total_steps,
        progress_message = message, progress_updated_at = now()
    WHERE id = job_id;
$$;

CREATE FUNCTION complete_job_progress(job_id text, message text) RETURNS void
LANGUAGE sql AS $$
    UPDATE public.jobs SET status = 'complete', progress_current = progress_total,
        progress_message = message, progress_updated_at = now()
    WHERE id = job_id;
$$;

CREATE FUNCTION error_job_progress(job_id text, error_message text) RETURNS void
LANGUAGE sql AS $$
    UPDATE public.jobs SET status = 'error', progress_message = error_message,
        progress_updated_at = now()
    WHERE id = job_id;
$$;
"#;

/// A gateway with Postgres (migrated into its `jobcast` schema), the
/// application's table and functions, and the recipe applied with `psql -f`.
async fn app_with_recipe() -> (TestApp, PgPool) {
    let app = spawn_app_with(Options {
        postgres: true,
        ..Options::default()
    })
    .await;
    let db = app.db.as_ref().expect("test has a database");
    let pool = db.pool().await;
    sqlx::raw_sql(APP_SCHEMA)
        .execute(&pool)
        .await
        .expect("the application's table and functions");
    apply_recipe(db.url());
    (app, pool)
}

fn apply_recipe(database_url: &str) {
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join(RECIPE);
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            database_url,
            "-f",
        ])
        .arg(&recipe)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running psql: {e}. The recipe test needs the Postgres client \
                 (apt-get install postgresql-client; scripts/test.sh installs it)"
            )
        });
    assert!(
        out.status.success(),
        "psql -f {RECIPE} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn call(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `GET /jobs/{id}` as the job's user: the document.
async fn snapshot(app: &TestApp, job: &str, user: &str) -> Value {
    let res = reqwest::Client::new()
        .get(app.url(&format!("/jobs/{job}")))
        .bearer_auth(app.token(user))
        .send()
        .await
        .expect("GET /jobs/{id}");
    assert_eq!(res.status(), 200, "GET /jobs/{job}");
    res.json().await.expect("a JSON document")
}

/// A single-job SSE stream as the job's user, past `connected`.
async fn watch_job(app: &TestApp, job: &str, user: &str) -> Sse {
    let auth = format!("Bearer {}", app.token(user));
    let mut sse = Sse::connect(
        &app.url(&format!("/jobs/{job}/events")),
        &[("authorization", auth.as_str())],
    )
    .await;
    assert_eq!(sse.status, 200, "SSE stream on {job} opens");
    sse.expect("connected").await;
    sse
}

/// The next `progress` document (pings skipped), within [`EVENT_WAIT`].
async fn next_progress(sse: &mut Sse) -> Value {
    let deadline = tokio::time::Instant::now() + EVENT_WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sse.next_within(left).await {
            Some(ev) if ev.event == "progress" => return ev.json(),
            Some(ev) if ev.event == ":comment" => continue,
            other => panic!("expected a progress event, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_columns_written_by_sql_functions_stream_live_without_redis() {
    // Arrange: the application's table holds two jobs of one project.
    let (app, pool) = app_with_recipe().await;
    call(
        &pool,
        "INSERT INTO public.jobs (id, project_id, user_id) VALUES
             ('solve-1', 'proj-9', 'alice'), ('solve-2', 'proj-9', 'alice')",
    )
    .await;
    let pending = snapshot(&app, "solve-1", "alice").await;
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["owner_id"], "alice");
    assert_eq!(pending["group_id"], "proj-9");
    let mut one = watch_job(&app, "solve-1", "alice").await;
    let mut two = watch_job(&app, "solve-2", "alice").await;
    assert_eq!(next_progress(&mut one).await["status"], "pending");
    assert_eq!(next_progress(&mut two).await["status"], "pending");

    // Act / Assert: each function call reaches the stream and GET /jobs/{id}.
    call(
        &pool,
        "SELECT update_job_progress('solve-1', 'loading', 1, 4, 'reading input')",
    )
    .await;
    let running = next_progress(&mut one).await;
    assert_eq!(running["status"], "running");
    assert_eq!(running["stage"], "loading");
    assert_eq!(
        (running["current"].as_i64(), running["total"].as_i64()),
        (Some(1), Some(4))
    );
    assert_eq!(running["overall_progress"].as_f64(), Some(25.0));
    assert_eq!(running["message"], "reading input");
    assert!(running["updated_at"].is_string(), "{running}");
    assert_eq!(snapshot(&app, "solve-1", "alice").await["stage"], "loading");

    call(
        &pool,
        "SELECT update_job_progress('solve-1', 'solving', 3, 4, 'three of four')",
    )
    .await;
    let later = next_progress(&mut one).await;
    assert_eq!(later["overall_progress"].as_f64(), Some(75.0));
    assert!(
        later["seq"].as_i64() > running["seq"].as_i64(),
        "seq increases: {running} then {later}"
    );

    call(&pool, "SELECT complete_job_progress('solve-1', 'all done')").await;
    let completed = next_progress(&mut one).await;
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["overall_progress"].as_f64(), Some(100.0));
    assert_eq!(one.expect("done").await.json()["status"], "completed");
    one.expect_end().await;
    assert_eq!(
        snapshot(&app, "solve-1", "alice").await["status"],
        "completed"
    );

    call(
        &pool,
        "SELECT update_job_progress('solve-2', 'loading', 0, 10, NULL)",
    )
    .await;
    assert_eq!(next_progress(&mut two).await["status"], "running");
    call(
        &pool,
        "SELECT error_job_progress('solve-2', 'input file is empty')",
    )
    .await;
    let failed = next_progress(&mut two).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"], "input file is empty");
    assert_eq!(two.expect("done").await.json()["status"], "failed");
    two.expect_end().await;
    let failed_snapshot = snapshot(&app, "solve-2", "alice").await;
    assert_eq!(failed_snapshot["status"], "failed");
    assert_eq!(failed_snapshot["message"], "input file is empty");

    // Another user may not watch them: the owner is the row's user_id.
    let res = reqwest::Client::new()
        .get(app.url("/jobs/solve-1"))
        .bearer_auth(app.token("mallory"))
        .send()
        .await
        .expect("GET as another user");
    assert_eq!(res.status(), 403);

    // jobcast's rows carry the group; nothing at all was written to Redis.
    let groups: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT id, group_id FROM jobcast.jobs ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("jobcast's rows");
    assert_eq!(
        groups,
        vec![
            ("solve-1".to_owned(), Some("proj-9".to_owned())),
            ("solve-2".to_owned(), Some("proj-9".to_owned())),
        ]
    );
    let keys: i64 = redis::cmd("DBSIZE")
        .query_async(&mut app.redis().await)
        .await
        .expect("DBSIZE");
    assert_eq!(keys, 0, "the whole run wrote nothing to Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_stream_serves_every_job_of_the_project_live_without_redis() {
    // Arrange: two jobs of one project in the application's own table.
    let (app, pool) = app_with_recipe().await;
    call(
        &pool,
        "INSERT INTO public.jobs (id, project_id, user_id) VALUES
             ('p-1', 'proj-7', 'alice'), ('p-2', 'proj-7', 'bob'), ('other', 'proj-8', 'alice')",
    )
    .await;
    let mut claims = crate::app::claims("alice");
    claims.groups = vec!["proj-7".into()];
    let auth = crate::app::bearer(&crate::app::sign(&claims));

    // Act: one project stream.
    let mut sse = app.sse("/groups/proj-7/events", &auth).await;
    assert_eq!(sse.status, 200);
    let connected = sse.expect("connected").await.json();
    let mut members: Vec<String> = serde_json::from_value(connected["jobs"].clone()).unwrap();
    members.sort();
    assert_eq!(members, ["p-1", "p-2"], "the project's rows, not proj-8's");
    let mut seen = [
        next_group_event(&mut sse, "progress").await,
        next_group_event(&mut sse, "progress").await,
    ];
    seen.sort_by_key(|v| v["job_id"].as_str().unwrap_or("").to_owned());
    assert_eq!(seen[0]["document"]["status"], "pending");

    // Assert: every function call streams live, each job ends with `done`,
    // and a job the application adds later joins.
    call(
        &pool,
        "SELECT update_job_progress('p-1', 'solving', 2, 4, 'half')",
    )
    .await;
    let running = next_group_event(&mut sse, "progress").await;
    assert_eq!(
        (
            running["job_id"].as_str(),
            running["document"]["status"].as_str()
        ),
        (Some("p-1"), Some("running"))
    );
    call(
        &pool,
        "INSERT INTO public.jobs (id, project_id, user_id) VALUES ('p-3', 'proj-7', 'alice')",
    )
    .await;
    assert_eq!(next_group_event(&mut sse, "joined").await["job_id"], "p-3");
    assert_eq!(
        next_group_event(&mut sse, "progress").await["job_id"],
        "p-3"
    );
    for (job, sql) in [
        ("p-1", "SELECT complete_job_progress('p-1', 'done')"),
        ("p-2", "SELECT error_job_progress('p-2', 'boom')"),
        ("p-3", "SELECT complete_job_progress('p-3', 'done')"),
    ] {
        call(&pool, sql).await;
        assert_eq!(next_group_event(&mut sse, "progress").await["job_id"], job);
        let done = next_group_event(&mut sse, "done").await;
        assert_eq!(done["job_id"], job);
    }
    let mut redis = app.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(keys.is_empty(), "no Redis write at all: {keys:?}");
}

/// The next group-stream event named `event` (pings skipped), its data.
async fn next_group_event(sse: &mut Sse, event: &str) -> Value {
    let deadline = tokio::time::Instant::now() + EVENT_WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sse.next_within(left).await {
            Some(ev) if ev.event == event => return ev.json(),
            Some(ev) if ev.event == ":comment" => continue,
            other => panic!("expected `{event}`, got {other:?}"),
        }
    }
}
