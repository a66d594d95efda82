//! A completed export's files land in S3 byte for byte, and a webhook says where.

use dealmachine_sim::{CsvGz, FileSpec};
use serde_json::json;

use crate::helpers::{PART, sha256, spawn_app};

#[tokio::test]
async fn a_completed_export_with_two_files_arrives_byte_identical() {
    let app = spawn_app().await;
    // Stored (level 0) gzip keeps the big file over three parts without slow compression.
    let big =
        FileSpec { content: CsvGz { seed: 1, rows: 180_000, level: 0 }, ..FileSpec::csv("big.csv.gz", 1, 0) };
    let small = FileSpec::csv("small.csv.gz", 2, 300);
    let id = app.completed(vec![big, small]);
    let expected = app.sim.files(&id);
    assert!(expected[0].1.size > 3 * PART as u64, "the big file must span more than three parts");

    let failures =
        app.deliver(&[&json!({"export_id": id, "metadata": {"crm_id": "c-42"}}).to_string()]).await;
    assert!(failures.is_empty());

    for (filename, measured) in &expected {
        let (bytes, object) = app.object(&app.key(&id, filename)).await.expect("object exists");
        assert_eq!(bytes.len() as u64, measured.size, "{filename}");
        assert_eq!(sha256(&bytes), measured.sha256, "{filename} is byte-identical");
        assert_eq!(object.content_type(), Some("application/gzip"));
        let metadata = object.metadata().unwrap();
        assert_eq!(metadata["export-id"], id);
        assert_eq!(metadata["source-size"], measured.size.to_string());
    }
    assert_eq!(app.pending_uploads().await, 0);

    let hooks = app.webhooks();
    assert_eq!(hooks.len(), 1);
    let hook = &hooks[0];
    assert!(hook.verified, "signature verifies with the standardwebhooks library");
    assert_eq!(hook.body["type"], "export.completed");
    let data = &hook.body["data"];
    assert_eq!(data["export_id"], id.as_str());
    assert_eq!(data["metadata"], json!({"crm_id": "c-42"}));
    assert_eq!(data["status"], "completed");
    assert_eq!(data["record_count"], 180_300);
    let files = data["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["bucket"], app.bucket.as_str());
    assert_eq!(files[0]["key"], app.key(&id, "big.csv.gz").as_str());
    assert_eq!(files[0]["size"], expected[0].1.size);
}

#[tokio::test]
async fn the_webhook_is_signed_by_the_standard_webhooks_rules() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 3, 10)]);
    app.deliver(&[&id]).await;

    let hook = &app.webhooks()[0];
    assert!(hook.verified);
    assert_eq!(hook.content_type, "application/json");
    assert!(hook.user_agent.starts_with("export-relay/"));
    assert_eq!(hook.webhook_id, format!("export_completed_{id}"));
    let age = chrono::Utc::now().timestamp() - hook.timestamp.parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "timestamp is fresh unix seconds");

    // A consumer's own check, with the library they would use, on the raw request.
    let verifier = standardwebhooks::Webhook::new(crate::helpers::WEBHOOK_SECRET).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("webhook-id", hook.webhook_id.parse().unwrap());
    headers.insert("webhook-timestamp", hook.timestamp.parse().unwrap());
    headers.insert("webhook-signature", hook.signature.parse().unwrap());
    verifier.verify(hook.raw.as_bytes(), &headers).expect("signature verifies");
    headers.insert("webhook-signature", hook.signature.replace("v1,", "v1,A").parse().unwrap());
    assert!(verifier.verify(hook.raw.as_bytes(), &headers).is_err(), "a tampered signature fails");
}

#[tokio::test]
async fn a_download_url_off_the_allow_list_is_refused_with_export_failed() {
    let app = crate::helpers::spawn_app_with(crate::helpers::Setup {
        env: vec![("DOWNLOAD_HOSTS", "storage.googleapis.com".into())],
        ..Default::default()
    })
    .await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 5, 10)]);

    let report = app.invoke(json!({"export_id": id})).await;
    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["error"]["code"], "download_url_refused");
    assert!(app.file_keys().await.is_empty());
    let hooks = app.webhooks();
    assert_eq!(hooks[0].body["type"], "export.failed");
    assert!(hooks[0].body["data"]["error"]["message"].as_str().unwrap().contains("DOWNLOAD_HOSTS"));
}

#[tokio::test]
async fn hostile_file_names_stay_inside_the_export_folder() {
    let app = spawn_app().await;
    let id =
        app.completed(vec![FileSpec::csv("../../escape.csv.gz", 6, 10), FileSpec::csv("/etc/passwd", 7, 10)]);
    app.deliver(&[&id]).await;
    let mut keys = app.file_keys().await;
    keys.sort();
    let folder = app.key(&id, "");
    assert_eq!(keys, vec![format!("{folder}_._.._escape.csv.gz"), format!("{folder}_etc_passwd")]);
}
