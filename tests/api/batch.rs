//! A batch is relayed at once; only records worth retrying come back as failures, and those
//! that can never succeed are set aside on the dead-letter queue. Its due polls are checked on
//! the list endpoint when that takes fewer requests.

use std::time::Duration;

use chrono::Utc;
use dealmachine_sim::{ApiFault, DownloadFault, ExportSpec, FileSpec, Status};
use serde_json::json;

use crate::helpers::{Setup, TestApp, spawn_app_with};

#[tokio::test]
async fn a_mixed_batch_reports_exactly_the_records_worth_retrying() {
    // A poll delay long enough to still be pending when the batch's slowest record is done.
    let app = spawn_app_with(Setup::slow_polls()).await;
    let done = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 50)]);
    let running = app.sim.add_export(ExportSpec::scripted(&[Status::Processing], vec![]));
    let flaky = app.completed(vec![FileSpec {
        fault: Some(DownloadFault::Status(503)),
        ..FileSpec::csv("b.csv.gz", 2, 50)
    }]);
    let unknown = "00000000-0000-0000-0000-000000000000";

    let failures =
        app.deliver(&[&done, &running, "{\"export_id\": ", &flaky, "../../etc/passwd", unknown]).await;

    assert_eq!(failures, vec!["m3"], "only the transient download failure is retried");
    let flaky_gets = app.sim.seen_matching(&format!("/files/{flaky}/")).len();
    assert_eq!(flaky_gets, 1 + 5, "a 503 is tried again DOWNLOAD_MAX_RESUMES times, then left to SQS");
    assert_eq!(app.file_keys().await, vec![app.key(&done, "a.csv.gz")]);
    assert_eq!(app.delayed_count().await, 1, "the running export is polled");

    let mut dead = app.receive(&app.dlq_url, Duration::from_secs(1)).await;
    dead.extend(app.receive(&app.dlq_url, Duration::from_secs(1)).await);
    dead.sort_by_key(|m| m.attributes["source_message_id"].clone());
    let summary: Vec<(&str, &str, &str)> = dead
        .iter()
        .map(|m| {
            (m.attributes["source_message_id"].as_str(), m.attributes["error_code"].as_str(), m.raw.as_str())
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("m2", "malformed_message", "{\"export_id\": "),
            ("m4", "invalid_export_id", "../../etc/passwd"),
            ("m5", "export_not_found", unknown),
        ],
        "poison records are set aside intact, with the reason"
    );
    assert!(dead.iter().all(|m| !m.attributes["error_message"].is_empty()));
}

#[tokio::test]
async fn records_of_a_batch_run_concurrently() {
    let slow = Duration::from_millis(300);
    // A part slot for each record: a copy takes its slot before it asks for the file, so with
    // fewer slots than records the last ones would rightly wait.
    let app =
        spawn_app_with(Setup { env: vec![("PARTS_IN_FLIGHT", "5".into())], ..Default::default() }).await;
    let ids: Vec<String> = (0..5)
        .map(|i| {
            app.completed(vec![FileSpec {
                fault: Some(DownloadFault::Slow(slow)),
                ..FileSpec::csv("a.csv.gz", i, 2000)
            }])
        })
        .collect();
    let bodies: Vec<&str> = ids.iter().map(String::as_str).collect();

    assert!(app.deliver(&bodies).await.is_empty());

    // Each body trickles out a chunk per `slow`, so in a sequential batch every download would
    // start only after the previous one had taken several times `slow`.
    let started: Vec<_> = app.sim.seen_matching("/files/").iter().map(|d| d.at).collect();
    assert_eq!(started.len(), 5);
    let spread = *started.iter().max().unwrap() - *started.iter().min().unwrap();
    assert!(spread < slow, "all downloads started together, within {spread:?}");
    let keys = app.file_keys().await;
    assert!(ids.iter().all(|id| keys.contains(&app.key(id, "a.csv.gz"))), "every file landed");
}

/// Second polls of `ids`, as the relay re-enqueues them.
fn due_polls(ids: &[String]) -> Vec<String> {
    ids.iter()
        .map(|id| json!({"export_id": id, "attempt": 2, "first_seen_at": Utc::now()}).to_string())
        .collect()
}

fn processing(app: &TestApp, n: usize) -> Vec<String> {
    (0..n).map(|_| app.sim.add_export(ExportSpec::scripted(&[Status::Processing], vec![]))).collect()
}

/// `(path, status)` of each API request the simulator saw, sorted.
fn api_requests(app: &TestApp) -> Vec<(String, u16)> {
    let mut seen: Vec<(String, u16)> = app
        .sim
        .seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/v1/exports"))
        .map(|s| (s.path, s.status))
        .collect();
    seen.sort();
    seen
}

#[tokio::test]
async fn due_polls_are_checked_on_the_list_endpoint_and_the_rest_with_their_own_get() {
    let app = spawn_app_with(Setup::slow_polls()).await;
    let running = processing(&app, 4);
    let done: Vec<String> = (0..2).map(|i| app.completed(vec![FileSpec::csv("a.csv.gz", i, 20)])).collect();
    // Listed as completed without download URLs, and not listed at all.
    let expired = app.sim.add_export(ExportSpec {
        expires_in: chrono::Duration::hours(-1),
        ..ExportSpec::completed(vec![FileSpec::csv("a.csv.gz", 9, 20)])
    });
    let failed = app.sim.add_export(ExportSpec::scripted(&[Status::Failed], vec![]));
    let ids: Vec<String> = [running.clone(), done.clone(), vec![expired.clone(), failed.clone()]].concat();
    let bodies = due_polls(&ids);

    let failures = app.deliver(&bodies.iter().map(String::as_str).collect::<Vec<_>>()).await;

    assert!(failures.is_empty(), "{failures:?}");
    let list = ("/v1/exports".to_string(), 200);
    let mut expected = vec![
        list.clone(),
        list,
        (format!("/v1/exports/{expired}"), 200),
        (format!("/v1/exports/{failed}"), 200),
    ];
    expected.sort();
    assert_eq!(
        api_requests(&app),
        expected,
        "two pages (processing, completed) for eight due polls, and a GET for the two they could not answer"
    );
    let mut outcomes: Vec<(String, String)> = app
        .webhooks()
        .iter()
        .map(|h| {
            (
                h.body["data"]["export_id"].as_str().unwrap().to_string(),
                h.body["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    outcomes.sort();
    let mut expected: Vec<(String, String)> = done
        .iter()
        .map(|id| (id.clone(), "export.completed".to_string()))
        .chain([(expired.clone(), "export.expired".into()), (failed.clone(), "export.failed".into())])
        .collect();
    expected.sort();
    assert_eq!(outcomes, expected);
    let keys = app.file_keys().await;
    assert!(
        done.iter().all(|id| keys.contains(&app.key(id, "a.csv.gz"))),
        "the listed download URLs were used"
    );
    assert_eq!(app.delayed_count().await, 4, "the running ones are polled again");
}

#[tokio::test]
async fn a_list_refused_with_429_leaves_each_due_poll_to_its_own_get() {
    let app = spawn_app_with(Setup::slow_polls()).await;
    let ids = processing(&app, 3);
    // Longer than an invocation waits.
    app.sim.push_faults(&[ApiFault::RateLimited(120)]);

    let failures = app.deliver(&due_polls(&ids).iter().map(String::as_str).collect::<Vec<_>>()).await;

    assert!(failures.is_empty(), "{failures:?}");
    let mut expected: Vec<(String, u16)> = ids.iter().map(|id| (format!("/v1/exports/{id}"), 200)).collect();
    expected.push(("/v1/exports".to_string(), 429));
    expected.sort();
    assert_eq!(api_requests(&app), expected, "one refused page, then a GET each");
    assert_eq!(app.delayed_count().await, 3);
}
