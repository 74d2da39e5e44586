//! When a client should come back, drawn per connection so that clients never
//! come back together. A fixed `retry:` makes every EventSource of a drained
//! or restarted instance return at the same instant and hit the remaining
//! instances as one wave; spreading it costs nothing.
//!
//! - A stream's opening `retry:` is uniform in [`JOBCAST_SSE_RETRY_MS`, 2 × that].
//! - On a drain, the final `retry:` (SSE) and the delay named in the 1012
//!   close reason (WebSocket) are uniform over `JOBCAST_SHUTDOWN_SECS`, the
//!   window the drain is given anyway.

use crate::config::Settings;

/// The opening `retry:` of one SSE stream, in milliseconds.
pub fn stream_retry_ms(s: &Settings) -> u64 {
    let base = s.sse_retry_ms;
    rand::random_range(base..=base.saturating_mul(2))
}

/// How long one drained client should wait before it reconnects, in
/// milliseconds: anywhere in the drain window (`JOBCAST_SHUTDOWN_SECS`),
/// which is never shorter than the opening `retry:`.
pub fn drain_retry_ms(s: &Settings) -> u64 {
    let window = s.shutdown_secs.saturating_mul(1000).max(s.sse_retry_ms);
    rand::random_range(0..=window)
}

/// The WebSocket close reason on a drain; clients read the delay from it
/// (`jobcast.js` does). Close reasons hold at most 123 bytes: this one ~45.
pub fn ws_drain_reason(delay_ms: u64) -> String {
    format!("gateway restarting; reconnect in {delay_ms} ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(retry_ms: u64, shutdown_secs: u64) -> Settings {
        let mut s = Settings::defaults();
        s.sse_retry_ms = retry_ms;
        s.shutdown_secs = shutdown_secs;
        s
    }

    #[test]
    fn stream_retry_is_between_the_setting_and_twice_it() {
        let s = settings(2000, 10);
        let drawn: std::collections::HashSet<u64> = (0..100).map(|_| stream_retry_ms(&s)).collect();
        assert!(drawn.iter().all(|r| (2000..=4000).contains(r)));
        assert!(drawn.len() > 50, "spread: {} distinct of 100", drawn.len());
    }

    #[test]
    fn drain_retry_covers_the_shutdown_window() {
        let s = settings(2000, 10);
        let drawn: Vec<u64> = (0..1000).map(|_| drain_retry_ms(&s)).collect();
        assert!(drawn.iter().all(|r| *r <= 10_000));
        assert!(drawn.iter().any(|r| *r < 2000) && drawn.iter().any(|r| *r > 8000));
        // A zero window still spreads over the opening retry.
        assert!(
            (0..100)
                .map(|_| drain_retry_ms(&settings(2000, 0)))
                .all(|r| r <= 2000)
        );
    }

    #[test]
    fn ws_reason_fits_a_close_frame() {
        assert!(ws_drain_reason(u64::MAX).len() <= 123);
    }
}
