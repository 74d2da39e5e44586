//! [`SentinelSetup`]: a private Sentinel deployment per test — one primary, one
//! replica (each a [`RedisServer`]) and three `redis-server --sentinel`
//! processes on free loopback ports, watching the primary under the name
//! [`MASTER_NAME`]. A test can force a failover (`SENTINEL FAILOVER`) and wait
//! until every sentinel names the new primary. Dropping the value kills every
//! process and removes the sentinels' scratch directories.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{RedisServer, free_port, wait_for, wait_until};

/// The name the sentinels monitor the primary under.
pub const MASTER_NAME: &str = "jobcast-primary";
/// How long start-up, or a failover, may take before the test fails.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
const SENTINELS: usize = 3;

/// One `redis-server --sentinel` process.
struct Sentinel {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A running primary + replica + 3 sentinels owned by one test.
pub struct SentinelSetup {
    /// The primary and replica at start (roles swap in a failover: ask
    /// [`SentinelSetup::primary_port`]); held so that dropping kills them.
    servers: Vec<RedisServer>,
    sentinels: Vec<Sentinel>,
}

impl SentinelSetup {
    /// Starts everything and waits (at most 20 s) until the replica is in sync
    /// and every sentinel knows the replica and the two other sentinels.
    pub async fn start(notify_keyspace_events: &str) -> Self {
        let primary = RedisServer::builder()
            .notify_keyspace_events(notify_keyspace_events)
            .start()
            .await;
        let replica = RedisServer::builder()
            .notify_keyspace_events(notify_keyspace_events)
            .arg("--replicaof")
            .arg("127.0.0.1")
            .arg(primary.port().to_string())
            .start()
            .await;
        let replica_port = replica.port();
        wait_until(SETUP_TIMEOUT, "the replica is in sync", || async move {
            info(replica_port, "replication")
                .await
                .is_some_and(|i| i.contains("master_link_status:up"))
        })
        .await;
        let mut sentinels = Vec::with_capacity(SENTINELS);
        for _ in 0..SENTINELS {
            sentinels.push(spawn_sentinel(primary.port()));
        }
        let setup = SentinelSetup {
            servers: vec![primary, replica],
            sentinels,
        };
        for port in setup.sentinel_ports() {
            wait_until(
                SETUP_TIMEOUT,
                "every sentinel knows the replica and its peers",
                || async move {
                    let Some(mut c) = connect(port).await else {
                        return false;
                    };
                    let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
                        .arg("REPLICAS")
                        .arg(MASTER_NAME)
                        .query_async(&mut c)
                        .await
                        .unwrap_or_default();
                    let peers: Vec<redis::Value> = redis::cmd("SENTINEL")
                        .arg("SENTINELS")
                        .arg(MASTER_NAME)
                        .query_async(&mut c)
                        .await
                        .unwrap_or_default();
                    replicas.len() == 1 && peers.len() == SENTINELS - 1
                },
            )
            .await;
        }
        setup
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// `127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`, as `REDIS_SENTINELS` takes them.
    pub fn sentinels_setting(&self) -> String {
        self.sentinel_ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The port of the primary as the first sentinel names it.
    pub async fn primary_port(&self) -> u16 {
        let port = self.sentinels[0].port;
        primary_named_by(port)
            .await
            .unwrap_or_else(|| panic!("sentinel {port} names no primary"))
    }

    /// A fresh connection to the current primary.
    pub async fn primary(&self) -> redis::aio::MultiplexedConnection {
        let port = self.primary_port().await;
        connect(port)
            .await
            .unwrap_or_else(|| panic!("connect to the primary on {port}"))
    }

    /// SIGKILLs the Redis server (primary or replica) on `port`.
    pub fn kill(&mut self, port: u16) {
        let server = self
            .servers
            .iter_mut()
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no redis server of this setup on {port}"));
        server.kill();
    }

    /// `SENTINEL FAILOVER` on the first sentinel, then waits until every
    /// sentinel names the former replica and it reports `role:master`.
    /// Returns the new primary's port.
    pub async fn failover(&self) -> u16 {
        let old = self.primary_port().await;
        let mut c = connect(self.sentinels[0].port)
            .await
            .expect("connect to a sentinel");
        let _: () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER_NAME)
            .query_async(&mut c)
            .await
            .expect("SENTINEL FAILOVER");
        let sentinels = self.sentinel_ports();
        let new = wait_for(
            SETUP_TIMEOUT,
            "every sentinel names the new primary",
            || {
                let sentinels = sentinels.clone();
                async move {
                    let mut named = None;
                    for port in sentinels {
                        let p = primary_named_by(port).await?;
                        if p == old || named.is_some_and(|n| n != p) {
                            return None;
                        }
                        named = Some(p);
                    }
                    named
                }
            },
        )
        .await;
        // The former primary is turned into a replica later (sentinels wait
        // a few seconds before converting it); what counts is the new one.
        wait_until(
            SETUP_TIMEOUT,
            "the new primary says role:master",
            || async move {
                info(new, "replication")
                    .await
                    .is_some_and(|i| i.contains("role:master"))
            },
        )
        .await;
        new
    }
}

fn spawn_sentinel(primary_port: u16) -> Sentinel {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!(
        "jobcast-test-sentinel-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    fs::create_dir_all(&dir).expect("create the sentinel's scratch dir");
    let conf = dir.join("sentinel.conf");
    // Sentinel rewrites its file (peers, epochs): it must be its own and writable.
    fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
             sentinel failover-timeout {MASTER_NAME} 5000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            dir = dir.display(),
            log = dir.join("sentinel.log").display(),
        ),
    )
    .expect("write sentinel.conf");
    let stderr = File::create(dir.join("stderr.log")).expect("create the sentinel's stderr log");
    let child = Command::new(
        std::env::var_os("JOBCAST_REDIS_SERVER").unwrap_or_else(|| "redis-server".into()),
    )
    .arg(&conf)
    .arg("--sentinel")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(stderr)
    .spawn()
    .expect("spawn redis-server --sentinel");
    Sentinel {
        port,
        dir,
        child: Some(child),
    }
}

/// A fresh connection to the primary the sentinel on `sentinel_port` names now.
pub async fn primary_connection(
    sentinel_port: u16,
) -> Result<redis::aio::MultiplexedConnection, String> {
    let port = primary_named_by(sentinel_port)
        .await
        .ok_or_else(|| format!("sentinel {sentinel_port} names no primary"))?;
    connect(port)
        .await
        .ok_or_else(|| format!("cannot connect to the primary on {port}"))
}

async fn connect(port: u16) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()
}

/// `INFO section` of the server on `port`.
async fn info(port: u16, section: &str) -> Option<String> {
    let mut c = connect(port).await?;
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut c)
        .await
        .ok()
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME` on the sentinel on `port`.
async fn primary_named_by(port: u16) -> Option<u16> {
    let mut c = connect(port).await?;
    let (_, p): (String, u16) = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(MASTER_NAME)
        .query_async(&mut c)
        .await
        .ok()?;
    Some(p)
}
