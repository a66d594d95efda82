//! The webhook contract a consumer builds on: one body per `webhook-id`, completed always wins,
//! nothing lost on a 410, and what a body tells. Each test looks at what the receiver got, and at
//! the bucket and the queues.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
use dealmachine_sim::{ApiFault, DownloadFault, ExportSpec, FileSpec, Shape};
use serde_json::{Value, json};

use crate::helpers::{Setup, TestApp, consumer_script, spawn_app, spawn_app_with};

/// Moves every message from the dead-letter queue back to the relay queue, as an operator's
/// redrive does.
async fn redrive(app: &TestApp) -> Vec<HashMap<String, String>> {
    let mut attributes = Vec::new();
    for message in app.receive(&app.dlq_url, Duration::from_secs(1)).await {
        app.send(&app.queue_url, &message.raw, &message.attributes).await;
        app.delete(&app.dlq_url, &message).await;
        attributes.push(message.attributes);
    }
    attributes
}

#[tokio::test]
async fn every_try_redelivery_and_replay_sends_the_same_bytes() {
    let app =
        spawn_app_with(Setup { env: vec![("PRESIGN_TTL_SECONDS", "3600".into())], ..Default::default() })
            .await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    app.receiver.answer_next(&[500]);
    let body = json!({"export_id": id, "metadata": {"crm": "list-42"}}).to_string();

    assert_eq!(app.deliver(&[&body]).await, vec!["m0"], "the first try fails");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(app.deliver(&[&body]).await.is_empty(), "the redelivery succeeds");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.invoke(json!({"export_id": id, "replay": true})).await["replayed"], true);

    let hooks = app.webhooks();
    assert_eq!(hooks.len(), 3);
    assert!(hooks.iter().all(|h| h.raw == hooks[0].raw), "one body, byte for byte, for one webhook-id");
    assert!(hooks.iter().all(|h| h.webhook_id == hooks[0].webhook_id && h.verified));
    assert_ne!(hooks[0].timestamp, hooks[2].timestamp, "only webhook-timestamp and the signature change");
    let manifest = app.manifest(&id).await.unwrap();
    let relayed_at = chrono::DateTime::parse_from_rfc3339(manifest["relayed_at"].as_str().unwrap()).unwrap();
    let sent_at = chrono::DateTime::parse_from_rfc3339(hooks[0].body["timestamp"].as_str().unwrap()).unwrap();
    assert_eq!(sent_at.timestamp_millis(), relayed_at.timestamp_millis(), "timestamp: when it was committed");
    let (stored, _) =
        app.object(&app.key(&id, ".events/export.completed.json")).await.expect("in the outbox");
    assert_eq!(String::from_utf8(stored).unwrap(), hooks[0].raw);
}

#[tokio::test]
async fn the_sweep_after_timed_out_sends_completed_with_upstreams_metadata() {
    let app = spawn_app().await;
    let id = app.sim.add_export(ExportSpec::timed(
        Duration::ZERO,
        Duration::from_secs(3),
        Shape::Steady,
        vec![FileSpec::csv("a.csv.gz", 2, 10)],
    ));
    // Upstream's record, already polled for longer than POLL_TIMEOUT_SECONDS.
    let first_seen_at = chrono::Utc::now() - chrono::Duration::days(2);
    let upstream =
        json!({"export_id": id, "metadata": {"crm": "list-7"}, "attempt": 9, "first_seen_at": first_seen_at});
    assert!(app.deliver(&[&upstream.to_string()]).await.is_empty());
    assert_eq!(app.delivered_types(), ["export.timed_out"]);

    // It completes later; the sweep finds it and enqueues a record of its own, without metadata.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(app.invoke(json!({"sweep": true})).await["enqueued_for_copy"], 1);
    let swept = app.receive(&app.queue_url, Duration::ZERO).await.remove(0);
    assert_eq!(swept.body.get("metadata"), Some(&Value::Null), "the sweep knows no metadata");
    assert!(app.deliver(&[&swept.raw]).await.is_empty());

    assert_eq!(app.delivered_types(), ["export.timed_out", "export.completed"], "timed_out is provisional");
    for hook in app.webhooks() {
        assert_eq!(hook.body["data"]["metadata"], json!({"crm": "list-7"}), "{}", hook.body["type"]);
    }
    assert!(app.manifest(&id).await.is_some());
}

#[tokio::test]
async fn a_late_redrive_that_would_get_a_404_sends_completed_and_asks_the_api_nothing() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 3, 10)]);
    app.receiver.answer_next(&[500]);
    assert_eq!(app.deliver(&[&id]).await, vec!["m0"], "committed, but the webhook failed");
    assert!(app.manifest(&id).await.is_some());

    // Days later the API has forgotten the export.
    let not_found = r#"{"error": {"code": "not_found", "message": "Export not found", "request_id": "r1", "details": {}}}"#;
    app.sim.push_faults(&[ApiFault::Raw {
        status: 404,
        content_type: "application/json",
        body: not_found.into(),
    }]);
    let asked = app.sim.seen_matching("/v1/exports").len();
    assert!(app.deliver(&[&id]).await.is_empty());

    assert_eq!(app.sim.seen_matching("/v1/exports").len(), asked, "the ledger answered: no API request");
    let types: Vec<_> = app.webhooks().iter().map(|h| (h.body["type"].clone(), h.answered)).collect();
    assert_eq!(
        types,
        [(json!("export.completed"), 500), (json!("export.completed"), 200)],
        "never export.failed"
    );
    assert_eq!(app.receive(&app.dlq_url, Duration::ZERO).await.len(), 0, "nothing set aside");
}

#[tokio::test]
async fn concurrent_runs_where_one_sees_the_links_expire_end_with_completed_alone() {
    let app = spawn_app_with(Setup {
        env: vec![("DOWNLOAD_IDLE_TIMEOUT_SECONDS", "5".into())],
        ..Default::default()
    })
    .await;
    // The export and its links expire in 4 s. Run B takes file 0's first request, which stalls
    // until B gives up on it after 5 s; run A, started just after, copies both files and commits
    // well within 4 s. B's resume then finds the link dead, and the API says the export expired.
    let stalls = FileSpec::csv("stalls.csv.gz", 4, 2_000).with_fault(DownloadFault::StallAfter(1_000)).once();
    let id = app.sim.add_export(ExportSpec {
        expires_in: chrono::Duration::seconds(4),
        ..ExportSpec::completed(vec![stalls, FileSpec::csv("second.csv.gz", 5, 10)])
    });
    let b = async {
        let report = app.invoke(json!({"export_id": id})).await;
        (report, Instant::now())
    };
    let a = async {
        let started = Instant::now();
        while app.sim.seen_matching(&format!("/files/{id}/0")).is_empty() {
            assert!(started.elapsed() < Duration::from_secs(10), "B never started its download");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = app.invoke(json!({"export_id": id})).await;
        (report, Instant::now())
    };
    let ((b_report, b_done), (a_report, a_done)) = tokio::join!(b, a);

    assert_eq!(a_report["outcome"], "completed", "{a_report}");
    assert!(a_done < b_done, "A committed first");
    let seen: Vec<(String, u16)> = app.sim.seen().iter().map(|s| (s.path.clone(), s.status)).collect();
    let refused = seen.iter().filter(|(path, status)| path.contains("/files/") && *status == 403).count();
    assert_eq!(refused, 1, "B saw the link expire: {seen:?}");
    assert_eq!(b_report["outcome"], "completed", "B found the export committed: {b_report}");
    assert_eq!(app.delivered_types(), ["export.completed"], "exactly one event, never export.expired");
    assert!(!app.keys().await.iter().any(|k| k.contains("expired")), "no failure in the outbox or markers");
}

#[tokio::test]
async fn a_410_marks_nothing_delivered_sets_the_record_aside_and_a_redrive_delivers_it() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 6, 10)]);
    app.receiver.answer_next(&[410]);
    app.send(&app.queue_url, &id, &HashMap::new()).await;
    app.poll(Duration::from_secs(5)).await;

    assert_eq!(app.queue_depth(&app.queue_url).await, (0, 0), "acknowledged: set aside, not retried");
    assert!(app.object(&app.key(&id, ".delivered/export.completed.json")).await.is_none(), "not delivered");
    assert!(app.metric_sum("WebhookFailures") >= 1.0, "counted where the webhook-failures alarm looks");
    let moved = redrive(&app).await;
    assert_eq!(moved.len(), 1, "on the dead-letter queue");
    assert_eq!(moved[0].get("error_code").map(String::as_str), Some("webhook_gone"));

    // The endpoint is fixed; the redriven record delivers the event, the same bytes.
    app.poll(Duration::from_secs(5)).await;
    let hooks = app.webhooks();
    assert_eq!(hooks.iter().map(|h| h.answered).collect::<Vec<_>>(), [410, 200]);
    assert_eq!(hooks[1].raw, hooks[0].raw);
    assert!(app.object(&app.key(&id, ".delivered/export.completed.json")).await.is_some());
    assert_eq!(app.sim.seen_matching("/files/").len(), 1, "copied once");
}

#[tokio::test]
async fn a_body_over_the_cap_drops_its_links_and_points_to_the_manifest() {
    let app =
        spawn_app_with(Setup { env: vec![("PRESIGN_TTL_SECONDS", "3600".into())], ..Default::default() })
            .await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 7, 10)]);
    let big = json!({"export_id": id, "metadata": {"notes": "x".repeat(255 * 1024)}}).to_string();
    assert!(app.deliver(&[&big]).await.is_empty());

    let hook = &app.webhooks()[0];
    assert!(hook.raw.len() < 512 * 1024, "{} bytes", hook.raw.len());
    let data = &hook.body["data"];
    assert_eq!(data["links_omitted"], true);
    assert_eq!(data["files"][0]["url"], Value::Null);
    assert_eq!(data["manifest"]["bucket"], app.bucket.as_str());
    assert_eq!(data["manifest"]["region"], "us-east-1");
    let pointed = app.object(data["manifest"]["key"].as_str().unwrap()).await.expect("the manifest is there");
    assert!(!pointed.0.is_empty());
}

#[tokio::test]
async fn files_carry_their_s3_version_and_the_same_rows_as_the_manifest() {
    let app = spawn_app().await;
    let versioning = VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
    app.s3
        .put_bucket_versioning()
        .bucket(&app.bucket)
        .versioning_configuration(versioning)
        .send()
        .await
        .unwrap();
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 8, 25), FileSpec::csv("notes.dat", 9, 5)]);
    assert!(app.deliver(&[&id]).await.is_empty());

    let manifest = app.manifest(&id).await.unwrap();
    let files = app.webhooks()[0].body["data"]["files"].clone();
    for (sent, committed) in files.as_array().unwrap().iter().zip(manifest["files"].as_array().unwrap()) {
        assert_eq!(sent["rows"], committed["rows"], "{}", sent["filename"]);
        let head =
            app.s3.head_object().bucket(&app.bucket).key(sent["key"].as_str().unwrap()).send().await.unwrap();
        assert_eq!(sent["version_id"].as_str(), head.version_id(), "{}", sent["filename"]);
        assert!(head.version_id().is_some());
    }
    assert_eq!(files[0]["rows"], 25);
    assert_eq!(files[1]["rows"], Value::Null, "not CSV: null in both");
}

#[tokio::test]
async fn a_consumer_typed_from_the_schema_reads_what_the_relay_sends() {
    let app = spawn_app().await;
    let completed = app.completed(vec![FileSpec::csv("a.csv.gz", 10, 10)]);
    let unknown = "00000000-0000-0000-0000-000000000000";
    app.deliver(&[&completed, unknown]).await;
    let hooks = app.webhooks();
    assert_eq!(hooks.len(), 2);

    let lines: Vec<&str> = hooks.iter().map(|h| h.raw.as_str()).collect();
    let (ok, read) = consumer_script("check_types.py", &lines.join("\n"));
    assert!(ok, "{read}");
    let mut read: Vec<&str> = read.lines().collect();
    read.sort();
    assert_eq!(read.len(), 2, "{read:?}");
    assert!(read.contains(&"export_not_found"), "{read:?}");
    assert!(read.iter().any(|l| l.contains(&format!("{completed}/manifest.json"))), "{read:?}");
}
