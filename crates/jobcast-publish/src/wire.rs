//! How a state reaches Redis: SET the job's state key (with a TTL) and PUBLISH
//! the same bytes on the job's channel, in ONE atomic script, so a subscriber
//! never sees a message before the key holds its state. The gateway's
//! `POST /jobs/{id}` writes through this same script.
//!
//! In a Redis Cluster the channel is sharded (`SPUBLISH`): the key and the
//! channel have the same name, so they hash to the same slot and the one
//! script still runs on the one primary that owns both.
//!
//! A job in a group is also added to the group's set (`SADD
//! progress:group:{group} {job}`, the state key's TTL), right after the
//! script and NOT with it: in a Redis Cluster the set and the state key live
//! in different slots, and neither a script nor a cluster pipeline may touch
//! keys of two.

use redis::aio::ConnectionLike;

/// TTL of a state key, in seconds, unless the worker says otherwise: long enough
/// for a watcher to come back after a lunch break, short enough that abandoned
/// jobs leave Redis on their own.
pub const DEFAULT_TTL_SECS: u64 = 7200;
/// The gateway's default `JOBCAST_MAX_DOCUMENT_BYTES`; a larger document would be
/// dropped by the gateway, so the tracker refuses to write it.
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 65536;
/// The gateway's default `JOBCAST_KEY_PREFIX`: state key and channel of job `J`
/// are both `progress:job:J`.
pub const DEFAULT_KEY_PREFIX: &str = "progress:job:";
/// The gateway's default `JOBCAST_GROUP_PREFIX`: the members of group `G` are
/// the set `progress:group:G`.
pub const DEFAULT_GROUP_PREFIX: &str = "progress:group:";

/// Largest `seq` the gateway accepts: 2^53 − 1, the largest integer a
/// browser's `Number` holds exactly, so every client compares ids as jobcast does.
pub const MAX_SEQ: i64 = (1 << 53) - 1;

/// `PUBLISH` stands for the publish command: PUBLISH, or SPUBLISH in a
/// cluster (the job channel is a shard channel there).
const WRITE_SCRIPT: &str = r"
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return redis.call('PUBLISH', KEYS[1], ARGV[1])
";

/// The write script (its SHA is computed once; EVALSHA with a fallback to EVAL).
pub fn write_script() -> redis::Script {
    redis::Script::new(WRITE_SCRIPT)
}

/// The write script for a Redis Cluster (`SPUBLISH` on the job's shard channel).
pub fn sharded_write_script() -> redis::Script {
    redis::Script::new(&WRITE_SCRIPT.replace("'PUBLISH'", "'SPUBLISH'"))
}

/// SET `key` to `json` (TTL `ttl_secs`, 0 = none) and PUBLISH it on the channel
/// of the same name, atomically. Returns how many subscribers received it.
pub async fn write_state<C: ConnectionLike + Send>(
    script: &redis::Script,
    conn: &mut C,
    key: &str,
    json: &[u8],
    ttl_secs: u64,
) -> redis::RedisResult<i64> {
    script
        .key(key)
        .arg(json)
        .arg(ttl_secs)
        .invoke_async(conn)
        .await
}

/// [`write_state`], then `SADD group_key job` + `EXPIRE group_key ttl_secs`
/// (none for 0) pipelined: two round trips, because the set's slot is not
/// the state key's (a cluster refuses a pipeline over two slots). The SADD
/// runs after the state is written, so a reader of the set finds a state for
/// every member. Returns the script's subscriber count.
pub async fn write_state_in_group<C: ConnectionLike + Send>(
    script: &redis::Script,
    conn: &mut C,
    key: &str,
    json: &[u8],
    ttl_secs: u64,
    group_key: &str,
    job: &str,
) -> redis::RedisResult<i64> {
    let receivers = write_state(script, conn, key, json, ttl_secs).await?;
    let mut pipe = redis::pipe();
    pipe.cmd("SADD").arg(group_key).arg(job).ignore();
    if ttl_secs > 0 {
        pipe.cmd("EXPIRE").arg(group_key).arg(ttl_secs).ignore();
    }
    pipe.query_async::<()>(&mut *conn).await?;
    Ok(receivers)
}
