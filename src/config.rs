//! Settings: one typed struct read from flags and environment variables, validated
//! once at start. Also the command line (subcommands) that `main` dispatches on.
//! Nothing else in the crate reads the environment.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::upstream::redis_target::RedisTarget;

/// A string that must never reach a log line: `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "jobcast",
    version,
    about = "Push gateway for long-running job progress"
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Apply the Postgres migrations in `migrations/` and exit.
    Migrate,
    /// Delete Postgres rows of jobs that ended more than JOBCAST_RETENTION_DAYS ago, once.
    Cleanup,
    /// Mint a token signed with the configured JWT_SECRET (HS256), for scripts and demos.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        sub: String,
        /// A job the bearer may watch (repeatable or comma-separated; `*` for all).
        #[arg(long = "job")]
        jobs: Vec<String>,
        /// A role (`admin`, `publisher`; repeatable or comma-separated).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// A group whose group stream the bearer may watch (repeatable or comma-separated; `*` for all).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Write one progress document for JOB to Redis (state key with TTL + channel).
    Publish {
        job: String,
        /// The progress document, a JSON object (`-` reads it from stdin).
        document: String,
        /// TTL of the state key in seconds.
        #[arg(long, default_value_t = 7200)]
        ttl: u64,
        /// Put the job in GROUP: the document gets the group field and the job
        /// is added to the group's set (JOBCAST_GROUP_PREFIX) with the same TTL.
        #[arg(long)]
        group: Option<String>,
    },
    /// Print each state of JOB as one JSON line as it arrives; exit 0 after `done`.
    Tail {
        job: String,
        /// The gateway's base URL (default: http:// + JOBCAST_LISTEN).
        #[arg(long)]
        url: Option<String>,
        /// A token to watch with (default: a short admin token minted from JWT_SECRET).
        #[arg(long, env = "JOBCAST_TOKEN", hide_env_values = true)]
        token: Option<Secret>,
    },
    /// Simulate realistic multi-stage jobs writing to Redis.
    Demo {
        /// How many jobs run at once (ids `demo-1` .. `demo-N`).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Owner (`owner_id`) of the simulated jobs.
        #[arg(long, default_value = "demo-user")]
        owner: String,
        /// Put the jobs in this group (a project): the demo page's dashboard
        /// (`/?group=`) shows them together.
        #[arg(long)]
        group: Option<String>,
        /// Run once and exit instead of looping.
        #[arg(long)]
        once: bool,
    },
}

/// OTLP over HTTP: binary protobuf or JSON (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    #[value(name = "http/protobuf")]
    HttpProtobuf,
    #[value(name = "http/json")]
    HttpJson,
}

/// Whether this instance may be the one that records every job's states into
/// Postgres (`JOBCAST_RECORDER`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum RecorderMode {
    /// Take the recorder's advisory lock when no other instance holds it.
    Auto,
    /// Never record (this instance still reads Postgres and LISTENs).
    Off,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Every setting of the gateway. Flags win over environment variables.
#[derive(Args, Debug, Clone)]
pub struct Settings {
    /// Address to listen on.
    #[arg(
        long,
        env = "JOBCAST_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,

    /// Redis URL; the db number picks the keyspace.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true,
        hide_env_values = true
    )]
    pub redis_url: String,

    /// REDIS_URL names Redis Cluster seeds (`redis://host:port[,host:port…]`);
    /// the `redis+cluster://` scheme says so by itself.
    #[arg(long, env = "JOBCAST_REDIS_CLUSTER", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub redis_cluster: bool,

    /// Sentinels (`host:port`, comma-separated) that name the Redis primary;
    /// REDIS_URL then gives only the user, password and db.
    #[arg(long, env = "REDIS_SENTINELS", value_delimiter = ',', global = true)]
    pub redis_sentinels: Vec<String>,

    /// The name the sentinels know the primary by.
    #[arg(long, env = "REDIS_SENTINEL_MASTER", global = true)]
    pub redis_sentinel_master: Option<String>,

    /// Postgres URL; unset means Redis-only.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<Secret>,

    /// Apply migrations when `serve` starts.
    #[arg(long, env = "JOBCAST_MIGRATE", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub migrate: bool,

    /// HS256 secret for verifying tokens.
    #[arg(long, env = "JWT_SECRET", global = true, hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// PEM public key (RSA → RS256, EC P-256 → ES256) for verifying tokens.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE", global = true)]
    pub jwt_public_key_file: Option<PathBuf>,

    /// URL of the identity provider's JWK Set (RS256/ES256 keys chosen by `kid`).
    #[arg(long, env = "JWT_JWKS_URL", global = true)]
    pub jwt_jwks_url: Option<String>,

    /// Seconds between JWK Set refreshes (a shorter `Cache-Control: max-age` wins).
    #[arg(
        long,
        env = "JOBCAST_JWKS_REFRESH_SECS",
        default_value_t = 300,
        global = true
    )]
    pub jwks_refresh_secs: u64,

    /// Required `aud` claim, when set.
    #[arg(long, env = "JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,

    /// Required `iss` claim, when set.
    #[arg(long, env = "JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,

    /// The application's auth endpoint, asked `GET {url}?job={id}` for requests without a valid JWT.
    #[arg(long, env = "JOBCAST_AUTH_URL", global = true)]
    pub auth_url: Option<String>,

    /// Request headers forwarded to JOBCAST_AUTH_URL (comma-separated).
    #[arg(
        long,
        env = "JOBCAST_AUTH_FORWARD_HEADERS",
        default_value = "Cookie,Authorization",
        value_delimiter = ',',
        global = true
    )]
    pub auth_forward_headers: Vec<String>,

    /// Seconds an auth-hook decision is cached, and the re-check period of open streams.
    #[arg(
        long,
        env = "JOBCAST_AUTH_CACHE_SECS",
        default_value_t = 30,
        global = true
    )]
    pub auth_cache_secs: u64,

    /// Prefix of state keys and job channels.
    #[arg(
        long,
        env = "JOBCAST_KEY_PREFIX",
        default_value = "progress:job:",
        global = true
    )]
    pub key_prefix: String,

    /// Turn on missing keyspace-notification flags with CONFIG SET at start.
    #[arg(long, env = "JOBCAST_CONFIGURE_REDIS", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub configure_redis: bool,

    /// Seconds between re-checks of Redis `notify-keyspace-events` (missing flags
    /// are added back where allowed); 0 checks only at start.
    #[arg(
        long,
        env = "JOBCAST_REDIS_CHECK_SECS",
        default_value_t = 10,
        global = true
    )]
    pub redis_check_secs: u64,

    /// Seconds between re-reads of every watched job's state key, which heal
    /// lost keyspace notifications; 0 turns the re-read off.
    #[arg(long, env = "JOBCAST_RESYNC_SECS", default_value_t = 10, global = true)]
    pub resync_secs: u64,

    /// Statuses that end a job's streams (case-insensitive).
    #[arg(
        long,
        env = "JOBCAST_TERMINAL_STATUSES",
        default_value = "completed,failed,cancelled",
        value_delimiter = ',',
        global = true
    )]
    pub terminal_statuses: Vec<String>,

    /// Document field naming the job's owner.
    #[arg(
        long,
        env = "JOBCAST_OWNER_FIELD",
        default_value = "owner_id",
        global = true
    )]
    pub owner_field: String,

    /// Document field naming the job's group (also the Postgres `group_id` column's source).
    #[arg(
        long,
        env = "JOBCAST_GROUP_FIELD",
        default_value = "group_id",
        global = true
    )]
    pub group_field: String,

    /// Prefix of group sets: writers `SADD {prefix}{group} {job}`.
    #[arg(
        long,
        env = "JOBCAST_GROUP_PREFIX",
        default_value = "progress:group:",
        global = true
    )]
    pub group_prefix: String,

    /// Postgres schema of jobcast's own tables (created by the migrations).
    #[arg(
        long,
        env = "JOBCAST_PG_SCHEMA",
        default_value = "jobcast",
        global = true
    )]
    pub pg_schema: String,

    /// Seconds between `: ping` comments (SSE) and pings (WebSocket).
    #[arg(
        long,
        env = "JOBCAST_HEARTBEAT_SECS",
        default_value_t = 15,
        global = true
    )]
    pub heartbeat_secs: u64,

    /// Bytes of comment padding after `retry:` for proxies that hold back the first kilobytes.
    #[arg(long, env = "JOBCAST_SSE_PADDING", default_value_t = 0, global = true)]
    pub sse_padding: usize,

    /// `retry:` sent to EventSource clients, in milliseconds: each stream gets its own, drawn from [this, 2 × this].
    #[arg(
        long,
        env = "JOBCAST_SSE_RETRY_MS",
        default_value_t = 2000,
        global = true
    )]
    pub sse_retry_ms: u64,

    /// Seconds an SSE client may leave its socket full (not reading) before it is cut.
    #[arg(
        long,
        env = "JOBCAST_SSE_STALL_SECS",
        default_value_t = 30,
        global = true
    )]
    pub sse_stall_secs: u64,
    /// Largest accepted progress document, in bytes.
    #[arg(
        long,
        env = "JOBCAST_MAX_DOCUMENT_BYTES",
        default_value_t = 65536,
        global = true
    )]
    pub max_document_bytes: usize,

    /// Open streams allowed overall (0: derived from the open-file limit).
    #[arg(
        long,
        env = "JOBCAST_MAX_CONNECTIONS",
        default_value_t = 0,
        global = true
    )]
    pub max_connections: usize,

    /// Open streams allowed per user (`sub`); 0 means no per-user limit.
    #[arg(
        long,
        env = "JOBCAST_MAX_CONNECTIONS_PER_USER",
        default_value_t = 64,
        global = true
    )]
    pub max_connections_per_user: usize,

    /// New streams accepted per second over the whole gateway (0: no limit); beyond it `429` with `Retry-After`.
    #[arg(
        long,
        env = "JOBCAST_MAX_CONNECT_RATE",
        default_value_t = 0,
        global = true
    )]
    pub max_connect_rate: u32,

    /// Most jobs one stream may carry (`?job=` lists, and the jobs of a group stream).
    #[arg(
        long,
        env = "JOBCAST_MAX_JOBS_PER_STREAM",
        default_value_t = 100,
        global = true
    )]
    pub max_jobs_per_stream: usize,

    /// Seconds without a new state after which a running job is reported `stalled`
    /// (a document's `stall_after_s` overrides it for its job); 0 turns it off.
    #[arg(long, env = "JOBCAST_STALL_SECS", default_value_t = 60, global = true)]
    pub stall_secs: u64,

    /// Seconds a graceful shutdown may take before the process exits anyway.
    #[arg(
        long,
        env = "JOBCAST_SHUTDOWN_SECS",
        default_value_t = 10,
        global = true
    )]
    pub shutdown_secs: u64,

    /// Days a finished job's row is kept in Postgres.
    #[arg(
        long,
        env = "JOBCAST_RETENTION_DAYS",
        default_value_t = 10,
        global = true
    )]
    pub retention_days: u32,

    /// With DATABASE_URL: `auto` lets this instance become the one recorder
    /// that writes every job's states behind; `off` never records here.
    #[arg(
        long,
        env = "JOBCAST_RECORDER",
        value_enum,
        default_value_t = RecorderMode::Auto,
        global = true
    )]
    pub recorder: RecorderMode,

    /// Other origins allowed to call the gateway from a browser (comma-separated).
    #[arg(
        long,
        env = "JOBCAST_ALLOWED_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub allowed_origins: Vec<String>,

    /// Log format.
    #[arg(long, env = "JOBCAST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// OTLP/HTTP collector base URL (`/v1/traces` is added); unset means no tracing export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otel_endpoint: Option<String>,

    /// OTLP encoding.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", value_enum, default_value_t = OtlpProtocol::HttpProtobuf, global = true)]
    pub otel_protocol: OtlpProtocol,

    /// `service.name` of exported spans.
    #[arg(
        long,
        env = "OTEL_SERVICE_NAME",
        default_value = "jobcast",
        global = true
    )]
    pub otel_service_name: String,

    /// Directory of the demo page and browser client.
    #[arg(
        long,
        env = "JOBCAST_STATIC_DIR",
        default_value = "static",
        global = true
    )]
    pub static_dir: PathBuf,

    /// Development mode: random JWT secret, a printed token and a simulated job.
    #[arg(long, env = "JOBCAST_DEV", global = true)]
    pub dev: bool,
}

/// Shortest accepted `JWT_SECRET`: an HS256 key shorter than its 32-byte
/// output can be brute-forced from one token.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Upper bound of every interval setting, in seconds (a day): larger values are
/// mistakes, and would overflow the timers built from them.
pub const MAX_INTERVAL_SECS: u64 = 86_400;

/// Upper bound of `JOBCAST_MAX_JOBS_PER_STREAM`: a stream's cursor grows by
/// up to 20 characters a job, and must stay a header a proxy passes.
pub const MAX_JOBS_PER_STREAM_CAP: usize = 1000;

/// Long-poll wait when the request names none.
pub const POLL_DEFAULT_TIMEOUT_SECS: u64 = 25;
/// Longest long-poll wait a client may ask for (below common 60 s proxy timeouts).
pub const POLL_MAX_TIMEOUT_SECS: u64 = 55;
/// How long a new watcher waits for the job's first state (subscribe + read) before
/// it is served with what is known; bounds the damage of a hung Redis.
pub const FIRST_STATE_TIMEOUT: Duration = Duration::from_secs(3);

impl Settings {
    /// Settings with every default, as if no flag or variable were given —
    /// the environment is ignored, so tests are not steered by a developer's
    /// `DATABASE_URL` or `JWT_SECRET`.
    pub fn defaults() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let cmd = Cli::command().mut_args(|a| a.env(None));
        let matches = cmd
            .try_get_matches_from(["jobcast"])
            .expect("defaults parse");
        Cli::from_arg_matches(&matches)
            .expect("defaults parse")
            .settings
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.max(1))
    }

    /// The Redis db number from `REDIS_URL` (keyspace channels name it); 0 in
    /// a cluster, which has no other.
    pub fn redis_db(&self) -> i64 {
        match self.redis_target() {
            Ok(RedisTarget::Single(info)) => info.redis.db,
            Ok(RedisTarget::Sentinel(s)) => s.redis.db,
            Ok(RedisTarget::Cluster(_)) | Err(_) => 0,
        }
    }

    /// Where Redis is: one server, a cluster's seeds, or a primary named by
    /// sentinels. Errors name the setting to fix, never its value.
    pub fn redis_target(&self) -> Result<RedisTarget, String> {
        RedisTarget::from_settings(
            &self.redis_url,
            self.redis_cluster,
            &self.redis_sentinels,
            self.redis_sentinel_master.as_deref(),
        )
    }

    /// Checks that do not need any I/O. Errors name the setting to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.key_prefix.is_empty() {
            return Err("JOBCAST_KEY_PREFIX must not be empty".into());
        }
        if self.group_prefix.is_empty() {
            return Err("JOBCAST_GROUP_PREFIX must not be empty".into());
        }
        if self.group_field.is_empty() {
            return Err("JOBCAST_GROUP_FIELD must not be empty".into());
        }
        if !is_pg_identifier(&self.pg_schema) {
            return Err(format!(
                "JOBCAST_PG_SCHEMA={:?} is not a plain Postgres identifier: a lower-case \
                 letter or `_`, then lower-case letters, digits or `_`, at most 63 bytes, \
                 not starting with `pg_`",
                self.pg_schema
            ));
        }
        self.redis_target()?;
        if self.jwt_secret.is_none()
            && self.jwt_public_key_file.is_none()
            && self.jwt_jwks_url.is_none()
            && !self.dev
        {
            return Err("no token key: set JWT_SECRET (HS256), JWT_PUBLIC_KEY_FILE \
                        (RS256/ES256 PEM) or JWT_JWKS_URL (the identity provider's \
                        JWK Set), or run with --dev for a random secret"
                .into());
        }
        if let Some(url) = &self.jwt_jwks_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(format!("JWT_JWKS_URL must be an http(s) URL: {url}"));
        }
        if let Some(secret) = &self.jwt_secret
            && !self.dev
            && secret.expose().len() < MIN_JWT_SECRET_BYTES
        {
            return Err(format!(
                "JWT_SECRET is {} bytes; HS256 needs at least {MIN_JWT_SECRET_BYTES} \
                 (an empty value often means an unset variable in a compose file); \
                 generate one with `openssl rand -base64 48`",
                secret.expose().len()
            ));
        }
        if self.allowed_origins.iter().any(|o| o.trim() == "*") {
            return Err(
                "JOBCAST_ALLOWED_ORIGINS=* is refused: credentials (cookies, tokens) must not \
                 be readable by every site; list the origins, e.g. https://app.example.com"
                    .into(),
            );
        }
        if let Some(bad) = self
            .allowed_origins
            .iter()
            .map(|o| o.trim())
            .find(|o| !o.is_empty() && crate::http::origin::Origin::parse(o).is_none())
        {
            return Err(format!(
                "JOBCAST_ALLOWED_ORIGINS: {bad:?} is not an origin (scheme://host[:port])"
            ));
        }
        for (name, value, max) in [
            (
                "JOBCAST_HEARTBEAT_SECS",
                self.heartbeat_secs,
                MAX_INTERVAL_SECS,
            ),
            (
                "JOBCAST_SHUTDOWN_SECS",
                self.shutdown_secs,
                MAX_INTERVAL_SECS,
            ),
            (
                "JOBCAST_SSE_RETRY_MS",
                self.sse_retry_ms,
                MAX_INTERVAL_SECS * 1000,
            ),
            (
                "JOBCAST_SSE_STALL_SECS",
                self.sse_stall_secs,
                MAX_INTERVAL_SECS,
            ),
            (
                "JOBCAST_JWKS_REFRESH_SECS",
                self.jwks_refresh_secs,
                MAX_INTERVAL_SECS,
            ),
            (
                "JOBCAST_REDIS_CHECK_SECS",
                self.redis_check_secs,
                MAX_INTERVAL_SECS,
            ),
            ("JOBCAST_RESYNC_SECS", self.resync_secs, MAX_INTERVAL_SECS),
            ("JOBCAST_STALL_SECS", self.stall_secs, MAX_INTERVAL_SECS),
            (
                "JOBCAST_MAX_JOBS_PER_STREAM",
                self.max_jobs_per_stream as u64,
                MAX_JOBS_PER_STREAM_CAP as u64,
            ),
            (
                "JOBCAST_RETENTION_DAYS",
                u64::from(self.retention_days),
                36_500,
            ),
            ("JOBCAST_SSE_PADDING", self.sse_padding as u64, 64 * 1024),
            (
                "JOBCAST_MAX_DOCUMENT_BYTES",
                self.max_document_bytes as u64,
                16 << 20,
            ),
        ] {
            if value > max {
                return Err(format!("{name}={value} is out of range (at most {max})"));
            }
        }
        if self.heartbeat_secs == 0 || self.sse_stall_secs == 0 {
            return Err(
                "JOBCAST_HEARTBEAT_SECS and JOBCAST_SSE_STALL_SECS must be at least 1".into(),
            );
        }
        if self.max_jobs_per_stream == 0 {
            return Err("JOBCAST_MAX_JOBS_PER_STREAM must be at least 1".into());
        }
        if self.jwks_refresh_secs == 0 {
            return Err("JOBCAST_JWKS_REFRESH_SECS must be at least 1".into());
        }
        if self.terminal_statuses.iter().all(|s| s.trim().is_empty()) {
            return Err("JOBCAST_TERMINAL_STATUSES must name at least one status".into());
        }
        Ok(())
    }
}

/// A schema name jobcast can put into SQL without quoting surprises: an
/// unquoted Postgres identifier that means itself (lower case, so quoting it or
/// not names the same schema), within the 63-byte limit, and not in the
/// reserved `pg_` namespace.
pub fn is_pg_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    starts_well
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
        && !name.starts_with("pg_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["jobcast", "_x", "app_2", &"a".repeat(63)] {
            assert!(is_pg_identifier(good), "{good}");
        }
        for bad in [
            "",
            "Jobcast",
            "2x",
            "job-cast",
            "a b",
            "x\"y",
            "pg_catalog",
            &"a".repeat(64),
        ] {
            assert!(!is_pg_identifier(bad), "{bad}");
        }
        let mut s = Settings::defaults();
        s.dev = true;
        assert!(s.validate().is_ok());
        s.pg_schema = "public; drop".into();
        let err = s.validate().unwrap_err();
        assert!(err.contains("JOBCAST_PG_SCHEMA"), "{err}");
    }

    #[test]
    fn defaults_ignore_the_environment() {
        // SAFETY: this test binary's other tests do not read these variables.
        unsafe { std::env::set_var("JOBCAST_SSE_PADDING", "77") };
        assert_eq!(Settings::defaults().sse_padding, 0);
        let from_env = Cli::try_parse_from(["jobcast"]).unwrap().settings;
        assert_eq!(from_env.sse_padding, 77, "the real parse does read it");
        unsafe { std::env::remove_var("JOBCAST_SSE_PADDING") };
    }
}
