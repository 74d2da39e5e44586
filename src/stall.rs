//! The stall timer of a job: one per feed (per job watched here), never per
//! watcher. It sleeps until the newest state's stall deadline — arrival (at
//! this feed, or at the job's earlier feed, see `Feed::silent_since`) plus
//! the document's `stall_after_s`, else `JOBCAST_STALL_SECS` — and then marks
//! the feed stalled, which every watcher of the job sees through the feed's
//! `watch` channel like any other change. Each new state moves the deadline;
//! a terminal state, or a stall period of 0, stops the timer.
//!
//! The task holds a receiver of the feed and a weak reference to it, so it
//! keeps nothing alive: when the last watcher leaves and the feed is dropped,
//! the channel closes and the task ends.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::fanout::Feed;
use crate::job::ProgressDoc;

/// How long `doc` (a running state) may stay the newest before its job is
/// stalled: its `stall_after_s` (`0`: never), else `default_after`.
pub fn period(doc: &ProgressDoc, default_after: Option<Duration>) -> Option<Duration> {
    match doc.stall_after_s {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
        None => default_after,
    }
}

/// Starts `feed`'s stall timer; `default_after` is `JOBCAST_STALL_SECS`
/// (`None`: off unless a document asks for it).
pub fn start(feed: &Arc<Feed>, default_after: Option<Duration>) {
    let mut rx = feed.subscribe();
    let weak: Weak<Feed> = Arc::downgrade(feed);
    tokio::spawn(async move {
        loop {
            let due = {
                let state = rx.borrow_and_update();
                match &state.latest {
                    Some(u) if !u.doc.terminal && state.stalled.is_none() => {
                        let after = period(&u.doc, default_after);
                        let since = match weak.upgrade() {
                            Some(feed) => feed.silent_since(u),
                            None => return,
                        };
                        after.map(|a| (Instant::from_std(since) + a, u.clone()))
                    }
                    _ => None,
                }
            };
            match due {
                Some((deadline, update)) => tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep_until(deadline) => match weak.upgrade() {
                        Some(feed) => feed.mark_stalled(&update),
                        None => return,
                    },
                },
                None => {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Source;
    use crate::job::{JobId, ProgressDoc};

    fn feed() -> Arc<Feed> {
        Feed::new(JobId::parse("j").unwrap())
    }

    async fn stalled_within(f: &Feed, bound: Duration) -> bool {
        let mut rx = f.subscribe();
        tokio::time::timeout(bound, rx.wait_for(|s| s.stalled.is_some()))
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_running_job_stalls_after_its_period_and_the_next_state_clears_it() {
        let f = feed();
        start(&f, Some(Duration::from_secs(60)));
        f.offer(ProgressDoc::for_tests(r#"{"seq":1}"#), Source::RedisKey);
        assert!(!stalled_within(&f, Duration::from_secs(59)).await);
        assert!(stalled_within(&f, Duration::from_secs(2)).await);
        assert!(f.snapshot().stalled.unwrap().seconds_since_update >= 60);
        f.offer(ProgressDoc::for_tests(r#"{"seq":2}"#), Source::RedisKey);
        assert!(f.snapshot().stalled.is_none());
        assert!(
            stalled_within(&f, Duration::from_secs(61)).await,
            "and re-arms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_document_overrides_the_period_and_ends_never_stall() {
        let f = feed();
        start(&f, Some(Duration::from_secs(60)));
        f.offer(
            ProgressDoc::for_tests(r#"{"seq":1,"stall_after_s":2}"#),
            Source::RedisKey,
        );
        assert!(stalled_within(&f, Duration::from_secs(3)).await);
        f.offer(
            ProgressDoc::for_tests(r#"{"seq":2,"status":"completed"}"#),
            Source::RedisKey,
        );
        assert!(!stalled_within(&f, Duration::from_secs(600)).await);
        let off = feed();
        start(&off, Some(Duration::from_secs(60)));
        off.offer(
            ProgressDoc::for_tests(r#"{"seq":1,"stall_after_s":0}"#),
            Source::RedisKey,
        );
        assert!(
            !stalled_within(&off, Duration::from_secs(600)).await,
            "0: never"
        );
    }
}
