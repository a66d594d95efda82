//! Replays: an operator asks for an export's webhook again, for a consumer that lost it. The
//! consumer gets the same event, with the same `webhook-id`; nothing is copied or fetched again.

use dealmachine_sim::{ExportSpec, FileSpec, Status};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

fn replay(id: &str) -> Value {
    json!({"export_id": id, "replay": true})
}

/// Requests to the API and the file host, and the bucket's keys: all a replay must not change.
async fn footprint(app: &TestApp) -> (usize, Vec<String>) {
    (app.sim.seen().len(), app.keys().await)
}

#[tokio::test]
async fn a_replay_sends_the_same_completed_event_again_and_copies_nothing() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 100), FileSpec::csv("b.csv.gz", 2, 50)]);
    assert!(
        app.deliver(&[&json!({"export_id": id, "metadata": {"crm": "list-42"}}).to_string()])
            .await
            .is_empty()
    );
    let before = footprint(&app).await;

    app.invoke(replay(&id)).await;

    let hooks = app.webhooks();
    assert_eq!(hooks.len(), 2);
    let (first, again) = (&hooks[0], &hooks[1]);
    assert!(again.verified && again.answered == 200);
    assert_eq!(again.webhook_id, first.webhook_id, "the consumer can drop it as a duplicate");
    assert_eq!(again.body, first.body, "the same event: type, timestamp, metadata, files");
    let manifest = app.manifest(&id).await.unwrap();
    let named = |files: &Value| -> Vec<(Value, Value)> {
        files.as_array().unwrap().iter().map(|f| (f["key"].clone(), f["sha256"].clone())).collect()
    };
    assert_eq!(
        named(&again.body["data"]["files"]),
        named(&manifest["files"]),
        "the body matches the manifest"
    );
    assert_eq!(footprint(&app).await, before, "no API call, no download, nothing written");
}

#[tokio::test]
async fn a_replay_of_a_failed_export_sends_its_error_again() {
    let app = spawn_app().await;
    let id = app.sim.add_export(ExportSpec::scripted(&[Status::Failed], vec![]));
    assert!(app.deliver(&[&id]).await.is_empty());
    let before = footprint(&app).await;

    app.invoke(json!({"export_id": id, "replay": true, "type": "export.failed"})).await;

    let hooks = app.webhooks();
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[1].body, hooks[0].body);
    assert_eq!(hooks[1].body["data"]["error"]["code"], "export_failed");
    assert_eq!(hooks[1].webhook_id, hooks[0].webhook_id);
    assert_eq!(footprint(&app).await, before);
}

#[tokio::test]
async fn a_replay_of_an_export_never_delivered_says_so_and_sends_nothing() {
    let app = spawn_app().await;
    // Copied and committed, but the endpoint refused the webhook: not delivered.
    let copied = app.completed(vec![FileSpec::csv("a.csv.gz", 3, 10)]);
    app.receiver.answer_next(&[500]);
    assert_eq!(app.deliver(&[&copied]).await, vec!["m0"]);
    let unknown = "00000000-0000-0000-0000-000000000000";

    for id in [copied.as_str(), unknown] {
        let answer = app.invoke(replay(id)).await;
        assert_eq!(answer["replayed"], false);
        assert_eq!(answer["error"]["code"], "never_delivered");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("was never delivered") && message.contains(id), "{message}");
    }
    let asked_for_a_type =
        app.invoke(json!({"export_id": copied, "replay": true, "type": "export.expired"})).await;
    assert_eq!(asked_for_a_type["error"]["code"], "never_delivered");

    assert_eq!(app.webhooks().len(), 1, "only the refused first attempt");
}
