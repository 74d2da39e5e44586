//! The one dedicated Redis pub/sub connection of this gateway. For every job with
//! watchers it holds two subscriptions, the keyspace channel
//! `__keyspace@<db>__:PREFIX{job}` and the job channel `PREFIX{job}`, taking them
//! and dropping them on the hub's command. A keyspace event asks the hub for a
//! (coalesced) read of the key; a channel message is a document itself.
//!
//! When the connection fails, open streams stay open: the listener reconnects
//! with backoff, then re-subscribes every watched job and reads each one's
//! current state, so nothing written meanwhile is missed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::event::Source;
use crate::hub::{Hub, UpstreamCmd};
use crate::job::JobId;
use crate::upstream::backoff::Backoff;
use crate::upstream::redis_setup;

/// Bound on one SUBSCRIBE/UNSUBSCRIBE round trip; past it the connection is
/// considered dead and rebuilt.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Jobs per SUBSCRIBE command when re-subscribing everything after a reconnect.
const RESUBSCRIBE_BATCH: usize = 500;

pub struct RedisListener {
    hub: Arc<Hub>,
    client: redis::Client,
    redis_url: String,
    /// `JOBCAST_CONFIGURE_REDIS`: whether notification flags may be CONFIG SET.
    configure_redis: bool,
    prefix: String,
    keyspace_prefix: String,
    /// Shared with `/readyz` and the metrics: is the pub/sub connection up?
    up: Arc<AtomicBool>,
}

impl RedisListener {
    pub fn new(
        hub: Arc<Hub>,
        redis_url: &str,
        db: i64,
        prefix: &str,
        up: Arc<AtomicBool>,
        configure_redis: bool,
    ) -> anyhow::Result<Self> {
        Ok(RedisListener {
            hub,
            client: redis::Client::open(redis_url)?,
            redis_url: redis_url.to_owned(),
            configure_redis,
            prefix: prefix.to_owned(),
            keyspace_prefix: format!("__keyspace@{db}__:{prefix}"),
            up,
        })
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
        shutdown: CancellationToken,
    ) {
        let mut backoff = Backoff::default();
        let mut was_up = true;
        loop {
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.client.get_async_pubsub()) => c,
            };
            match connected {
                Ok(Ok(pubsub)) => {
                    backoff.reset();
                    if !was_up {
                        info!("redis pub/sub connection is back; re-subscribing watched jobs");
                        // A restarted Redis has lost a CONFIG SET of its
                        // notification flags; without them SETs go unheard.
                        let check = redis_setup::ensure_keyspace_events(
                            &self.redis_url,
                            self.configure_redis,
                        );
                        let _ = tokio::time::timeout(SUBSCRIBE_TIMEOUT, check).await;
                    }
                    let (sink, stream) = pubsub.split();
                    match self.serve(sink, stream, &mut cmds, &shutdown).await {
                        Ended::Shutdown => return,
                        Ended::Lost(why) => {
                            warn!(error = %why, "redis pub/sub connection lost; streams stay open, reconnecting");
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
                        Some(UpstreamCmd::Subscribe(feed)) => self.hub.request_read(&feed),
                        Some(UpstreamCmd::Unsubscribe(_)) => {}
                        None => return,
                    },
                }
            }
        }
    }

    async fn serve(
        &self,
        mut sink: PubSubSink,
        mut stream: PubSubStream,
        cmds: &mut mpsc::UnboundedReceiver<UpstreamCmd>,
        shutdown: &CancellationToken,
    ) -> Ended {
        // Re-subscribe what is watched, then read each job's current state: an
        // update written while we were away arrives through that read.
        let feeds = self.hub.feeds();
        for chunk in feeds.chunks(RESUBSCRIBE_BATCH) {
            let channels: Vec<String> = chunk.iter().flat_map(|f| self.channels(&f.job)).collect();
            if let Err(e) = bounded(sink.subscribe(&channels)).await {
                return Ended::Lost(e);
            }
        }
        self.set_up(true);
        for feed in &feeds {
            self.hub.request_read(feed);
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                cmd = cmds.recv() => match cmd {
                    Some(UpstreamCmd::Subscribe(feed)) => {
                        let channels = self.channels(&feed.job);
                        let result = bounded(sink.subscribe(&channels)).await;
                        // Subscribed (or not): either way the first read runs now,
                        // after the subscription, so nothing between is lost.
                        self.hub.request_read(&feed);
                        if let Err(e) = result {
                            return Ended::Lost(e);
                        }
                        metrics::counter!("jobcast_redis_subscriptions_total").increment(1);
                    }
                    Some(UpstreamCmd::Unsubscribe(job)) => {
                        if self.hub.is_watched(&job) {
                            continue; // re-joined meanwhile; its Subscribe follows
                        }
                        if let Err(e) = bounded(sink.unsubscribe(&self.channels(&job))).await {
                            return Ended::Lost(e);
                        }
                    }
                    None => return Ended::Shutdown,
                },
                msg = stream.next() => match msg {
                    Some(msg) => self.dispatch(&msg),
                    None => return Ended::Lost("connection closed".into()),
                },
            }
        }
    }

    fn dispatch(&self, msg: &redis::Msg) {
        let channel = msg.get_channel_name();
        if let Some(job) = channel.strip_prefix(&self.keyspace_prefix) {
            metrics::counter!("jobcast_redis_events_total", "source" => "keyspace").increment(1);
            let event = msg.get_payload_bytes();
            // Removal keeps what watchers know; `expire`/`persist` change no value.
            if matches!(
                event,
                b"del" | b"expired" | b"evicted" | b"expire" | b"persist" | b"rename_from"
            ) {
                return;
            }
            if let Some(feed) = self.hub.feed(job) {
                self.hub.request_read(&feed);
            }
        } else if let Some(job) = channel.strip_prefix(&self.prefix) {
            metrics::counter!("jobcast_redis_events_total", "source" => "channel").increment(1);
            if let Some(feed) = self.hub.feed(job) {
                self.hub
                    .offer_raw(&feed, msg.get_payload_bytes(), Source::RedisChannel);
            }
        }
    }
}

enum Ended {
    Shutdown,
    Lost(String),
}

async fn bounded(
    fut: impl std::future::Future<Output = redis::RedisResult<()>>,
) -> Result<(), String> {
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, fut).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {SUBSCRIBE_TIMEOUT:?}")),
    }
}
