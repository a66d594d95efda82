//! Exports that end without files (failed and expired, each with its webhook), and links that
//! die before their export does.

use std::time::Duration;

use dealmachine_sim::{ApiFault, DownloadFault, ExportSpec, FileSpec, Status};
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
async fn a_download_refused_even_with_a_fresh_link_gives_export_expired() {
    let app = spawn_app().await;
    for status in [400, 401, 403, 404, 410] {
        let id =
            app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10).with_fault(DownloadFault::Status(status))]);

        let report = app.invoke(json!({"export_id": id})).await;

        assert_eq!(report["outcome"], "expired", "{status}");
        assert_eq!(
            app.sim.seen_matching(&format!("/v1/exports/{id}")).len(),
            2,
            "{status}: fresh links asked for"
        );
        assert_eq!(app.sim.seen_matching(&format!("/files/{id}/")).len(), 2, "{status}: and refused too");
    }
    let hooks = app.webhooks();
    assert_eq!(hooks.len(), 5);
    for hook in hooks {
        assert_eq!(hook.body["type"], "export.expired");
        assert_eq!(hook.body["data"]["error"]["code"], "download_link_expired");
    }
    assert!(app.file_keys().await.is_empty());
}

#[tokio::test]
async fn a_link_that_expires_mid_export_is_refreshed_and_the_file_lands() {
    let app = spawn_app().await;
    // Links good for 2 s, and a first file that takes longer than that to download, so the
    // second file's link is dead by the time its turn comes.
    let slow =
        FileSpec::csv("slow.csv.gz", 2, 20_000).with_fault(DownloadFault::Slow(Duration::from_millis(80)));
    let id = app.sim.add_export(ExportSpec {
        link_ttl: Some(chrono::Duration::seconds(2)),
        ..ExportSpec::completed(vec![slow, FileSpec::csv("second.csv.gz", 3, 10)])
    });

    assert!(app.deliver(&[&id]).await.is_empty());

    let second: Vec<u16> =
        app.sim.seen_matching(&format!("/files/{id}/1")).iter().map(|s| s.status).collect();
    assert_eq!(second, vec![403, 200], "refused with the old link, served with the fresh one");
    assert_eq!(app.sim.seen_matching(&format!("/v1/exports/{id}")).len(), 2, "one request for fresh links");
    assert_eq!(
        app.sim.seen_matching(&format!("/files/{id}/0")).len(),
        1,
        "the first file is not copied again"
    );
    let mut keys = app.file_keys().await;
    keys.sort();
    assert_eq!(keys, vec![app.key(&id, "second.csv.gz"), app.key(&id, "slow.csv.gz")]);
    assert_eq!(app.webhooks()[0].body["type"], "export.completed");
}

#[tokio::test]
async fn a_webhook_that_fails_fails_the_record_so_sqs_retries_it() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    app.receiver.answer_next(&[500]);

    assert_eq!(app.deliver(&[&id]).await, vec!["m0"]);
    assert_eq!(app.webhooks().len(), 1, "500 is not retried inside the invocation");

    for (status, total) in [(503, 4), (502, 7), (504, 10)] {
        app.receiver.answer_next(&[status; 3]);
        assert_eq!(app.deliver(&[&id]).await, vec!["m0"], "{status}");
        assert_eq!(app.webhooks().len(), total, "{status} gets two quick retries");
    }

    assert!(app.deliver(&[&id]).await.is_empty(), "succeeds once the receiver is back");
    let ids: Vec<_> = app.receiver.received().iter().map(|r| r.webhook_id.clone()).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "one webhook-id for every attempt");
}

#[tokio::test]
async fn an_unknown_or_forbidden_export_is_announced_failed_then_set_aside() {
    let app = spawn_app().await;
    let forbidden = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    let refusal =
        json!({"error": {"code": "forbidden", "message": "not your export", "request_id": "req_1"}});
    app.sim.push_faults(&[ApiFault::Raw {
        status: 403,
        content_type: "application/json",
        body: refusal.to_string(),
    }]);
    let unknown = "00000000-0000-0000-0000-000000000000";

    for (id, code) in [(forbidden.as_str(), "export_forbidden"), (unknown, "export_not_found")] {
        let failures = app.deliver(&[id]).await;

        assert!(failures.is_empty(), "{id}: acknowledged once set aside");
        let hooks = app.webhooks();
        let hook = hooks.last().unwrap();
        assert_eq!(hook.body["type"], "export.failed", "{id}");
        assert_eq!(hook.body["data"]["export_id"], id);
        assert_eq!(hook.body["data"]["error"]["code"], code);
    }
    let mut dead = app.receive(&app.dlq_url, Duration::from_secs(1)).await;
    dead.extend(app.receive(&app.dlq_url, Duration::from_secs(1)).await);
    let mut set_aside: Vec<(&str, &str)> =
        dead.iter().map(|m| (m.raw.as_str(), m.attributes["error_code"].as_str())).collect();
    set_aside.sort();
    let mut expected = vec![(forbidden.as_str(), "export_forbidden"), (unknown, "export_not_found")];
    expected.sort();
    assert_eq!(set_aside, expected, "each set aside once, with its reason");
    assert_eq!(app.webhooks().len(), 2);
    assert!(app.file_keys().await.is_empty());
}
