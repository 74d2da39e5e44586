//! The Redis primary as the sentinels name it. [`SentinelPrimary`] asks the
//! sentinels in turn (`SENTINEL GET-MASTER-ADDR-BY-NAME`, then `ROLE` on the
//! answer, so a stale sentinel is not believed), and follows failovers: it
//! listens on every sentinel for `+switch-master` (and for the start and end
//! of a failover, which `/readyz` reports as degraded), and re-asks every
//! [`REDISCOVER_PERIOD`] in case an event was missed. Who needs the primary
//! (the command pool, the pub/sub listener) reads [`SentinelPrimary::current`]
//! or waits on [`SentinelPrimary::changed`]; nothing here holds a connection
//! to the primary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::upstream::backoff::Backoff;
use crate::upstream::redis_target::SentinelTarget;

/// Bound on one question to a sentinel or to the primary it names.
pub const SENTINEL_TIMEOUT: Duration = Duration::from_secs(1);
/// Re-discovery period: heals a missed `+switch-master`.
pub const REDISCOVER_PERIOD: Duration = Duration::from_secs(5);
/// A failover whose end was never heard stops counting as in progress after this.
const FAILOVER_MAX: Duration = Duration::from_secs(60);

/// `host:port` of a primary.
pub type Addr = (String, u16);

pub struct SentinelPrimary {
    target: SentinelTarget,
    current: watch::Sender<Option<Addr>>,
    /// Between `+try-failover` and its end (`+failover-end`, an abort, or
    /// `+switch-master`): writes may be lost and the primary is about to move.
    failing_over: AtomicBool,
}

impl SentinelPrimary {
    pub fn new(target: SentinelTarget) -> Arc<Self> {
        Arc::new(SentinelPrimary {
            target,
            current: watch::Sender::new(None),
            failing_over: AtomicBool::new(false),
        })
    }

    pub fn target(&self) -> &SentinelTarget {
        &self.target
    }

    /// The primary as last learnt (`None` before the first answer).
    pub fn current(&self) -> Option<Addr> {
        self.current.borrow().clone()
    }

    /// The current primary, asking the sentinels first if none is known yet.
    pub async fn resolve(&self) -> Option<Addr> {
        match self.current() {
            Some(addr) => Some(addr),
            None => self.discover().await,
        }
    }

    /// Watches changes of the primary.
    pub fn changed(&self) -> watch::Receiver<Option<Addr>> {
        self.current.subscribe()
    }

    pub fn failing_over(&self) -> bool {
        self.failing_over.load(Ordering::Acquire)
    }

    /// Asks the sentinels in turn; the first answer whose server says it is a
    /// primary is taken (and published, if it changed).
    pub async fn discover(&self) -> Option<Addr> {
        for (host, port) in &self.target.sentinels {
            let asked = tokio::time::timeout(SENTINEL_TIMEOUT, self.ask(host, *port)).await;
            match asked {
                Ok(Ok(addr)) => {
                    if tokio::time::timeout(SENTINEL_TIMEOUT, self.is_primary(&addr))
                        .await
                        .unwrap_or(false)
                    {
                        self.publish(addr.clone());
                        return Some(addr);
                    }
                    debug!(sentinel = %format!("{host}:{port}"), primary = %format!("{}:{}", addr.0, addr.1),
                        "the server a sentinel names is not a primary (yet); asking the next");
                }
                Ok(Err(e)) => {
                    debug!(sentinel = %format!("{host}:{port}"), error = %e, "sentinel did not answer")
                }
                Err(_) => {
                    debug!(sentinel = %format!("{host}:{port}"), "sentinel did not answer in time")
                }
            }
        }
        None
    }

    fn publish(&self, addr: Addr) {
        self.current.send_if_modified(|current| {
            if current.as_ref() == Some(&addr) {
                return false;
            }
            match current {
                Some(old) => info!(old = %format!("{}:{}", old.0, old.1), new = %format!("{}:{}", addr.0, addr.1),
                    master = %self.target.master, "the sentinels name a new redis primary; following it"),
                None => info!(primary = %format!("{}:{}", addr.0, addr.1), master = %self.target.master,
                    "redis primary found through the sentinels"),
            }
            metrics::counter!("jobcast_redis_primary_switches_total").increment(1);
            *current = Some(addr.clone());
            true
        });
    }

    async fn ask(&self, host: &str, port: u16) -> redis::RedisResult<Addr> {
        let mut conn = sentinel_client(host, port)?
            .get_multiplexed_async_connection()
            .await?;
        let (host, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.target.master)
            .query_async(&mut conn)
            .await?;
        Ok((host, port))
    }

    async fn is_primary(&self, (host, port): &Addr) -> bool {
        let check = async {
            let mut conn = redis::Client::open(self.target.primary_info(host, *port))?
                .get_multiplexed_async_connection()
                .await?;
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
            redis::RedisResult::Ok(matches!(
                role.first(),
                Some(redis::Value::BulkString(r)) if r == b"master"
            ))
        };
        check.await.unwrap_or(false)
    }

    /// Follows failovers until `shutdown`: one event listener per sentinel,
    /// and a re-discovery every [`REDISCOVER_PERIOD`].
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        for (host, port) in self.target.sentinels.clone() {
            let me = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { me.listen(host, port, stop).await });
        }
        let mut timer = tokio::time::interval(REDISCOVER_PERIOD);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failover_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = timer.tick() => {}
            }
            if self.discover().await.is_none() {
                warn!(master = %self.target.master, "no sentinel names a reachable redis primary; asking again");
            }
            // A failover whose end went unheard (a sentinel restarted) ends here.
            if self.failing_over() {
                let since = *failover_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > FAILOVER_MAX {
                    self.failing_over.store(false, Ordering::Release);
                }
            } else {
                failover_since = None;
            }
        }
    }

    /// Listens to one sentinel's events, reconnecting with backoff.
    async fn listen(&self, host: String, port: u16, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            let connected = async {
                let mut pubsub = sentinel_client(&host, port)?.get_async_pubsub().await?;
                pubsub
                    .subscribe(&[
                        "+switch-master",
                        "+try-failover",
                        "+failover-end",
                        "+failover-end-for-timeout",
                        "-failover-abort-not-elected",
                        "-failover-abort-no-good-slave",
                        "-failover-abort-slave-timeout",
                    ])
                    .await?;
                redis::RedisResult::Ok(pubsub)
            };
            let pubsub = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = tokio::time::timeout(SENTINEL_TIMEOUT, connected) => c,
            };
            if let Ok(Ok(pubsub)) = pubsub {
                backoff.reset();
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        msg = messages.next() => match msg {
                            Some(msg) => self.on_event(msg.get_channel_name(), &String::from_utf8_lossy(msg.get_payload_bytes())).await,
                            None => break,
                        },
                    }
                }
                debug!(sentinel = %format!("{host}:{port}"), "lost the sentinel's event stream; reconnecting");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    async fn on_event(&self, channel: &str, payload: &str) {
        let words: Vec<&str> = payload.split_whitespace().collect();
        match channel {
            // `<master name> <old ip> <old port> <new ip> <new port>`
            "+switch-master" if words.first() == Some(&self.target.master.as_str()) => {
                self.failing_over.store(false, Ordering::Release);
                if let (Some(host), Some(Ok(port))) =
                    (words.get(3), words.get(4).map(|p| p.parse()))
                {
                    self.publish(((*host).to_owned(), port));
                } else {
                    self.discover().await;
                }
            }
            // `master <name> <ip> <port>`: events about our primary only.
            _ if words.get(1) != Some(&self.target.master.as_str()) => {}
            "+try-failover" => {
                if !self.failing_over.swap(true, Ordering::AcqRel) {
                    warn!(master = %self.target.master, "a sentinel failover of the redis primary started");
                }
            }
            _ => {
                self.failing_over.store(false, Ordering::Release);
                // Ended or aborted: the sentinels know the outcome now.
                self.discover().await;
            }
        }
    }
}

fn sentinel_client(host: &str, port: u16) -> redis::RedisResult<redis::Client> {
    redis::Client::open(redis::ConnectionInfo {
        addr: redis::ConnectionAddr::Tcp(host.to_owned(), port),
        redis: redis::RedisConnectionInfo::default(),
    })
}
