//! Authentication and ownership, on both stream transports: every refusal comes
//! with its status and JSON body before any event is written.

use base64::Engine;
use jobcast::auth::claims::now_secs;

use crate::app::{TestApp, bearer, claims, sign, sign_with, spawn_app};
use crate::auth_causes::app_checking_audience_and_issuer;
use crate::clients::{Gateway as _, ws_connect};

async fn sse_status(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value, Option<String>) {
    let res = reqwest::Client::new()
        .get(app.url(path))
        .headers({
            let mut h = reqwest::header::HeaderMap::new();
            for (k, v) in headers {
                h.insert(
                    reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        })
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let www = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = if status == 200 {
        serde_json::Value::Null
    } else {
        res.json().await.unwrap_or_default()
    };
    (status, body, www)
}

async fn ws_status(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    match ws_connect(&app.ws_url(path), headers).await {
        Ok(_) => (101, serde_json::Value::Null),
        Err((status, body)) => (status, serde_json::from_str(&body).unwrap_or_default()),
    }
}

fn alg_none_token() -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64.encode(serde_json::to_vec(&claims("alice")).unwrap());
    format!("{header}.{body}.")
}

#[tokio::test]
async fn bad_tokens_are_401_on_both_transports() {
    let app = spawn_app().await;
    app.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let mut expired = claims("alice");
    expired.exp = now_secs() - 10;
    let mut not_yet = claims("alice");
    not_yet.nbf = Some(now_secs() + 600);
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("malformed", Some("abc.def.ghi".into())),
        ("garbage", Some("!!!".into())),
        ("expired", Some(sign(&expired))),
        ("not yet valid", Some(sign(&not_yet))),
        (
            "wrong signature",
            Some(sign_with(&claims("alice"), "another-secret")),
        ),
        ("alg none", Some(alg_none_token())),
    ];
    for (name, token) in cases {
        let auth = token.as_deref().map(bearer);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let (status, body, www) = sse_status(&app, "/jobs/j/events", &headers).await;
        assert_eq!(status, 401, "sse {name}");
        assert_eq!(body["error"], "unauthorized", "sse {name}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(
            www.is_some_and(|w| w.starts_with("Bearer")),
            "sse {name}: WWW-Authenticate"
        );
        let (status, body) = ws_status(&app, "/jobs/j/ws", &headers).await;
        assert_eq!(status, 401, "ws {name}");
        assert_eq!(body["error"], "unauthorized", "ws {name}");
    }
}

#[tokio::test]
async fn audience_and_issuer_are_checked_where_configured() {
    let app = app_checking_audience_and_issuer().await;
    #[derive(serde::Serialize)]
    struct WithAud {
        sub: &'static str,
        exp: u64,
        aud: &'static str,
        iss: &'static str,
    }
    let make = |aud, iss| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &WithAud {
                sub: "alice",
                exp: now_secs() + 60,
                aud,
                iss,
            },
            &jsonwebtoken::EncodingKey::from_secret(crate::app::SECRET.as_bytes()),
        )
        .unwrap()
    };
    let good = bearer(&make("jobcast", "https://issuer.test"));
    let wrong_aud = bearer(&make("other", "https://issuer.test"));
    let wrong_iss = bearer(&make("jobcast", "https://evil.test"));
    assert_eq!(
        sse_status(&app, "/jobs/j/events", &[("authorization", &wrong_aud)])
            .await
            .0,
        401
    );
    assert_eq!(
        sse_status(&app, "/jobs/j/events", &[("authorization", &wrong_iss)])
            .await
            .0,
        401
    );
    assert_eq!(
        ws_status(&app, "/jobs/j/ws", &[("authorization", &wrong_aud)])
            .await
            .0,
        401
    );
    let mut ok = app.sse("/jobs/j/events", &good).await;
    assert_eq!(ok.status, 200);
    ok.expect("connected").await;
}

#[tokio::test]
async fn another_users_job_is_403_and_claims_or_admin_allow() {
    let app = spawn_app().await;
    app.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    app.set("orphan", r#"{"seq":1}"#).await;
    let mallory = bearer(&app.token("mallory"));
    let (status, body, _) =
        sse_status(&app, "/jobs/j/events", &[("authorization", &mallory)]).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let (status, body) = ws_status(&app, "/jobs/j/ws", &[("authorization", &mallory)]).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    // Owner unknown: refused even to a user who might own it.
    let alice = bearer(&app.token("alice"));
    assert_eq!(
        sse_status(&app, "/jobs/orphan/events", &[("authorization", &alice)])
            .await
            .0,
        403
    );

    let mut named = claims("mallory");
    named.jobs = vec!["j".into()];
    let mut admin = claims("root");
    admin.roles = vec!["admin".into()];
    for token in [sign(&named), sign(&admin)] {
        let auth = bearer(&token);
        let mut s = app.sse("/jobs/j/events", &auth).await;
        assert_eq!(s.status, 200);
        s.expect("connected").await;
        assert!(
            app.ws_with("/jobs/j/ws", &[("authorization", &auth)])
                .await
                .is_ok()
        );
    }
    // Allowed by claim, but no source knows the job: 404.
    let auth = bearer(&sign(&admin));
    let (status, body, _) =
        sse_status(&app, "/jobs/nope/events", &[("authorization", &auth)]).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    assert_eq!(
        ws_status(&app, "/jobs/nope/ws", &[("authorization", &auth)])
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn invalid_job_ids_are_400_before_any_io() {
    let mut app = spawn_app().await;
    // With Redis gone, a 400 proves no I/O was attempted first.
    app.redis.kill();
    let auth = bearer(&app.token("alice"));
    for path in [
        "/jobs/a*b/events",
        "/jobs/a%20b/events",
        "/jobs/a%3Fb/ws",
        &format!("/jobs/{}/events", "x".repeat(201)),
    ] {
        let (status, body, _) = sse_status(&app, path, &[("authorization", &auth)]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{path}"
        );
    }
}

#[tokio::test]
async fn token_is_read_from_cookie_query_and_subprotocol() {
    let app = spawn_app().await;
    app.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let token = app.token("alice");
    let mut s = app
        .sse_with(&format!("/jobs/j/events?access_token={token}"), &[])
        .await;
    assert_eq!(s.status, 200);
    s.expect("connected").await;
    let cookie = format!("theme=dark; jobcast_token={token}");
    let mut s = app.sse_with("/jobs/j/events", &[("cookie", &cookie)]).await;
    assert_eq!(s.status, 200);
    s.expect("connected").await;
    // Header wins over a bad query token.
    let auth = bearer(&token);
    let s = app.sse("/jobs/j/events?access_token=bad", &auth).await;
    assert_eq!(s.status, 200);
}

#[tokio::test]
async fn cookie_websocket_from_foreign_origin_is_refused() {
    let app = spawn_app().await;
    app.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let cookie = format!("jobcast_token={}", app.token("alice"));
    let (status, body) = ws_status(
        &app,
        "/jobs/j/ws",
        &[("cookie", &cookie), ("origin", "https://evil.example")],
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let own = format!("http://{}", app.addr);
    assert!(
        app.ws_with("/jobs/j/ws", &[("cookie", &cookie), ("origin", &own)])
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn streams_end_with_token_expired_on_both_transports() {
    let app = spawn_app().await;
    app.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let mut c = claims("alice");
    c.exp = now_secs() + 2;
    let auth = bearer(&sign(&c));

    let mut s = app.sse("/jobs/j/events", &auth).await;
    let mut ws = app.ws("/jobs/j/ws", &auth).await;
    s.expect("connected").await;
    s.expect("progress").await;
    let err = s.expect("error").await;
    assert_eq!(err.json(), serde_json::json!({"error":"token_expired"}));
    s.expect_end().await;

    ws.expect("connected").await;
    ws.expect("progress").await;
    assert_eq!(ws.expect("error").await["error"], "token_expired");
    ws.expect_close().await;
}
