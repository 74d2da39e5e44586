//! Thin entry point: parse the command line, start logging, dispatch. `serve`
//! builds the app exactly as the tests do and runs it until a signal.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use jobcast::config::{Cli, Command};
use jobcast::{cli, shutdown, startup::App, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Cli::parse();
    let tracer = telemetry::init(&args.settings);
    let s = args.settings;
    let result = match args.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(s).await,
        Command::Migrate => cli::migrate(&s).await,
        Command::Cleanup => cli::cleanup(&s).await,
        Command::Token {
            sub,
            jobs,
            roles,
            groups,
            ttl,
        } => cli::token(&s, sub, jobs, roles, groups, ttl),
        Command::Publish {
            job,
            document,
            ttl,
            group,
        } => cli::publish(&s, &job, &document, ttl, group.as_deref()).await,
        Command::Tail { job, url, token } => cli::tail::run(&s, &job, url, token).await,
        Command::Demo {
            jobs,
            owner,
            group,
            once,
        } => {
            let stop = CancellationToken::new();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                shutdown::signalled().await;
                on_signal.cancel();
            });
            cli::demo(&s, jobs, owner, group, once, stop).await
        }
    };
    if let Some(provider) = tracer {
        // Flushes the batch (blocking, bounded by the exporter's timeout).
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobcast: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(s: jobcast::config::Settings) -> anyhow::Result<()> {
    let deadline = Duration::from_secs(s.shutdown_secs);
    let dev = s.dev;
    let app = App::build(s).await?;
    if dev {
        cli::dev_banner(&app)?;
    }
    let token = app.shutdown_token();
    let mut server = tokio::spawn(app.run());
    tokio::select! {
        _ = &mut server => return Ok(()),
        _ = shutdown::signalled() => token.cancel(),
    }
    tokio::select! {
        _ = &mut server => tracing::info!("drained; bye"),
        _ = tokio::time::sleep(deadline) => tracing::warn!(?deadline, "shutdown deadline passed; exiting"),
        _ = shutdown::signalled() => tracing::warn!("second signal; exiting now"),
    }
    Ok(())
}
