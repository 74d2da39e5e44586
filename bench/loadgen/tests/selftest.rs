//! Runs the `loadgen` binary end to end against the in-process echo gateway:
//! one process and two subscriber processes, a clean stream and one that drops
//! every odd state, subscribers spread over two gateways, checking the counts
//! it prints.

use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;

fn loadgen(addr: SocketAddr, extra: &[&str]) -> Vec<Value> {
    loadgen_over(&[addr], addr, extra)
}

/// Subscribers over every gateway of `subs` (one `--url-template` each),
/// messages POSTed to `publish` only.
fn loadgen_over(subs: &[SocketAddr], publish: SocketAddr, extra: &[&str]) -> Vec<Value> {
    let scheme = if extra.contains(&"ws") { "ws" } else { "http" };
    let publ = format!("http://{publish}/pub/{{job}}");
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(subs.iter().flat_map(|a| {
            [
                "--url-template".into(),
                format!("{scheme}://{a}/sub/{{job}}"),
            ]
        }))
        .args(["--publish", "http-post", "--publish-url-template", &publ])
        .args([
            "--rate",
            "40",
            "--duration",
            "0.5",
            "--settle-ms",
            "100",
            "--drain-ms",
            "300",
        ])
        .args(["--max-runtime-secs", "30", "--json"])
        .args(extra)
        .output()
        .expect("run loadgen");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadgen failed: {stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_stream_in_two_processes() {
    let addr = jobcast_loadgen::echo::spawn().await.unwrap();
    let args = [
        "--jobs",
        "2",
        "--subscribers",
        "6",
        "--procs",
        "2",
        "--job-prefix",
        "clean-",
    ];
    let lines = tokio::task::spawn_blocking(move || loadgen(addr, &args))
        .await
        .unwrap();
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    assert_eq!(l["procs"], 2);
    assert_eq!(l["connected"], 6);
    // 20 messages over 2 jobs, 3 subscribers each: 10 × 6.
    assert_eq!(l["expected_deliveries"], 60);
    assert_eq!(l["delivered"], 60);
    assert_eq!(
        (
            l["skipped"].as_u64(),
            l["lost"].as_u64(),
            l["final_missed"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
    assert!(l["latency_us"]["p50"].as_u64().unwrap() > 0);
    assert!(
        l["events_without_seq"].as_u64().unwrap() == 0,
        "SSE comments are not events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_odd_states_are_skipped_not_lost() {
    let addr = jobcast_loadgen::echo::spawn().await.unwrap();
    let args = ["--subscribers", "3", "--job-prefix", "drop-odd-"];
    let lines = tokio::task::spawn_blocking(move || loadgen(addr, &args))
        .await
        .unwrap();
    let l = &lines[0];
    // Seqs 1..=20; the odd ones never reach anyone but the last (20) does.
    assert_eq!(l["expected_deliveries"], 60);
    assert_eq!(l["delivered"], 30);
    assert_eq!(l["skipped"], 30);
    assert_eq!(l["lost"], 0);
    assert_eq!(l["final_missed"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_envelopes() {
    let addr = jobcast_loadgen::echo::spawn().await.unwrap();
    let args = [
        "--transport",
        "ws",
        "--subscribers",
        "4",
        "--job-prefix",
        "ws-",
    ];
    let lines = tokio::task::spawn_blocking(move || loadgen(addr, &args))
        .await
        .unwrap();
    let l = &lines[0];
    assert_eq!(l["transport"], "ws");
    assert_eq!(l["connected"], 4);
    assert_eq!(
        (l["expected_deliveries"].as_u64(), l["delivered"].as_u64()),
        (Some(80), Some(80))
    );
    assert_eq!(l["lost"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_spread_over_several_urls() {
    // Two separate gateways; messages reach only the first one, so only the
    // subscribers that connected there can receive them.
    let first = jobcast_loadgen::echo::spawn().await.unwrap();
    let second = jobcast_loadgen::echo::spawn().await.unwrap();
    let args = [
        "--subscribers",
        "6",
        "--procs",
        "2",
        "--job-prefix",
        "spread-",
    ];
    let lines = tokio::task::spawn_blocking(move || loadgen_over(&[first, second], first, &args))
        .await
        .unwrap();
    let l = &lines[0];
    assert_eq!(l["urls"], 2);
    assert_eq!(l["connected"], 6);
    assert_eq!(l["connected_per_url"], serde_json::json!([3, 3]));
    assert_eq!(l["connect_errors"], 0);
    assert!(l["connect_ms"]["max"].as_f64().unwrap() > 0.0);
    // 20 messages to the one job, 6 watchers: the 3 on the first gateway get
    // all of them, the 3 on the second none (no later state either: lost).
    assert_eq!(l["expected_deliveries"], 120);
    assert_eq!(l["delivered"], 60);
    assert_eq!(l["lost"], 60);
    assert_eq!(l["final_missed"], 3);
}
