//! What `/readyz` answers from: a report of the sources' health refreshed in
//! the background at most once a second, so a load balancer probing often (or
//! many of them) costs Redis and Postgres nothing per request.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::upstream::redis_reader::RedisReader;
use crate::upstream::redis_setup::{KeyspaceEvents, KeyspaceMonitor};

/// Time between two refreshes (a refresh waiting on a dead source takes longer).
pub const REFRESH_PERIOD: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
pub struct Report {
    pub redis: bool,
    /// `None` without `DATABASE_URL`.
    pub postgres: Option<bool>,
    pub keyspace_events: KeyspaceEvents,
}

pub struct Readiness {
    reader: RedisReader,
    store: Option<Store>,
    keyspace: Arc<KeyspaceMonitor>,
    report: RwLock<Report>,
}

impl Readiness {
    /// Takes the first report now, so `/readyz` is true from the first request.
    pub async fn new(
        reader: RedisReader,
        store: Option<Store>,
        keyspace: Arc<KeyspaceMonitor>,
    ) -> Arc<Self> {
        let report = Report {
            redis: false,
            postgres: store.as_ref().map(|_| false),
            keyspace_events: keyspace.state(),
        };
        let readiness = Arc::new(Readiness {
            reader,
            store,
            keyspace,
            report: RwLock::new(report),
        });
        readiness.refresh().await;
        readiness
    }

    pub fn report(&self) -> Report {
        *crate::sync::read(&self.report)
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
