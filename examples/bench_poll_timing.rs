//! `make bench` polling table: exports of several durations, scaled down to seconds, relayed as
//! SQS delivers the relay's own delayed messages (moto, real delays), once on the doubling
//! schedule and once on the progress-aware one; then a batch of due polls, checked on the list
//! endpoint against a `GET` each.
//!
//! `bench_poll_timing` with `AWS_ENDPOINT_URL` (moto) and the AWS settings in the environment.
//! `BENCH_POLL_RUNS` (seconds, comma separated) and `BENCH_POLL_REPEATS` choose the exports.
//! Every record is delivered in an invocation of its own, so each export's requests are its
//! own. Prints one JSON line, last.

use std::error::Error;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::Message;
use chrono::{DateTime, Utc};
use dealmachine_sim::{ExportSpec, FileSpec, Receiver, Shape, SimOptions, Simulator, Status};
use export_relay::config::Config;
use export_relay::handler::Relay;
use export_relay::startup;
use export_relay::transfer::Deadline;
use serde_json::{Value, json};

#[path = "shared/queue.rs"]
mod queue;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const SECRET: &str = "whsec_ZGVtby1zZWNyZXQtZm9yLWV4cG9ydC1yZWxheS0xMjM0NTY=";
/// The defaults (30 s, then up to 900 s) scaled down 15 times, as the issue measured.
const INITIAL_DELAY: u64 = 2;
const MAX_DELAY: u64 = 60;
const SCALE: u64 = 15;
/// An export is pending for this share of its run (at least a second), then processing.
const PENDING_SHARE: f64 = 0.05;
const SHAPES: [(Shape, &str); 3] =
    [(Shape::Steady, "steady"), (Shape::StuckThenFast, "stuck-then-fast"), (Shape::Jumping, "jumping")];
const SCHEDULES: [&str; 2] = ["doubling", "progress"];

/// One export of the table, and when it completes.
struct Timed {
    id: String,
    schedule: &'static str,
    shape: &'static str,
    run: u64,
    completes_at: DateTime<Utc>,
}

/// The AWS side shared by every relay the bench builds.
struct Aws {
    config: aws_config::SdkConfig,
    sqs: aws_sdk_sqs::Client,
    bucket: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let started = Instant::now();
    let runs: Vec<u64> = list_setting("BENCH_POLL_RUNS", "20,40,120,480")?;
    let repeats: usize = list_setting("BENCH_POLL_REPEATS", "3")?[0] as usize;
    let aws = aws().await?;
    let timing = timing_table(&aws, &runs, repeats).await?;
    let batch = vec![
        batch_case(&aws, "10 processing", &[(Status::Processing, 10)]).await?,
        batch_case(
            &aws,
            "6 processing, 3 completed, 1 pending",
            &[(Status::Processing, 6), (Status::Completed, 3), (Status::Pending, 1)],
        )
        .await?,
    ];
    println!(
        "{}",
        json!({
            "settings": {"poll_initial_delay_seconds": INITIAL_DELAY, "poll_max_delay_seconds": MAX_DELAY,
                         "scale": SCALE, "runs_seconds": runs, "repeats": repeats,
                         "pending_share": PENDING_SHARE},
            "exports": timing,
            "batch": batch,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

fn list_setting(name: &str, default: &str) -> Result<Vec<u64>> {
    let raw = std::env::var(name).unwrap_or_else(|_| default.into());
    Ok(raw.split(',').map(|n| n.trim().parse()).collect::<std::result::Result<_, _>>()?)
}

async fn aws() -> Result<Aws> {
    let config = startup::aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build(),
    );
    let bucket = format!("bench-poll-{}", Utc::now().timestamp_millis());
    s3.create_bucket().bucket(&bucket).send().await?;
    Ok(Aws { config, sqs, bucket })
}

/// A relay on `schedule` against `sim`, re-enqueueing on a queue of its own.
async fn relay(aws: &Aws, sim: &Simulator, receiver: &Receiver, schedule: &str) -> Result<(Relay, String)> {
    let name = format!("bench-poll-{schedule}-{}", Utc::now().timestamp_micros());
    let queue_url = aws.sqs.create_queue().queue_name(name).send().await?.queue_url.unwrap_or_default();
    let (initial, max) = (INITIAL_DELAY.to_string(), MAX_DELAY.to_string());
    let config = Config::from_pairs([
        ("DEALMACHINE_API_KEY", sim.api_key()),
        ("DEALMACHINE_API_URL", sim.api_url().as_str()),
        ("DESTINATION_BUCKET", aws.bucket.as_str()),
        ("QUEUE_URL", queue_url.as_str()),
        ("WEBHOOK_URL", receiver.url().as_str()),
        ("WEBHOOK_SECRET", SECRET),
        ("DOWNLOAD_HOSTS", "127.0.0.1"),
        ("ALLOW_INSECURE_HTTP", "true"),
        ("S3_FORCE_PATH_STYLE", "true"),
        ("POLL_INITIAL_DELAY_SECONDS", initial.as_str()),
        ("POLL_MAX_DELAY_SECONDS", max.as_str()),
        ("POLL_SCHEDULE", schedule),
    ])?;
    Ok((startup::build_relay(&config, &aws.config)?, queue_url))
}

/// Every shape, run and repeat on both schedules at once; waits until each export's webhook
/// came, and reads its requests and lateness.
async fn timing_table(aws: &Aws, runs: &[u64], repeats: usize) -> Result<Vec<Value>> {
    let sim = Simulator::start(SimOptions::default(), "127.0.0.1:0".parse()?).await?;
    let receiver = Receiver::start(SECRET, "127.0.0.1:0".parse()?, true).await?;
    let mut relays = Vec::new();
    for schedule in SCHEDULES {
        relays.push(relay(aws, &sim, &receiver, schedule).await?);
    }
    let mut exports = Vec::new();
    for repeat in 0..repeats {
        for &run in runs {
            for (shape, shape_name) in SHAPES {
                for (schedule, (_, queue_url)) in SCHEDULES.iter().zip(&relays) {
                    let export = start_export(&sim, run, shape, repeat)?;
                    let body = json!({"export_id": export.0, "metadata": {"bench": schedule}}).to_string();
                    aws.sqs.send_message().queue_url(queue_url).message_body(body).send().await?;
                    exports.push(Timed {
                        id: export.0,
                        schedule,
                        shape: shape_name,
                        run,
                        completes_at: export.1,
                    });
                }
            }
            // Exports of a run start apart, so their polls do not meet on whole seconds.
            tokio::time::sleep(Duration::from_millis(130)).await;
        }
    }
    let longest = runs.iter().copied().max().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(longest * 3 + 120);
    let loops = SCHEDULES.iter().zip(&relays).map(|(schedule, (relay, queue_url))| {
        let ids: Vec<&str> =
            exports.iter().filter(|e| e.schedule == *schedule).map(|e| e.id.as_str()).collect();
        deliver_until_done(&aws.sqs, relay, queue_url, &receiver, ids, deadline)
    });
    for finished in futures::future::join_all(loops).await {
        finished?;
    }
    Ok(report(&sim, &receiver, &exports))
}

/// Adds an export of `run` seconds in `shape`, created now; its ID and when it completes.
fn start_export(sim: &Simulator, run: u64, shape: Shape, seed: usize) -> Result<(String, DateTime<Utc>)> {
    let run = Duration::from_secs(run);
    let pending = run.mul_f64(PENDING_SHARE).max(Duration::from_secs(1));
    let created_at = Utc::now();
    let spec = ExportSpec {
        created_at: Some(created_at),
        ..ExportSpec::timed(pending, run - pending, shape, vec![FileSpec::csv("a.csv.gz", seed as u64, 10)])
    };
    Ok((sim.add_export(spec), created_at + chrono::Duration::from_std(run)?))
}

/// Lambda's SQS poller, in small: receives what is due and invokes the relay with each record
/// on its own, deleting those it did not report as failed, until every export in `ids` has
/// its webhook or the deadline passes.
async fn deliver_until_done(
    sqs: &aws_sdk_sqs::Client,
    relay: &Relay,
    queue_url: &str,
    receiver: &Receiver,
    ids: Vec<&str>,
    deadline: Instant,
) -> Result<()> {
    while Instant::now() < deadline {
        let notified = receiver.received();
        if ids.iter().all(|id| notified.iter().any(|h| h.body["data"]["export_id"] == *id)) {
            return Ok(());
        }
        let received = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await?;
        let messages = received.messages();
        let answers = futures::future::join_all(
            messages.iter().map(|m| relay.handle(sqs_event(&[m.body().unwrap_or_default()]), Deadline::NONE)),
        )
        .await;
        let done: Vec<&Message> = messages
            .iter()
            .zip(answers)
            .filter(|(_, answer)| answer.as_ref().is_ok_and(|a| a["batchItemFailures"] == json!([])))
            .map(|(m, _)| m)
            .collect();
        queue::delete_done(sqs, queue_url, &done).await?;
    }
    Ok(())
}

/// Per export: its status requests, and how long after completion its webhook was sent.
fn report(sim: &Simulator, receiver: &Receiver, exports: &[Timed]) -> Vec<Value> {
    let seen = sim.seen();
    let hooks = receiver.received();
    exports
        .iter()
        .map(|export| {
            let path = format!("/v1/exports/{}", export.id);
            let requests = seen.iter().filter(|s| s.path == path).count();
            let hook = hooks.iter().find(|h| h.body["data"]["export_id"] == export.id.as_str());
            let sent_at = hook.and_then(|h| h.body["timestamp"].as_str()?.parse::<DateTime<Utc>>().ok());
            json!({
                "schedule": export.schedule, "shape": export.shape, "run_seconds": export.run,
                "requests": requests,
                "outcome": hook.map(|h| h.body["type"].clone()),
                "late_seconds": sent_at.map(|at| (at - export.completes_at).as_seconds_f64()),
            })
        })
        .collect()
}

/// A batch of due polls (second polls) of exports in `mix`, on a fresh organization with 150
/// older completed exports: API requests when delivered as one batch, and one record at a time.
async fn batch_case(aws: &Aws, name: &str, mix: &[(Status, usize)]) -> Result<Value> {
    let mut requests = Vec::new();
    for one_batch in [true, false] {
        let sim = Simulator::start(SimOptions::default(), "127.0.0.1:0".parse()?).await?;
        let receiver = Receiver::start(SECRET, "127.0.0.1:0".parse()?, true).await?;
        let (relay, _) = relay(aws, &sim, &receiver, "progress").await?;
        for i in 0..150 {
            let created_at = Utc::now() - chrono::Duration::minutes(120 + i);
            sim.add_export(ExportSpec {
                created_at: Some(created_at),
                ..ExportSpec::completed(vec![FileSpec::csv("a.csv.gz", i as u64, 10)])
            });
        }
        let ids: Vec<String> = mix
            .iter()
            .flat_map(|(status, n)| (0..*n).map(move |i| (*status, i)))
            .map(|(status, i)| {
                sim.add_export(ExportSpec::scripted(&[status], vec![FileSpec::csv("a.csv.gz", i as u64, 10)]))
            })
            .collect();
        let bodies: Vec<String> = ids
            .iter()
            .map(|id| json!({"export_id": id, "attempt": 2, "first_seen_at": Utc::now()}).to_string())
            .collect();
        let batches: Vec<Vec<&str>> = if one_batch {
            vec![bodies.iter().map(String::as_str).collect()]
        } else {
            bodies.iter().map(|b| vec![b.as_str()]).collect()
        };
        for batch in batches {
            relay.handle(sqs_event(&batch), Deadline::NONE).await?;
        }
        requests.push(sim.seen().iter().filter(|s| s.path.starts_with("/v1/exports")).count());
    }
    Ok(json!({"composition": name, "due_polls": mix.iter().map(|(_, n)| n).sum::<usize>(),
              "requests_batched": requests[0], "requests_one_by_one": requests[1]}))
}

/// An SQS event as Lambda delivers it.
fn sqs_event(bodies: &[&str]) -> Value {
    let records: Vec<Value> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            json!({"messageId": format!("m{i}"), "receiptHandle": format!("r{i}"), "body": body,
                   "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {}, "md5OfBody": "",
                   "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:bench",
                   "awsRegion": "us-east-1"})
        })
        .collect();
    json!({ "Records": records })
}
