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
    DEFAULT_GROUP_PREFIX, DEFAULT_KEY_PREFIX, DEFAULT_MAX_DOCUMENT_BYTES, DEFAULT_TTL_SECS,
    sharded_write_script, write_script, write_state, write_state_in_group,
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
    group_prefix: String,
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
            group_prefix: DEFAULT_GROUP_PREFIX.to_owned(),
            ttl_secs: DEFAULT_TTL_SECS,
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
        })
    }

    /// TTL of the state key in seconds; 0 keeps the key forever.
    pub fn with_ttl(mut self, ttl_secs: u64) -> Self {
        self.ttl_secs = ttl_secs;
        self
    }

    /// The gateway's `JOBCAST_GROUP_PREFIX`, where it is not the default.
    pub fn with_group_prefix(mut self, prefix: &str) -> Self {
        self.group_prefix = prefix.to_owned();
        self
    }

    /// The set holding the members of `group`.
    pub fn group_key(&self, group: &JobId) -> String {
        format!("{}{}", self.group_prefix, group.as_str())
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
        self.write_in_group(job, json, None).await
    }

    /// [`write`](Self::write), and with a `group`, adds the job to the group's
    /// set with the state key's TTL, right after the state. The document
    /// should name the group too (the gateway reads `group_id`).
    pub async fn write_in_group(
        &self,
        job: &JobId,
        json: &[u8],
        group: Option<&JobId>,
    ) -> Result<i64, PublishError> {
        let key = self.key(job);
        let write = async {
            match &self.target {
                Target::Single { client, conn } => {
                    let mut conn = conn
                        .get_or_try_init(|| ConnectionManager::new(client.clone()))
                        .await?
                        .clone();
                    match group {
                        None => {
                            write_state(&self.script, &mut conn, &key, json, self.ttl_secs).await
                        }
                        Some(group) => {
                            let set = self.group_key(group);
                            write_state_in_group(
                                &self.script,
                                &mut conn,
                                &key,
                                json,
                                self.ttl_secs,
                                &set,
                                job.as_str(),
                            )
                            .await
                        }
                    }
                }
                Target::Cluster { client, conn } => {
                    let mut conn = conn
                        .get_or_try_init(|| client.get_async_connection())
                        .await?
                        .clone();
                    let receivers =
                        write_state(&self.script, &mut conn, &key, json, self.ttl_secs).await?;
                    // The set lives in another slot: its own commands, after.
                    if let Some(group) = group {
                        let set = self.group_key(group);
                        redis::cmd("SADD")
                            .arg(&set)
                            .arg(job.as_str())
                            .exec_async(&mut conn)
                            .await?;
                        if self.ttl_secs > 0 {
                            redis::cmd("EXPIRE")
                                .arg(&set)
                                .arg(self.ttl_secs)
                                .exec_async(&mut conn)
                                .await?;
                        }
                    }
                    Ok(receivers)
                }
            }
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(PublishError::Timeout(WRITE_TIMEOUT)),
        }
    }
}
