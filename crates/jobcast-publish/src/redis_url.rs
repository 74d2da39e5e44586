//! Where Redis is, read from one URL: a single server (`redis://…`), or a
//! Redis Cluster named by its seeds (`redis+cluster://host:port[,host:port…]`,
//! or a plain URL listing the seeds when the caller says it is a cluster).
//! Shared by the gateway's settings, its CLI and the [`crate::Publisher`], so
//! a worker and the gateway read `REDIS_URL` the same way.

use redis::{ConnectionInfo, IntoConnectionInfo};

/// The scheme that names a cluster.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// A parsed Redis location.
#[derive(Clone, Debug)]
pub enum RedisLocation {
    Single(ConnectionInfo),
    /// Seeds of a cluster: any reachable one tells the topology. Every seed
    /// carries the URL's user and password; the db is always 0.
    Cluster(Vec<ConnectionInfo>),
}

/// Why a URL was refused. Never contains the URL itself (it may carry a password).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RedisUrlError {
    #[error("is not a Redis URL (redis://[user:password@]host:port[/db])")]
    NotAUrl,
    #[error("names no cluster seed (redis+cluster://[user:password@]host:port[,host:port…])")]
    NoSeed,
    #[error("cluster seed {0:?} is not host:port")]
    BadSeed(String),
    #[error("a Redis Cluster has only db 0; remove /{0} from the URL")]
    ClusterDb(String),
}

impl RedisLocation {
    /// Parses `url`. `cluster` (`JOBCAST_REDIS_CLUSTER=true`) makes a plain
    /// `redis://` URL name cluster seeds, comma-separated.
    pub fn parse(url: &str, cluster: bool) -> Result<Self, RedisUrlError> {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
            return parse_seeds(rest).map(RedisLocation::Cluster);
        }
        if cluster {
            let rest = url.strip_prefix("redis://").ok_or(RedisUrlError::NotAUrl)?;
            return parse_seeds(rest).map(RedisLocation::Cluster);
        }
        if redis::parse_redis_url(url).is_none() {
            return Err(RedisUrlError::NotAUrl);
        }
        url.into_connection_info()
            .map(RedisLocation::Single)
            .map_err(|_| RedisUrlError::NotAUrl)
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisLocation::Cluster(_))
    }
}

/// `[user:password@]host:port[,host:port…][/[0]]`, each seed possibly written
/// as a whole `redis://host:port` URL.
fn parse_seeds(rest: &str) -> Result<Vec<ConnectionInfo>, RedisUrlError> {
    // Seeds written as whole URLs after the first: `a:1,redis://b:2`.
    let rest = rest.replace(",redis://", ",");
    let rest = rest.as_str();
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (Some(auth), hosts),
        None => (None, rest),
    };
    let (hosts, db) = match hosts.split_once('/') {
        Some((hosts, db)) => (hosts, db.trim()),
        None => (hosts, ""),
    };
    if !(db.is_empty() || db == "0") {
        return Err(RedisUrlError::ClusterDb(db.to_owned()));
    }
    let mut seeds = Vec::new();
    for seed in hosts.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let seed = seed.trim_end_matches('/');
        let valid = seed.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            return Err(RedisUrlError::BadSeed(seed.to_owned()));
        }
        let url = match auth {
            Some(auth) => format!("redis://{auth}@{seed}/0"),
            None => format!("redis://{seed}/0"),
        };
        let info = url
            .as_str()
            .into_connection_info()
            .map_err(|_| RedisUrlError::BadSeed(seed.to_owned()))?;
        seeds.push(info);
    }
    if seeds.is_empty() {
        return Err(RedisUrlError::NoSeed);
    }
    Ok(seeds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds(url: &str, cluster: bool) -> Vec<String> {
        match RedisLocation::parse(url, cluster).unwrap() {
            RedisLocation::Cluster(s) => s.iter().map(|i| i.addr.to_string()).collect(),
            RedisLocation::Single(_) => panic!("{url} parsed as a single server"),
        }
    }

    #[test]
    fn cluster_scheme_lists_seeds() {
        assert_eq!(
            seeds("redis+cluster://10.0.0.1:7000,10.0.0.2:7001", false),
            ["10.0.0.1:7000", "10.0.0.2:7001"]
        );
        assert_eq!(seeds("redis+cluster://h:7000/", false), ["h:7000"]);
    }

    #[test]
    fn cluster_flag_reads_seeds_from_a_plain_url() {
        assert_eq!(seeds("redis://a:7000,b:7001", true), ["a:7000", "b:7001"]);
        assert_eq!(
            seeds("redis://a:7000,redis://b:7001", true),
            ["a:7000", "b:7001"]
        );
    }

    #[test]
    fn seeds_carry_the_credentials() {
        let RedisLocation::Cluster(s) =
            RedisLocation::parse("redis+cluster://u:p%40ss@a:1,b:2", false).unwrap()
        else {
            panic!("not a cluster")
        };
        assert_eq!(s.len(), 2);
        assert!(s.iter().all(|i| i.redis.username.as_deref() == Some("u")));
        assert!(
            s.iter()
                .all(|i| i.redis.password.as_deref() == Some("p@ss"))
        );
    }

    #[test]
    fn bad_cluster_urls_are_refused_with_a_reason() {
        let err = |u: &str| RedisLocation::parse(u, false).unwrap_err();
        assert_eq!(err("redis+cluster://"), RedisUrlError::NoSeed);
        assert_eq!(
            err("redis+cluster://a:1,b"),
            RedisUrlError::BadSeed("b".into())
        );
        assert_eq!(
            err("redis+cluster://a:notaport"),
            RedisUrlError::BadSeed("a:notaport".into())
        );
        assert_eq!(
            err("redis+cluster://a:1/3"),
            RedisUrlError::ClusterDb("3".into())
        );
        assert_eq!(
            RedisLocation::parse("http://a:1", true).unwrap_err(),
            RedisUrlError::NotAUrl
        );
        assert_eq!(err("not a url"), RedisUrlError::NotAUrl);
    }

    #[test]
    fn a_plain_url_is_one_server() {
        assert!(
            !RedisLocation::parse("redis://127.0.0.1:6379/2", false)
                .unwrap()
                .is_cluster()
        );
    }
}
