//! Long-poll: answers at once with the current document when its id differs from
//! `after`, else waits (up to `timeout`, default 25 s, at most 55 s) for the next
//! state and answers `204` when none came. The event id travels in
//! `X-Jobcast-Event-Id`; `X-Jobcast-Done: true` marks a terminal document.
//!
//! A running job that has gone silent for its stall period carries
//! `X-Jobcast-Stalled: <seconds since its newest state>` on every answer
//! while it stays silent (a document, or the `204` at the end of the wait),
//! and a wait during which it goes silent ends at once with that `204`.

use std::convert::Infallible;
use std::time::Duration;

use warp::http::{HeaderValue, StatusCode};
use warp::reply::{Reply, Response};

use crate::auth::Credentials;
use crate::auth::credentials::query_param;
use crate::config::{POLL_DEFAULT_TIMEOUT_SECS, POLL_MAX_TIMEOUT_SECS};
use crate::event::Update;
use crate::http::error::{ApiError, respond};
use crate::http::reply::{json_document, no_store};
use crate::state::SharedState;
use crate::stream::Transport;
use crate::stream::cursor::{delivered, is_news, seen_id};
use crate::stream::watcher::{CloseReason, JobStep, JobWatch};
use crate::stream::{closed, open};

pub async fn handle(
    app: SharedState,
    job: String,
    creds: Credentials,
    query: String,
) -> Result<Response, Infallible> {
    Ok(respond(poll(app, job, creds, query).await))
}

pub fn parse_timeout(query: &str) -> Result<Duration, ApiError> {
    let secs = match query_param(query, "timeout") {
        None => POLL_DEFAULT_TIMEOUT_SECS,
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| ApiError::BadRequest("timeout must be a whole number of seconds".into()))?
            .min(POLL_MAX_TIMEOUT_SECS),
    };
    Ok(Duration::from_secs(secs))
}

async fn poll(
    app: SharedState,
    job: String,
    creds: Credentials,
    query: String,
) -> Result<Response, ApiError> {
    let timeout = parse_timeout(&query)?;
    let after = seen_id(query_param(&query, "after").as_deref());
    let opened = open(&app, &job, &creds, Transport::Poll).await?;
    let mut watch = JobWatch::start(&opened, after.as_deref());
    if watch.end_seen() {
        closed(Transport::Poll, CloseReason::Done);
        return Ok(no_content(None));
    }
    // A job already silent answers with the header at the end of the wait
    // (or with a new state), not at once: a client must not spin on it.
    let stall_after = app.hub.stall_after();
    let stalled_before = watch.stalled_seconds(None, stall_after).is_some();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = app.shutdown.cancelled() => break,
            step = watch.next() => match step {
                None => break,
                Some(JobStep::Progress(update)) if is_news(&update, after.as_deref()) => {
                    closed(Transport::Poll, CloseReason::Answered);
                    let stalled = watch.stalled_seconds(Some(&update), stall_after);
                    return Ok(answer(&update, stalled).await);
                }
                Some(JobStep::Stalled(mark)) if !stalled_before => {
                    closed(Transport::Poll, CloseReason::Answered);
                    let seconds = watch.stalled_seconds(None, stall_after);
                    return Ok(no_content(seconds.or(Some(mark.seconds_since_update))));
                }
                Some(_) => {}
            },
        }
    }
    closed(Transport::Poll, CloseReason::Timeout);
    Ok(no_content(watch.stalled_seconds(None, stall_after)))
}

/// A terminal document is answered once it is durable (bounded), as `done` on a
/// stream is: a client that stops polling at `X-Jobcast-Done` finds the row final.
async fn answer(update: &Update, stalled: Option<u64>) -> Response {
    if update.is_done() {
        update.durable.wait(crate::event::DURABLE_WAIT).await;
    }
    document(update, stalled)
}

fn document(update: &Update, stalled: Option<u64>) -> Response {
    delivered(update, Transport::Poll);
    let mut res = json_document(update.doc.json.clone());
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&update.id) {
        h.insert("x-jobcast-event-id", v);
    }
    if update.is_done() {
        h.insert("x-jobcast-done", HeaderValue::from_static("true"));
    }
    mark_stalled(h, stalled);
    res
}

/// `204`, with `X-Jobcast-Stalled` when the job is silent past its period.
pub fn no_content(stalled: Option<u64>) -> Response {
    let mut res = no_store(
        warp::reply::with_status(warp::reply::reply(), StatusCode::NO_CONTENT).into_response(),
    );
    mark_stalled(res.headers_mut(), stalled);
    res
}

fn mark_stalled(h: &mut warp::http::HeaderMap, stalled: Option<u64>) {
    if let Some(seconds) = stalled {
        h.insert("x-jobcast-stalled", HeaderValue::from(seconds));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_defaults_clamps_and_rejects_junk() {
        assert_eq!(parse_timeout("").unwrap(), Duration::from_secs(25));
        assert_eq!(parse_timeout("timeout=3").unwrap(), Duration::from_secs(3));
        assert_eq!(
            parse_timeout("timeout=999").unwrap(),
            Duration::from_secs(55)
        );
        assert!(parse_timeout("timeout=-1").is_err());
    }
}
