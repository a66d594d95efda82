//! The scheduled sweep finds completed exports nobody enqueued, and relays each once.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use dealmachine_sim::{ExportSpec, FileSpec, SimOptions, Status};
use export_relay::dealmachine::parse_export;
use export_relay::events::ExportId;
use export_relay::manifest::{Ledger, Manifest};
use serde_json::{Value, json};

use crate::helpers::{Setup, TestApp, spawn_app, spawn_app_with};

fn add(
    app: &TestApp,
    n: usize,
    statuses: &[Status],
    age: chrono::Duration,
    expires_in: chrono::Duration,
) -> Vec<String> {
    (0..n)
        .map(|i| {
            app.sim.add_export(ExportSpec {
                created_at: Some(Utc::now() - age - chrono::Duration::seconds(i as i64)),
                expires_in,
                ..ExportSpec::scripted(statuses, vec![FileSpec::csv("a.csv.gz", i as u64, 5)])
            })
        })
        .collect()
}

/// Every message on the queue, drained.
async fn drain(app: &TestApp) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let batch = app.receive(&app.queue_url, Duration::ZERO).await;
        if batch.is_empty() {
            return ids;
        }
        ids.extend(batch.iter().map(|m| m.body["export_id"].as_str().unwrap().to_string()));
    }
}

fn sweep_event() -> Value {
    json!({"version": "0", "id": "s1", "detail-type": "Scheduled Event", "source": "aws.scheduler", "detail": {}})
}

#[tokio::test]
async fn a_sweep_over_250_exports_enqueues_exactly_those_that_need_the_relay_once() {
    let app = spawn_app().await;
    let hour = chrono::Duration::hours(1);
    let week = chrono::Duration::days(7);
    let unrelayed = add(&app, 100, &[Status::Completed], hour, week);
    let relayed = add(&app, 30, &[Status::Completed], hour, week);
    let expired = add(&app, 20, &[Status::Completed], hour * 2, hour);
    let _too_old = add(&app, 30, &[Status::Completed], hour * 72, week);
    let pending = add(&app, 40, &[Status::Pending], hour, week);
    let processing = add(&app, 20, &[Status::Processing], hour, week);
    let _failed = add(&app, 10, &[Status::Failed], hour, week);
    let ledger = Ledger::new(app.s3.clone(), app.bucket.clone(), app.config.prefix.clone());
    for id in &relayed {
        let export =
            parse_export(json!({"data": {"export_id": id, "status": "completed"}}).to_string().as_bytes())
                .unwrap();
        ledger.commit(Manifest::new(&export, vec![])).await.unwrap();
    }
    let already_polling = &pending[..10];
    for id in already_polling {
        ledger.mark_in_flight(&ExportId::parse(id).unwrap()).await.unwrap();
    }

    let summary = app.invoke(sweep_event()).await;

    assert_eq!(
        summary,
        json!({
            "pages_read": 4, "exports_seen": 210, "already_relayed": 30, "already_in_flight": 10,
            "enqueued_for_copy": 100, "enqueued_for_polling": 50, "skipped_expired": 20,
            "skipped_failed": 0, "stopped_early": false
        })
    );
    let queued = drain(&app).await;
    let expected: HashSet<&String> = unrelayed.iter().chain(&pending[10..]).chain(&processing).collect();
    assert_eq!(queued.len(), expected.len(), "each once");
    assert_eq!(queued.iter().collect::<HashSet<_>>(), expected);
    assert!(expired.iter().all(|id| !queued.contains(id)));

    // A second sweep finds every one of them on its way.
    let again = app.invoke(sweep_event()).await;
    assert_eq!(again["enqueued_for_copy"], 0);
    assert_eq!(again["enqueued_for_polling"], 0);
    assert_eq!(again["already_in_flight"], 160);
    assert!(drain(&app).await.is_empty());
}

#[tokio::test]
async fn what_a_sweep_enqueues_is_relayed_and_then_left_alone() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);

    let first = app.invoke(json!({"sweep": true})).await;
    assert_eq!(first["enqueued_for_copy"], 1);
    let body = app.receive(&app.queue_url, Duration::ZERO).await.remove(0).raw;
    assert!(app.deliver(&[&body]).await.is_empty());
    assert!(app.manifest(&id).await.is_some());

    let second = app.invoke(json!({"sweep": true})).await;
    assert_eq!(second["already_relayed"], 1);
    assert_eq!(second["enqueued_for_copy"], 0);
}

#[tokio::test]
async fn a_sweep_stops_early_when_the_rate_budget_is_spent() {
    let app = spawn_app_with(Setup {
        sim: SimOptions { reported_remaining: Some(5), ..SimOptions::default() },
        ..Default::default()
    })
    .await;
    let _ = add(&app, 150, &[Status::Completed], chrono::Duration::hours(1), chrono::Duration::days(7));

    let summary = app.invoke(json!({"sweep": true, "lookback_hours": 24})).await;

    assert_eq!(summary["pages_read"], 1, "one page, then the budget says stop");
    assert_eq!(summary["stopped_early"], true);
    assert!(summary["stop_reason"].as_str().unwrap().contains("SWEEP_RESERVE_REQUESTS"), "{summary}");
    assert_eq!(summary["enqueued_for_copy"], 100, "the first page's work is done");
    assert_eq!(app.sim.seen_matching("/v1/exports").len(), 1);
}

#[tokio::test]
async fn max_exports_bounds_a_sweep() {
    let app = spawn_app().await;
    let _ = add(&app, 30, &[Status::Completed], chrono::Duration::hours(1), chrono::Duration::days(7));
    let summary = app.invoke(json!({"sweep": true, "max_exports": 12})).await;
    assert_eq!(summary["exports_seen"], 12);
    assert_eq!(summary["enqueued_for_copy"], 12);
    assert_eq!(summary["stopped_early"], true);
}
