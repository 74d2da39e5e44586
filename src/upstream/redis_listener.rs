//! The one dedicated Redis pub/sub connection of this gateway. For every job with
//! watchers it holds two subscriptions, the keyspace channel
//! `__keyspace@<db>__:PREFIX{job}` and the job channel `PREFIX{job}`, taking them
//! and dropping them on the hub's command. A keyspace event asks the loader for
//! a (coalesced) read of the key; a channel message is a document itself.
//!
//! When the connection fails, open streams stay open: the listener reconnects
//! with backoff, then re-subscribes every watched job and reads each one's
//! current state (a bounded number at a time), so nothing written meanwhile is
//! missed. Behind sentinels the connection goes to the primary they name, and
//! when they name another one (failover) the listener moves there at once the
//! same way, after re-applying the keyspace flags on it.
//!
//! For every group with group streams it holds one more: the keyspace
//! channel of the group's set, `__keyspace@<db>__:GROUP_PREFIX{group}`; an
//! event there asks the group registry to read the set's members again.
//!
//! A SUBSCRIBE that Redis refuses for one job (an ACL that allows only some
//! channels) or leaves unanswered on a connection that still answers PING is
//! that job's problem, not the connection's: it is reported, the job is still
//! read (first state, periodic re-read), and its subscription is retried with
//! backoff while the other jobs' subscriptions stay as they are. redis-rs's
//! pub/sub sink does not return the error of a refused SUBSCRIBE, so each
//! subscription is confirmed afterwards with `PUBSUB NUMSUB` through the pool,
//! off the listener's path.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Settings;
use crate::event::Source;
use crate::fanout::Feed;
use crate::job::JobId;
use crate::multi::groups::{GroupCmd, Groups};
use crate::multi::list::GroupName;
use crate::upstream::Ended;
use crate::upstream::UpstreamCmd;
use crate::upstream::backoff::Backoff;
use crate::upstream::loader::Loader;
use crate::upstream::redis_reader::RedisReader;
use crate::upstream::redis_setup::KeyspaceMonitor;
use crate::upstream::sentinel::{Addr, SentinelPrimary};

/// Bound on one SUBSCRIBE/UNSUBSCRIBE round trip; past it the connection is
/// considered dead and rebuilt.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Jobs per SUBSCRIBE command when re-subscribing everything after a reconnect.
const RESUBSCRIBE_BATCH: usize = 500;
/// Retry delays of one job's refused SUBSCRIBE.
const REFUSED_RETRY_START: Duration = Duration::from_secs(1);
const REFUSED_RETRY_MAX: Duration = Duration::from_secs(30);

/// Where the pub/sub connection goes.
pub enum PubSubEndpoint {
    Fixed(redis::Client),
    /// The primary the sentinels name now; a new one ends the connection.
    Sentinel(Arc<SentinelPrimary>),
}

type Switches = Option<tokio::sync::watch::Receiver<Option<Addr>>>;

impl PubSubEndpoint {
    /// A pub/sub connection, and (behind sentinels) what tells of a new primary.
    async fn connect(&self) -> redis::RedisResult<(redis::aio::PubSub, Switches)> {
        match self {
            PubSubEndpoint::Fixed(client) => Ok((client.get_async_pubsub().await?, None)),
            PubSubEndpoint::Sentinel(primary) => {
                // Watch first: a switch while connecting is then not missed.
                let mut switches = primary.changed();
                let (host, port) = primary.resolve().await.ok_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::IoError,
                        "no sentinel names a reachable redis primary",
                    ))
                })?;
                switches.borrow_and_update();
                let client = redis::Client::open(primary.target().primary_info(&host, port))?;
                Ok((client.get_async_pubsub().await?, Some(switches)))
            }
        }
    }
}

pub struct RedisListener {
    loader: Arc<Loader>,
    /// Pooled connections, for the `PUBSUB NUMSUB` that confirms a SUBSCRIBE.
    reader: RedisReader,
    endpoint: PubSubEndpoint,
    /// Re-checked on every reconnect: a restarted Redis has lost a CONFIG SET of
    /// its notification flags.
    keyspace: Arc<KeyspaceMonitor>,
    prefix: String,
    keyspace_prefix: String,
    groups: Arc<Groups>,
    /// `__keyspace@<db>__:GROUP_PREFIX`.
    group_keyspace_prefix: String,
    /// Shared with `/readyz` and the metrics: is the pub/sub connection up?
    up: Arc<AtomicBool>,
}

impl RedisListener {
    pub fn new(
        loader: Arc<Loader>,
        reader: RedisReader,
        endpoint: PubSubEndpoint,
        settings: &Settings,
        up: Arc<AtomicBool>,
        keyspace: Arc<KeyspaceMonitor>,
        groups: Arc<Groups>,
    ) -> anyhow::Result<Self> {
        let (db, prefix) = (settings.redis_db(), settings.key_prefix.as_str());
        Ok(RedisListener {
            loader,
            reader,
            endpoint,
            keyspace,
            prefix: prefix.to_owned(),
            keyspace_prefix: format!("__keyspace@{db}__:{prefix}"),
            group_keyspace_prefix: format!("__keyspace@{db}__:{}", groups.prefix()),
            groups,
            up,
        })
    }

    /// The keyspace channel of a group's set.
    fn group_channel(&self, group: &GroupName) -> String {
        format!("{}{}", self.group_keyspace_prefix, group.as_str())
    }

    /// Subscribes a group's set channel and then reads its members; only a
    /// lost connection is an `Err` (a refused one is still read, and its
    /// keyspace events missed until the next reconnect: logged).
    async fn subscribe_group(&self, sink: &mut PubSubSink, group: GroupName) -> Result<(), Ended> {
        let result = bounded(sink.subscribe(self.group_channel(&group))).await;
        self.groups.reload(group.clone());
        match result {
            Ok(()) => Ok(()),
            Err(SubscribeError::Lost(e)) => Err(Ended::Lost(e)),
            Err(SubscribeError::Refused(e)) => {
                warn!(group = %group, error = %e, "redis refused the group set's SUBSCRIBE; members are read at start only");
                Ok(())
            }
            Err(SubscribeError::TimedOut) => bounded_ping(sink).await.map_err(Ended::Lost),
        }
    }

    /// `__keyspace@<db>__:PREFIX`.
    pub fn keyspace_prefix(&self) -> &str {
        &self.keyspace_prefix
    }

    /// A job's two channels: its key's keyspace channel and its job channel.
    fn channels(&self, job: &JobId) -> [String; 2] {
        [
            format!("{}{}", self.keyspace_prefix, job.as_str()),
            format!("{}{}", self.prefix, job.as_str()),
        ]
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        metrics::gauge!("jobcast_redis_up").set(if up { 1.0 } else { 0.0 });
    }

    /// Runs until `shutdown`: connect, serve, and on failure back off and retry.
    pub async fn run(
        self,
        mut cmds: mpsc::UnboundedReceiver<UpstreamCmd>,
        mut group_cmds: mpsc::UnboundedReceiver<GroupCmd>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Backoff::default();
        let mut was_up = true;
        let mut refused = Refused::new();
        loop {
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.endpoint.connect()) => c,
            };
            match connected {
                Ok(Ok((pubsub, switches))) => {
                    backoff.reset();
                    if !was_up {
                        info!("redis pub/sub connection is back; re-subscribing watched jobs");
                        // Without the flags a restarted Redis lost, SETs go unheard.
                        self.keyspace.check().await;
                    }
                    let (sink, stream) = pubsub.split();
                    match self
                        .serve(
                            (sink, stream),
                            switches,
                            &mut cmds,
                            &mut group_cmds,
                            &mut refused,
                            &shutdown,
                        )
                        .await
                    {
                        Ended::Shutdown => return,
                        Ended::Lost(why) => {
                            warn!(error = %why, "redis pub/sub connection lost; streams stay open, reconnecting");
                        }
                        Ended::Switched => {
                            // To the new primary at once; its flags are checked
                            // (and set) before anything is subscribed there.
                            self.set_up(false);
                            was_up = false;
                            continue;
                        }
                    }
                    self.set_up(false);
                    was_up = false;
                }
                Ok(Err(e)) => {
                    self.set_up(false);
                    if was_up {
                        warn!(error = %e, "redis pub/sub connection failed; retrying with backoff");
                    }
                    was_up = false;
                }
                Err(_) => {
                    self.set_up(false);
                    was_up = false;
                    warn!("redis pub/sub connect timed out; retrying with backoff");
                }
            }
            // Down: keep answering the hub so new watchers get their first state
            // from Postgres, until the next attempt is due.
            let delay = tokio::time::sleep(backoff.next_delay());
            tokio::pin!(delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = &mut delay => break,
                    cmd = cmds.recv() => match cmd {
                        Some(UpstreamCmd::Subscribe(feed)) => self.loader.request_read(&feed),
                        Some(UpstreamCmd::Unsubscribe(_)) => {}
                        None => return,
                    },
                    Some(cmd) = group_cmds.recv() => {
                        if let GroupCmd::Subscribe(group) = cmd {
                            self.groups.reload(group);
                        }
                    }
                }
            }
        }
    }

    async fn serve(
        &self,
        (mut sink, mut stream): (PubSubSink, PubSubStream),
        mut switches: Switches,
        cmds: &mut mpsc::UnboundedReceiver<UpstreamCmd>,
        group_cmds: &mut mpsc::UnboundedReceiver<GroupCmd>,
        refused: &mut Refused,
        shutdown: &CancellationToken,
    ) -> Ended {
        // Re-subscribe what is watched, then read each job's current state: an
        // update written while we were away arrives through that read.
        let feeds = self.loader.feeds();
        for chunk in feeds.chunks(RESUBSCRIBE_BATCH) {
            let channels: Vec<String> = chunk.iter().flat_map(|f| self.channels(&f.job)).collect();
            match bounded(sink.subscribe(&channels)).await {
                Ok(()) => self.confirm(chunk.to_vec(), refused),
                // Some job of the batch is refused (the whole command is), or the
                // answer is late on a connection that still answers PING: find
                // which, one by one, keeping the others.
                Err(e @ (SubscribeError::Refused(_) | SubscribeError::TimedOut)) => {
                    if matches!(e, SubscribeError::TimedOut)
                        && let Err(lost) = bounded_ping(&mut sink).await
                    {
                        return Ended::Lost(lost);
                    }
                    for feed in chunk {
                        if let Err(Ended::Lost(e)) = self.subscribe(&mut sink, feed, refused).await
                        {
                            return Ended::Lost(e);
                        }
                    }
                }
                Err(SubscribeError::Lost(e)) => return Ended::Lost(e),
            }
        }
        for group in self.groups.watched() {
            if let Err(Ended::Lost(e)) = self.subscribe_group(&mut sink, group).await {
                return Ended::Lost(e);
            }
        }
        self.set_up(true);
        let loader = self.loader.clone();
        tokio::spawn(async move { loader.reread_all().await });
        loop {
            let switched = async {
                match switches.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                true = switched => return Ended::Switched,
                cmd = cmds.recv() => match cmd {
                    Some(UpstreamCmd::Subscribe(feed)) => {
                        let result = self.subscribe(&mut sink, &feed, refused).await;
                        // Subscribed (or not): either way the first read runs now,
                        // after the subscription, so nothing between is lost.
                        self.loader.request_read(&feed);
                        if let Err(lost) = result {
                            return lost;
                        }
                    }
                    Some(UpstreamCmd::Unsubscribe(job)) => {
                        if self.loader.is_watched(&job) {
                            continue; // re-joined meanwhile; its Subscribe follows
                        }
                        // Refused or not, UNSUBSCRIBE is harmless and drops
                        // a SUBSCRIBE that was only late.
                        refused.forget(&job);
                        match bounded(sink.unsubscribe(&self.channels(&job))).await {
                            Ok(()) | Err(SubscribeError::Refused(_)) => {}
                            Err(SubscribeError::TimedOut) => {
                                return Ended::Lost(format!("no answer to UNSUBSCRIBE within {SUBSCRIBE_TIMEOUT:?}"));
                            }
                            Err(SubscribeError::Lost(e)) => return Ended::Lost(e),
                        }
                    }
                    None => return Ended::Shutdown,
                },
                Some(cmd) = group_cmds.recv() => match cmd {
                    GroupCmd::Subscribe(group) => {
                        if let Err(lost) = self.subscribe_group(&mut sink, group).await {
                            return lost;
                        }
                    }
                    GroupCmd::Unsubscribe(group) => {
                        if self.groups.is_watched(group.as_str()) {
                            continue;
                        }
                        match bounded(sink.unsubscribe(self.group_channel(&group))).await {
                            Ok(()) | Err(SubscribeError::Refused(_)) => {}
                            Err(SubscribeError::TimedOut) => {
                                return Ended::Lost(format!("no answer to UNSUBSCRIBE within {SUBSCRIBE_TIMEOUT:?}"));
                            }
                            Err(SubscribeError::Lost(e)) => return Ended::Lost(e),
                        }
                    }
                },
                Some(feed) = refused.due.recv() => {
                    // Still watched by the same watchers' feed? Else nothing to do.
                    if self.is_current(&feed) && refused.is_refused(&feed.job)
                        && let Err(lost) = self.subscribe(&mut sink, &feed, refused).await
                    {
                        return lost;
                    }
                }
                Some((feed, subscribed)) = refused.verdicts.recv() => {
                    if !self.is_current(&feed) {
                        continue;
                    }
                    if !subscribed {
                        self.refuse(&feed, refused, "the channels have no subscriber after SUBSCRIBE (ACL channel permission?)");
                    } else if refused.forget(&feed.job) {
                        info!(job = %feed.job, "redis accepted the job's SUBSCRIBE after refusing it");
                        // Read what was missed while unsubscribed.
                        self.loader.request_read(&feed);
                    }
                }
                msg = stream.next() => match msg {
                    Some(msg) => self.dispatch(&msg),
                    None => return Ended::Lost("connection closed".into()),
                },
            }
        }
    }

    /// Subscribes one job's channels; a refusal is reported and retried, and
    /// only a lost connection is an `Err`.
    async fn subscribe(
        &self,
        sink: &mut PubSubSink,
        feed: &Arc<Feed>,
        refused: &mut Refused,
    ) -> Result<(), Ended> {
        match bounded(sink.subscribe(&self.channels(&feed.job))).await {
            Ok(()) => {
                metrics::counter!("jobcast_redis_subscriptions_total").increment(1);
                self.confirm(vec![feed.clone()], refused);
                Ok(())
            }
            Err(SubscribeError::Refused(e)) => {
                self.refuse(feed, refused, &e.to_string());
                Ok(())
            }
            // A slow answer to one SUBSCRIBE is not a dead connection, unless
            // PING goes unanswered too.
            Err(SubscribeError::TimedOut) => match bounded_ping(sink).await {
                Ok(()) => {
                    self.refuse(feed, refused, "no answer to SUBSCRIBE");
                    Ok(())
                }
                Err(e) => Err(Ended::Lost(e)),
            },
            Err(SubscribeError::Lost(e)) => Err(Ended::Lost(e)),
        }
    }

    fn refuse(&self, feed: &Arc<Feed>, refused: &mut Refused, why: &str) {
        metrics::counter!("jobcast_redis_subscribe_errors_total").increment(1);
        let delay = refused.schedule(feed);
        warn!(job = %feed.job, error = %why, retry_in = ?delay,
            "redis did not take the job's SUBSCRIBE; its state is still read, \
             other jobs are unaffected; retrying");
    }

    /// Checks, off the listener's path, that each feed's channels have a
    /// subscriber now; the verdicts come back through `refused.verdicts`. A
    /// check that cannot be made counts as subscribed.
    fn confirm(&self, feeds: Vec<Arc<Feed>>, refused: &Refused) {
        let reader = self.reader.clone();
        let tx = refused.verdicts_tx.clone();
        let channels: Vec<String> = feeds.iter().flat_map(|f| self.channels(&f.job)).collect();
        tokio::spawn(async move {
            let counts = reader.subscriber_counts(&channels).await.ok();
            for (i, feed) in feeds.into_iter().enumerate() {
                let subscribed = counts.as_ref().is_none_or(|c| {
                    c.get(2 * i..2 * i + 2)
                        .is_none_or(|pair| pair.iter().all(|(_, n)| *n > 0))
                });
                let _ = tx.send((feed, subscribed));
            }
        });
    }

    /// Is `feed` still the feed of a watched job (not left by every watcher)?
    fn is_current(&self, feed: &Arc<Feed>) -> bool {
        self.loader.is_current(feed)
    }

    fn dispatch(&self, msg: &redis::Msg) {
        let channel = msg.get_channel_name();
        // Groups first: a group prefix may extend the job prefix.
        if let Some(group) = channel.strip_prefix(&self.group_keyspace_prefix) {
            self.groups.heard_set_event(group, msg.get_payload_bytes());
        } else if let Some(job) = channel.strip_prefix(&self.keyspace_prefix) {
            metrics::counter!("jobcast_redis_events_total", "source" => "keyspace").increment(1);
            if !changes_value(msg.get_payload_bytes()) {
                return;
            }
            if let Some(feed) = self.loader.feed(job) {
                self.loader.request_read(&feed);
            }
        } else if let Some(job) = channel.strip_prefix(&self.prefix) {
            metrics::counter!("jobcast_redis_events_total", "source" => "channel").increment(1);
            if let Some(feed) = self.loader.feed(job) {
                self.loader
                    .offer_raw(&feed, msg.get_payload_bytes(), Source::RedisChannel);
            }
        }
    }
}

/// Whether a keyspace event may have changed the key's value: removal keeps
/// what watchers know, and `expire`/`persist` change no value.
pub(crate) fn changes_value(event: &[u8]) -> bool {
    !matches!(
        event,
        b"del" | b"expired" | b"evicted" | b"expire" | b"persist" | b"rename_from"
    )
}

/// Jobs whose SUBSCRIBE Redis refused, each with its retry backoff; a retry
/// comes back through `due` when its delay is over, the confirmation of a
/// SUBSCRIBE through `verdicts`.
struct Refused {
    jobs: HashMap<JobId, Backoff>,
    tx: mpsc::UnboundedSender<Arc<Feed>>,
    due: mpsc::UnboundedReceiver<Arc<Feed>>,
    verdicts_tx: mpsc::UnboundedSender<(Arc<Feed>, bool)>,
    verdicts: mpsc::UnboundedReceiver<(Arc<Feed>, bool)>,
}

impl Refused {
    fn new() -> Self {
        let (tx, due) = mpsc::unbounded_channel();
        let (verdicts_tx, verdicts) = mpsc::unbounded_channel();
        Refused {
            jobs: HashMap::new(),
            tx,
            due,
            verdicts_tx,
            verdicts,
        }
    }

    fn is_refused(&self, job: &JobId) -> bool {
        self.jobs.contains_key(job)
    }

    /// Drops `job` from the refused set; true if it was there.
    fn forget(&mut self, job: &JobId) -> bool {
        self.jobs.remove(job).is_some()
    }

    /// Records a refusal and schedules the next attempt; returns its delay.
    fn schedule(&mut self, feed: &Arc<Feed>) -> Duration {
        let delay = self
            .jobs
            .entry(feed.job.clone())
            .or_insert_with(|| Backoff::new(REFUSED_RETRY_START, REFUSED_RETRY_MAX))
            .next_delay();
        let (tx, feed) = (self.tx.clone(), feed.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(feed);
        });
        delay
    }
}

enum SubscribeError {
    /// Redis answered with an error for these channels; the connection is fine.
    Refused(redis::RedisError),
    /// No answer within [`SUBSCRIBE_TIMEOUT`].
    TimedOut,
    /// The connection broke.
    Lost(String),
}

async fn bounded(
    fut: impl std::future::Future<Output = redis::RedisResult<()>>,
) -> Result<(), SubscribeError> {
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, fut).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.code().is_some() && !e.is_unrecoverable_error() => {
            Err(SubscribeError::Refused(e))
        }
        Ok(Err(e)) => Err(SubscribeError::Lost(e.to_string())),
        Err(_) => Err(SubscribeError::TimedOut),
    }
}

async fn bounded_ping(sink: &mut PubSubSink) -> Result<(), String> {
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, sink.ping::<redis::Value>()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer to PING within {SUBSCRIBE_TIMEOUT:?}")),
    }
}
