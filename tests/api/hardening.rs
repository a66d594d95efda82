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

    // moto's queues, like SQS's today, take bodies up to 1 MiB: the record is set aside.
    let failures = app.deliver(&[&huge]).await;

    assert!(failures.is_empty(), "set aside, so acknowledged");
    let dead = app.receive(&app.dlq_url, Duration::from_secs(1)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attributes["error_code"], "message_too_large");
    assert_eq!(dead[0].raw, huge, "the original body, intact");

    // A dead-letter queue held to the classic 256 KiB refuses the copy: the record then fails,
    // and the queue's own redrive policy moves it.
    let max = aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize;
    app.set_queue_attribute(&app.dlq_url, max, "262144").await;
    assert_eq!(app.deliver(&[&huge]).await, vec!["m0"]);
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
    for hops in [1, 5] {
        let name = format!("hops{hops}.csv.gz");
        let id = app.completed(vec![
            FileSpec::csv(&name, hops.into(), 10).with_fault(DownloadFault::RedirectHops(hops)),
        ]);

        let report = app.invoke(json!({"export_id": id})).await;

        assert_eq!(report["outcome"], "completed", "{hops} hops: {report}");
        let gets = app.sim.seen_matching(&format!("/files/{id}/"));
        assert_eq!(gets.len(), hops as usize + 1, "{hops} redirects followed to the file");
        assert_eq!(gets.last().unwrap().status, 200);
        let (bytes, _) = app.object(&app.key(&id, &name)).await.unwrap();
        assert_eq!(crate::helpers::sha256(&bytes), app.sim.files(&id)[0].1.sha256);
    }

    // A sixth hop is one too many: refused before it is requested.
    let id =
        app.completed(vec![FileSpec::csv("six.csv.gz", 6, 10).with_fault(DownloadFault::RedirectHops(6))]);
    let report = app.invoke(json!({"export_id": id})).await;
    assert_eq!(report["outcome"], "failed", "{report}");
    assert_eq!(report["error"]["code"], "download_url_refused");
    assert!(report["error"]["message"].as_str().unwrap().contains("more than 5 redirects"), "{report}");
    assert_eq!(
        app.sim.seen_matching(&format!("/files/{id}/")).len(),
        6,
        "the sixth redirect is not followed"
    );
    assert!(app.object(&app.key(&id, "six.csv.gz")).await.is_none());
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
    // The export as the API really gives it, with a link to a real file: each broken answer
    // below points at it, so only the parse can stop a copy.
    let real: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/exports/{id}", app.sim.api_url()))
        .bearer_auth(app.sim.api_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link = real["data"]["download_urls"][0].clone();
    let url = link["url"].as_str().unwrap().to_string();
    let data = |extra: serde_json::Value| {
        let mut answer = real.clone();
        answer["data"].as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        answer.to_string()
    };
    let too_many: Vec<_> = (0..=export_relay::dealmachine::MAX_FILES)
        .map(|i| json!({"filename": format!("f{i}.csv.gz"), "url": url, "size": link["size"]}))
        .collect();
    // Valid JSON that parses without the cap: padded past 16 MiB with whitespace.
    let padded = format!("{}{}", data(json!({})), " ".repeat(16 * 1024 * 1024 + 1024));
    let json_answer = |body: String| ApiFault::Raw { status: 200, content_type: "application/json", body };
    let cases = [
        (
            "html",
            ApiFault::Raw {
                status: 200,
                content_type: "text/html",
                body: "<html><body>Bad gateway</body></html>".into(),
            },
        ),
        ("truncated", json_answer(data(json!({}))[..60].to_string())),
        ("over 16 MiB", json_answer(padded)),
        ("unknown status", json_answer(data(json!({"status": "archived"})))),
        (
            "negative size",
            json_answer(data(json!({"download_urls": [{"filename": "a.csv.gz", "url": url, "size": -5}]}))),
        ),
        ("missing size", json_answer(data(json!({"download_urls": [{"filename": "a.csv.gz", "url": url}]})))),
        ("too many files", json_answer(data(json!({"download_urls": too_many})))),
    ];
    for (name, fault) in cases {
        app.sim.push_faults(&[fault]);
        let failures = app.deliver(&[&id]).await;
        assert_eq!(failures, vec!["m0"], "{name}: retried later, not lost and not acknowledged");
        assert!(app.sim.seen_matching("/files/").is_empty(), "{name}: no download started");
        assert!(app.keys().await.is_empty(), "{name}: nothing written to S3");
    }
    assert!(app.webhooks().is_empty());

    // The same answer, unbroken and padded to exactly the cap, copies: so each case above was
    // stopped by its parse, and the cap is no smaller than 16 MiB.
    let unbroken = data(json!({}));
    let at_cap = format!("{unbroken}{}", " ".repeat(16 * 1024 * 1024 - unbroken.len()));
    app.sim.push_faults(&[json_answer(at_cap)]);
    assert!(app.deliver(&[&id]).await.is_empty());
    assert_eq!(app.sim.seen_matching("/files/").len(), 1);
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
