//! Command connections to Redis, wherever it is ([`RedisTarget`]): a pool for
//! one server; one cluster-aware connection for a Redis Cluster (it routes each
//! command to the slot's primary and follows MOVED, ASK and failover by
//! itself); for a primary named by sentinels, a pool rebuilt whenever the
//! sentinels name another primary, so no command goes to a demoted one. The
//! reader, the keyspace check and `/readyz` take a [`Conn`] from here and
//! never care which. Pub/sub is not here: it needs its own connections.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use deadpool_redis::{Manager, Pool, PoolConfig, Runtime, Timeouts};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{Cmd, ConnectionInfo, Pipeline, RedisFuture, Value};

use crate::upstream::cluster_topology::{self, Topology};
use crate::upstream::redis_target::RedisTarget;
use crate::upstream::sentinel::{Addr, SentinelPrimary};

/// Bound on any single Redis command: a hung Redis must not hold a watcher's
/// first state or a snapshot request for longer than this.
pub const REDIS_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Pooled command connections; pub/sub has its own dedicated connections.
pub const REDIS_POOL_SIZE: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("no sentinel names a reachable redis primary")]
    NoPrimary,
}

/// One command connection, whichever kind.
pub enum Conn {
    Pooled(deadpool_redis::Connection),
    Cluster(ClusterConnection),
    Node(MultiplexedConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Pooled(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Node(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Pooled(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Node(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Pooled(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Node(c) => c.get_db(),
        }
    }
}

/// Cheap to clone; every clone shares the same connections.
#[derive(Clone)]
pub struct Commands {
    kind: Arc<Kind>,
}

enum Kind {
    Single {
        pool: Pool,
        info: ConnectionInfo,
    },
    Cluster {
        /// Boxed: far larger than the other kinds' fields.
        client: Box<ClusterClient>,
        seeds: Vec<ConnectionInfo>,
        /// Every node the last topology named: asked before the seeds, which
        /// may have left the cluster since.
        known: std::sync::Mutex<Vec<String>>,
        /// Made on first use: jobcast starts while the cluster is down.
        conn: tokio::sync::Mutex<Option<ClusterConnection>>,
    },
    Sentinel {
        primary: Arc<SentinelPrimary>,
        /// The pool of the primary it was made for.
        pool: RwLock<Option<(Addr, Pool)>>,
    },
}

impl Commands {
    /// Connects lazily: nothing is dialled here.
    pub fn new(
        target: &RedisTarget,
        sentinel: Option<Arc<SentinelPrimary>>,
    ) -> anyhow::Result<Self> {
        let kind = match (target, sentinel) {
            (RedisTarget::Single(info), _) => Kind::Single {
                pool: pool(info.clone())?,
                info: info.clone(),
            },
            (RedisTarget::Cluster(seeds), _) => Kind::Cluster {
                client: Box::new(
                    redis::cluster::ClusterClientBuilder::new(seeds.clone())
                        .connection_timeout(REDIS_COMMAND_TIMEOUT)
                        .response_timeout(REDIS_COMMAND_TIMEOUT)
                        .build()?,
                ),
                seeds: seeds.clone(),
                known: std::sync::Mutex::new(Vec::new()),
                conn: tokio::sync::Mutex::new(None),
            },
            (RedisTarget::Sentinel(_), Some(primary)) => Kind::Sentinel {
                primary,
                pool: RwLock::new(None),
            },
            (RedisTarget::Sentinel(_), None) => {
                anyhow::bail!("a sentinel target needs its SentinelPrimary")
            }
        };
        Ok(Commands {
            kind: Arc::new(kind),
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(*self.kind, Kind::Cluster { .. })
    }

    /// A connection for one command (or one script). Callers bound the wait.
    pub async fn get(&self) -> Result<Conn, ConnError> {
        match &*self.kind {
            Kind::Single { pool, .. } => Ok(Conn::Pooled(pool.get().await?)),
            Kind::Cluster { client, conn, .. } => {
                let mut slot = conn.lock().await;
                if let Some(c) = &*slot {
                    return Ok(Conn::Cluster(c.clone()));
                }
                let c = client.get_async_connection().await?;
                *slot = Some(c.clone());
                Ok(Conn::Cluster(c))
            }
            Kind::Sentinel { primary, pool } => {
                let addr = primary.resolve().await.ok_or(ConnError::NoPrimary)?;
                let current = crate::sync::read(pool)
                    .as_ref()
                    .filter(|(a, _)| *a == addr)
                    .map(|(_, p)| p.clone());
                let p = match current {
                    Some(p) => p,
                    None => {
                        // Connections to the former primary are dropped with its pool.
                        let p = self::pool(primary.target().primary_info(&addr.0, addr.1))
                            .map_err(|e| {
                                ConnError::Redis(redis::RedisError::from((
                                    redis::ErrorKind::ClientError,
                                    "building the pool of the new primary",
                                    e.to_string(),
                                )))
                            })?;
                        *crate::sync::write(pool) = Some((addr, p.clone()));
                        p
                    }
                };
                Ok(Conn::Pooled(p.get().await?))
            }
        }
    }

    /// Does Redis answer? In a cluster: does any primary answer (one primary
    /// down is a failover in progress, which the listener reports, not a
    /// Redis that is gone).
    pub async fn ping(&self) -> Result<(), ConnError> {
        match self.get().await? {
            Conn::Cluster(mut c) => {
                let any_primary = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::OneSucceeded),
                ));
                c.route_command(&redis::cmd("PING"), any_primary).await?;
            }
            mut conn => {
                redis::cmd("PING").query_async::<String>(&mut conn).await?;
            }
        }
        Ok(())
    }

    /// A connection to every node that must carry the keyspace flags: the one
    /// server (or current primary); in a cluster, every node, replicas too (a
    /// promoted replica then has them already). A node that cannot be reached
    /// is returned as its error.
    pub async fn every_node(&self) -> Vec<(String, Result<Conn, ConnError>)> {
        let Kind::Cluster { seeds, .. } = &*self.kind else {
            return vec![("redis".to_owned(), self.get().await)];
        };
        let topology = match self.topology().await {
            Ok(t) => t,
            Err(e) => return vec![("cluster".to_owned(), Err(e))],
        };
        let auth = &seeds[0].redis;
        let mut out = Vec::new();
        for addr in topology.nodes() {
            let conn = async {
                let info = cluster_topology::node_info(addr, auth).ok_or_else(|| {
                    ConnError::Redis(redis::RedisError::from((
                        redis::ErrorKind::ClientError,
                        "cluster node address is not host:port",
                    )))
                })?;
                let c = redis::Client::open(info)?
                    .get_multiplexed_async_connection()
                    .await?;
                Ok(Conn::Node(c))
            };
            let conn = match tokio::time::timeout(REDIS_COMMAND_TIMEOUT, conn).await {
                Ok(c) => c,
                Err(_) => Err(ConnError::Redis(redis::RedisError::from((
                    redis::ErrorKind::IoError,
                    "cluster node did not answer in time",
                )))),
            };
            out.push((addr.to_owned(), conn));
        }
        out
    }

    /// Where a pattern subscription must go to hear every key's keyspace
    /// events (they are node-local): every primary of a cluster, else the one
    /// server (behind sentinels, the current primary). Ask again after a
    /// failover; connect with `redis::Client::open(info)`.
    pub async fn primaries(&self) -> Result<Vec<ConnectionInfo>, ConnError> {
        match &*self.kind {
            Kind::Single { info, .. } => Ok(vec![info.clone()]),
            Kind::Sentinel { primary, .. } => {
                let (host, port) = primary.resolve().await.ok_or(ConnError::NoPrimary)?;
                Ok(vec![primary.target().primary_info(&host, port)])
            }
            Kind::Cluster { seeds, .. } => {
                let topology = self.topology().await?;
                Ok(topology
                    .primaries()
                    .into_iter()
                    .filter_map(|addr| cluster_topology::node_info(addr, &seeds[0].redis))
                    .collect())
            }
        }
    }

    /// The cluster's topology, asked of the nodes it named last time, then
    /// of the seeds (an error outside a cluster).
    pub async fn topology(&self) -> Result<Topology, ConnError> {
        let Kind::Cluster { seeds, known, .. } = &*self.kind else {
            return Err(ConnError::Redis(redis::RedisError::from((
                redis::ErrorKind::ClientError,
                "not a cluster",
            ))));
        };
        let nodes = crate::sync::lock(known).clone();
        let topology =
            cluster_topology::fetch_known_then_seeds(nodes.iter().map(String::as_str), seeds)
                .await
                .map_err(|e| {
                    ConnError::Redis(redis::RedisError::from((
                        redis::ErrorKind::IoError,
                        "no cluster node told the topology",
                        e,
                    )))
                })?;
        *crate::sync::lock(known) = topology.nodes().map(str::to_owned).collect();
        Ok(topology)
    }

    /// A client for one-off plain connections (the start-up self-test): the
    /// server, the current primary, or the first cluster seed.
    pub async fn probe_client(&self) -> Option<redis::Client> {
        let info = match &*self.kind {
            Kind::Single { info, .. } => info.clone(),
            Kind::Cluster { seeds, .. } => seeds.first()?.clone(),
            Kind::Sentinel { primary, .. } => {
                let (host, port) = primary.resolve().await?;
                primary.target().primary_info(&host, port)
            }
        };
        redis::Client::open(info).ok()
    }
}

fn pool(info: ConnectionInfo) -> anyhow::Result<Pool> {
    Ok(Pool::builder(Manager::new(info)?)
        .config(PoolConfig {
            max_size: REDIS_POOL_SIZE,
            timeouts: Timeouts {
                wait: Some(REDIS_COMMAND_TIMEOUT),
                create: Some(REDIS_COMMAND_TIMEOUT),
                recycle: Some(REDIS_COMMAND_TIMEOUT),
            },
            ..Default::default()
        })
        .runtime(Runtime::Tokio1)
        .build()?)
}
