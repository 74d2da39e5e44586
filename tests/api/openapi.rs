//! docs/openapi.yaml against the real gateway: it is what `GET /openapi.yaml`
//! serves, and schemathesis (the PyPI fuzzer, installed by scripts/test.sh into
//! `.jobcast/venv`) generates requests for every non-streaming route and the
//! long-poll from it and checks that no answer is a 5xx and every answer's
//! status, content type, headers and body are the ones the document describes.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::app::{Options, claims, sign, spawn_app, spawn_app_with};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Bound on the whole fuzzing run.
const FUZZ_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test]
async fn openapi_yaml_is_served_and_is_the_documented_file() {
    let app = spawn_app().await;
    let res = reqwest::get(app.url("/openapi.yaml")).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/yaml"
    );
    let body = res.text().await.unwrap();
    let file = std::fs::read_to_string(format!("{REPO}/docs/openapi.yaml")).unwrap();
    assert_eq!(body, file);
    assert!(body.starts_with("# ") && body.contains("\nopenapi: 3.1."));
    // Every route the gateway defines (src/http/*.rs, `warp::path!(...)`) is
    // described, so a new route cannot go undocumented.
    let routes = defined_routes();
    assert!(routes.len() >= 8, "{routes:?}");
    for route in routes {
        assert!(
            body.contains(&format!("\n  {route}:\n")),
            "{route} is defined in src/http but not described in docs/openapi.yaml"
        );
    }
}

/// `/jobs/{job_id}/events`, ... from the `warp::path!` macros of src/http.
fn defined_routes() -> Vec<String> {
    let mut routes = Vec::new();
    for entry in std::fs::read_dir(format!("{REPO}/src/http")).unwrap() {
        let src = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for (at, _) in src.match_indices("warp::path!(") {
            let rest = &src[at + "warp::path!(".len()..];
            let args = &rest[..rest.find(')').expect("closing parenthesis")];
            let mut previous = "";
            let path: String = args
                .split('/')
                .map(|seg| {
                    let seg = seg.trim();
                    let part = match (seg, previous) {
                        ("String", "\"groups\"") => "/{group}".to_owned(),
                        ("String", _) => "/{job_id}".to_owned(),
                        (quoted, _) => format!("/{}", quoted.trim_matches('"')),
                    };
                    previous = seg;
                    part
                })
                .collect();
            if !routes.contains(&path) {
                routes.push(path);
            }
        }
    }
    routes
}

fn schemathesis() -> String {
    let bin = std::env::var("JOBCAST_SCHEMATHESIS")
        .unwrap_or_else(|_| format!("{REPO}/.jobcast/venv/bin/schemathesis"));
    let ok = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "schemathesis not found at {bin}: run scripts/test.sh (it installs it into .jobcast/venv), \
         or set JOBCAST_SCHEMATHESIS"
    );
    bin
}

#[tokio::test]
async fn schemathesis_finds_no_5xx_and_no_undocumented_answer() {
    let bin = schemathesis();
    let app = spawn_app_with(Options {
        postgres: true,
        ..Default::default()
    })
    .await;
    // The document's example job exists, so examples reach the 200 answers.
    app.set(
        "8ae7f267",
        r#"{"seq":3,"owner_id":"user-42","status":"running","overall_progress":20}"#,
    )
    .await;
    let mut c = claims("fuzzer");
    c.roles = vec!["admin".into(), "publisher".into()];
    c.jobs = vec!["*".into()];
    let token = sign(&c);
    let run = Command::new(&bin)
        .args([
            "--no-color",
            "--config-file",
            &format!("{REPO}/tests/api/openapi/schemathesis.toml"),
            "run",
            &app.url("/openapi.yaml"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
            "--header",
            &format!("Authorization: Bearer {token}"),
            // SSE and WebSocket streams stay open until the job ends; the
            // self-test's stream takes two seconds a request.
            "--exclude-path-regex",
            "/(events|ws|buffering)$",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "40",
            "--request-timeout",
            "10",
            // One worker: the suite runs latency-bound tests beside this one.
            "--workers",
            "1",
            "--seed",
            "20261201",
        ])
        // schemathesis and hypothesis keep caches in the working directory.
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(FUZZ_TIMEOUT, run)
        .await
        .expect("schemathesis finished in time")
        .expect("spawn schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not a vacuous pass: the run says how many operations it tested.
    let tested: usize = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no \"Tested: N\" line in:\n{stdout}"));
    assert!(
        tested >= 7,
        "poll, snapshot, publish, preflight and the operator routes were fuzzed: {tested}\n{stdout}"
    );
    assert!(stdout.contains("No issues found"), "{stdout}");
}
