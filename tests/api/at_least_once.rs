//! At-least-once, as SQS and Lambda really deliver: duplicates and retries never fork a poll
//! chain, an export cut short resumes file by file, S3's 409 is retried, every record runs in
//! its own share of the invocation, and the last receive says why it gives up.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use dealmachine_sim::{CsvGz, DownloadFault, ExportSpec, FileSpec, Status};
use export_relay::events::ExportId;
use export_relay::manifest::{Chain, ChainState};
use export_relay::startup;
use export_relay::transfer::Deadline;
use serde_json::{Value, json};

use crate::helpers::{Setup, TestApp, spawn_app_with, sqs_event};
use crate::s3_proxy::{FaultyS3, ledger_through, relay_through};

/// Polls that stay on the queue, delayed, for the whole test.
fn slow_polls() -> Setup {
    Setup { env: vec![("POLL_INITIAL_DELAY_SECONDS", "300".into())], ..Default::default() }
}

fn running(app: &TestApp) -> String {
    app.sim.add_export(ExportSpec::scripted(&[Status::Processing], vec![]))
}

/// Every message on the relay queue: visible, in flight or delayed.
async fn on_queue(app: &TestApp) -> u64 {
    let (visible, in_flight) = app.queue_depth(&app.queue_url).await;
    visible + in_flight + app.delayed_count().await
}

/// One record, delivered as message `message_id` for the `receives`-th time.
fn record(message_id: &str, body: &str, receives: u32) -> Value {
    let mut event = sqs_event(&[body]);
    event["Records"][0]["messageId"] = json!(message_id);
    event["Records"][0]["attributes"]["ApproximateReceiveCount"] = json!(receives.to_string());
    event
}

async fn failures(relay: &export_relay::handler::Relay, event: Value) -> Vec<Value> {
    let response = relay.handle(event, Deadline::NONE).await.unwrap();
    response["batchItemFailures"].as_array().unwrap().clone()
}

fn api_gets(app: &TestApp, id: &str) -> usize {
    app.sim.seen_matching(&format!("/v1/exports/{id}")).len()
}

#[tokio::test]
async fn the_same_poll_delivered_twice_at_once_leaves_one_successor() {
    let app = spawn_app_with(slow_polls()).await;
    let id = running(&app);

    let bodies = [id.as_str()];
    let (first, second) = tokio::join!(app.deliver(&bodies), app.deliver(&bodies));

    assert!(first.is_empty() && second.is_empty(), "both copies are acknowledged");
    assert_eq!(on_queue(&app).await, 1, "one poll chain");
}

#[tokio::test]
async fn the_same_poll_delivered_again_later_is_acknowledged_without_polling() {
    let app = spawn_app_with(slow_polls()).await;
    let id = running(&app);

    assert!(app.deliver(&[&id]).await.is_empty());
    assert!(app.deliver(&[&id]).await.is_empty());

    assert_eq!(on_queue(&app).await, 1, "one poll chain");
    assert_eq!(api_gets(&app, &id), 1, "the duplicate cost no API request");
}

#[tokio::test]
async fn two_successors_of_one_poll_merge_into_one_chain_at_the_next_step() {
    let app = spawn_app_with(slow_polls()).await;
    let id = running(&app);
    let second_poll = json!({"export_id": id, "attempt": 2}).to_string();

    // A fork, as a lost acknowledgement could make one: two messages for attempt 2, at once and
    // then a third later on.
    assert!(app.deliver(&[&second_poll, &second_poll]).await.is_empty());
    assert!(failures(&app.relay, record("late-copy", &second_poll, 1)).await.is_empty());

    assert_eq!(on_queue(&app).await, 1, "one attempt 3, whichever copy sent it");
}

#[tokio::test]
async fn a_failed_send_is_retried_and_still_leaves_one_successor() {
    let app = spawn_app_with(slow_polls()).await;
    let id = running(&app);
    let mut broken = app.config.clone();
    broken.queue_url = format!("{}/123456789012/no-such-queue", std::env::var("AWS_ENDPOINT_URL").unwrap());
    let broken = startup::build_relay(&broken, &startup::aws_config().await).unwrap();

    assert_eq!(failures(&broken, record("m0", &id, 1)).await.len(), 1, "the send failed: retried");
    assert_eq!(on_queue(&app).await, 0);
    assert!(failures(&app.relay, record("m0", &id, 2)).await.is_empty(), "the retry sends what it claimed");
    assert!(failures(&app.relay, record("m0", &id, 3)).await.is_empty(), "a late duplicate sends nothing");

    assert_eq!(on_queue(&app).await, 1, "one poll chain");
}

#[tokio::test]
async fn a_ledger_write_refused_after_the_send_does_not_fail_the_record() {
    let app = spawn_app_with(slow_polls()).await;
    let id = running(&app);
    // The claim goes through; the ledger write after the send is refused.
    let chain_writes = Arc::new(AtomicUsize::new(0));
    let writes = chain_writes.clone();
    let (proxy, url) = FaultyS3::answering(move |method, path| {
        let put = *method == Method::PUT;
        let refused = put && path.ends_with("/.chain.json") && writes.fetch_add(1, Ordering::SeqCst) >= 1;
        refused.then_some((StatusCode::FORBIDDEN, "<Error><Code>AccessDenied</Code></Error>"))
    })
    .await;
    let relay = relay_through(&app, &url).await;

    assert!(failures(&relay, record("m0", &id, 1)).await.is_empty(), "no retry, so no second send");
    assert_eq!(proxy.injected.load(Ordering::SeqCst), 1, "the chain's sent mark was refused");

    assert_eq!(on_queue(&app).await, 1, "one poll chain");
}

#[tokio::test]
async fn an_export_cut_short_resumes_file_by_file() {
    let app = spawn_app_with(Setup::default()).await;
    let big =
        FileSpec { content: CsvGz { seed: 3, rows: 120_000, level: 0 }, ..FileSpec::csv("c.csv.gz", 3, 0) };
    let id = app.completed(vec![
        FileSpec::csv("a.csv.gz", 1, 100),
        FileSpec::csv("b.csv.gz", 2, 100),
        big.with_fault(DownloadFault::Slow(Duration::from_millis(100))).once(),
    ]);
    // Files a and b take a moment; file c trickles, so the deadline comes while it is copied.
    let deadline = Deadline::at(Instant::now() + Duration::from_secs(11));

    assert_eq!(app.deliver_by(&[&id], deadline).await, vec!["m0"], "out of time: retried");
    assert!(app.manifest(&id).await.is_none(), "not committed yet");
    assert_eq!(app.pending_uploads().await, 0, "the cut-short upload was aborted");

    assert!(app.deliver(&[&id]).await.is_empty());

    let gets = |file: usize| app.sim.seen_matching(&format!("/files/{id}/{file}")).len();
    assert_eq!((gets(0), gets(1), gets(2)), (1, 1, 2), "the second run copied only file c");
    let manifest = app.manifest(&id).await.expect("one manifest");
    assert_eq!(manifest["files"].as_array().unwrap().len(), 3);
    let mut keys = app.file_keys().await;
    keys.sort();
    assert_eq!(keys, ["a.csv.gz", "b.csv.gz", "c.csv.gz"].map(|f| app.key(&id, f)));
    assert_eq!(app.pending_uploads().await, 0);
}

/// A proxy that answers S3's 409 `ConditionalRequestConflict` (a conditional write in flight)
/// to the `nth` PUT, counted from 0, of a key ending in `ending`, and passes the rest.
async fn conflict_on_put(nth: usize, ending: &'static str) -> (FaultyS3, String) {
    let puts = AtomicUsize::new(0);
    FaultyS3::answering(move |method, path| {
        let put = *method == Method::PUT && path.ends_with(ending);
        (put && puts.fetch_add(1, Ordering::SeqCst) == nth).then_some((
            StatusCode::CONFLICT,
            "<Error><Code>ConditionalRequestConflict</Code><Message>A conflicting operation is in progress</Message></Error>",
        ))
    })
    .await
}

#[tokio::test]
async fn a_409_on_the_manifest_write_is_retried_and_the_commit_lands() {
    let app = spawn_app_with(Setup::default()).await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    let (proxy, url) = conflict_on_put(0, "/manifest.json").await;
    let relay = relay_through(&app, &url).await;

    assert!(failures(&relay, record("m0", &id, 1)).await.is_empty(), "committed in this invocation");

    assert_eq!(proxy.injected.load(Ordering::SeqCst), 1);
    assert_eq!(proxy.count("PUT", "manifest.json"), 2, "tried again after the 409");
    assert!(app.manifest(&id).await.is_some());
    assert_eq!(app.webhooks()[0].body["type"], "export.completed");
}

fn chain(attempt: u32, by: &str) -> Chain {
    Chain { attempt, state: ChainState::Sent, by: by.into(), at: chrono::Utc::now() }
}

#[tokio::test]
async fn a_409_on_a_chain_move_is_retried_not_read_as_another_records_move() {
    let app = spawn_app_with(Setup::default()).await;
    // The first move (If-None-Match) passes; the second (If-Match) is answered 409 once.
    let (proxy, url) = conflict_on_put(1, "/.chain.json").await;
    let ledger = ledger_through(&app, &url).await;
    let id = ExportId::parse("exp-chain-409").unwrap();

    let opened = ledger.move_chain(&id, None, chain(1, "m1")).await.unwrap().expect("opened");
    let moved = ledger.move_chain(&id, Some(&opened), chain(2, "m2")).await.unwrap();

    assert!(moved.is_some(), "this record moved the chain");
    assert_eq!(proxy.injected.load(Ordering::SeqCst), 1);
    let stored = ledger.chain(&id).await.unwrap().unwrap().value;
    assert_eq!((stored.attempt, stored.by.as_str()), (2, "m2"));
}

#[tokio::test]
async fn a_chain_deleted_between_its_read_and_its_move_is_not_written_again() {
    let app = spawn_app_with(Setup::default()).await;
    let ledger = app.ledger();
    let id = ExportId::parse("exp-chain-gone").unwrap();
    let opened = ledger.move_chain(&id, None, chain(1, "m1")).await.unwrap().expect("opened");
    let key = app.key(id.as_str(), ".chain.json");
    app.s3.delete_object().bucket(&app.bucket).key(key).send().await.unwrap();

    let moved = ledger.move_chain(&id, Some(&opened), chain(2, "m2")).await.unwrap();

    assert!(moved.is_none(), "its condition failed (S3 answers NoSuchKey): not this record's move");
    assert!(ledger.chain(&id).await.unwrap().is_none(), "nothing written");
}

#[tokio::test]
async fn a_receipt_keeps_an_open_chain_as_it_is_and_reopens_an_ended_one() {
    let app = spawn_app_with(Setup::default()).await;
    let ledger = app.ledger();
    let id = ExportId::parse("exp-held").unwrap();
    let stored = || async { ledger.chain(&id).await.unwrap().unwrap() };

    ledger.hold(&id, None, 1, "m1").await.unwrap();
    ledger.hold(&id, Some(stored().await), 3, "m9").await.unwrap();
    let open = stored().await;
    assert_eq!((open.value.attempt, open.value.by.as_str()), (1, "m1"), "an open chain is not overwritten");

    let ended = Chain { state: ChainState::Ended, ..open.value.clone() };
    ledger.move_chain(&id, Some(&open), ended).await.unwrap().expect("ended");
    ledger.hold(&id, Some(stored().await), 1, "m10").await.unwrap();
    let reopened = stored().await.value;
    assert_eq!((reopened.state, reopened.by.as_str()), (ChainState::Sent, "m10"), "a new request reopens it");
}

#[tokio::test]
async fn a_ledger_read_s3_refuses_fails_the_record_rather_than_copy_or_send_again() {
    // The HEAD of the delivery marker refused, then every GET of a ledger object.
    for (refused, ending) in [(Method::HEAD, "/.delivered/export.completed.json"), (Method::GET, ".json")] {
        let app = spawn_app_with(Setup::default()).await;
        let id = app.completed(vec![FileSpec::csv("a.csv.gz", 18, 10)]);
        assert!(app.deliver(&[&id]).await.is_empty());
        let case = format!("{refused} *{ending}");
        let (proxy, url) = FaultyS3::answering(move |method, path| {
            (*method == refused && path.ends_with(ending)).then_some((StatusCode::FORBIDDEN, ""))
        })
        .await;
        let relay = relay_through(&app, &url).await;

        assert_eq!(
            failures(&relay, record("m1", &id, 1)).await,
            vec![json!({"itemIdentifier": "m1"})],
            "{case}"
        );
        assert_eq!(proxy.writes_to(&app.key(&id, "a.csv.gz")), 0, "{case}: not copied again");
        assert_eq!(app.webhooks().len(), 1, "{case}: not sent again");
    }
}

#[tokio::test]
async fn one_hanging_webhook_fails_only_its_record_and_the_invocation_answers_in_time() {
    let app =
        spawn_app_with(Setup { env: vec![("WEBHOOK_TIMEOUT_SECONDS", "300".into())], ..Default::default() })
            .await;
    let ids: Vec<String> = (0..3).map(|i| app.completed(vec![FileSpec::csv("a.csv.gz", i, 10)])).collect();
    app.receiver.stall_export(&ids[2]);
    let bodies: Vec<&str> = ids.iter().map(String::as_str).collect();
    let deadline = Deadline::at(Instant::now() + Duration::from_secs(8));

    let failed = tokio::time::timeout(Duration::from_secs(8), app.deliver_by(&bodies, deadline))
        .await
        .expect("the invocation answers before Lambda's deadline");

    assert_eq!(failed, vec!["m2"], "only the record whose webhook hangs");
    assert!(app.deliver(&bodies[..2]).await.is_empty(), "a redelivery of the two that were done");
    let hooks = app.webhooks();
    for id in &ids[..2] {
        let theirs = hooks.iter().filter(|h| h.body["data"]["export_id"] == id.as_str()).count();
        assert_eq!(theirs, 1, "{id}: delivered exactly once");
        assert!(app.keys().await.contains(&app.key(id, ".delivered/export.completed.json")));
    }
}

#[tokio::test]
async fn the_last_receive_announces_export_failed_and_sets_the_record_aside_with_the_reason() {
    let app =
        spawn_app_with(Setup { env: vec![("MAX_RECEIVE_COUNT", "3".into())], ..Default::default() }).await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10).with_fault(DownloadFault::Status(503))]);

    assert_eq!(failures(&app.relay, record("m0", &id, 2)).await.len(), 1, "not the last receive: retried");
    assert!(app.webhooks().is_empty());

    assert!(failures(&app.relay, record("m0", &id, 3)).await.is_empty(), "the last receive: acknowledged");

    let hooks = app.webhooks();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].body["type"], "export.failed");
    let error = &hooks[0].body["data"]["error"];
    assert_eq!(error["code"], "retries_exhausted");
    assert!(error["message"].as_str().unwrap().contains("download_http_error"), "{error}");
    let dead = app.receive(&app.dlq_url, Duration::from_secs(1)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].raw, id, "the record, intact");
    assert_eq!(dead[0].attributes["error_code"], "retries_exhausted");
    assert!(dead[0].attributes["error_message"].contains("download_http_error"));
}
