//! The API key, rotated in Secrets Manager while the function is warm.

use dealmachine_sim::FileSpec;
use export_relay::handler::Relay;
use export_relay::startup;
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app, sqs_event};
use export_relay::transfer::Deadline;

/// A relay that reads its API key from a new secret in moto's Secrets Manager, and that
/// secret's ARN.
async fn relay_with_key_in_secrets_manager(app: &TestApp) -> (Relay, aws_sdk_secretsmanager::Client, String) {
    let aws = startup::aws_config().await;
    let secrets = aws_sdk_secretsmanager::Client::new(&aws);
    let name = format!("{}-api-key", app.bucket);
    let arn = secrets.create_secret().name(name).secret_string(app.sim.api_key()).send().await.unwrap();
    let arn = arn.arn.unwrap();
    let mut env: Vec<(String, String)> = app
        .env
        .iter()
        .filter(|(k, _)| *k != "DEALMACHINE_API_KEY")
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    env.push(("DEALMACHINE_API_KEY_SECRET_ARN".into(), arn.clone()));
    let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let config = startup::load_config_with(lookup, &aws).await.unwrap();
    (startup::build_relay(&config, &aws).unwrap(), secrets, arn)
}

async fn failures(relay: &Relay, id: &str) -> Vec<Value> {
    let response = relay.handle(sqs_event(&[id]), Deadline::NONE).await.unwrap();
    response["batchItemFailures"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_key_rotated_while_warm_is_read_again_and_the_next_record_relays() {
    let app = spawn_app().await;
    let (relay, secrets, arn) = relay_with_key_in_secrets_manager(&app).await;
    let first = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);
    assert!(failures(&relay, &first).await.is_empty());

    let rotated = "dm_sk_live_rotated_key";
    secrets.put_secret_value().secret_id(&arn).secret_string(rotated).send().await.unwrap();
    app.sim.rotate_key(rotated);
    let second = app.completed(vec![FileSpec::csv("b.csv.gz", 2, 10)]);

    assert!(failures(&relay, &second).await.is_empty(), "relayed with the key read again");
    let statuses: Vec<u16> =
        app.sim.seen_matching(&format!("/v1/exports/{second}")).iter().map(|s| s.status).collect();
    assert_eq!(statuses, vec![401, 200], "refused with the old key, accepted with the new one");
    assert!(app.object(&app.key(&second, "b.csv.gz")).await.is_some());
}

#[tokio::test]
async fn a_key_that_stays_refused_fails_the_record_for_a_retry_and_is_read_again_once_a_minute() {
    let app = spawn_app().await;
    let (relay, secrets, arn) = relay_with_key_in_secrets_manager(&app).await;
    let rotated = "dm_sk_live_someone_elses";
    app.sim.rotate_key(rotated);
    let running = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 10)]);

    let failed = failures(&relay, &running).await;

    assert_eq!(failed, vec![serde_json::json!({"itemIdentifier": "m0"})], "SQS delivers it again");
    assert!(app.receive(&app.dlq_url, std::time::Duration::ZERO).await.is_empty(), "not set aside");
    assert!(app.webhooks().is_empty(), "nothing announced: the export is not known to have failed");

    // The secret was just read; within the minute a refused key is not read again, so a wrong
    // key costs one secret read a minute, not one per record.
    secrets.put_secret_value().secret_id(&arn).secret_string(rotated).send().await.unwrap();
    assert_eq!(failures(&relay, &running).await.len(), 1, "still refused: the new key is not read yet");
    let statuses: Vec<u16> =
        app.sim.seen_matching(&format!("/v1/exports/{running}")).iter().map(|s| s.status).collect();
    assert_eq!(statuses, vec![401, 401], "one request each, with the key read a moment ago");
}
