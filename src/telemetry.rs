//! Logging: a `tracing` subscriber writing text or JSON lines (`JOBCAST_LOG_FORMAT`),
//! filtered by `RUST_LOG` (default `info`); crates that log through `log` are
//! bridged. Tokens never reach a field: they are `Secret`s.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
