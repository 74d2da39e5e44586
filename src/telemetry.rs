//! Logging and tracing: a `tracing` subscriber writing text or JSON lines
//! (`JOBCAST_LOG_FORMAT`), filtered by `RUST_LOG` (default `info`), plus — when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set — an OpenTelemetry layer ([`otel`])
//! that exports jobcast's spans with a filter of its own, so `RUST_LOG` does
//! not decide what is traced. Crates that log through `log` are bridged.
//! Tokens never reach a field: they are `Secret`s.

pub mod otel;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogFormat, Settings};

/// Installs the subscriber; returns the tracer provider to shut down (flush)
/// at exit, where OpenTelemetry is on.
pub fn init(s: &Settings) -> Option<SdkTracerProvider> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match s.log_format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => fmt.with_filter(filter).boxed(),
    };
    let (provider, otel_error) = match otel::provider(s) {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e)),
    };
    let otel = provider.as_ref().map(|p| {
        // jobcast's own spans only (the stream and fan-out spans are debug
        // level, so plain logging never pays for them).
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("jobcast"))
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.is_span() && m.target().starts_with("jobcast")
            }))
    });
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    if let Some(e) = otel_error {
        tracing::warn!(error = %e, "OpenTelemetry export is off: the OTLP exporter could not be built");
    }
    provider
}
