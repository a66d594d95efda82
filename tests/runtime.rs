//! The real Lambda binary, driven through the Lambda Runtime API by `cargo lambda watch`, as
//! AWS would drive it: the event goes in over HTTP, the batch response comes back.

#[path = "api/helpers.rs"]
mod helpers;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dealmachine_sim::{FileSpec, LocalLambda};
use helpers::{sha256, spawn_app, sqs_event};

/// The bootstrap binary under the Runtime API emulator, its output kept in files.
struct Function {
    lambda: LocalLambda,
    log: PathBuf,
}

impl Function {
    async fn start(env: &[(&str, String)], log_name: &str) -> Self {
        let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(log_name);
        let stdout = std::fs::File::create(&log).unwrap();
        let stderr = std::fs::File::create(log.with_extension("stderr")).unwrap();
        let binary = Path::new(env!("CARGO_BIN_EXE_bootstrap"));
        let lambda =
            LocalLambda::start(binary, env, stdout.into(), stderr.into()).await.expect("the function starts");
        Self { lambda, log }
    }

    async fn invoke(&self, event: &serde_json::Value) -> serde_json::Value {
        self.lambda.invoke(event).await.expect("the function answers")
    }

    /// Stops the function as Lambda does (SIGTERM) and returns what it printed on stdout (its
    /// logs and metrics) and on stderr (lambda_runtime's own shutdown notes).
    fn stop(self) -> (String, String) {
        self.lambda.terminate();
        let read = |path: &Path| std::fs::read_to_string(path).unwrap();
        (read(&self.log), read(&self.log.with_extension("stderr")))
    }
}

#[tokio::test]
async fn the_lambda_binary_relays_an_sqs_batch_through_the_runtime_api() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 9, 2000)]);
    let function = Function::start(&app.env, "relay-batch.log").await;

    let response = function.invoke(&sqs_event(&[&id, "not json {"])).await;

    assert_eq!(response, serde_json::json!({"batchItemFailures": []}));
    let (bytes, _) = app.object(&app.key(&id, "a.csv.gz")).await.expect("the file is in S3");
    assert_eq!(sha256(&bytes), app.sim.files(&id)[0].1.sha256);
    assert_eq!(app.webhooks()[0].body["type"], "export.completed");
    assert_eq!(
        app.receive(&app.dlq_url, Duration::from_secs(1)).await.len(),
        1,
        "the bad record is set aside"
    );
}

/// The state changes that each get one INFO line, with the export's fields.
const STATE_LINES: [&str; 7] = [
    "received",
    "status fetched",
    "requeued",
    "file copied",
    "manifest committed",
    "webhook delivered",
    "export relayed",
];

#[tokio::test]
async fn a_full_run_logs_json_lines_with_export_fields_and_metrics_and_no_secrets() {
    let app = spawn_app().await;
    // Secrets come from Secrets Manager, as deployed.
    let aws = export_relay::startup::aws_config().await;
    let secrets = aws_sdk_secretsmanager::Client::new(&aws);
    let mut env: Vec<(&str, String)> = app
        .env
        .iter()
        .filter(|(k, _)| !matches!(*k, "DEALMACHINE_API_KEY" | "WEBHOOK_SECRET"))
        .cloned()
        .collect();
    for (var, value) in [
        ("DEALMACHINE_API_KEY_SECRET_ARN", app.sim.api_key()),
        ("WEBHOOK_SECRET_ARN", helpers::WEBHOOK_SECRET),
    ] {
        let name = format!("{}-{var}", app.bucket);
        let arn = secrets.create_secret().name(name).secret_string(value).send().await.unwrap().arn.unwrap();
        env.push((var, arn));
    }
    env.push(("AWS_LAMBDA_LOG_LEVEL", "DEBUG".into()));
    let done = app.completed(vec![FileSpec::csv("a.csv.gz", 1, 500)]);
    let running = app
        .sim
        .add_export(dealmachine_sim::ExportSpec::scripted(&[dealmachine_sim::Status::Processing], vec![]));
    let function = Function::start(&env, "full-run.log").await;

    let response = function.invoke(&sqs_event(&[&done, &running, "../bad"])).await;
    assert_eq!(response, serde_json::json!({"batchItemFailures": []}));
    let replayed = function.invoke(&serde_json::json!({"export_id": done, "replay": true})).await;
    assert_eq!(replayed["replayed"], true);
    let (log, stderr) = function.stop();

    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    for secret in [app.sim.api_key(), helpers::WEBHOOK_SECRET, &helpers::WEBHOOK_SECRET["whsec_".len()..]] {
        assert!(!log.contains(secret) && !stderr.contains(secret), "a secret appears in the output");
    }
    let message = |l: &serde_json::Value| l["fields"]["message"].as_str().unwrap_or_default().to_string();
    for state in STATE_LINES {
        let line = lines.iter().find(|l| message(l) == state).unwrap_or_else(|| panic!("no {state:?} line"));
        assert_eq!(line["level"], "INFO", "{state}");
        assert!(line["span"]["export_id"].is_string(), "{state} carries export_id: {line}");
        assert!(line["span"]["message_id"].is_string(), "{state} carries message_id");
        assert!(line["span"]["attempt"].is_number(), "{state} carries attempt");
    }
    let dlq = lines.iter().find(|l| message(l).contains("dead-letter queue")).expect("a DLQ line");
    assert_eq!(dlq["span"]["message_id"], "m2");
    let replay = lines.iter().find(|l| message(l) == "webhook replayed").expect("a replay line");
    assert_eq!(replay["span"]["export_id"], done.as_str());
    assert_eq!(replay["fields"]["webhook_id"], format!("export_completed_{done}"));

    let metrics: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("_aws").is_some()).collect();
    let named = |name: &str| {
        metrics.iter().any(|m| {
            m["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array().unwrap().iter().any(|d| d["Name"] == name)
        })
    };
    for name in [
        "Exports",
        "BytesCopied",
        "CopySeconds",
        "PollAttempts",
        "CreatedToDeliveredSeconds",
        "WebhookAttempts",
        "WebhookFailures",
        "WebhookReplays",
        "ApiRateLimited",
        "ApiRateLimitRemaining",
    ] {
        assert!(named(name), "metric {name} is emitted");
    }
    let outcomes: Vec<&str> = metrics.iter().filter_map(|m| m["Outcome"].as_str()).collect();
    for outcome in ["completed", "requeued", "dlq"] {
        assert!(outcomes.contains(&outcome), "outcome {outcome} in {outcomes:?}");
    }
    assert!(metrics.iter().all(|m| m["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "ExportRelay"));
    assert!(lines.iter().any(|l| message(l) == "shutting down"), "SIGTERM is handled");
    assert!(stderr.contains("Graceful shutdown completed"), "{stderr}");
}

/// Starts the binary with only these settings; returns what it printed, once it has stopped.
fn cold_start(settings: &[(&str, &str)]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_bootstrap"))
        .env_clear()
        .env("DEALMACHINE_API_KEY", "dm_sk_live_secret_value")
        .env("QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/1/q")
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9/.rt")
        .envs(settings.iter().copied())
        .output()
        .unwrap();
    assert!(!output.status.success());
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn a_missing_setting_stops_the_cold_start_with_one_clear_line() {
    let all = cold_start(&[]);
    assert!(all.contains("DESTINATION_BUCKET is not set"), "{all}");
    assert!(!all.contains("dm_sk_live_secret_value"), "the key never shows: {all}");
}

#[test]
fn a_bad_retry_schedule_stops_the_cold_start_with_one_clear_line() {
    let all = cold_start(&[("DESTINATION_BUCKET", "b"), ("RETRY_SCHEDULE_SECONDS", "10,60,86400")]);
    let line = all.lines().find(|l| l.contains("RETRY_SCHEDULE_SECONDS")).unwrap_or_else(|| panic!("{all}"));
    assert!(line.contains("RETRY_SCHEDULE_SECONDS is invalid: whole seconds from 1 to 43200"), "{line}");
    assert!(line.contains("86400"), "the value is named: {line}");
}
