//! The subcommands other than `serve`: `migrate`, `cleanup`, `token`, `publish`,
//! `demo`, `tail` (in [`tail`]), and the `--dev` banner. `main` only dispatches here.

pub mod tail;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::auth::Claims;
use crate::auth::claims::now_secs;
use crate::config::{RedisTarget, Settings};
use crate::job::{DocRules, JobId, MAX_JOB_ID_LEN, ProgressDoc};
use crate::startup::App;
use crate::store::Store;
use crate::upstream::sentinel::SentinelPrimary;
use jobcast_publish::{Publisher, RedisLocation};

fn store(s: &Settings) -> anyhow::Result<Store> {
    let url = s
        .database_url
        .as_ref()
        .context("DATABASE_URL must be set for this command")?;
    Store::connect_lazy(url.expose(), DocRules::from_settings(s))?.with_schema(&s.pg_schema)
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

/// Mints a token with the configured `JWT_SECRET` and prints it alone on
/// stdout (for `TOKEN=$(jobcast token ...)`). `aud`/`iss` are added where the
/// gateway checks them, and the token is verified with the same settings
/// before it is printed, so what comes out is accepted by a gateway
/// configured alike.
pub fn token(
    s: &Settings,
    sub: String,
    jobs: Vec<String>,
    roles: Vec<String>,
    groups: Vec<String>,
    ttl: u64,
) -> anyhow::Result<()> {
    println!("{}", mint_token(s, sub, jobs, roles, groups, ttl)?);
    Ok(())
}

/// The token `jobcast token` prints (also minted by `jobcast tail`).
pub fn mint_token(
    s: &Settings,
    sub: String,
    jobs: Vec<String>,
    roles: Vec<String>,
    groups: Vec<String>,
    ttl: u64,
) -> anyhow::Result<String> {
    let secret = s.jwt_secret.as_ref().context(
        "minting tokens needs JWT_SECRET (HS256); with a public key, tokens come from your issuer",
    )?;
    let now = now_secs();
    let claims = Claims {
        sub,
        exp: now.saturating_add(ttl),
        nbf: None,
        iat: Some(now),
        jobs: split_list(jobs),
        roles: split_list(roles),
        groups: split_list(groups),
    };
    if claims.has_role(crate::auth::Role::Publisher) {
        if claims.jobs.is_empty() {
            eprintln!(
                "warning: a publisher token without --job publishes nowhere; name its jobs with --job"
            );
        } else if claims.jobs.iter().any(|j| j == "*") {
            eprintln!(
                "warning: this publisher token may publish to EVERY job (--job '*'); give it only to trusted services"
            );
        }
    }
    #[derive(serde::Serialize)]
    struct Minted<'a> {
        #[serde(flatten)]
        claims: &'a Claims,
        #[serde(skip_serializing_if = "Option::is_none")]
        aud: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        iss: Option<&'a str>,
    }
    let minted = Minted {
        claims: &claims,
        aud: s.jwt_audience.as_deref(),
        iss: s.jwt_issuer.as_deref(),
    };
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &minted,
        &jsonwebtoken::EncodingKey::from_secret(secret.expose().as_bytes()),
    )?;
    crate::auth::Verifier::from_settings(s, None)?
        .verify(&token)
        .map_err(|e| anyhow::anyhow!("the minted token does not verify: {e}"))?;
    Ok(token)
}

/// `--role a,b --role c` → `[a, b, c]`.
fn split_list(values: Vec<String>) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Writes one document like a worker (SET with TTL + PUBLISH, atomically).
/// `document` `-` reads it from stdin. The document is checked as the gateway
/// would (a JSON object within JOBCAST_MAX_DOCUMENT_BYTES) before anything is
/// written. With `group`, the document's group field is set to it (a
/// document naming another group is refused) and the job joins the group's set.
pub async fn publish(
    s: &Settings,
    job: &str,
    document: &str,
    ttl: u64,
    group: Option<&str>,
) -> anyhow::Result<()> {
    let job = JobId::parse(job).with_context(|| format!("job id {job:?}"))?;
    let group = group
        .map(|g| {
            JobId::parse(g).map_err(|_| {
                anyhow::anyhow!(
                    "group {g:?}: a group name is 1-{MAX_JOB_ID_LEN} characters from A-Z a-z 0-9 . _ : -"
                )
            })
        })
        .transpose()?;
    let text = if document == "-" {
        let mut buf = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
        buf
    } else {
        document.to_owned()
    };
    let rules = DocRules::from_settings(s);
    let text = match &group {
        None => text,
        Some(group) => with_group(text.trim(), &s.group_field, group.as_str())?,
    };
    let doc = ProgressDoc::parse(text.trim().as_bytes(), &rules).map_err(|e| {
        anyhow::anyhow!(
            "{e} (the document must be a JSON object of at most {} bytes)",
            rules.max_bytes
        )
    })?;
    let publisher = publisher(s)
        .await?
        .with_group_prefix(&s.group_prefix)
        .with_ttl(ttl);
    let receivers = publisher
        .write_in_group(&job, &doc.json, group.as_ref())
        .await
        .context("writing to Redis (REDIS_URL)")?;
    println!(
        "published to {} ({receivers} channel subscribers)",
        publisher.key(&job)
    );
    Ok(())
}

/// A publisher for wherever the settings say Redis is (the primary the
/// sentinels name now, behind sentinels).
async fn publisher(s: &Settings) -> anyhow::Result<Publisher> {
    let target = s.redis_target().map_err(anyhow::Error::msg)?;
    let location = match &target {
        RedisTarget::Sentinel(t) => {
            let (host, port) = SentinelPrimary::new(t.clone())
                .discover()
                .await
                .context("no sentinel (REDIS_SENTINELS) names a reachable primary")?;
            RedisLocation::Single(t.primary_info(&host, port))
        }
        other => location_now(other).context("REDIS_URL")?,
    };
    Ok(Publisher::connect_to(location, &s.key_prefix)?)
}

/// One server or a cluster as the publisher takes it (`None` behind sentinels).
fn location_now(target: &RedisTarget) -> Option<RedisLocation> {
    match target {
        RedisTarget::Single(info) => Some(RedisLocation::Single(info.clone())),
        RedisTarget::Cluster(seeds) => Some(RedisLocation::Cluster(seeds.clone())),
        RedisTarget::Sentinel(_) => None,
    }
}

/// The document text with `field` set to `group`; refuses a document that
/// already names a different group.
fn with_group(text: &str, field: &str, group: &str) -> anyhow::Result<String> {
    let mut map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).context("the document must be a JSON object")?;
    match map.get(field) {
        None | Some(serde_json::Value::Null) => {
            map.insert(field.to_owned(), group.into());
        }
        Some(v) if v.as_str() == Some(group) => {}
        Some(v) => anyhow::bail!("the document's {field} is {v}, not --group {group}"),
    }
    Ok(serde_json::to_string(&map)?)
}

pub async fn demo(
    s: &Settings,
    jobs: usize,
    owner: String,
    group: Option<String>,
    once: bool,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let publisher = publisher(s).await?;
    let mut runs = Vec::new();
    for i in 1..=jobs.max(1) {
        let job = JobId::parse(&format!("demo-{i}"))?;
        runs.push(tokio::spawn(crate::demo::run(
            publisher.clone(),
            job,
            owner.clone(),
            group.clone(),
            once,
            stop.clone(),
        )));
    }
    for r in runs {
        let _ = r.await;
    }
    Ok(())
}

/// Jobs `--dev` simulates (`demo-1` ..), all in the group [`DEV_GROUP`].
const DEV_JOBS: usize = 4;
const DEV_GROUP: &str = "demo";
/// Their first runs start this far apart, so the dashboard's bars differ.
const DEV_STAGGER: std::time::Duration = std::time::Duration::from_secs(5);

/// `--dev`: prints the demo URLs and a token, and starts simulated jobs in one group.
pub fn dev_banner(app: &App) -> anyhow::Result<()> {
    let now = now_secs();
    let jobs: Vec<String> = (1..=DEV_JOBS).map(|i| format!("demo-{i}")).collect();
    let claims = Claims {
        sub: "demo-user".into(),
        exp: now + 24 * 3600,
        nbf: None,
        iat: Some(now),
        jobs: jobs.clone(),
        roles: vec!["publisher".into()],
        // The dashboard's group stream.
        groups: vec![DEV_GROUP.into()],
    };
    let token = app.mint(&claims)?;
    let addr = app.addr();
    let state = app.state();
    let Some(location) = state
        .settings
        .redis_target()
        .ok()
        .and_then(|t| location_now(&t))
    else {
        anyhow::bail!("--dev needs REDIS_URL to name one server or a cluster");
    };
    let publisher = Publisher::connect_to(location, &state.settings.key_prefix)?;
    for (i, job) in jobs.iter().enumerate() {
        let (publisher, job, stop) = (
            publisher.clone(),
            JobId::parse(job)?,
            state.shutdown.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(DEV_STAGGER * i as u32) => {}
            }
            crate::demo::run(
                publisher,
                job,
                "demo-user".into(),
                Some(DEV_GROUP.into()),
                false,
                stop,
            )
            .await;
        });
    }
    println!();
    println!(
        "  jobcast is running in --dev mode (random JWT secret, simulated jobs demo-1..demo-{DEV_JOBS} in group {DEV_GROUP})"
    );
    println!();
    println!("  dashboard:  http://{addr}/?group={DEV_GROUP}&token={token}");
    println!("  one job:    http://{addr}/?job=demo-1&token={token}");
    println!("  token:      {token}");
    println!(
        "  try:        curl -N -H 'Authorization: Bearer {token}' http://{addr}/groups/{DEV_GROUP}/events"
    );
    println!();
    Ok(())
}
