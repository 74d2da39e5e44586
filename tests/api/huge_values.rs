//! A huge value at a job key — a 200 MB string, a million-field hash — is
//! measured inside Redis and dropped as `too_large`; it never reaches the
//! gateway's memory, and the job's stream and other jobs go on.

use std::time::Duration;

use crate::app::{bearer, claims, sign};
use crate::child::ChildApp;
use crate::clients::Gateway as _;
use crate::support::{RedisServer, wait_until};

const BIG_STRING_BYTES: u64 = 200 * 1024 * 1024;
const WIDE_HASH_FIELDS: u64 = 1_000_000;
/// Peak resident memory the gateway may reach in this test.
const PEAK_RSS_LIMIT_KIB: u64 = 96 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_values_are_dropped_as_too_large_without_being_read() {
    let redis = RedisServer::builder()
        .notify_keyspace_events("K$hgsx")
        .start()
        .await;
    let mut c = redis.connection().await;
    // A million-field hash, built inside Redis before anyone watches it.
    let _: () = redis::cmd("EVAL")
        .arg("for i = 1, tonumber(ARGV[1]) do redis.call('HSET', KEYS[1], 'f' .. i, 'v') end")
        .arg(1)
        .arg("progress:job:wide")
        .arg(WIDE_HASH_FIELDS)
        .query_async(&mut c)
        .await
        .expect("build the wide hash");
    let app = ChildApp::spawn(&redis.url(), &[]).await;
    let auth = bearer(&sign(&claims("alice")));
    let mut admin = claims("ops");
    admin.roles = vec!["admin".into()];
    let admin = bearer(&sign(&admin));

    redis
        .set("progress:job:big", r#"{"seq":1,"owner_id":"alice"}"#)
        .await;
    redis
        .set("progress:job:other", r#"{"seq":1,"owner_id":"alice"}"#)
        .await;
    let mut big = app.sse("/jobs/big/events", &auth).await;
    big.expect("connected").await;
    big.expect("progress").await;
    let mut other = app.sse("/jobs/other/events", &auth).await;
    other.expect("connected").await;
    other.expect("progress").await;
    let baseline = app.peak_rss_kib();

    // The watched key grows to 200 MB (one SETRANGE, then a keyspace event).
    let _: i64 = redis::cmd("SETRANGE")
        .arg("progress:job:big")
        .arg(BIG_STRING_BYTES - 1)
        .arg("x")
        .query_async(&mut c)
        .await
        .expect("SETRANGE");
    wait_until(
        Duration::from_secs(10),
        "the 200 MB value is dropped as too_large",
        || async {
            app.metric("jobcast_documents_dropped_total", r#"reason="too_large""#)
                .await
                >= 1.0
        },
    )
    .await;

    // The million-field hash, asked for as a snapshot: dropped the same way, so
    // the job is unknown.
    let res = reqwest::Client::new()
        .get(app.url("/jobs/wide"))
        .header("authorization", &admin)
        .send()
        .await
        .expect("snapshot");
    assert_eq!(res.status(), 404, "no document: the hash was too large");
    wait_until(
        Duration::from_secs(10),
        "the million-field hash is dropped as too_large",
        || async {
            app.metric("jobcast_documents_dropped_total", r#"reason="too_large""#)
                .await
                >= 2.0
        },
    )
    .await;

    // Other jobs stream on, and so does the job itself once its value is sane.
    redis
        .publish("progress:job:other", r#"{"seq":2,"owner_id":"alice"}"#)
        .await;
    assert_eq!(other.expect("progress").await.id.as_deref(), Some("2"));
    redis
        .set(
            "progress:job:big",
            r#"{"seq":3,"owner_id":"alice","status":"completed"}"#,
        )
        .await;
    assert_eq!(big.expect("progress").await.id.as_deref(), Some("3"));
    big.expect("done").await;

    let peak = app.peak_rss_kib();
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "peak RSS {peak} KiB (was {baseline} KiB before the huge values)"
    );
}
