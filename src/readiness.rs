//! What `/readyz` answers from: a report of the sources' health refreshed in
//! the background at most once a second, so a load balancer probing often (or
//! many of them) costs Redis and Postgres nothing per request. A Redis primary
//! that is changing — a sentinel failover in progress, or in a cluster a
//! primary whose jobs are not subscribed on its successor yet — makes the
//! report say `failover`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::upstream::redis_reader::RedisReader;
use crate::upstream::redis_setup::{KeyspaceEvents, KeyspaceMonitor};
use crate::upstream::sentinel::SentinelPrimary;

/// Time between two refreshes (a refresh waiting on a dead source takes longer).
pub const REFRESH_PERIOD: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
pub struct Report {
    pub redis: bool,
    /// `None` without `DATABASE_URL`.
    pub postgres: Option<bool>,
    pub keyspace_events: KeyspaceEvents,
    /// The Redis primary is changing (sentinel failover, or a cluster primary
    /// whose jobs are not yet subscribed on its successor).
    pub redis_failover: bool,
}

pub struct Readiness {
    reader: RedisReader,
    store: Option<Store>,
    keyspace: Arc<KeyspaceMonitor>,
    sentinel: Option<Arc<SentinelPrimary>>,
    /// The cluster listener's "every job is subscribed on its primary".
    cluster_settled: Option<Arc<AtomicBool>>,
    report: RwLock<Report>,
}

impl Readiness {
    /// Takes the first report now, so `/readyz` is true from the first request.
    pub async fn new(
        reader: RedisReader,
        store: Option<Store>,
        keyspace: Arc<KeyspaceMonitor>,
        sentinel: Option<Arc<SentinelPrimary>>,
        cluster_settled: Option<Arc<AtomicBool>>,
    ) -> Arc<Self> {
        let report = Report {
            redis: false,
            postgres: store.as_ref().map(|_| false),
            keyspace_events: keyspace.state(),
            redis_failover: false,
        };
        let readiness = Arc::new(Readiness {
            reader,
            store,
            keyspace,
            sentinel,
            cluster_settled,
            report: RwLock::new(report),
        });
        readiness.refresh().await;
        readiness
    }

    /// The last report, with the failover state as it is now (two atomic
    /// loads: a failover is often shorter than a refresh period).
    pub fn report(&self) -> Report {
        let mut report = *crate::sync::read(&self.report);
        report.redis_failover = self.failover_now();
        report
    }

    fn failover_now(&self) -> bool {
        self.sentinel.as_ref().is_some_and(|s| s.failing_over())
            || self
                .cluster_settled
                .as_ref()
                .is_some_and(|up| !up.load(Ordering::Acquire))
    }

    async fn refresh(&self) {
        let pg = async {
            match &self.store {
                Some(store) => Some(store.ping().await),
                None => None,
            }
        };
        let (redis, postgres) = tokio::join!(self.reader.ping(), pg);
        if let Some(up) = postgres {
            metrics::gauge!("jobcast_postgres_up").set(if up { 1.0 } else { 0.0 });
        }
        let report = Report {
            redis,
            postgres,
            keyspace_events: self.keyspace.state(),
            redis_failover: self.failover_now(),
        };
        *crate::sync::write(&self.report) = report;
    }

    /// Refreshes every [`REFRESH_PERIOD`] until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut timer = tokio::time::interval(REFRESH_PERIOD);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = timer.tick() => self.refresh().await,
            }
        }
    }
}
