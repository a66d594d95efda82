//! Faults, bad input and hostile data: nothing is lost, nothing partial is left, nobody is let in.
//! Each case here has a row in docs/RELIABILITY.md.

use std::sync::atomic::Ordering;
use std::time::Duration;

use dealmachine_sim::{ApiFault, CsvGz, DownloadFault, ExportSpec, FileSpec, SimOptions, Status};
use serde_json::json;

use crate::helpers::{PART, Setup, spawn_app, spawn_app_with};
use crate::s3_proxy::{FaultyS3, relay_through};

fn big(name: &str, seed: u64) -> FileSpec {
    FileSpec { content: CsvGz { seed, rows: 120_000, level: 0 }, ..FileSpec::csv(name, seed, 0) }
}

#[tokio::test]
async fn a_body_over_256_kib_is_set_aside_intact_or_left_to_the_redrive_policy() {
    let app = spawn_app().await;
    let huge = format!("{{\"export_id\": \"x\", \"metadata\": {{\"pad\": \"{}\"}}}}", "a".repeat(300 * 1024));

    let failures = app.deliver(&[&huge]).await;

    let dead = app.receive(&app.dlq_url, Duration::from_secs(1)).await;
    match dead.first() {
        Some(message) => {
            assert!(failures.is_empty());
            assert_eq!(message.attributes["error_code"], "message_too_large");
            assert_eq!(message.raw, huge, "the original body, intact");
        }
        // A queue that refuses a body this large (SQS's classic limit) refuses the copy too:
        // the record then fails, and the queue's own redrive policy moves it.
        None => assert_eq!(failures, vec!["m0"]),
    }
    assert!(app.sim.seen().is_empty(), "the API was not called");
}

#[tokio::test]
async fn a_dead_letter_queue_that_refuses_the_record_leaves_it_to_sqs() {
    let app = spawn_app_with(Setup {
        env: vec![("DEAD_LETTER_QUEUE_URL", "http://127.0.0.1:1/123456789012/missing".into())],
        ..Default::default()
    })
    .await;
    assert_eq!(app.deliver(&["not an id!"]).await, vec!["m0"], "not acknowledged, so not lost");
}

#[tokio::test]
async fn a_failed_requeue_fails_the_record_so_the_poll_is_not_lost() {
    let app = spawn_app_with(Setup {
        env: vec![(
            "QUEUE_URL",
            format!("{}/123456789012/no-such-queue", std::env::var("AWS_ENDPOINT_URL").unwrap()),
        )],
        ..Default::default()
    })
    .await;
    let id = app.sim.add_export(ExportSpec::scripted(&[Status::Processing], vec![]));
    assert_eq!(app.deliver(&[&id]).await, vec!["m0"]);
}

/// A simulator whose download URLs name `localhost`, the only allowed host.
async fn app_with_named_host() -> crate::helpers::TestApp {
    spawn_app_with(Setup {
        env: vec![("DOWNLOAD_HOSTS", "localhost".into())],
        sim: SimOptions { public_host: Some("localhost".into()), ..SimOptions::default() },
    })
    .await
}

#[tokio::test]
async fn redirects_to_hosts_off_the_allow_list_are_refused() {
    let app = app_with_named_host().await;
    for target in ["http://127.0.0.1:9/steal", "http://169.254.169.254/latest/meta-data/iam/"] {
        let file =
            FileSpec { fault: Some(DownloadFault::Redirect(target)), ..FileSpec::csv("a.csv.gz", 1, 10) };
        let id = app.completed(vec![file]);

        let report = app.invoke(json!({"export_id": id})).await;

        assert_eq!(report["outcome"], "failed", "{target}");
        assert_eq!(report["error"]["code"], "download_url_refused");
        assert!(report["error"]["message"].as_str().unwrap().contains("not in DOWNLOAD_HOSTS"), "{report}");
    }
    app.assert_no_files().await;
}

#[tokio::test]
async fn a_redirect_to_an_allowed_host_is_followed() {
    let app = app_with_named_host().await;
    let target = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    let direct = app.invoke(json!({"export_id": target})).await;
    assert_eq!(direct["outcome"], "completed");
    assert_eq!(app.sim.seen_matching("/files/").len(), 1);
}

#[tokio::test]
async fn unusable_file_names_are_refused_and_odd_ones_made_safe() {
    let app = spawn_app().await;
    let refused = [
        vec![FileSpec::csv("", 1, 1)],
        vec![FileSpec::csv(&"n".repeat(300), 1, 1)],
        vec![FileSpec::csv("..", 1, 1)],
        vec![FileSpec::csv("same.csv.gz", 1, 1), FileSpec::csv("same.csv.gz", 2, 1)],
        vec![FileSpec::csv("a/b", 1, 1), FileSpec::csv("a_b", 2, 1)],
    ];
    for files in refused {
        let id = app.completed(files);
        let report = app.invoke(json!({"export_id": id})).await;
        assert_eq!(report["outcome"], "failed", "{report}");
        let code = report["error"]["code"].as_str().unwrap();
        assert!(matches!(code, "bad_file_name" | "duplicate_file_name"), "{code}");
    }

    let id = app.completed(vec![FileSpec::csv("tab\there\u{7}bell\r\n.csv.gz", 3, 10)]);
    let report = app.invoke(json!({"export_id": id})).await;
    assert_eq!(report["files"][0]["key"], app.key(&id, "tab_here_bell__.csv.gz").as_str());
    let prefix = format!("{}{id}/", app.config.prefix);
    assert!(app.file_keys().await.iter().all(|k| k.starts_with(&app.config.prefix)), "nothing escapes");
    assert_eq!(app.file_keys().await, vec![format!("{prefix}tab_here_bell__.csv.gz")]);
}

#[tokio::test]
async fn broken_api_answers_get_a_clear_error_and_write_nothing() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    let data = |extra: serde_json::Value| {
        let mut export = json!({"export_id": id, "status": "completed", "name": "x",
            "download_urls": [{"filename": "a.csv.gz", "url": "http://127.0.0.1:9/a", "size": 1}]});
        export.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"data": export}).to_string()
    };
    let thousands: Vec<_> = (0..5000)
        .map(|i| json!({"filename": format!("f{i}.csv.gz"), "url": "http://127.0.0.1:9/a", "size": 1}))
        .collect();
    let cases = [
        (
            "html",
            ApiFault::Raw {
                status: 200,
                content_type: "text/html",
                body: "<html><body>Bad gateway</body></html>".into(),
            },
        ),
        (
            "truncated",
            ApiFault::Raw {
                status: 200,
                content_type: "application/json",
                body: data(json!({}))[..60].to_string(),
            },
        ),
        (
            "50 MB",
            ApiFault::Raw {
                status: 200,
                content_type: "application/json",
                body: " ".repeat(50 * 1024 * 1024),
            },
        ),
        (
            "unknown status",
            ApiFault::Raw {
                status: 200,
                content_type: "application/json",
                body: data(json!({"status": "archived"})),
            },
        ),
        (
            "negative size",
            ApiFault::Raw {
                status: 200,
                content_type: "application/json",
                body: data(
                    json!({"download_urls": [{"filename": "a", "url": "http://127.0.0.1:9/a", "size": -5}]}),
                ),
            },
        ),
        (
            "missing size",
            ApiFault::Raw {
                status: 200,
                content_type: "application/json",
                body: data(json!({"download_urls": [{"filename": "a", "url": "http://127.0.0.1:9/a"}]})),
            },
        ),
        (
            "thousands of files",
            ApiFault::Raw {
                status: 200,
                content_type: "application/json",
                body: data(json!({"download_urls": thousands})),
            },
        ),
    ];
    for (name, fault) in cases {
        app.sim.push_faults(&[fault]);
        let failures = app.deliver(&[&id]).await;
        assert_eq!(failures, vec!["m0"], "{name}: retried later, not lost and not acknowledged");
    }
    assert!(app.keys().await.is_empty(), "nothing written to S3");
    assert!(app.webhooks().is_empty());
}

#[tokio::test]
async fn a_download_that_stalls_is_given_up_after_the_idle_timeout() {
    let app = spawn_app_with(Setup {
        env: vec![("DOWNLOAD_IDLE_TIMEOUT_SECONDS", "2".into()), ("DOWNLOAD_MAX_RESUMES", "1".into())],
        ..Default::default()
    })
    .await;
    let stall_at = PART as u64 + 1000;
    let id = app.completed(vec![big("stall.csv.gz", 2).with_fault(DownloadFault::StallAfter(stall_at))]);

    let failures =
        tokio::time::timeout(Duration::from_secs(30), app.deliver(&[&id])).await.expect("does not hang");

    assert_eq!(failures, vec!["m0"]);
    let ranges: Vec<_> =
        app.sim.seen_matching("/files/").iter().map(|g| g.header("range").map(str::to_string)).collect();
    assert_eq!(ranges, vec![None, Some(format!("bytes={stall_at}-"))], "resumed once after the first stall");
    app.assert_nothing_stored().await;
}

#[tokio::test]
async fn s3_slowdowns_on_some_parts_are_absorbed_by_the_sdk_retries() {
    let app = spawn_app().await;
    let id = app.completed(vec![big("big.csv.gz", 3)]);
    // The first try of the first two parts fails.
    let (proxy, url) = FaultyS3::start(|query| {
        static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let part = query.split('&').find(|p| p.starts_with("partNumber=")).unwrap_or_default().to_string();
        let mut seen = SEEN.lock().unwrap();
        let first_try = !seen.contains(&part);
        seen.push(part.clone());
        first_try && (part == "partNumber=1" || part == "partNumber=2")
    })
    .await;
    let relay = relay_through(&app, &url).await;

    let report =
        relay.handle(json!({"export_id": id}), export_relay::transfer::Deadline::NONE).await.unwrap();

    assert_eq!(report["outcome"], "completed");
    assert_eq!(proxy.injected.load(Ordering::SeqCst), 2);
    let (bytes, _) = app.object(&app.key(&id, "big.csv.gz")).await.unwrap();
    assert_eq!(crate::helpers::sha256(&bytes), app.sim.files(&id)[0].1.sha256);
    assert_eq!(app.pending_uploads().await, 0);
}

#[tokio::test]
async fn an_s3_part_that_keeps_failing_aborts_the_upload_and_fails_the_record() {
    let app = spawn_app().await;
    let id = app.completed(vec![big("big.csv.gz", 4)]);
    let (proxy, url) = FaultyS3::start(|query| query.contains("partNumber=2")).await;
    let relay = relay_through(&app, &url).await;
    let event = crate::helpers::sqs_event(&[&id]);

    let response = relay.handle(event, export_relay::transfer::Deadline::NONE).await.unwrap();

    assert_eq!(response["batchItemFailures"][0]["itemIdentifier"], "m0");
    assert!(proxy.injected.load(Ordering::SeqCst) >= 3, "the SDK retried before giving up");
    app.assert_nothing_stored().await;
}
