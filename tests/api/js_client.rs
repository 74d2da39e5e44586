//! The browser client as a package: `static/` is an npm package (jobcast.js,
//! its TypeScript declarations, the plain-`<script>` loader) that
//! `npm install <repo>/static` installs; `tsc --noEmit` type-checks the
//! declarations against the React hook example and a file of deliberate misuse
//! (examples/react, installed by scripts/test.sh); and in a real Chromium a page
//! with only a classic `<script src=jobcast.global.js>` follows a job to done,
//! and a component using the React hook (compiled by tsc, React from npm)
//! renders a job to done.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::app::{Options, spawn_app_with};
use crate::support::Chromium;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);

fn output(cmd: &mut Command, what: &str) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "{what} could not be run ({e}): this test needs node and npm (scripts/test.sh installs \
             them, and examples/react's packages with npm install --prefix examples/react)"
        )
    })
}

#[test]
fn tsc_checks_the_declarations_the_react_hook_and_their_misuse() {
    let tsc = format!("{REPO}/examples/react/node_modules/.bin/tsc");
    assert!(
        Path::new(&tsc).exists(),
        "no {tsc}: run npm install --prefix examples/react --no-audit --no-fund (scripts/test.sh does)"
    );
    // `jobcast` resolves through the installed package (file:../../static).
    let linked = std::fs::canonicalize(format!("{REPO}/examples/react/node_modules/jobcast"))
        .expect("examples/react has jobcast installed from static/");
    assert_eq!(
        linked,
        std::fs::canonicalize(format!("{REPO}/static")).unwrap()
    );

    let out = output(
        Command::new(&tsc).args(["--noEmit", "-p", &format!("{REPO}/examples/react")]),
        "tsc",
    );
    assert!(
        out.status.success(),
        "tsc --noEmit failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The misuse file really is checked: its @ts-expect-error lines are there.
    let misuse = std::fs::read_to_string(format!("{REPO}/examples/react/types-check.ts")).unwrap();
    assert!(misuse.matches("@ts-expect-error").count() >= 5);
}

#[test]
fn npm_pack_of_static_ships_the_client_its_types_and_the_script_loader() {
    let out = output(
        Command::new("npm")
            .args(["pack", "--dry-run", "--json"])
            .current_dir(format!("{REPO}/static")),
        "npm pack",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let packed: Value = serde_json::from_slice(&out.stdout).expect("npm pack --json");
    let mut files: Vec<&str> = packed[0]["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "jobcast.d.ts",
            "jobcast.global.js",
            "jobcast.js",
            "package.json"
        ],
        "the package is the client, nothing of the demo page"
    );
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{REPO}/static/package.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["name"], "jobcast");
    assert_eq!(manifest["type"], "module");
    assert_eq!(manifest["exports"]["."]["types"], "./jobcast.d.ts");
    assert_eq!(manifest["exports"]["."]["default"], "./jobcast.js");
}

/// A page with no module script of its own: only the classic loader.
const CLASSIC_PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>jobcast from a plain script tag</title>
<script src="/static/jobcast.global.js"></script>
<script>
  window.__seen = [];
  window.__done = null;
  window.addEventListener('jobcast:ready', function () { window.__readyEvent = true; });
  jobcastReady.then(function (jc) {
    var p = new URLSearchParams(location.search);
    jc.watch(p.get('job'), {
      token: p.get('token'),
      resume: false,
      onProgress: function (doc) { window.__seen.push(doc.seq); },
      onDone: function (doc) { window.__done = doc.status; },
    });
  });
</script>
"#;

#[tokio::test]
async fn a_plain_script_tag_loads_the_client_and_follows_a_job_to_done() {
    // The gateway serves a copy of static/ with the test page added.
    let dir = std::env::temp_dir().join(format!("jobcast-static-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["jobcast.js", "jobcast.global.js", "index.html"] {
        std::fs::copy(format!("{REPO}/static/{file}"), dir.join(file)).unwrap();
    }
    std::fs::write(dir.join("classic.html"), CLASSIC_PAGE).unwrap();
    let static_dir = dir.clone();
    let app = spawn_app_with(Options {
        tweak: Box::new(move |s| s.static_dir = static_dir),
        ..Default::default()
    })
    .await;
    let doc = |seq: u32, status: &str| {
        format!(r#"{{"seq":{seq},"owner_id":"alice","status":"{status}"}}"#)
    };
    app.set("classic-1", &doc(1, "running")).await;

    let browser = Chromium::launch().await;
    let page = browser.new_page().await;
    page.goto(&app.url(&format!(
        "/static/classic.html?job=classic-1&token={}",
        app.token("alice")
    )))
    .await;
    page.wait_js(
        "window.__seen && window.__seen.includes(1)",
        "the first document",
        PAGE_TIMEOUT,
    )
    .await;
    assert_eq!(
        page.eval("typeof window.jobcast.watch").await,
        Ok(Value::from("function")),
        "window.jobcast is the module"
    );
    assert_eq!(
        page.eval("window.__readyEvent === true").await,
        Ok(Value::Bool(true))
    );
    app.set("classic-1", &doc(2, "running")).await;
    page.wait_js(
        "window.__seen.includes(2)",
        "the second document",
        PAGE_TIMEOUT,
    )
    .await;
    app.set("classic-1", &doc(3, "completed")).await;
    page.wait_js("window.__done === 'completed'", "done", PAGE_TIMEOUT)
        .await;
    assert_eq!(
        page.eval("window.__seen").await,
        Ok(serde_json::json!([1, 2, 3]))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Maps the hook's bare `react` import onto the UMD global React.
const REACT_SHIM: &str = "export const { useEffect, useRef, useState } = window.React;\n";

/// A page that renders a component using the compiled useJobProgress hook.
const HOOK_PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>useJobProgress</title>
<script src="/static/react.development.js"></script>
<script src="/static/react-dom.development.js"></script>
<script type="importmap">
  {"imports": {"react": "/static/react-shim.js", "jobcast": "/static/jobcast.js"}}
</script>
<div id="root"></div>
<script type="module">
  import { useJobProgress } from '/static/useJobProgress.js';
  const p = new URLSearchParams(location.search);
  window.__tokens = 0;
  function App() {
    const getToken = async () => { window.__tokens += 1; return p.get('token'); };
    const { doc, percent, done, error } = useJobProgress(p.get('job'), { getToken });
    const text = [percent, doc ? doc.seq : '-', done, error ? error.code : ''].join('|');
    return React.createElement('p', { id: 'out' }, text);
  }
  ReactDOM.createRoot(document.getElementById('root')).render(React.createElement(App));
</script>
"#;

#[tokio::test]
async fn the_react_hook_renders_a_job_to_done_in_chromium() {
    let react = format!("{REPO}/examples/react/node_modules");
    assert!(
        Path::new(&format!("{react}/react/umd/react.development.js")).exists(),
        "no React in examples/react/node_modules: run npm install --prefix examples/react (scripts/test.sh does)"
    );
    let dir = std::env::temp_dir().join(format!("jobcast-react-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    // The hook, compiled by tsc exactly as an app's build would.
    let out = output(
        Command::new(format!("{react}/.bin/tsc")).args([
            "-p",
            &format!("{REPO}/examples/react"),
            "--noEmit",
            "false",
            "--outDir",
            dir.to_str().unwrap(),
        ]),
        "tsc",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(dir.join("useJobProgress.js").exists());
    std::fs::copy(format!("{REPO}/static/jobcast.js"), dir.join("jobcast.js")).unwrap();
    std::fs::copy(
        format!("{react}/react/umd/react.development.js"),
        dir.join("react.development.js"),
    )
    .unwrap();
    std::fs::copy(
        format!("{react}/react-dom/umd/react-dom.development.js"),
        dir.join("react-dom.development.js"),
    )
    .unwrap();
    std::fs::write(dir.join("react-shim.js"), REACT_SHIM).unwrap();
    std::fs::write(dir.join("hook.html"), HOOK_PAGE).unwrap();
    let static_dir = dir.clone();
    let app = spawn_app_with(Options {
        tweak: Box::new(move |s| s.static_dir = static_dir),
        ..Default::default()
    })
    .await;
    let doc = |seq: u32, pct: f64, status: &str| {
        format!(
            r#"{{"seq":{seq},"owner_id":"alice","status":"{status}","overall_progress":{pct}}}"#
        )
    };
    app.set("hook-1", &doc(1, 40.0, "running")).await;

    let browser = Chromium::launch().await;
    let page = browser.new_page().await;
    page.goto(&app.url(&format!(
        "/static/hook.html?job=hook-1&token={}",
        app.token("alice")
    )))
    .await;
    page.wait_text("out", "40|1|false|", PAGE_TIMEOUT).await;
    app.set("hook-1", &doc(2, 100.0, "completed")).await;
    page.wait_text("out", "100|2|true|", PAGE_TIMEOUT).await;
    assert_eq!(
        page.eval("window.__tokens").await,
        Ok(Value::from(1)),
        "getToken gave the token once"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
