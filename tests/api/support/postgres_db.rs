//! [`TestDb`]: a fresh Postgres database per test, `jobcast_test_<random
//! hex>`, created through the admin URL in `JOBCAST_TEST_DATABASE_URL`
//! (default `postgres://postgres:postgres@127.0.0.1:5432/postgres`) and
//! dropped `WITH (FORCE)` when the value is dropped, so tests never share
//! tables or see each other's NOTIFYs.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::Connection as _;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};

/// Used when `JOBCAST_TEST_DATABASE_URL` is not set (what `scripts/services.sh` sets up).
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DROP_TIMEOUT: Duration = Duration::from_secs(30);

/// A database that exists for as long as this value. See the module docs.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    url: String,
    admin_url: String,
    dropped: bool,
}

impl TestDb {
    /// The admin URL tests create their databases through.
    pub fn admin_url() -> String {
        std::env::var("JOBCAST_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
    }

    /// Creates a fresh database through [`TestDb::admin_url`].
    pub async fn create() -> Self {
        Self::create_with(&Self::admin_url()).await
    }

    /// Creates a fresh database through `admin_url` (any database the role
    /// can connect to; the role needs CREATEDB).
    pub async fn create_with(admin_url: &str) -> Self {
        let name = format!("jobcast_test_{:016x}", rand::random::<u64>());
        let url = url_with_database(admin_url, &name);
        let mut admin = connect(admin_url)
            .await
            .unwrap_or_else(|e| panic!("TestDb: {e:#} (is Postgres up? run scripts/services.sh)"));
        // template0 + explicit encoding: UTF8 whatever the cluster default is.
        let create = format!(
            r#"CREATE DATABASE "{name}" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"#
        );
        sqlx::raw_sql(&create)
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("TestDb: create database {name}: {e}"));
        let _ = admin.close().await;
        TestDb {
            name,
            url,
            admin_url: admin_url.to_owned(),
            dropped: false,
        }
    }

    /// Connection URL of this database (the admin URL with its path replaced),
    /// for `DATABASE_URL` of a jobcast under test.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A small pool on this database.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("TestDb: pool on {}: {e}", self.name))
    }
}

impl Drop for TestDb {
    /// Best-effort: runs the `DROP DATABASE` on a thread with its own
    /// runtime (this may be called inside or outside a tokio runtime, or
    /// while a test unwinds), waits for it, and only prints on failure.
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        self.dropped = true;
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let outcome = std::thread::spawn(move || -> anyhow::Result<()> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("build a runtime to drop the test database")?
                .block_on(drop_database(&admin_url, &name))
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: TestDb: {e:#}"),
            Err(_) => eprintln!(
                "warning: TestDb: the thread dropping {} panicked",
                self.name
            ),
        }
    }
}

async fn connect(url: &str) -> anyhow::Result<PgConnection> {
    tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url))
        .await
        .with_context(|| {
            format!(
                "connect to {}: timed out after {CONNECT_TIMEOUT:?}",
                redact(url)
            )
        })?
        .with_context(|| format!("connect to {}", redact(url)))
}

async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = connect(admin_url).await?;
    let statement = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
    tokio::time::timeout(DROP_TIMEOUT, sqlx::raw_sql(&statement).execute(&mut admin))
        .await
        .with_context(|| format!("drop database {name}: timed out after {DROP_TIMEOUT:?}"))?
        .with_context(|| format!("drop database {name}"))?;
    let _ = admin.close().await;
    Ok(())
}

/// `admin_url` with its path (the database name) replaced by `/{name}`;
/// user, password, host, port and query (`?sslmode=...`) are kept.
fn url_with_database(admin_url: &str, name: &str) -> String {
    let mut url = reqwest::Url::parse(admin_url)
        .unwrap_or_else(|e| panic!("TestDb: JOBCAST_TEST_DATABASE_URL is not a URL ({e})"));
    url.set_path(&format!("/{name}"));
    url.into()
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.into()
        }
        _ => url.to_owned(),
    }
}
