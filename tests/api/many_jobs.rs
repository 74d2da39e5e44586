//! Several jobs on one connection (`/events?job=…`, `/poll?job=…`) and group
//! streams (`/groups/{group}/…`): the door refuses by job, events name their
//! job, the cursor resumes across every job, and a job watched by a list
//! shares the one upstream subscription of a single watcher.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{Value, json};

use crate::app::{Options, TestApp, bearer, claims, doc, sign, spawn_app, spawn_app_with};
use crate::clients::{Gateway, Sse, SseEvent};

/// The next `progress` or `done` event, as (event, job, data).
async fn next_state(s: &mut Sse) -> (String, String, SseEvent) {
    loop {
        let ev = s.next_event().await.expect("an event");
        if ev.event == "progress" || ev.event == "done" {
            let job = ev.json()["job_id"].as_str().expect("job_id").to_owned();
            return (ev.event.clone(), job, ev);
        }
    }
}

/// Ok when no event (comments aside) comes within `bound`; else the event.
async fn nothing_within(s: &mut Sse, bound: Duration) -> Result<(), Option<SseEvent>> {
    match tokio::time::timeout(bound, s.next_event()).await {
        Err(_) => Ok(()),
        Ok(ev) => Err(ev),
    }
}

#[tokio::test]
async fn a_list_stream_carries_every_job_and_ends_after_the_last_done() {
    let app = spawn_app().await;
    app.set("a", &doc(1, "running")).await;
    app.set("b", &doc(5, "running")).await;
    let token = app.token("alice");

    let mut s = app.sse("/events?job=a&job=b&job=a", &bearer(&token)).await;

    assert_eq!(s.status, 200);
    assert_eq!(
        s.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(
        s.expect("connected").await.json(),
        json!({"jobs": ["a", "b"]})
    );
    let mut first = [next_state(&mut s).await, next_state(&mut s).await];
    first.sort_by(|x, y| x.1.cmp(&y.1));
    let a = first[0].2.json();
    assert_eq!(
        a,
        json!({"job_id":"a","id":"1","document":serde_json::from_str::<Value>(&doc(1, "running")).unwrap()}),
        "the document unchanged, wrapped with its job and id"
    );
    assert_eq!(first[1].2.json()["id"], "5");
    assert!(
        first
            .iter()
            .all(|(_, _, ev)| ev.id.as_deref().is_some_and(|c| !c.is_empty()))
    );

    app.set("a", &doc(2, "completed")).await;
    let (event, job, ev) = next_state(&mut s).await;
    assert_eq!((event.as_str(), job.as_str()), ("progress", "a"));
    assert_eq!(ev.json()["document"]["status"], "completed");
    let (event, _, ev) = next_state(&mut s).await;
    assert_eq!(event, "done");
    assert_eq!(ev.json(), json!({"job_id":"a","status":"completed"}));

    app.set("b", &doc(6, "failed")).await;
    assert_eq!(next_state(&mut s).await.0, "progress");
    let (event, job, _) = next_state(&mut s).await;
    assert_eq!((event.as_str(), job.as_str()), ("done", "b"));
    s.expect_end().await;
}

#[tokio::test]
async fn a_refused_job_is_named_and_nothing_is_written() {
    let app = spawn_app().await;
    app.set("mine", &doc(1, "running")).await;
    app.set("theirs", r#"{"seq":1,"owner_id":"mallory"}"#).await;
    let token = app.token("alice");

    let s = app
        .sse("/events?job=mine&job=theirs", &bearer(&token))
        .await;
    assert_eq!(s.status, 403);
    let body: Value = reqwest::get(app.url("/events?job=mine&job=nope%20x"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["job_id"], "nope x", "a bad id is named too: {body}");

    let res = reqwest::Client::new()
        .get(app.url("/events?job=mine&job=theirs"))
        .header("authorization", bearer(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["error"].as_str(), body["job_id"].as_str()),
        (Some("forbidden"), Some("theirs"))
    );
    // An unknown job is refused like another's (no probing).
    let res = reqwest::Client::new()
        .get(app.url("/poll?job=mine&job=ghost"))
        .header("authorization", bearer(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.json::<Value>().await.unwrap()["job_id"], "ghost");
}

#[tokio::test]
async fn more_jobs_than_the_limit_are_a_bad_request() {
    let app = spawn_app().await;
    let token = app.token("alice");
    let query: Vec<String> = (0..=100).map(|i| format!("job=j{i}")).collect();
    let res = reqwest::Client::new()
        .get(app.url(&format!("/events?{}", query.join("&"))))
        .header("authorization", bearer(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("at most 100"));
    let none = reqwest::Client::new()
        .get(app.url("/events"))
        .header("authorization", bearer(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 400);
}

#[tokio::test]
async fn resuming_with_the_cursor_sends_only_unseen_states() {
    let app = spawn_app().await;
    app.set("a", &doc(1, "running")).await;
    app.set("b", &doc(1, "running")).await;
    app.set("c", &doc(1, "running")).await;
    let token = app.token("alice");
    let path = "/events?job=a&job=b&job=c";

    let mut s = app.sse(path, &bearer(&token)).await;
    s.expect("connected").await;
    for _ in 0..3 {
        next_state(&mut s).await;
    }
    app.set("a", &doc(2, "completed")).await;
    next_state(&mut s).await;
    let (event, _, done) = next_state(&mut s).await;
    assert_eq!(event, "done");
    let cursor = done.id.expect("the cursor");
    drop(s);
    app.set("b", &doc(2, "running")).await;

    let mut s = app
        .sse_with(
            path,
            &[
                ("authorization", &bearer(&token)),
                ("last-event-id", &cursor),
            ],
        )
        .await;
    s.expect("connected").await;
    let (event, job, ev) = next_state(&mut s).await;
    assert_eq!(
        (event.as_str(), job.as_str()),
        ("progress", "b"),
        "only b changed"
    );
    assert_eq!(ev.json()["id"], "2");
    let quiet = nothing_within(&mut s, Duration::from_millis(500)).await;
    assert!(
        quiet.is_ok(),
        "a (ended, seen) and c (seen) are not re-sent: {quiet:?}"
    );
    drop(s);

    // Everything ended and every end seen: 204.
    app.set("b", &doc(3, "completed")).await;
    app.set("c", &doc(2, "completed")).await;
    let mut s = app
        .sse(&format!("{path}&cursor={cursor}"), &bearer(&token))
        .await;
    let mut last = String::new();
    for _ in 0..4 {
        last = next_state(&mut s).await.2.id.expect("cursor");
    }
    s.expect_end().await;
    let again = app
        .sse(&format!("{path}&cursor={last}"), &bearer(&token))
        .await;
    assert_eq!(again.status, 204);
}

#[tokio::test]
async fn a_hundred_long_ids_make_a_cursor_under_four_kib() {
    // A hundred 200-character ids do not fit in a URL (8 KiB request head):
    // the group of them does.
    let app = spawn_app().await;
    let jobs: Vec<String> = (0..100)
        .map(|i| format!("{i:03}-{}", "x".repeat(196)))
        .collect();
    let mut r = app.redis().await;
    for job in &jobs {
        let _: () = r
            .set_ex(app.key(job), r#"{"p":1,"status":"completed"}"#, 60)
            .await
            .unwrap();
        sadd(&app, "big", job).await;
    }
    let res = reqwest::Client::new()
        .get(app.url("/groups/big/poll"))
        .header("authorization", bearer(&group_token(&[], &["admin"])))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["events"].as_array().unwrap().len(),
        200,
        "a progress and a done each"
    );
    let cursor = body["cursor"].as_str().unwrap();
    assert!(cursor.len() < 4096, "{} bytes", cursor.len());
    assert!(body.get("ended").is_none(), "a group stream never ends");
}

#[tokio::test]
async fn long_poll_answers_every_unseen_state_then_waits() {
    let app = spawn_app().await;
    app.set("a", &doc(1, "running")).await;
    app.set("b", &doc(3, "running")).await;
    let token = app.token("alice");
    let client = reqwest::Client::new();
    let poll = |q: String| {
        client
            .get(app.url(&format!("/poll?job=a&job=b&timeout=5{q}")))
            .header("authorization", bearer(&token))
            .send()
    };

    let first: Value = poll(String::new()).await.unwrap().json().await.unwrap();
    let events = first["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e["type"] == "progress"));
    assert!(
        events
            .iter()
            .any(|e| e["job_id"] == "b" && e["id"] == "3" && e["document"]["seq"] == 3)
    );
    let cursor = first["cursor"].as_str().unwrap().to_owned();

    let waiting = tokio::spawn(poll(format!("&cursor={cursor}")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.set("b", &doc(4, "completed")).await;
    let res = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 200);
    let next: Value = res.json().await.unwrap();
    let types: Vec<(&str, &str)> = next["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), e["job_id"].as_str().unwrap()))
        .collect();
    assert_eq!(types, [("progress", "b"), ("done", "b")]);
    assert!(next.get("ended").is_none(), "a still runs");

    let cursor = next["cursor"].as_str().unwrap();
    let quiet = client
        .get(app.url(&format!("/poll?job=a&job=b&timeout=1&cursor={cursor}")))
        .header("authorization", bearer(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(quiet.status(), 204);
}

#[tokio::test]
async fn a_job_in_a_list_shares_the_single_watchers_subscription() {
    let app = spawn_app().await;
    app.set("shared", &doc(1, "running")).await;
    app.set("other", &doc(1, "running")).await;
    let token = app.token("alice");

    let mut single = app.sse("/jobs/shared/events", &bearer(&token)).await;
    single.expect("connected").await;
    single.expect("progress").await;
    let mut list = app
        .sse("/events?job=shared&job=other", &bearer(&token))
        .await;
    list.expect("connected").await;
    next_state(&mut list).await;
    next_state(&mut list).await;

    assert_eq!(app.numsub(&app.keyspace_channel("shared")).await, 1);
    assert_eq!(app.numsub(&app.key("shared")).await, 1);
    app.set("shared", &doc(2, "running")).await;
    assert_eq!(single.expect("progress").await.id.as_deref(), Some("2"));
    assert_eq!(next_state(&mut list).await.2.json()["id"], "2");
}

#[tokio::test]
async fn a_list_stream_is_one_connection_for_the_limits() {
    let app = spawn_app_with(Options {
        tweak: Box::new(|s| s.max_connections_per_user = 2),
        ..Options::default()
    })
    .await;
    for job in ["a", "b", "c"] {
        app.set(job, &doc(1, "running")).await;
    }
    let token = app.token("alice");
    let mut list = app.sse("/events?job=a&job=b&job=c", &bearer(&token)).await;
    assert_eq!(list.status, 200);
    list.expect("connected").await;
    let single = app.sse("/jobs/a/events", &bearer(&token)).await;
    assert_eq!(single.status, 200, "three jobs took one slot of two");
    let third = app.sse("/events?job=b", &bearer(&token)).await;
    assert_eq!(third.status, 429);
}

fn group_token(groups: &[&str], roles: &[&str]) -> String {
    let mut c = claims("viewer");
    c.groups = groups.iter().map(|g| g.to_string()).collect();
    c.roles = roles.iter().map(|r| r.to_string()).collect();
    sign(&c)
}

async fn sadd(app: &TestApp, group: &str, job: &str) {
    let mut r = app.redis().await;
    let _: () = r
        .sadd(format!("progress:group:{group}"), job)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_group_stream_follows_the_set_including_jobs_that_join_later() {
    let app = spawn_app().await;
    app.set("g1", &doc(1, "running")).await;
    sadd(&app, "proj", "g1").await;
    let token = group_token(&["proj"], &[]);

    let mut s = app.sse("/groups/proj/events", &bearer(&token)).await;
    assert_eq!(s.status, 200);
    assert_eq!(
        s.expect("connected").await.json(),
        json!({"group":"proj","jobs":["g1"]})
    );
    assert_eq!(next_state(&mut s).await.1, "g1");

    app.set("g2", &doc(7, "running")).await;
    sadd(&app, "proj", "g2").await;
    assert_eq!(s.expect("joined").await.json(), json!({"job_id":"g2"}));
    let (event, job, ev) = next_state(&mut s).await;
    assert_eq!((event.as_str(), job.as_str()), ("progress", "g2"));
    assert_eq!(ev.json()["id"], "7");

    app.set("g1", &doc(2, "completed")).await;
    assert_eq!(next_state(&mut s).await.0, "progress");
    assert_eq!(next_state(&mut s).await.0, "done");
    app.set("g2", &doc(8, "running")).await;
    assert_eq!(
        next_state(&mut s).await.2.json()["id"],
        "8",
        "a group stream stays open"
    );
}

#[tokio::test]
async fn group_streams_take_the_groups_claim_or_admin() {
    let app = spawn_app().await;
    sadd(&app, "proj", "g1").await;
    let status = |token: String| {
        let url = app.url("/groups/proj/poll?timeout=0");
        async move {
            reqwest::Client::new()
                .get(url)
                .header("authorization", bearer(&token))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(group_token(&["other"], &[])).await, 403);
    assert_eq!(status(app.token("alice")).await, 403, "no groups claim");
    assert_eq!(status(group_token(&["proj"], &[])).await, 204);
    assert_eq!(status(group_token(&["*"], &[])).await, 204);
    assert_eq!(status(group_token(&[], &["admin"])).await, 204);
    assert_eq!(status(group_token(&["bad name"], &[])).await, 403);
    let bad = reqwest::get(app.url("/groups/bad*name/events"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn a_silent_job_is_reported_stalled_on_a_list_and_the_next_state_clears_it() {
    let app = spawn_app().await;
    app.set("slow", r#"{"seq":1,"owner_id":"alice","stall_after_s":1}"#)
        .await;
    let token = app.token("alice");
    let mut s = app.sse("/events?job=slow", &bearer(&token)).await;
    next_state(&mut s).await;

    let stalled = s.expect("stalled").await.json();
    assert_eq!(stalled["job_id"], "slow");
    assert!(
        stalled["seconds_since_update"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    );
    let gauge = app.metric("jobcast_stalled_jobs", "").await;
    assert!(gauge >= 1.0, "the gauge counts it: {gauge}");

    app.set("slow", r#"{"seq":2,"owner_id":"alice","stall_after_s":30}"#)
        .await;
    assert_eq!(next_state(&mut s).await.2.json()["id"], "2");
    let quiet = nothing_within(&mut s, Duration::from_millis(1500)).await;
    assert!(quiet.is_ok(), "cleared, not re-sent: {quiet:?}");
}

async fn ws_send(ws: &mut crate::clients::Ws, value: Value) {
    use futures::SinkExt;
    ws.stream
        .send(tokio_tungstenite::tungstenite::Message::text(
            value.to_string(),
        ))
        .await
        .expect("send");
}

/// The next frame, which must be of this `type`.
async fn ws_expect(ws: &mut crate::clients::Ws, kind: &str) -> Value {
    match ws.next_json().await {
        Some(v) if v["type"] == kind => v,
        other => panic!("expected ws type `{kind}`, got {other:?}"),
    }
}

#[tokio::test]
async fn a_websocket_list_streams_every_job_and_closes_after_the_last_done() {
    let app = spawn_app().await;
    app.set("a", &doc(1, "running")).await;
    app.set("b", &doc(2, "running")).await;
    let token = app.token("alice");
    let mut ws = app.ws("/ws?job=a&job=b", &bearer(&token)).await;

    assert_eq!(
        ws_expect(&mut ws, "connected").await["jobs"],
        json!(["a", "b"])
    );
    let mut first = [
        ws_expect(&mut ws, "progress").await,
        ws_expect(&mut ws, "progress").await,
    ];
    first.sort_by_key(|v| v["job_id"].as_str().unwrap().to_owned());
    assert_eq!(first[0]["document"]["seq"], 1);
    assert_eq!(first[1]["id"], "2");
    assert!(first.iter().all(|v| v["cursor"].is_string()));

    app.set("a", &doc(3, "completed")).await;
    assert_eq!(ws_expect(&mut ws, "progress").await["job_id"], "a");
    let done = ws_expect(&mut ws, "done").await;
    assert_eq!(
        (done["job_id"].as_str(), done["status"].as_str()),
        (Some("a"), Some("completed"))
    );
    app.set("b", &doc(4, "cancelled")).await;
    ws_expect(&mut ws, "progress").await;
    ws_expect(&mut ws, "done").await;
    assert_eq!(ws.expect_close().await, 1000);
}

#[tokio::test]
async fn websocket_clients_watch_and_unwatch_in_band() {
    let app = spawn_app().await;
    app.set("a", &doc(1, "running")).await;
    app.set("c", &doc(9, "running")).await;
    app.set("theirs", r#"{"seq":1,"owner_id":"mallory"}"#).await;
    let token = app.token("alice");
    let mut ws = app.ws("/ws?job=a", &bearer(&token)).await;
    ws_expect(&mut ws, "connected").await;
    ws_expect(&mut ws, "progress").await;

    ws_send(&mut ws, json!({"type":"watch","job":"theirs"})).await;
    let refused = ws_expect(&mut ws, "error").await;
    assert_eq!(
        refused,
        json!({"type":"error","job":"theirs","error":"forbidden"})
    );

    ws_send(&mut ws, json!({"type":"watch","job":"c"})).await;
    assert_eq!(ws_expect(&mut ws, "watching").await["job"], "c");
    let c = ws_expect(&mut ws, "progress").await;
    assert_eq!(
        (c["job_id"].as_str(), c["id"].as_str()),
        (Some("c"), Some("9"))
    );

    ws_send(&mut ws, json!({"type":"unwatch","job":"a"})).await;
    assert_eq!(ws_expect(&mut ws, "unwatching").await["job"], "a");
    app.set("a", &doc(2, "running")).await;
    app.set("c", &doc(10, "running")).await;
    let next = ws_expect(&mut ws, "progress").await;
    assert_eq!(next["job_id"], "c", "a is no longer watched");
    ws_send(&mut ws, json!({"type":"unwatch","job":"c"})).await;
    ws_expect(&mut ws, "unwatching").await;
    ws_send(&mut ws, json!({"type":"watch","job":"a"})).await;
    ws_expect(&mut ws, "watching").await;
    assert_eq!(
        ws_expect(&mut ws, "progress").await["id"],
        "2",
        "an emptied set stayed open"
    );
}

#[tokio::test]
async fn a_websocket_list_refuses_a_foreign_job_before_upgrading() {
    let app = spawn_app().await;
    app.set("a", &doc(1, "running")).await;
    app.set("theirs", r#"{"seq":1,"owner_id":"mallory"}"#).await;
    let err = app
        .ws_with(
            "/ws?job=a&job=theirs",
            &[("authorization", &bearer(&app.token("alice")))],
        )
        .await
        .err()
        .expect("refused");
    assert_eq!(err.0, 403);
    let body: Value = serde_json::from_str(&err.1).unwrap();
    assert_eq!(body["job_id"], "theirs");
}
