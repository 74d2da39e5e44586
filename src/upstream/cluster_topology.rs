//! A Redis Cluster's topology as jobcast needs it: which primary serves the
//! slot of a job's key (its keyspace events and its shard channel live there),
//! and every node's address (the keyspace flags are set on each, replicas too,
//! so a promoted replica already has them). Learnt with `CLUSTER SLOTS` from
//! any node that answers; nothing here holds a connection.

use std::collections::BTreeSet;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, RedisConnectionInfo, Value};

/// Slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;
/// Bound on connecting to a node and on its answer to `CLUSTER SLOTS`.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(1);

/// The slot of `key`: CRC16 (XMODEM) of the key, or of its `{hash tag}`
/// where it has a non-empty one, modulo 16384 — the cluster's own rule.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(tagged) % SLOTS
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Slot ranges and the primary serving each, plus every node seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// `(first slot, last slot, primary "host:port")`.
    ranges: Vec<(u16, u16, String)>,
    /// Every node, primaries and replicas, as `host:port`.
    nodes: BTreeSet<String>,
}

impl Topology {
    /// Parses a `CLUSTER SLOTS` answer. `asked` names the node that answered,
    /// for the entries where it leaves its own address empty.
    pub fn from_slots(value: Value, asked: &str) -> Option<Topology> {
        let Value::Array(ranges) = value else {
            return None;
        };
        let asked_host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
        let mut topology = Topology::default();
        for range in ranges {
            let Value::Array(parts) = range else {
                return None;
            };
            let mut parts = parts.into_iter();
            let (Some(Value::Int(first)), Some(Value::Int(last))) = (parts.next(), parts.next())
            else {
                return None;
            };
            let mut addrs = parts.filter_map(|node| node_addr(node, asked_host));
            let primary = addrs.next()?;
            topology.nodes.insert(primary.clone());
            topology.nodes.extend(addrs);
            topology.ranges.push((
                u16::try_from(first).ok()?,
                u16::try_from(last).ok()?,
                primary,
            ));
        }
        topology.ranges.sort();
        Some(topology)
    }

    /// The primary serving `slot`, if any.
    pub fn primary_of(&self, slot: u16) -> Option<&str> {
        self.ranges
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, primary)| primary.as_str())
    }

    /// Every primary serving at least one slot.
    pub fn primaries(&self) -> BTreeSet<&str> {
        self.ranges.iter().map(|(_, _, p)| p.as_str()).collect()
    }

    /// Every node, primaries and replicas.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(String::as_str)
    }
}

/// `[ip, port, id, …]` → `host:port`.
fn node_addr(node: Value, asked_host: &str) -> Option<String> {
    let Value::Array(fields) = node else {
        return None;
    };
    let mut fields = fields.into_iter();
    let host = match fields.next()? {
        Value::BulkString(b) => String::from_utf8(b).ok()?,
        Value::SimpleString(s) => s,
        _ => return None,
    };
    let Value::Int(port) = fields.next()? else {
        return None;
    };
    let host = if host.is_empty() || host == "?" {
        asked_host.to_owned()
    } else {
        host
    };
    Some(format!("{host}:{port}"))
}

/// How to reach the node at `host:port` with the seeds' credentials.
pub fn node_info(addr: &str, redis: &RedisConnectionInfo) -> Option<ConnectionInfo> {
    let (host, port) = addr.rsplit_once(':')?;
    Some(ConnectionInfo {
        addr: ConnectionAddr::Tcp(host.to_owned(), port.parse().ok()?),
        redis: RedisConnectionInfo {
            db: 0,
            ..redis.clone()
        },
    })
}

/// [`fetch`] from the nodes `known` names (`host:port`) first, which a
/// running gateway learnt from the cluster, then from the `seeds`, which may
/// have left it since.
pub async fn fetch_known_then_seeds<'a>(
    known: impl IntoIterator<Item = &'a str>,
    seeds: &[ConnectionInfo],
) -> Result<Topology, String> {
    let auth = &seeds.first().ok_or("no cluster seed")?.redis;
    let mut candidates: Vec<ConnectionInfo> = known
        .into_iter()
        .filter_map(|addr| node_info(addr, auth))
        .collect();
    candidates.extend(seeds.iter().cloned());
    fetch(&candidates).await
}

/// Asks `candidates` in turn for `CLUSTER SLOTS`; the first full answer wins.
pub async fn fetch(candidates: &[ConnectionInfo]) -> Result<Topology, String> {
    let mut last_error = String::from("no cluster node to ask");
    for info in candidates {
        let asked = info.addr.to_string();
        let attempt = async {
            let client = redis::Client::open(info.clone()).map_err(|e| e.to_string())?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            let value: Value = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Topology::from_slots(value, &asked)
                .filter(|t| !t.ranges.is_empty())
                .ok_or_else(|| "CLUSTER SLOTS answered with no slots".to_owned())
        };
        match tokio::time::timeout(NODE_TIMEOUT, attempt).await {
            Ok(Ok(topology)) => return Ok(topology),
            Ok(Err(e)) => last_error = format!("{asked}: {e}"),
            Err(_) => last_error = format!("{asked}: no answer within {NODE_TIMEOUT:?}"),
        }
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_cluster_rule() {
        // CRC16/XMODEM's check value, and slots Redis itself reports.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"progress:job:a"), 3638);
        assert_eq!(key_slot(b"foo"), 12182);
        // A hash tag picks the slot; an empty one does not.
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % SLOTS);
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn parses_cluster_slots() {
        let answer = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("10.0.0.2", 7001),
                node("10.0.0.5", 7004),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("", 7000),
                node("10.0.0.4", 7003),
            ]),
        ]);
        let t = Topology::from_slots(answer, "10.0.0.1:7000").expect("parsed");
        assert_eq!(t.primary_of(0), Some("10.0.0.1:7000"));
        assert_eq!(t.primary_of(5461), Some("10.0.0.2:7001"));
        assert_eq!(t.primary_of(16383), Some("10.0.0.2:7001"));
        assert_eq!(t.primaries().len(), 2);
        assert_eq!(t.nodes().count(), 4);
    }
}
