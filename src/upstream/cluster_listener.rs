//! The pub/sub side in a Redis Cluster. Keyspace notifications are node-local
//! and job channels are shard channels, so every watched job is subscribed on
//! the primary that owns its key's slot: `SUBSCRIBE __keyspace@0__:PREFIX{job}`
//! and `SSUBSCRIBE PREFIX{job}` there, over one RESP3 connection per primary
//! whose push messages all come into one queue. Still ONE subscription of each
//! kind per job per gateway.
//!
//! The topology (`CLUSTER SLOTS`) is re-read every [`TOPOLOGY_REFRESH`], and at
//! once (then with backoff until it settles) when a primary's connection
//! drops, a SSUBSCRIBE is answered MOVED, or a node says a slot left it. Every
//! job whose slot now has another owner is moved: subscribed on the new
//! primary, then read, so an update written during a failover or a resharding
//! is never lost and no stream is dropped. The keyspace flags are re-checked on
//! every node when the primaries change.
//!
//! Groups with group streams follow the same rules: the keyspace channel of
//! the group's set, `__keyspace@0__:GROUP_PREFIX{group}`, is subscribed on the
//! primary that owns the set's slot, moved with it, and its events (and every
//! move) ask the group registry to read the set's members again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::event::Source;
use crate::fanout::Feed;
use crate::job::JobId;
use crate::multi::groups::{GroupCmd, Groups};
use crate::multi::list::GroupName;
use crate::upstream::UpstreamCmd;
use crate::upstream::backoff::Backoff;
use crate::upstream::cluster_topology::{self, Topology, key_slot};
use crate::upstream::loader::Loader;
use crate::upstream::redis_setup::KeyspaceMonitor;

/// Period of the topology re-read while nothing seems wrong.
pub const TOPOLOGY_REFRESH: Duration = Duration::from_secs(5);
/// Bound on one (S)SUBSCRIBE round trip, and on connecting to a node.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);
/// First and last delay between re-reads of a topology that is not settled
/// (a primary is unreachable, a job has no live owner yet).
const REPAIR_START: Duration = Duration::from_millis(200);
const REPAIR_MAX: Duration = Duration::from_secs(2);

/// A push from one node's connection: `(node address, connection generation, push)`.
type Push = (String, u64, PushInfo);

/// One primary's pub/sub connection.
struct Node {
    conn: MultiplexedConnection,
    /// Tells this connection's pushes from those of an earlier one to the same address.
    generation: u64,
}

/// What one subscription follows: a watched job (its state key's keyspace
/// channel and its shard channel), or a watched group (its set's keyspace
/// channel).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Sub {
    Job(JobId),
    Group(GroupName),
}

/// A watched job or group: where it is subscribed (`None`: nowhere yet), and
/// for a job its feed.
struct Watched {
    feed: Option<Arc<Feed>>,
    node: Option<String>,
}

pub struct ClusterListener {
    loader: Arc<Loader>,
    seeds: Vec<ConnectionInfo>,
    prefix: String,
    keyspace_prefix: String,
    groups: Arc<Groups>,
    /// `__keyspace@0__:GROUP_PREFIX`.
    group_keyspace_prefix: String,
    keyspace: Arc<KeyspaceMonitor>,
    up: Arc<AtomicBool>,
}

/// What the run loop holds.
struct State {
    topology: Option<Topology>,
    nodes: HashMap<String, Node>,
    subs: HashMap<Sub, Watched>,
    next_generation: u64,
    /// The topology must be re-read soon (something moved or broke).
    dirty: bool,
    repair: Backoff,
    push_tx: mpsc::UnboundedSender<Push>,
}

impl ClusterListener {
    pub fn new(
        loader: Arc<Loader>,
        seeds: Vec<ConnectionInfo>,
        prefix: &str,
        up: Arc<AtomicBool>,
        keyspace: Arc<KeyspaceMonitor>,
        groups: Arc<Groups>,
    ) -> Self {
        ClusterListener {
            loader,
            seeds,
            prefix: prefix.to_owned(),
            // A cluster has only db 0.
            keyspace_prefix: format!("__keyspace@0__:{prefix}"),
            group_keyspace_prefix: format!("__keyspace@0__:{}", groups.prefix()),
            groups,
            keyspace,
            up,
        }
    }

    /// The key whose slot decides where `sub` is subscribed.
    fn key(&self, sub: &Sub) -> String {
        match sub {
            Sub::Job(job) => format!("{}{}", self.prefix, job.as_str()),
            Sub::Group(group) => self.groups.key(group),
        }
    }

    /// The channels of `sub`, each with its `(un)subscribe` commands: the
    /// keyspace channel (plain pub/sub), and for a job its shard channel.
    fn channels(&self, sub: &Sub) -> Vec<([&'static str; 2], String)> {
        const PLAIN: [&str; 2] = ["SUBSCRIBE", "UNSUBSCRIBE"];
        const SHARD: [&str; 2] = ["SSUBSCRIBE", "SUNSUBSCRIBE"];
        match sub {
            Sub::Job(job) => vec![
                (PLAIN, format!("{}{}", self.keyspace_prefix, job.as_str())),
                (SHARD, self.key(sub)),
            ],
            Sub::Group(group) => vec![(
                PLAIN,
                format!("{}{}", self.group_keyspace_prefix, group.as_str()),
            )],
        }
    }

    /// Reads what may have been missed while `sub` was not subscribed where
    /// it lives: the job's state, or the group's members (off the loop).
    fn catch_up(&self, sub: &Sub, watched: &Watched) {
        match (sub, &watched.feed) {
            (Sub::Job(_), Some(feed)) => self.loader.request_read(feed),
            (Sub::Group(group), _) => self.groups.reload(group.clone()),
            (Sub::Job(_), None) => {}
        }
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            metrics::gauge!("jobcast_redis_up").set(if up { 1.0 } else { 0.0 });
            if up {
                info!("every watched job is subscribed on its slot's primary");
            }
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(
        self,
        mut cmds: mpsc::UnboundedReceiver<UpstreamCmd>,
        mut group_cmds: mpsc::UnboundedReceiver<GroupCmd>,
        shutdown: CancellationToken,
    ) {
        let (push_tx, mut pushes) = mpsc::unbounded_channel::<Push>();
        let mut state = State {
            topology: None,
            nodes: HashMap::new(),
            subs: HashMap::new(),
            next_generation: 0,
            dirty: true,
            repair: Backoff::new(REPAIR_START, REPAIR_MAX),
            push_tx,
        };
        self.refresh(&mut state).await;
        let mut period = tokio::time::interval(TOPOLOGY_REFRESH);
        period.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        period.tick().await;
        // A deadline, not a fresh sleep per turn: a busy push queue must not
        // keep postponing the repair.
        let mut repair_at: Option<tokio::time::Instant> = None;
        loop {
            if !state.dirty {
                state.repair.reset();
                repair_at = None;
            } else if repair_at.is_none() {
                repair_at = Some(tokio::time::Instant::now() + state.repair.next_delay());
            }
            let deadline =
                repair_at.unwrap_or_else(|| tokio::time::Instant::now() + TOPOLOGY_REFRESH);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = period.tick() => self.refresh(&mut state).await,
                _ = tokio::time::sleep_until(deadline), if repair_at.is_some() => {
                    repair_at = None;
                    self.refresh(&mut state).await;
                }
                cmd = cmds.recv() => match cmd {
                    Some(UpstreamCmd::Subscribe(feed)) => {
                        let sub = Sub::Job(feed.job.clone());
                        self.watch(&mut state, sub, Some(feed)).await;
                    }
                    Some(UpstreamCmd::Unsubscribe(job)) => {
                        if self.loader.is_watched(&job) {
                            continue; // re-joined meanwhile; its Subscribe follows
                        }
                        self.unwatch(&mut state, &Sub::Job(job)).await;
                    }
                    None => return,
                },
                Some(cmd) = group_cmds.recv() => match cmd {
                    GroupCmd::Subscribe(group) => {
                        self.watch(&mut state, Sub::Group(group), None).await;
                    }
                    GroupCmd::Unsubscribe(group) => {
                        if self.groups.is_watched(group.as_str()) {
                            continue; // re-joined meanwhile
                        }
                        self.unwatch(&mut state, &Sub::Group(group)).await;
                    }
                },
                Some((addr, generation, push)) = pushes.recv() => {
                    self.on_push(&mut state, addr, generation, push);
                }
            }
        }
    }

    /// Starts following `sub`: subscribes it where it lives, then reads it
    /// (subscribed or not, the first read runs after the attempt, so nothing
    /// written between is lost; a placed one was read by `place`).
    async fn watch(&self, state: &mut State, sub: Sub, feed: Option<Arc<Feed>>) {
        state.subs.insert(sub.clone(), Watched { feed, node: None });
        self.place(state, &sub).await;
        if let Some(watched) = state.subs.get(&sub)
            && watched.node.is_none()
        {
            self.catch_up(&sub, watched);
        }
    }

    async fn unwatch(&self, state: &mut State, sub: &Sub) {
        if let Some(Watched {
            node: Some(addr), ..
        }) = state.subs.remove(sub)
        {
            self.unsubscribe(state, &addr, sub).await;
        }
    }

    /// Re-reads the topology and moves every job whose slot changed owner.
    async fn refresh(&self, state: &mut State) {
        let known = state.topology.iter().flat_map(Topology::nodes);
        let topology = match cluster_topology::fetch_known_then_seeds(known, &self.seeds).await {
            Ok(t) => t,
            Err(e) => {
                if !state.dirty || state.topology.is_none() {
                    warn!(error = %e, "no redis cluster node told the topology; streams stay open, retrying");
                }
                state.dirty = true;
                self.set_up(false);
                return;
            }
        };
        let primaries_changed = state
            .topology
            .as_ref()
            .is_none_or(|old| old.primaries() != topology.primaries());
        if primaries_changed {
            info!(primaries = ?topology.primaries(), "redis cluster topology");
            // Connections to nodes that are no longer primaries go.
            let keep = topology.primaries();
            state.nodes.retain(|addr, _| keep.contains(addr.as_str()));
        }
        state.topology = Some(topology);
        if primaries_changed {
            // A promoted replica may lack the flags a CONFIG SET gave its primary.
            self.keyspace.check().await;
        }
        let subs: Vec<Sub> = state.subs.keys().cloned().collect();
        let mut unreachable = HashSet::new();
        for sub in subs {
            self.place_avoiding(state, &sub, &mut unreachable).await;
        }
        state.dirty = state.subs.values().any(|w| w.node.is_none()) || !unreachable.is_empty();
        self.set_up(!state.dirty);
    }

    async fn place(&self, state: &mut State, sub: &Sub) {
        let mut unreachable = HashSet::new();
        self.place_avoiding(state, sub, &mut unreachable).await;
        if state.subs.get(sub).is_some_and(|w| w.node.is_none()) {
            state.dirty = true;
            self.set_up(false);
        }
    }

    /// Subscribes `sub` on its slot's primary if it is not there yet; moves it
    /// (and re-reads it) where its slot changed owner. `unreachable` remembers
    /// nodes that failed during this pass, so a dead primary costs one attempt.
    async fn place_avoiding(
        &self,
        state: &mut State,
        sub: &Sub,
        unreachable: &mut HashSet<String>,
    ) {
        let key = self.key(sub);
        let Some(owner) = state
            .topology
            .as_ref()
            .and_then(|t| t.primary_of(key_slot(key.as_bytes())))
            .map(str::to_owned)
        else {
            return;
        };
        let Some(previous) = state.subs.get(sub).map(|w| w.node.clone()) else {
            return;
        };
        if previous.as_deref() == Some(owner.as_str()) {
            return;
        }
        if let Some(old) = &previous {
            self.unsubscribe(state, old, sub).await;
        }
        let placed = if unreachable.contains(&owner) {
            false
        } else {
            match self.subscribe(state, &owner, sub).await {
                Ok(()) => true,
                Err(e) => {
                    debug!(key = %key, node = %owner, error = %e, "could not subscribe on the slot's primary");
                    unreachable.insert(owner.clone());
                    false
                }
            }
        };
        let Some(watched) = state.subs.get_mut(sub) else {
            return;
        };
        watched.node = placed.then_some(owner);
        if placed && previous.is_some() {
            metrics::counter!("jobcast_redis_subscriptions_moved_total").increment(1);
        }
        if placed {
            // Whatever was written while it was not subscribed here.
            self.catch_up(sub, watched);
        }
    }

    async fn subscribe(&self, state: &mut State, addr: &str, sub: &Sub) -> Result<(), String> {
        let mut conn = self.node(state, addr).await?;
        match self.send_all(&mut conn, sub, false).await {
            Ok(Ok(())) => {
                metrics::counter!("jobcast_redis_subscriptions_total").increment(1);
                Ok(())
            }
            Ok(Err(e)) => {
                if e.is_unrecoverable_error() || e.is_io_error() {
                    state.nodes.remove(addr);
                }
                Err(e.to_string())
            }
            Err(_) => {
                state.nodes.remove(addr);
                Err(format!("no answer within {SUBSCRIBE_TIMEOUT:?}"))
            }
        }
    }

    /// Best effort: a node that is gone has dropped the subscriptions itself.
    async fn unsubscribe(&self, state: &mut State, addr: &str, sub: &Sub) {
        if let Some(node) = state.nodes.get(addr) {
            let mut conn = node.conn.clone();
            let _ = self.send_all(&mut conn, sub, true).await;
        }
    }

    /// (Un)subscribes every channel of `sub`, in order, bounded together.
    async fn send_all(
        &self,
        conn: &mut MultiplexedConnection,
        sub: &Sub,
        unsubscribe: bool,
    ) -> Result<redis::RedisResult<()>, tokio::time::error::Elapsed> {
        let channels = self.channels(sub);
        tokio::time::timeout(SUBSCRIBE_TIMEOUT, async {
            for (commands, channel) in &channels {
                redis::cmd(commands[usize::from(unsubscribe)])
                    .arg(channel)
                    .exec_async(conn)
                    .await?;
            }
            Ok(())
        })
        .await
    }

    /// The pub/sub connection to the primary at `addr`, made if needed.
    async fn node(&self, state: &mut State, addr: &str) -> Result<MultiplexedConnection, String> {
        if let Some(node) = state.nodes.get(addr) {
            return Ok(node.conn.clone());
        }
        let mut info = cluster_topology::node_info(addr, &self.seeds[0].redis)
            .ok_or_else(|| format!("{addr} is not host:port"))?;
        // Push messages (and subscriptions on a shared connection) need RESP3.
        info.redis.protocol = ProtocolVersion::RESP3;
        state.next_generation += 1;
        let generation = state.next_generation;
        let (tx, tag) = (state.push_tx.clone(), addr.to_owned());
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(SUBSCRIBE_TIMEOUT)
            .set_response_timeout(SUBSCRIBE_TIMEOUT)
            .set_push_sender(move |push: PushInfo| tx.send((tag.clone(), generation, push)));
        let conn = redis::Client::open(info)
            .map_err(|e| e.to_string())?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        state.nodes.insert(
            addr.to_owned(),
            Node {
                conn: conn.clone(),
                generation,
            },
        );
        Ok(conn)
    }

    fn on_push(&self, state: &mut State, addr: String, generation: u64, push: PushInfo) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let mut data = push.data.into_iter();
                if let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                {
                    self.dispatch(&channel, &payload);
                }
            }
            // Only the current connection's: an older one's end is old news.
            PushKind::Disconnection
                if state
                    .nodes
                    .get(&addr)
                    .is_some_and(|n| n.generation == generation) =>
            {
                warn!(node = %addr, "lost a redis cluster primary's pub/sub connection; streams stay open, following the cluster");
                state.nodes.remove(&addr);
                for w in state.subs.values_mut() {
                    if w.node.as_deref() == Some(addr.as_str()) {
                        w.node = None;
                    }
                }
                state.dirty = true;
                self.set_up(false);
            }
            // A node drops shard subscriptions of a slot that left it.
            PushKind::SUnsubscribe => {
                let channel = match push.data.first() {
                    Some(Value::BulkString(c)) => c.clone(),
                    _ => return,
                };
                let job = channel
                    .strip_prefix(self.prefix.as_bytes())
                    .and_then(|j| std::str::from_utf8(j).ok())
                    .and_then(|j| JobId::parse(j).ok());
                if let Some(w) = job.and_then(|j| state.subs.get(&Sub::Job(j)))
                    && w.node.as_deref() == Some(addr.as_str())
                {
                    debug!(node = %addr, "a shard subscription was dropped by the node (slot moved)");
                    state.dirty = true;
                }
            }
            _ => {}
        }
    }

    fn dispatch(&self, channel: &[u8], payload: &[u8]) {
        let Ok(channel) = std::str::from_utf8(channel) else {
            return;
        };
        // Groups first: a group prefix may extend the job prefix.
        if let Some(group) = channel.strip_prefix(&self.group_keyspace_prefix) {
            self.groups.heard_set_event(group, payload);
        } else if let Some(job) = channel.strip_prefix(&self.keyspace_prefix) {
            metrics::counter!("jobcast_redis_events_total", "source" => "keyspace").increment(1);
            if crate::upstream::redis_listener::changes_value(payload)
                && let Some(feed) = self.loader.feed(job)
            {
                self.loader.request_read(&feed);
            }
        } else if let Some(job) = channel.strip_prefix(&self.prefix) {
            metrics::counter!("jobcast_redis_events_total", "source" => "channel").increment(1);
            if let Some(feed) = self.loader.feed(job) {
                self.loader.offer_raw(&feed, payload, Source::RedisChannel);
            }
        }
    }
}
