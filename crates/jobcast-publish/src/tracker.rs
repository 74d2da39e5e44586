//! [`ProgressTracker`]: one job's progress as a Rust worker reports it. The
//! worker names weighted stages once, then says where it is (`start_stage`,
//! `update_stage_progress(done, total)`, `complete_stage`, `mark_*`); every call
//! changes the [`JobProgress`] and writes its whole document with ONE atomic
//! Redis round trip ([`Publisher::write`]). The maths lives in `progress` and
//! `eta`; this file only adds a clock and the write.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::job_id::{InvalidJobId, JobId};
use crate::progress::{EndpointStatus, JobProgress, ProgressError};
use crate::publisher::{PublishError, Publisher};

/// Where the tracker reads the time; tests inject their own.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Why a tracker call failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error(transparent)]
    Progress(#[from] ProgressError),
    #[error(transparent)]
    JobId(#[from] InvalidJobId),
    #[error("progress document is {size} bytes, over the {max}-byte limit the gateway accepts")]
    TooLarge { size: usize, max: usize },
    #[error("writing progress to Redis: {0}")]
    Redis(#[from] PublishError),
}

/// Reports one job's progress to Redis. Every method that changes the state
/// writes it at once (one atomic round trip) and returns only after Redis
/// answered; a write that fails leaves the state changed, so the next call (or
/// [`ProgressTracker::publish`]) sends it.
///
/// ```no_run
/// # async fn worker() -> Result<(), Box<dyn std::error::Error>> {
/// use jobcast_publish::{Publisher, ProgressTracker};
/// let redis = Publisher::connect("redis://127.0.0.1:6379")?;
/// let mut job = ProgressTracker::new(redis, "8ae7f267", "user-42", &[("loading", 10.0), ("solving", 90.0)])?;
/// job.start_stage("loading").await?;
/// job.update_stage_progress(3, 10).await?;
/// job.mark_completed().await?;
/// # Ok(()) }
/// ```
pub struct ProgressTracker {
    publisher: Publisher,
    job: JobId,
    group: Option<JobId>,
    progress: JobProgress,
    clock: Arc<dyn Clock>,
}

impl ProgressTracker {
    /// A tracker for `job` owned by `owner` (the `sub` of the users who may
    /// watch it). Checks the job id and the stages; writes nothing yet.
    pub fn new(
        publisher: Publisher,
        job: &str,
        owner: &str,
        stages: &[(&str, f64)],
    ) -> Result<Self, TrackerError> {
        Self::with_clock(publisher, job, owner, stages, Arc::new(SystemClock))
    }

    pub fn with_clock(
        publisher: Publisher,
        job: &str,
        owner: &str,
        stages: &[(&str, f64)],
        clock: Arc<dyn Clock>,
    ) -> Result<Self, TrackerError> {
        let job = JobId::parse(job)?;
        let progress = JobProgress::new(job.as_str(), owner, stages, clock.now())?;
        Ok(ProgressTracker {
            publisher,
            job,
            group: None,
            progress,
            clock,
        })
    }

    /// Puts the job in `group` (a project, a batch): every document carries
    /// `group_id`, and every write adds the job to the group's set (`SADD
    /// progress:group:{group}`, the state key's TTL). Group names follow the
    /// job id rules.
    pub fn in_group(mut self, group: &str) -> Result<Self, TrackerError> {
        let group = JobId::parse(group)?;
        self.progress.set_group(group.as_str());
        self.group = Some(group);
        Ok(self)
    }

    pub fn job(&self) -> &JobId {
        &self.job
    }

    /// The state as last changed (what the last write sent, or tried to).
    pub fn progress(&self) -> &JobProgress {
        &self.progress
    }

    pub fn resume_after_seq(&mut self, floor: i64) {
        self.progress.resume_after_seq(floor);
    }

    pub async fn start_stage(&mut self, name: &str) -> Result<(), TrackerError> {
        self.apply(|p, now| p.start_stage(name, now)).await
    }

    pub async fn update_stage_progress(
        &mut self,
        done: u64,
        total: u64,
    ) -> Result<(), TrackerError> {
        self.apply(|p, now| p.update_stage_progress(done, total, now))
            .await
    }

    pub async fn set_stage_progress(&mut self, pct: f64) -> Result<(), TrackerError> {
        self.apply(|p, now| p.set_stage_progress(pct, now)).await
    }

    pub async fn complete_stage(&mut self) -> Result<(), TrackerError> {
        self.apply(JobProgress::complete_stage).await
    }

    pub async fn set_endpoint(
        &mut self,
        name: &str,
        status: EndpointStatus,
    ) -> Result<(), TrackerError> {
        self.apply(|p, now| p.set_endpoint(name, status, now)).await
    }

    pub async fn set_message(&mut self, message: Option<String>) -> Result<(), TrackerError> {
        self.apply(|p, now| p.set_message(message, now)).await
    }

    /// Writes the current state again with a new `seq` (renews the TTL; use it
    /// as a heartbeat during a long step, or to retry after a failed write).
    pub async fn publish(&mut self) -> Result<(), TrackerError> {
        self.apply(JobProgress::touch).await
    }

    pub async fn mark_completed(&mut self) -> Result<(), TrackerError> {
        self.apply(JobProgress::mark_completed).await
    }

    pub async fn mark_failed(&mut self, message: &str) -> Result<(), TrackerError> {
        self.apply(|p, now| p.mark_failed(message, now)).await
    }

    pub async fn mark_cancelled(&mut self) -> Result<(), TrackerError> {
        self.apply(JobProgress::mark_cancelled).await
    }

    /// The one path of every change: apply it at the clock's `now`, then write
    /// the document ([`JobProgress::to_json`], byte for byte).
    async fn apply(
        &mut self,
        change: impl FnOnce(&mut JobProgress, DateTime<Utc>) -> Result<(), ProgressError>,
    ) -> Result<(), TrackerError> {
        change(&mut self.progress, self.clock.now())?;
        let bytes = self.progress.to_json();
        let max = self.publisher.max_document_bytes();
        if bytes.len() > max {
            return Err(TrackerError::TooLarge {
                size: bytes.len(),
                max,
            });
        }
        self.publisher
            .write_in_group(&self.job, &bytes, self.group.as_ref())
            .await?;
        Ok(())
    }
}
