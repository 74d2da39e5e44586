//! The recorder: of all the instances sharing one Postgres, exactly one at a
//! time writes job states behind, for every job — watched or not — so a job
//! nobody watched still has its last state in `jobs` after a Redis crash, and
//! the writes do not multiply with the number of instances.
//!
//! Who records is decided by a session-level advisory lock
//! ([`RECORDER_LOCK_KEY`]) held on a connection of its own: every instance
//! with `JOBCAST_RECORDER=auto` tries to take it every [`LOCK_POLL`]; the one
//! that holds it records until its session ends (process killed, Postgres
//! lost), which releases the lock to the next one. Losing the session means
//! losing the lock, so recording stops at once and waits to win it again.
//!
//! While holding the lock the recorder has its own Redis pub/sub connection
//! to every primary (the one server; the primary the sentinels name; every
//! primary of a Redis Cluster, since keyspace events are node-local),
//! pattern-subscribed to the keyspace channels of every state key and, outside
//! a cluster, to every job channel. A keyspace event asks for a read of the
//! key (coalesced per job, [`READ_CONCURRENCY`] reads at a time, through the
//! command client, cluster-aware in a cluster); a channel message is the
//! document itself. Sharded pub/sub has no pattern form, so in a cluster the
//! recorder hears states through their keys only. Each state goes to the
//! [`WriteBehind`], whose rules (newest only, once a second per job, terminal
//! at once, batched, seq-guarded) are the same as ever. On taking the lock and
//! after every Redis reconnect it SCANs the live state keys on every primary
//! ([`SCAN_BATCH`] at a time) and reads them, so what was written while nobody
//! recorded is not missed. Losing any primary's connection, or a change of
//! the primaries (checked every [`PRIMARIES_CHECK`]: a failover, a resharding
//! that adds one), starts a new session on the primaries as they are then.
//!
//! On shutdown it keeps hearing its pub/sub stream until it has been quiet for
//! [`DRAIN_QUIET`] and lets the reads in flight finish, within [`DRAIN_BOUND`]
//! in all, before it returns: a state a watcher already saw may still be on
//! its way over the recorder's own connection, and `App::run` flushes the
//! write-behind only once the recorder has returned.
//!
//! The hub never writes: the instances that do not record only read Postgres.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use redis::ConnectionInfo;
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::event::{Source, Update};
use crate::job::{DocRules, JobId, ProgressDoc};
use crate::store::Store;
use crate::store::write_behind::WriteBehind;
use crate::upstream::backoff::Backoff;
use crate::upstream::redis_reader::{KeyState, RedisReader};

/// The advisory lock whose holder is the recorder (distinct from the
/// retention sweep's). Advisory locks are per database, so the key is this
/// seed hashed with the schema: deployments sharing a database under
/// different `JOBCAST_PG_SCHEMA`s have a recorder each.
pub const RECORDER_LOCK_KEY: i64 = 0x006a_6f62_7265_636f;
/// How often an instance that does not record tries to take the lock, and how
/// often the recorder checks that its lock session is alive. With the lock
/// released as its holder's session ends, a takeover happens within about this.
pub const LOCK_POLL: Duration = Duration::from_secs(1);
/// Bound on connecting the lock session and on each query on it.
const PG_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on connecting to Redis, one PSUBSCRIBE, one SCAN step, learning
/// the primaries.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a recording session asks whether the primaries are still the
/// ones it listens to (a cluster's or the sentinels'; one server's never change).
pub const PRIMARIES_CHECK: Duration = Duration::from_secs(5);
/// State reads in flight at once: below the pool size, so the hub's reads for
/// watchers still find connections while the recorder catches up on a SCAN.
pub const READ_CONCURRENCY: usize = 8;
/// Retries of a failed state read, with delays from [`READ_RETRY_START`]
/// doubling to [`READ_RETRY_MAX`] (about 3 s in all).
const READ_RETRIES: u32 = 5;
const READ_RETRY_START: Duration = Duration::from_millis(100);
const READ_RETRY_MAX: Duration = Duration::from_secs(2);
/// Keys asked for per SCAN step; each step's keys are read before the next.
pub const SCAN_BATCH: usize = 500;
/// On shutdown: the longest the recorder goes on hearing its stream and
/// finishing its reads before the write-behind's final flush.
pub const DRAIN_BOUND: Duration = Duration::from_millis(500);
/// On shutdown: the stream counts as drained once quiet this long.
pub const DRAIN_QUIET: Duration = Duration::from_millis(100);

pub struct Recorder {
    write_behind: WriteBehind,
    store: Store,
    reader: RedisReader,
    rules: DocRules,
    /// `PREFIX`: job channels are `PREFIX{job}`, like the state keys.
    prefix: String,
    /// `__keyspace@<db>__:PREFIX`.
    keyspace_prefix: String,
    reads: Reads,
}

/// Why a recording session ended.
enum Ended {
    Shutdown,
    LockLost(String),
}

impl Recorder {
    pub fn new(
        store: Store,
        write_behind: WriteBehind,
        reader: RedisReader,
        db: i64,
        prefix: &str,
        rules: DocRules,
    ) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Recorder {
            write_behind,
            store,
            reader,
            rules,
            prefix: prefix.to_owned(),
            keyspace_prefix: format!("__keyspace@{db}__:{prefix}"),
            reads: Reads::default(),
        }))
    }

    /// Runs until `shutdown`: wait for the lock, record while holding it.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        set_gauge(false);
        loop {
            let Some(lock) = self.acquire(&shutdown).await else {
                return;
            };
            set_gauge(true);
            info!("this instance holds the recorder lock; recording every job's states");
            let ended = self.record(lock, &shutdown).await;
            set_gauge(false);
            match ended {
                Ended::Shutdown => return,
                Ended::LockLost(why) => warn!(
                    error = %why,
                    "recorder lock session lost; not recording until the lock is won again"
                ),
            }
        }
    }

    /// Connects a session of its own (reconnecting with backoff while Postgres
    /// is down) and tries the lock every [`LOCK_POLL`] until it is won.
    async fn acquire(&self, shutdown: &CancellationToken) -> Option<PgConnection> {
        let mut backoff = Backoff::default();
        let options = self.store.pool().connect_options();
        loop {
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return None,
                c = tokio::time::timeout(PG_TIMEOUT, PgConnection::connect_with(&options)) => c,
            };
            let mut conn = match connected {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    debug!(error = %e, "recorder: cannot connect to postgres; retrying");
                    sleep_or_shutdown(backoff.next_delay(), shutdown).await?;
                    continue;
                }
                Err(_) => {
                    sleep_or_shutdown(backoff.next_delay(), shutdown).await?;
                    continue;
                }
            };
            backoff.reset();
            loop {
                let tried = tokio::time::timeout(
                    PG_TIMEOUT,
                    sqlx::query_scalar::<_, bool>(
                        "SELECT pg_try_advisory_lock(hashtextextended($1, $2))",
                    )
                    .bind(self.store.schema())
                    .bind(RECORDER_LOCK_KEY)
                    .fetch_one(&mut conn),
                )
                .await;
                match tried {
                    Ok(Ok(true)) => return Some(conn),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        debug!(error = %e, "recorder: lock query failed; reconnecting");
                        break;
                    }
                    Err(_) => break,
                }
                sleep_or_shutdown(LOCK_POLL, shutdown).await?;
            }
        }
    }

    /// Records while `lock`'s session lives: Redis sessions one after another
    /// (reconnecting with backoff), each starting with a SCAN of the live keys.
    async fn record(
        self: &Arc<Self>,
        mut lock: PgConnection,
        shutdown: &CancellationToken,
    ) -> Ended {
        let mut backoff = Backoff::default();
        let mut check = tokio::time::interval(LOCK_POLL);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let session = self
                .listen(&mut lock, &mut check, &mut backoff, shutdown)
                .await;
            let why = match session {
                Ok(why) => why,
                Err(ended) => {
                    let _ = tokio::time::timeout(PG_TIMEOUT, lock.close()).await;
                    return ended;
                }
            };
            warn!(error = %why, "recorder: redis pub/sub lost; reconnecting with backoff");
            let delay = tokio::time::sleep(backoff.next_delay());
            tokio::pin!(delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ended::Shutdown,
                    _ = &mut delay => break,
                    _ = check.tick() => {
                        if let Err(e) = alive(&mut lock).await {
                            return Ended::LockLost(e);
                        }
                    }
                }
            }
        }
    }

    /// One Redis pub/sub session: a pattern subscription on every primary.
    /// `Ok(why)` when Redis was lost or the primaries changed (reconnect),
    /// `Err` when the session must end (shutdown, lock lost). `backoff` is
    /// reset once every primary has answered its PSUBSCRIBE.
    async fn listen(
        self: &Arc<Self>,
        lock: &mut PgConnection,
        check: &mut tokio::time::Interval,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<String, Ended> {
        let primaries = match self.primaries().await {
            Ok(p) => p,
            Err(why) => return Ok(why),
        };
        let listening = addresses(&primaries);
        let patterns = self.patterns();
        let mut streams = Vec::with_capacity(primaries.len());
        for info in &primaries {
            match subscribe(info, &patterns).await {
                Ok(stream) => streams.push(stream),
                Err(e) => return Ok(format!("{}: {e}", info.addr)),
            }
        }
        backoff.reset();
        // Subscribed first, then the SCAN: a state written in between is seen
        // by one or the other, never by neither.
        let scan = {
            let me = self.clone();
            tokio::spawn(async move { me.scan(primaries).await })
        };
        let _abort_scan = AbortOnDrop(scan);
        let mut stream = futures::stream::select_all(streams);
        let mut primaries_check = tokio::time::interval(PRIMARIES_CHECK);
        primaries_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        primaries_check.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.drain(&mut stream).await;
                    return Err(Ended::Shutdown);
                }
                _ = check.tick() => {
                    if let Err(e) = alive(lock).await {
                        return Err(Ended::LockLost(e));
                    }
                }
                _ = primaries_check.tick() => {
                    // A primary that does not answer shows as its stream
                    // ending; an unanswered question changes nothing.
                    if let Ok(now) = self.primaries().await
                        && addresses(&now) != listening
                    {
                        return Ok(format!(
                            "the primaries changed from {listening:?} to {:?}",
                            addresses(&now)
                        ));
                    }
                }
                msg = stream.next() => match msg {
                    Some(Ok(msg)) => self.dispatch(&msg),
                    Some(Err(node)) => return Ok(format!("the connection to {node} closed")),
                    None => return Ok("no connection left".into()),
                },
            }
        }
    }

    /// Where the pattern subscriptions go: every primary, as Redis is now.
    async fn primaries(&self) -> Result<Vec<ConnectionInfo>, String> {
        match tokio::time::timeout(REDIS_TIMEOUT, self.reader.commands().primaries()).await {
            Ok(Ok(p)) if !p.is_empty() => Ok(p),
            Ok(Ok(_)) => Err("no primary serves any slot".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer naming the primaries".into()),
        }
    }

    /// The keyspace channels of every state key; outside a cluster, every job
    /// channel too (a cluster's job channels are shard channels, which no
    /// pattern matches).
    fn patterns(&self) -> Vec<String> {
        let mut patterns = vec![format!("{}*", glob_escape(&self.keyspace_prefix))];
        if !self.reader.commands().is_cluster() {
            patterns.push(format!("{}*", glob_escape(&self.prefix)));
        }
        patterns
    }

    /// At shutdown: hears what is still coming on `stream` until it has been
    /// quiet for [`DRAIN_QUIET`], then waits for the reads in flight, all
    /// within [`DRAIN_BOUND`], so the states announced before the drain began
    /// are queued for the final flush.
    async fn drain(self: &Arc<Self>, stream: &mut (impl futures::Stream<Item = Heard> + Unpin)) {
        let until = tokio::time::Instant::now() + DRAIN_BOUND;
        let mut heard = 0usize;
        loop {
            let quiet_at = (tokio::time::Instant::now() + DRAIN_QUIET).min(until);
            match tokio::time::timeout_at(quiet_at, stream.next()).await {
                Ok(Some(Ok(msg))) => {
                    heard += 1;
                    self.dispatch(&msg);
                }
                // One primary's connection ended; the others may still speak.
                Ok(Some(Err(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let settled = tokio::time::timeout_at(until, self.reads.idle())
            .await
            .is_ok();
        if settled {
            debug!(heard, "recorder drained");
        } else {
            warn!(
                heard,
                bound = ?DRAIN_BOUND,
                "recorder: state reads still in flight at the shutdown bound; their states may not be written"
            );
        }
    }

    fn dispatch(self: &Arc<Self>, msg: &redis::Msg) {
        let channel = msg.get_channel_name();
        if let Some(job) = channel.strip_prefix(&self.keyspace_prefix) {
            // Removal and TTL changes carry no new state.
            if matches!(
                msg.get_payload_bytes(),
                b"del" | b"expired" | b"evicted" | b"expire" | b"persist" | b"rename_from"
            ) {
                return;
            }
            if let Ok(job) = JobId::parse(job) {
                self.request_read(job);
            }
        } else if let Some(job) = channel.strip_prefix(&self.prefix) {
            let Ok(job) = JobId::parse(job) else {
                return;
            };
            match ProgressDoc::parse(msg.get_payload_bytes(), &self.rules) {
                Ok(doc) => self.record_doc(&job, doc, Source::RedisChannel),
                Err(e) => {
                    debug!(job = %job, error = %e, "recorder: channel message is no document")
                }
            }
        }
    }

    fn record_doc(&self, job: &JobId, doc: ProgressDoc, source: Source) {
        self.write_behind
            .push(job, Arc::new(Update::encode(job, doc, source)));
    }

    /// Reads `job`'s key, unless a read is in flight (then that one goes once
    /// more when done): one read per job at a time, so reads of one job are
    /// never reordered.
    fn request_read(self: &Arc<Self>, job: JobId) {
        if !self.reads.start(&job) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.read(&job).await;
                if !me.reads.finished(&job) {
                    break;
                }
            }
        });
    }

    /// Reads the job's key and records its state. A failed read (busy pool,
    /// slow Redis) is retried with backoff [`READ_RETRIES`] times: the event
    /// that asked for it may announce the job's last state. Past that, Redis is
    /// taken to be down, and the SCAN after the reconnect reads the key.
    async fn read(&self, job: &JobId) {
        let mut backoff = Backoff::new(READ_RETRY_START, READ_RETRY_MAX);
        for attempt in 0..=READ_RETRIES {
            let read = {
                let Ok(_permit) = self.reads.permits.acquire().await else {
                    return;
                };
                self.reader.read(job).await
            };
            match read {
                Ok(KeyState::Doc(doc)) => self.record_doc(job, doc, Source::RedisKey),
                Ok(KeyState::Missing) => {}
                Ok(KeyState::Invalid(e)) => {
                    debug!(job = %job, error = %e, "recorder: invalid state")
                }
                // Other keys under the prefix (say, group sets) are no states.
                Ok(KeyState::WrongType(_)) => {}
                Err(e) => {
                    debug!(job = %job, error = %e, attempt, "recorder: state read failed");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            }
            return;
        }
        warn!(job = %job, "recorder: state read kept failing; the next SCAN reads it");
    }

    /// Reads every live state key on every primary, [`SCAN_BATCH`] keys per
    /// step, each step's reads done ([`READ_CONCURRENCY`] at a time) before
    /// the next step. A primary whose SCAN fails is scanned again after the
    /// next reconnect; the others are still read.
    async fn scan(self: Arc<Self>, primaries: Vec<ConnectionInfo>) {
        for info in primaries {
            let node = info.addr.to_string();
            match self.scan_node(info).await {
                Ok(keys) => debug!(node, keys, "recorder: live state keys read"),
                Err(e) => warn!(
                    node,
                    error = %e,
                    "recorder: SCAN of the state keys failed; the next reconnect scans again"
                ),
            }
        }
    }

    /// [`scan`](Self::scan) on one primary; returns how many keys it listed.
    async fn scan_node(&self, info: ConnectionInfo) -> Result<usize, String> {
        let mut conn = tokio::time::timeout(REDIS_TIMEOUT, async {
            redis::Client::open(info)?
                .get_multiplexed_async_connection()
                .await
        })
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut cursor: u64 = 0;
        let mut keys_seen = 0usize;
        loop {
            let (next, keys) = tokio::time::timeout(
                REDIS_TIMEOUT,
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_BATCH)
                    .query_async::<(u64, Vec<String>)>(&mut conn),
            )
            .await
            .map_err(|_| "SCAN timed out".to_owned())?
            .map_err(|e| e.to_string())?;
            keys_seen += keys.len();
            let jobs: Vec<JobId> = keys
                .iter()
                .filter_map(|k| k.strip_prefix(&self.prefix))
                .filter_map(|j| JobId::parse(j).ok())
                .collect();
            futures::stream::iter(jobs)
                .for_each_concurrent(READ_CONCURRENCY, |job| async move { self.read(&job).await })
                .await;
            if next == 0 {
                return Ok(keys_seen);
            }
            cursor = next;
        }
    }
}

/// What a session hears: a message, or the address of a primary whose
/// connection has ended (which ends the session).
type Heard = Result<redis::Msg, String>;

/// A pub/sub connection to the primary `info`, pattern-subscribed to
/// `patterns`; its messages, then its address when it ends.
async fn subscribe(
    info: &ConnectionInfo,
    patterns: &[String],
) -> Result<BoxStream<'static, Heard>, String> {
    let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, async {
        redis::Client::open(info.clone())?.get_async_pubsub().await
    })
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    match tokio::time::timeout(REDIS_TIMEOUT, pubsub.psubscribe(patterns)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("PSUBSCRIBE refused: {e}")),
        Err(_) => return Err("no answer to PSUBSCRIBE".into()),
    }
    let node = info.addr.to_string();
    Ok(pubsub
        .into_on_message()
        .map(Ok)
        .chain(futures::stream::once(async move { Err(node) }))
        .boxed())
}

/// The primaries' addresses, to tell whether they changed.
fn addresses(primaries: &[ConnectionInfo]) -> BTreeSet<String> {
    primaries.iter().map(|i| i.addr.to_string()).collect()
}

/// Per-job read coalescing (`true`: read again when the current one ends) and
/// the bound on reads in flight.
struct Reads {
    in_flight: Mutex<HashMap<JobId, bool>>,
    permits: Semaphore,
    /// Told whenever the last read in flight ends.
    idle: Notify,
}

impl Default for Reads {
    fn default() -> Self {
        Reads {
            in_flight: Mutex::new(HashMap::new()),
            permits: Semaphore::new(READ_CONCURRENCY),
            idle: Notify::new(),
        }
    }
}

impl Reads {
    /// True when the caller should start a read; else the one in flight is
    /// told to read once more.
    fn start(&self, job: &JobId) -> bool {
        let mut in_flight = crate::sync::lock(&self.in_flight);
        match in_flight.get_mut(job) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                in_flight.insert(job.clone(), false);
                true
            }
        }
    }

    /// After a read: true when another was asked for meanwhile.
    fn finished(&self, job: &JobId) -> bool {
        let mut in_flight = crate::sync::lock(&self.in_flight);
        match in_flight.get_mut(job) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                in_flight.remove(job);
                if in_flight.is_empty() {
                    self.idle.notify_waiters();
                }
                false
            }
        }
    }

    /// Returns once no read is in flight.
    async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check: an end between the two still wakes it.
            notified.as_mut().enable();
            if crate::sync::lock(&self.in_flight).is_empty() {
                return;
            }
            notified.await;
        }
    }
}

/// Is the lock session alive? (The lock lives exactly as long as it.)
async fn alive(lock: &mut PgConnection) -> Result<(), String> {
    match tokio::time::timeout(PG_TIMEOUT, sqlx::query("SELECT 1").execute(&mut *lock)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PG_TIMEOUT:?}")),
    }
}

async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> Option<()> {
    tokio::select! {
        _ = shutdown.cancelled() => None,
        _ = tokio::time::sleep(delay) => Some(()),
    }
}

fn set_gauge(recording: bool) {
    metrics::gauge!("jobcast_recorder").set(if recording { 1.0 } else { 0.0 });
}

/// Escapes Redis glob characters, so a key prefix is matched literally.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_of_the_prefix_are_escaped() {
        assert_eq!(glob_escape("progress:"), "progress:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn reads_of_one_job_are_coalesced() {
        let reads = Reads::default();
        let job = JobId::parse("j").unwrap();
        assert!(reads.start(&job), "the first request reads");
        assert!(!reads.start(&job), "a second one waits for it");
        assert!(!reads.start(&job));
        assert!(reads.finished(&job), "and makes it read once more");
        assert!(!reads.finished(&job), "then it is done");
        assert!(reads.start(&job), "a later request reads again");
    }

    #[tokio::test]
    async fn idle_waits_for_the_last_read_in_flight() {
        let reads = Arc::new(Reads::default());
        tokio::time::timeout(Duration::from_secs(1), reads.idle())
            .await
            .expect("idle at once with no read in flight");
        let (a, b) = (JobId::parse("a").unwrap(), JobId::parse("b").unwrap());
        assert!(reads.start(&a));
        assert!(reads.start(&b));
        let waiter = tokio::spawn({
            let reads = reads.clone();
            async move { reads.idle().await }
        });
        assert!(!reads.finished(&a));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "b is still in flight");
        assert!(!reads.finished(&b));
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("idle once the last read ended")
            .expect("join");
    }
}
