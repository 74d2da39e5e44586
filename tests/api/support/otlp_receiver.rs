//! [`OtlpReceiver`]: a minimal OpenTelemetry collector for the tests. It
//! accepts `POST /v1/traces` in OTLP/JSON, answers `200 {}`, and keeps every
//! request body for the test to look into.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use warp::Filter;

pub struct OtlpReceiver {
    pub addr: SocketAddr,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    server: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        let route = warp::path!("v1" / "traces")
            .and(warp::post())
            .and(warp::body::bytes())
            .map(move |body: bytes::Bytes| {
                if let Ok(v) = serde_json::from_slice(&body) {
                    kept.lock().unwrap().push(v);
                }
                warp::reply::json(&serde_json::json!({}))
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(warp::serve(route).incoming(listener).run());
        OtlpReceiver {
            addr,
            bodies,
            server,
        }
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received: (service.name of its resource, the span object).
    pub fn spans(&self) -> Vec<(String, serde_json::Value)> {
        let bodies = self.bodies.lock().unwrap();
        let mut out = Vec::new();
        for body in bodies.iter() {
            for rs in body["resourceSpans"].as_array().into_iter().flatten() {
                let service = rs["resource"]["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["key"] == "service.name")
                    .and_then(|a| a["value"]["stringValue"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for span in ss["spans"].as_array().into_iter().flatten() {
                        out.push((service.clone(), span.clone()));
                    }
                }
            }
        }
        out
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A span attribute's value, as a string whatever its OTLP type.
pub fn attribute(span: &serde_json::Value, key: &str) -> Option<String> {
    let value = &span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?["value"];
    value["stringValue"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| value["intValue"].as_str().map(str::to_owned))
        .or_else(|| value["intValue"].as_i64().map(|i| i.to_string()))
        .or_else(|| value["boolValue"].as_bool().map(|b| b.to_string()))
}
