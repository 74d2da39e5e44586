//! A refused token says why (RFC 6750): `WWW-Authenticate` carries
//! `error="invalid_token"` and the cause, the JSON body's `message` the same
//! cause, on streams, long-poll and the snapshot alike; a request without a
//! token gets the bare challenge.

use jobcast::auth::claims::now_secs;

use crate::app::{Options, TestApp, claims, sign, sign_with, spawn_app_with};

const CHALLENGE: &str = r#"Bearer realm="jobcast""#;

/// Status, `WWW-Authenticate` and JSON body of a GET with an optional bearer token.
async fn refused(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
) -> (u16, String, serde_json::Value) {
    let mut req = reqwest::Client::new().get(app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let www = res
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, www, res.json().await.unwrap_or_default())
}

fn with_aud_iss(aud: &str, iss: &str) -> String {
    let mut c = serde_json::to_value(claims("alice")).unwrap();
    c["aud"] = aud.into();
    c["iss"] = iss.into();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &c,
        &jsonwebtoken::EncodingKey::from_secret(crate::app::SECRET.as_bytes()),
    )
    .unwrap()
}

/// A gateway that wants `aud` "jobcast" and `iss` "https://issuer.test", with
/// job `j` (alice's) in Redis.
pub async fn app_checking_audience_and_issuer() -> TestApp {
    let app = spawn_app_with(Options {
        tweak: Box::new(|s| {
            s.jwt_audience = Some("jobcast".into());
            s.jwt_issuer = Some("https://issuer.test".into());
        }),
        ..Default::default()
    })
    .await;
    app.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    app
}

#[tokio::test]
async fn each_refused_token_names_its_cause_in_the_challenge_and_the_body() {
    let app = app_checking_audience_and_issuer().await;
    let mut expired = serde_json::to_value(claims("alice")).unwrap();
    expired["exp"] = (now_secs() - 120).into();
    expired["aud"] = "jobcast".into();
    expired["iss"] = "https://issuer.test".into();
    let expired = sign_value(&expired);
    let mut early = serde_json::to_value(claims("alice")).unwrap();
    early["nbf"] = (now_secs() + 3600).into();
    early["aud"] = "jobcast".into();
    early["iss"] = "https://issuer.test".into();
    let early = sign_value(&early);

    let cases = [
        ("expired", expired, "the token has expired (exp)"),
        ("not yet valid", early, "the token is not valid yet (nbf)"),
        (
            "bad signature",
            sign_with(&claims("alice"), "another-secret-of-32-bytes-or-more!!"),
            "the token signature or algorithm is not accepted",
        ),
        (
            "wrong audience",
            with_aud_iss("someone-else", "https://issuer.test"),
            "the token audience (aud) is not accepted",
        ),
        (
            "wrong issuer",
            with_aud_iss("jobcast", "https://evil.test"),
            "the token issuer (iss) is not accepted",
        ),
        (
            "malformed",
            "abc.def.ghi".to_owned(),
            "the token is malformed or lacks required claims (sub, exp)",
        ),
    ];
    for (name, token, cause) in cases {
        for path in ["/jobs/j/events", "/jobs/j/poll?timeout=1", "/jobs/j"] {
            let (status, www, body) = refused(&app, path, Some(&token)).await;
            assert_eq!(status, 401, "{name} on {path}");
            assert_eq!(
                www,
                format!(r#"{CHALLENGE}, error="invalid_token", error_description="{cause}""#),
                "{name} on {path}"
            );
            assert_eq!(body["error"], "unauthorized", "{name} on {path}");
            assert_eq!(body["message"], cause, "{name} on {path}");
        }
    }
}

#[tokio::test]
async fn a_request_without_a_token_gets_the_bare_challenge() {
    let app = spawn_app_with(Options::default()).await;
    app.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    for path in ["/jobs/j/events", "/jobs/j/poll?timeout=1", "/jobs/j"] {
        let (status, www, body) = refused(&app, path, None).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(www, CHALLENGE, "{path}: no error code without a token");
        assert_eq!(body["error"], "unauthorized");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no token")),
            "{path}: {body}"
        );
    }
    // The same request with a good token is let through: the 401s above are
    // about the token, not the route.
    let ok = reqwest::Client::new()
        .get(app.url("/jobs/j"))
        .bearer_auth(sign(&claims("alice")))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

fn sign_value(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(crate::app::SECRET.as_bytes()),
    )
    .unwrap()
}

/// `jobcast.js` hands the cause to the application: `err.detail` (and the end
/// of `err.message`) is the gateway's own `message`, on SSE (which learns it
/// by a probe, EventSource hiding the status) and on long-poll.
#[tokio::test]
async fn the_browser_client_reports_the_cause_of_a_refused_token() {
    use crate::support::Chromium;
    use std::time::Duration;

    let app = spawn_app_with(Options::default()).await;
    app.set("j", r#"{"seq":1,"owner_id":"alice"}"#).await;
    let bad = sign_with(&claims("alice"), "another-secret-of-32-bytes-or-more!!");
    let browser = Chromium::launch().await;
    let page = browser.new_page().await;
    page.open(&app.url("/healthz"), Duration::from_secs(10))
        .await;
    for transport in ["sse", "poll"] {
        let script = format!(
            r#"(async () => {{
                const m = await import('/static/jobcast.js');
                window.__err = null;
                m.watch('j', {{
                    token: {bad:?},
                    transports: [{transport:?}],
                    resume: false,
                    onError: (e) => {{ window.__err = {{code: e.code, detail: e.detail, message: e.message}}; }},
                }});
                return true;
            }})()"#
        );
        page.eval(&script).await.expect("watch() starts");
        page.wait_js(
            "window.__err !== null",
            "the refusal reaches onError",
            Duration::from_secs(10),
        )
        .await;
        let err = page.eval("window.__err").await.expect("error");
        let cause = "the token signature or algorithm is not accepted";
        assert_eq!(err["code"], "token_expired", "{transport}: {err}");
        assert_eq!(err["detail"], cause, "{transport}: {err}");
        assert!(
            err["message"]
                .as_str()
                .is_some_and(|m| m.ends_with(&format!("({cause})"))),
            "{transport}: {err}"
        );
    }
}
