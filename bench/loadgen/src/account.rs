//! Per-subscriber accounting of one phase: delivered, skipped by conflation, lost.
//!
//! A latest-value gateway may skip states a slow watcher has not read yet and send
//! the newest instead; that is its contract, not a failure. So a published state
//! the subscriber never saw counts as
//! - *skipped* when the subscriber saw a later state of the same job, and
//! - *lost* only when it saw neither that state nor any later one.
//!
//! The last state of a job in a phase is what the watcher must end on (the
//! terminal state in the last phase): missing it is counted on its own too.

use serde_json::{Value, json};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// States published to the subscriber's job while it was subscribed.
    pub expected: u64,
    /// Distinct published states it received.
    pub delivered: u64,
    /// Not received, but a later state of the job was.
    pub skipped: u64,
    /// Not received, and no later state was either.
    pub lost: u64,
    /// Subscribers that did not receive their job's last state of the phase.
    pub final_missed: u64,
    /// States received more than once, or after a later one.
    pub reordered_or_dup: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.skipped += o.skipped;
        self.lost += o.lost;
        self.final_missed += o.final_missed;
        self.reordered_or_dup += o.reordered_or_dup;
    }

    pub fn to_json(self) -> Value {
        json!({
            "expected": self.expected, "delivered": self.delivered, "skipped": self.skipped,
            "lost": self.lost, "final_missed": self.final_missed,
            "reordered_or_dup": self.reordered_or_dup,
        })
    }

    pub fn from_json(v: &Value) -> Self {
        let g = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        Self {
            expected: g("expected"),
            delivered: g("delivered"),
            skipped: g("skipped"),
            lost: g("lost"),
            final_missed: g("final_missed"),
            reordered_or_dup: g("reordered_or_dup"),
        }
    }
}

/// `published`: the seqs published to this subscriber's job in the phase, ascending.
/// `received`: the seqs it received in arrival order (anything, including seqs of
/// other phases, which are ignored).
pub fn account(published: &[u64], received: &[u64]) -> Counts {
    let mut c = Counts {
        expected: published.len() as u64,
        ..Counts::default()
    };
    let Some(&last) = published.last() else {
        return c;
    };
    let mut highest: Option<u64> = None;
    let mut seen: Vec<u64> = Vec::with_capacity(received.len());
    for &s in received {
        // Seqs of other phases (late, or replayed) and of other jobs say nothing
        // about this job's states in this phase.
        if published.binary_search(&s).is_err() {
            continue;
        }
        if highest.is_some_and(|h| s <= h) {
            c.reordered_or_dup += 1;
        }
        highest = Some(highest.map_or(s, |h| h.max(s)));
        seen.push(s);
    }
    seen.sort_unstable();
    seen.dedup();
    c.delivered = seen.len() as u64;
    c.lost = match highest {
        None => c.expected,
        Some(h) => published.iter().filter(|&&p| p > h).count() as u64,
    };
    c.skipped = c.expected - c.delivered - c.lost;
    c.final_missed = u64::from(seen.binary_search(&last).is_err());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_seen() {
        let c = account(&[1, 3, 5], &[1, 3, 5]);
        assert_eq!(
            (c.delivered, c.skipped, c.lost, c.final_missed),
            (3, 0, 0, 0)
        );
    }

    #[test]
    fn conflated_states_are_skipped_not_lost() {
        // Saw only the newest: the two before were skipped, nothing is lost.
        let c = account(&[1, 3, 5], &[5]);
        assert_eq!(
            (c.delivered, c.skipped, c.lost, c.final_missed),
            (1, 2, 0, 0)
        );
    }

    #[test]
    fn a_missing_tail_is_lost_and_the_final_state_missed() {
        let c = account(&[2, 4, 6, 8], &[2, 6]);
        assert_eq!(
            (c.delivered, c.skipped, c.lost, c.final_missed),
            (2, 1, 1, 1)
        );
        let none = account(&[2, 4], &[]);
        assert_eq!(
            (none.delivered, none.skipped, none.lost, none.final_missed),
            (0, 0, 2, 1)
        );
    }

    #[test]
    fn other_phases_and_other_jobs_do_not_count() {
        // 1 belongs to an earlier phase; 7 was never published to this job.
        let c = account(&[4, 8, 12], &[1, 7, 12]);
        assert_eq!((c.delivered, c.skipped, c.lost), (1, 2, 0));
        // A foreign seq does not raise the high-water mark: 8 and 12 are lost.
        let d = account(&[4, 8, 12], &[7, 4, 4]);
        assert_eq!(
            (d.delivered, d.skipped, d.lost, d.reordered_or_dup),
            (1, 0, 2, 1)
        );
    }

    #[test]
    fn json_round_trip() {
        let c = account(&[1, 2, 3], &[3, 3]);
        assert_eq!(Counts::from_json(&c.to_json()), c);
    }
}
