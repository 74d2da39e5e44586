//! Write-behind of the states jobcast sees in Redis into `jobs`,
//! so the last state of a job survives a Redis crash, eviction or expiry.
//!
//! The recorder ([`super::recorder`]) calls [`WriteBehind::push`] for every
//! state it reads from Redis; it never blocks. A flusher task
//! ([`WriteBehind::run`]) writes:
//!
//! - the NEWEST state per job only: pending states replace each other (a lower
//!   `seq` never replaces a higher one), so memory is one state per job with
//!   unwritten news, whatever the update rate; the state just written, heard
//!   again (SET and PUBLISH of one document), is not written again;
//! - each job at most once per [`MIN_WRITE_INTERVAL`], a terminal state at once;
//! - many jobs per statement (one multi-row upsert of up to [`MAX_BATCH_ROWS`]);
//! - never over a newer `seq`: the guard is in SQL, so it holds against other
//!   gateways and workers writing the same row too;
//! - a failed batch goes back to pending (unless newer states came meanwhile) and
//!   is retried with backoff; nothing newest is lost while Postgres is down.
//!
//! Each written state's [`Durable`](crate::event::Durable) flag is settled after
//! the commit, so a stream holds `done` until the terminal state is in the row;
//! a failed write settles it too (Postgres down must not hold `done` back).
//!
//! Rows: a job jobcast has never seen in Postgres gets its row, owned by the
//! document's owner field. A document without an owner cannot make a row
//! (`owner_id` is NOT NULL and jobcast will not invent an owner); it still
//! updates a row that exists, e.g. one the application inserted itself.
//! The document's group field (`JOBCAST_GROUP_FIELD`) fills `group_id`; a
//! document without one leaves the row's group as it is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::event::Update;
use crate::job::JobId;
use crate::store::Store;
use crate::upstream::backoff::Backoff;

/// At most one write per job per this interval (a terminal state goes at once).
pub const MIN_WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// Rows per upsert statement: large enough to absorb a burst of many jobs in a
/// few round trips, small enough to keep one statement's bind arrays modest.
pub const MAX_BATCH_ROWS: usize = 500;
/// Pause between retries while [`WriteBehind::flush`] drains at shutdown.
const FLUSH_RETRY: Duration = Duration::from_millis(200);

/// The newest unwritten state of one job.
struct Slot {
    update: Arc<Update>,
    /// Terminal states replaced before they were written: watchers may be
    /// holding `done` on them, so they settle with the write of their successor.
    /// Rarely more than zero (a job ends once).
    superseded: Vec<Arc<Update>>,
}

#[derive(Default)]
struct Pending {
    jobs: HashMap<JobId, Slot>,
    /// When each recently written job was last written, and the id of the
    /// state written; entries older than [`MIN_WRITE_INTERVAL`] are pruned, so
    /// this is bounded by the write rate.
    written_at: HashMap<JobId, (Instant, Box<str>)>,
}

struct Inner {
    store: Store,
    /// [`upsert_sql`] and [`update_existing_sql`] for the store's schema.
    upsert: String,
    update_existing: String,
    pending: Mutex<Pending>,
    /// Wakes the flusher when a state is pushed (a stored permit if it is busy).
    wake: Notify,
    /// Serialises batch writes, so that the shutdown flush and the flusher never
    /// write two states of one job concurrently (which could reorder seq-less ones).
    writing: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
pub struct WriteBehind {
    inner: Arc<Inner>,
}

/// One row of a batch, taken out of pending.
struct Row {
    job: JobId,
    slot: Slot,
}

impl WriteBehind {
    pub fn new(store: Store) -> Self {
        WriteBehind {
            inner: Arc::new(Inner {
                upsert: upsert_sql(&store.jobs_table()),
                update_existing: update_existing_sql(&store.jobs_table()),
                store,
                pending: Mutex::new(Pending::default()),
                wake: Notify::new(),
                writing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        crate::sync::lock(&self.inner.pending)
    }

    /// Records `update` as the job's newest state to persist. Never blocks.
    pub fn push(&self, job: &JobId, update: Arc<Update>) {
        let terminal = update.is_done();
        // The flusher is woken only when its schedule changes: a job new to the
        // queue, or a terminal state (due at once). A job already queued is on
        // its timer; waking it for every update of a hot job would make it scan
        // the queue once per update.
        let wake = {
            let mut pending = self.lock();
            let just_written = pending
                .written_at
                .get(job)
                .is_some_and(|(_, id)| *id == update.id);
            match pending.jobs.get_mut(job) {
                // Reads and channel messages of one job may arrive out of
                // order; an older state must not displace a newer pending one.
                Some(slot) if is_older(&update, &slot.update) => {
                    update.durable.settle();
                    false
                }
                Some(slot) => {
                    let old = std::mem::replace(&mut slot.update, update);
                    if old.is_done() {
                        slot.superseded.push(old);
                    } else {
                        old.durable.settle();
                    }
                    terminal
                }
                // The state just written, heard again (a worker's SET and
                // PUBLISH of one document): nothing new to write.
                None if just_written => {
                    update.durable.settle();
                    false
                }
                None => {
                    pending.jobs.insert(
                        job.clone(),
                        Slot {
                            update,
                            superseded: Vec::new(),
                        },
                    );
                    true
                }
            }
        };
        if wake {
            self.inner.wake.notify_one();
        }
    }

    /// Jobs with a state waiting to be written.
    pub fn pending_jobs(&self) -> usize {
        self.lock().jobs.len()
    }

    /// The flusher: runs until `shutdown`, writing due states in batches and
    /// retrying with backoff while Postgres fails. The final drain is
    /// [`flush`](Self::flush), called by `App::run` once the server stopped.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut failing = false;
        loop {
            let (batch, next_due) = self.take_due(Instant::now(), false);
            if batch.is_empty() {
                let sleep = async {
                    match next_due {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.inner.wake.notified() => {}
                    _ = sleep => {}
                }
                continue;
            }
            match self.write(batch).await {
                Ok(()) => {
                    if failing {
                        info!("postgres writes succeed again; write-behind caught up");
                    }
                    failing = false;
                    backoff.reset();
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    if !failing {
                        warn!(error = %e, ?delay, "write-behind to postgres failed; newest states kept, retrying with backoff");
                    } else {
                        debug!(error = %e, ?delay, "write-behind still failing");
                    }
                    failing = true;
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Writes every pending state now, ignoring the per-job interval, retrying
    /// failures until `deadline` has passed. Returns how many jobs were left
    /// unwritten (0 on a clean drain).
    pub async fn flush(&self, deadline: Duration) -> usize {
        let until = Instant::now() + deadline;
        loop {
            let (batch, _) = self.take_due(Instant::now(), true);
            if batch.is_empty() {
                return 0;
            }
            let result = tokio::time::timeout_at(until, self.write(batch)).await;
            match result {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => debug!(error = %e, "write-behind flush failed; retrying"),
                Err(_) => {}
            }
            if Instant::now() + FLUSH_RETRY >= until {
                let left = self.pending_jobs();
                warn!(
                    jobs = left,
                    "write-behind flush ran out of time; newest states of these jobs not written"
                );
                return left;
            }
            tokio::time::sleep(FLUSH_RETRY).await;
        }
    }

    /// Takes up to [`MAX_BATCH_ROWS`] states that are due (all of them with
    /// `all`), and says when the earliest one not yet due will be.
    fn take_due(&self, now: Instant, all: bool) -> (Vec<Row>, Option<Instant>) {
        let mut pending = self.lock();
        pending
            .written_at
            .retain(|_, (at, _)| now.duration_since(*at) < MIN_WRITE_INTERVAL);
        let mut due = Vec::new();
        let mut next_due: Option<Instant> = None;
        for (job, slot) in &pending.jobs {
            if due.len() == MAX_BATCH_ROWS {
                // More is due; ask to be called again at once.
                next_due = Some(now);
                break;
            }
            let ready_at = match pending.written_at.get(job) {
                Some((at, _)) if !all && !slot.update.is_done() => *at + MIN_WRITE_INTERVAL,
                _ => now,
            };
            if ready_at <= now {
                due.push(job.clone());
            } else {
                next_due = Some(next_due.map_or(ready_at, |n| n.min(ready_at)));
            }
        }
        let rows = due
            .into_iter()
            .filter_map(|job| pending.jobs.remove(&job).map(|slot| Row { job, slot }))
            .collect();
        (rows, next_due)
    }

    /// Writes one batch. Written states get their write time recorded; states
    /// that failed for want of Postgres go back to pending (newer pending ones
    /// win) for the next attempt; a state Postgres refuses as data (say, a
    /// `\u0000` that jsonb cannot hold) is dropped with a warning, so one bad
    /// document cannot wedge the queue. Every state is settled either way:
    /// `done` is not held for a Postgres that is down.
    async fn write(&self, batch: Vec<Row>) -> Result<(), sqlx::Error> {
        let _serial = self.inner.writing.lock().await;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut failure = None;
        match self.upsert(&batch).await {
            Ok(()) => outcomes.resize(batch.len(), Outcome::Written),
            Err(e) if is_data_error(&e) && batch.len() > 1 => {
                // Find the bad row(s) one by one; the rest are written.
                for row in &batch {
                    let outcome = if failure.is_some() {
                        Outcome::Retry
                    } else {
                        match self.upsert(std::slice::from_ref(row)).await {
                            Ok(()) => Outcome::Written,
                            Err(e) if is_data_error(&e) => Outcome::Rejected(e.to_string()),
                            Err(e) => {
                                failure = Some(e);
                                Outcome::Retry
                            }
                        }
                    };
                    outcomes.push(outcome);
                }
            }
            Err(e) if is_data_error(&e) => outcomes.push(Outcome::Rejected(e.to_string())),
            Err(e) => {
                outcomes.resize(batch.len(), Outcome::Retry);
                failure = Some(e);
            }
        }

        let now = Instant::now();
        let mut pending = self.lock();
        for (Row { job, slot }, outcome) in batch.into_iter().zip(outcomes) {
            slot.update.durable.settle();
            for old in &slot.superseded {
                old.durable.settle();
            }
            match outcome {
                Outcome::Written => {
                    metrics::counter!("jobcast_postgres_writes_total").increment(1);
                    pending
                        .written_at
                        .insert(job, (now, slot.update.id.clone()));
                }
                Outcome::Rejected(why) => {
                    metrics::counter!("jobcast_postgres_write_errors_total", "reason" => "rejected")
                        .increment(1);
                    warn!(job = %job, id = slot.update.id, error = %why, "postgres refused this state; not written behind");
                }
                Outcome::Retry => {
                    // Only if no newer state arrived while the batch was out.
                    pending.jobs.entry(job).or_insert(Slot {
                        update: slot.update,
                        superseded: Vec::new(),
                    });
                }
            }
        }
        drop(pending);
        match failure {
            None => Ok(()),
            Some(e) => {
                metrics::counter!("jobcast_postgres_write_errors_total", "reason" => "unavailable")
                    .increment(1);
                // The states put back are due again after the flusher's backoff.
                self.inner.wake.notify_one();
                Err(e)
            }
        }
    }

    async fn upsert(&self, batch: &[Row]) -> Result<(), sqlx::Error> {
        let mut owned = Columns::default();
        let mut ownerless = Columns::default();
        for Row { job, slot } in batch {
            let u = &slot.update;
            let cols = if u.doc.owner.is_some() {
                &mut owned
            } else {
                &mut ownerless
            };
            cols.push(job, u);
            debug!(job = %job, id = u.id, terminal = u.doc.terminal, "writing state behind");
        }
        let pool = self.inner.store.pool();
        if !owned.ids.is_empty() {
            sqlx::query(&self.inner.upsert)
                .bind(&owned.ids)
                .bind(&owned.owners)
                .bind(&owned.statuses)
                .bind(&owned.snapshots)
                .bind(&owned.seqs)
                .bind(&owned.terminals)
                .bind(&owned.groups)
                .execute(pool)
                .await?;
        }
        if !ownerless.ids.is_empty() {
            sqlx::query(&self.inner.update_existing)
                .bind(&ownerless.ids)
                .bind(&ownerless.statuses)
                .bind(&ownerless.snapshots)
                .bind(&ownerless.seqs)
                .bind(&ownerless.terminals)
                .bind(&ownerless.groups)
                .execute(pool)
                .await?;
        }
        Ok(())
    }
}

/// Is `new` ordered before `pending` by `seq` (both have one)?
fn is_older(new: &Update, pending: &Update) -> bool {
    matches!((new.doc.seq, pending.doc.seq), (Some(n), Some(p)) if n < p)
}

#[derive(Clone, Debug)]
enum Outcome {
    Written,
    /// Postgres refused the row's data; retrying cannot help.
    Rejected(String),
    /// Postgres was unreachable (or failed otherwise); try again later.
    Retry,
}

/// An error about the data of a statement (SQLSTATE class 22, "data exception",
/// e.g. invalid JSON text for jsonb), as opposed to Postgres being unreachable.
fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("22")),
        _ => false,
    }
}

/// A batch as parallel arrays, for `unnest`: one statement whatever its size.
#[derive(Default)]
struct Columns {
    ids: Vec<String>,
    owners: Vec<String>,
    statuses: Vec<Option<String>>,
    snapshots: Vec<String>,
    /// The document's own `seq`, never jobcast's event counter: the counter is
    /// per gateway and means nothing to another one reading the row.
    seqs: Vec<Option<i64>>,
    terminals: Vec<bool>,
    groups: Vec<Option<String>>,
}

impl Columns {
    fn push(&mut self, job: &JobId, u: &Update) {
        self.ids.push(job.as_str().to_owned());
        self.owners.push(u.doc.owner.clone().unwrap_or_default());
        self.statuses.push(u.doc.status.clone());
        // The document is valid UTF-8 JSON text (it was parsed as such).
        self.snapshots
            .push(String::from_utf8_lossy(&u.doc.json).into_owned());
        self.seqs.push(u.doc.seq);
        self.terminals.push(u.doc.terminal);
        self.groups.push(u.doc.group.clone());
    }
}

/// The seq guard: a row is replaced only by a higher `seq`, or where the row
/// has none. A document without `seq` therefore never replaces one with a `seq`
/// (it cannot be ordered against it), and replaces one without (newest arrival
/// wins, as on the stream). The owner of an existing row is never changed: the
/// row (possibly the application's own) is the authority on ownership, and a
/// document naming another owner never replaces its state.
/// `table` is `schema.jobs`.
fn upsert_sql(table: &str) -> String {
    format!(
        r#"
INSERT INTO {table} AS j (id, owner_id, status, snapshot, seq, completed_at, updated_at, group_id)
SELECT u.id, u.owner_id, u.status, u.snapshot::jsonb, u.seq,
       CASE WHEN u.terminal THEN now() END, now(), u.group_id
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bool[], $7::text[])
     AS u(id, owner_id, status, snapshot, seq, terminal, group_id)
ON CONFLICT (id) DO UPDATE SET
    status       = EXCLUDED.status,
    snapshot     = EXCLUDED.snapshot,
    seq          = EXCLUDED.seq,
    completed_at = CASE WHEN EXCLUDED.completed_at IS NULL THEN NULL
                        ELSE COALESCE(j.completed_at, EXCLUDED.completed_at) END,
    updated_at   = now(),
    group_id     = COALESCE(EXCLUDED.group_id, j.group_id)
WHERE j.owner_id = EXCLUDED.owner_id AND (j.seq IS NULL OR EXCLUDED.seq > j.seq)
"#
    )
}

/// Documents without an owner: the same guard, existing rows only.
fn update_existing_sql(table: &str) -> String {
    format!(
        r#"
UPDATE {table} AS j SET
    status       = u.status,
    snapshot     = u.snapshot::jsonb,
    seq          = u.seq,
    completed_at = CASE WHEN u.terminal THEN COALESCE(j.completed_at, now()) END,
    updated_at   = now(),
    group_id     = COALESCE(u.group_id, j.group_id)
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bool[], $6::text[])
     AS u(id, status, snapshot, seq, terminal, group_id)
WHERE j.id = u.id AND (j.seq IS NULL OR u.seq > j.seq)
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Source;
    use crate::job::{DocRules, ProgressDoc};

    fn rules() -> DocRules {
        DocRules::for_tests()
    }

    fn update(job: &JobId, raw: &str) -> Arc<Update> {
        let doc = ProgressDoc::parse(raw.as_bytes(), &rules()).unwrap();
        Arc::new(Update::encode(job, doc, Source::RedisKey))
    }

    /// A write-behind whose store never connects (these tests do not write).
    fn write_behind() -> WriteBehind {
        let store = Store::connect_lazy("postgres://nobody@127.0.0.1:1/none", rules()).unwrap();
        WriteBehind::new(store)
    }

    #[tokio::test]
    async fn only_the_newest_state_per_job_is_kept() {
        let wb = write_behind();
        let job = JobId::parse("j").unwrap();
        let first = update(&job, r#"{"seq":1}"#);
        wb.push(&job, first.clone());
        wb.push(&job, update(&job, r#"{"seq":2}"#));
        wb.push(&job, update(&job, r#"{"seq":3}"#));
        assert_eq!(wb.pending_jobs(), 1);
        assert!(
            first.durable.is_settled(),
            "a replaced state is not waited on"
        );
        let (rows, _) = wb.take_due(Instant::now(), false);
        assert_eq!(rows.len(), 1);
        assert_eq!(&*rows[0].slot.update.id, "3");
    }

    #[tokio::test]
    async fn an_older_state_does_not_replace_a_newer_pending_one() {
        let wb = write_behind();
        let job = JobId::parse("j").unwrap();
        wb.push(&job, update(&job, r#"{"seq":5,"status":"completed"}"#));
        let late = update(&job, r#"{"seq":4}"#);
        wb.push(&job, late.clone());
        assert!(late.durable.is_settled());
        let (rows, _) = wb.take_due(Instant::now(), false);
        assert_eq!(&*rows[0].slot.update.id, "5");
    }

    #[tokio::test]
    async fn the_state_just_written_heard_again_is_not_written_twice() {
        let wb = write_behind();
        let job = JobId::parse("j").unwrap();
        let now = Instant::now();
        wb.lock().written_at.insert(job.clone(), (now, "7".into()));
        wb.push(&job, update(&job, r#"{"seq":7}"#));
        assert_eq!(wb.pending_jobs(), 0);
        wb.push(&job, update(&job, r#"{"seq":8}"#));
        assert_eq!(wb.pending_jobs(), 1, "a new state is");
    }

    #[tokio::test]
    async fn a_recently_written_job_waits_its_interval_unless_terminal() {
        let wb = write_behind();
        let job = JobId::parse("j").unwrap();
        let now = Instant::now();
        wb.lock().written_at.insert(job.clone(), (now, "1".into()));
        wb.push(&job, update(&job, r#"{"seq":2}"#));

        let (rows, next) = wb.take_due(now, false);
        assert!(rows.is_empty());
        assert_eq!(next, Some(now + MIN_WRITE_INTERVAL));
        let (rows, _) = wb.take_due(now + MIN_WRITE_INTERVAL, false);
        assert_eq!(rows.len(), 1, "due once the interval has passed");

        wb.lock().written_at.insert(job.clone(), (now, "1".into()));
        wb.push(&job, update(&job, r#"{"seq":3,"status":"completed"}"#));
        let (rows, _) = wb.take_due(now, false);
        assert_eq!(rows.len(), 1, "a terminal state goes at once");
    }

    #[tokio::test]
    async fn a_superseded_terminal_state_settles_with_its_successor() {
        let wb = write_behind();
        let job = JobId::parse("j").unwrap();
        let ended = update(&job, r#"{"seq":1,"status":"completed"}"#);
        wb.push(&job, ended.clone());
        wb.push(&job, update(&job, r#"{"seq":2,"status":"completed"}"#));
        assert!(!ended.durable.is_settled(), "its watchers wait for the row");
        let (rows, _) = wb.take_due(Instant::now(), false);
        assert_eq!(rows[0].slot.superseded.len(), 1);
    }

    #[tokio::test]
    async fn batches_are_bounded() {
        let wb = write_behind();
        for i in 0..(MAX_BATCH_ROWS + 10) {
            let job = JobId::parse(&format!("j{i}")).unwrap();
            wb.push(&job, update(&job, r#"{"seq":1}"#));
        }
        let now = Instant::now();
        let (rows, next) = wb.take_due(now, false);
        assert_eq!(rows.len(), MAX_BATCH_ROWS);
        assert_eq!(next, Some(now), "the rest is due at once");
        assert_eq!(wb.take_due(now, false).0.len(), 10);
    }
}
