//! `loadgen`: the benchmark's load generator (see `bench/run.sh` and
//! docs/benchmarks.md). Loopback targets only; every run is time-bounded.

use clap::{Parser, Subcommand};
use jobcast_loadgen::run::{self, Args};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "SSE/WebSocket load and latency for push gateways, loopback only",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    args: Option<Args>,
}

#[derive(Subcommand)]
enum Cmd {
    /// A tiny SSE gateway (GET /sub/{job}, POST /pub/{job}) on 127.0.0.1, for trying the harness.
    Echo {
        /// Exit after this many seconds.
        #[arg(long, default_value_t = 300)]
        max_secs: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let shard = cli.args.as_ref().and_then(|a| a.shard.clone());
    // Subscriber processes run one thread each: they are many, the cores are few.
    let threads = match (&cli.args, &shard) {
        (Some(a), None) => a.threads.max(1),
        _ => 1,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match (cli.cmd, cli.args) {
        (Some(Cmd::Echo { max_secs }), _) => {
            run::watchdog(std::time::Duration::from_secs(max_secs), "loadgen echo");
            rt.block_on(async {
                let addr = jobcast_loadgen::echo::spawn()
                    .await
                    .map_err(|e| e.to_string())?;
                println!("listening {addr}");
                std::future::pending::<Result<i32, String>>().await
            })
        }
        (None, Some(a)) => {
            run::watchdog(a.max_runtime(), "loadgen");
            match shard {
                Some(spec) => rt.block_on(run::run_shard(a, &spec)).map(|()| 0),
                None => rt.block_on(run::run(a)),
            }
        }
        (None, None) => Err("missing --url-template (see --help)".into()),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("loadgen: error: {e}");
            std::process::exit(2);
        }
    }
}
