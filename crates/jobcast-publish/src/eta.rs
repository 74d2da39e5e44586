//! [`EtaEstimator`]: seconds left from a moving average of (time, progress)
//! points. Pure: the caller passes the times, nothing here reads a clock.

use std::collections::VecDeque;

/// Points the ETA's moving average spans: enough to ride out one slow step,
/// few enough that a change of pace (a slower stage) shows within ten updates.
pub const ETA_WINDOW_POINTS: usize = 10;

/// ETA from the average rate over the last [`ETA_WINDOW_POINTS`] (time,
/// progress) points, time-weighted (the window's slope, so an uneven update
/// cadence does not skew it). Where the window says nothing (fewer than two
/// points, no time passed, or no progress across it, as in a long stall) it
/// falls back to `elapsed × remaining / done`.
#[derive(Debug, Clone, Default)]
pub struct EtaEstimator {
    /// (seconds since the job started, overall %), oldest first.
    window: VecDeque<(f64, f64)>,
}

impl EtaEstimator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the overall progress at `t` seconds since the start. A point
    /// older than the newest one (a clock step back) is ignored.
    pub fn observe(&mut self, t: f64, progress: f64) {
        if !t.is_finite() || !progress.is_finite() {
            return;
        }
        if self.window.back().is_some_and(|&(last_t, _)| t < last_t) {
            return;
        }
        if self.window.len() == ETA_WINDOW_POINTS {
            self.window.pop_front();
        }
        self.window.push_back((t, progress));
    }

    /// Seconds left at `elapsed` seconds with `progress` % done; `None` while
    /// nothing is known (no progress yet).
    pub fn estimate(&self, elapsed: f64, progress: f64) -> Option<f64> {
        if progress >= 100.0 {
            return Some(0.0);
        }
        let remaining = 100.0 - progress.max(0.0);
        if let (Some(&(t0, p0)), Some(&(t1, p1))) = (self.window.front(), self.window.back()) {
            let (dt, dp) = (t1 - t0, p1 - p0);
            if dt > 0.0 && dp > 0.0 {
                return Some(remaining * dt / dp);
            }
        }
        if progress > 0.0 && elapsed > 0.0 {
            return Some(elapsed * remaining / progress);
        }
        None
    }
}
