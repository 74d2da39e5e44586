//! The subcommands other than `serve`: `migrate`, `cleanup`, `token`, `publish`,
//! `demo`, and the `--dev` banner. `main` only dispatches here.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::auth::Claims;
use crate::auth::claims::now_secs;
use crate::config::Settings;
use crate::job::{DocRules, JobId, ProgressDoc};
use crate::startup::App;
use crate::store::Store;
use crate::upstream::redis_reader::RedisReader;

fn store(s: &Settings) -> anyhow::Result<Store> {
    let url = s
        .database_url
        .as_ref()
        .context("DATABASE_URL must be set for this command")?;
    Store::connect_lazy(url.expose(), DocRules::from_settings(s))
}

pub async fn migrate(s: &Settings) -> anyhow::Result<()> {
    store(s)?.migrate().await.context("applying migrations")?;
    println!("migrations applied");
    Ok(())
}

pub async fn cleanup(s: &Settings) -> anyhow::Result<()> {
    let deleted = store(s)?.sweep(s.retention_days).await?;
    match deleted {
        Some(n) => println!(
            "deleted {n} finished jobs older than {} days",
            s.retention_days
        ),
        None => println!("another instance is sweeping; nothing done"),
    }
    Ok(())
}

pub fn token(
    s: &Settings,
    sub: String,
    jobs: Vec<String>,
    roles: Vec<String>,
    ttl: u64,
) -> anyhow::Result<()> {
    let verifier = crate::auth::Verifier::from_settings(s, None)?;
    let now = now_secs();
    let claims = Claims {
        sub,
        exp: now + ttl,
        nbf: None,
        iat: Some(now),
        jobs,
        roles,
    };
    println!("{}", verifier.mint(&claims)?);
    Ok(())
}

pub async fn publish(s: &Settings, job: &str, document: &str, ttl: u64) -> anyhow::Result<()> {
    let job = JobId::parse(job)?;
    let rules = DocRules::from_settings(s);
    let doc =
        ProgressDoc::parse(document.as_bytes(), &rules).map_err(|e| anyhow::anyhow!("{e}"))?;
    let reader = RedisReader::new(&s.redis_url, &s.key_prefix, rules)?;
    let receivers = reader.write(&job, &doc.json, ttl).await?;
    println!(
        "published to {}{} ({receivers} subscribers)",
        s.key_prefix, job
    );
    Ok(())
}

pub async fn demo(
    s: &Settings,
    jobs: usize,
    owner: String,
    once: bool,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let reader = RedisReader::new(&s.redis_url, &s.key_prefix, DocRules::from_settings(s))?;
    let mut runs = Vec::new();
    for i in 1..=jobs.max(1) {
        let job = JobId::parse(&format!("demo-{i}"))?;
        runs.push(tokio::spawn(crate::publish::demo::run(
            reader.clone(),
            job,
            owner.clone(),
            once,
            stop.clone(),
        )));
    }
    for r in runs {
        let _ = r.await;
    }
    Ok(())
}

/// `--dev`: prints the demo URL and a token, and starts a simulated job.
pub fn dev_banner(app: &App) -> anyhow::Result<()> {
    let now = now_secs();
    let claims = Claims {
        sub: "demo-user".into(),
        exp: now + 24 * 3600,
        nbf: None,
        iat: Some(now),
        jobs: vec![],
        roles: vec!["publisher".into()],
    };
    let token = app.mint(&claims)?;
    let addr = app.addr();
    let state = app.state();
    let job = JobId::parse("demo-1")?;
    tokio::spawn(crate::publish::demo::run(
        state.hub.reader().clone(),
        job,
        "demo-user".into(),
        false,
        state.shutdown.clone(),
    ));
    println!();
    println!("  jobcast is running in --dev mode (random JWT secret, simulated job demo-1)");
    println!();
    println!("  demo page:  http://{addr}/?job=demo-1&token={token}");
    println!("  token:      {token}");
    println!(
        "  try:        curl -N -H 'Authorization: Bearer {token}' http://{addr}/jobs/demo-1/events"
    );
    println!();
    Ok(())
}
