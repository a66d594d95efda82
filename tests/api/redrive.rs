//! Redrive: records on the dead-letter queue, moved back to the relay queue once their cause is
//! fixed, relay like any other. moto has no StartMessageMoveTask, so the move is done as an
//! operator's script would do it (docs/OPERATIONS.md): receive, send with the same body and
//! attributes, delete.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use dealmachine_sim::{ApiFault, FileSpec};

use crate::helpers::{QueuedMessage, Setup, TestApp, spawn_app_with};

/// Moves every message from the dead-letter queue to the relay queue, attributes and all.
async fn redrive(app: &TestApp) -> Vec<QueuedMessage> {
    let mut moved = Vec::new();
    loop {
        let batch = app.receive(&app.dlq_url, Duration::from_secs(1)).await;
        if batch.is_empty() {
            return moved;
        }
        for message in batch {
            app.send(&app.queue_url, &message.raw, &message.attributes).await;
            app.delete(&app.dlq_url, &message).await;
            moved.push(message);
        }
    }
}

/// Polls the relay queue, as the trigger would, until SQS's redrive policy has moved `count`
/// messages to the dead-letter queue.
async fn poll_until_dead_lettered(app: &TestApp, count: u64) {
    let started = Instant::now();
    while app.queue_depth(&app.dlq_url).await.0 < count {
        assert!(started.elapsed() < Duration::from_secs(60), "SQS did not dead-letter the record");
        app.poll(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn records_moved_back_from_the_dead_letter_queue_relay_normally() {
    let app =
        spawn_app_with(Setup { env: vec![("RETRY_SCHEDULE_SECONDS", "1".into())], ..Default::default() })
            .await;
    let dlq_arn = app.queue_arn(&app.dlq_url).await;
    let policy = format!(r#"{{"deadLetterTargetArn": "{dlq_arn}", "maxReceiveCount": 2}}"#);
    app.set_queue_attribute(&app.queue_url, QueueAttributeName::RedrivePolicy, &policy).await;

    // SQS dead-letters one: the endpoint stays down for both of its deliveries.
    let outage = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    app.receiver.answer_next(&[503; 6]);
    app.send(&app.queue_url, &outage, &HashMap::new()).await;
    poll_until_dead_lettered(&app, 1).await;

    // The relay sets one aside: the API refused the request (400) during a bad deploy of its own.
    let refused = app.completed(vec![FileSpec::csv("b.csv.gz", 2, 10)]);
    app.sim.push_faults(&[ApiFault::Raw {
        status: 400,
        content_type: "application/json",
        body: r#"{"error": {"code": "invalid_parameter", "message": "bad request", "request_id": "r1", "details": {}}}"#.into(),
    }]);
    app.send(&app.queue_url, &refused, &HashMap::new()).await;
    app.poll(Duration::from_secs(5)).await;
    assert_eq!(app.queue_depth(&app.dlq_url).await.0, 2);

    // The endpoint is back and the key valid again: move both back.
    let moved = redrive(&app).await;
    let mut codes: Vec<(String, Option<&str>)> =
        moved.iter().map(|m| (m.raw.clone(), m.attributes.get("error_code").map(String::as_str))).collect();
    codes.sort();
    let mut expected = vec![(outage.clone(), None), (refused.clone(), Some("api_error"))];
    expected.sort();
    assert_eq!(codes, expected, "one moved by SQS, one set aside by the relay with its reason");

    let started = Instant::now();
    while app.queue_depth(&app.queue_url).await != (0, 0) {
        assert!(started.elapsed() < Duration::from_secs(60), "the moved records were not relayed");
        app.poll(Duration::from_secs(1)).await;
    }

    assert_eq!(app.queue_depth(&app.dlq_url).await, (0, 0), "nothing came back to the DLQ");
    let delivered: Vec<String> = app
        .webhooks()
        .iter()
        .filter(|h| h.answered == 200 && h.verified && h.body["type"] == "export.completed")
        .map(|h| h.body["data"]["export_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(delivered.len(), 2);
    assert!(delivered.contains(&outage) && delivered.contains(&refused));
    for (id, file) in [(&outage, "a.csv.gz"), (&refused, "b.csv.gz")] {
        assert!(app.manifest(id).await.is_some(), "{id} committed");
        assert!(app.object(&app.key(id, file)).await.is_some(), "{id}'s file is in the bucket");
    }
    assert_eq!(
        app.sim.seen_matching(&format!("/files/{outage}/")).len(),
        1,
        "copied once, before the outage"
    );
}
