//! [`SessionApp`]: a small cookie-session web application's auth endpoint, as
//! `JOBCAST_AUTH_URL` calls it. `GET /internal/jobcast-auth?job=J` reads the
//! `sid` cookie: an unknown or missing session is `401`, a user who may not see
//! job J `403`, else `200 {"sub": user}`. A test signs users in and out, lets
//! users see jobs, makes the endpoint fail (`500`) or answer slowly, and counts
//! the calls it got.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warp::Filter;
use warp::http::StatusCode;

#[derive(Default)]
struct State {
    /// sid → user
    sessions: HashMap<String, String>,
    /// (user, job) the app lets through
    grants: HashSet<(String, String)>,
    failing: bool,
    delay: Duration,
}

pub struct SessionApp {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    calls: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl SessionApp {
    pub async fn start() -> SessionApp {
        let state = Arc::new(Mutex::new(State::default()));
        let calls = Arc::new(AtomicUsize::new(0));
        let (s, c) = (state.clone(), calls.clone());
        let route = warp::path!("internal" / "jobcast-auth")
            .and(warp::get())
            .and(warp::query::<HashMap<String, String>>())
            .and(warp::cookie::optional::<String>("sid"))
            .then(move |q: HashMap<String, String>, sid: Option<String>| {
                let (state, calls) = (s.clone(), c.clone());
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let (failing, delay) = {
                        let st = state.lock().unwrap();
                        (st.failing, st.delay)
                    };
                    // The app's own latency; makes concurrent asks overlap.
                    tokio::time::sleep(delay).await;
                    if failing {
                        return reply(StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({}));
                    }
                    let st = state.lock().unwrap();
                    let user = sid.and_then(|sid| st.sessions.get(&sid).cloned());
                    let job = q.get("job").cloned().unwrap_or_default();
                    match user {
                        None => reply(StatusCode::UNAUTHORIZED, serde_json::json!({})),
                        Some(u) if st.grants.contains(&(u.clone(), job)) => {
                            reply(StatusCode::OK, serde_json::json!({"sub": u}))
                        }
                        Some(_) => reply(StatusCode::FORBIDDEN, serde_json::json!({})),
                    }
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the session app");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(warp::serve(route).incoming(listener).run());
        SessionApp {
            addr,
            state,
            calls,
            server,
        }
    }

    /// The value for `JOBCAST_AUTH_URL`.
    pub fn auth_url(&self) -> String {
        format!("http://{}/internal/jobcast-auth", self.addr)
    }

    /// Signs `user` in: the returned `Cookie` header value is their session.
    pub fn sign_in(&self, user: &str) -> String {
        let sid = format!("{:032x}", rand::random::<u128>());
        self.state
            .lock()
            .unwrap()
            .sessions
            .insert(sid.clone(), user.to_owned());
        format!("theme=dark; sid={sid}")
    }

    /// Ends every session of `user`.
    pub fn sign_out(&self, user: &str) {
        self.state.lock().unwrap().sessions.retain(|_, u| u != user);
    }

    pub fn grant(&self, user: &str, job: &str) {
        self.state
            .lock()
            .unwrap()
            .grants
            .insert((user.to_owned(), job.to_owned()));
    }

    pub fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for SessionApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn reply(status: StatusCode, body: serde_json::Value) -> warp::reply::Response {
    use warp::Reply;
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}
