//! Every SQL query jobcast makes, against the `jobs` table of `migrations/`:
//! fallback reads (snapshot and owner) and health here; the recorder, its
//! write-behind and the retention sweep in their submodules. Postgres is optional: without
//! DATABASE_URL there is no `Store` and callers skip it.

pub mod recorder;
pub mod retention;
pub mod write_behind;

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::job::{DocRules, JobId, ProgressDoc};

/// Bound on acquiring a Postgres connection: a dead Postgres must not hold a
/// watcher's first state longer than this.
pub const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
pub const PG_POOL_SIZE: u32 = 8;

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
}

impl Store {
    /// A lazily connecting pool: jobcast starts even while Postgres is down.
    pub fn connect_lazy(url: &str, rules: DocRules) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(PG_POOL_SIZE)
            .acquire_timeout(PG_ACQUIRE_TIMEOUT)
            .connect_lazy(url)?;
        Ok(Store { pool, rules })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = sqlx::migrate!("./migrations");
        self.accept_reworded(&migrator).await?;
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// Migrations whose comments were reworded after databases applied them
    /// record the old text's checksum, which sqlx would refuse as a modified
    /// migration. For exactly those versions and exactly the old checksum, the
    /// record is moved to the new one; any other difference is still refused.
    async fn accept_reworded(&self, migrator: &sqlx::migrate::Migrator) -> anyhow::Result<()> {
        let table: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
                .fetch_one(&self.pool)
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
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    pub async fn load(&self, job: &JobId) -> Result<Option<StoredJob>, sqlx::Error> {
        let row: Option<(String, Option<Value>, Option<i64>)> =
            sqlx::query_as("SELECT owner_id, snapshot, seq FROM jobs WHERE id = $1")
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

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}
