//! A running export goes back on the queue with a growing delay, and the API's rate limits are
//! respected on the way.

use std::time::{Duration, Instant};

use dealmachine_sim::{ApiFault, ExportSpec, FileSpec, Status};
use serde_json::json;

use export_relay::transfer::Deadline;

use crate::helpers::{Setup, spawn_app, spawn_app_with, sqs_event};
use crate::s3_proxy::{FaultyS3, relay_through};

#[tokio::test]
async fn a_processing_export_is_requeued_with_the_delay_attempt_and_body() {
    // Long enough that the checks below run well inside the delay, even on a loaded machine.
    let setup = Setup { env: vec![("POLL_INITIAL_DELAY_SECONDS", "6".into())], ..Default::default() };
    let app = spawn_app_with(setup).await;
    let id = app.sim.add_export(ExportSpec::scripted(&[Status::Processing], vec![]));
    let body = json!({"export_id": id, "metadata": {"batch": 7}}).to_string();

    assert!(app.deliver(&[&body]).await.is_empty());

    // The message is held back, then arrives.
    assert_eq!(app.delayed_count().await, 1, "the poll is delayed");
    assert!(app.receive(&app.queue_url, Duration::ZERO).await.is_empty(), "not visible before its delay");
    let sent = Instant::now();
    let messages = app.receive(&app.queue_url, Duration::from_secs(15)).await;
    assert_eq!(messages.len(), 1);
    assert!(sent.elapsed() < Duration::from_secs(15));
    let next = &messages[0].body;
    assert_eq!(next["export_id"], id.as_str());
    assert_eq!(next["attempt"], 2);
    assert_eq!(next["metadata"], json!({"batch": 7}));
    let first_seen = next["first_seen_at"].as_str().expect("first_seen_at is set");
    chrono::DateTime::parse_from_rfc3339(first_seen).expect("RFC 3339");
    assert!(app.webhooks().is_empty(), "no webhook while running");

    // The next poll keeps first_seen_at and doubles the delay.
    let report = app.invoke(json!({"export_id": id, "attempt": 2, "first_seen_at": first_seen})).await;
    assert_eq!(report["outcome"], "requeued");
    assert_eq!(report["next_attempt"], 3);
    let delay = report["delay_seconds"].as_u64().unwrap();
    assert!((9..=12).contains(&delay), "about twice the initial 6 s, got {delay}");
}

#[tokio::test]
async fn polling_stops_with_export_timed_out_after_the_timeout() {
    let app = spawn_app().await;
    let id = app.sim.add_export(ExportSpec::scripted(&[Status::Pending], vec![]));
    let long_ago = (chrono::Utc::now() - chrono::Duration::days(2)).to_rfc3339();

    let report = app.invoke(json!({"export_id": id, "attempt": 90, "first_seen_at": long_ago})).await;

    assert_eq!(report["outcome"], "timed_out");
    assert_eq!(app.delayed_count().await, 0, "not requeued");
    let hooks = app.webhooks();
    assert_eq!(hooks[0].body["type"], "export.timed_out");
    assert_eq!(hooks[0].body["data"]["error"]["code"], "poll_timeout");
}

#[tokio::test]
async fn a_short_retry_after_is_waited_out_inside_the_invocation() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    app.sim.push_faults(&[ApiFault::RateLimited(1)]);

    let report = app.invoke(json!({"export_id": id})).await;

    assert_eq!(report["outcome"], "completed");
    let gets = app.sim.seen_matching("/v1/exports/");
    assert_eq!(gets.iter().map(|s| s.status).collect::<Vec<_>>(), vec![429, 200]);
    assert!(gets[1].at - gets[0].at >= Duration::from_secs(1), "waited for Retry-After");
}

#[tokio::test]
async fn a_long_retry_after_requeues_the_export_for_at_least_that_long() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    // Longer than the relay will sleep in an invocation (2 s in these tests).
    app.sim.push_faults(&[ApiFault::RateLimited(120)]);

    let (proxy, url) = FaultyS3::recording().await;
    let relay = relay_through(&app, &url).await;

    let response = relay.handle(sqs_event(&[&id]), Deadline::NONE).await.unwrap();

    assert_eq!(response["batchItemFailures"], json!([]), "the export is safely back on the queue");
    assert_eq!(app.sim.seen_matching("/v1/exports/").len(), 1, "no hammering");
    let sent = proxy.sqs_sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].queue_url, app.queue_url);
    assert_eq!(sent[0].body["export_id"], id.as_str());
    assert!(sent[0].delay_seconds >= 120, "held back at least the Retry-After: {sent:?}");
    assert_eq!(app.delayed_count().await, 1);
    assert_eq!(app.file_keys().await, Vec::<String>::new(), "no file");
    assert_eq!(app.keys().await, vec![app.key(&id, ".chain.json")], "the poll chain");
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_succeed() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    app.sim.push_faults(&[ApiFault::ServerError, ApiFault::ServerError]);

    let report = app.invoke(json!({"export_id": id})).await;

    assert_eq!(report["outcome"], "completed");
    let statuses: Vec<u16> = app.sim.seen_matching("/v1/exports/").iter().map(|s| s.status).collect();
    assert_eq!(statuses, vec![500, 500, 200]);
}
