//! The HTTP surface: small filters composed into [`routes`],
//! handlers as plain async fns, state through [`with_state`], one `recover`.

pub mod caller;
pub mod client_info;
pub mod cors;
pub mod direct;
pub mod error;
pub mod head;
pub mod jobs;
pub mod ops;
pub mod origin;
pub mod reply;
pub mod selftest;
pub mod server;
pub mod stall;
pub mod upgrade;

use std::convert::Infallible;

use warp::{Filter, Reply};

use crate::auth::credentials::{credentials, query_param};
use crate::http::direct::stream_conn;
use crate::state::SharedState;
use crate::{multi, stream};

pub fn with_state(
    app: SharedState,
) -> impl Filter<Extract = (SharedState,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

/// The raw query string, empty where there is none.
fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// `Last-Event-ID` header (EventSource's own reconnects), else the
/// `last_event_id` query parameter (clients that open a new connection).
fn last_event_id() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::header::optional::<String>("last-event-id")
        .or(warp::any().map(|| None))
        .unify()
        .and(raw_query())
        .map(|header: Option<String>, query: String| {
            header.or_else(|| query_param(&query, "last_event_id"))
        })
}

pub fn routes(
    app: SharedState,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let state = with_state(app.clone());
    // What every stream route starts with: a GET, the state, the credentials.
    let caller = warp::get().and(state.clone()).and(credentials());

    let sse = warp::path!("jobs" / String / "events")
        .and(caller.clone())
        .and(last_event_id())
        .and(stream_conn())
        .then(|job, app, creds, last, conn| stream::sse::handle(app, job, creds, last, conn))
        .map(unwrap_infallible);

    let ws = warp::path!("jobs" / String / "ws")
        .and(caller.clone())
        .and(last_event_id())
        .and(upgrade::handshake())
        .and(stream_conn())
        .then(|job, app, creds, last, ws, conn| stream::ws::handle(app, job, creds, last, ws, conn))
        .map(unwrap_infallible);

    let poll = warp::path!("jobs" / String / "poll")
        .and(caller.clone())
        .and(raw_query())
        .then(|job, app, creds, query| stream::poll::handle(app, job, creds, query))
        .map(unwrap_infallible);

    let many_sse = warp::path!("events")
        .and(caller.clone())
        .and(last_event_id())
        .and(raw_query())
        .and(stream_conn())
        .then(multi::sse::list)
        .map(unwrap_infallible);

    let many_ws = warp::path!("ws")
        .and(caller.clone())
        .and(raw_query())
        .and(upgrade::handshake())
        .then(multi::ws::list)
        .map(unwrap_infallible);

    let group_ws = warp::path!("groups" / String / "ws")
        .and(caller.clone())
        .and(raw_query())
        .and(upgrade::handshake())
        .then(|group, app, creds, query, ws| multi::ws::group(app, group, creds, query, ws))
        .map(unwrap_infallible);

    let many_poll = warp::path!("poll")
        .and(caller.clone())
        .and(raw_query())
        .then(multi::poll::list)
        .map(unwrap_infallible);

    let group_sse = warp::path!("groups" / String / "events")
        .and(caller.clone())
        .and(last_event_id())
        .and(raw_query())
        .and(stream_conn())
        .then(|group, app, creds, last, query, conn| {
            multi::sse::group(app, group, creds, last, query, conn)
        })
        .map(unwrap_infallible);

    let group_poll = warp::path!("groups" / String / "poll")
        .and(caller.clone())
        .and(raw_query())
        .then(|group, app, creds, query| multi::poll::group(app, group, creds, query))
        .map(unwrap_infallible);

    let snapshot = warp::path!("jobs" / String)
        .and(caller.clone())
        .then(jobs::snapshot);

    let publish = warp::path!("jobs" / String)
        .and(warp::post())
        .and(state.clone())
        .and(credentials())
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(jobs::publish);

    let healthz = warp::path!("healthz").and(warp::get()).map(ops::healthz);
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(state.clone())
        .then(ops::readyz);
    let metrics = warp::path!("metrics").and(warp::get()).map(ops::metrics);
    let openapi = warp::path!("openapi.yaml")
        .and(warp::get())
        .map(ops::openapi);

    let static_dir = app.settings.static_dir.clone();
    let index = warp::path::end()
        .and(warp::get())
        .and(warp::fs::file(static_dir.join("index.html")));
    let files = warp::path("static").and(warp::fs::dir(static_dir));

    let api = sse
        .or(ws)
        .or(poll)
        .or(snapshot)
        .or(publish)
        .or(healthz)
        .or(readyz)
        .or(metrics)
        .or(openapi)
        .or(selftest::routes())
        .or(index)
        .or(files)
        // Multi-job routes last and boxed: the single-job routes keep the
        // shallow filter nesting (and poll depth) they had.
        .or(many_sse
            .or(many_ws)
            .or(many_poll)
            .or(group_sse)
            .or(group_ws)
            .or(group_poll)
            .map(|r| Box::new(r) as Box<dyn Reply>)
            .boxed())
        .or(cors::preflight(app.clone()))
        .recover(error::recover);

    cors::decorate(app, api)
}

fn unwrap_infallible<T>(r: Result<T, Infallible>) -> T {
    match r {
        Ok(v) => v,
        Err(never) => match never {},
    }
}
