//! Where Redis is, from the settings: one server (`REDIS_URL`), a Redis
//! Cluster (`redis+cluster://…`, or `JOBCAST_REDIS_CLUSTER=true` with the seeds
//! in `REDIS_URL`), or a primary that sentinels name (`REDIS_SENTINELS` +
//! `REDIS_SENTINEL_MASTER`, with `REDIS_URL` giving only user, password and
//! db). Parsed once at start; every error names the setting, never its value
//! (a URL may carry a password).

use jobcast_publish::redis_url::{RedisLocation, RedisUrlError};
use redis::{ConnectionInfo, RedisConnectionInfo};

/// The port a sentinel listens on when `REDIS_SENTINELS` names none.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;

#[derive(Clone)]
pub enum RedisTarget {
    Single(ConnectionInfo),
    /// Seeds; any reachable one tells the topology.
    Cluster(Vec<ConnectionInfo>),
    Sentinel(SentinelTarget),
}

/// A primary named by sentinels.
#[derive(Clone)]
pub struct SentinelTarget {
    /// `(host, port)` of every sentinel, asked in turn.
    pub sentinels: Vec<(String, u16)>,
    /// `REDIS_SENTINEL_MASTER`.
    pub master: String,
    /// User, password and db of the primary (from `REDIS_URL`).
    pub redis: RedisConnectionInfo,
}

impl SentinelTarget {
    /// How to reach the primary at `host:port`.
    pub fn primary_info(&self, host: &str, port: u16) -> ConnectionInfo {
        ConnectionInfo {
            addr: redis::ConnectionAddr::Tcp(host.to_owned(), port),
            redis: self.redis.clone(),
        }
    }
}

impl RedisTarget {
    pub fn from_settings(
        url: &str,
        cluster: bool,
        sentinels: &[String],
        master: Option<&str>,
    ) -> Result<Self, String> {
        let sentinels: Vec<&str> = sentinels
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect();
        let master = master.map(str::trim).filter(|m| !m.is_empty());
        let location = RedisLocation::parse(url, cluster).map_err(|e| match e {
            RedisUrlError::NotAUrl => {
                "REDIS_URL is not a Redis URL (redis://[user:password@]host:port[/db], \
                 or redis+cluster://host:port[,host:port…] for a Redis Cluster)"
                    .to_owned()
            }
            other => format!("REDIS_URL {other}"),
        })?;
        match (sentinels.is_empty(), master) {
            (true, None) => Ok(match location {
                RedisLocation::Single(info) => RedisTarget::Single(info),
                RedisLocation::Cluster(seeds) => RedisTarget::Cluster(seeds),
            }),
            (true, Some(_)) => Err(
                "REDIS_SENTINEL_MASTER is set but REDIS_SENTINELS is not: list the sentinels \
                 (host:port, comma-separated)"
                    .into(),
            ),
            (false, None) => Err(
                "REDIS_SENTINELS is set but REDIS_SENTINEL_MASTER is not: name the primary \
                 as the sentinels know it (`sentinel monitor <name> …`)"
                    .into(),
            ),
            (false, Some(master)) => {
                let RedisLocation::Single(info) = location else {
                    return Err("REDIS_SENTINELS and a Redis Cluster (redis+cluster:// or \
                                JOBCAST_REDIS_CLUSTER=true) exclude each other: sentinels \
                                watch a primary, a cluster elects its own"
                        .into());
                };
                let sentinels = sentinels
                    .into_iter()
                    .map(parse_sentinel)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(RedisTarget::Sentinel(SentinelTarget {
                    sentinels,
                    master: master.to_owned(),
                    redis: info.redis,
                }))
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster(_))
    }

    /// What the logs may say about it: addresses, never credentials.
    pub fn describe(&self) -> String {
        match self {
            RedisTarget::Single(info) => format!("redis at {}", info.addr),
            RedisTarget::Cluster(seeds) => format!(
                "redis cluster seeded by {}",
                seeds
                    .iter()
                    .map(|s| s.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            RedisTarget::Sentinel(s) => format!(
                "redis primary `{}` named by sentinels {}",
                s.master,
                s.sentinels
                    .iter()
                    .map(|(h, p)| format!("{h}:{p}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

/// `host:port`, or `host` alone for the default sentinel port.
fn parse_sentinel(entry: &str) -> Result<(String, u16), String> {
    let bad = || format!("REDIS_SENTINELS: {entry:?} is not host:port");
    let (host, port) = match entry.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().map_err(|_| bad())?),
        None => (entry, DEFAULT_SENTINEL_PORT),
    };
    if host.is_empty() || port == 0 || host.contains('/') || host.contains('@') {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(
        url: &str,
        cluster: bool,
        sentinels: &[&str],
        master: Option<&str>,
    ) -> Result<RedisTarget, String> {
        let sentinels: Vec<String> = sentinels.iter().map(|s| s.to_string()).collect();
        RedisTarget::from_settings(url, cluster, &sentinels, master)
    }

    #[test]
    fn a_plain_url_is_one_server() {
        assert!(matches!(
            target("redis://127.0.0.1:6379/2", false, &[], None),
            Ok(RedisTarget::Single(i)) if i.redis.db == 2
        ));
    }

    #[test]
    fn the_cluster_scheme_or_flag_names_seeds() {
        assert!(matches!(
            target("redis+cluster://a:7000,b:7001", false, &[], None),
            Ok(RedisTarget::Cluster(s)) if s.len() == 2
        ));
        assert!(matches!(
            target("redis://a:7000,b:7001", true, &[], None),
            Ok(RedisTarget::Cluster(s)) if s.len() == 2
        ));
    }

    #[test]
    fn sentinels_take_auth_and_db_from_the_url() {
        let Ok(RedisTarget::Sentinel(s)) = target(
            "redis://:secret@ignored:6379/3",
            false,
            &["10.0.0.1:26379", "sentinel-b"],
            Some("mymaster"),
        ) else {
            panic!("not a sentinel target")
        };
        assert_eq!(
            s.sentinels,
            [
                ("10.0.0.1".to_owned(), 26379),
                ("sentinel-b".to_owned(), 26379)
            ]
        );
        assert_eq!(s.master, "mymaster");
        assert_eq!(s.redis.db, 3);
        assert_eq!(s.redis.password.as_deref(), Some("secret"));
    }

    #[test]
    fn bad_input_is_refused_naming_the_setting_not_the_secret() {
        let err = |r: Result<RedisTarget, String>| r.err().expect("refused");
        let e = err(target("redis+cluster://u:hunter2@a:1,b", false, &[], None));
        assert!(e.starts_with("REDIS_URL") && !e.contains("hunter2"), "{e}");
        let e = err(target("redis://:hunter2@bad url", false, &[], None));
        assert!(e.starts_with("REDIS_URL") && !e.contains("hunter2"), "{e}");
        assert!(
            err(target("redis://a:1", false, &["s:1"], None)).contains("REDIS_SENTINEL_MASTER")
        );
        assert!(err(target("redis://a:1", false, &[], Some("m"))).contains("REDIS_SENTINELS"));
        assert!(
            err(target("redis://a:1", false, &["s:notaport"], Some("m")))
                .contains("REDIS_SENTINELS")
        );
        assert!(err(target("redis+cluster://a:1", false, &["s:1"], Some("m"))).contains("exclude"));
        assert!(err(target("redis+cluster://a:1/5", false, &[], None)).contains("db 0"));
    }
}
