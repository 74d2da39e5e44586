//! [`Nginx`]: a private nginx per test, rendered from
//! `nginx/strict.conf.template` (the deliberately hostile proxy: gzip on
//! `text/event-stream`, `proxy_buffering on`, a short `proxy_read_timeout`),
//! listening on a free loopback port in front of one upstream. It runs in the
//! foreground (`daemon off` in the template) as a child of the test, with its
//! pid, logs and temp files in a scratch directory; dropping the value stops
//! it and removes that directory (kept, and its error log printed, when the
//! test failed).
//!
//! [`Nginx::production`] runs the shipped `nginx/jobcast.conf` instead, as
//! written, made runnable here: plain HTTP on loopback in place of its TLS and
//! IPv6 listeners, its upstream pointed at the test's gateway, its logs in the
//! scratch directory.
//!
//! [`Nginx::cluster`] runs the shipped `nginx/cluster.conf` the same way, its
//! upstream's servers pointed at several gateways.
//!
//! The binary is `nginx` from `PATH` (plus `/usr/sbin`), or
//! `JOBCAST_NGINX_BIN` if set (`scripts/test.sh` sets it).

use std::ffi::OsString;
use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/nginx/strict.conf.template");
const PRODUCTION: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/nginx/jobcast.conf");
const CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/nginx/cluster.conf");
/// The upstream addresses written in `nginx/cluster.conf`, in order.
const CLUSTER_UPSTREAMS: [&str; 3] = ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"];
/// How long a start may take before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful stop may take before the process group is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a fresh port is tried when another process took the first.
const PORT_ATTEMPTS: usize = 5;
const ERROR_LOG: &str = "error.log";

/// The route blocks the tests insert: what a network that refuses a
/// transport looks like from the browser (`502` before the upstream).
/// The self-test's probes (`/debug/…`) are refused along with the routes
/// they stand for.
pub const BLOCK_SSE: &str = r"location ~ ^/(jobs/[^/]+/events|debug/buffering)$ { return 502; }";
pub const BLOCK_WS: &str = r"location ~ ^/(jobs/[^/]+/ws|debug/ws)$ { return 502; }";
/// A proxy that defeats `X-Accel-Buffering: no`: it ignores the header (so
/// `proxy_buffering on` applies) and hides it from the client.
pub const STRIP_ACCEL_BUFFERING: &str =
    "proxy_ignore_headers X-Accel-Buffering; proxy_hide_header X-Accel-Buffering;";
/// A proxy that drops the upstream's `Content-Encoding: identity`, so its
/// `gzip` compresses the event stream.
pub const STRIP_CONTENT_ENCODING: &str = "proxy_hide_header Content-Encoding;";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    Strict,
    Production,
    Cluster,
}

/// Options for the strict template; see [`Nginx::strict`].
#[derive(Debug, Clone)]
pub struct NginxBuilder {
    config: Config,
    upstream_port: u16,
    /// The gateways behind `nginx/cluster.conf`.
    cluster_ports: Vec<u16>,
    proxy_extra: String,
    read_timeout: String,
    block_sse: bool,
    block_ws: bool,
}

impl NginxBuilder {
    /// `proxy_read_timeout`, in nginx syntax (`2s`, `20s`). Default `20s`.
    pub fn read_timeout(mut self, timeout: &str) -> Self {
        self.read_timeout = timeout.to_owned();
        self
    }

    /// Answer `/jobs/{id}/events` with `502` instead of proxying it.
    pub fn block_sse(mut self) -> Self {
        self.block_sse = true;
        self
    }

    /// Answer `/jobs/{id}/ws` with `502` instead of proxying it.
    pub fn block_ws(mut self) -> Self {
        self.block_ws = true;
        self
    }

    /// Adds directives to the strict template's proxied location.
    pub fn proxy_directives(mut self, directives: &str) -> Self {
        self.proxy_extra.push_str(directives);
        self.proxy_extra.push(' ');
        self
    }

    /// Starts nginx and waits (at most 10 s) until it answers HTTP.
    pub async fn start(self) -> Nginx {
        let dir = scratch_dir();
        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = super::free_port();
            match launch(&self, &dir, port).await {
                Ok(child) => {
                    return Nginx {
                        port,
                        dir,
                        child: Some(child),
                    };
                }
                Err(Failure::AddressInUse(log)) => last_failure = log,
                Err(Failure::Fatal(message)) => panic!("{message}"),
            }
        }
        panic!("nginx found no free port in {PORT_ATTEMPTS} attempts; last log:\n{last_failure}");
    }

    fn render(&self, dir: &Path, port: u16) -> String {
        if self.config != Config::Strict {
            return self.render_production(dir, port);
        }
        let template = fs::read_to_string(TEMPLATE)
            .unwrap_or_else(|e| panic!("read nginx template {TEMPLATE}: {e}"));
        let conf = template
            .replace("{{PREFIX}}", &dir.to_string_lossy())
            .replace("{{PORT}}", &port.to_string())
            .replace("{{UPSTREAM_PORT}}", &self.upstream_port.to_string())
            .replace("{{READ_TIMEOUT}}", &self.read_timeout)
            .replace("{{BLOCK_SSE}}", if self.block_sse { BLOCK_SSE } else { "" })
            .replace("{{BLOCK_WS}}", if self.block_ws { BLOCK_WS } else { "" })
            .replace("{{PROXY_EXTRA}}", &self.proxy_extra);
        assert!(
            !conf.contains("{{"),
            "the nginx template has a placeholder this helper does not fill:\n{conf}"
        );
        conf
    }

    /// `nginx/jobcast.conf` inside a minimal main context, with its listeners,
    /// upstream and log paths rewritten for this machine (see the module docs).
    fn render_production(&self, dir: &Path, port: u16) -> String {
        let (path, upstreams): (&str, Vec<(&str, u16)>) = match self.config {
            Config::Cluster => (
                CLUSTER,
                CLUSTER_UPSTREAMS
                    .iter()
                    .copied()
                    .zip(self.cluster_ports.iter().copied())
                    .collect(),
            ),
            _ => (PRODUCTION, vec![("127.0.0.1:8080", self.upstream_port)]),
        };
        let shipped =
            fs::read_to_string(path).unwrap_or_else(|e| panic!("read nginx config {path}: {e}"));
        let prefix = dir.to_string_lossy();
        let redirect_port = super::free_port();
        let mut body = String::new();
        for line in shipped.lines() {
            let t = line.trim_start();
            if t.starts_with("ssl_") || t.starts_with("listen [::]") {
                continue;
            }
            let line = if t.starts_with("listen 443") {
                format!("    listen 127.0.0.1:{port};")
            } else if t.starts_with("listen 80;") {
                format!("    listen 127.0.0.1:{redirect_port};")
            } else {
                let mut line = line.replace("/var/log/nginx/", &format!("{prefix}/"));
                for (from, to) in &upstreams {
                    line = line.replace(from, &format!("127.0.0.1:{to}"));
                }
                line
            };
            body.push_str(&line);
            body.push('\n');
        }
        for left in ["/etc/ssl", "/var/log", "127.0.0.1:808", " ssl"] {
            assert!(
                !body
                    .lines()
                    .any(|l| !l.trim_start().starts_with('#') && l.contains(left)),
                "{path} changed shape: {left:?} survived the rewrite:\n{body}"
            );
        }
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {prefix}/nginx.pid;\n\
             error_log {prefix}/error.log;\nevents {{ worker_connections 4096; }}\nhttp {{\n\
             client_body_temp_path {prefix}/client_body_temp;\nproxy_temp_path {prefix}/proxy_temp;\n\
             fastcgi_temp_path {prefix}/fastcgi_temp;\nuwsgi_temp_path {prefix}/uwsgi_temp;\n\
             scgi_temp_path {prefix}/scgi_temp;\naccess_log {prefix}/access.log;\n\
             default_type application/octet-stream;\n{body}}}\n"
        )
    }
}

/// A running nginx owned by one test. See the module docs.
#[derive(Debug)]
pub struct Nginx {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

enum Failure {
    /// The port was taken between `free_port()` and the bind: try another.
    AddressInUse(String),
    Fatal(String),
}

impl Nginx {
    /// The strict template in front of `127.0.0.1:upstream_port`.
    pub fn strict(upstream_port: u16) -> NginxBuilder {
        NginxBuilder {
            config: Config::Strict,
            upstream_port,
            cluster_ports: Vec::new(),
            proxy_extra: String::new(),
            read_timeout: "20s".into(),
            block_sse: false,
            block_ws: false,
        }
    }

    /// The shipped `nginx/jobcast.conf` in front of `127.0.0.1:upstream_port`.
    pub fn production(upstream_port: u16) -> NginxBuilder {
        NginxBuilder {
            config: Config::Production,
            ..Nginx::strict(upstream_port)
        }
    }

    /// The shipped `nginx/cluster.conf` in front of the gateways on
    /// `upstream_ports` (as many as the file lists, in order).
    pub fn cluster(upstream_ports: &[u16]) -> NginxBuilder {
        assert_eq!(
            upstream_ports.len(),
            CLUSTER_UPSTREAMS.len(),
            "nginx/cluster.conf lists {} instances",
            CLUSTER_UPSTREAMS.len()
        );
        NginxBuilder {
            config: Config::Cluster,
            cluster_ports: upstream_ports.to_vec(),
            ..Nginx::strict(upstream_ports[0])
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// `ws://127.0.0.1:PORT{path}`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }

    /// nginx's error log so far, for assertion messages.
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join(ERROR_LOG)).unwrap_or_default()
    }

    /// SIGTERM (nginx's fast shutdown), bounded; then SIGKILL to the whole
    /// process group, so no worker outlives the test.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on the process we spawned.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: the group was created for this child (`process_group(0)`).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "nginx scratch dir kept at {}; error log:\n{}",
                self.dir.display(),
                self.error_log()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Renders the config for `port`, spawns nginx and waits until it answers.
async fn launch(opts: &NginxBuilder, dir: &Path, port: u16) -> Result<Child, Failure> {
    fs::create_dir_all(dir)
        .map_err(|e| Failure::Fatal(format!("create nginx scratch dir {}: {e}", dir.display())))?;
    let _ = fs::remove_file(dir.join(ERROR_LOG));
    let conf = dir.join("nginx.conf");
    fs::write(&conf, opts.render(dir, port))
        .map_err(|e| Failure::Fatal(format!("write {}: {e}", conf.display())))?;

    let binary = nginx_binary();
    let mut child = Command::new(&binary)
        // Before the config is read nginx logs to its compiled-in path; -e keeps
        // even that in the scratch directory.
        .arg("-e")
        .arg(dir.join(ERROR_LOG))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so Drop can take the workers down with it.
        .process_group(0)
        .spawn()
        .map_err(|e| {
            Failure::Fatal(format!(
                "spawn {}: {e} (install it with scripts/test.sh, or set JOBCAST_NGINX_BIN)",
                binary.to_string_lossy()
            ))
        })?;

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = fs::read_to_string(dir.join(ERROR_LOG)).unwrap_or_default();
            return Err(if log.contains("Address already in use") {
                Failure::AddressInUse(log)
            } else {
                Failure::Fatal(format!(
                    "nginx on port {port} exited at start ({status}); config {}; log:\n{log}",
                    conf.display()
                ))
            });
        }
        if answers_http(port).await {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            // SAFETY: kill(2) on the group of the process we spawned.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            return Err(Failure::Fatal(format!(
                "nginx on port {port} did not answer within {READY_TIMEOUT:?}; log:\n{}",
                fs::read_to_string(dir.join(ERROR_LOG)).unwrap_or_default()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True when something on `port` answers an HTTP request with a status line
/// (whatever the status: the upstream may not be up yet), within half a second.
async fn answers_http(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut head = [0u8; 7];
        stream.read_exact(&mut head).await?;
        std::io::Result::Ok(&head == b"HTTP/1.")
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Ok(true))
    )
}

fn nginx_binary() -> OsString {
    if let Some(bin) = std::env::var_os("JOBCAST_NGINX_BIN") {
        return bin;
    }
    // Debian puts it in /usr/sbin, which a non-root PATH may lack.
    match Path::new("/usr/sbin/nginx").exists() {
        true if which_in_path("nginx").is_none() => "/usr/sbin/nginx".into(),
        _ => "nginx".into(),
    }
}

fn which_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!(
        "jobcast-test-nginx-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ))
}

impl crate::clients::Gateway for Nginx {
    fn url(&self, path: &str) -> String {
        Nginx::url(self, path)
    }

    fn ws_url(&self, path: &str) -> String {
        Nginx::ws_url(self, path)
    }
}
