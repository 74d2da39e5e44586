//! `ChildApp`: the real `jobcast` binary as a separate process, for what only a
//! process can show — its own memory, its own metrics registry, its log lines on
//! stderr, and its reaction to signals.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::support::{free_port, wait_until};

pub struct ChildApp {
    pub port: u16,
    pub child: tokio::process::Child,
    pub log_path: PathBuf,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A scratch directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl ChildApp {
    /// Starts `jobcast serve` against `redis_url` with the test secret and
    /// `envs`, and waits (bounded) until it accepts connections.
    pub async fn spawn(redis_url: &str, envs: &[(&str, String)]) -> ChildApp {
        Self::spawn_with_nofile(free_port(), redis_url, envs, None).await
    }

    /// Like [`ChildApp::spawn`], on a given port (a restart where the last
    /// process listened, so clients find it again).
    pub async fn spawn_at(port: u16, redis_url: &str, envs: &[(&str, String)]) -> ChildApp {
        Self::spawn_with_nofile(port, redis_url, envs, None).await
    }

    /// Like [`ChildApp::spawn_at`], with the process's open-file limit (soft
    /// and hard) set to `nofile` before it starts, where given.
    pub async fn spawn_with_nofile(
        port: u16,
        redis_url: &str,
        envs: &[(&str, String)],
        nofile: Option<u64>,
    ) -> ChildApp {
        let (mut cmd, log_path, dir) = command(redis_url, port, envs);
        if let Some(limit) = nofile {
            // SAFETY: only setrlimit(2), async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("spawn jobcast");
        wait_until(
            Duration::from_secs(15),
            "the jobcast process listens",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        ChildApp {
            port,
            child,
            log_path,
            _dir: dir,
        }
    }

    /// Runs `jobcast serve` where it is expected to refuse to start: waits
    /// (bounded) for it to exit and returns whether it succeeded and its stderr.
    pub async fn run_to_exit(redis_url: &str, envs: &[(&str, String)]) -> (bool, String) {
        let (mut cmd, log_path, _dir) = command(redis_url, free_port(), envs);
        let status = tokio::time::timeout(Duration::from_secs(20), cmd.status())
            .await
            .expect("jobcast exits within 20 s")
            .expect("run jobcast");
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        (status.success(), log)
    }

    /// Open file descriptors of the process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Peak resident memory of the process so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Waits (bounded) until the process has exited, and returns how.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the process exits in time")
            .expect("wait")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

/// `jobcast serve` on `port` against `redis_url`, stderr to a log file in a
/// scratch directory (returned, removed on drop).
fn command(
    redis_url: &str,
    port: u16,
    envs: &[(&str, String)],
) -> (tokio::process::Command, PathBuf, tempdir::Dir) {
    let dir = std::env::temp_dir().join(format!("jobcast-child-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let log_path = dir.join("stderr.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobcast"));
    cmd.env("REDIS_URL", redis_url)
        .env("JWT_SECRET", crate::app::SECRET)
        .env("JOBCAST_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "JOBCAST_STATIC_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/static"),
        )
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .env_remove("JOBCAST_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.arg("serve");
    (cmd, log_path, tempdir::Dir(dir))
}

/// Sums the samples of `name` whose label set contains every `k="v"` of `labels`
/// (comma-separated; empty matches all).
pub fn metric_value(text: &str, name: &str, labels: &str) -> f64 {
    let wanted: Vec<&str> = labels
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_set) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric == name && wanted.iter().all(|w| label_set.split(',').any(|l| l == *w)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

impl crate::clients::Gateway for ChildApp {
    fn url(&self, path: &str) -> String {
        ChildApp::url(self, path)
    }

    fn ws_url(&self, path: &str) -> String {
        ChildApp::ws_url(self, path)
    }
}
