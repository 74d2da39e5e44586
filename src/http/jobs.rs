//! One-shot job routes: `GET /jobs/{id}` (the current document, from Redis or
//! Postgres) and `POST /jobs/{id}` (publish for services that do not speak Redis).

use bytes::Bytes;
use serde_json::json;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};

use crate::auth::Credentials;
use crate::auth::policy::{JobFacts, authorize};
use crate::error::ApiError;
use crate::job::ProgressDoc;
use crate::state::SharedState;
use crate::stream::{parse_job, verify};

/// TTL given to state keys written through `POST /jobs/{id}`, in seconds.
pub const PUBLISH_TTL_SECS: u64 = 7200;

pub async fn snapshot(job: String, app: SharedState, creds: Credentials) -> Response {
    match get(job, app, creds).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn get(job: String, app: SharedState, creds: Credentials) -> Result<Response, ApiError> {
    let job = parse_job(&job)?;
    let claims = verify(&app, &creds)?;
    let fetched = app.hub.fetch(&job, true).await;
    if !fetched.known()
        && fetched.redis_failed
        && (app.hub.store().is_none() || fetched.store_failed)
    {
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
    let mut res = Response::new(doc.json.clone().into());
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-jobcast-source",
        HeaderValue::from_static(source.store_name()),
    );
    if let Some(seq) = doc.seq {
        if let Ok(v) = HeaderValue::from_str(&seq.to_string()) {
            h.insert("x-jobcast-event-id", v);
        }
    }
    Ok(res)
}

pub async fn publish(job: String, app: SharedState, creds: Credentials, body: Bytes) -> Response {
    match post(job, app, creds, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn post(
    job: String,
    app: SharedState,
    creds: Credentials,
    body: Bytes,
) -> Result<Response, ApiError> {
    let job = parse_job(&job)?;
    let claims = verify(&app, &creds)?;
    if !claims.has_role("publisher") {
        return Err(ApiError::Forbidden(
            "publishing needs a token with the publisher role".into(),
        ));
    }
    let doc = ProgressDoc::parse(&body, app.hub.rules()).map_err(|e| match e {
        crate::job::DocError::TooLarge => ApiError::PayloadTooLarge(e.to_string()),
        _ => ApiError::BadRequest(format!("{e}: the body must be a JSON object")),
    })?;
    app.hub
        .reader()
        .write(&job, &doc.json, PUBLISH_TTL_SECS)
        .await
        .map_err(|e| ApiError::Unavailable(format!("could not write to Redis: {e}")))?;
    let body = json!({"job_id": job.as_str(), "seq": doc.seq});
    Ok(warp::reply::with_status(warp::reply::json(&body), StatusCode::CREATED).into_response())
}
