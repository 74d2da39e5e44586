//! The publisher side of groups: the Rust tracker's group option, `jobcast
//! publish --group` and `POST /jobs/{id}` with a `group_id` each put the group
//! in the document and `SADD` the job to `progress:group:{group}` with the
//! state key's TTL, checked in a real Redis.

use jobcast_publish::{ProgressTracker, Publisher};
use redis::AsyncCommands;
use serde_json::Value;

use crate::app::spawn_app;
use crate::publish::{jobcast, post, publisher_token, require_node_example, run_ok};
use crate::support::RedisServer;

const STAGES: &[(&str, f64)] = &[("loading", 10.0), ("solving", 90.0)];

/// Members of the group set and the TTLs of set and state key.
async fn membership(
    conn: &mut redis::aio::MultiplexedConnection,
    group: &str,
    job: &str,
) -> (Vec<String>, i64, i64) {
    let mut members: Vec<String> = conn
        .smembers(format!("progress:group:{group}"))
        .await
        .expect("SMEMBERS");
    members.sort();
    let set_ttl: i64 = conn.ttl(format!("progress:group:{group}")).await.unwrap();
    let key_ttl: i64 = conn.ttl(format!("progress:job:{job}")).await.unwrap();
    (members, set_ttl, key_ttl)
}

async fn doc(conn: &mut redis::aio::MultiplexedConnection, job: &str) -> Value {
    let raw: String = conn.get(format!("progress:job:{job}")).await.expect("GET");
    serde_json::from_str(&raw).expect("JSON")
}

#[tokio::test]
async fn tracker_in_a_group_adds_each_job_to_the_set_with_the_state_ttl() {
    let redis = RedisServer::start().await;
    let publisher = Publisher::connect(&redis.url()).unwrap().with_ttl(300);
    let mut conn = redis.connection().await;

    for job in ["g-1", "g-2"] {
        let mut t = ProgressTracker::new(publisher.clone(), job, "alice", STAGES)
            .unwrap()
            .in_group("batch-7")
            .unwrap();
        t.start_stage("loading").await.expect("first write");
        assert_eq!(doc(&mut conn, job).await["group_id"], "batch-7");
    }

    let (members, set_ttl, key_ttl) = membership(&mut conn, "batch-7", "g-2").await;
    assert_eq!(members, vec!["g-1", "g-2"]);
    assert!(
        (290..=300).contains(&set_ttl) && (290..=300).contains(&key_ttl),
        "set TTL {set_ttl}, key TTL {key_ttl}"
    );
    assert!(
        ProgressTracker::new(publisher, "g-3", "alice", STAGES)
            .unwrap()
            .in_group("no spaces*")
            .is_err(),
        "group names follow the job id rules"
    );
}

#[tokio::test]
async fn cli_publish_with_group_names_it_and_adds_the_job() {
    let app = spawn_app().await;
    run_ok(jobcast(
        &app,
        &[
            "publish",
            "cli-g",
            r#"{"seq":1,"owner_id":"alice","status":"running"}"#,
            "--ttl",
            "600",
            "--group",
            "proj-3",
        ],
    ))
    .await;
    let mut conn = app.redis().await;
    assert_eq!(doc(&mut conn, "cli-g").await["group_id"], "proj-3");
    let (members, set_ttl, key_ttl) = membership(&mut conn, "proj-3", "cli-g").await;
    assert_eq!(members, vec!["cli-g"]);
    assert!(
        (590..=600).contains(&set_ttl) && (590..=600).contains(&key_ttl),
        "set TTL {set_ttl}, key TTL {key_ttl}"
    );

    let out = jobcast(
        &app,
        &["publish", "cli-h", r#"{"seq":1}"#, "--group", "bad group"],
    )
    .output()
    .await
    .expect("spawn");
    assert!(!out.status.success(), "an invalid group name is refused");
    let exists: bool = conn.exists("progress:job:cli-h").await.unwrap();
    assert!(!exists, "nothing written for a refused group");
}

#[tokio::test]
async fn post_with_group_id_adds_the_job_to_the_group_set() {
    let app = spawn_app().await;
    let token = publisher_token("svc");
    let body = r#"{"seq":1,"owner_id":"alice","status":"running","group_id":"proj-5"}"#;

    let (status, answer) = post(&app, "posted-g", Some(&token), body.into()).await;

    assert_eq!(status, 201, "{answer}");
    let mut conn = app.redis().await;
    let (members, set_ttl, key_ttl) = membership(&mut conn, "proj-5", "posted-g").await;
    assert_eq!(members, vec!["posted-g"]);
    assert!(
        set_ttl > 0 && (set_ttl - key_ttl).abs() <= 1,
        "set TTL {set_ttl}, key TTL {key_ttl}"
    );

    let (status, answer) = post(
        &app,
        "posted-h",
        Some(&token),
        r#"{"seq":1,"owner_id":"alice","group_id":"not a group"}"#.into(),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let exists: bool = conn.exists("progress:job:posted-h").await.unwrap();
    assert!(!exists, "nothing written for a refused group");
}

#[tokio::test]
async fn node_example_with_a_group_adds_the_job_to_the_set() {
    require_node_example();
    let repo = env!("CARGO_MANIFEST_DIR");
    let app = spawn_app().await;
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new("node")
            .arg(format!("{repo}/examples/node/publish_progress.mjs"))
            .args(["node-g", "alice", "proj-node"])
            .env("REDIS_URL", app.redis.url())
            .env("STEP_SECONDS", "0")
            .output(),
    )
    .await
    .expect("the example finished in time")
    .expect("node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut conn = app.redis().await;
    let last = doc(&mut conn, "node-g").await;
    assert_eq!(last["group_id"], "proj-node");
    assert_eq!(last["status"], "completed");
    let (members, set_ttl, key_ttl) = membership(&mut conn, "proj-node", "node-g").await;
    assert_eq!(members, vec!["node-g"]);
    assert!(
        set_ttl > 7000 && (set_ttl - key_ttl).abs() <= 1,
        "set TTL {set_ttl}, key TTL {key_ttl}"
    );
}
