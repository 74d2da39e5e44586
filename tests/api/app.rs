//! `spawn_app()`: a gateway built exactly as `main` builds it (`App::build`), on
//! port 0, against the test's own `redis-server` (and database, when asked), with
//! helpers to mint tokens and write job state like a worker.

use std::net::SocketAddr;
use std::time::Duration;

use jobcast::auth::Claims;
use jobcast::auth::claims::now_secs;
use jobcast::config::{Secret, Settings};
use jobcast::startup::App;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use crate::clients::Gateway;
use crate::support::{RedisServer, TestDb};

pub const SECRET: &str = "integration-test-secret-of-32-bytes-or-more";

pub struct TestApp {
    pub addr: SocketAddr,
    pub redis: RedisServer,
    pub db: Option<TestDb>,
    pub settings: Settings,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

pub struct Options {
    pub postgres: bool,
    pub redis: Option<RedisServer>,
    pub tweak: Box<dyn FnOnce(&mut Settings) + Send>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            postgres: false,
            redis: None,
            tweak: Box::new(|_| {}),
        }
    }
}

pub fn test_settings(redis: &RedisServer) -> Settings {
    let mut s = Settings::defaults();
    s.listen = "127.0.0.1:0".parse().expect("addr");
    s.redis_url = redis.url();
    s.jwt_secret = Some(Secret::new(SECRET));
    s.heartbeat_secs = 15;
    s.static_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/static").into();
    s
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(opts: Options) -> TestApp {
    let redis = match opts.redis {
        Some(r) => r,
        None => RedisServer::start().await,
    };
    let db = if opts.postgres {
        Some(TestDb::create().await)
    } else {
        None
    };
    let mut settings = test_settings(&redis);
    if let Some(db) = &db {
        settings.database_url = Some(Secret::new(db.url()));
    }
    (opts.tweak)(&mut settings);
    let app = App::build(settings.clone()).await.expect("App::build");
    let addr = app.addr();
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run());
    TestApp {
        addr,
        redis,
        db,
        settings,
        shutdown,
        server: Some(server),
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn claims(sub: &str) -> Claims {
    let now = now_secs();
    Claims {
        sub: sub.into(),
        exp: now + 600,
        nbf: None,
        iat: Some(now),
        jobs: vec![],
        roles: vec![],
        groups: vec![],
    }
}

/// Signs any claims with the test secret (HS256).
pub fn sign(claims: &Claims) -> String {
    sign_with(claims, SECRET)
}

pub fn sign_with(claims: &Claims, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

/// An `Authorization` header value for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A progress document as a worker writes it: owned by `alice`, with
/// `overall_progress` equal to `seq`.
pub fn doc(seq: i64, status: &str) -> String {
    format!(r#"{{"seq":{seq},"owner_id":"alice","status":"{status}","overall_progress":{seq}}}"#)
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// A token for user `sub`.
    pub fn token(&self, sub: &str) -> String {
        sign(&claims(sub))
    }

    /// `Bearer <token for sub>`, for an `Authorization` header.
    pub fn bearer(&self, sub: &str) -> String {
        bearer(&self.token(sub))
    }

    pub fn key(&self, job: &str) -> String {
        format!("{}{}", self.settings.key_prefix, job)
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        self.redis.connection().await
    }

    /// `SET PREFIX{job} doc EX 7200`, as a worker does.
    pub async fn set(&self, job: &str, doc: &str) {
        let mut c = self.redis().await;
        let _: () = c.set_ex(self.key(job), doc, 7200).await.expect("SET");
    }

    /// `PUBLISH PREFIX{job} doc`.
    pub async fn publish(&self, job: &str, doc: &str) {
        let mut c = self.redis().await;
        let _: i64 = c.publish(self.key(job), doc).await.expect("PUBLISH");
    }

    /// Replaces the job's key with a hash of `fields` (`DEL`, then `HSET`).
    pub async fn set_hash(&self, job: &str, fields: &[(&str, &str)]) {
        let mut c = self.redis().await;
        let _: () = c.del(self.key(job)).await.expect("DEL");
        let _: () = c.hset_multiple(self.key(job), fields).await.expect("HSET");
    }

    /// Whether the job's key exists.
    pub async fn exists(&self, job: &str) -> bool {
        self.redis()
            .await
            .exists(self.key(job))
            .await
            .expect("EXISTS")
    }

    /// Subscribers of a channel, from Redis itself.
    pub async fn numsub(&self, channel: &str) -> i64 {
        let mut c = self.redis().await;
        let r: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut c)
            .await
            .expect("NUMSUB");
        r.first().map(|(_, n)| *n).unwrap_or(0)
    }

    pub fn keyspace_channel(&self, job: &str) -> String {
        format!("__keyspace@0__:{}", self.key(job))
    }

    /// Stops the gateway and waits (bounded) until it has drained.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("drained in time")
                .expect("join");
        }
    }
}

impl Gateway for TestApp {
    fn url(&self, path: &str) -> String {
        TestApp::url(self, path)
    }

    fn ws_url(&self, path: &str) -> String {
        TestApp::ws_url(self, path)
    }
}
