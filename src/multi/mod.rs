//! Streams that carry several jobs on one connection: an explicit `?job=`
//! list, or every job of a group. `list` parses what the request asks for,
//! `cursor` is the one resume token over all the stream's jobs.

pub mod cursor;
pub mod door;
pub mod groups;
pub mod jobset;
pub mod list;
pub mod poll;
pub mod sse;
pub mod ws;

use serde_json::json;
use warp::reply::{Reply, Response};

use crate::http::error::ApiError;

/// The `connected` payload: the stream's jobs (and its group).
pub fn connected(opened: &door::OpenedMany) -> serde_json::Value {
    let jobs: Vec<&str> = opened.set.jobs().map(|j| j.as_str()).collect();
    match &opened.group {
        Some(g) => json!({"group": g.group.as_str(), "jobs": jobs}),
        None => json!({"jobs": jobs}),
    }
}

/// A refused multi-job request: the single-job error, plus `"job_id"`
/// naming the job that was refused where one was.
#[derive(Debug)]
pub struct Refusal {
    pub error: ApiError,
    pub job: Option<String>,
}

impl Refusal {
    pub fn for_job(error: ApiError, job: &str) -> Refusal {
        Refusal {
            error,
            job: Some(job.to_owned()),
        }
    }

    pub fn plain(error: ApiError) -> Refusal {
        Refusal { error, job: None }
    }
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Refusal::plain(error)
    }
}

impl From<crate::limits::LimitError> for Refusal {
    fn from(error: crate::limits::LimitError) -> Self {
        Refusal::plain(error.into())
    }
}

impl From<crate::auth::policy::Refusal> for Refusal {
    fn from(error: crate::auth::policy::Refusal) -> Self {
        Refusal::plain(error.into())
    }
}

impl Reply for Refusal {
    /// The single-job answer (status, headers such as `Retry-After`), with
    /// the body naming the job.
    fn into_response(self) -> Response {
        let Some(job) = self.job else {
            return self.error.into_response();
        };
        let body =
            json!({"error": self.error.code(), "message": self.error.to_string(), "job_id": job});
        let mut res = self.error.into_response();
        *res.body_mut() = body.to_string().into();
        res.headers_mut().remove(warp::http::header::CONTENT_LENGTH);
        res
    }
}
