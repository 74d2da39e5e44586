//! Operator routes: `/healthz` (the process runs), `/readyz` (which sources are
//! reachable, from the background report of `readiness`), `/metrics`
//! (Prometheus text), `/openapi.yaml` (the HTTP contract).

use serde_json::json;
use warp::http::{StatusCode, header};
use warp::reply::{Reply, Response};

use crate::state::SharedState;
use crate::upstream::redis_setup::KeyspaceEvents;

pub fn healthz() -> Response {
    warp::reply::json(&json!({"status": "ok"})).into_response()
}

/// `200 {"redis":"up","postgres":"up","keyspace_events":"on"}`; `200` with
/// `"status":"degraded"` where one source is down, or keyspace notifications are
/// known to be off, or the Redis primary is changing (`"redis":"failover"`), but
/// streams are served; `503` where no source is reachable.
/// Answers from the background report (no Redis or Postgres round trip here).
pub async fn readyz(app: SharedState) -> Response {
    let report = app.readiness.report();
    let redis_up = report.redis;
    let pg = report.postgres;
    let word = |up: bool| if up { "up" } else { "down" };
    let any_up = redis_up || pg == Some(true);
    let all_up = redis_up
        && !report.redis_failover
        && pg != Some(false)
        && report.keyspace_events != KeyspaceEvents::Off;
    let redis_word = if redis_up && report.redis_failover {
        "failover"
    } else {
        word(redis_up)
    };
    let status = if all_up {
        "ready"
    } else if any_up {
        "degraded"
    } else {
        "unavailable"
    };
    let body = json!({
        "status": status,
        "redis": redis_word,
        "postgres": pg.map_or("disabled", word),
        "keyspace_events": report.keyspace_events.as_str(),
    });
    let code = if any_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    warp::reply::with_status(warp::reply::json(&body), code).into_response()
}

pub fn metrics() -> Response {
    let text = crate::metrics::handle()
        .map(|h| h.render())
        .unwrap_or_default();
    let mut res = Response::new(text.into());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    res
}

/// docs/openapi.yaml, compiled in so that the binary always serves the
/// description of the routes it was built with.
const OPENAPI_YAML: &str = include_str!("../../docs/openapi.yaml");

pub fn openapi() -> Response {
    let mut res = Response::new(OPENAPI_YAML.into());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/yaml"),
    );
    res
}
