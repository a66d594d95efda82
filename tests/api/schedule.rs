//! Schedules and direct invokes use the same flow as the queue.

use std::time::Duration;

use dealmachine_sim::{ExportSpec, FileSpec, Status};
use serde_json::json;

use crate::helpers::{Setup, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_schedule_checks_each_export_once_and_hands_running_ones_to_the_queue() {
    let app = spawn_app_with(Setup::slow_polls()).await;
    let done = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    let running = app.sim.add_export(ExportSpec::scripted(&[Status::Pending], vec![]));
    let event = json!({
        "version": "0", "id": "e1", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": "2026-11-30T03:00:00Z", "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/relay"],
        "detail": {"export_ids": [done, running, "not an id"]}
    });

    let summary = app.invoke(event).await;

    assert_eq!(summary["checked"], 3);
    let outcomes: Vec<&str> = summary["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap_or("error"))
        .collect();
    assert_eq!(outcomes, vec!["completed", "requeued", "error"]);
    assert_eq!(app.file_keys().await, vec![app.key(&done, "a.csv.gz")]);
    assert_eq!(app.delayed_count().await, 1);
    assert_eq!(app.sim.seen_matching("/v1/exports/").len(), 2, "each valid export is checked once");
}

#[tokio::test]
async fn a_scheduler_input_without_envelope_works_the_same() {
    let app = spawn_app().await;
    let done = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    let summary = app.invoke(json!({"export_ids": [done]})).await;
    assert_eq!(summary["results"][0]["outcome"], "completed");
}

#[tokio::test]
async fn a_direct_invoke_answers_with_the_outcome() {
    let app = spawn_app().await;
    let done = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);

    let report = app.invoke(json!({"export_id": done, "metadata": {"by": "ops"}})).await;
    assert_eq!(report["export_id"], done.as_str());
    assert_eq!(report["outcome"], "completed");
    assert_eq!(report["files"][0]["key"], app.key(&done, "a.csv.gz").as_str());

    let missing = app.invoke(json!({"export_id": "nope"})).await;
    assert_eq!(missing["outcome"], "failed");
    assert_eq!(missing["error"]["code"], "export_not_found");
    assert!(
        app.receive(&app.dlq_url, Duration::ZERO).await.is_empty(),
        "a direct invoke answers the caller instead"
    );

    let err = app
        .relay
        .handle(json!({"hello": "world"}), export_relay::transfer::Deadline::NONE)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unrecognised event"));
}
