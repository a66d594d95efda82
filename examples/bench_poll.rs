//! `make bench` poll path: SQS batches whose exports are all still running, handled by
//! `Relay::handle`, the Lambda's own entry point (one GET on the API and one `SendMessage` per
//! record, the records of a batch concurrently).
//!
//! `bench_poll BATCHES` with `SIM_API_URL`, `SIM_API_KEY`, `EXPORT_IDS` (comma separated; a
//! batch has one record for each), `QUEUE_URL` and the AWS settings in the environment. The
//! first batch warms the connections and is reported apart. Prints one JSON line: the wall
//! time of each batch, and the process's CPU seconds over the measured batches.

#[path = "support/cpu.rs"]
mod cpu;

use std::time::Instant;

use export_relay::startup;
use export_relay::transfer::Deadline;
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let batches: usize = std::env::args().nth(1).unwrap_or_else(|| "20".into()).parse()?;
    let env = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let (api_url, api_key) = (env("SIM_API_URL")?, env("SIM_API_KEY")?);
    let (queue_url, ids) = (env("QUEUE_URL")?, env("EXPORT_IDS")?);
    let aws = startup::aws_config().await;
    let settings = [
        ("DEALMACHINE_API_KEY", api_key.as_str()),
        ("DEALMACHINE_API_URL", api_url.as_str()),
        ("DESTINATION_BUCKET", "bench"),
        ("QUEUE_URL", queue_url.as_str()),
        ("DOWNLOAD_HOSTS", "127.0.0.1"),
        ("ALLOW_INSECURE_HTTP", "true"),
        ("S3_FORCE_PATH_STYLE", "true"),
    ];
    let config = startup::load_config_with(
        |name| settings.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()),
        &aws,
    )
    .await?;
    let relay = startup::build_relay(&config, &aws)?;
    let event = sqs_event(ids.split(',').filter(|s| !s.is_empty()));

    let warm = Instant::now();
    check(relay.handle(event.clone(), Deadline::NONE).await?)?;
    let warmup_seconds = warm.elapsed().as_secs_f64();
    let cpu_before = cpu::seconds();
    let mut walls = Vec::with_capacity(batches);
    for _ in 0..batches {
        let started = Instant::now();
        check(relay.handle(event.clone(), Deadline::NONE).await?)?;
        walls.push(started.elapsed().as_secs_f64());
    }
    let cpu = cpu::seconds() - cpu_before;
    println!(
        "{}",
        json!({"records": event["Records"].as_array().map_or(0, Vec::len),
               "warmup_seconds": warmup_seconds, "batch_seconds": walls, "cpu_seconds": cpu})
    );
    Ok(())
}

fn sqs_event<'a>(ids: impl Iterator<Item = &'a str>) -> Value {
    let records: Vec<Value> = ids
        .enumerate()
        .map(|(i, id)| {
            json!({
                "messageId": format!("bench-{i}"),
                "receiptHandle": format!("bench-receipt-{i}"),
                // A later poll of a running chain, as most poll invocations are; the first
                // receipt of each export also opens its `.chain.json` in S3.
                "body": json!({"export_id": id, "attempt": 2, "first_seen_at": chrono::Utc::now()}).to_string(),
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1764470000000",
                               "SenderId": "BENCH", "ApproximateFirstReceiveTimestamp": "1764470000001"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:bench",
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    json!({ "Records": records })
}

/// Every record must have been re-enqueued: no `batchItemFailures`.
fn check(response: Value) -> Result<(), String> {
    match response["batchItemFailures"].as_array() {
        Some(failed) if !failed.is_empty() => Err(format!("records failed: {response}")),
        _ => Ok(()),
    }
}
