//! Keys from an identity provider's JWK Set (`JWT_JWKS_URL`), end to end: a
//! local HTTP server plays the provider's JWKS endpoint, PyJWT signs the
//! tokens (an independent library: see `support/idp.rs`), and the gateway is
//! asked through its public routes whether each token passes. Rotation,
//! rate-limited unknown-`kid` refreshes, a provider that goes down, algorithm
//! confusion and sets that cannot be used at start.

use std::time::Duration;

use serde_json::{Value, json};

use crate::app::{Options, SECRET, TestApp, spawn_app_with};
use crate::child::ChildApp;
use crate::clients::Gateway as _;
use crate::support::idp::{Idp, TokenSpec};
use crate::support::jwks_server::JwksServer;
use crate::support::{RedisServer, wait_until};

const DOC: &str = r#"{"seq":1,"owner_id":"alice","status":"running"}"#;
/// Bound on a timed refresh (every second in these tests) being seen.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(10);

fn alice() -> Value {
    let now = jobcast::auth::claims::now_secs();
    json!({"sub": "alice", "iat": now, "exp": now + 600})
}

fn signed<'a>(name: &'a str, alg: &'a str, key: &'a str, kid: Option<&'a str>) -> TokenSpec<'a> {
    TokenSpec {
        name,
        alg,
        key: Some(key),
        secret: None,
        kid,
        claims: alice(),
    }
}

/// Keys A (RSA), B (EC P-256) and P (RSA, for a PEM file); tokens:
/// `a` (RS256 by A, kid A), `b` (ES256 by B, kid B), `c` (RS256 by A, kid C:
/// unknown), `b_as_a` (ES256 by B, kid A: alg not A's), `hs_as_a` (HS256 with
/// the gateway's own secret, kid A), `service` (HS256 with that secret, no
/// kid), `p` (RS256 by P, no kid).
async fn idp() -> Idp {
    let hs = |name, kid| TokenSpec {
        name,
        alg: "HS256",
        key: None,
        secret: Some(SECRET),
        kid,
        claims: alice(),
    };
    Idp::mint(
        &[("A", "RSA"), ("B", "EC"), ("P", "RSA")],
        &[
            signed("a", "RS256", "A", Some("A")),
            signed("b", "ES256", "B", Some("B")),
            signed("c", "RS256", "A", Some("C")),
            signed("b_as_a", "ES256", "B", Some("A")),
            signed("p", "RS256", "P", None),
            hs("hs_as_a", Some("A")),
            hs("service", None),
        ],
    )
    .await
}

/// A gateway whose keys are the JWK Set at `url` (plus `JWT_SECRET` when
/// `with_secret`), refreshed every `refresh_secs`.
async fn jwks_app(url: String, with_secret: bool, refresh_secs: u64) -> TestApp {
    spawn_app_with(Options {
        tweak: Box::new(move |s| {
            s.jwt_jwks_url = Some(url);
            s.jwks_refresh_secs = refresh_secs;
            if !with_secret {
                s.jwt_secret = None;
            }
        }),
        ..Default::default()
    })
    .await
}

/// The status of `GET /jobs/job1` with `token` (alice owns job1).
async fn status(base: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{base}/jobs/job1"))
        .bearer_auth(token)
        .send()
        .await
        .expect("snapshot request")
        .status()
        .as_u16()
}

#[tokio::test]
async fn jwks_rotation_is_followed_by_one_refresh_and_the_old_key_is_refused() {
    let idp = idp().await;
    let server = JwksServer::start(&idp.set(&["A"])).await;
    let app = jwks_app(server.url(), false, 300).await;
    app.set("job1", DOC).await;
    let base = app.url("");
    assert_eq!(server.fetches(), 1, "the set is fetched once at start");
    assert_eq!(status(&base, idp.token("a")).await, 200, "kid A passes");
    assert_eq!(
        status(&base, idp.token("b")).await,
        401,
        "B is not published yet"
    );
    assert_eq!(server.fetches(), 2, "an unknown kid refreshes the set");

    // The provider rotates: B in, A out.
    server.serve(&idp.set(&["B"]));
    // The last unknown-kid refresh was just now: the rate limit holds this one
    // back, so B is still refused and nothing is fetched.
    assert_eq!(status(&base, idp.token("b")).await, 401);
    assert_eq!(
        server.fetches(),
        2,
        "unknown-kid refreshes are rate-limited"
    );
    drop(app);

    // A fresh gateway that only ever saw A: B passes within one refresh.
    server.serve(&idp.set(&["A"]));
    let app = jwks_app(server.url(), false, 300).await;
    app.set("job1", DOC).await;
    let base = app.url("");
    assert_eq!(status(&base, idp.token("a")).await, 200);
    let before = server.fetches();
    server.serve(&idp.set(&["B"]));
    assert_eq!(
        status(&base, idp.token("b")).await,
        200,
        "kid B (ES256) passes after the rotation"
    );
    assert_eq!(server.fetches(), before + 1, "with exactly one refresh");
    assert_eq!(
        status(&base, idp.token("a")).await,
        401,
        "kid A is refused once the set no longer has it"
    );
    assert_eq!(
        status(&base, idp.token("c")).await,
        401,
        "an unknown kid is refused"
    );
    assert_eq!(
        server.fetches(),
        before + 1,
        "neither refused token caused another fetch within 30 s"
    );
}

#[tokio::test]
async fn jwks_is_refreshed_on_a_timer_and_a_failed_refresh_keeps_the_last_set() {
    let idp = idp().await;
    let mut server = JwksServer::start(&idp.set(&["A"])).await;
    let redis = RedisServer::start().await;
    // A process of its own: its metrics registry counts this gateway only.
    let app = ChildApp::spawn(
        &redis.url(),
        &[
            ("JWT_JWKS_URL", server.url()),
            ("JOBCAST_JWKS_REFRESH_SECS", "1".into()),
        ],
    )
    .await;
    let mut conn = redis.connection().await;
    let _: () = redis::AsyncCommands::set_ex(&mut conn, "progress:job:job1", DOC, 7200)
        .await
        .expect("SET");
    let base = app.url("");
    assert_eq!(status(&base, idp.token("a")).await, 200);

    // The timer: B appears without any token asking for it.
    server.serve(&idp.set(&["A", "B"]));
    let seen = server.fetches();
    wait_until(REFRESH_TIMEOUT, "a timed refresh", || async {
        server.fetches() >= seen + 2
    })
    .await;
    assert_eq!(status(&base, idp.token("b")).await, 200);
    assert_eq!(
        app.metric("jobcast_jwks_refresh_errors_total", "").await,
        0.0
    );

    // A broken answer is counted and changes nothing.
    server.set(200, "<html>maintenance</html>", None);
    wait_until(REFRESH_TIMEOUT, "a failed refresh is counted", || async {
        app.metric("jobcast_jwks_refresh_errors_total", "").await >= 1.0
    })
    .await;
    assert_eq!(status(&base, idp.token("a")).await, 200, "last set kept");

    // The provider goes down altogether: still the last good set.
    server.stop();
    let errors = app.metric("jobcast_jwks_refresh_errors_total", "").await;
    wait_until(
        REFRESH_TIMEOUT,
        "a refresh against a dead server fails",
        || async { app.metric("jobcast_jwks_refresh_errors_total", "").await > errors },
    )
    .await;
    assert_eq!(status(&base, idp.token("a")).await, 200, "A still passes");
    assert_eq!(status(&base, idp.token("b")).await, 200, "B still passes");
    assert!(
        app.log().contains("JWK Set refresh failed"),
        "the failure is logged: {}",
        app.log()
    );
    assert!(
        app.log()
            .contains("JWT_JWKS_URL is set but JWT_AUDIENCE is not"),
        "a set without an audience check is warned about: {}",
        app.log()
    );
}

#[tokio::test]
async fn jwks_keys_refuse_other_algorithms_and_combine_with_the_secret() {
    let idp = idp().await;
    let server = JwksServer::start(&idp.set(&["A"])).await;
    let app = jwks_app(server.url(), true, 300).await;
    app.set("job1", DOC).await;
    let base = app.url("");
    assert_eq!(status(&base, idp.token("a")).await, 200, "RS256 by A");
    assert_eq!(
        status(&base, idp.token("hs_as_a")).await,
        401,
        "HS256 naming a JWKS key id is refused, even with the right secret"
    );
    assert_eq!(
        status(&base, idp.token("b_as_a")).await,
        401,
        "ES256 naming the RS256 key A is refused"
    );
    assert_eq!(
        status(&base, idp.token("service")).await,
        200,
        "a service token signed with JWT_SECRET still passes"
    );
}

#[tokio::test]
async fn jwks_combines_with_a_public_key_file() {
    let idp = idp().await;
    let server = JwksServer::start(&idp.set(&["A"])).await;
    let pem = std::env::temp_dir().join(format!("jobcast-test-{:016x}.pem", rand::random::<u64>()));
    std::fs::write(&pem, idp.pem("P")).expect("write the PEM");
    let pem_path = pem.clone();
    let url = server.url();
    let app = spawn_app_with(Options {
        tweak: Box::new(move |s| {
            s.jwt_jwks_url = Some(url);
            s.jwt_secret = None;
            s.jwt_public_key_file = Some(pem_path);
        }),
        ..Default::default()
    })
    .await;
    app.set("job1", DOC).await;
    let base = app.url("");
    assert_eq!(status(&base, idp.token("a")).await, 200, "from the set");
    assert_eq!(
        status(&base, idp.token("p")).await,
        200,
        "from the PEM file"
    );
    assert_eq!(
        status(&base, idp.token("service")).await,
        401,
        "no secret set"
    );
    let _ = std::fs::remove_file(pem);
}

/// `App::build` with only `JWT_JWKS_URL` = `url`: the error it refuses with.
async fn build_error(url: String, with_secret: bool) -> Option<String> {
    let redis = RedisServer::start().await;
    let mut s = crate::app::test_settings(&redis);
    s.jwt_jwks_url = Some(url);
    if !with_secret {
        s.jwt_secret = None;
    }
    jobcast::startup::App::build(s)
        .await
        .err()
        .map(|e| format!("{e:#}"))
}

#[tokio::test]
async fn unusable_jwks_refuses_to_start_unless_another_key_is_configured() {
    let server = JwksServer::start("<html>not json</html>").await;
    let e = build_error(server.url(), false).await.expect("refused");
    assert!(
        e.contains("JWT_JWKS_URL") && e.contains("not a JWK Set"),
        "{e}"
    );

    server.serve(r#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"},{"kty":"RSA","kid":"x","use":"enc","e":"AQAB","n":"AQAB"}]}"#);
    let e = build_error(server.url(), false).await.expect("refused");
    assert!(e.contains("no usable key"), "{e}");

    server.set(404, r#"{"error":"not found"}"#, None);
    let e = build_error(server.url(), false).await.expect("refused");
    assert!(e.contains("HTTP 404"), "{e}");

    let closed = format!("http://127.0.0.1:{}/jwks", crate::support::free_port());
    let e = build_error(closed.clone(), false).await.expect("refused");
    assert!(e.contains("could not be read"), "{e}");
    assert_eq!(
        build_error(closed, true).await,
        None,
        "with JWT_SECRET as well, the gateway starts and keeps trying"
    );
}

#[tokio::test]
async fn the_binary_names_the_jwks_problem_and_exits() {
    let server = JwksServer::start(r#"{"keys":[]}"#).await;
    let redis = RedisServer::start().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobcast"))
        .env("REDIS_URL", redis.url())
        .env("JWT_JWKS_URL", server.url())
        .env("JOBCAST_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .env_remove("JWT_SECRET")
        .env_remove("JWT_PUBLIC_KEY_FILE")
        .env_remove("DATABASE_URL")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("jobcast exits in time")
        .expect("jobcast ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it must not start: {stderr}");
    assert!(
        stderr.contains("JWT_JWKS_URL") && stderr.contains("no usable key"),
        "a clear message: {stderr}"
    );
}
