//! `App::build` wires every part from one `Settings` — used by `main` and by the
//! tests alike — and `App::run` serves until the shutdown token fires, then
//! drains. Binding to port 0 gives tests a free port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::jwks::Jwks;
use crate::auth::{Claims, Verifier};
use crate::config::RedisTarget;
use crate::config::{RecorderMode, Secret, Settings};
use crate::http::origin::Origin;
use crate::hub::Hub;
use crate::job::DocRules;
use crate::limits::Limits;
use crate::multi::groups::Groups;
use crate::readiness::Readiness;
use crate::state::{AppState, SharedState};
use crate::store::Store;
use crate::store::recorder::Recorder;
use crate::store::retention;
use crate::store::write_behind::WriteBehind;
use crate::upstream::cluster_listener::ClusterListener;
use crate::upstream::loader::Loader;
use crate::upstream::pg_listener::PgListener;
use crate::upstream::redis_conn::Commands;
use crate::upstream::redis_listener::{PubSubEndpoint, RedisListener};
use crate::upstream::redis_reader::RedisReader;
use crate::upstream::redis_selftest;
use crate::upstream::redis_setup::KeyspaceMonitor;
use crate::upstream::resync;
use crate::upstream::sentinel::SentinelPrimary;

pub struct App {
    addr: SocketAddr,
    state: SharedState,
    listener: tokio::net::TcpListener,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Accepted sockets open at once (below the open-file limit).
    max_sockets: usize,
    /// Drained after the server stopped, so the last states reach Postgres.
    write_behind: Option<WriteBehind>,
    /// The recorder's task: on shutdown it drains its stream and reads, and
    /// the write-behind's flush waits for it to return.
    recorder: Option<tokio::task::JoinHandle<()>>,
}

impl App {
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        settings.validate().map_err(anyhow::Error::msg)?;
        let fd_limit = crate::sys::raise_nofile_limit();
        let max_connections = match settings.max_connections {
            0 => fd_limit.saturating_sub(crate::sys::RESERVED_FDS).max(64) as usize,
            n => n,
        };
        let max_sockets = crate::sys::max_sockets(fd_limit);
        info!(
            fd_limit,
            max_connections, max_sockets, "open-file limit raised; connections allowed"
        );
        let _ = crate::metrics::handle();

        let dev_secret = (settings.dev
            && settings.jwt_secret.is_none()
            && settings.jwt_public_key_file.is_none())
        .then(|| Secret::new(random_hex(32)));
        let verifier = Verifier::from_settings(&settings, dev_secret.as_ref())?;
        if settings.jwt_public_key_file.is_some() && settings.jwt_audience.is_none() {
            warn!(
                "JWT_PUBLIC_KEY_FILE is set but JWT_AUDIENCE is not: tokens this issuer signed for \
                 ANY audience (other services) are accepted; set JWT_AUDIENCE to this gateway's"
            );
        }
        let rules = DocRules::from_settings(&settings);
        let auth_hook = crate::auth::hook::AuthHook::from_settings(&settings)?;

        let target = settings.redis_target().map_err(anyhow::Error::msg)?;
        info!(redis = %target.describe(), "redis");
        let sentinel = match &target {
            RedisTarget::Sentinel(t) => Some(SentinelPrimary::new(t.clone())),
            _ => None,
        };
        let commands = Commands::new(&target, sentinel.clone()).context("REDIS_URL")?;
        let reader = RedisReader::new(commands.clone(), &settings.key_prefix, rules.clone());
        let store = match &settings.database_url {
            None => {
                warn!(
                    "DATABASE_URL is not set: running Redis-only (no snapshot fallback, no write-behind, no Postgres push)"
                );
                None
            }
            Some(url) => {
                let store = Store::connect_lazy(url.expose(), rules.clone())
                    .context("DATABASE_URL")?
                    .with_schema(&settings.pg_schema)?;
                if settings.migrate
                    && let Err(e) = store.migrate().await
                {
                    warn!(error = %e, "could not apply migrations (Postgres down?); carrying on, fallback reads will fail until it is up");
                }
                Some(store)
            }
        };
        if let Some(sentinel) = &sentinel
            && sentinel.discover().await.is_none()
        {
            warn!("no sentinel names a reachable redis primary yet; starting anyway, asking again");
        }
        let keyspace = Arc::new(KeyspaceMonitor::new(
            commands.clone(),
            settings.configure_redis,
        ));
        keyspace.check().await;

        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let verifier = match &settings.jwt_jwks_url {
            None => verifier,
            Some(url) => {
                if settings.jwt_audience.is_none() {
                    // An identity provider signs tokens for every application of
                    // the tenant with the same keys.
                    warn!(
                        "JWT_JWKS_URL is set but JWT_AUDIENCE is not: tokens the provider signed for \
                         ANY audience (other applications) are accepted; set JWT_AUDIENCE to this gateway's"
                    );
                }
                let jwks = Jwks::new(url, settings.jwks_refresh_secs)?;
                if let Err(e) = jwks.refresh("start").await {
                    if !verifier.has_static_key() {
                        anyhow::bail!(
                            "{e}; no other key is configured (JWT_SECRET, JWT_PUBLIC_KEY_FILE), so no token could be verified"
                        );
                    }
                    warn!(error = %e, "starting without the JWK Set: tokens signed with JWT_SECRET or JWT_PUBLIC_KEY_FILE are verified meanwhile; retrying");
                }
                tasks.push(tokio::spawn(jwks.clone().run(shutdown.clone())));
                verifier.with_jwks(jwks)
            }
        };
        let redis_up = Arc::new(AtomicBool::new(false));
        let stall_after =
            (settings.stall_secs > 0).then(|| Duration::from_secs(settings.stall_secs));
        let (groups, group_cmds) =
            Groups::new(reader.clone(), store.clone(), &settings.group_prefix);
        let (hub, upstream_cmds) = Hub::new(store.is_some(), stall_after, groups.clone());
        let loader = Loader::new(
            hub.clone(),
            reader.clone(),
            store.clone(),
            rules.clone(),
            redis_up.clone(),
        );
        redis_selftest::check(
            commands.probe_client().await,
            &reader,
            &format!(
                "__keyspace@{}__:{}",
                settings.redis_db(),
                settings.key_prefix
            ),
            &settings.key_prefix,
        )
        .await
        .context("Redis permissions")?;
        let readiness = Readiness::new(
            reader.clone(),
            store.clone(),
            keyspace.clone(),
            sentinel.clone(),
            target.is_cluster().then(|| redis_up.clone()),
        )
        .await;
        match &target {
            RedisTarget::Cluster(seeds) => {
                let listener = ClusterListener::new(
                    loader.clone(),
                    seeds.clone(),
                    &settings.key_prefix,
                    redis_up.clone(),
                    keyspace.clone(),
                    groups.clone(),
                );
                tasks.push(tokio::spawn(listener.run(
                    upstream_cmds,
                    group_cmds,
                    shutdown.clone(),
                )));
            }
            RedisTarget::Single(_) | RedisTarget::Sentinel(_) => {
                let endpoint = match (&sentinel, commands.probe_client().await) {
                    (Some(primary), _) => PubSubEndpoint::Sentinel(primary.clone()),
                    (None, Some(client)) => PubSubEndpoint::Fixed(client),
                    (None, None) => anyhow::bail!("REDIS_URL names no server"),
                };
                let listener = RedisListener::new(
                    loader.clone(),
                    reader.clone(),
                    endpoint,
                    &settings,
                    redis_up.clone(),
                    keyspace.clone(),
                    groups.clone(),
                )?;
                tasks.push(tokio::spawn(listener.run(
                    upstream_cmds,
                    group_cmds,
                    shutdown.clone(),
                )));
            }
        }
        if let Some(sentinel) = sentinel {
            tasks.push(tokio::spawn(sentinel.run(shutdown.clone())));
        }
        tasks.push(tokio::spawn(readiness.clone().run(shutdown.clone())));
        if settings.redis_check_secs > 0 {
            let period = Duration::from_secs(settings.redis_check_secs);
            let (keyspace, stop) = (keyspace.clone(), shutdown.clone());
            tasks.push(tokio::spawn(
                async move { keyspace.run(period, stop).await },
            ));
        }
        if settings.resync_secs > 0 {
            tasks.push(tokio::spawn(resync::run(
                loader.clone(),
                Duration::from_secs(settings.resync_secs),
                redis_up.clone(),
                shutdown.clone(),
            )));
        }
        // 1 only while this instance holds the recorder lock.
        metrics::gauge!("jobcast_recorder").set(0.0);
        let mut write_behind = None;
        let mut recorder_task = None;
        if let Some(store) = store {
            if settings.recorder == RecorderMode::Off {
                info!("JOBCAST_RECORDER=off: this instance never records states into Postgres");
            }
            if settings.recorder == RecorderMode::Auto {
                let wb = WriteBehind::new(store.clone());
                let recorder = Recorder::new(
                    store.clone(),
                    wb.clone(),
                    reader.clone(),
                    settings.redis_db(),
                    &settings.key_prefix,
                    rules.clone(),
                )?;
                tasks.push(tokio::spawn(wb.clone().run(shutdown.clone())));
                recorder_task = Some(tokio::spawn(recorder.run(shutdown.clone())));
                write_behind = Some(wb);
            }
            let pg = PgListener::new(
                loader.clone(),
                store.clone(),
                groups.clone(),
                redis_up.clone(),
            );
            tasks.push(tokio::spawn(pg.run(shutdown.clone())));
            tasks.push(tokio::spawn(retention::run(
                store,
                settings.retention_days,
                shutdown.clone(),
            )));
        }

        let tcp = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let addr = tcp.local_addr()?;
        let allowed_origins = settings
            .allowed_origins
            .iter()
            .filter_map(|o| Origin::parse(o.trim().trim_end_matches('/')))
            .collect();
        let state = Arc::new(AppState {
            limits: Limits::new(max_connections, settings.max_connections_per_user),
            connect_rate: crate::limits::rate::ConnectRate::new(settings.max_connect_rate),
            settings,
            hub,
            loader,
            redis: reader,
            rules,
            groups,
            verifier,
            auth_hook,
            shutdown,
            redis_up,
            readiness,
            allowed_origins,
        });
        Ok(App {
            addr,
            state,
            listener: tcp,
            tasks,
            max_sockets,
            write_behind,
            recorder: recorder_task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> SharedState {
        self.state.clone()
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Mints a token with the gateway's own key (HS256 only: `--dev`, tests, CLI).
    pub fn mint(&self, claims: &Claims) -> anyhow::Result<String> {
        self.state.verifier.mint(claims)
    }

    /// Serves until the shutdown token is cancelled, then drains within
    /// `JOBCAST_SHUTDOWN_SECS`. The write-behind flush starts as soon as the
    /// recorder has drained (it hears the states already on their way and
    /// finishes its reads, within [`recorder::DRAIN_BOUND`](crate::store::recorder::DRAIN_BOUND)),
    /// alongside the HTTP drain, not after it: a client that never finishes its
    /// request head or stops reading can hold the HTTP drain past the deadline
    /// (where `main` exits), and must not cost the last states their write.
    pub async fn run(mut self) {
        let shutdown = self.state.shutdown.clone();
        let deadline = Duration::from_secs(self.state.settings.shutdown_secs);
        let routes = crate::http::routes(self.state.clone());
        info!(addr = %self.addr, "jobcast listening");
        let stall_after = Duration::from_secs(self.state.settings.sse_stall_secs);
        let serve = crate::http::server::serve(
            self.listener,
            routes,
            stall_after,
            shutdown.clone(),
            self.max_sockets,
        );
        let drain_bound = async {
            shutdown.cancelled().await;
            tokio::time::sleep(deadline.mul_f64(DRAIN_SHARE)).await;
        };
        let http = async {
            tokio::select! {
                _ = serve => {}
                _ = drain_bound => warn!("connections still open at the drain deadline; leaving them"),
            }
        };
        let recorder = self.recorder.take();
        let flush = async {
            shutdown.cancelled().await;
            let share = deadline.mul_f64(DRAIN_SHARE);
            let started = tokio::time::Instant::now();
            if let Some(recorder) = recorder {
                // Recorder drained, then the write-behind flushed.
                let abort = recorder.abort_handle();
                if tokio::time::timeout(RECORDER_WAIT.min(share / 2), recorder)
                    .await
                    .is_err()
                {
                    warn!("the recorder did not stop in time; flushing what it queued");
                    abort.abort();
                }
            }
            if let Some(wb) = &self.write_behind {
                wb.flush(share.saturating_sub(started.elapsed())).await;
            }
        };
        tokio::join!(http, flush);
        if let Some(wb) = &self.write_behind {
            // States that arrived while streams drained.
            wb.flush(deadline.mul_f64(FINAL_FLUSH_SHARE)).await;
        }
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Share of `JOBCAST_SHUTDOWN_SECS` given to the HTTP drain and, at the same
/// time, the first write-behind flush; then [`FINAL_FLUSH_SHARE`] for states
/// that arrived meanwhile. Together below 1, so both end before `main` exits.
const DRAIN_SHARE: f64 = 0.7;
const FINAL_FLUSH_SHARE: f64 = 0.25;
/// Bound on waiting for the recorder to return at shutdown: its drain
/// ([`DRAIN_BOUND`](crate::store::recorder::DRAIN_BOUND)) plus the release of
/// its lock session.
const RECORDER_WAIT: Duration = Duration::from_secs(2);

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}
