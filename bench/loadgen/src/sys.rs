//! The process side: the open-file limit, and CPU and memory of the servers
//! under test read from /proc (a server's children included, for nginx's workers).

use serde_json::{Value, json};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// CLOCK_REALTIME in ns: `sent_ns` is stamped with it and read back by the
/// subscribers; publisher and subscribers share one host, hence one clock.
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit in force.
pub fn raise_nofile() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a stack struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        let want = libc::rlimit {
            rlim_cur: rl.rlim_max,
            rlim_max: rl.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
            return rl.rlim_max;
        }
    }
    rl.rlim_cur
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// /proc/PID/stat fields after `(comm)`, so a comm with spaces cannot shift them.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = s.rfind(')')?;
    Some(
        s[close + 1..]
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    )
}

/// utime + stime in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let f = stat_fields(pid)?;
    let u: u64 = f.get(11)?.parse().ok()?;
    let s: u64 = f.get(12)?.parse().ok()?;
    Some((u + s) as f64 / clk_tck())
}

fn status_kib(path: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// PSS splits shared pages between the processes sharing them: fairer for
/// nginx, whose workers share Nchan's memory zone.
pub fn pss_kib(pid: u32) -> Option<u64> {
    status_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

fn children_of(parent: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(parent))
        .collect()
}

/// The sampled pids: the given ones and, if asked, their children (looked up
/// at every sample, so a respawned worker is still counted).
pub fn watched_pids(pids: &[u32], children: bool) -> Vec<u32> {
    let mut v = pids.to_vec();
    if children {
        for &p in pids {
            v.extend(children_of(p));
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// Busy and total jiffies of the whole machine.
fn machine_jiffies() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle + iowait are the idle part.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// A CPU reading at one instant; two of them give percentages over the interval.
#[derive(Clone)]
pub struct CpuMark {
    at: Instant,
    server: Vec<(u32, f64)>,
    harness: f64,
    machine: Option<(u64, u64)>,
}

pub fn cpu_mark(server: &[u32], harness: &[u32]) -> CpuMark {
    CpuMark {
        at: Instant::now(),
        server: server
            .iter()
            .map(|&p| (p, cpu_secs(p).unwrap_or(0.0)))
            .collect(),
        harness: harness.iter().filter_map(|&p| cpu_secs(p)).sum(),
        machine: machine_jiffies(),
    }
}

/// Percent of one core over [a, b]: per server pid, the servers' total, the
/// harness, the whole machine, and what is left for everything else.
pub fn cpu_between(a: &CpuMark, b: &CpuMark) -> Value {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
    let mut per = serde_json::Map::new();
    let mut total = 0.0;
    for &(pid, t1) in &b.server {
        // A pid that appeared in between (a respawned worker) counts from zero.
        let t0 = a
            .server
            .iter()
            .find(|(p, _)| *p == pid)
            .map_or(0.0, |x| x.1);
        let pct = (t1 - t0).max(0.0) / secs * 100.0;
        total += pct;
        per.insert(pid.to_string(), json!(round1(pct)));
    }
    let harness = (b.harness - a.harness).max(0.0) / secs * 100.0;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let machine = match (a.machine, b.machine) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            Some((b1 - b0) as f64 / (t1 - t0) as f64 * 100.0 * cores)
        }
        _ => None,
    };
    json!({
        "secs": round1(secs),
        "server": per,
        "server_total": round1(total),
        "harness": round1(harness),
        "machine": machine.map(round1),
        "other_est": machine.map(|m| round1((m - total - harness).max(0.0))),
    })
}

/// Summed RSS and PSS (KiB) of the pids and each pid's share.
pub fn memory(pids: &[u32]) -> (u64, u64) {
    pids.iter().fold((0, 0), |(r, p), &pid| {
        (r + rss_kib(pid).unwrap_or(0), p + pss_kib(pid).unwrap_or(0))
    })
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_secs(me).is_some());
        assert_eq!(watched_pids(&[me, me], false), vec![me]);
        let a = cpu_mark(&[me], &[]);
        let b = cpu_mark(&[me], &[]);
        assert!(cpu_between(&a, &b)["server_total"].as_f64().unwrap() >= 0.0);
    }
}
