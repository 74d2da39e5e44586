//! [`Chromium`]: a headless Chromium per test, driven over the Chrome DevTools
//! Protocol by a minimal client on `tokio-tungstenite`, for the handful of
//! commands the tests use (navigate, reload, evaluate, console, screenshot).
//!
//! Why not a driver crate (measured 2026-12-01, against this Cargo.lock, dev
//! profile, a clean build on the 2-core machine the suite runs on):
//! - `chromiumoxide` 0.9 adds 12 crates, among them a second `reqwest` (0.13)
//!   and `tungstenite` (0.28) and `chromiumoxide_cdp`, the generated protocol:
//!   about 70 s of CPU for the new crates, 257 s wall for `chromiumoxide_cdp`
//!   alone while other builds shared the cores. Its protocol types are pinned
//!   to one Chromium revision; Debian's `chromium` moves on its own.
//! - `headless_chrome` 1.0 adds 23 crates and generates the protocol in a
//!   build script; its API blocks (a thread per browser under tokio).
//! - `fantoccini` 0.22 adds 22 crates (a second `http`, `cookie` and an ICU
//!   stack through `webdriver`) plus a `chromedriver` process, and WebDriver
//!   has no portable way to read the console the failure messages show.
//!
//! Each costs more build time, in every clean CI build, than this file costs
//! to keep; the public helpers below stay the same if that changes.
//!
//! The browser starts with a fresh profile in a scratch directory and
//! `--remote-debugging-port=0`; its stderr says where DevTools listens. One
//! WebSocket to the browser carries every command; pages are attached in
//! "flatten" mode, so a command for a page is the same message plus its
//! `sessionId`. Dropping the value kills the browser's whole process group and
//! removes the profile.
//!
//! The binary is `chromium` from `PATH`, or `JOBCAST_CHROMIUM_BIN` if set
//! (`scripts/test.sh` sets it).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Mutex as AsyncMutex, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::clients::WsStream;

/// Flags for a quiet, reproducible headless browser in a container: no
/// sandbox (we run as root), no GPU, no background traffic to Google, no QUIC.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-default-browser-check",
    "--no-first-run",
    "--disable-quic",
    "--mute-audio",
    // Keeps crash dumps out of $HOME/.config: the profile dir is all we own.
    "--disable-crash-reporter",
    "--disable-breakpad",
    "--remote-debugging-port=0",
];
/// How long the browser may take to say where DevTools listens.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one CDP command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// Browser stderr lines kept for failure messages.
const STDERR_TAIL_LINES: usize = 40;
/// Console messages and exceptions kept per browser, for failure messages.
const CONSOLE_LOG_LINES: usize = 200;
/// The viewport pages get (and screenshots show).
pub const VIEWPORT: (u32, u32) = (960, 900);

type Reply = Result<Value, Value>;

/// The one DevTools connection: commands go out through `sink`; a reader task
/// routes each reply to the waiting command by `id` and keeps console output.
struct Cdp {
    sink: AsyncMutex<SplitSink<WsStream, Message>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
    console: Mutex<VecDeque<String>>,
}

impl Cdp {
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            msg["sessionId"] = session.into();
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.sink
            .lock()
            .await
            .send(Message::text(msg.to_string()))
            .await
            .unwrap_or_else(|e| panic!("CDP send {method}: {e}"));
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Err(_) => panic!("CDP {method}: no reply within {COMMAND_TIMEOUT:?}"),
            Ok(Err(_)) => panic!("CDP {method}: the browser connection closed"),
            Ok(Ok(Err(error))) => panic!("CDP {method} failed: {error}"),
            Ok(Ok(Ok(result))) => result,
        }
    }

    /// Reader task: replies to their commands; console and exceptions to the log.
    fn dispatch(&self, msg: Value) {
        if let Some(id) = msg["id"].as_u64() {
            if let Some(tx) = self.pending.lock().unwrap().remove(&id) {
                let reply = match msg.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(msg["result"].clone()),
                };
                let _ = tx.send(reply);
            }
            return;
        }
        let line = match msg["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = msg["params"]["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| match &a["value"] {
                        Value::String(s) => s.clone(),
                        Value::Null => a["description"].as_str().unwrap_or("?").to_owned(),
                        v => v.to_string(),
                    })
                    .collect();
                format!(
                    "console.{}: {}",
                    msg["params"]["type"].as_str().unwrap_or("log"),
                    args.join(" ")
                )
            }
            Some("Runtime.exceptionThrown") => {
                let d = &msg["params"]["exceptionDetails"];
                format!(
                    "exception: {} {}",
                    d["text"].as_str().unwrap_or(""),
                    d["exception"]["description"].as_str().unwrap_or("")
                )
            }
            Some("Log.entryAdded") => format!(
                "log.{}: {} {}",
                msg["params"]["entry"]["level"].as_str().unwrap_or(""),
                msg["params"]["entry"]["text"].as_str().unwrap_or(""),
                msg["params"]["entry"]["url"].as_str().unwrap_or("")
            ),
            _ => return,
        };
        let mut console = self.console.lock().unwrap();
        if console.len() == CONSOLE_LOG_LINES {
            console.pop_front();
        }
        console.push_back(line);
    }

    /// The connection is gone: every waiting command fails now, not at its timeout.
    fn close_all(&self) {
        self.pending.lock().unwrap().clear();
    }
}

/// A running headless Chromium owned by one test. See the module docs.
pub struct Chromium {
    // Declared first so the connection goes before the process. The process
    // is held only to be killed (and its profile removed) on drop.
    cdp: Arc<Cdp>,
    _process: Process,
}

/// The browser's process group and profile; dropping it kills and removes both.
struct Process {
    child: Child,
    profile: PathBuf,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

/// One tab, attached to the browser's DevTools connection.
pub struct Page {
    cdp: Arc<Cdp>,
    session: String,
    target: String,
}

impl Chromium {
    /// Starts the browser and connects to DevTools; panics (with the
    /// browser's stderr) when that does not happen within 30 s.
    pub async fn launch() -> Chromium {
        let profile = std::env::temp_dir().join(format!(
            "jobcast-test-chromium-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        fs::create_dir_all(&profile).expect("create chromium profile dir");
        let binary = chromium_binary();
        let mut child = Command::new(&binary)
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--window-size={},{}", VIEWPORT.0, VIEWPORT.1))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: Drop kills the renderers and helpers too.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "spawn {}: {e} (install it with scripts/test.sh, or set JOBCAST_CHROMIUM_BIN)",
                    binary.to_string_lossy()
                )
            });

        // A thread drains stderr for the browser's whole life (a full pipe
        // would stall it), hands over the DevTools URL, and keeps a tail.
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (url_tx, url_rx) = oneshot::channel::<String>();
        {
            let tail = Arc::clone(&stderr_tail);
            std::thread::spawn(move || {
                let mut url_tx = Some(url_tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(url) = line.strip_prefix("DevTools listening on ")
                        && let Some(tx) = url_tx.take()
                    {
                        let _ = tx.send(url.trim().to_owned());
                    }
                    let mut tail = tail.lock().unwrap();
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            });
        }
        let process = Process {
            child,
            profile,
            stderr_tail,
        };
        let url = match tokio::time::timeout(LAUNCH_TIMEOUT, url_rx).await {
            Ok(Ok(url)) => url,
            _ => panic!(
                "chromium did not report its DevTools URL within {LAUNCH_TIMEOUT:?}; stderr:\n{}",
                process.stderr()
            ),
        };
        Chromium {
            cdp: connect_devtools(&url).await,
            _process: process,
        }
    }

    /// A new tab at `about:blank`, with console capture on and the viewport
    /// fixed at [`VIEWPORT`].
    pub async fn new_page(&self) -> Page {
        let target = self
            .cdp
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = self
            .cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        let page = Page {
            cdp: Arc::clone(&self.cdp),
            session: attached["sessionId"]
                .as_str()
                .expect("attachToTarget gives a sessionId")
                .to_owned(),
            target: target["targetId"]
                .as_str()
                .expect("createTarget gives a targetId")
                .to_owned(),
        };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            page.call(domain, json!({})).await;
        }
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": VIEWPORT.0, "height": VIEWPORT.1, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        page
    }
}

impl Process {
    fn stderr(&self) -> String {
        let tail = self.stderr_tail.lock().unwrap();
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group created for this child.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.profile);
    }
}

impl Page {
    async fn call(&self, method: &str, params: Value) -> Value {
        self.cdp.call(Some(&self.session), method, params).await
    }

    /// Starts loading `url` (does not wait for the load; wait on the DOM).
    pub async fn goto(&self, url: &str) {
        let r = self.call("Page.navigate", json!({ "url": url })).await;
        if let Some(error) = r["errorText"].as_str() {
            panic!("navigate to {url}: {error}");
        }
    }

    /// Loads `url` and waits (bounded) until its document is complete.
    pub async fn open(&self, url: &str, timeout: Duration) {
        self.goto(url).await;
        self.wait_js(
            "location.href !== 'about:blank' && document.readyState === 'complete'",
            &format!("{url} loads"),
            timeout,
        )
        .await;
    }

    /// Closes the tab, as the user's Ctrl+W does: its scripts stop, its
    /// connections close and its Web Locks are released.
    pub async fn close(self) {
        self.cdp
            .call(
                None,
                "Target.closeTarget",
                json!({ "targetId": self.target }),
            )
            .await;
    }

    /// Reloads the page, as the user's F5 does (localStorage stays).
    pub async fn reload(&self) {
        self.call("Page.reload", json!({ "ignoreCache": false }))
            .await;
    }

    /// Evaluates `expression` in the page and returns its value as JSON
    /// (promises are awaited). A thrown exception yields `Err(description)`.
    pub async fn eval(&self, expression: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(details) = r.get("exceptionDetails") {
            return Err(details["exception"]["description"]
                .as_str()
                .or(details["text"].as_str())
                .unwrap_or("exception")
                .to_owned());
        }
        Ok(r["result"]["value"].clone())
    }

    /// `textContent` of the element with this id (`None` while it is absent,
    /// e.g. during a navigation).
    pub async fn text(&self, id: &str) -> Option<String> {
        let expr = format!("document.getElementById({id:?})?.textContent ?? null");
        self.eval(&expr)
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
    }

    /// Polls until the element `id` reads exactly `want`; panics after
    /// `timeout` with what it read last, the page's console and its DOM state.
    pub async fn wait_text(&self, id: &str, want: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.text(id).await;
            if got.as_deref() == Some(want) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "#{id} did not read {want:?} within {timeout:?} (last: {got:?}); {}",
                    self.diagnostics().await
                );
            }
            tokio::time::sleep(super::POLL_INTERVAL).await;
        }
    }

    /// Polls until `expression` evaluates to `true`; panics after `timeout`
    /// naming `what`, with the page's state and console.
    pub async fn wait_js(&self, expression: &str, what: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.eval(expression).await;
            if got == Ok(Value::Bool(true)) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting until {what} (last: {got:?}); {}",
                    self.diagnostics().await
                );
            }
            tokio::time::sleep(super::POLL_INTERVAL).await;
        }
    }

    /// Waits until no CSS transition or animation is running (bars have
    /// slid to their values), so a screenshot shows the state, not a frame
    /// of the way there.
    pub async fn wait_at_rest(&self, timeout: Duration) {
        self.wait_js(
            "document.getAnimations().every(a => a.playState !== 'running')",
            "the page is at rest (no running transition)",
            timeout,
        )
        .await;
    }

    /// The page's indicators and console, for failure messages.
    pub async fn diagnostics(&self) -> String {
        let mut out = String::from("page state:");
        for id in [
            "status",
            "overall-pct",
            "transport",
            "conn-state",
            "error",
            "stage",
        ] {
            out.push_str(&format!(" #{id}={:?}", self.text(id).await));
        }
        out.push_str("\nconsole:\n");
        for line in self.cdp.console.lock().unwrap().iter() {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Saves a PNG of the viewport to `path` (creating its directory).
    pub async fn screenshot(&self, path: &Path) {
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot is base64");
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).expect("create screenshot dir");
        }
        fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// Opens the DevTools WebSocket and starts the task that reads it.
async fn connect_devtools(url: &str) -> Arc<Cdp> {
    let (ws, _) = tokio::time::timeout(COMMAND_TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .expect("DevTools WebSocket connect in time")
        .unwrap_or_else(|e| panic!("connect to DevTools at {url}: {e}"));
    let (sink, mut stream) = ws.split();
    let cdp = Arc::new(Cdp {
        sink: AsyncMutex::new(sink),
        pending: Mutex::default(),
        next_id: AtomicU64::new(1),
        console: Mutex::default(),
    });
    let reader = Arc::clone(&cdp);
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Text(text) = msg
                && let Ok(value) = serde_json::from_str::<Value>(text.as_str())
            {
                reader.dispatch(value);
            }
        }
        reader.close_all();
    });
    cdp
}

fn chromium_binary() -> OsString {
    std::env::var_os("JOBCAST_CHROMIUM_BIN").unwrap_or_else(|| "chromium".into())
}

/// `target/test-artifacts/{name}`: where tests leave files for people to look at.
pub fn artifact_path(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("test-artifacts").join(name)
}
