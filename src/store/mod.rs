//! Every SQL query jobcast makes, against the `jobs` table of `migrations/`:
//! fallback reads (snapshot and owner) and health here; write-behind and the
//! retention sweep in their submodules. Postgres is optional: without
//! DATABASE_URL there is no `Store` and callers skip it.

pub mod retention;
pub mod write_behind;

use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::job::{DocRules, JobId, ProgressDoc};

/// Bound on acquiring a Postgres connection: a dead Postgres must not hold a
/// watcher's first state longer than this.
pub const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
pub const PG_POOL_SIZE: u32 = 8;

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
        sqlx::migrate!("./migrations").run(&self.pool).await?;
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
