//! The scheduled sweep finds exports nobody has in hand, in one drift-proof pass over the list,
//! and enqueues each once, within the rate budget, carrying on where the last sweep stopped.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use dealmachine_sim::{ApiFault, DownloadFault, ExportSpec, FileSpec, SimOptions, Status};
use export_relay::dealmachine::parse_export;
use export_relay::events::ExportId;
use export_relay::manifest::{Chain, ChainState, Manifest};
use serde_json::{Value, json};

use crate::helpers::{Setup, TestApp, spawn_app, spawn_app_with};

const HOUR: chrono::Duration = chrono::Duration::hours(1);
const WEEK: chrono::Duration = chrono::Duration::days(7);

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

/// Every visible message on the queue, drained.
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

/// Asserts each ID was enqueued once, and returns them as a set.
fn once(queued: &[String]) -> HashSet<&String> {
    let set: HashSet<&String> = queued.iter().collect();
    assert_eq!(set.len(), queued.len(), "no export enqueued twice");
    set
}

fn sweep_event() -> Value {
    json!({"version": "0", "id": "s1", "detail-type": "Scheduled Event", "source": "aws.scheduler", "detail": {}})
}

/// A minute's budget large enough that a sweep releases everything at once (no delays).
fn fast_release(sim: SimOptions) -> Setup {
    Setup { sim: SimOptions { per_minute_limit: Some(1000), ..sim }, ..Default::default() }
}

fn id(raw: &str) -> ExportId {
    ExportId::parse(raw).unwrap()
}

/// Replaces an export's chain, as a record or an earlier sweep would have left it.
async fn set_chain(app: &TestApp, export_id: &str, state: ChainState, age: chrono::Duration) {
    let ledger = app.ledger();
    let read = ledger.chain(&id(export_id)).await.unwrap();
    let chain = Chain { attempt: 1, state, by: "m-upstream".into(), at: Utc::now() - age };
    ledger.move_chain(&id(export_id), read.as_ref(), chain).await.unwrap().expect("written");
}

async fn json_object(app: &TestApp, key: &str) -> Value {
    let (bytes, _) = app.object(key).await.unwrap_or_else(|| panic!("{key} is in the bucket"));
    serde_json::from_slice(&bytes).unwrap()
}

async fn cursor(app: &TestApp) -> Value {
    json_object(app, &format!("{}.sweep-cursor.json", app.config.prefix)).await
}

async fn exports_of_every_kind_are_told_apart_and_each_enqueued_once(summary_list_items: bool) {
    let app = spawn_app_with(fast_release(SimOptions { summary_list_items, ..SimOptions::default() })).await;
    let unrelayed = add(&app, 60, &[Status::Completed], HOUR, WEEK);
    let relayed = add(&app, 20, &[Status::Completed], HOUR, WEEK);
    let expired = add(&app, 10, &[Status::Completed], HOUR * 2, HOUR);
    let old_but_live = add(&app, 10, &[Status::Completed], HOUR * 24 * 5, WEEK);
    let _old_running = add(&app, 10, &[Status::Processing], HOUR * 72, WEEK);
    let pending = add(&app, 30, &[Status::Pending], HOUR, WEEK);
    let processing = add(&app, 20, &[Status::Processing], HOUR, WEEK);
    let failed = add(&app, 10, &[Status::Failed], HOUR, WEEK);
    let announced = add(&app, 5, &[Status::Failed], HOUR, WEEK);
    for export_id in &relayed {
        let body = json!({"data": {"export_id": export_id, "status": "completed"}}).to_string();
        app.ledger().commit(Manifest::new(&parse_export(body.as_bytes()).unwrap(), vec![])).await.unwrap();
    }
    for export_id in &pending[..10] {
        set_chain(&app, export_id, ChainState::Sent, chrono::Duration::zero()).await;
    }
    for export_id in &announced {
        set_chain(&app, export_id, ChainState::Ended, chrono::Duration::zero()).await;
    }

    let summary = app.invoke(sweep_event()).await;

    assert_eq!(
        summary,
        json!({
            "pages_read": 2, "exports_seen": 175, "out_of_window": 10, "already_relayed": 20,
            "already_in_flight": 10, "enqueued_for_copy": 70, "enqueued_for_polling": 40,
            "enqueued_failed": 10, "skipped_expired": 10, "skipped_failed": 5, "skipped_timed_out": 0,
            "stopped_early": false
        })
    );
    let queued = drain(&app).await;
    let expected: HashSet<&String> = unrelayed
        .iter()
        .chain(&old_but_live)
        .chain(&pending[10..])
        .chain(&processing)
        .chain(&failed)
        .collect();
    assert_eq!(once(&queued), expected);
    assert!(expired.iter().all(|id| !queued.contains(id)));
    let chain = json_object(&app, &app.key(&unrelayed[0], ".chain.json")).await;
    assert_eq!((chain["state"].as_str(), chain["by"].as_str()), (Some("sent"), Some("sweep")), "in hand");
    assert_eq!(
        cursor(&app).await,
        Value::Null,
        "the whole window was read: the next sweep starts at the head"
    );

    // The relay's own GET finds the links the list may not show.
    let body = json!({"export_id": old_but_live[0]}).to_string();
    assert!(app.deliver(&[&body]).await.is_empty());
    assert!(app.manifest(&old_but_live[0]).await.is_some());

    // A second sweep finds every one of them in hand, or relayed.
    let again = app.invoke(sweep_event()).await;
    assert_eq!(again["already_in_flight"], 10 + 119);
    assert_eq!(again["already_relayed"], 21);
    assert_eq!(
        again["enqueued_for_copy"].as_u64().unwrap() + again["enqueued_for_polling"].as_u64().unwrap(),
        0
    );
    assert!(drain(&app).await.is_empty());
}

#[tokio::test]
async fn exports_of_every_kind_are_told_apart_and_each_enqueued_once_from_full_list_items() {
    exports_of_every_kind_are_told_apart_and_each_enqueued_once(false).await;
}

#[tokio::test]
async fn exports_of_every_kind_are_told_apart_and_each_enqueued_once_from_summary_list_items() {
    exports_of_every_kind_are_told_apart_and_each_enqueued_once(true).await;
}

#[tokio::test]
async fn exports_that_move_on_or_arrive_at_the_head_while_the_sweep_pages_are_each_enqueued_once() {
    let app = spawn_app_with(fast_release(SimOptions::default())).await;
    let pending = add(&app, 120, &[Status::Pending], HOUR, WEEK);
    let processing = add(&app, 120, &[Status::Processing], HOUR * 2, WEEK);
    let (sim, moving_on, moving_done) = (app.sim.clone(), pending.clone(), processing.clone());
    app.sim.on_list(move |answered| {
        if answered == 0 {
            return;
        }
        // Before each page after the first: the newest ten pending exports start processing,
        // the newest ten processing ones complete, and seven new ones arrive at the head.
        let batch = (answered - 1) * 10..answered * 10;
        for export_id in &moving_on[batch.clone()] {
            sim.set_status(export_id, Status::Processing);
        }
        for export_id in &moving_done[batch] {
            sim.set_status(export_id, Status::Completed);
        }
        for _ in 0..7 {
            sim.add_export(ExportSpec::scripted(&[Status::Pending], vec![]));
        }
    });

    let summary = app.invoke(sweep_event()).await;

    assert_eq!(summary["stopped_early"], false, "{summary}");
    let queued = drain(&app).await;
    let queued = once(&queued);
    let missed: Vec<&String> = pending.iter().chain(&processing).filter(|id| !queued.contains(id)).collect();
    assert!(missed.is_empty(), "every export in the window is found; missed {}: {missed:?}", missed.len());
    assert!(summary["pages_read"].as_u64().unwrap() >= 3, "{summary}");
}

#[tokio::test]
async fn a_429_stops_the_sweep_without_a_retry_and_the_next_sweep_carries_on_from_there() {
    let app = spawn_app_with(fast_release(SimOptions::default())).await;
    let ids = add(&app, 250, &[Status::Completed], HOUR, WEEK);
    let sim = app.sim.clone();
    // A 429 short enough that a retrying client would wait it out.
    app.sim.on_list(move |answered| {
        if answered == 0 {
            sim.push_faults(&[ApiFault::RateLimited(1)]);
        }
    });

    let first = app.invoke(sweep_event()).await;

    let lists: Vec<u16> =
        app.sim.seen().iter().filter(|s| s.path == "/v1/exports").map(|s| s.status).collect();
    assert_eq!(lists, [200, 429], "the 429 is not retried");
    assert_eq!(first["stopped_early"], true);
    let reason = first["stop_reason"].as_str().unwrap();
    assert!(reason.contains("429") && reason.contains("at offset 95"), "{reason}");
    assert!(first["budget_resets_at"].is_string(), "X-RateLimit-Reset read: {first}");
    assert_eq!((first["enqueued_for_copy"].as_u64(), first["resume_at"].as_u64()), (Some(100), Some(100)));
    assert_eq!(cursor(&app).await["position"]["offset"], 100);

    let second = app.invoke(sweep_event()).await;

    assert_eq!(second["resumed_from"], 100);
    assert_eq!(second["enqueued_for_copy"], 150);
    assert_eq!(second["stopped_early"], false);
    assert_eq!(cursor(&app).await, Value::Null);
    let queued = drain(&app).await;
    assert_eq!(once(&queued), ids.iter().collect::<HashSet<_>>(), "all 250, each once over two sweeps");
}

#[tokio::test]
async fn max_exports_counts_only_what_was_enqueued_and_the_next_sweep_carries_on() {
    let app = spawn_app_with(fast_release(SimOptions::default())).await;
    let relayed = add(&app, 10, &[Status::Completed], HOUR / 2, WEEK);
    let unrelayed = add(&app, 20, &[Status::Completed], HOUR, WEEK);
    for export_id in &relayed {
        let body = json!({"data": {"export_id": export_id, "status": "completed"}}).to_string();
        app.ledger().commit(Manifest::new(&parse_export(body.as_bytes()).unwrap(), vec![])).await.unwrap();
    }
    let event = json!({"sweep": true, "max_exports": 12});

    let first = app.invoke(event.clone()).await;

    assert_eq!(
        (first["already_relayed"].as_u64(), first["enqueued_for_copy"].as_u64()),
        (Some(10), Some(12))
    );
    assert_eq!(first["stopped_early"], true);
    assert!(first["stop_reason"].as_str().unwrap().contains("max_exports (12)"), "{first}");
    assert_eq!(first["resume_at"], 22);

    let second = app.invoke(event).await;

    assert_eq!((second["resumed_from"].as_u64(), second["enqueued_for_copy"].as_u64()), (Some(22), Some(8)));
    assert_eq!(second["stopped_early"], false);
    assert_eq!(once(&drain(&app).await), unrelayed.iter().collect::<HashSet<_>>());
}

#[tokio::test]
async fn a_sweep_spreads_what_it_releases_over_the_minutes() {
    // The simulator's minute limit is 60; above the reserve of 10, half goes to the sweep.
    let app = spawn_app().await;
    let _ = add(&app, 60, &[Status::Completed], HOUR, WEEK);

    let summary = app.invoke(json!({"sweep": true})).await;

    assert_eq!(summary["enqueued_for_copy"], 60);
    assert_eq!(drain(&app).await.len(), 25, "25 visible at once");
    assert_eq!(app.delayed_count().await, 35, "the rest a minute and two minutes later");
}

#[tokio::test]
async fn the_days_remaining_budget_caps_what_one_sweep_releases() {
    let app = spawn_app_with(fast_release(SimOptions {
        reported_remaining_day: Some(200),
        ..SimOptions::default()
    }))
    .await;
    let _ = add(&app, 50, &[Status::Completed], HOUR, WEEK);

    let summary = app.invoke(json!({"sweep": true})).await;

    assert_eq!(summary["enqueued_for_copy"], 20, "a tenth of the 200 requests left today");
    assert!(summary["stop_reason"].as_str().unwrap().contains("200 API requests left today"), "{summary}");
    assert_eq!(summary["resume_at"], 20);
    assert_eq!(drain(&app).await.len(), 20);
}

#[tokio::test]
async fn a_sweep_stops_early_when_the_rate_budget_is_spent() {
    let app = spawn_app_with(Setup {
        sim: SimOptions { reported_remaining: Some(5), ..SimOptions::default() },
        ..Default::default()
    })
    .await;
    let _ = add(&app, 150, &[Status::Completed], HOUR, WEEK);

    let summary = app.invoke(json!({"sweep": true, "lookback_hours": 24})).await;

    assert_eq!(summary["pages_read"], 1, "one page, then the budget says stop");
    assert_eq!(summary["stopped_early"], true);
    assert!(summary["stop_reason"].as_str().unwrap().contains("SWEEP_RESERVE_REQUESTS"), "{summary}");
    assert_eq!(summary["enqueued_for_copy"], 100, "the first page's work is done");
    assert_eq!(app.sim.seen_matching("/v1/exports").len(), 1);
    assert_eq!(cursor(&app).await["position"]["offset"], 100);
}

#[tokio::test]
async fn a_record_received_then_retried_keeps_its_export_in_hand_until_its_chain_outlives_the_lease() {
    let app = spawn_app_with(fast_release(SimOptions::default())).await;
    let export_id = app.completed(vec![FileSpec {
        fault: Some(DownloadFault::Status(503)),
        ..FileSpec::csv("a.csv.gz", 1, 10)
    }]);
    assert_eq!(app.deliver(&[&export_id]).await, vec!["m0"], "fails for a passing reason: SQS retries it");

    let summary = app.invoke(sweep_event()).await;

    assert_eq!(
        (summary["already_in_flight"].as_u64(), summary["enqueued_for_copy"].as_u64()),
        (Some(1), Some(0))
    );
    assert!(drain(&app).await.is_empty(), "no second copy");
    let chain = json_object(&app, &app.key(&export_id, ".chain.json")).await;
    assert_eq!((chain["state"].as_str(), chain["by"].as_str()), (Some("sent"), Some("m0")));

    // Twenty hours on, the record has been through its whole retry schedule: it is lost.
    set_chain(&app, &export_id, ChainState::Sent, HOUR * 20).await;
    let later = app.invoke(sweep_event()).await;
    assert_eq!(later["enqueued_for_copy"], 1);
    assert_eq!(drain(&app).await, [export_id]);
}

#[tokio::test]
async fn a_timed_out_export_is_not_restarted_by_the_sweep_but_is_copied_once_it_completes() {
    let app = spawn_app_with(fast_release(SimOptions::default())).await;
    let export_id = add(&app, 1, &[Status::Processing], HOUR, WEEK).remove(0);
    let first_seen_at = Utc::now() - chrono::Duration::hours(25);
    let body = json!({"export_id": export_id, "attempt": 40, "first_seen_at": first_seen_at}).to_string();
    assert!(app.deliver(&[&body]).await.is_empty());
    assert_eq!(app.webhooks()[0].body["type"], "export.timed_out");

    for _ in 0..2 {
        let summary = app.invoke(sweep_event()).await;
        assert_eq!(
            (summary["skipped_timed_out"].as_u64(), summary["enqueued_for_polling"].as_u64()),
            (Some(1), Some(0))
        );
    }
    assert!(drain(&app).await.is_empty(), "no new poll chain");

    app.sim.set_status(&export_id, Status::Completed);
    let summary = app.invoke(sweep_event()).await;
    assert_eq!(summary["enqueued_for_copy"], 1);
    assert_eq!(drain(&app).await, [export_id]);
}

#[tokio::test]
async fn a_failed_export_never_announced_is_enqueued_and_gets_export_failed_once() {
    let app = spawn_app_with(fast_release(SimOptions::default())).await;
    let export_id = app.sim.add_export(ExportSpec::scripted(&[Status::Failed], vec![]));

    let first = app.invoke(sweep_event()).await;
    assert_eq!(first["enqueued_failed"], 1);
    let relayed = app.poll(Duration::from_secs(1)).await;
    assert_eq!(relayed.len(), 1);

    let hooks = app.webhooks();
    assert_eq!(hooks.len(), 1);
    assert_eq!(
        (hooks[0].body["type"].as_str(), hooks[0].body["data"]["export_id"].as_str()),
        (Some("export.failed"), Some(export_id.as_str()))
    );
    let second = app.invoke(sweep_event()).await;
    assert_eq!((second["skipped_failed"].as_u64(), second["enqueued_failed"].as_u64()), (Some(1), Some(0)));
}

#[tokio::test]
async fn what_a_sweep_enqueues_is_relayed_and_then_left_alone() {
    let app = spawn_app().await;
    let export_id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);

    let first = app.invoke(json!({"sweep": true})).await;
    assert_eq!(first["enqueued_for_copy"], 1);
    let body = app.receive(&app.queue_url, Duration::ZERO).await.remove(0).raw;
    assert!(app.deliver(&[&body]).await.is_empty());
    assert!(app.manifest(&export_id).await.is_some());
    let chain = json_object(&app, &app.key(&export_id, ".chain.json")).await;
    assert_eq!(chain["state"], "ended", "the outcome ends the chain");

    let second = app.invoke(json!({"sweep": true})).await;
    assert_eq!(second["already_relayed"], 1);
    assert_eq!(second["enqueued_for_copy"], 0);
}
