//! [`Publisher`]: a handle that writes progress documents for jobs through
//! [`crate::wire`], over one multiplexed connection that reconnects by itself
//! (for a Redis Cluster, a cluster connection that follows MOVED and failover,
//! and the channel is sharded). Cheap to clone; connects on first use.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::sync::OnceCell;

use crate::job_id::JobId;
use crate::redis_url::{RedisLocation, RedisUrlError};
use crate::wire::{
    DEFAULT_KEY_PREFIX, DEFAULT_MAX_DOCUMENT_BYTES, DEFAULT_TTL_SECS, sharded_write_script,
    write_script, write_state,
};

/// Bound on one write, so a hung Redis fails a worker's call instead of
/// holding it forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("REDIS_URL {0}")]
    Url(#[from] RedisUrlError),
}

/// Where writes go: one server, or a cluster.
#[derive(Clone)]
enum Target {
    Single {
        client: redis::Client,
        conn: Arc<OnceCell<ConnectionManager>>,
    },
    Cluster {
        client: ClusterClient,
        conn: Arc<OnceCell<ClusterConnection>>,
    },
}

#[derive(Clone)]
pub struct Publisher {
    target: Target,
    script: Arc<redis::Script>,
    prefix: String,
    ttl_secs: u64,
    max_document_bytes: usize,
}

impl Publisher {
    /// A publisher with the default prefix, TTL and size limit. Connects lazily.
    /// `redis+cluster://host:port[,host:port…]` names a Redis Cluster.
    pub fn connect(redis_url: &str) -> Result<Self, PublishError> {
        Self::connect_with_prefix(redis_url, DEFAULT_KEY_PREFIX)
    }

    pub fn connect_with_prefix(redis_url: &str, key_prefix: &str) -> Result<Self, PublishError> {
        Self::connect_to(RedisLocation::parse(redis_url, false)?, key_prefix)
    }

    /// A publisher for an already parsed location (the gateway's settings).
    pub fn connect_to(location: RedisLocation, key_prefix: &str) -> Result<Self, PublishError> {
        let (target, script) = match location {
            RedisLocation::Single(info) => (
                Target::Single {
                    client: redis::Client::open(info)?,
                    conn: Arc::new(OnceCell::new()),
                },
                write_script(),
            ),
            RedisLocation::Cluster(seeds) => (
                Target::Cluster {
                    client: redis::cluster::ClusterClientBuilder::new(seeds)
                        .connection_timeout(WRITE_TIMEOUT)
                        .response_timeout(WRITE_TIMEOUT)
                        .build()?,
                    conn: Arc::new(OnceCell::new()),
                },
                sharded_write_script(),
            ),
        };
        Ok(Publisher {
            target,
            script: Arc::new(script),
            prefix: key_prefix.to_owned(),
            ttl_secs: DEFAULT_TTL_SECS,
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
        })
    }

    /// TTL of the state key in seconds; 0 keeps the key forever.
    pub fn with_ttl(mut self, ttl_secs: u64) -> Self {
        self.ttl_secs = ttl_secs;
        self
    }

    /// The gateway's `JOBCAST_MAX_DOCUMENT_BYTES`, where it is not the default.
    pub fn with_max_document_bytes(mut self, max: usize) -> Self {
        self.max_document_bytes = max;
        self
    }

    pub fn max_document_bytes(&self) -> usize {
        self.max_document_bytes
    }

    /// The state key (and channel) of `job`.
    pub fn key(&self, job: &JobId) -> String {
        format!("{}{}", self.prefix, job.as_str())
    }

    /// SET + PUBLISH (SPUBLISH in a cluster) of `json` (a JSON object; not
    /// checked here) in one atomic script. Returns how many channel
    /// subscribers received it.
    pub async fn write(&self, job: &JobId, json: &[u8]) -> Result<i64, PublishError> {
        let key = self.key(job);
        let write = async {
            match &self.target {
                Target::Single { client, conn } => {
                    let mut conn = conn
                        .get_or_try_init(|| ConnectionManager::new(client.clone()))
                        .await?
                        .clone();
                    write_state(&self.script, &mut conn, &key, json, self.ttl_secs).await
                }
                Target::Cluster { client, conn } => {
                    let mut conn = conn
                        .get_or_try_init(|| client.get_async_connection())
                        .await?
                        .clone();
                    write_state(&self.script, &mut conn, &key, json, self.ttl_secs).await
                }
            }
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(PublishError::Timeout(WRITE_TIMEOUT)),
        }
    }
}
