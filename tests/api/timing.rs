//! Progress-aware poll timing: the next poll comes just after the export should finish, within
//! the configured delays, and on the doubling schedule when progress says nothing. Asserted on
//! what the relay asks SQS to take: the message and its `DelaySeconds`.

use std::ops::RangeInclusive;
use std::time::Duration;

use chrono::Utc;
use dealmachine_sim::{ExportSpec, FileSpec, Shape, Status};
use export_relay::transfer::Deadline;
use serde_json::{Value, json};

use crate::helpers::{Setup, TestApp, spawn_app, spawn_app_with, sqs_event};
use crate::s3_proxy::{FaultyS3, SentMessage, relay_through};

/// Doubling's delay after poll 3 with `POLL_INITIAL_DELAY_SECONDS=2`: 8 s less up to 20 %
/// jitter, rounded up.
const DOUBLING_AFTER_POLL_3: RangeInclusive<i64> = 7..=8;

fn ago(seconds: i64) -> chrono::DateTime<Utc> {
    Utc::now() - chrono::Duration::seconds(seconds)
}

/// An export that started `started_ago` seconds ago and processes for `processing` seconds,
/// its progress rising in `shape`.
fn running(app: &TestApp, started_ago: i64, processing: u64, shape: Shape) -> String {
    app.sim.add_export(ExportSpec {
        created_at: Some(ago(started_ago)),
        ..ExportSpec::timed(
            Duration::ZERO,
            Duration::from_secs(processing),
            shape,
            vec![FileSpec::csv("a.csv.gz", 1, 10)],
        )
    })
}

/// An export that stays processing at progress 50.
fn stays_at_50(app: &TestApp) -> String {
    app.sim.add_export(ExportSpec::scripted(&[Status::Processing], vec![]))
}

/// The body of poll `attempt`, first polled `first_seen_ago` seconds ago, whose previous poll
/// saw `(progress, seconds ago, stalled)`.
fn poll_body(id: &str, attempt: u32, first_seen_ago: i64, last_seen: Option<(u32, i64, bool)>) -> String {
    let mut body = json!({"export_id": id, "attempt": attempt, "first_seen_at": ago(first_seen_ago)});
    if let Some((progress, seconds, stalled)) = last_seen {
        body["last_seen"] = json!({"progress": progress, "at": ago(seconds), "stalled": stalled});
    }
    body.to_string()
}

/// Relays each body as a batch of its own, and returns what the relay asked SQS to take.
async fn requeue_each(app: &TestApp, bodies: &[String]) -> Vec<SentMessage> {
    let (proxy, url) = FaultyS3::recording().await;
    let relay = relay_through(app, &url).await;
    for body in bodies {
        let response = relay.handle(sqs_event(&[body]), Deadline::NONE).await.unwrap();
        assert_eq!(response["batchItemFailures"], json!([]), "{body}");
    }
    let sent = proxy.sqs_sent();
    assert_eq!(sent.len(), bodies.len(), "each running export is requeued once");
    assert!(sent.iter().all(|m| m.queue_url == app.queue_url));
    sent
}

fn delays(sent: &[SentMessage]) -> Vec<i64> {
    sent.iter().map(|m| m.delay_seconds).collect()
}

fn progress_seen(message: &SentMessage) -> u64 {
    message.body["last_seen"]["progress"].as_u64().expect("last_seen.progress")
}

#[tokio::test]
async fn a_running_export_is_polled_again_just_after_its_estimated_finish() {
    let app = spawn_app().await;
    // Half of 200 s done: progress 50 now, and 30 forty seconds ago, so about 100 s are left.
    let id = running(&app, 100, 200, Shape::Steady);

    let sent = requeue_each(&app, &[poll_body(&id, 3, 100, Some((30, 40, false)))]).await;

    let delay = sent[0].delay_seconds;
    assert!((95..=110).contains(&delay), "about the 100 s left, not doubling's 8 s: {delay}");
    let next: &Value = &sent[0].body;
    assert_eq!(next["attempt"], 4);
    assert!((49..=51).contains(&progress_seen(&sent[0])), "{next}");
    let seen_at: chrono::DateTime<Utc> = next["last_seen"]["at"].as_str().unwrap().parse().unwrap();
    assert!((Utc::now() - seen_at).num_seconds() < 5, "seen by this poll");
    assert_eq!(next.get("last_seen").and_then(|s| s.get("stalled")), None, "only a stall is marked");
    let requests: Vec<String> = app.sim.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(requests, vec![format!("/v1/exports/{id}")], "one GET for one due poll");
}

#[tokio::test]
async fn an_estimate_is_held_to_the_configured_delays_and_the_doubling_schedule() {
    let app = spawn_app_with(Setup {
        env: vec![("POLL_INITIAL_DELAY_SECONDS", "30".into()), ("POLL_MAX_DELAY_SECONDS", "100".into())],
        ..Default::default()
    })
    .await;
    // About 100 s left, beyond the maximum.
    let far = running(&app, 100, 200, Shape::Steady);
    // About 10 s left, within the initial delay; the second at its second poll, 30 s after
    // its first, when doubling's third poll is still 60 s away.
    let near = running(&app, 190, 200, Shape::Steady);
    let early = running(&app, 190, 200, Shape::Steady);

    let sent = requeue_each(
        &app,
        &[
            poll_body(&far, 3, 1000, Some((30, 40, false))),
            poll_body(&near, 3, 1000, Some((85, 20, false))),
            poll_body(&early, 2, 30, Some((85, 20, false))),
        ],
    )
    .await;

    assert_eq!(delays(&sent), vec![100, 30, 60], "maximum, initial delay, doubling's next poll");
}

#[tokio::test]
async fn progress_that_says_nothing_falls_back_to_the_doubling_schedule() {
    let app = spawn_app().await;
    let (stuck, backwards, not_started, resumed, old_body) =
        (stays_at_50(&app), stays_at_50(&app), stays_at_50(&app), stays_at_50(&app), stays_at_50(&app));
    // Progress 0 all along: it will jump from 0 to 100.
    let jumping = running(&app, 100, 200, Shape::Jumping);

    let sent = requeue_each(
        &app,
        &[
            poll_body(&stuck, 3, 1000, Some((50, 30, false))),
            poll_body(&backwards, 3, 1000, Some((80, 30, false))),
            poll_body(&not_started, 3, 1000, Some((0, 30, false))),
            poll_body(&resumed, 3, 1000, Some((20, 30, true))),
            poll_body(&jumping, 3, 1000, Some((0, 30, false))),
            // A body written before last_seen existed.
            json!({"export_id": old_body, "metadata": null, "attempt": 3, "first_seen_at": ago(1000)})
                .to_string(),
        ],
    )
    .await;

    for (message, case) in sent.iter().zip(["stuck", "backwards", "not started", "resumed", "jumping", "old"])
    {
        assert!(DOUBLING_AFTER_POLL_3.contains(&message.delay_seconds), "{case}: {}", message.delay_seconds);
        assert_eq!(message.body["attempt"], 4, "{case}");
    }
    let carried: Vec<(u64, bool)> = sent
        .iter()
        .map(|m| (progress_seen(m), m.body["last_seen"]["stalled"].as_bool().unwrap_or(false)))
        .collect();
    assert_eq!(
        carried,
        vec![(50, true), (50, false), (50, false), (50, false), (0, true), (50, false)],
        "each next poll is told what this one saw, and whether it repeats the one before"
    );
}

#[tokio::test]
async fn the_doubling_setting_ignores_progress() {
    let app =
        spawn_app_with(Setup { env: vec![("POLL_SCHEDULE", "doubling".into())], ..Default::default() }).await;
    let id = running(&app, 100, 200, Shape::Steady);

    let sent = requeue_each(&app, &[poll_body(&id, 3, 100, Some((30, 40, false)))]).await;

    assert!(DOUBLING_AFTER_POLL_3.contains(&sent[0].delay_seconds), "{}", sent[0].delay_seconds);
    assert!((49..=51).contains(&progress_seen(&sent[0])), "progress is still carried");
}
