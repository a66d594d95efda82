//! The webhook as consumers meet it: the catalog and its schema, delivery rules, secret
//! rotation, secrets from Secrets Manager, presigned links, and a check with a consumer's
//! own library.

use std::time::Duration;

use base64::Engine;
use dealmachine_sim::{Answer, FileSpec};
use export_relay::notify::{Notifier, NotifyError};
use export_relay::startup;
use export_relay::transfer::Deadline;
use serde_json::{Value, json};

use crate::helpers::{
    PUBLISHED, STRICT, Setup, WEBHOOK_SECRET, assert_valid_event, consumer_script, published_schema,
    schema_errors, sha256, spawn_app, spawn_app_with,
};

#[test]
fn every_documented_example_matches_the_schema_and_a_broken_one_does_not() {
    for kind in ["completed", "failed", "expired", "timed_out"] {
        let path = format!("{}/schemas/examples/export.{kind}.json", env!("CARGO_MANIFEST_DIR"));
        let example: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_valid_event(&example);
    }
    let completed: Value =
        serde_json::from_str(include_str!("../../schemas/examples/export.completed.json")).unwrap();
    let mut broken = completed.clone();
    broken["data"].as_object_mut().unwrap().remove("metadata");
    assert!(!schema_errors(&PUBLISHED, &broken).is_empty(), "a body without metadata must not pass");
    let mut failed_with_files: Value =
        serde_json::from_str(include_str!("../../schemas/examples/export.failed.json")).unwrap();
    failed_with_files["data"]["files"] = json!([]);
    assert!(
        !schema_errors(&STRICT, &failed_with_files).is_empty(),
        "the strict copy refuses what we never send"
    );
}

/// A field a later 1.x may add, by where it goes.
type Addition = (&'static str, fn(&mut Value));

#[test]
fn the_published_schema_lets_a_consumer_survive_added_fields_and_the_strict_copy_does_not() {
    let example: Value =
        serde_json::from_str(include_str!("../../schemas/examples/export.completed.json")).unwrap();
    let additions: [Addition; 5] = [
        ("a later minor version", |b| b["schema_version"] = json!("1.7")),
        ("a field at the top", |b| b["added_at_the_top"] = json!(1)),
        ("a field in data", |b| b["data"]["added_in_data"] = json!({"x": 1})),
        ("a field in a file", |b| b["data"]["files"][0]["added_in_a_file"] = json!(true)),
        ("a field in the manifest pointer", |b| b["data"]["manifest"]["added"] = json!("y")),
    ];
    for (what, add) in additions {
        let mut newer = example.clone();
        add(&mut newer);
        assert_eq!(schema_errors(&PUBLISHED, &newer), Vec::<String>::new(), "{what}: 1.x may add it");
        let is_field = what != "a later minor version";
        assert_eq!(
            !schema_errors(&STRICT, &newer).is_empty(),
            is_field,
            "{what}: the strict copy checks what we send"
        );
    }
}

#[test]
fn the_schema_is_versioned_and_friendly_to_code_generators() {
    let schema = published_schema();
    let id = schema["$id"].as_str().unwrap();
    let major_minor = export_relay::notify::SCHEMA_VERSION;
    assert!(id.contains(&format!("/{major_minor}/")), "the version is in $id: {id}");
    let defs = schema["$defs"].as_object().unwrap();
    for (kind, name) in [
        ("export.completed", "ExportCompleted"),
        ("export.failed", "ExportFailed"),
        ("export.expired", "ExportExpired"),
        ("export.timed_out", "ExportTimedOut"),
    ] {
        let def = &defs[name];
        assert_eq!(def["properties"]["type"]["const"], kind, "{name}: the discriminator");
        assert!(def.get("allOf").is_none() && def.get("$ref").is_none(), "{name} stands alone");
    }
    // Every key we send is always sent, so every object lists each of its properties as required.
    for (name, def) in defs {
        if let Some(properties) = def["properties"].as_object() {
            let mut required: Vec<&str> =
                def["required"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
            let mut keys: Vec<&str> = properties.keys().map(String::as_str).collect();
            required.sort();
            keys.sort();
            assert_eq!(required, keys, "{name}");
            assert!(def.get("additionalProperties").is_none(), "{name}: the published schema is open");
        }
    }
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_counts_as_a_failure() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    // A 307 keeps the method and body, with a `Location` back to the receiver: a client that
    // followed it would POST the event a second time.
    app.receiver.answer_next(&[307]);

    assert_eq!(app.deliver(&[&id]).await, vec!["m0"]);
    let hooks = app.webhooks();
    assert_eq!(hooks.len(), 1, "one request, no redirect followed, no retry");
    assert_eq!(hooks[0].answered, 307);
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    app.receiver.answer_next(&[429]);

    assert!(app.deliver(&[&id]).await.is_empty());

    let hooks = app.webhooks();
    assert_eq!(hooks.iter().map(|h| h.answered).collect::<Vec<_>>(), vec![429, 200]);
    // The quick retries' own backoff is 20 ms here: only `Retry-After: 1` makes this gap.
    let gap = hooks[1].at - hooks[0].at;
    assert!(gap >= Duration::from_secs(1), "waited for Retry-After: 1 between the tries, got {gap:?}");
    assert_ne!(hooks[0].timestamp, "", "each try is signed afresh");
    assert_eq!(hooks[0].webhook_id, hooks[1].webhook_id);
}

#[tokio::test]
async fn every_try_at_a_failing_endpoint_is_counted_where_the_alarms_look() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    app.receiver.answer_next(&[503, 503, 503]);

    assert_eq!(app.deliver(&[&id]).await, vec!["m0"], "retried by SQS");
    assert_eq!(app.webhooks().len(), 3, "the quick retries");
    assert_eq!(app.metric_sum("WebhookAttempts"), 3.0);
    assert_eq!(app.metric_sum("WebhookFailures"), 1.0);
}

#[tokio::test]
async fn a_stalled_endpoint_times_out_and_the_record_is_retried() {
    let app =
        spawn_app_with(Setup { env: vec![("WEBHOOK_TIMEOUT_SECONDS", "1".into())], ..Default::default() })
            .await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    app.receiver.script(&[Answer::Stall, Answer::Stall, Answer::Stall]);

    let failures =
        tokio::time::timeout(Duration::from_secs(30), app.deliver(&[&id])).await.expect("does not hang");

    assert_eq!(failures, vec!["m0"]);
    assert_eq!(app.webhooks().len(), 3, "timeouts get the quick retries too");
}

#[tokio::test]
async fn a_huge_answer_is_not_read_in_full() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    // A body that never ends: only a relay that stops reading can answer at all.
    let guard = Duration::from_secs(60);
    app.receiver.script(&[Answer::Endless(200)]);
    let delivered = tokio::time::timeout(guard, app.deliver(&[&id])).await.expect("stops reading");
    assert!(delivered.is_empty(), "a 2xx is success, whatever its body");

    // An error answer's body is kept for the log, but only its first KiB.
    app.receiver.script(&[Answer::Endless(500)]);
    let notifier = Notifier::new(app.config.webhook.as_ref().unwrap()).unwrap();
    let sent = tokio::time::timeout(guard, notifier.send("export_failed_x", b"{}"));
    match sent.await.expect("stops reading") {
        Err(NotifyError::Rejected { status, body, .. }) => {
            assert_eq!(status, 500);
            assert_eq!(body.len(), 1024, "the body is cut at 1 KiB");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn with_two_secrets_a_consumer_holding_either_can_verify() {
    let new_secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([42u8; 32]));
    // The receiver holds WEBHOOK_SECRET; the relay signs with a new one and the old one.
    let both = format!("{new_secret} {WEBHOOK_SECRET}");
    let app = spawn_app_with(Setup { env: vec![("WEBHOOK_SECRET", both)], ..Default::default() }).await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);

    assert!(app.deliver(&[&id]).await.is_empty());

    let hook = &app.webhooks()[0];
    assert!(hook.verified, "the old secret still verifies");
    assert_eq!(hook.signature.split(' ').count(), 2, "one signature per secret");
    for secret in [new_secret.as_str(), WEBHOOK_SECRET] {
        let request = json!({
            "secret": secret,
            "headers": {"webhook-id": hook.webhook_id, "webhook-timestamp": hook.timestamp,
                        "webhook-signature": hook.signature},
            "body": hook.raw,
        });
        assert!(python_verify(&request).0, "a consumer holding {secret:.10}... verifies");
    }
}

#[tokio::test]
async fn secrets_can_come_from_secrets_manager() {
    let app = spawn_app().await;
    let aws = startup::aws_config().await;
    let secrets = aws_sdk_secretsmanager::Client::new(&aws);
    let name = format!("{}-secrets", app.bucket);
    let create = |suffix: &str, value: &str| {
        secrets.create_secret().name(format!("{name}-{suffix}")).secret_string(value).send()
    };
    let key_arn = create("api-key", app.sim.api_key()).await.unwrap().arn.unwrap();
    let hook_arn = create("webhook", WEBHOOK_SECRET).await.unwrap().arn.unwrap();
    let mut env: Vec<(String, String)> = app
        .env
        .iter()
        .filter(|(k, _)| !matches!(*k, "DEALMACHINE_API_KEY" | "WEBHOOK_SECRET"))
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    env.push(("DEALMACHINE_API_KEY_SECRET_ARN".into(), key_arn));
    env.push(("WEBHOOK_SECRET_ARN".into(), hook_arn));
    let lookup = |env: Vec<(String, String)>| {
        move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };

    let config = startup::load_config_with(lookup(env.clone()), &aws).await.unwrap();
    let relay = startup::build_relay(&config, &aws).unwrap();
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    let report = relay.handle(json!({"export_id": id}), Deadline::NONE).await.unwrap();

    assert_eq!(report["outcome"], "completed", "the API accepted the key from Secrets Manager");
    assert!(app.webhooks()[0].verified, "signed with the secret from Secrets Manager");

    env.push(("WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into()));
    let err = startup::load_config_with(lookup(env), &aws).await.unwrap_err();
    assert!(err.to_string().contains("WEBHOOK_SECRET_ARN and WEBHOOK_SECRET are both set"), "{err}");
}

#[tokio::test]
async fn presigned_links_let_a_consumer_without_aws_access_fetch_the_files() {
    let app =
        spawn_app_with(Setup { env: vec![("PRESIGN_TTL_SECONDS", "3600".into())], ..Default::default() })
            .await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 500)]);

    assert!(app.deliver(&[&id]).await.is_empty());

    let file = &app.webhooks()[0].body["data"]["files"][0];
    let url = file["url"].as_str().expect("a presigned url");
    assert!(url.contains("X-Amz-Expires=3600"), "{url}");
    let bytes = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert_eq!(sha256(&bytes), app.sim.files(&id)[0].1.sha256);
}

#[tokio::test]
async fn a_captured_webhook_verifies_with_the_python_standardwebhooks_library() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    app.deliver(&[&id]).await;
    let hook = &app.webhooks()[0];

    let check = |body: &str| {
        let request = json!({
            "secret": WEBHOOK_SECRET,
            "headers": {"webhook-id": hook.webhook_id, "webhook-timestamp": hook.timestamp, "webhook-signature": hook.signature},
            "body": body,
        });
        python_verify(&request)
    };

    assert_eq!(check(&hook.raw), (true, "verified export.completed".to_string()));
    let tampered = hook.raw.replace("a.csv.gz", "b.csv.gz");
    assert!(!check(&tampered).0, "a changed body fails");
}

/// Runs `tests/consumer/verify_webhook.py`.
fn python_verify(request: &Value) -> (bool, String) {
    consumer_script("verify_webhook.py", &request.to_string())
}
