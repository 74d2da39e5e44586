//! The Prometheus exporter behind `GET /metrics`. The recorder is process-global
//! (the `metrics` facade allows one), so it is installed once and shared by every
//! app in the process; names follow Prometheus conventions (`_total`, `_seconds`).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often raw histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Source-event → write latency buckets, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            zero_counters();
            // Histogram samples pile up until drained: without this upkeep a
            // gateway nobody scrapes would grow by 8 bytes per delivery. A plain
            // thread, because the recorder outlives any one tokio runtime.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                });
            Some(handle)
        })
        .as_ref()
}

/// Counters for rare events start at 0 with their known labels, so that they
/// are served from the first scrape: `increase()` in an alert then sees the
/// first refusal or failure, instead of a series that appears at 1 and is
/// never seen to grow, and dashboards show 0 instead of "no data".
fn zero_counters() {
    use metrics::counter;
    for transport in ["sse", "ws", "poll"] {
        counter!("jobcast_connections_opened_total", "transport" => transport).increment(0);
        counter!("jobcast_events_delivered_total", "transport" => transport).increment(0);
    }
    for reason in ["max_connections", "max_per_user"] {
        counter!("jobcast_connections_refused_total", "reason" => reason).increment(0);
    }
    for reason in [
        "stale",
        "duplicate",
        "invalid",
        "not_object",
        "too_large",
        "wrong_type",
        "owner_changed",
    ] {
        counter!("jobcast_documents_dropped_total", "reason" => reason).increment(0);
    }
    for reason in ["unavailable", "rejected"] {
        counter!("jobcast_postgres_write_errors_total", "reason" => reason).increment(0);
    }
    for source in ["keyspace", "channel", "group"] {
        counter!("jobcast_redis_events_total", "source" => source).increment(0);
    }
    for source in ["keyspace", "channel", "postgres"] {
        counter!("jobcast_updates_total", "source" => source).increment(0);
    }
    for reason in ["rate_limited", "busy"] {
        counter!("jobcast_selftest_refused_total", "reason" => reason).increment(0);
    }
    for name in [
        "jobcast_redis_reads_total",
        "jobcast_redis_subscriptions_total",
        "jobcast_postgres_fallbacks_total",
        "jobcast_postgres_notifies_total",
        "jobcast_postgres_writes_total",
        "jobcast_retention_deleted_total",
        "jobcast_jwks_refresh_errors_total",
        "jobcast_redis_read_retries_total",
        "jobcast_redis_subscribe_errors_total",
        "jobcast_resyncs_total",
        "jobcast_accept_paused_total",
        "jobcast_redis_primary_switches_total",
        "jobcast_redis_subscriptions_moved_total",
    ] {
        counter!(name).increment(0);
    }
    // Exposed from the start: Redis is not up until the listener says so.
    for name in [
        "jobcast_stalled_jobs",
        "jobcast_active_groups",
        "jobcast_redis_up",
    ] {
        metrics::gauge!(name).increment(0.0);
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("jobcast_connections", "Open streams by transport");
    describe_gauge!(
        "jobcast_stalled_jobs",
        "Watched running jobs without a new state for their stall period"
    );
    describe_gauge!("jobcast_active_groups", "Groups with group streams open");
    describe_counter!(
        "jobcast_postgres_writes_total",
        "Job states written behind into Postgres"
    );
    describe_counter!(
        "jobcast_postgres_write_errors_total",
        "Write-behind failures by reason"
    );
    describe_counter!(
        "jobcast_retention_deleted_total",
        "Finished jobs deleted by the retention sweep"
    );
    describe_counter!(
        "jobcast_connections_opened_total",
        "Streams opened by transport"
    );
    describe_counter!(
        "jobcast_connections_closed_total",
        "Streams closed by transport and reason"
    );
    describe_counter!(
        "jobcast_connections_refused_total",
        "Streams refused by a connection limit"
    );
    describe_counter!(
        "jobcast_events_delivered_total",
        "Progress events written to clients by transport"
    );
    describe_counter!(
        "jobcast_documents_dropped_total",
        "Documents dropped by reason"
    );
    describe_counter!("jobcast_updates_total", "Accepted job states by source");
    describe_counter!(
        "jobcast_redis_events_total",
        "Redis notifications by source (keyspace, channel)"
    );
    describe_counter!(
        "jobcast_redis_reads_total",
        "State-key reads through the pool"
    );
    describe_counter!(
        "jobcast_redis_subscriptions_total",
        "Job subscriptions taken on Redis"
    );
    describe_counter!(
        "jobcast_redis_subscriptions_moved_total",
        "Job subscriptions moved to a cluster slot's new primary (failover, resharding)"
    );
    describe_counter!(
        "jobcast_redis_primary_switches_total",
        "Redis primaries learnt from the sentinels (the first one, then each failover)"
    );
    describe_counter!(
        "jobcast_postgres_fallbacks_total",
        "First states served from Postgres"
    );
    describe_counter!(
        "jobcast_postgres_notifies_total",
        "NOTIFYs received from Postgres"
    );
    describe_gauge!(
        "jobcast_redis_up",
        "1 while the Redis pub/sub connection is up"
    );
    describe_gauge!("jobcast_postgres_up", "1 while Postgres answers");
    describe_gauge!(
        "jobcast_recorder",
        "1 while this instance is the recorder (holds the advisory lock)"
    );
    describe_gauge!(
        "jobcast_redis_keyspace_events",
        "1 while Redis notify-keyspace-events has every flag jobcast needs"
    );
    describe_counter!(
        "jobcast_redis_read_retries_total",
        "State reads tried again after a failure"
    );
    describe_counter!(
        "jobcast_redis_subscribe_errors_total",
        "Job SUBSCRIBEs Redis did not take (retried per job)"
    );
    describe_counter!(
        "jobcast_resyncs_total",
        "Periodic re-reads of every watched job"
    );
    describe_counter!(
        "jobcast_accept_paused_total",
        "Times the accept loop waited at the open-socket cap"
    );
    describe_counter!(
        "jobcast_auth_failures_total",
        "Refused tokens and requests by reason"
    );
    describe_counter!(
        "jobcast_jwks_refresh_errors_total",
        "JWK Set fetches that failed (the last good set was kept)"
    );
    describe_counter!(
        "jobcast_selftest_refused_total",
        "Buffering self-test requests refused by reason (rate_limited, busy)"
    );
    describe_counter!(
        "jobcast_auth_hook_calls_total",
        "Calls to JOBCAST_AUTH_URL by result"
    );
    describe_counter!(
        "jobcast_auth_hook_cache_hits_total",
        "Auth hook decisions served from the cache"
    );
    describe_counter!(
        "jobcast_auth_hook_failures_total",
        "Auth hook calls that got no decision, by reason"
    );
    describe_gauge!("jobcast_active_jobs", "Jobs with at least one watcher");
    describe_gauge!("jobcast_watchers", "Watchers over all jobs");
    describe_histogram!(
        "jobcast_delivery_latency_seconds",
        "From receiving a state to writing it to a client"
    );
}
