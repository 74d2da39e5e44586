//! The deploy files under `deploy/`: the systemd unit passes `systemd-analyze
//! verify` and is sandboxed; the Prometheus rules pass `promtool check rules`
//! and their unit tests; and the Grafana dashboard and the alert rules name
//! only metrics that a real jobcast process serves on `/metrics`, while the
//! dashboard shows every metric it serves. scripts/test.sh installs
//! systemd-analyze (Debian `systemd`) and promtool (Debian `prometheus`).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::app::{bearer, claims, sign};
use crate::child::ChildApp;
use crate::clients::Gateway as _;
use crate::support::{RedisServer, TestDb};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Runs `tool args`, failing the test loudly when the tool is not installed.
fn run(tool: &str, args: &[&str]) -> std::process::Output {
    match Command::new(tool).args(args).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "{tool} is needed for this test and could not be run ({e}); scripts/test.sh installs it \
             (Debian packages: systemd for systemd-analyze, prometheus for promtool)"
        ),
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify_and_is_sandboxed() {
    let unit = std::fs::read_to_string(format!("{REPO}/deploy/systemd/jobcast.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/jobcast serve",
        "EnvironmentFile=-/etc/jobcast/jobcast.env",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "LimitNOFILE=",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "the unit has {line}"
        );
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = std::env::temp_dir().join(format!("jobcast-unit-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jobcast.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/jobcast", env!("CARGO_BIN_EXE_jobcast")),
    )
    .unwrap();
    let path = path.to_str().unwrap();

    let verify = run("systemd-analyze", &["verify", path]);
    assert!(
        verify.status.success() && text(&verify).trim().is_empty(),
        "systemd-analyze verify: no error and no warning (unknown keys are warnings):\n{}",
        text(&verify)
    );
    // The sandboxing adds up: systemd's own exposure score, 0 (locked down) to 10.
    let security = run("systemd-analyze", &["security", "--offline=true", path]);
    let report = text(&security);
    let score: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for jobcast.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(
        score <= 2.0,
        "exposure {score} (want ≤ 2.0, \"OK\"):\n{report}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let rules = format!("{REPO}/deploy/prometheus/alerts.yml");
    let check = run("promtool", &["check", "rules", &rules]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("SUCCESS: 5 rules found"),
        "{}",
        text(&check)
    );
    let tests = run(
        "promtool",
        &[
            "test",
            "rules",
            &format!("{REPO}/deploy/prometheus/alerts_test.yml"),
        ],
    );
    assert!(tests.status.success(), "{}", text(&tests));
}

/// Metric names (`jobcast_…`) in a PromQL expression, histogram series folded
/// into their family.
fn names_in(expr: &str, into: &mut BTreeSet<String>) {
    let mut rest = expr;
    while let Some(at) = rest.find("jobcast_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| f.ends_with("_seconds")))
            .unwrap_or(name);
        into.insert(family.to_owned());
        rest = &tail[end..];
    }
}

fn dashboard_metrics() -> BTreeSet<String> {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{REPO}/deploy/grafana/jobcast.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut names = BTreeSet::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            names_in(target["expr"].as_str().expect("expr"), &mut names);
        }
    }
    names
}

fn alert_metrics() -> BTreeSet<String> {
    let rules = std::fs::read_to_string(format!("{REPO}/deploy/prometheus/alerts.yml")).unwrap();
    let mut names = BTreeSet::new();
    for line in rules.lines() {
        if let Some(expr) = line.trim().strip_prefix("expr:") {
            names_in(expr, &mut names);
        }
    }
    names
}

/// Metric families a scrape serves, from its `# TYPE` lines.
fn served(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn dashboard_and_alerts_name_only_served_metrics_and_show_every_one() {
    let redis = RedisServer::start().await;
    let db = TestDb::create().await;
    let app = ChildApp::spawn(
        &redis.url(),
        &[
            ("DATABASE_URL", db.url().to_owned()),
            ("JOBCAST_MAX_CONNECTIONS_PER_USER", "1".into()),
        ],
    )
    .await;

    // Traffic that makes the gateway emit what it emits on a normal day: a
    // watched job to its end, a refused token, a second stream over the limit.
    let doc = |seq: u32, status: &str| {
        format!(r#"{{"seq":{seq},"owner_id":"alice","status":"{status}"}}"#)
    };
    redis.set("progress:job:m-1", &doc(1, "running")).await;
    let token = sign(&claims("alice"));
    let auth = bearer(&token);
    let mut s = app.sse("/jobs/m-1/events", &auth).await;
    assert_eq!(s.status, 200);
    s.expect("connected").await;
    s.expect("progress").await;
    let over = app.sse("/jobs/m-1/events", &auth).await;
    assert_eq!(over.status, 429);
    let forged = app.sse("/jobs/m-1/events", "Bearer x.y.z").await;
    assert_eq!(forged.status, 401);
    redis.set("progress:job:m-1", &doc(2, "running")).await;
    redis.publish("progress:job:m-1", &doc(2, "running")).await;
    s.expect("progress").await;
    redis.set("progress:job:m-1", &doc(3, "completed")).await;
    redis
        .publish("progress:job:m-1", &doc(3, "completed"))
        .await;
    s.expect("progress").await;
    s.expect("done").await;
    drop(s);

    let dashboard = dashboard_metrics();
    let alerts = alert_metrics();
    assert!(
        dashboard.len() >= 20,
        "the dashboard names the metrics: {dashboard:?}"
    );
    // Gauges such as jobcast_postgres_up are set by background tasks: scrape
    // until the dashboard's metrics are all there, for a bounded time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let families = loop {
        let text = reqwest::get(app.url("/metrics"))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body");
        let families = served(&text);
        let missing: Vec<_> = dashboard.difference(&families).collect();
        if missing.is_empty() {
            break families;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dashboard names metrics /metrics does not serve: {missing:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let unserved: Vec<_> = alerts.difference(&families).collect();
    assert!(
        unserved.is_empty(),
        "alerts name metrics /metrics does not serve: {unserved:?}"
    );
    let unshown: Vec<_> = families.difference(&dashboard).collect();
    assert!(
        unshown.is_empty(),
        "served metrics missing from deploy/grafana/jobcast.json: {unshown:?}"
    );
    drop(db);
}
