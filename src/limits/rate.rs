//! `JOBCAST_MAX_CONNECT_RATE`: new streams per second for the whole gateway
//! (0 = off), a GCRA bucket from `governor` that allows a burst of one
//! second's worth. It exists for the moment another instance drains and its
//! clients come back at once: beyond the rate they get `429` with a
//! `Retry-After` spread over a few seconds, so they return in a trickle
//! instead of the next wave.

use std::num::NonZeroU32;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::limits::LimitError;

pub struct ConnectRate {
    limiter: Option<DefaultDirectRateLimiter>,
}

impl ConnectRate {
    pub fn new(per_second: u32) -> Self {
        ConnectRate {
            limiter: NonZeroU32::new(per_second).map(|n| RateLimiter::direct(Quota::per_second(n))),
        }
    }

    /// Takes one slot, or says when to come back.
    pub fn admit(&self) -> Result<(), LimitError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            let retry_after_secs = retry_after(wait.as_secs_f64());
            metrics::counter!("jobcast_connections_refused_total", "reason" => "connect_rate")
                .increment(1);
            LimitError::ConnectRate { retry_after_secs }
        })
    }
}

/// Whole seconds for `Retry-After`: at least the bucket's own wait, drawn
/// from up to twice that, so the refused do not all come back in the same
/// second.
fn retry_after(wait_secs: f64) -> u64 {
    let base = wait_secs.ceil().max(1.0) as u64;
    rand::random_range(base..=2 * base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_off() {
        let r = ConnectRate::new(0);
        assert!((0..1000).all(|_| r.admit().is_ok()));
    }

    #[test]
    fn beyond_the_burst_is_429_with_a_retry_after() {
        let r = ConnectRate::new(5);
        assert!((0..5).all(|_| r.admit().is_ok()));
        match r.admit() {
            Err(LimitError::ConnectRate { retry_after_secs }) => {
                assert!((1..=2).contains(&retry_after_secs), "{retry_after_secs}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn retry_after_is_spread_between_the_wait_and_twice_it() {
        let drawn: std::collections::HashSet<u64> = (0..200).map(|_| retry_after(2.5)).collect();
        assert!(drawn.iter().all(|s| (3..=6).contains(s)), "{drawn:?}");
        assert!(drawn.len() > 1, "spread, not one value: {drawn:?}");
    }
}
