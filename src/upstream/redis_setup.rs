//! Start-up check of `notify-keyspace-events`: jobcast needs `K` (keyspace
//! channel), `$` (strings), `h` (hashes), `g` (del, expire...) and `x` (expired).
//! Missing flags are added with CONFIG SET unless told not to; where CONFIG is
//! refused (managed Redis) one clear warning names the exact setting.

use tracing::{info, warn};

/// Flags jobcast needs, as in the Redis documentation of keyspace events.
pub const NEEDED_FLAGS: &str = "K$hgx";

/// The flags `current` lacks, honouring `A` (alias for `g$lshzxet`).
pub fn missing_flags(current: &str) -> String {
    let has_all = current.contains('A');
    NEEDED_FLAGS
        .chars()
        .filter(|f| {
            let covered_by_a = has_all && *f != 'K';
            !(current.contains(*f) || covered_by_a)
        })
        .collect()
}

/// Checks and, when allowed, fixes the server's notification flags. Never fails
/// start-up: without keyspace events jobcast still serves channels and Postgres.
pub async fn ensure_keyspace_events(redis_url: &str, configure: bool) {
    let result = async {
        let client = redis::Client::open(redis_url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let (_, current): (String, String) = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(&mut conn)
            .await?;
        let missing = missing_flags(&current);
        if missing.is_empty() {
            info!(flags = %current, "redis keyspace notifications are on");
            return Ok::<_, redis::RedisError>(());
        }
        if !configure {
            warn!(flags = %current, missing = %missing,
                "redis notify-keyspace-events lacks flags and JOBCAST_CONFIGURE_REDIS=false: \
                 state keys will not be pushed until `notify-keyspace-events {current}{missing}` is set");
            return Ok(());
        }
        let wanted = format!("{current}{missing}");
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(&wanted)
            .query_async::<()>(&mut conn)
            .await?;
        info!(flags = %wanted, "turned on redis keyspace notifications");
        Ok(())
    }
    .await;
    if let Err(e) = result {
        warn!(error = %e,
            "could not check or set redis `notify-keyspace-events` (CONFIG refused or redis down); \
             set `notify-keyspace-events K$hgx` on the server, else only job channels and Postgres push updates");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_missing_flags() {
        assert_eq!(missing_flags(""), "K$hgx");
        assert_eq!(missing_flags("KA"), "");
        assert_eq!(missing_flags("A"), "K");
        assert_eq!(missing_flags("Ex"), "K$hg");
        assert_eq!(missing_flags("K$hgx"), "");
    }
}
