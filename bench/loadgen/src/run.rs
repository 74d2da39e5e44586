//! One benchmark run: check the targets, seed, connect the subscribers (split
//! over child processes when one process may not hold them all), publish phase
//! by phase, account, sample the servers, and print one JSON line per phase.

use crate::account::Counts;
use crate::publish::{PubConfig, PublishKind, Publisher};
use crate::sub::{Assignment, ConnectSummary, Shard, SubConfig, Transport, new_histogram};
use crate::sys::{self, round1};
use crate::wire::{UrlTemplate, check_redis_url, parse_header};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Subscriber URL, `{job}` replaced by the job id; http:// or ws://, loopback only.
    /// Repeatable (several gateway instances): subscriber i connects through URL i % n.
    #[arg(long = "url-template", value_name = "URL_TEMPLATE", required = true)]
    pub url_templates: Vec<String>,
    #[arg(long, value_enum, default_value_t = Transport::Sse)]
    pub transport: Transport,
    /// Number of jobs; subscriber i watches job i % jobs.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    #[arg(long, default_value = "job-")]
    pub job_prefix: String,
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// New connections per second.
    #[arg(long, default_value_t = 1000.0)]
    pub connect_rate: f64,
    /// Per connection: TCP connect and response head (or WebSocket upgrade).
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// Bind the client sockets to 127.0.0.1 … 127.0.0.N in turn. Each (source,
    /// destination) pair has its own ephemeral ports: past about half the port
    /// range (~14,000 with 32768-60999) to one destination from one source,
    /// every connect() scans the range and connecting slows to a crawl.
    #[arg(long, default_value_t = 1)]
    pub source_addrs: u8,
    /// Extra subscriber header 'Name: value' (repeatable).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    #[arg(long, value_enum, default_value_t = PublishKind::None)]
    pub publish: PublishKind,
    /// Redis for redis-publish, redis-set and --seed-doc (loopback only).
    #[arg(long)]
    pub redis: Option<String>,
    #[arg(long, default_value = "progress:job:{job}")]
    pub channel_template: String,
    #[arg(long, default_value = "progress:job:{job}")]
    pub key_template: String,
    #[arg(long, default_value_t = 3600)]
    pub set_ttl_secs: u64,
    /// Before connecting, SET every job's key to this document (`{job}` replaced).
    #[arg(long)]
    pub seed_doc: Option<String>,
    /// POST target of http-post, `{job}` replaced (loopback only).
    #[arg(long)]
    pub publish_url_template: Option<String>,
    /// Extra publisher header for http-post (repeatable).
    #[arg(long = "publish-header")]
    pub publish_headers: Vec<String>,
    /// Publisher connections; each job is pinned to one.
    #[arg(long, default_value_t = 4)]
    pub publish_conns: usize,
    #[arg(long, default_value_t = 5000)]
    pub publish_timeout_ms: u64,
    /// `owner_id` written in every published document.
    #[arg(long, default_value = "bench")]
    pub owner: String,
    /// Messages per second over all jobs; a list runs one phase per rate.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    pub rate: Vec<f64>,
    /// Seconds of publishing per phase; 0 publishes nothing (idle run).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Length of the `pad` string of every document.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Pause after connecting, before the idle memory sample and publishing.
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    /// Wait after a phase's last publish for deliveries still in flight.
    #[arg(long, default_value_t = 2000)]
    pub drain_ms: u64,
    /// Step test: stop after a phase with p99 above this, loss above
    /// --stop-loss-pct, or a publisher below 95 % of the target rate.
    #[arg(long)]
    pub stop_p99_ms: Option<f64>,
    /// Lost (not skipped) states, in percent, that end a step test.
    #[arg(long, default_value_t = 1.0)]
    pub stop_loss_pct: f64,
    /// Server process to sample (CPU, RSS, PSS); repeatable.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Sample the children of every --server-pid too (nginx workers).
    #[arg(long)]
    pub include_children: bool,
    /// Subscriber processes (default: as few as the open-file limit allows).
    #[arg(long)]
    pub procs: Option<usize>,
    /// Tokio worker threads of the main process.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Print one JSON line per phase on stdout.
    #[arg(long)]
    pub json: bool,
    /// Copied into the JSON.
    #[arg(long)]
    pub label: Option<String>,
    /// Hard limit for the whole run (default: from the parameters, plus a margin).
    #[arg(long)]
    pub max_runtime_secs: Option<u64>,
    /// Internal: run as subscriber shard `i/n`, driven over stdin/stdout.
    #[arg(long, hide = true)]
    pub shard: Option<String>,
    /// Internal: the parent's start, for telling replays from this run's states.
    #[arg(long, hide = true)]
    pub run_start_ns: Option<u64>,
}

/// Sockets a process keeps for itself besides the subscribers.
const FD_MARGIN: usize = 256;

impl Args {
    fn job_ids(&self) -> Arc<Vec<String>> {
        Arc::new(
            (0..self.jobs)
                .map(|i| format!("{}{i}", self.job_prefix))
                .collect(),
        )
    }

    fn publishing(&self) -> bool {
        self.publish != PublishKind::None && self.duration > 0.0
    }

    /// Everything the run can take, so a hung gateway never hangs the bench.
    pub fn max_runtime(&self) -> Duration {
        if let Some(s) = self.max_runtime_secs {
            return Duration::from_secs(s);
        }
        let connect = self.subscribers as f64 / self.connect_rate.max(1.0)
            + self.connect_timeout_ms as f64 / 1000.0;
        let phases = if self.publishing() {
            self.rate.len() as f64 * (self.duration + 1.0 + self.drain_ms as f64 / 1000.0 + 5.0)
        } else {
            0.0
        };
        Duration::from_secs_f64(60.0 + connect + self.settle_ms as f64 / 1000.0 + phases)
    }

    fn sub_config(&self, run_start_ns: u64) -> Result<SubConfig, String> {
        Ok(SubConfig {
            urls: self
                .url_templates
                .iter()
                .map(|u| UrlTemplate::parse(u))
                .collect::<Result<_, _>>()?,
            sources: match self.source_addrs {
                0 => return Err("--source-addrs must be at least 1".into()),
                1 => Vec::new(),
                n => (1..=n)
                    .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
                    .collect(),
            },
            transport: self.transport,
            headers: self
                .headers
                .iter()
                .map(|h| parse_header(h))
                .collect::<Result<_, _>>()?,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            run_start_ns,
        })
    }

    fn pub_config(&self) -> Result<PubConfig, String> {
        if let Some(r) = &self.redis {
            check_redis_url(r)?;
        }
        let url = self
            .publish_url_template
            .as_deref()
            .map(UrlTemplate::parse)
            .transpose()?;
        match self.publish {
            PublishKind::RedisPublish | PublishKind::RedisSet if self.redis.is_none() => {
                return Err("--publish redis-* needs --redis".into());
            }
            PublishKind::HttpPost if url.is_none() => {
                return Err("--publish http-post needs --publish-url-template".into());
            }
            _ => {}
        }
        if self.rate.iter().any(|r| r.is_nan() || *r <= 0.0) || self.jobs == 0 {
            return Err("--rate must be > 0 and --jobs ≥ 1".into());
        }
        Ok(PubConfig {
            kind: self.publish,
            redis: self.redis.clone(),
            channel_template: self.channel_template.clone(),
            key_template: self.key_template.clone(),
            ttl_secs: self.set_ttl_secs,
            url,
            headers: self
                .publish_headers
                .iter()
                .map(|h| parse_header(h))
                .collect::<Result<_, _>>()?,
            conns: self.publish_conns,
            timeout: Duration::from_millis(self.publish_timeout_ms),
            owner: self.owner.clone(),
            pad: self.payload_bytes,
        })
    }
}

/// Ends the process if the run outlives its bound, whatever it is waiting on.
pub fn watchdog(limit: Duration, who: &'static str) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!(
            "{who}: watchdog: still running after {} s, exiting",
            limit.as_secs()
        );
        std::process::exit(3);
    });
}

// ------------------------------------------------------------------ shards

/// Subscriber `i` of `n` in total belongs to shard `i % shards`, watches job
/// `i % jobs`, connects through URL `i % urls` and, of that URL's
/// subscribers, takes the source addresses in turn.
fn shard_subscribers(a: &Args, shard: usize, shards: usize) -> Vec<Assignment> {
    let urls = a.url_templates.len().max(1);
    let sources = usize::from(a.source_addrs.max(1));
    (0..a.subscribers)
        .filter(|i| i % shards == shard)
        .map(|i| Assignment {
            job: i % a.jobs,
            url: i % urls,
            source: (i / urls) % sources,
        })
        .collect()
}

/// A child process holding its share of the subscribers. It answers one JSON
/// line to each command: first its connect summary, then one report per phase.
struct ChildShard {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ChildShard {
    async fn line(&mut self) -> Result<Value, String> {
        let l = self
            .lines
            .next_line()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("subscriber process ended early")?;
        serde_json::from_str(&l).map_err(|e| format!("subscriber process said '{l}': {e}"))
    }
}

enum Shards {
    Local(Shard),
    Children(Vec<ChildShard>),
}

impl Shards {
    async fn report(
        &mut self,
        lo: u64,
        hi: u64,
        jobs: usize,
        failed: &[u64],
        terminal: bool,
    ) -> Result<Vec<Value>, String> {
        match self {
            Shards::Local(s) => Ok(vec![s.report(lo, hi, jobs, failed, terminal)]),
            Shards::Children(cs) => {
                let failed: Vec<String> = failed.iter().map(u64::to_string).collect();
                let cmd = format!(
                    "report {lo} {hi} {} {}\n",
                    u8::from(terminal),
                    failed.join(",")
                );
                for c in cs.iter_mut() {
                    c.stdin
                        .write_all(cmd.as_bytes())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let mut out = Vec::new();
                for c in cs.iter_mut() {
                    out.push(c.line().await?);
                }
                Ok(out)
            }
        }
    }

    fn pids(&self) -> Vec<u32> {
        let mut v = vec![std::process::id()];
        if let Shards::Children(cs) = self {
            v.extend(cs.iter().filter_map(|c| c.child.id()));
        }
        v
    }
}

/// Child side: connect, say so, then answer `report` lines until stdin closes.
pub async fn run_shard(a: Args, spec: &str) -> Result<(), String> {
    let (i, n) = spec
        .split_once('/')
        .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
        .ok_or("--shard i/n")?;
    let cfg = Arc::new(a.sub_config(a.run_start_ns.unwrap_or(0))?);
    let rate = a.connect_rate / n as f64;
    let (shard, summary) =
        Shard::connect(cfg, a.job_ids(), shard_subscribers(&a, i, n), rate).await;
    let mut out = tokio::io::stdout();
    let say = |v: Value| format!("{v}\n");
    out.write_all(say(summary.to_json(true)).as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    out.flush().await.map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(l)) = lines.next_line().await {
        let w: Vec<&str> = l.split(' ').collect();
        if w.first() != Some(&"report") || w.len() < 4 {
            return Err(format!("unknown command '{l}'"));
        }
        let num = |s: &str| s.parse::<u64>().map_err(|_| format!("bad number in '{l}'"));
        let failed: Vec<u64> = w.get(4).map_or(Ok(Vec::new()), |f| {
            f.split(',').filter(|x| !x.is_empty()).map(num).collect()
        })?;
        let r = shard.report(num(w[1])?, num(w[2])?, a.jobs, &failed, w[3] == "1");
        out.write_all(say(r).as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        out.flush().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn spawn_children(
    a: &Args,
    n: usize,
    run_start_ns: u64,
) -> Result<(Vec<ChildShard>, Value), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // The children get the parent's own flags, less what only the parent does.
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if a.max_runtime_secs.is_none() {
        args.extend([
            "--max-runtime-secs".into(),
            a.max_runtime().as_secs().to_string(),
        ]);
    }
    let mut cs = Vec::new();
    for i in 0..n {
        let mut child = tokio::process::Command::new(&exe)
            .args(&args)
            .args([
                "--shard",
                &format!("{i}/{n}"),
                "--run-start-ns",
                &run_start_ns.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn subscriber process: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        cs.push(ChildShard {
            child,
            stdin,
            lines,
        });
    }
    // All children connect at once, each at its share of the rate.
    let mut sum = ConnectSummary::new(a.url_templates.len());
    for c in cs.iter_mut() {
        sum.merge_json(&c.line().await?);
    }
    Ok((cs, sum.to_json(false)))
}

// ------------------------------------------------------------------ the run

struct Memory {
    rss: u64,
    pss: u64,
    /// RSS (KiB) of each sampled pid, for several instances side by side.
    rss_per_pid: BTreeMap<String, u64>,
}

fn sample_memory(a: &Args) -> Memory {
    let pids = sys::watched_pids(&a.server_pids, a.include_children);
    let (rss, pss) = sys::memory(&pids);
    let rss_per_pid = pids
        .iter()
        .map(|&p| (p.to_string(), sys::rss_kib(p).unwrap_or(0)))
        .collect();
    Memory {
        rss,
        pss,
        rss_per_pid,
    }
}

fn per_conn(before: &Memory, idle: &Memory, connected: u64) -> (Option<u64>, Option<u64>) {
    if connected == 0 {
        return (None, None);
    }
    let f = |b: u64, i: u64| Some(i.saturating_sub(b) * 1024 / connected);
    (f(before.rss, idle.rss), f(before.pss, idle.pss))
}

fn latency_json(reports: &[Value]) -> Value {
    let mut h = new_histogram();
    for r in reports {
        for pair in r["hist"].as_array().into_iter().flatten() {
            let (v, n) = (pair[0].as_u64().unwrap_or(1), pair[1].as_u64().unwrap_or(0));
            let _ = h.record_n(v.max(1), n);
        }
    }
    if h.is_empty() {
        return json!(null);
    }
    json!({
        "p50": h.value_at_quantile(0.50), "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99), "p999": h.value_at_quantile(0.999),
        "max": h.max(), "mean": h.mean().round(), "samples": h.len(),
    })
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 10000.0 / whole as f64).round() / 100.0
    }
}

/// Parent side. Returns the process exit code.
pub async fn run(a: Args) -> Result<i32, String> {
    let run_start_ns = sys::wall_ns();
    let sub_cfg = Arc::new(a.sub_config(run_start_ns)?);
    let pub_cfg = Arc::new(a.pub_config()?);
    let jobs = a.job_ids();
    let nofile = sys::raise_nofile() as usize;
    let per_proc = nofile.saturating_sub(FD_MARGIN).max(1);
    let procs = a.procs.unwrap_or(a.subscribers.div_ceil(per_proc)).max(1);
    if a.subscribers.div_ceil(procs) > per_proc {
        return Err(format!(
            "{} subscribers over {procs} process(es) exceed the open-file limit {nofile}",
            a.subscribers
        ));
    }
    eprintln!(
        "loadgen: {} subscribers over {} jobs and {} URL(s) in {procs} process(es) (open-file limit {nofile}), {:?}",
        a.subscribers,
        a.jobs,
        a.url_templates.len(),
        a.transport
    );

    if let Some(doc) = &a.seed_doc {
        let url = a.redis.as_deref().ok_or("--seed-doc needs --redis")?;
        crate::publish::seed(&pub_cfg, url, doc, &jobs).await?;
    }
    let mut publisher = if a.publishing() {
        Some(Publisher::connect(pub_cfg.clone()).await?)
    } else {
        None
    };

    let before = sample_memory(&a);
    let cpu0 = sys::cpu_mark(
        &sys::watched_pids(&a.server_pids, a.include_children),
        &[std::process::id()],
    );
    let (mut shards, connect) = if procs == 1 {
        let (s, summary) = Shard::connect(
            sub_cfg,
            jobs.clone(),
            shard_subscribers(&a, 0, 1),
            a.connect_rate,
        )
        .await;
        (Shards::Local(s), summary.to_json(false))
    } else {
        let (cs, summary) = spawn_children(&a, procs, run_start_ns).await?;
        (Shards::Children(cs), summary)
    };
    let harness = shards.pids();
    let servers = || sys::watched_pids(&a.server_pids, a.include_children);
    let cpu1 = sys::cpu_mark(&servers(), &harness);
    let connected = connect["connected"].as_u64().unwrap_or(0);
    eprintln!(
        "connected {connected}/{} in {} s, {} errors {}",
        a.subscribers,
        connect["connect_secs"],
        connect["connect_errors"],
        connect["connect_error_kinds"]
    );
    tokio::time::sleep(Duration::from_millis(a.settle_ms)).await;
    let idle = sample_memory(&a);
    let (rss_pc, pss_pc) = per_conn(&before, &idle, connected);
    eprintln!(
        "idle: server RSS {} KiB → {} KiB, {} bytes per connection (PSS {})",
        before.rss,
        idle.rss,
        rss_pc.map_or("-".into(), |x| x.to_string()),
        pss_pc.map_or("-".into(), |x| x.to_string())
    );
    let base = |extra: Value| -> Value {
        let mut v = json!({
            "label": a.label, "transport": format!("{:?}", a.transport).to_lowercase(),
            "jobs": a.jobs, "subscribers": a.subscribers, "procs": procs,
            "urls": a.url_templates.len(),
            "source_addrs": a.source_addrs,
            "rss_total_kib": {"before": before.rss, "idle": idle.rss},
            "rss_kib_per_pid": {"before": before.rss_per_pid, "idle": idle.rss_per_pid},
            "pss_total_kib": {"before": before.pss, "idle": idle.pss},
            "rss_per_conn_bytes": rss_pc, "pss_per_conn_bytes": pss_pc,
        });
        let m = v.as_object_mut().expect("object");
        for (k, x) in connect.as_object().expect("object") {
            m.insert(k.clone(), x.clone());
        }
        for (k, x) in extra.as_object().expect("object") {
            m.insert(k.clone(), x.clone());
        }
        v
    };

    let Some(publisher) = publisher.as_mut() else {
        // Idle run: connections and memory only.
        let r = shards.report(0, 0, a.jobs, &[], false).await?;
        let open: u64 = r
            .iter()
            .map(|x| x["open_at_end"].as_u64().unwrap_or(0))
            .sum();
        let line = base(json!({
            "phase": null,
            "open_at_end": open,
            "disconnects": connected.saturating_sub(open),
            "cpu_pct": {"connect": sys::cpu_between(&cpu0, &cpu1)},
        }));
        emit(&a, &line);
        return Ok(0);
    };

    let mut lo = 0u64;
    for (phase, &rate) in a.rate.iter().enumerate() {
        let n = (rate * a.duration).round().max(1.0) as u64;
        let last = phase + 1 == a.rate.len();
        eprintln!(
            "[phase {phase}] {rate} msg/s × {} s: {n} messages",
            a.duration
        );
        let m0 = sys::cpu_mark(&servers(), &harness);
        let out = publisher.phase(lo, n, rate, a.duration, &jobs, last).await;
        let m1 = sys::cpu_mark(&servers(), &harness);
        tokio::time::sleep(Duration::from_millis(a.drain_ms)).await;
        let reports = shards.report(lo, lo + n, a.jobs, &out.failed, last).await?;
        let end = sample_memory(&a);
        let mut c = Counts::default();
        for r in &reports {
            c.add(&Counts::from_json(&r["counts"]));
        }
        let sum = |k: &str| {
            reports
                .iter()
                .map(|r| r[k].as_u64().unwrap_or(0))
                .sum::<u64>()
        };
        let first_disconnect = reports
            .iter()
            .find_map(|r| r["first_disconnect"].as_str().map(str::to_string));
        let latency = latency_json(&reports);
        let cpu = sys::cpu_between(&m0, &m1);
        let dps = c.delivered as f64 / out.window_secs;
        let server_cpu = cpu["server_total"].as_f64().unwrap_or(0.0);
        let achieved = out.published as f64 / out.window_secs;
        let line = base(json!({
            "phase": phase, "rate_target": rate, "duration_secs": a.duration,
            "published": out.published, "publish_errors": out.errors, "publish_unsent": out.unsent,
            "first_publish_error": out.first_error, "publish_rate_achieved": round1(achieved),
            "expected_deliveries": c.expected, "delivered": c.delivered,
            "skipped": c.skipped, "skipped_pct": pct(c.skipped, c.expected),
            "lost": c.lost, "loss_pct": pct(c.lost, c.expected),
            "final_missed": c.final_missed, "final_is_terminal": last,
            "reordered_or_dup": c.reordered_or_dup,
            "deliveries_per_sec": round1(dps),
            // % of a core ÷ deliveries per second = µs of server CPU per delivery.
            "server_cpu_us_per_delivery": (dps > 0.0).then(|| (server_cpu * 10000.0 / dps * 100.0).round() / 100.0),
            "latency_us": latency,
            "open_at_end": sum("open_at_end"), "disconnects": sum("disconnects"),
            "first_disconnect": first_disconnect,
            "stale_ignored": sum("stale_ignored"), "events_without_seq": sum("events_without_seq"),
            "late_from_prev_phase": sum("late_from_prev_phase"),
            "rss_end_kib": end.rss,
            "cpu_pct": {"connect": sys::cpu_between(&cpu0, &cpu1), "publish": cpu},
        }));
        eprintln!(
            "  subscribers: expected {}, delivered {}, skipped {} ({} %), lost {} ({} %), final state missed by {}, disconnects {}",
            c.expected,
            c.delivered,
            c.skipped,
            pct(c.skipped, c.expected),
            c.lost,
            pct(c.lost, c.expected),
            c.final_missed,
            line["disconnects"]
        );
        eprintln!(
            "  latency µs: {}; published {} ({} msg/s)",
            line["latency_us"], out.published, line["publish_rate_achieved"]
        );
        eprintln!("  cpu % of a core: {}", line["cpu_pct"]["publish"]);
        emit(&a, &line);
        lo += n;
        if let Some(max_p99) = a.stop_p99_ms {
            let p99_ms = line["latency_us"]["p99"]
                .as_f64()
                .map_or(f64::INFINITY, |x| x / 1000.0);
            let why = if p99_ms > max_p99 {
                Some(format!("p99 {p99_ms} ms > {max_p99} ms"))
            } else if pct(c.lost, c.expected) > a.stop_loss_pct {
                Some(format!(
                    "lost {} % > {} %",
                    pct(c.lost, c.expected),
                    a.stop_loss_pct
                ))
            } else if achieved < 0.95 * rate {
                Some(format!(
                    "publisher reached {} of {rate} msg/s",
                    round1(achieved)
                ))
            } else {
                None
            };
            if let (Some(why), false) = (why, last) {
                eprintln!("  stopping the step test: {why}");
                break;
            }
        }
    }
    Ok(0)
}

fn emit(a: &Args, line: &Value) {
    if a.json {
        println!("{line}");
    }
}
