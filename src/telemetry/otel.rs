//! OpenTelemetry traces over OTLP/HTTP (protobuf or JSON), on when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Spans come from `tracing`: a span per
//! stream (`stream`: job, transport, user digest) and one per update offered
//! to a feed (`fanout`: source, outcome, watchers, encode time). A document
//! with a W3C `traceparent` field makes its `fanout` span a child of the
//! worker's span, so the worker's work and its delivery are one trace.
//!
//! Export never blocks the hot path: spans go to the SDK's batch processor
//! (its own thread, a bounded queue that drops when full), and when tracing is
//! off the spans are disabled at their call sites.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use sha2::{Digest, Sha256};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::{OtlpProtocol, Settings};

/// The tracer provider where an endpoint is configured; `shutdown()` it at
/// exit to flush what the batch holds.
pub fn provider(s: &Settings) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some(endpoint) = s
        .otel_endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
    else {
        return Ok(None);
    };
    let protocol = match s.otel_protocol {
        OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
        OtlpProtocol::HttpJson => Protocol::HttpJson,
    };
    // A programmatic endpoint is taken as is: the signal path is ours to add.
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(s.otel_service_name.clone())
                .build(),
        )
        .build();
    Ok(Some(provider))
}

/// Makes `span` a child of the remote span named by a W3C `traceparent`
/// (`00-<trace id>-<span id>-<flags>`); an invalid one is ignored.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}

/// The `traceparent` field of a document, if it has one (parsed only while
/// spans are recorded).
pub fn traceparent(json: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Field {
        traceparent: Option<String>,
    }
    serde_json::from_slice::<Field>(json).ok()?.traceparent
}

/// A short digest of a user id for span attributes: traces correlate by
/// user without carrying who the user is.
pub fn user_digest(sub: &str) -> String {
    Sha256::digest(sub.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_from_the_document() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let doc = format!(r#"{{"seq":1,"traceparent":"{tp}"}}"#);
        assert_eq!(traceparent(doc.as_bytes()).as_deref(), Some(tp));
        assert_eq!(traceparent(br#"{"seq":1}"#), None);
        assert_eq!(traceparent(b"junk"), None);
    }

    #[test]
    fn user_digest_is_short_stable_and_not_the_user() {
        assert_eq!(user_digest("alice"), user_digest("alice"));
        assert_eq!(user_digest("alice").len(), 16);
        assert_ne!(user_digest("alice"), user_digest("bob"));
    }

    #[test]
    fn no_endpoint_means_no_provider() {
        assert!(provider(&Settings::defaults()).unwrap().is_none());
    }
}
