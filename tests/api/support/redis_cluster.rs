//! [`RedisCluster`]: a private Redis Cluster per test — 3 primaries and 3
//! replicas, each a [`RedisServer`] with `--cluster-enabled yes` on a free
//! loopback port, joined by `redis-cli --cluster create … --cluster-replicas 1`.
//! A test can kill one primary (SIGKILL) and wait until its replica has taken
//! its slots over. Dropping the value kills every node.
//!
//! The node timeout is short (1 s), so a failover completes in a few seconds.
//! `redis-cli` comes from `PATH`, or `JOBCAST_REDIS_CLI` if set.

use std::process::Command;
use std::time::Duration;

use super::{RedisServer, wait_for, wait_until};

/// How long creating the cluster, or a failover, may take before the test fails.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(20);
/// `cluster-node-timeout`: a killed primary is declared failed after this.
pub const NODE_TIMEOUT_MS: u64 = 1000;
const PRIMARIES: usize = 3;

/// A running 3 + 3 cluster owned by one test. See the module docs.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

/// One primary and the slot ranges it serves, as `CLUSTER SLOTS` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub ranges: Vec<(u16, u16)>,
    pub primary: u16,
    pub replicas: Vec<u16>,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster and waits (at most 20 s) until
    /// every node reports `cluster_state:ok` and all 16384 slots are served.
    /// `notify_keyspace_events` is every node's start value (`""`: off).
    pub async fn start(notify_keyspace_events: &str) -> Self {
        let mut nodes = Vec::with_capacity(PRIMARIES * 2);
        for _ in 0..PRIMARIES * 2 {
            let node = RedisServer::builder()
                .notify_keyspace_events(notify_keyspace_events)
                .arg("--cluster-enabled")
                .arg("yes")
                .arg("--cluster-node-timeout")
                .arg(NODE_TIMEOUT_MS.to_string())
                // A replica with a stale link may still take over: the test
                // kills primaries on purpose and wants the failover.
                .arg("--cluster-replica-validity-factor")
                .arg("0")
                .start()
                .await;
            nodes.push(node);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(redis_cli())
                .args(["--cluster", "create"])
                .args(&addrs)
                .args(["--cluster-replicas", "1", "--cluster-yes"])
                .output()
        })
        .await
        .expect("join redis-cli")
        .unwrap_or_else(|e| panic!("run redis-cli --cluster create: {e}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_healthy().await;
        cluster
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,…` naming every node.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter_map(|n| n.is_alive().then_some(n.port()))
            .collect()
    }

    /// A fresh connection to the node on `port`.
    pub async fn node(&self, port: u16) -> redis::aio::MultiplexedConnection {
        node_connection(port)
            .await
            .unwrap_or_else(|e| panic!("connect to cluster node {port}: {e}"))
    }

    /// A cluster-aware connection, as a worker in a cluster writes with.
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port()))
            .collect();
        redis::cluster::ClusterClientBuilder::new(seeds)
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(2))
            .build()
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("connect to the test cluster")
    }

    /// The shards as the first live node sees them (`CLUSTER SLOTS`).
    pub async fn shards(&mut self) -> Vec<Shard> {
        let port = self.live_ports()[0];
        shards_seen_by(&mut self.node(port).await)
            .await
            .unwrap_or_else(|e| panic!("CLUSTER SLOTS on {port}: {e}"))
    }

    /// The port of the primary serving `slot`.
    pub async fn primary_of_slot(&mut self, slot: u16) -> u16 {
        self.shards()
            .await
            .into_iter()
            .find(|s| s.ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|s| s.primary)
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
    }

    /// SIGKILLs the primary on `port` and waits until a surviving node reports
    /// that one of its replicas serves its slots and the cluster is `ok`.
    pub async fn kill_primary_and_wait_failover(&mut self, port: u16) -> u16 {
        let before = self.shards().await;
        let shard = before
            .iter()
            .find(|s| s.primary == port)
            .unwrap_or_else(|| panic!("{port} is not a primary: {before:?}"))
            .clone();
        self.kill(port);
        let witness = self.live_ports()[0];
        let replicas = shard.replicas.clone();
        let slot = shard.ranges[0].0;
        let new_primary = wait_for(
            CLUSTER_TIMEOUT,
            "a replica took over the killed primary's slots",
            || {
                let replicas = replicas.clone();
                async move {
                    let mut c = node_connection(witness).await.ok()?;
                    let shards = shards_seen_by(&mut c).await.ok()?;
                    let owner = shards
                        .iter()
                        .find(|s| s.ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))?
                        .primary;
                    replicas.contains(&owner).then_some(owner)
                }
            },
        )
        .await;
        self.wait_healthy().await;
        new_primary
    }

    /// SIGKILL of the node on `port`.
    pub fn kill(&mut self, port: u16) {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no cluster node on {port}"))
            .kill();
    }

    /// Waits until every live node says `cluster_state:ok`, all slots are
    /// served, and (while all six run) every primary has its replica.
    pub async fn wait_healthy(&self) {
        let ports: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.is_alive())
            .map(|n| n.port())
            .collect();
        // After a primary was killed, its shard has no live replica left.
        let replicas_alive = ports.len() == self.nodes.len();
        wait_until(
            CLUSTER_TIMEOUT,
            "every cluster node says cluster_state:ok",
            || {
                let ports = ports.clone();
                async move {
                    for port in ports.iter().copied() {
                        let Ok(mut c) = node_connection(port).await else {
                            return false;
                        };
                        let info: String =
                            match redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await {
                                Ok(i) => i,
                                Err(_) => return false,
                            };
                        if !info.contains("cluster_state:ok")
                            || !info.contains("cluster_slots_ok:16384")
                        {
                            return false;
                        }
                    }
                    // Every shard has its replica again (where one is alive).
                    let Ok(mut c) = node_connection(ports[0]).await else {
                        return false;
                    };
                    let Ok(shards) = shards_seen_by(&mut c).await else {
                        return false;
                    };
                    shards
                        .iter()
                        .all(|s| !s.replicas.is_empty() || !replicas_alive)
                }
            },
        )
        .await;
    }
}

async fn node_connection(port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))?
        .get_multiplexed_async_connection()
        .await
}

/// `CLUSTER SLOTS` on `conn`, grouped by primary.
pub async fn shards_seen_by(
    conn: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<Vec<Shard>> {
    let slots: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let mut shards: Vec<Shard> = Vec::new();
    for range in slots {
        let redis::Value::Array(parts) = range else {
            continue;
        };
        let int = |v: &redis::Value| match v {
            redis::Value::Int(i) => Some(*i),
            _ => None,
        };
        let port_of = |v: &redis::Value| match v {
            redis::Value::Array(node) => node.get(1).and_then(int).map(|p| p as u16),
            _ => None,
        };
        let (Some(start), Some(end), Some(primary)) = (
            parts.first().and_then(int),
            parts.get(1).and_then(int),
            parts.get(2).and_then(port_of),
        ) else {
            continue;
        };
        let replicas: Vec<u16> = parts.iter().skip(3).filter_map(port_of).collect();
        match shards.iter_mut().find(|s| s.primary == primary) {
            Some(s) => s.ranges.push((start as u16, end as u16)),
            None => shards.push(Shard {
                ranges: vec![(start as u16, end as u16)],
                primary,
                replicas,
            }),
        }
    }
    Ok(shards)
}

fn redis_cli() -> std::ffi::OsString {
    std::env::var_os("JOBCAST_REDIS_CLI").unwrap_or_else(|| "redis-cli".into())
}
