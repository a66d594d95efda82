//! Exports that end without files: failed and expired, each with its webhook.

use dealmachine_sim::{DownloadFault, ExportSpec, FileSpec, Status};
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_failed_export_gives_export_failed() {
    let app = spawn_app().await;
    let id = app.sim.add_export(ExportSpec::scripted(&[Status::Failed], vec![]));

    let failures = app.deliver(&[&json!({"export_id": id, "metadata": {"k": "v"}}).to_string()]).await;

    assert!(failures.is_empty());
    let hooks = app.webhooks();
    assert_eq!(hooks.len(), 1);
    assert!(hooks[0].verified);
    let body = &hooks[0].body;
    assert_eq!(body["type"], "export.failed");
    assert_eq!(body["data"]["export_id"], id.as_str());
    assert_eq!(body["data"]["status"], "failed");
    assert_eq!(body["data"]["metadata"], json!({"k": "v"}));
    assert_eq!(body["data"]["error"]["code"], "export_failed");
    assert!(app.file_keys().await.is_empty());
}

#[tokio::test]
async fn a_completed_export_past_its_expiry_gives_export_expired() {
    let app = spawn_app().await;
    let id = app.sim.add_export(ExportSpec {
        created_at: Some(chrono::Utc::now() - chrono::Duration::days(8)),
        ..ExportSpec::completed(vec![FileSpec::csv("a.csv.gz", 1, 10)])
    });

    let report = app.invoke(json!({"export_id": id})).await;

    assert_eq!(report["outcome"], "expired");
    assert_eq!(app.webhooks()[0].body["type"], "export.expired");
    assert!(app.file_keys().await.is_empty());
}

#[tokio::test]
async fn a_download_refused_by_the_file_host_gives_export_expired() {
    let app = spawn_app().await;
    let file = FileSpec { fault: Some(DownloadFault::Status(403)), ..FileSpec::csv("a.csv.gz", 1, 10) };
    let id = app.completed(vec![file]);

    let report = app.invoke(json!({"export_id": id})).await;

    assert_eq!(report["outcome"], "expired");
    let hook = &app.webhooks()[0].body;
    assert_eq!(hook["type"], "export.expired");
    assert_eq!(hook["data"]["error"]["code"], "download_link_expired");
}

#[tokio::test]
async fn a_webhook_that_fails_fails_the_record_so_sqs_retries_it() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    app.receiver.answer_next(&[500]);

    assert_eq!(app.deliver(&[&id]).await, vec!["m0"]);
    assert_eq!(app.webhooks().len(), 1, "500 is not retried inside the invocation");

    app.receiver.answer_next(&[503, 503, 503]);
    assert_eq!(app.deliver(&[&id]).await, vec!["m0"]);
    assert_eq!(app.webhooks().len(), 4, "503 gets two quick retries");

    assert!(app.deliver(&[&id]).await.is_empty(), "succeeds once the receiver is back");
    let ids: Vec<_> = app.receiver.received().iter().map(|r| r.webhook_id.clone()).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "one webhook-id for every attempt");
}
