//! Retries on SQS's own clock. Every test here goes through moto's real receive, visibility
//! and delete, as Lambda's poller would: a record that failed for a passing reason comes back
//! after the retry schedule's step, not after the queue's visibility timeout.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use dealmachine_sim::FileSpec;

use crate::helpers::{Setup, TestApp, spawn_app_with};

/// What a deployed queue's 5400 s stands for here: far longer than any wait below.
const QUEUE_TIMEOUT: &str = "900";

async fn app_with(schedule: &str, queue_timeout: &str) -> TestApp {
    let app = spawn_app_with(Setup {
        env: vec![("RETRY_SCHEDULE_SECONDS", schedule.into())],
        ..Default::default()
    })
    .await;
    app.set_queue_attribute(&app.queue_url, QueueAttributeName::VisibilityTimeout, queue_timeout).await;
    app
}

fn answers(app: &TestApp) -> Vec<u16> {
    app.webhooks().iter().map(|h| h.answered).collect()
}

#[tokio::test]
async fn a_record_that_failed_comes_back_after_the_first_step_not_the_visibility_timeout() {
    let app = app_with("5,900", QUEUE_TIMEOUT).await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    app.send(&app.queue_url, &id, &HashMap::new()).await;
    // The endpoint is down for the first delivery's three tries, then it recovers.
    app.receiver.answer_next(&[503, 503, 503]);

    assert_eq!(app.poll(Duration::from_secs(5)).await.len(), 1);
    let recovered = Instant::now();

    assert_eq!(answers(&app), [503, 503, 503]);
    assert_eq!(app.queue_depth(&app.queue_url).await, (0, 1), "kept on the queue, hidden");
    assert!(app.receive(&app.queue_url, Duration::ZERO).await.is_empty(), "not shown again at once");
    let again = app
        .poll_until(Duration::from_secs(120))
        .await
        .expect("back after the schedule's 5 s, long before the queue's 900 s");
    let waited = recovered.elapsed();

    assert!(waited >= Duration::from_secs(2), "hidden for the step: {waited:?}");
    assert_eq!(again[0].system["ApproximateReceiveCount"], "2");
    assert_eq!(answers(&app), [503, 503, 503, 200], "delivered on the second delivery");
    let hooks = app.webhooks();
    assert_eq!(hooks[3].body["type"], "export.completed");
    assert_eq!(hooks[3].webhook_id, hooks[0].webhook_id);
    assert_eq!(app.queue_depth(&app.queue_url).await, (0, 0), "done and deleted");
    assert_eq!(app.sim.seen_matching("/files/").len(), 1, "the retry sent only the webhook");
    eprintln!("recovery to delivery: {:.1} s with a first step of 5 s", waited.as_secs_f64());
}

#[tokio::test]
async fn a_record_whose_visibility_cannot_be_changed_is_still_retried_after_the_queue_timeout() {
    // A schedule far longer than the queue's timeout: if the record came back on the
    // schedule, it would not be back within the test.
    let app = app_with("900", "3").await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 2, 10)]);
    app.send(&app.queue_url, &id, &HashMap::new()).await;
    app.receiver.answer_next(&[500]);

    // A receipt handle SQS no longer accepts, as after a long invocation: the change fails.
    let stale = |event: &mut serde_json::Value| event["Records"][0]["receiptHandle"] = "stale".into();
    assert_eq!(app.poll_with(&app.relay, Duration::from_secs(5), stale).await.len(), 1);

    assert_eq!(answers(&app), [500]);
    let again =
        app.poll_until(Duration::from_secs(60)).await.expect("not deleted: back after the queue's 3 s");
    assert_eq!(again[0].system["ApproximateReceiveCount"], "2");
    assert_eq!(answers(&app), [500, 200]);
    assert_eq!(app.queue_depth(&app.queue_url).await, (0, 0));
}

#[tokio::test]
async fn a_record_that_can_never_succeed_goes_to_the_dead_letter_queue_at_once() {
    let app = app_with("5", QUEUE_TIMEOUT).await;
    app.send(&app.queue_url, "../../etc/passwd", &HashMap::new()).await;

    assert_eq!(app.poll(Duration::from_secs(5)).await.len(), 1);

    assert_eq!(app.queue_depth(&app.queue_url).await, (0, 0), "acknowledged, not retried");
    let dead = app.receive(&app.dlq_url, Duration::from_secs(1)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attributes["error_code"], "invalid_export_id");
}
