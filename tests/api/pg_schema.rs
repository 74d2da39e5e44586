//! jobcast's own Postgres schema (`JOBCAST_PG_SCHEMA`): a database migrated by
//! earlier versions (tables in `public`) is moved with its rows and keeps
//! pushing; another schema name is followed by migrations, reads and the
//! write-behind; the write-behind fills `group_id` from the document.

use std::time::Duration;

use jobcast::store::Store;
use sqlx::postgres::PgListener;

use crate::app::{Options, spawn_app_with};
use crate::clients::Sse;
use crate::durable::rules;
use crate::support::{TestDb, wait_until};

/// The first migration as earlier versions applied it: in `public`.
const FIRST_MIGRATION: &str = include_str!("../../migrations/20261123000001_jobs.sql");

#[tokio::test]
async fn tables_in_public_from_earlier_versions_move_with_their_rows_and_trigger() {
    // Arrange: what an earlier jobcast left: public.jobs with a row, its
    // function and trigger, and sqlx's record of the migration in public.
    let db = TestDb::create().await;
    let pool = db.pool().await;
    sqlx::raw_sql(FIRST_MIGRATION)
        .execute(&pool)
        .await
        .expect("the first migration in public");
    sqlx::raw_sql(
        r#"CREATE TABLE public._sqlx_migrations (
               version bigint PRIMARY KEY, description text NOT NULL,
               installed_on timestamptz NOT NULL DEFAULT now(), success boolean NOT NULL,
               checksum bytea NOT NULL, execution_time bigint NOT NULL);
           INSERT INTO public._sqlx_migrations VALUES
               (20261123000001, 'jobs', now(), true, decode('00', 'hex'), 1);
           INSERT INTO public.jobs (id, owner_id, status, snapshot, seq)
               VALUES ('old-job', 'alice', 'running', '{"seq":5,"stage":"kept"}', 5);"#,
    )
    .execute(&pool)
    .await
    .expect("an earlier version's database");

    // Act
    let store = Store::connect_lazy(db.url(), rules()).expect("store");
    store.migrate().await.expect("migrate moves the tables");

    // Assert: the row is in jobcast.jobs and served; public is clean.
    let job = jobcast::job::JobId::parse("old-job").unwrap();
    let stored = store
        .load(&job)
        .await
        .expect("load")
        .expect("the row moved");
    assert_eq!(stored.owner_id, "alice");
    assert_eq!(stored.doc.expect("its snapshot").seq, Some(5));
    let left: (Option<String>, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT to_regclass('public.jobs')::text, to_regclass('public._sqlx_migrations')::text,
                to_regprocedure('public.jobcast_notify_job()')::text",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        left,
        (None, None, None),
        "nothing of jobcast left in public"
    );
    let group_column: Option<String> = sqlx::query_scalar(
        "SELECT data_type FROM information_schema.columns
         WHERE table_schema = 'jobcast' AND table_name = 'jobs' AND column_name = 'group_id'",
    )
    .fetch_optional(&pool)
    .await
    .unwrap();
    assert_eq!(group_column.as_deref(), Some("text"));

    // The trigger still NOTIFYs, through the function in jobcast's schema.
    let mut listener = PgListener::connect(db.url()).await.expect("listen");
    listener.listen("jobcast_jobs").await.expect("LISTEN");
    sqlx::query("UPDATE jobcast.jobs SET snapshot = '{\"seq\":6}', seq = 6 WHERE id = 'old-job'")
        .execute(&pool)
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a NOTIFY within 5 s")
        .expect("NOTIFY");
    assert_eq!(n.payload(), "old-job");
    store.migrate().await.expect("migrating again is a no-op");
}

#[tokio::test]
async fn an_applications_own_public_jobs_table_is_never_touched() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE public.jobs (id text PRIMARY KEY, title text);
         INSERT INTO public.jobs VALUES ('app-1', 'mine');",
    )
    .execute(&pool)
    .await
    .unwrap();
    let store = Store::connect_lazy(db.url(), rules()).expect("store");
    store.migrate().await.expect("migrate");
    let title: String = sqlx::query_scalar("SELECT title FROM public.jobs WHERE id = 'app-1'")
        .fetch_one(&pool)
        .await
        .expect("the application's table is as it was");
    assert_eq!(title, "mine");
    let ours: i64 = sqlx::query_scalar("SELECT count(*) FROM jobcast.jobs")
        .fetch_one(&pool)
        .await
        .expect("jobcast's table exists beside it");
    assert_eq!(ours, 0);
}

#[tokio::test]
async fn another_schema_name_is_followed_and_write_behind_records_the_group() {
    // Arrange: a gateway configured with its own schema name.
    let app = spawn_app_with(Options {
        postgres: true,
        tweak: Box::new(|s| s.pg_schema = "progress_gw".into()),
        ..Options::default()
    })
    .await;
    let pool = app.db.as_ref().unwrap().pool().await;

    // Act: a worker writes a grouped state to Redis; a job is only in Postgres.
    app.set(
        "grouped",
        r#"{"seq":1,"owner_id":"alice","group_id":"proj-1","status":"completed"}"#,
    )
    .await;
    app.publish(
        "grouped",
        r#"{"seq":1,"owner_id":"alice","group_id":"proj-1","status":"completed"}"#,
    )
    .await;
    // Watching makes the gateway see (and write behind) the state; `done`
    // is held until the terminal state is in the row.
    let auth = format!("Bearer {}", app.token("alice"));
    let mut sse = Sse::connect(
        &app.url("/jobs/grouped/events"),
        &[("authorization", auth.as_str())],
    )
    .await;
    assert_eq!(sse.status, 200);
    sse.expect("connected").await;
    sse.expect("progress").await;
    sse.expect("done").await;

    // Assert: the row lands in progress_gw.jobs with its group.
    wait_until(Duration::from_secs(10), "row written behind", || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT group_id FROM progress_gw.jobs WHERE id = 'grouped'",
        )
        .fetch_optional(&pool)
        .await
        .ok()
        .flatten()
        .flatten()
        .as_deref()
            == Some("proj-1")
    })
    .await;
    let jobcast_schema: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('jobcast.jobs')::text")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        jobcast_schema, None,
        "nothing created in the default schema"
    );

    sqlx::query(
        "INSERT INTO progress_gw.jobs (id, owner_id, snapshot, seq)
         VALUES ('pg-only', 'bob', '{\"seq\":3,\"stage\":\"from-row\"}', 3)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let doc: serde_json::Value = reqwest::Client::new()
        .get(app.url("/jobs/pg-only"))
        .bearer_auth(app.token("bob"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["stage"], "from-row", "fallback reads use the schema");
}
