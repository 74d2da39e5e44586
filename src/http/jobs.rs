//! One-shot job routes: `GET /jobs/{id}` (the current document, from Redis or
//! Postgres) and `POST /jobs/{id}` (publish for services that do not speak Redis).

use bytes::{Buf, BufMut, BytesMut};
use futures::{Stream, StreamExt};
use serde_json::json;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::{Reply, Response};

use crate::auth::policy::{JobFacts, authorize, authorize_publish};
use crate::auth::{AuthError, Credentials, TokenSource};
use crate::http::caller::{authenticate, parse_job, verify};
use crate::http::error::{ApiError, respond};
use crate::http::reply::json_document;
use crate::job::{DocError, ProgressDoc};
use crate::state::SharedState;
use crate::stream::Transport;

/// TTL given to state keys written through `POST /jobs/{id}`, in seconds.
pub const PUBLISH_TTL_SECS: u64 = jobcast_publish::DEFAULT_TTL_SECS;

pub async fn snapshot(job: String, app: SharedState, creds: Credentials) -> Response {
    respond(get(job, app, creds).await)
}

async fn get(job: String, app: SharedState, creds: Credentials) -> Result<Response, ApiError> {
    let job = parse_job(&job)?;
    let (claims, _) = authenticate(&app, &creds, &job, None).await?;
    let _slot = app.limits.acquire(&claims.sub, Transport::Snapshot)?;
    let fetched = app.loader.fetch(&job, true).await;
    if fetched.unavailable {
        return Err(ApiError::Unavailable(
            "neither Redis nor Postgres answered; retry later".into(),
        ));
    }
    authorize(
        &claims,
        &job,
        JobFacts {
            known: fetched.known(),
            owner: fetched.owner(),
        },
    )?;
    let Some((doc, source)) = fetched.doc else {
        return Err(ApiError::NotFound(format!("job {job} has no state yet")));
    };
    let mut res = json_document(doc.json.clone());
    let h = res.headers_mut();
    h.insert(
        "x-jobcast-source",
        HeaderValue::from_static(source.store_name()),
    );
    if let Some(seq) = doc.seq
        && let Ok(v) = HeaderValue::from_str(&seq.to_string())
    {
        h.insert("x-jobcast-event-id", v);
    }
    Ok(res)
}

/// `POST /jobs/{id}`. Checks run cheapest first and the body is read last, only
/// for an authorised publisher, and never past the size limit: job id (400),
/// token from the Authorization header only (401: a cookie or query token
/// would let any site a user visits publish in their name), role and `jobs`
/// claim (403), size (413, from `Content-Length` at once, else while reading a
/// chunked body), document (400, also for a group field that is not a valid
/// group name), owner (409: a job's owner never changes).
/// Then the same write as every worker: SET with TTL + PUBLISH, atomically,
/// and for a document naming a group (`JOBCAST_GROUP_FIELD`), `SADD` of the
/// job to the group's set with the same TTL.
pub async fn publish<S, B>(
    job: String,
    app: SharedState,
    creds: Credentials,
    declared_len: Option<u64>,
    body: S,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    respond(post(job, app, creds, declared_len, body).await)
}

async fn post<S, B>(
    job: String,
    app: SharedState,
    creds: Credentials,
    declared_len: Option<u64>,
    body: S,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let job = parse_job(&job)?;
    if creds
        .token
        .as_ref()
        .is_some_and(|(_, source)| *source != TokenSource::Header)
    {
        metrics::counter!("jobcast_auth_failures_total", "reason" => AuthError::NotInHeader.reason())
            .increment(1);
        return Err(ApiError::Unauthorized(AuthError::NotInHeader));
    }
    let claims = verify(&app, &creds).await?;
    authorize_publish(&claims, &job)?;
    let rules = &app.rules;
    let body = read_bounded(declared_len, body, rules.max_bytes).await?;
    let doc = ProgressDoc::parse(&body, rules).map_err(|e| match e {
        DocError::TooLarge => too_large(rules.max_bytes),
        DocError::BadSeq => ApiError::BadRequest(e.to_string()),
        _ => ApiError::BadRequest(format!("{e}: the body must be a JSON object")),
    })?;
    if doc.group.is_none() && names_a_group(&doc.json, &rules.group_field) {
        return Err(ApiError::BadRequest(format!(
            "{}: a group name is 1-{} characters from A-Z a-z 0-9 . _ : -",
            rules.group_field,
            crate::job::MAX_JOB_ID_LEN
        )));
    }
    if let Some(named) = &doc.owner {
        // Known without I/O where a feed fixed or remembers it; else the sources.
        let owner = match app.hub.known_owner(&job) {
            Some(owner) => Some(owner.to_string()),
            None => app
                .loader
                .fetch(&job, true)
                .await
                .owner()
                .map(str::to_owned),
        };
        if owner.is_some_and(|o| o != *named) {
            return Err(ApiError::Conflict(format!(
                "job {job} belongs to another owner than the document names; a job's owner never changes"
            )));
        }
    }
    let reader = &app.redis;
    let written = match &doc.group {
        None => reader.write(&job, &doc.json, PUBLISH_TTL_SECS).await,
        Some(group) => {
            let set = format!("{}{group}", app.settings.group_prefix);
            reader
                .write_in_group(&job, &doc.json, PUBLISH_TTL_SECS, &set)
                .await
        }
    };
    written.map_err(|e| ApiError::Unavailable(format!("could not write to Redis: {e}")))?;
    let body = json!({"job_id": job.as_str(), "seq": doc.seq});
    Ok(warp::reply::with_status(warp::reply::json(&body), StatusCode::CREATED).into_response())
}

/// Whether the document has a non-null group field (read again only for a
/// document whose group field did not parse as a group name).
fn names_a_group(json: &[u8], field: &str) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(json)
        .is_ok_and(|m| m.get(field).is_some_and(|v| !v.is_null()))
}

fn too_large(max: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "the document is larger than {max} bytes (JOBCAST_MAX_DOCUMENT_BYTES)"
    ))
}

/// Reads a request body of at most `max` bytes. warp's `content_length_limit`
/// is not used: it refuses every body without `Content-Length` (chunked) with
/// 411, small or not. Here a declared length over the limit is refused before
/// reading, and a chunked body as soon as it passes the limit, so memory stays
/// bounded by `max` either way.
async fn read_bounded<S, B>(
    declared_len: Option<u64>,
    body: S,
    max: usize,
) -> Result<bytes::Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if declared_len.is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    let mut buf = BytesMut::with_capacity(declared_len.unwrap_or(0) as usize);
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if buf.len() + chunk.remaining() > max {
            return Err(too_large(max));
        }
        buf.put(chunk);
    }
    Ok(buf.freeze())
}
