//! Reconnect delays: exponential from 1 s doubling to 30 s, with jitter, so a fleet
//! of gateways does not reconnect to a returning Redis or Postgres in lockstep.

use std::time::Duration;

pub const BACKOFF_START: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Backoff {
    start: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(BACKOFF_START, BACKOFF_MAX)
    }
}

impl Backoff {
    /// Delays from `start` doubling to `max` (both ± 20 % jitter).
    pub fn new(start: Duration, max: Duration) -> Self {
        Backoff {
            start,
            max,
            next: start,
        }
    }

    /// The delay before the next attempt: the current step ± 20 % jitter.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::random_range(0.8..1.2);
        base.mul_f64(jitter)
    }

    pub fn reset(&mut self) {
        self.next = self.start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert!(
            delays[0] >= Duration::from_millis(800) && delays[0] <= Duration::from_millis(1200)
        );
        assert!(
            delays[1] >= Duration::from_millis(1600) && delays[1] <= Duration::from_millis(2400)
        );
        assert!(delays[7] <= Duration::from_secs(36) && delays[7] >= Duration::from_secs(24));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1200));
    }
}
