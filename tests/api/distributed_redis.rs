//! jobcast on the distributed Redis its users run: a real Redis Cluster (3
//! primaries + 3 replicas) whose primary is killed mid-stream, and a real
//! Sentinel deployment (primary, replica, 3 sentinels) failed over mid-stream.
//! Every watcher still reaches `done`, never sees a state twice or go back,
//! and the gateway holds one subscription per watched job where the job lives.
//! On the cluster, with Postgres, the recorder writes behind the jobs nobody
//! watches, on every primary, through a primary's death, and behind
//! Sentinel follows the failover. Group streams on the cluster learn members
//! that join later from the group set's keyspace events on the set's primary,
//! through a primary's death too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jobcast::config::Settings;
use jobcast::startup::App;
use jobcast::upstream::cluster_topology::key_slot;
use jobcast_publish::{JobId, Publisher};
use tokio_util::sync::CancellationToken;

use crate::app::{SECRET, claims, sign};
use crate::clients::{Sse, SseEvent};
use crate::recorder::{assert_final_state_from_postgres, wait_row};
use crate::support::redis_sentinel::{MASTER_NAME, primary_connection};
use crate::support::{RedisCluster, SentinelSetup, TestDb, wait_until};

const PREFIX: &str = "progress:job:";
const GROUP_PREFIX: &str = "progress:group:";
/// Bound on any one event of a watcher (heartbeats come every second).
const EVENT_BOUND: Duration = Duration::from_secs(15);
/// Bound on every watcher reaching a given state.
const STATE_BOUND: Duration = Duration::from_secs(20);

/// A gateway built as `main` builds it, on port 0, against `redis`.
struct Gateway {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
}

impl Gateway {
    async fn start(tweak: impl FnOnce(&mut Settings)) -> Gateway {
        let mut s = Settings::defaults();
        s.listen = "127.0.0.1:0".parse().expect("addr");
        s.jwt_secret = Some(jobcast::config::Secret::new(SECRET));
        s.static_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/static").into();
        s.heartbeat_secs = 1;
        // Hundreds of watchers under one test user.
        s.max_connections_per_user = 0;
        // No periodic re-read: only subscriptions (and the re-read after a
        // move) may deliver, so a lost subscription shows.
        s.resync_secs = 0;
        tweak(&mut s);
        let app = App::build(s).await.expect("App::build");
        let gateway = Gateway {
            addr: app.addr(),
            shutdown: app.shutdown_token(),
        };
        tokio::spawn(app.run());
        gateway
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn readyz(&self) -> serde_json::Value {
        reqwest::get(self.url("/readyz"))
            .await
            .expect("GET /readyz")
            .json()
            .await
            .expect("readyz JSON")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One SSE watcher per job; each records the last `seq` it saw, and its
/// task returns every event id in order and whether `done` came.
struct Watchers {
    last_seen: Arc<Vec<AtomicU64>>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<u64>, bool)>>,
}

impl Watchers {
    async fn start(gateway: &Gateway, jobs: &[String]) -> Watchers {
        let mut admin = claims("watcher");
        admin.roles = vec!["admin".into()];
        let auth = format!("Bearer {}", sign(&admin));
        let last_seen: Arc<Vec<AtomicU64>> =
            Arc::new(jobs.iter().map(|_| AtomicU64::new(0)).collect());
        let mut tasks = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            let url = gateway.url(&format!("/jobs/{job}/events"));
            let (auth, last_seen) = (auth.clone(), last_seen.clone());
            tasks.push(tokio::spawn(async move {
                let mut sse = Sse::connect(&url, &[("authorization", &auth)]).await;
                assert_eq!(sse.status, 200, "{url}");
                let mut ids = Vec::new();
                while let Some(ev) = sse.next_within(EVENT_BOUND).await {
                    match ev.event.as_str() {
                        "progress" => {
                            let id: u64 = ev
                                .id
                                .as_deref()
                                .and_then(|i| i.parse().ok())
                                .expect("numeric id");
                            last_seen[i].store(id, Ordering::Release);
                            ids.push(id);
                        }
                        "done" => return (ids, true),
                        _ => {}
                    }
                }
                (ids, false)
            }));
        }
        Watchers { last_seen, tasks }
    }

    async fn wait_all_saw(&self, seq: u64) {
        let last_seen = self.last_seen.clone();
        wait_until(STATE_BOUND, &format!("every watcher saw seq {seq}"), || {
            let last_seen = last_seen.clone();
            async move { last_seen.iter().all(|s| s.load(Ordering::Acquire) >= seq) }
        })
        .await;
    }

    /// Awaits every watcher; asserts each reached `done` with increasing ids
    /// that end with `terminal`.
    async fn assert_all_done(self, jobs: &[String], terminal: u64) {
        for (job, task) in jobs.iter().zip(self.tasks) {
            let (ids, done) = tokio::time::timeout(STATE_BOUND, task)
                .await
                .unwrap_or_else(|_| panic!("watcher of {job} still open"))
                .expect("watcher task");
            assert!(done, "watcher of {job} never got `done`; ids {ids:?}");
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "{job}: ids went back or repeated: {ids:?}"
            );
            assert_eq!(ids.last(), Some(&terminal), "{job}: {ids:?}");
        }
    }
}

/// Every change of `/readyz` (`status/redis`), polled every 20 ms.
struct ReadyzLog {
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyzLog {
    fn start(gateway: &Gateway) -> ReadyzLog {
        let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let stop = CancellationToken::new();
        let (url, log, halt) = (gateway.url("/readyz"), seen.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !halt.is_cancelled() {
                if let Ok(res) = client.get(&url).send().await
                    && let Ok(body) = res.json::<serde_json::Value>().await
                {
                    let word = format!("{}/{}", body["status"], body["redis"]);
                    let mut seen = log.lock().expect("readyz log");
                    if seen.last() != Some(&word) {
                        seen.push(word);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        ReadyzLog { seen, stop, task }
    }

    /// Waits until `/readyz` is `ready` again, then asserts it was
    /// `degraded` with `"redis":"failover"` meanwhile.
    async fn assert_degraded_then_ready(self) {
        let seen = self.seen.clone();
        wait_until(STATE_BOUND, "/readyz is ready again", || {
            let seen = seen.clone();
            async move {
                let seen = seen.lock().expect("readyz log");
                seen.iter().any(|s| s.contains("failover"))
                    && seen.last().is_some_and(|s| s.starts_with("\"ready\""))
            }
        })
        .await;
        self.stop.cancel();
        self.task.await.expect("readyz poller");
        let seen = self.seen.lock().expect("readyz log").clone();
        assert!(
            seen.contains(&"\"degraded\"/\"failover\"".to_owned()),
            "/readyz went degraded (redis failover) and back: {seen:?}"
        );
    }
}

fn doc(seq: u64, terminal: bool) -> String {
    let status = if terminal { "completed" } else { "running" };
    format!(r#"{{"seq":{seq},"status":"{status}","owner_id":"alice","overall_progress":{seq}}}"#)
}

/// `PUBSUB SHARDNUMSUB` / `PUBSUB NUMSUB` of `channels` on one node.
async fn subscribers(
    conn: &mut redis::aio::MultiplexedConnection,
    sub: &str,
    channels: &[String],
) -> Vec<i64> {
    let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg(sub)
        .arg(channels)
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("PUBSUB {sub}: {e}"));
    counts.into_iter().map(|(_, n)| n).collect()
}

/// Asserts that jobcast set the keyspace-notification flags on `node`.
async fn assert_keyspace_flags_on(node: &mut redis::aio::MultiplexedConnection, which: &str) {
    let (_, flags): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(node)
        .await
        .unwrap_or_else(|e| panic!("CONFIG GET on {which}: {e}"));
    assert!(
        jobcast::upstream::redis_setup::missing_flags(&flags).is_empty(),
        "jobcast set the keyspace flags on {which}: {flags:?}"
    );
}

/// Asserts that on every primary, each job whose slot it owns has exactly one
/// shard subscriber on its channel and one subscriber on its keyspace channel.
async fn assert_one_subscription_per_job(cluster: &mut RedisCluster, jobs: &[String]) {
    let shards = cluster.shards().await;
    for shard in &shards {
        let owned: Vec<&String> = jobs
            .iter()
            .filter(|j| {
                let slot = key_slot(format!("{PREFIX}{j}").as_bytes());
                shard.ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .collect();
        assert!(
            !owned.is_empty(),
            "the jobs spread over every primary: {shards:?}"
        );
        let channels: Vec<String> = owned.iter().map(|j| format!("{PREFIX}{j}")).collect();
        let keyspace: Vec<String> = owned
            .iter()
            .map(|j| format!("__keyspace@0__:{PREFIX}{j}"))
            .collect();
        let mut node = cluster.node(shard.primary).await;
        let sharded = subscribers(&mut node, "SHARDNUMSUB", &channels).await;
        assert!(
            sharded.iter().all(|n| *n == 1),
            "shard subscribers on {}: {sharded:?}",
            shard.primary
        );
        let events = subscribers(&mut node, "NUMSUB", &keyspace).await;
        assert!(
            events.iter().all(|n| *n == 1),
            "keyspace subscribers on {}: {events:?}",
            shard.primary
        );
    }
}

/// `jobcast publish JOB DOC` with only `env` (and the test secret) set;
/// returns its stdout, asserting it succeeded.
async fn cli_publish(env: &[(&str, &str)], job: &str, body: &str) -> String {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobcast"));
    cmd.env_clear()
        .env("JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .args(["publish", job, body])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(STATE_BOUND, cmd.output())
        .await
        .expect("jobcast publish in time")
        .expect("run jobcast publish");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "jobcast publish failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Retries one write until it lands (a failover refuses writes for a while).
async fn until_written<F, Fut>(what: &str, mut write: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + STATE_BOUND;
    loop {
        match write().await {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{what} never landed: {e}"),
        }
    }
}

/// Writes `seq` for every job: even jobs by a plain SET (keyspace events),
/// odd ones through the publisher library (SET + SPUBLISH in one script).
async fn write_cluster_round(
    setter: &redis::cluster_async::ClusterConnection,
    publisher: &Publisher,
    jobs: &[String],
    seq: u64,
    terminal: bool,
) {
    for (i, job) in jobs.iter().enumerate() {
        let body = doc(seq, terminal);
        if i % 2 == 0 {
            until_written(&format!("SET {job} seq {seq}"), || {
                let (mut c, body) = (setter.clone(), body.clone());
                async move {
                    redis::cmd("SET")
                        .arg(format!("{PREFIX}{job}"))
                        .arg(body)
                        .query_async::<()>(&mut c)
                        .await
                        .map_err(|e| e.to_string())
                }
            })
            .await;
        } else {
            let id = JobId::parse(job).expect("job id");
            until_written(&format!("publish {job} seq {seq}"), || {
                let (id, body) = (id.clone(), body.clone());
                async move {
                    publisher
                        .write(&id, body.as_bytes())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            })
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_primary_killed_mid_stream_every_watcher_reaches_done() {
    // Arrange: notifications off on every node; jobcast turns them on.
    let mut cluster = RedisCluster::start("").await;
    let url = cluster.url();
    let gateway = Gateway::start(|s| s.redis_url = url.clone()).await;
    let jobs: Vec<String> = (0..300).map(|i| format!("cluster-{i}")).collect();
    let setter = cluster.connection().await;
    let publisher = Publisher::connect(&cluster.url()).expect("publisher for the cluster");
    write_cluster_round(&setter, &publisher, &jobs, 1, false).await;
    let watchers = Watchers::start(&gateway, &jobs).await;
    watchers.wait_all_saw(1).await;
    write_cluster_round(&setter, &publisher, &jobs, 2, false).await;
    watchers.wait_all_saw(2).await;
    assert_one_subscription_per_job(&mut cluster, &jobs).await;

    // Act: writers go on while the primary of job 0's slot is killed.
    let progress = Arc::new(AtomicU64::new(2));
    let writer = {
        let (setter, publisher, jobs, progress) = (
            setter.clone(),
            publisher.clone(),
            jobs.clone(),
            progress.clone(),
        );
        tokio::spawn(async move {
            for seq in 3..=12 {
                write_cluster_round(&setter, &publisher, &jobs, seq, false).await;
                progress.store(seq, Ordering::Release);
            }
        })
    };
    let seen = progress.clone();
    wait_until(STATE_BOUND, "the writers are mid-stream", || {
        let seen = seen.clone();
        async move { seen.load(Ordering::Acquire) >= 4 }
    })
    .await;
    assert_eq!(gateway.readyz().await["status"], "ready");
    let readyz = ReadyzLog::start(&gateway);
    let victim = cluster
        .primary_of_slot(key_slot(format!("{PREFIX}{}", jobs[0]).as_bytes()))
        .await;
    let successor = cluster.kill_primary_and_wait_failover(victim).await;
    writer.await.expect("writer");

    // Assert: every stream goes on from the new primary, one subscription
    // per job there, and ends with `done`.
    watchers.wait_all_saw(12).await;
    readyz.assert_degraded_then_ready().await;
    assert_one_subscription_per_job(&mut cluster, &jobs).await;
    assert_keyspace_flags_on(&mut cluster.node(successor).await, "the promoted replica").await;
    // The last state of one job comes through the gateway's own POST, which
    // writes SET + SPUBLISH on the slot's primary like a worker.
    let mut publisher_claims = claims("service");
    publisher_claims.roles = vec!["publisher".into()];
    publisher_claims.jobs = vec![jobs[1].clone()];
    let posted = reqwest::Client::new()
        .post(gateway.url(&format!("/jobs/{}", jobs[1])))
        .bearer_auth(sign(&publisher_claims))
        .body(doc(13, true))
        .send()
        .await
        .expect("POST /jobs/{id}");
    assert_eq!(posted.status(), 201, "POST in a cluster");
    // And one through `jobcast publish`: its SPUBLISH reaches the gateway's
    // one shard subscription on the slot's primary.
    let out = cli_publish(&[("REDIS_URL", &cluster.url())], &jobs[3], &doc(13, true)).await;
    assert!(out.contains("(1 channel subscribers)"), "{out}");
    write_cluster_round(&setter, &publisher, &jobs, 13, true).await;
    watchers.assert_all_done(&jobs, 13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_mid_stream_every_watcher_reaches_done() {
    // Arrange: notifications off on both servers; jobcast sets them on the
    // primary, and on the new one after the failover.
    let setup = SentinelSetup::start("").await;
    let sentinels = setup.sentinels_setting();
    let gateway = Gateway::start(|s| {
        s.redis_sentinels = sentinels.split(',').map(str::to_owned).collect();
        s.redis_sentinel_master = Some(MASTER_NAME.to_owned());
    })
    .await;
    let jobs: Vec<String> = (0..50).map(|i| format!("sentinel-{i}")).collect();
    let write_round = |seq: u64, terminal: bool| {
        let jobs = jobs.clone();
        let setup = &setup;
        async move {
            // Each round asks the sentinels where the primary is now.
            let mut primary = setup.primary().await;
            for (i, job) in jobs.iter().enumerate() {
                let key = format!("{PREFIX}{job}");
                let body = doc(seq, terminal);
                let result: redis::RedisResult<()> = if i % 2 == 0 {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&body)
                        .query_async(&mut primary)
                        .await
                } else {
                    redis::pipe()
                        .cmd("SET")
                        .arg(&key)
                        .arg(&body)
                        .ignore()
                        .cmd("PUBLISH")
                        .arg(&key)
                        .arg(&body)
                        .ignore()
                        .query_async(&mut primary)
                        .await
                };
                if let Err(e) = result {
                    return Err(e.to_string());
                }
            }
            Ok(())
        }
    };
    until_written("round 1", || write_round(1, false)).await;
    let watchers = Watchers::start(&gateway, &jobs).await;
    watchers.wait_all_saw(1).await;
    assert_eq!(gateway.readyz().await["status"], "ready");
    let readyz = ReadyzLog::start(&gateway);

    // Act: a forced failover between two rounds of writes.
    until_written("round 2", || write_round(2, false)).await;
    let new_primary = setup.failover().await;
    for seq in 3..=6 {
        until_written(&format!("round {seq}"), || write_round(seq, false)).await;
    }

    // Assert
    watchers.wait_all_saw(6).await;
    readyz.assert_degraded_then_ready().await;
    let mut primary = setup.primary().await;
    assert_eq!(setup.primary_port().await, new_primary);
    assert_keyspace_flags_on(&mut primary, "the new primary").await;
    let channels: Vec<String> = jobs.iter().map(|j| format!("{PREFIX}{j}")).collect();
    let counts = subscribers(&mut primary, "NUMSUB", &channels).await;
    assert!(
        counts.iter().all(|n| *n == 1),
        "one subscription per job on the new primary: {counts:?}"
    );
    let out = cli_publish(
        &[
            ("REDIS_SENTINELS", &sentinels),
            ("REDIS_SENTINEL_MASTER", MASTER_NAME),
        ],
        &jobs[1],
        &doc(7, true),
    )
    .await;
    assert!(
        out.contains("(1 channel subscribers)"),
        "jobcast publish found the new primary: {out}"
    );
    until_written("the terminal round", || write_round(7, true)).await;
    watchers.assert_all_done(&jobs, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_recorder_writes_unwatched_jobs_on_every_primary_through_a_primary_kill() {
    // Arrange: jobs nobody watches, spread over every primary; notifications
    // off on every node (jobcast turns them on). The gateway's only seed is
    // the primary that will die: from then on it must ask the nodes the
    // cluster named.
    let mut cluster = RedisCluster::start("").await;
    let db = TestDb::create().await;
    let pool = db.pool().await;
    let jobs: Vec<String> = (0..30).map(|i| format!("recorded-{i}")).collect();
    let victim = cluster
        .primary_of_slot(key_slot(format!("{PREFIX}{}", jobs[0]).as_bytes()))
        .await;
    let (url, db_url) = (
        format!("redis+cluster://127.0.0.1:{victim}"),
        db.url().to_owned(),
    );
    let gateway = Gateway::start(|s| {
        s.redis_url = url;
        s.database_url = Some(jobcast::config::Secret::new(db_url));
    })
    .await;
    let shards = cluster.shards().await;
    for shard in &shards {
        assert!(
            jobs.iter().any(|j| {
                let slot = key_slot(format!("{PREFIX}{j}").as_bytes());
                shard.ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            }),
            "the jobs spread over every primary: {shards:?}"
        );
    }
    // Even jobs by a plain SET, odd ones by SET + SPUBLISH: both are heard
    // through the key's keyspace event on its slot's primary.
    let setter = cluster.connection().await;
    let publisher = Publisher::connect(&cluster.url()).expect("publisher for the cluster");
    write_cluster_round(&setter, &publisher, &jobs, 1, false).await;
    for job in &jobs {
        wait_row(&pool, job, 1, false).await;
    }

    // Act: the primary of job 0's slot, the gateway's seed, dies; the next
    // states are written while its replica takes over (each write retried
    // until it lands).
    cluster.kill(victim);
    write_cluster_round(&setter, &publisher, &jobs, 2, false).await;
    write_cluster_round(&setter, &publisher, &jobs, 3, true).await;

    // Assert: every job's final state is in its row, and served from there
    // once the whole cluster is gone.
    for job in &jobs {
        wait_row(&pool, job, 3, true).await;
    }
    for port in cluster.live_ports() {
        cluster.kill(port);
    }
    assert_final_state_from_postgres(
        &gateway.url(&format!("/jobs/{}", jobs[0])),
        &sign(&claims("alice")),
        3,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_recorder_follows_the_failover_to_the_new_primary() {
    // Arrange: an unwatched job recorded from the first primary.
    let mut setup = SentinelSetup::start("").await;
    let db = TestDb::create().await;
    let pool = db.pool().await;
    let (sentinels, db_url) = (setup.sentinels_setting(), db.url().to_owned());
    let _gateway = Gateway::start(|s| {
        s.redis_sentinels = sentinels.split(',').map(str::to_owned).collect();
        s.redis_sentinel_master = Some(MASTER_NAME.to_owned());
        s.database_url = Some(jobcast::config::Secret::new(db_url));
    })
    .await;
    let job = "sentinel-recorded";
    let key = format!("{PREFIX}{job}");
    // Each write asks the sentinels where the primary is now.
    let sentinel_port = setup.sentinel_ports()[0];
    let write = |seq: u64, terminal: bool| {
        let key = key.clone();
        async move {
            let mut primary = primary_connection(sentinel_port).await?;
            redis::cmd("SET")
                .arg(&key)
                .arg(doc(seq, terminal))
                .query_async::<()>(&mut primary)
                .await
                .map_err(|e| e.to_string())
        }
    };
    until_written("seq 1", || write(1, false)).await;
    wait_row(&pool, job, 1, false).await;

    // Act: the sentinels fail over and the former primary dies (a demoted
    // primary alive as a replica would still replay the writes, and their
    // keyspace events, to a recorder left behind); the job ends on the new
    // primary.
    let former = setup.primary_port().await;
    setup.failover().await;
    setup.kill(former);
    until_written("the terminal state", || write(2, true)).await;

    // Assert: the recorder heard it there (or read it on moving there).
    wait_row(&pool, job, 2, true).await;
}

/// A state of a job in `group` (the document names its group).
fn doc_in(seq: u64, terminal: bool, group: &str) -> String {
    let status = if terminal { "completed" } else { "running" };
    format!(
        r#"{{"seq":{seq},"status":"{status}","owner_id":"alice","overall_progress":{seq},"group_id":"{group}"}}"#
    )
}

/// Reads `sse` until an event `wanted` accepts, within [`STATE_BOUND`].
async fn until_event(sse: &mut Sse, what: &str, wanted: impl Fn(&SseEvent) -> bool) -> SseEvent {
    let deadline = tokio::time::Instant::now() + STATE_BOUND;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        // The outer bound names what was awaited; the inner one never fires.
        match tokio::time::timeout(left, sse.next_within(left + STATE_BOUND)).await {
            Ok(Some(ev)) if wanted(&ev) => return ev,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended before {what}"),
            Err(_) => panic!("no {what} within {STATE_BOUND:?}"),
        }
    }
}

/// Reads a group stream until `job` has joined and its state `seq` came.
async fn until_joined(sse: &mut Sse, group: &str, job: &str, seq: u64) {
    until_event(sse, &format!("{job} joining {group}"), |ev| {
        ev.event == "joined" && ev.json()["job_id"] == job
    })
    .await;
    until_event(sse, &format!("{job}'s seq {seq} on {group}"), |ev| {
        ev.event == "progress"
            && ev.json()["job_id"] == job
            && ev.json()["id"] == seq.to_string().as_str()
    })
    .await;
}

/// Asserts that of all the cluster's primaries exactly one, the primary of
/// the set's slot, has the gateway subscribed to the keyspace channel of
/// each group's set, once.
async fn assert_one_subscription_per_group(cluster: &mut RedisCluster, groups: &[String]) {
    for group in groups {
        let key = format!("{GROUP_PREFIX}{group}");
        let owner = cluster.primary_of_slot(key_slot(key.as_bytes())).await;
        let channel = vec![format!("__keyspace@0__:{key}")];
        for shard in cluster.shards().await {
            let mut node = cluster.node(shard.primary).await;
            let count = subscribers(&mut node, "NUMSUB", &channel).await[0];
            let expected = i64::from(shard.primary == owner);
            assert_eq!(
                count, expected,
                "subscribers of {key}'s set events on {} (owner {owner})",
                shard.primary
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_group_streams_see_jobs_join_on_every_primary_through_a_primary_kill() {
    // Arrange: one group whose set lives on each primary, each with one job
    // before its stream opens; notifications off (jobcast turns them on).
    let mut cluster = RedisCluster::start("").await;
    let url = cluster.url();
    let gateway = Gateway::start(|s| s.redis_url = url.clone()).await;
    let shards = cluster.shards().await;
    let mut groups: Vec<String> = vec![String::new(); shards.len()];
    // A thousand names hash to every third of the slots many times over.
    for i in 0..1000 {
        if groups.iter().all(|g| !g.is_empty()) {
            break;
        }
        let group = format!("grp-{i}");
        let slot = key_slot(format!("{GROUP_PREFIX}{group}").as_bytes());
        let at = shards
            .iter()
            .position(|s| s.ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .expect("every slot is served");
        if groups[at].is_empty() {
            groups[at] = group;
        }
    }
    assert!(
        groups.iter().all(|g| !g.is_empty()),
        "a group set on every primary"
    );
    let publisher = Publisher::connect(&url).expect("publisher for the cluster");
    let write = |job: String, seq: u64, terminal: bool, group: String| {
        let publisher = publisher.clone();
        async move {
            let (id, set) = (
                JobId::parse(&job).expect("job id"),
                JobId::parse(&group).expect("group name"),
            );
            until_written(&format!("{job} seq {seq}"), || {
                let (publisher, id, set) = (publisher.clone(), id.clone(), set.clone());
                let body = doc_in(seq, terminal, &group);
                async move {
                    publisher
                        .write_in_group(&id, body.as_bytes(), Some(&set))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            })
            .await;
        }
    };
    for group in &groups {
        write(format!("{group}-a"), 1, false, group.clone()).await;
    }
    let mut viewer = claims("viewer");
    viewer.groups = groups.clone();
    let auth = format!("Bearer {}", sign(&viewer));
    let mut streams = Vec::new();
    for group in &groups {
        let mut sse = Sse::connect(
            &gateway.url(&format!("/groups/{group}/events")),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(sse.status, 200, "group stream of {group}");
        let connected = until_event(&mut sse, "connected", |ev| ev.event == "connected").await;
        assert_eq!(
            connected.json()["jobs"],
            serde_json::json!([format!("{group}-a")])
        );
        streams.push(sse);
    }

    // Act 1: a job joins each group through the publisher (state, then SADD
    // on the set's own primary).
    for (group, sse) in groups.iter().zip(&mut streams) {
        write(format!("{group}-b"), 1, false, group.clone()).await;
        until_joined(sse, group, &format!("{group}-b"), 1).await;
    }
    assert_one_subscription_per_group(&mut cluster, &groups).await;

    // Act 2: the primary holding the first group's set dies; jobs join
    // every group while, and after, its replica takes over.
    let victim = cluster
        .primary_of_slot(key_slot(format!("{GROUP_PREFIX}{}", groups[0]).as_bytes()))
        .await;
    let successor = cluster.kill_primary_and_wait_failover(victim).await;
    for group in &groups {
        write(format!("{group}-c"), 1, false, group.clone()).await;
    }
    for (group, sse) in groups.iter().zip(&mut streams) {
        until_joined(sse, group, &format!("{group}-c"), 1).await;
    }
    // One more joins the first group through the gateway's own POST, which
    // adds the job to the set named by the document's `group_id`.
    let joiner = format!("{}-d", groups[0]);
    let mut publisher_claims = claims("service");
    publisher_claims.roles = vec!["publisher".into()];
    publisher_claims.jobs = vec![joiner.clone()];
    let posted = reqwest::Client::new()
        .post(gateway.url(&format!("/jobs/{joiner}")))
        .bearer_auth(sign(&publisher_claims))
        .body(doc_in(1, false, &groups[0]))
        .send()
        .await
        .expect("POST /jobs/{id}");
    assert_eq!(posted.status(), 201, "POST with a group_id in a cluster");
    until_joined(&mut streams[0], &groups[0], &joiner, 1).await;

    // Assert: the first group's set events are now heard on the promoted
    // replica, once; and every member's terminal state reaches its group's
    // stream.
    assert_eq!(
        cluster
            .primary_of_slot(key_slot(format!("{GROUP_PREFIX}{}", groups[0]).as_bytes()))
            .await,
        successor
    );
    assert_one_subscription_per_group(&mut cluster, &groups).await;
    for (group, sse) in groups.iter().zip(&mut streams) {
        let mut members: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|m| format!("{group}-{m}"))
            .collect();
        if group == &groups[0] {
            members.push(joiner.clone());
        }
        for job in &members {
            write(job.clone(), 2, true, group.clone()).await;
        }
        let mut done = std::collections::BTreeSet::new();
        while done.len() < members.len() {
            let ev = until_event(
                sse,
                &format!("every member's done on {group} (had {done:?})"),
                |ev| ev.event == "done",
            )
            .await;
            done.insert(ev.json()["job_id"].as_str().expect("job_id").to_owned());
        }
        assert_eq!(done, members.iter().cloned().collect(), "{group}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_python_tracker_spublishes_and_joins_its_group_on_another_slot() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use crate::python_client::{next_line, python, script};

    // Arrange: a group stream open before the job exists, and our own shard
    // subscription to the job's channel on the primary of its slot.
    let mut cluster = RedisCluster::start("").await;
    let url = cluster.url();
    let gateway = Gateway::start(|s| s.redis_url = url.clone()).await;
    let job = "py-cluster-1";
    let key = format!("{PREFIX}{job}");
    let owner = cluster.primary_of_slot(key_slot(key.as_bytes())).await;
    // A group whose set lives on another primary than the job's key.
    let shards = cluster.shards().await;
    let group = (0..1000)
        .map(|i| format!("py-batch-{i}"))
        .find(|g| {
            let slot = key_slot(format!("{GROUP_PREFIX}{g}").as_bytes());
            shards.iter().any(|s| {
                s.primary != owner && s.ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
        })
        .expect("a group name whose set is on another primary");
    let (group, set) = (group.as_str(), format!("{GROUP_PREFIX}{group}"));
    let mut viewer = claims("viewer");
    viewer.groups = vec![group.into()];
    let mut sse = Sse::connect(
        &gateway.url(&format!("/groups/{group}/events")),
        &[("authorization", &format!("Bearer {}", sign(&viewer)))],
    )
    .await;
    assert_eq!(sse.status, 200);
    until_event(&mut sse, "connected", |ev| ev.event == "connected").await;
    let (push_tx, mut pushes) = tokio::sync::mpsc::unbounded_channel();
    let mut shard_listener =
        redis::Client::open(format!("redis://127.0.0.1:{owner}/?protocol=resp3"))
            .expect("node URL")
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new().set_push_sender(push_tx),
            )
            .await
            .expect("RESP3 connection to the job's primary");
    redis::cmd("SSUBSCRIBE")
        .arg(&key)
        .exec_async(&mut shard_listener)
        .await
        .expect("SSUBSCRIBE");

    // Act: the Python tracker, given a cluster client, starts the job in
    // the group, then completes it.
    let mut child = tokio::process::Command::new(python())
        .args([
            &script("tracker_driver.py"),
            &url,
            job,
            "alice",
            r#"[["only", 100]]"#,
            group,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    for (at, op) in [
        (1_763_910_000_000_u64, "start_stage"),
        (1_763_910_001_000, "complete"),
    ] {
        let args = if op == "start_stage" {
            r#"["only"]"#
        } else {
            "[]"
        };
        let step = format!("{{\"at_ms\": {at}, \"op\": \"{op}\", \"args\": {args}}}\n");
        stdin
            .write_all(step.as_bytes())
            .await
            .expect("step to python");
        assert_eq!(
            next_line(&mut lines, op).await,
            "ok",
            "python {op} on a cluster"
        );
        if op == "start_stage" {
            until_event(&mut sse, "the python job joining", |ev| {
                ev.event == "joined" && ev.json()["job_id"] == job
            })
            .await;
        }
    }

    // Assert: both states went out on the shard channel, the set holds the
    // job with the key's TTL, and the group stream saw the job end.
    let mut published = Vec::new();
    while published.len() < 2 {
        let push = tokio::time::timeout(STATE_BOUND, pushes.recv())
            .await
            .expect("SPUBLISHed states within the bound")
            .expect("push channel open");
        if push.kind == redis::PushKind::SMessage
            && let Some(redis::Value::BulkString(body)) = push.data.get(1)
        {
            let doc: serde_json::Value = serde_json::from_slice(body).expect("JSON state");
            published.push(doc["status"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(published, ["running", "completed"]);
    let mut conn = cluster.connection().await;
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&set)
        .query_async(&mut conn)
        .await
        .expect("SMEMBERS");
    assert_eq!(members, [job]);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&set)
        .query_async(&mut conn)
        .await
        .expect("TTL");
    assert!(
        (7000..=7200).contains(&ttl),
        "the set's TTL is the key's: {ttl}"
    );
    until_event(&mut sse, "the python job's done", |ev| {
        ev.event == "done" && ev.json()["job_id"] == job
    })
    .await;
}
