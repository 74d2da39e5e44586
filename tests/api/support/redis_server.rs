//! [`RedisServer`]: a private `redis-server` process per test, on a free
//! loopback port, keeping nothing on disk, that a test can kill (SIGKILL) and
//! restart on the same port to play the Redis failures of the contract. Dropping the value kills the process and
//! removes its scratch directory.
//!
//! The binary is `redis-server` from `PATH`, or `JOBCAST_REDIS_SERVER` if set.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a start or restart may take before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a fresh port is tried when another process took the first.
const PORT_ATTEMPTS: usize = 5;
const LOG_FILE: &str = "redis.log";
const STDERR_FILE: &str = "stderr.log";

/// Options for a [`RedisServer`]; `RedisServer::start()` uses the defaults.
#[derive(Debug, Clone, Default)]
pub struct RedisServerBuilder {
    notify_keyspace_events: String,
    disable_config: bool,
    extra_args: Vec<String>,
}

impl RedisServerBuilder {
    /// Value of `notify-keyspace-events` at start. The default is `""`
    /// (notifications off, as on a stock Redis), which is what shows that
    /// jobcast turns them on itself; `"KA"` or `"K$hgsx"` start with them on.
    pub fn notify_keyspace_events(mut self, flags: impl Into<String>) -> Self {
        self.notify_keyspace_events = flags.into();
        self
    }

    /// Make `CONFIG` an unknown command (`rename-command CONFIG ""`), like a
    /// managed Redis that forbids it.
    pub fn disable_config_command(mut self) -> Self {
        self.disable_config = true;
        self
    }

    /// Any other `redis-server` argument, e.g. `.arg("--cluster-enabled").arg("yes")`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Starts the server and waits (at most 10 s) until it answers PING.
    pub async fn start(self) -> RedisServer {
        let mut config = vec![
            "--notify-keyspace-events".to_owned(),
            self.notify_keyspace_events,
        ];
        if self.disable_config {
            config.extend(["--rename-command", "CONFIG", ""].map(String::from));
        }
        config.extend(self.extra_args);

        let dir = scratch_dir();
        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let mut server = RedisServer {
                port: super::free_port(),
                dir: dir.clone(),
                config: config.clone(),
                child: None,
            };
            match server.launch().await {
                Ok(()) => return server,
                Err(Failure::AddressInUse(log)) => last_failure = log,
                Err(Failure::Fatal(message)) => panic!("{message}"),
            }
        }
        panic!(
            "redis-server found no free port in {PORT_ATTEMPTS} attempts; last log:\n{last_failure}"
        );
    }
}

/// A running `redis-server` owned by one test. See the module docs.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    /// Arguments beyond port/bind/persistence, replayed on restart.
    config: Vec<String>,
    child: Option<Child>,
}

enum Failure {
    /// The port was taken between `free_port()` and the bind: try another.
    AddressInUse(String),
    Fatal(String),
}

impl RedisServer {
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// A server with default options: notifications off, CONFIG allowed.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        self.url_with_db(0)
    }

    /// `redis://127.0.0.1:PORT/DB`, for tests about the keyspace of another db.
    pub fn url_with_db(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("RedisServer::url() is a valid redis URL")
    }

    /// A fresh multiplexed connection to db 0.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("connect to test redis on port {}: {e}", self.port))
    }

    /// `SET key value`, as a worker writes a state key.
    pub async fn set(&self, key: &str, value: &str) {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async(&mut self.connection().await)
            .await
            .unwrap_or_else(|e| panic!("SET {key}: {e}"));
    }

    /// `PUBLISH channel message`, as a worker announces a state.
    pub async fn publish(&self, channel: &str, message: &str) {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(message)
            .query_async(&mut self.connection().await)
            .await
            .unwrap_or_else(|e| panic!("PUBLISH {channel}: {e}"));
    }

    /// Whether the process runs (it has not been killed).
    pub fn is_alive(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, then reap. Clients see the connection drop at once. Calling
    /// it on a dead server does nothing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only if it already exited; `wait` reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same options (and
    /// an empty keyspace: nothing is persisted). Kills it first if it still
    /// runs. Waits at most 10 s for the port to be free and PING to answer.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.launch().await {
                Ok(()) => return,
                Err(Failure::AddressInUse(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(Failure::AddressInUse(log)) => panic!(
                    "redis-server could not get port {} back within {READY_TIMEOUT:?}; log:\n{log}",
                    self.port
                ),
                Err(Failure::Fatal(message)) => panic!("{message}"),
            }
        }
    }

    /// Spawns the process on `self.port` and waits until it answers PING.
    async fn launch(&mut self) -> Result<(), Failure> {
        fs::create_dir_all(&self.dir).map_err(|e| {
            Failure::Fatal(format!(
                "create redis scratch dir {}: {e}",
                self.dir.display()
            ))
        })?;
        // Fresh log files, so a failure shows this attempt only.
        let _ = fs::remove_file(self.dir.join(LOG_FILE));
        let stderr = File::create(self.dir.join(STDERR_FILE))
            .map_err(|e| Failure::Fatal(format!("create redis stderr log: {e}")))?;

        let binary = redis_binary();
        let child = Command::new(&binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join(LOG_FILE))
            .args(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                Failure::Fatal(format!(
                    "spawn {}: {e} (install it with scripts/services.sh, or set JOBCAST_REDIS_SERVER)",
                    binary.to_string_lossy()
                ))
            })?;
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = read_logs(&self.dir);
                return Err(if log.contains("Address already in use") {
                    Failure::AddressInUse(log)
                } else {
                    Failure::Fatal(format!(
                        "redis-server on port {} exited at start ({status}); log:\n{log}",
                        self.port
                    ))
                });
            }
            if answers_ping(self.port).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(Failure::Fatal(format!(
                    "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}; log:\n{}",
                    self.port,
                    read_logs(&self.dir)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One raw `PING` over TCP; true only for `+PONG` (not `-LOADING`, not an
/// auth error), within half a second.
async fn answers_ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await?;
        std::io::Result::Ok(&reply == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Ok(true))
    )
}

fn redis_binary() -> OsString {
    std::env::var_os("JOBCAST_REDIS_SERVER").unwrap_or_else(|| "redis-server".into())
}

fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!(
        "jobcast-test-redis-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ))
}

fn read_logs(dir: &Path) -> String {
    [STDERR_FILE, LOG_FILE]
        .iter()
        .filter_map(|name| fs::read_to_string(dir.join(name)).ok())
        .filter(|text| !text.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}
