//! Long-poll for multi-job streams (`/poll?job=…`, `/groups/{group}/poll`):
//! answers at once with every job's newest state the cursor has not seen,
//! else waits (up to `timeout`) for the first one, gathering whatever else is
//! owed by then; `204` when nothing came. A list whose every end the cursor
//! saw answers `{"events":[],"ended":true}`, so a client can tell "stop"
//! from "nothing yet".

use std::convert::Infallible;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::json;
use warp::http::{HeaderValue, header};
use warp::reply::{Reply, Response};

use crate::auth::Credentials;
use crate::event;
use crate::multi::Refusal;
use crate::multi::cursor::StreamCursor;
use crate::multi::door::{OpenedMany, open_group, open_list};
use crate::multi::jobset::Item;
use crate::multi::list::{parse_jobs, resume_cursor};
use crate::state::SharedState;
use crate::stream::Transport;
use crate::stream::closed;
use crate::stream::cursor::delivered;
use crate::stream::poll::{no_content, parse_timeout};
use crate::stream::watcher::CloseReason;

/// `GET /poll?job=A&job=B…&cursor=…&timeout=…`
pub async fn list(
    app: SharedState,
    creds: Credentials,
    query: String,
) -> Result<Response, Infallible> {
    let jobs = parse_jobs(&query, app.settings.max_jobs_per_stream);
    Ok(answer(&app, &query, |cursor| async {
        open_list(&app, jobs?, &creds, Transport::Poll, cursor).await
    })
    .await)
}

/// `GET /groups/{group}/poll?cursor=…&timeout=…`
pub async fn group(
    app: SharedState,
    group: String,
    creds: Credentials,
    query: String,
) -> Result<Response, Infallible> {
    Ok(answer(&app, &query, |cursor| async {
        open_group(&app, &group, &creds, Transport::Poll, cursor).await
    })
    .await)
}

/// Opens the stream with the query's cursor and answers within its `timeout`.
async fn answer<F, Fut>(app: &SharedState, query: &str, open: F) -> Response
where
    F: FnOnce(StreamCursor) -> Fut,
    Fut: Future<Output = Result<OpenedMany, Refusal>>,
{
    let answered = async {
        let timeout = parse_timeout(query)?;
        let opened = open(resume_cursor(None, query)).await?;
        Ok::<_, Refusal>(wait(app, opened, timeout).await)
    };
    answered.await.unwrap_or_else(Reply::into_response)
}

async fn wait(app: &SharedState, mut opened: OpenedMany, timeout: std::time::Duration) -> Response {
    let set = &mut opened.set;
    if set.is_over() {
        closed(Transport::Poll, CloseReason::Done);
        return json_answer(&set.cursor_text(), &[], true);
    }
    let mut items: Vec<Item> = std::iter::from_fn(|| set.next_ready()).collect();
    if items.is_empty() {
        tokio::select! {
            _ = tokio::time::sleep(timeout) => {}
            _ = app.shutdown.cancelled() => {}
            item = set.next() => {
                items.extend(item);
                items.extend(std::iter::from_fn(|| set.next_ready()));
            }
        }
    }
    if items.is_empty() {
        closed(Transport::Poll, CloseReason::Timeout);
        return no_content(None);
    }
    let mut parts = Vec::with_capacity(items.len());
    for item in &items {
        parts.push(event_json(item).await);
    }
    closed(Transport::Poll, CloseReason::Answered);
    json_answer(&set.cursor_text(), &parts, set.is_over())
}

/// One item as a JSON object, from the job's shared encoding.
async fn event_json(item: &Item) -> Bytes {
    let closed_off = |open: &Bytes| {
        let mut b = BytesMut::with_capacity(open.len() + 1);
        b.put_slice(open);
        b.put_u8(b'}');
        b.freeze()
    };
    match item {
        Item::Progress(job, update) => {
            delivered(update, Transport::Poll);
            closed_off(&update.many(job).ws_open)
        }
        Item::Done(job, update) => {
            // An answer with `done` promises the end state is durable.
            update.durable.wait(event::DURABLE_WAIT).await;
            match &update.many(job).ws_done_open {
                Some(open) => closed_off(open),
                None => Bytes::from_static(b"null"),
            }
        }
        Item::Stalled(_, stalled) => stalled.ws_many.clone(),
        Item::Joined(job) => {
            Bytes::from(json!({"type": "joined", "job_id": job.as_str()}).to_string())
        }
    }
}

fn json_answer(cursor: &str, events: &[Bytes], ended: bool) -> Response {
    let mut b =
        BytesMut::with_capacity(64 + cursor.len() + events.iter().map(Bytes::len).sum::<usize>());
    b.put_slice(b"{\"cursor\":\"");
    b.put_slice(cursor.as_bytes());
    b.put_slice(b"\",\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            b.put_u8(b',');
        }
        b.put_slice(e);
    }
    b.put_u8(b']');
    if ended {
        b.put_slice(b",\"ended\":true");
    }
    b.put_u8(b'}');
    let mut res = Response::new(b.freeze().into());
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
