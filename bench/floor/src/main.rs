//! `floor`: what one delivery costs when a server does nothing but one `write()`
//! of a ready-made ~190-byte SSE event per subscriber socket. bench/run.sh sets
//! the gateways' CPU per delivery against this, in the same run.
//!
//! It opens N loopback connections to itself, and sends message k (at `--rate`
//! per second, `--jobs` round-robin) to the connections of job k % jobs, one
//! `send()` each, the same bytes for all of them. Another thread reads and
//! discards on the receiving side. Only the sending thread's CPU is reported,
//! and only while it sends (pacing and building the event are left out, as
//! they are shared by all the connections of a message): it includes the
//! kernel's loopback TCP work done on that thread, which a gateway cannot
//! avoid either.

use clap::Parser;
use serde_json::json;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(
    name = "floor",
    about = "CPU per write() of one SSE event to N loopback sockets"
)]
struct Args {
    /// Connections (subscribers).
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Jobs; connection i watches job i % jobs.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Messages per second over all jobs.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Size of every event, in bytes.
    #[arg(long, default_value_t = 190)]
    bytes: usize,
    /// Copied into the JSON line.
    #[arg(long)]
    label: Option<String>,
}

/// CPU seconds of the calling thread (user + system), to the nanosecond.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn raise_nofile() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a stack struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
    }
    rl.rlim_cur
}

/// One SSE event of exactly `size` bytes (when size allows) for message `seq`.
fn event(seq: u64, size: usize) -> Vec<u8> {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let head = format!("data: {{\"seq\":{seq},\"sent_ns\":{ns},\"status\":\"running\",\"pad\":\"");
    let tail = "\"}\n\n";
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut v = head.into_bytes();
    v.resize(v.len() + pad, b'x');
    v.extend_from_slice(tail.as_bytes());
    v
}

fn main() {
    let a = Args::parse();
    if let Err(e) = run(&a) {
        eprintln!("floor: error: {e}");
        std::process::exit(2);
    }
}

fn run(a: &Args) -> Result<(), String> {
    let limit = raise_nofile() as usize;
    // Both ends of every connection live in this process.
    if 2 * a.conns + 64 > limit {
        return Err(format!(
            "{} connections need {} files, the limit is {limit}",
            a.conns,
            2 * a.conns + 64
        ));
    }
    if a.jobs == 0 || a.rate <= 0.0 {
        return Err("--jobs ≥ 1 and --rate > 0".into());
    }
    // Bounded whatever happens: the bench must never hang on us.
    let bound = Duration::from_secs_f64(a.duration + 60.0);
    std::thread::spawn(move || {
        std::thread::sleep(bound);
        eprintln!("floor: watchdog after {} s", bound.as_secs());
        std::process::exit(3);
    });

    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut receivers = Vec::with_capacity(a.conns);
    let mut senders = Vec::with_capacity(a.conns);
    for _ in 0..a.conns {
        receivers.push(TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?);
        let (s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        let _ = s.set_nodelay(true);
        senders.push(s);
    }
    let drainer = std::thread::spawn(move || drain(receivers));

    // Connections grouped by job, as a gateway keeps its watchers.
    let mut by_job: Vec<Vec<i32>> = vec![Vec::new(); a.jobs];
    for (i, s) in senders.iter().enumerate() {
        by_job[i % a.jobs].push(s.as_raw_fd());
    }
    let n = (a.rate * a.duration).round().max(1.0) as u64;
    let (mut writes, mut would_block, mut errors, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let cpu0 = thread_cpu();
    let mut send_cpu = 0.0;
    let t0 = Instant::now();
    for k in 0..n {
        let due = t0 + Duration::from_secs_f64(k as f64 / a.rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let ev = event(k + 1, a.bytes);
        let before = thread_cpu();
        for &fd in &by_job[(k % a.jobs as u64) as usize] {
            // SAFETY: fd is an open socket owned by `senders`; ev outlives the call.
            let r = unsafe {
                libc::send(
                    fd,
                    ev.as_ptr().cast(),
                    ev.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if r >= 0 {
                writes += 1;
                bytes += r as u64;
            } else if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
                would_block += 1;
            } else {
                errors += 1;
            }
        }
        send_cpu += thread_cpu() - before;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = thread_cpu() - cpu0;
    drop(senders);
    let received = drainer.join().unwrap_or(0);
    let per_write = |secs: f64| {
        if writes > 0 {
            secs * 1e6 / writes as f64
        } else {
            0.0
        }
    };
    let us_per_write = per_write(send_cpu);
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    println!(
        "{}",
        json!({
            "label": a.label, "conns": a.conns, "jobs": a.jobs, "rate_target": a.rate,
            "event_bytes": a.bytes, "writes": writes, "would_block": would_block, "errors": errors,
            "bytes_written": bytes, "bytes_received": received,
            "wall_secs": r2(wall), "writer_cpu_secs": r2(cpu),
            "writer_cpu_pct": r2(cpu / wall * 100.0),
            "writes_per_sec": r2(writes as f64 / wall),
            "send_cpu_secs": r2(send_cpu),
            "cpu_us_per_write": r2(us_per_write),
            "cpu_us_per_write_with_pacing": r2(per_write(cpu)),
        })
    );
    eprintln!(
        "floor: {writes} writes of {} bytes to {} connections in {wall:.1} s, {:.2} µs CPU per write ({would_block} would block)",
        a.bytes, a.conns, us_per_write
    );
    Ok(())
}

/// Reads and discards on every receiving socket until all are closed; returns
/// the bytes read. One poll() over all of them: this thread is not measured.
fn drain(mut socks: Vec<TcpStream>) -> u64 {
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    for s in &socks {
        let _ = s.set_nonblocking(true);
    }
    while !socks.is_empty() {
        let mut fds: Vec<libc::pollfd> = socks
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of fds.len() pollfd structs.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if r <= 0 {
            continue;
        }
        let mut closed = Vec::new();
        for (i, p) in fds.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            loop {
                match socks[i].read(&mut buf) {
                    Ok(0) => {
                        closed.push(i);
                        break;
                    }
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed.push(i);
                        break;
                    }
                }
            }
        }
        for i in closed.into_iter().rev() {
            socks.swap_remove(i);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_the_asked_size_and_parse_as_sse() {
        let e = event(42, 190);
        assert_eq!(e.len(), 190);
        let s = String::from_utf8(e).unwrap();
        assert!(s.starts_with("data: {\"seq\":42,") && s.ends_with("\"}\n\n"));
        let doc: serde_json::Value =
            serde_json::from_str(s.trim_start_matches("data: ").trim_end()).unwrap();
        assert_eq!(doc["seq"], 42);
    }

    #[test]
    fn measures_a_small_run() {
        let a = Args::parse_from([
            "floor",
            "--conns",
            "4",
            "--rate",
            "200",
            "--duration",
            "0.2",
        ]);
        run(&a).unwrap();
    }
}
