//! Reads and writes state keys through the connection pool. A read is ONE round
//! trip (a Lua script returning the key's type with its value), so a keyspace
//! event costs exactly one call whatever the key holds. The script measures the
//! value inside Redis first (STRLEN, HLEN, HSTRLEN) and returns only its size
//! when it is over the document limit, so a huge value never crosses the wire.
//! Writes are the publisher path: SET with TTL and PUBLISH in one atomic script.

use std::time::Duration;

use deadpool_redis::{Config, Pool, PoolConfig, Runtime, Timeouts};
use redis::Value;

use crate::job::{DocError, DocRules, JobId, ProgressDoc};

/// Bound on any single Redis command from the pool: a hung Redis must not hold a
/// watcher's first state or a snapshot request for longer than this.
pub const REDIS_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Pooled command connections; pub/sub has its own dedicated connection.
pub const REDIS_POOL_SIZE: usize = 32;

/// `{type, value}`, `{type}` for other types and missing keys, or
/// `{type, 'too_large', size}` when the value is over `ARGV[1]` bytes (a hash
/// counts its field names and values, as `ProgressDoc::from_hash` does).
const READ_SCRIPT: &str = r"
local key, limit = KEYS[1], tonumber(ARGV[1])
local t = redis.call('TYPE', key)['ok']
if t == 'string' then
  local n = redis.call('STRLEN', key)
  if n > limit then return {t, 'too_large', n} end
  return {t, redis.call('GET', key)}
end
if t == 'hash' then
  local n = redis.call('HLEN', key)
  -- every field name but one (the empty name) is at least one byte
  if n - 1 > limit then return {t, 'too_large', n - 1} end
  local size = 0
  for _, f in ipairs(redis.call('HKEYS', key)) do
    size = size + #f + redis.call('HSTRLEN', key, f)
    if size > limit then return {t, 'too_large', size} end
  end
  return {t, redis.call('HGETALL', key)}
end
return {t}
";

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis answered with an unexpected shape")]
    Shape,
}

impl RedisError {
    /// Redis refused the command for the connection's ACL user (`NOPERM`).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, RedisError::Redis(e) if e.code() == Some("NOPERM"))
    }
}

/// What the state key holds.
#[derive(Debug)]
pub enum KeyState {
    Missing,
    Doc(ProgressDoc),
    /// A value that is not a valid document (dropped and counted by the caller).
    Invalid(DocError),
    /// Neither a string nor a hash.
    WrongType(String),
}

#[derive(Clone)]
pub struct RedisReader {
    pool: Pool,
    prefix: String,
    rules: DocRules,
    read: redis::Script,
    write: redis::Script,
}

impl RedisReader {
    pub fn new(url: &str, prefix: &str, rules: DocRules) -> anyhow::Result<Self> {
        let mut cfg = Config::from_url(url);
        cfg.pool = Some(PoolConfig {
            max_size: REDIS_POOL_SIZE,
            timeouts: Timeouts {
                wait: Some(REDIS_COMMAND_TIMEOUT),
                create: Some(REDIS_COMMAND_TIMEOUT),
                recycle: Some(REDIS_COMMAND_TIMEOUT),
            },
            ..Default::default()
        });
        let pool = cfg.create_pool(Some(Runtime::Tokio1))?;
        Ok(RedisReader {
            pool,
            prefix: prefix.to_owned(),
            rules,
            read: redis::Script::new(READ_SCRIPT),
            write: jobcast_publish::wire::write_script(),
        })
    }

    pub fn key(&self, job: &JobId) -> String {
        format!("{}{}", self.prefix, job.as_str())
    }

    /// The reader's connection pool, for the one other user of the same Redis
    /// connections: startup hands it to the `KeyspaceMonitor`, so its CONFIG
    /// checks share this pool's size and timeouts instead of opening a second pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// One round trip: the key's type and value.
    pub async fn read(&self, job: &JobId) -> Result<KeyState, RedisError> {
        let key = self.key(job);
        let value: Value = bounded(async {
            let mut conn = self.pool.get().await?;
            Ok(self
                .read
                .key(&key)
                .arg(self.rules.max_bytes)
                .invoke_async(&mut *conn)
                .await?)
        })
        .await?;
        let Value::Array(mut parts) = value else {
            return Err(RedisError::Shape);
        };
        if parts.is_empty() {
            return Err(RedisError::Shape);
        }
        if parts.len() == 3 {
            // Measured in Redis and over the limit: the value itself never came.
            return Ok(KeyState::Invalid(DocError::TooLarge));
        }
        let ty = match parts.remove(0) {
            Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            Value::SimpleString(s) => s,
            _ => return Err(RedisError::Shape),
        };
        let doc = match (ty.as_str(), parts.pop()) {
            ("none", _) => return Ok(KeyState::Missing),
            ("string", Some(Value::BulkString(raw))) => ProgressDoc::parse(&raw, &self.rules),
            ("hash", Some(Value::Array(flat))) => {
                let mut fields = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    match (k, v) {
                        (Value::BulkString(k), Value::BulkString(v)) => fields.push((k, v)),
                        _ => return Err(RedisError::Shape),
                    }
                }
                ProgressDoc::from_hash(fields, &self.rules)
            }
            ("string" | "hash", Some(Value::Nil) | None) => return Ok(KeyState::Missing),
            (other, _) => return Ok(KeyState::WrongType(other.to_owned())),
        };
        Ok(match doc {
            Ok(d) => KeyState::Doc(d),
            Err(e) => KeyState::Invalid(e),
        })
    }

    /// Writes a document like a worker would: SET the state key (with `ttl_secs`,
    /// 0 = none) and PUBLISH it on the job channel, atomically. Returns the number
    /// of channel subscribers that got it.
    pub async fn write(&self, job: &JobId, json: &[u8], ttl_secs: u64) -> Result<i64, RedisError> {
        let key = self.key(job);
        bounded(async {
            let mut conn = self.pool.get().await?;
            Ok(
                jobcast_publish::wire::write_state(&self.write, &mut *conn, &key, json, ttl_secs)
                    .await?,
            )
        })
        .await
    }

    /// `PUBSUB NUMSUB`: how many subscribers each channel has, in order.
    pub async fn subscriber_counts(
        &self,
        channels: &[String],
    ) -> Result<Vec<(String, i64)>, RedisError> {
        bounded(async {
            let mut conn = self.pool.get().await?;
            Ok(redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channels)
                .query_async(&mut *conn)
                .await?)
        })
        .await
    }

    /// [`write`](Self::write) for a job in a group: also `SADD group_key job`
    /// with the same TTL, pipelined beside (not inside) the script.
    pub async fn write_in_group(
        &self,
        job: &JobId,
        json: &[u8],
        ttl_secs: u64,
        group_key: &str,
    ) -> Result<i64, RedisError> {
        let key = self.key(job);
        bounded(async {
            let mut conn = self.pool.get().await?;
            Ok(jobcast_publish::wire::write_state_in_group(
                &self.write,
                &mut *conn,
                &key,
                json,
                ttl_secs,
                group_key,
                job.as_str(),
            )
            .await?)
        })
        .await
    }

    pub async fn ping(&self) -> bool {
        bounded(async {
            let mut conn = self.pool.get().await?;
            let pong: String = redis::cmd("PING").query_async(&mut *conn).await?;
            Ok(pong)
        })
        .await
        .is_ok()
    }
}

async fn bounded<T>(
    fut: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    match tokio::time::timeout(REDIS_COMMAND_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(RedisError::Timeout(REDIS_COMMAND_TIMEOUT)),
    }
}
