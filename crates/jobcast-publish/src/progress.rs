//! One job's progress as a document: weighted stages, the overall percentage,
//! `seq`, status and per-endpoint states ([`JobProgress`]), and the wire form
//! written to Redis. Pure: every change takes `now`, nothing here does I/O, so
//! the maths is unit-tested beside it.
//!
//! Invariant: `seq` strictly increases across every document a job writes, and
//! also across runs of the same job id one after another (it never falls below
//! the wall clock in milliseconds), so the gateway's seq gate never drops a
//! fresh update as stale.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::eta::EtaEstimator;
use crate::wire::MAX_SEQ;

/// How far the stage weights may be from 100 (float sums of 33.33 + ...).
pub const WEIGHT_SUM_TOLERANCE: f64 = 0.01;

/// Where the job is in its life. `Completed`, `Failed` and `Cancelled` are the
/// gateway's default terminal statuses: they end every stream of the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, no stage started yet.
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the per-endpoint map (as in a dossier job that calls several
/// services and shows each one's state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointStatus {
    Pending,
    Processing,
    Processed,
    Error,
}

/// A declared stage: its share of the whole job, in percent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    pub name: String,
    pub weight: f64,
}

/// A caller's mistake, found without any I/O.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProgressError {
    #[error("a job needs at least one stage")]
    NoStages,
    #[error("stage names must not be empty")]
    EmptyStageName,
    #[error("stage {0:?} is declared twice")]
    DuplicateStage(String),
    #[error("stage {0:?} has a weight that is negative or not a number")]
    BadWeight(String),
    #[error("stage weights must sum to 100, not {0}")]
    WeightSum(f64),
    #[error("no stage named {0:?} was declared")]
    UnknownStage(String),
    #[error(
        "stage {next:?} comes before the current stage {current:?}; progress only goes forward"
    )]
    StageOrder { current: String, next: String },
    #[error("no stage has been started")]
    NoCurrentStage,
    #[error("the job already ended ({0}); a new run needs a new tracker")]
    Finished(Status),
}

/// Checks and builds the stage list: names unique and non-empty, weights finite
/// and not negative, summing to 100 (± [`WEIGHT_SUM_TOLERANCE`]).
pub fn validate_stages(stages: &[(&str, f64)]) -> Result<Vec<Stage>, ProgressError> {
    if stages.is_empty() {
        return Err(ProgressError::NoStages);
    }
    let mut out: Vec<Stage> = Vec::with_capacity(stages.len());
    for (name, weight) in stages {
        if name.is_empty() {
            return Err(ProgressError::EmptyStageName);
        }
        if out.iter().any(|s| s.name == *name) {
            return Err(ProgressError::DuplicateStage((*name).to_owned()));
        }
        if !weight.is_finite() || *weight < 0.0 {
            return Err(ProgressError::BadWeight((*name).to_owned()));
        }
        out.push(Stage {
            name: (*name).to_owned(),
            weight: *weight,
        });
    }
    let sum: f64 = out.iter().map(|s| s.weight).sum();
    if (sum - 100.0).abs() > WEIGHT_SUM_TOLERANCE {
        return Err(ProgressError::WeightSum(round2(sum)));
    }
    Ok(out)
}

/// Clamps a percentage to 0–100 (NaN counts as 0) and rounds it to 2 places.
pub fn round2(pct: f64) -> f64 {
    let p = if pct.is_nan() {
        0.0
    } else {
        pct.clamp(0.0, 100.0)
    };
    (p * 100.0).round() / 100.0
}

/// `done` of `total` as a percentage; an empty stage (`total == 0`) is done.
pub fn fraction_pct(done: u64, total: u64) -> f64 {
    if total == 0 {
        100.0
    } else {
        100.0 * (done.min(total) as f64) / (total as f64)
    }
}

/// Overall percentage when stage `index` is `stage_pct` % done: the weights of
/// every earlier stage plus this stage's share.
pub fn overall_pct(stages: &[Stage], index: usize, stage_pct: f64) -> f64 {
    let before: f64 = stages[..index].iter().map(|s| s.weight).sum();
    let share = stages[index].weight * stage_pct.clamp(0.0, 100.0) / 100.0;
    before + share
}

/// The whole state of one job's progress, and the document it becomes. Pure:
/// every change takes `now` and nothing here does I/O.
#[derive(Debug, Clone)]
pub struct JobProgress {
    job_id: String,
    owner_id: String,
    /// The job's group, when it has one (`group_id` in the document).
    group_id: Option<String>,
    stages: Vec<Stage>,
    current: Option<usize>,
    stage_progress: f64,
    overall_progress: f64,
    status: Status,
    seq: i64,
    started_at: DateTime<Utc>,
    last_updated: DateTime<Utc>,
    message: Option<String>,
    error: Option<String>,
    endpoints: BTreeMap<String, EndpointStatus>,
    eta: EtaEstimator,
    eta_seconds: Option<f64>,
}

impl JobProgress {
    /// A job that has not started a stage yet (`status: pending`). Nothing is
    /// written until the first change.
    pub fn new(
        job_id: &str,
        owner_id: &str,
        stages: &[(&str, f64)],
        now: DateTime<Utc>,
    ) -> Result<Self, ProgressError> {
        Ok(JobProgress {
            job_id: job_id.to_owned(),
            owner_id: owner_id.to_owned(),
            group_id: None,
            stages: validate_stages(stages)?,
            current: None,
            stage_progress: 0.0,
            overall_progress: 0.0,
            status: Status::Pending,
            seq: 0,
            started_at: now,
            last_updated: now,
            message: None,
            error: None,
            endpoints: BTreeMap::new(),
            eta: EtaEstimator::new(),
            eta_seconds: None,
        })
    }

    pub fn seq(&self) -> i64 {
        self.seq
    }
    pub fn status(&self) -> Status {
        self.status
    }
    pub fn stage(&self) -> Option<&str> {
        self.current.map(|i| self.stages[i].name.as_str())
    }
    pub fn stage_progress(&self) -> f64 {
        round2(self.stage_progress)
    }
    pub fn overall_progress(&self) -> f64 {
        round2(self.overall_progress)
    }
    pub fn eta_seconds(&self) -> Option<f64> {
        self.eta_seconds
    }
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }
    pub fn endpoints(&self) -> &BTreeMap<String, EndpointStatus> {
        &self.endpoints
    }

    /// Makes the next `seq` at least `floor` (a job re-run under an id whose
    /// earlier seqs came from another clock).
    pub fn resume_after_seq(&mut self, floor: i64) {
        self.seq = self.seq.max(floor);
    }

    fn ensure_open(&self) -> Result<(), ProgressError> {
        if self.status.is_terminal() {
            Err(ProgressError::Finished(self.status))
        } else {
            Ok(())
        }
    }

    fn current_index(&self) -> Result<usize, ProgressError> {
        self.current.ok_or(ProgressError::NoCurrentStage)
    }

    /// Enters stage `name` at 0 %; every earlier stage counts as done.
    pub fn start_stage(&mut self, name: &str, now: DateTime<Utc>) -> Result<(), ProgressError> {
        self.ensure_open()?;
        let index = self
            .stages
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| ProgressError::UnknownStage(name.to_owned()))?;
        if let Some(current) = self.current.filter(|&c| index < c) {
            return Err(ProgressError::StageOrder {
                current: self.stages[current].name.clone(),
                next: name.to_owned(),
            });
        }
        self.current = Some(index);
        self.status = Status::Running;
        self.set_stage_pct(0.0);
        self.stamp(now);
        Ok(())
    }

    /// `done` of `total` items of the current stage are done.
    pub fn update_stage_progress(
        &mut self,
        done: u64,
        total: u64,
        now: DateTime<Utc>,
    ) -> Result<(), ProgressError> {
        self.set_stage_progress(fraction_pct(done, total), now)
    }

    /// The current stage is `pct` % done (clamped to 0–100).
    pub fn set_stage_progress(
        &mut self,
        pct: f64,
        now: DateTime<Utc>,
    ) -> Result<(), ProgressError> {
        self.ensure_open()?;
        self.current_index()?;
        self.set_stage_pct(pct);
        self.stamp(now);
        Ok(())
    }

    /// The current stage is done (100 %); the next `start_stage` moves on.
    pub fn complete_stage(&mut self, now: DateTime<Utc>) -> Result<(), ProgressError> {
        self.set_stage_progress(100.0, now)
    }

    /// Sets one endpoint's status in the per-endpoint map.
    pub fn set_endpoint(
        &mut self,
        name: &str,
        status: EndpointStatus,
        now: DateTime<Utc>,
    ) -> Result<(), ProgressError> {
        self.ensure_open()?;
        self.endpoints.insert(name.to_owned(), status);
        if self.status == Status::Pending {
            self.status = Status::Running;
        }
        self.stamp(now);
        Ok(())
    }

    /// A human-readable line shown with the progress (`message`); `None` clears it.
    pub fn set_message(
        &mut self,
        message: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(), ProgressError> {
        self.ensure_open()?;
        self.message = message;
        self.stamp(now);
        Ok(())
    }

    /// Rewrites the state unchanged but for `seq`/`last_updated` (a heartbeat
    /// that also renews the key's TTL during a long step).
    pub fn touch(&mut self, now: DateTime<Utc>) -> Result<(), ProgressError> {
        self.ensure_open()?;
        self.stamp(now);
        Ok(())
    }

    pub fn mark_completed(&mut self, now: DateTime<Utc>) -> Result<(), ProgressError> {
        self.ensure_open()?;
        self.status = Status::Completed;
        if self.current.is_some() {
            self.stage_progress = 100.0;
        }
        self.overall_progress = 100.0;
        self.stamp(now);
        Ok(())
    }

    /// Ends the job as failed; `message` says why (sent as `error` and `message`).
    pub fn mark_failed(&mut self, message: &str, now: DateTime<Utc>) -> Result<(), ProgressError> {
        self.ensure_open()?;
        self.status = Status::Failed;
        self.error = Some(message.to_owned());
        self.message = Some(message.to_owned());
        self.stamp(now);
        Ok(())
    }

    pub fn mark_cancelled(&mut self, now: DateTime<Utc>) -> Result<(), ProgressError> {
        self.ensure_open()?;
        self.status = Status::Cancelled;
        self.stamp(now);
        Ok(())
    }

    /// Sets the stage percentage and derives the overall one, which never goes
    /// back within a run (a progress bar that shrinks reads as a bug).
    fn set_stage_pct(&mut self, pct: f64) {
        let Some(index) = self.current else { return };
        self.stage_progress = round2(pct);
        let overall = overall_pct(&self.stages, index, self.stage_progress);
        self.overall_progress = self.overall_progress.max(round2(overall));
    }

    /// Every change ends here: next `seq`, `last_updated`, ETA point.
    fn stamp(&mut self, now: DateTime<Utc>) {
        // Saturating: a `floor` from outside (`resume_after_seq`) can be anything.
        self.seq = self
            .seq
            .saturating_add(1)
            .max(now.timestamp_millis())
            .min(MAX_SEQ);
        self.last_updated = now;
        let elapsed = secs_between(self.started_at, now);
        self.eta_seconds = match self.status {
            Status::Completed => Some(0.0),
            Status::Failed | Status::Cancelled | Status::Pending => None,
            Status::Running => {
                self.eta.observe(elapsed, self.overall_progress);
                self.eta.estimate(elapsed, self.overall_progress)
            }
        };
    }

    /// The progress document as a JSON value.
    /// Puts the job in `group`: every document names it from now on.
    pub fn set_group(&mut self, group: &str) {
        self.group_id = Some(group.to_owned());
    }

    pub fn group(&self) -> Option<&str> {
        self.group_id.as_deref()
    }

    pub fn document(&self) -> Value {
        serde_json::to_value(self.wire()).expect("the document always serialises")
    }

    /// The progress document as the bytes written to Redis, fields in the
    /// order a person reading `GET` output expects.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.wire()).expect("the document always serialises")
    }

    fn wire(&self) -> Document<'_> {
        Document {
            job_id: &self.job_id,
            seq: self.seq,
            status: self.status,
            owner_id: &self.owner_id,
            group_id: self.group_id.as_deref(),
            stage: self.stage(),
            stage_index: self.current,
            stage_progress: self.stage_progress(),
            overall_progress: self.overall_progress(),
            eta_seconds: self.eta_seconds.map(|s| s.round() as u64),
            stages: &self.stages,
            started_at: rfc3339(self.started_at),
            last_updated: rfc3339(self.last_updated),
            endpoints: (!self.endpoints.is_empty()).then_some(&self.endpoints),
            message: self.message.as_deref(),
            error: self.error.as_deref(),
        }
    }
}

/// The wire form of [`JobProgress`]; see docs/protocol.md for each field.
#[derive(Serialize)]
struct Document<'a> {
    job_id: &'a str,
    seq: i64,
    status: Status,
    owner_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<&'a str>,
    stage: Option<&'a str>,
    stage_index: Option<usize>,
    stage_progress: f64,
    overall_progress: f64,
    eta_seconds: Option<u64>,
    stages: &'a [Stage],
    started_at: String,
    last_updated: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoints: Option<&'a BTreeMap<String, EndpointStatus>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

fn secs_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds().max(0) as f64 / 1000.0
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    const STAGES: &[(&str, f64)] = &[
        ("loading", 5.0),
        ("clustering", 10.0),
        ("solving", 60.0),
        ("validating", 15.0),
        ("exporting", 10.0),
    ];

    fn t(secs: f64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_700_000_000_000 + (secs * 1000.0) as i64)
            .unwrap()
    }

    fn job() -> JobProgress {
        JobProgress::new("j1", "u1", STAGES, t(0.0)).unwrap()
    }

    #[test]
    fn weights_must_sum_to_100() {
        assert!(validate_stages(STAGES).is_ok());
        assert!(validate_stages(&[("a", 33.33), ("b", 33.33), ("c", 33.34)]).is_ok());
        assert_eq!(
            validate_stages(&[("a", 50.0), ("b", 40.0)]),
            Err(ProgressError::WeightSum(90.0))
        );
        assert_eq!(validate_stages(&[]), Err(ProgressError::NoStages));
        assert_eq!(
            validate_stages(&[("a", 150.0), ("b", -50.0)]),
            Err(ProgressError::BadWeight("b".into()))
        );
        assert_eq!(
            validate_stages(&[("a", f64::NAN), ("b", 100.0)]),
            Err(ProgressError::BadWeight("a".into()))
        );
        assert_eq!(
            validate_stages(&[("a", 50.0), ("a", 50.0)]),
            Err(ProgressError::DuplicateStage("a".into()))
        );
        assert_eq!(
            validate_stages(&[("", 100.0)]),
            Err(ProgressError::EmptyStageName)
        );
    }

    #[test]
    fn n_of_n_in_a_stage_maps_to_overall_percent() {
        let mut j = job();
        j.start_stage("solving", t(1.0)).unwrap();
        assert_eq!(j.overall_progress(), 15.0, "earlier stages count as done");
        j.update_stage_progress(15, 30, t(2.0)).unwrap();
        assert_eq!(j.stage_progress(), 50.0);
        assert_eq!(j.overall_progress(), 45.0, "5 + 10 + 60 × 50 %");
        j.complete_stage(t(3.0)).unwrap();
        assert_eq!(j.overall_progress(), 75.0);
        j.start_stage("exporting", t(4.0)).unwrap();
        j.update_stage_progress(1, 3, t(5.0)).unwrap();
        assert_eq!(
            j.overall_progress(),
            93.33,
            "90 + 10/3, rounded to 2 places"
        );
    }

    #[test]
    fn floats_are_clamped_and_rounded() {
        assert_eq!(round2(12.3456), 12.35);
        assert_eq!(round2(-3.0), 0.0);
        assert_eq!(round2(100.0001), 100.0);
        assert_eq!(round2(f64::NAN), 0.0);
        assert_eq!(fraction_pct(12, 10), 100.0, "done beyond total is clamped");
        assert_eq!(fraction_pct(0, 0), 100.0, "an empty stage is done");
        let mut j = job();
        j.start_stage("loading", t(1.0)).unwrap();
        j.set_stage_progress(250.0, t(2.0)).unwrap();
        assert_eq!(j.stage_progress(), 100.0);
        assert_eq!(j.overall_progress(), 5.0);
        j.set_stage_progress(-1.0, t(3.0)).unwrap();
        assert_eq!(j.stage_progress(), 0.0);
        assert_eq!(j.overall_progress(), 5.0, "overall never goes back");
    }

    #[test]
    fn stages_only_go_forward_and_must_exist() {
        let mut j = job();
        assert_eq!(
            j.update_stage_progress(1, 2, t(1.0)),
            Err(ProgressError::NoCurrentStage)
        );
        assert_eq!(
            j.start_stage("nope", t(1.0)),
            Err(ProgressError::UnknownStage("nope".into()))
        );
        j.start_stage("solving", t(1.0)).unwrap();
        assert!(matches!(
            j.start_stage("loading", t(2.0)),
            Err(ProgressError::StageOrder { .. })
        ));
    }

    #[test]
    fn terminal_states_end_the_job() {
        let mut j = job();
        j.start_stage("loading", t(1.0)).unwrap();
        j.mark_failed("solver crashed", t(2.0)).unwrap();
        let doc = j.document();
        assert_eq!(doc["status"], "failed");
        assert_eq!(doc["error"], "solver crashed");
        assert_eq!(doc["message"], "solver crashed");
        assert_eq!(doc["eta_seconds"], Value::Null);
        assert_eq!(
            j.mark_completed(t(3.0)),
            Err(ProgressError::Finished(Status::Failed))
        );

        let mut j = job();
        j.start_stage("solving", t(1.0)).unwrap();
        j.mark_completed(t(2.0)).unwrap();
        let doc = j.document();
        assert_eq!(doc["status"], "completed");
        assert_eq!(doc["overall_progress"], 100.0);
        assert_eq!(doc["eta_seconds"], 0);

        let mut j = job();
        j.mark_cancelled(t(1.0)).unwrap();
        assert_eq!(j.document()["status"], "cancelled");
    }

    #[test]
    fn document_has_the_protocol_fields() {
        let mut j = job();
        j.start_stage("clustering", t(2.0)).unwrap();
        j.set_endpoint("geo", EndpointStatus::Processed, t(3.0))
            .unwrap();
        let doc = j.document();
        assert_eq!(doc["job_id"], "j1");
        assert_eq!(doc["owner_id"], "u1");
        assert_eq!(doc["status"], "running");
        assert_eq!(doc["stage"], "clustering");
        assert_eq!(doc["stage_progress"], 0.0);
        assert_eq!(doc["overall_progress"], 5.0);
        assert_eq!(doc["stages"][2], json!({"name": "solving", "weight": 60.0}));
        assert_eq!(doc["endpoints"], json!({"geo": "processed"}));
        assert_eq!(doc["started_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(doc["last_updated"], "2023-11-14T22:13:23.000Z");
        assert!(doc["eta_seconds"].is_u64());
        let text = String::from_utf8(j.to_json()).unwrap();
        assert!(
            text.starts_with(r#"{"job_id":"j1","seq":"#),
            "fields in reading order: {text}"
        );
    }

    #[test]
    fn seq_never_overflows_and_stays_within_what_the_gateway_accepts() {
        let mut j = job();
        j.resume_after_seq(i64::MAX);
        j.start_stage("loading", t(1.0)).unwrap();
        assert_eq!(j.seq(), MAX_SEQ);
    }

    #[test]
    fn seq_increases_and_never_falls_below_the_clock() {
        let mut j = job();
        j.start_stage("loading", t(1.0)).unwrap();
        let first = j.seq();
        assert_eq!(first, t(1.0).timestamp_millis());
        // Two updates in the same millisecond still get distinct seqs.
        j.update_stage_progress(1, 5, t(1.0)).unwrap();
        assert_eq!(j.seq(), first + 1);
        // A later tracker of the same job starts above this one.
        let mut again = JobProgress::new("j1", "u1", STAGES, t(10.0)).unwrap();
        again.start_stage("loading", t(10.0)).unwrap();
        assert!(again.seq() > j.seq());
    }

    #[test]
    fn eta_uses_the_moving_average_of_the_last_points() {
        let mut e = EtaEstimator::new();
        // 1 %/s for 20 s, then 0.5 %/s for 10 s: the window only sees the slow pace.
        for s in 0..=20 {
            e.observe(f64::from(s), f64::from(s));
        }
        assert_eq!(e.estimate(20.0, 20.0), Some(80.0));
        for s in 1..=10 {
            e.observe(20.0 + f64::from(s), 20.0 + 0.5 * f64::from(s));
        }
        // Window: t = 21..30, p = 20.5..25 → 4.5 % in 9 s = 0.5 %/s; 75 % left.
        let eta = e.estimate(30.0, 25.0).unwrap();
        assert!((eta - 150.0).abs() < 1e-9, "{eta}");
        // The elapsed/progress formula would have said 30 × 75 / 25 = 90.
    }

    #[test]
    fn eta_falls_back_to_elapsed_over_progress() {
        let mut e = EtaEstimator::new();
        assert_eq!(e.estimate(0.0, 0.0), None, "nothing known yet");
        e.observe(10.0, 20.0);
        // One point: no rate yet; 10 s for 20 % → 40 s for the other 80 %.
        assert_eq!(e.estimate(10.0, 20.0), Some(40.0));
        assert_eq!(e.estimate(10.0, 100.0), Some(0.0));
    }

    #[test]
    fn a_stall_raises_the_eta_gradually_and_keeps_it_finite() {
        let mut e = EtaEstimator::new();
        for s in 0..=20 {
            e.observe(f64::from(s), f64::from(s));
        }
        let before = e.estimate(20.0, 20.0).unwrap();
        let mut last = before;
        // Progress stops at 20 %, one update a second.
        for s in 21..=28 {
            e.observe(f64::from(s), 20.0);
            let eta = e.estimate(f64::from(s), 20.0).expect("always an estimate");
            assert!(eta.is_finite());
            assert!(eta >= last, "a stall never makes the job look closer");
            if s == 21 {
                assert!(eta < before * 1.25, "one slow update is not a jump: {eta}");
            }
            last = eta;
        }
        // Ten flat points: the window has no rate; the fallback (the job's
        // average pace) answers instead of "never".
        e.observe(29.0, 20.0);
        assert_eq!(e.estimate(29.0, 20.0), Some(29.0 * 80.0 / 20.0));
        // Progress resumes: the window's rate comes back (5 % over 9 s).
        e.observe(30.0, 25.0);
        let eta = e.estimate(30.0, 25.0).unwrap();
        assert!((eta - 75.0 * 9.0 / 5.0).abs() < 1e-9, "{eta}");
    }

    #[test]
    fn eta_ignores_a_clock_stepping_back() {
        let mut e = EtaEstimator::new();
        e.observe(10.0, 10.0);
        e.observe(5.0, 50.0);
        e.observe(20.0, 20.0);
        assert_eq!(e.estimate(20.0, 20.0), Some(80.0));
    }

    #[test]
    fn tracker_document_carries_eta_from_its_timestamps() {
        let mut j = job();
        j.start_stage("loading", t(0.0)).unwrap();
        for i in 1..=5 {
            j.update_stage_progress(i, 5, t(f64::from(i as u32)))
                .unwrap();
        }
        // 5 % in 5 s at a steady pace: 95 s left.
        assert_eq!(j.document()["eta_seconds"], 95);
    }
}
