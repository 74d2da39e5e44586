//! Write-behind of Redis states into `jobs` (PROTOCOL.md §5). Placeholder: the
//! queue exists so the hub's hot path has its hook; the flusher comes with the
//! durable-state work.

use std::sync::Arc;

use crate::event::Update;
use crate::job::JobId;

#[derive(Clone)]
pub struct WriteBehind {}

impl WriteBehind {
    /// Records `update` as the job's newest state to persist. Never blocks.
    pub fn push(&self, _job: &JobId, _update: Arc<Update>) {}
}
