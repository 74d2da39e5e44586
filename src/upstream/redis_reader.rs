//! Reads and writes state keys through the command connections
//! (`redis_conn`: a pool, or a cluster-aware connection). A read is ONE round
//! trip (a Lua script returning the key's type with its value), so a keyspace
//! event costs exactly one call whatever the key holds. The script measures the
//! value inside Redis first (STRLEN, HLEN, HSTRLEN) and returns only its size
//! when it is over the document limit, so a huge value never crosses the wire.
//! Writes are the publisher path: SET with TTL and PUBLISH in one atomic script
//! (SPUBLISH in a cluster: the job channel is a shard channel there).

use std::time::Duration;

use redis::Value;

use crate::job::{DocError, DocRules, JobId, ProgressDoc};
pub use crate::upstream::redis_conn::REDIS_COMMAND_TIMEOUT;
use crate::upstream::redis_conn::{Commands, ConnError};

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
    #[error("{0}")]
    Conn(#[from] ConnError),
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
        matches!(self, RedisError::Redis(e) | RedisError::Conn(ConnError::Redis(e))
            if e.code() == Some("NOPERM"))
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
    commands: Commands,
    prefix: String,
    rules: DocRules,
    read: redis::Script,
    write: redis::Script,
}

impl RedisReader {
    pub fn new(commands: Commands, prefix: &str, rules: DocRules) -> Self {
        let write = if commands.is_cluster() {
            jobcast_publish::wire::sharded_write_script()
        } else {
            jobcast_publish::wire::write_script()
        };
        RedisReader {
            commands,
            prefix: prefix.to_owned(),
            rules,
            read: redis::Script::new(READ_SCRIPT),
            write,
        }
    }

    pub fn key(&self, job: &JobId) -> String {
        format!("{}{}", self.prefix, job.as_str())
    }

    /// The reader's commands connection (a pool, a cluster client or the
    /// Sentinel-tracked primary), shared with the `KeyspaceMonitor`, readiness
    /// and the publisher instead of opening another.
    pub fn commands(&self) -> &Commands {
        &self.commands
    }

    /// One round trip: the key's type and value.
    pub async fn read(&self, job: &JobId) -> Result<KeyState, RedisError> {
        let key = self.key(job);
        let value: Value = bounded(async {
            let mut conn = self.commands.get().await?;
            Ok(self
                .read
                .key(&key)
                .arg(self.rules.max_bytes)
                .invoke_async(&mut conn)
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
    /// 0 = none) and PUBLISH it on the job channel (SPUBLISH in a cluster), atomically. Returns the number
    /// of channel subscribers that got it.
    pub async fn write(&self, job: &JobId, json: &[u8], ttl_secs: u64) -> Result<i64, RedisError> {
        let key = self.key(job);
        bounded(async {
            let mut conn = self.commands.get().await?;
            Ok(
                jobcast_publish::wire::write_state(&self.write, &mut conn, &key, json, ttl_secs)
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
            let mut conn = self.commands.get().await?;
            Ok(redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channels)
                .query_async(&mut conn)
                .await?)
        })
        .await
    }

    /// [`write`](Self::write) for a job in a group: also `SADD group_key job`
    /// with the same TTL, right after (not inside) the script.
    pub async fn write_in_group(
        &self,
        job: &JobId,
        json: &[u8],
        ttl_secs: u64,
        group_key: &str,
    ) -> Result<i64, RedisError> {
        let key = self.key(job);
        bounded(async {
            let mut conn = self.commands.get().await?;
            Ok(jobcast_publish::wire::write_state_in_group(
                &self.write,
                &mut conn,
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
        bounded(async { Ok(self.commands.ping().await?) })
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
