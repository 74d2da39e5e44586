//! Every SQL query jobcast makes, against the `jobs` table of `migrations/` in
//! jobcast's own schema (`JOBCAST_PG_SCHEMA`, so an application's `public.jobs`
//! never collides): fallback reads (snapshot and owner), migrations and health
//! here; the recorder, its write-behind and the retention sweep in their
//! submodules. Postgres is
//! optional: without DATABASE_URL there is no `Store` and callers skip it.
//!
//! Every runtime query names the table with its schema; only the migrations run
//! with `search_path` set to the schema (on a connection of their own), which is
//! how the unqualified names in `migrations/` land in it.

pub mod recorder;
pub mod retention;
pub mod write_behind;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use sqlx::Connection as _;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};

use crate::config::is_pg_identifier;
use crate::job::{DocRules, JobId, ProgressDoc};

/// Bound on acquiring a Postgres connection: a dead Postgres must not hold a
/// watcher's first state longer than this.
pub const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
pub const PG_POOL_SIZE: u32 = 8;
/// `JOBCAST_PG_SCHEMA` unless set otherwise.
pub const DEFAULT_SCHEMA: &str = "jobcast";

/// Advisory-lock key held while migrating ("jobcastM" in ASCII): two gateways
/// starting at once would otherwise race on `CREATE SCHEMA IF NOT EXISTS`,
/// which is not safe against a concurrent twin.
const MIGRATE_LOCK_KEY: i64 = 0x6a6f_6263_6173_744d;

/// (version, SHA-384 of the text databases applied) of reworded migrations.
const REWORDED_MIGRATIONS: &[(i64, &str)] = &[(
    20261123000001,
    "498fd940eebc3efb60dd5ec492f8ae53d749a538d1b090219c55a6584f89c6748fd364aec9b0e204720782f7d84fa2b6",
)];

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What Postgres knows of a job.
#[derive(Debug)]
pub struct StoredJob {
    pub owner_id: String,
    /// The snapshot, when the row has one that is a valid document.
    pub doc: Option<ProgressDoc>,
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    rules: DocRules,
    /// A valid unquoted identifier (checked in [`Store::with_schema`]), so it
    /// is spliced into SQL text as is.
    schema: Arc<str>,
    load_sql: Arc<str>,
}

impl Store {
    /// A lazily connecting pool: jobcast starts even while Postgres is down.
    /// The tables are looked for in [`DEFAULT_SCHEMA`]; see [`Store::with_schema`].
    pub fn connect_lazy(url: &str, rules: DocRules) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(PG_POOL_SIZE)
            .acquire_timeout(PG_ACQUIRE_TIMEOUT)
            .connect_lazy(url)?;
        Store {
            pool,
            rules,
            schema: Arc::from(""),
            load_sql: Arc::from(""),
        }
        .with_schema(DEFAULT_SCHEMA)
    }

    /// The same store with its tables in `schema` (`JOBCAST_PG_SCHEMA`).
    pub fn with_schema(mut self, schema: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            is_pg_identifier(schema),
            "{schema:?} is not a plain Postgres identifier"
        );
        self.schema = Arc::from(schema);
        self.load_sql = Arc::from(format!(
            "SELECT owner_id, snapshot, seq FROM {} WHERE id = $1",
            self.jobs_table()
        ));
        Ok(self)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// `schema.jobs`, for SQL text.
    pub fn jobs_table(&self) -> String {
        format!("{}.jobs", self.schema)
    }

    /// Creates the schema and applies `migrations/` inside it. A database where
    /// earlier versions put the tables in `public` has them moved by a migration
    /// (rows, index, trigger and NOTIFY function kept).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = sqlx::migrate!("./migrations");
        // A connection of its own, closed afterwards: its search_path must
        // not leak into the pool.
        let mut conn = self.pool.acquire().await?.detach();
        let result = self.migrate_on(&mut conn, &migrator).await;
        let _ = conn.close().await;
        result
    }

    async fn migrate_on(
        &self,
        conn: &mut PgConnection,
        migrator: &sqlx::migrate::Migrator,
    ) -> anyhow::Result<()> {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATE_LOCK_KEY)
            .execute(&mut *conn)
            .await?;
        let result = async {
            sqlx::raw_sql(&format!(
                "CREATE SCHEMA IF NOT EXISTS {0}; SET search_path TO {0}",
                self.schema
            ))
            .execute(&mut *conn)
            .await
            .with_context(|| format!("creating schema {} (JOBCAST_PG_SCHEMA)", self.schema))?;
            self.accept_reworded(&mut *conn, migrator).await?;
            migrator.run(&mut *conn).await?;
            anyhow::Ok(())
        }
        .await;
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATE_LOCK_KEY)
            .execute(&mut *conn)
            .await?;
        result
    }

    /// Migrations whose comments were reworded after databases applied them
    /// record the old text's checksum, which sqlx would refuse as a modified
    /// migration. For exactly those versions and exactly the old checksum, the
    /// record is moved to the new one; any other difference is still refused.
    async fn accept_reworded(
        &self,
        conn: &mut PgConnection,
        migrator: &sqlx::migrate::Migrator,
    ) -> anyhow::Result<()> {
        // The migrations record of this schema (search_path is set to it).
        let table: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
                .fetch_one(&mut *conn)
                .await?;
        if table.is_none() {
            return Ok(());
        }
        for (version, old_hex) in REWORDED_MIGRATIONS {
            let Some(migration) = migrator.iter().find(|m| m.version == *version) else {
                continue;
            };
            let old = hex_bytes(old_hex).context("a checksum in REWORDED_MIGRATIONS")?;
            sqlx::query(
                "UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2 AND checksum = $3",
            )
            .bind(&*migration.checksum)
            .bind(version)
            .bind(old)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    pub async fn load(&self, job: &JobId) -> Result<Option<StoredJob>, sqlx::Error> {
        let row: Option<(String, Option<Value>, Option<i64>)> = sqlx::query_as(&self.load_sql)
            .bind(job.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(owner_id, snapshot, seq)| {
            let doc = match snapshot {
                Some(Value::Object(mut map)) => {
                    if let (Some(seq), false) = (seq, map.contains_key("seq")) {
                        map.insert("seq".into(), seq.into());
                    }
                    match ProgressDoc::from_object(&map, &self.rules) {
                        Ok(d) => Some(d),
                        Err(e) => {
                            tracing::warn!(job = %job, error = %e, "jobs.snapshot dropped");
                            None
                        }
                    }
                }
                Some(Value::Null) | None => None,
                Some(_) => {
                    tracing::warn!(job = %job, "jobs.snapshot is not a JSON object; ignored");
                    metrics::counter!("jobcast_documents_dropped_total", "reason" => "not_object")
                        .increment(1);
                    None
                }
            };
            StoredJob { owner_id, doc }
        }))
    }

    /// The ids of the jobs whose row names `group` (at most `limit`).
    pub async fn group_jobs(&self, group: &str, limit: usize) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(&format!(
            "SELECT id FROM {} WHERE group_id = $1 LIMIT $2",
            self.jobs_table()
        ))
        .bind(group)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
    }

    /// The group a job's row names, if any.
    pub async fn job_group(&self, job: &JobId) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(&format!(
            "SELECT group_id FROM {} WHERE id = $1",
            self.jobs_table()
        ))
        .bind(job.as_str())
        .fetch_optional(&self.pool)
        .await
        .map(Option::flatten)
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}
