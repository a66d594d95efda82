//! `make demo`: the whole relay on one machine, fed the way AWS would feed it.
//!
//! moto (started by `scripts/with-moto.sh`) stands in for S3 and SQS, the simulator for
//! DealMachine, and `cargo lambda watch --only-lambda-apis` for the Lambda service, running the
//! real `bootstrap` binary. This program creates exports, puts their IDs on the queue, and
//! delivers the queue's messages to the function as SQS events until every export is done.

use std::error::Error;
use std::fs::File;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use dealmachine_sim::{LocalLambda, Receiver, Shape, SimOptions, Simulator};
use export_relay::startup;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[path = "shared/queue.rs"]
mod queue;

const SECRET: &str = "whsec_ZGVtby1zZWNyZXQtZm9yLWV4cG9ydC1yZWxheS0xMjM0NTY=";
const DEADLINE: Duration = Duration::from_secs(120);

type Result<T> = std::result::Result<T, Box<dyn Error>>;

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let mut step = Step(0);
    if let Err(e) = run(&mut step, started).await {
        eprintln!("\ndemo FAILED at step {} ({}): {e}", step.0, step.name());
        std::process::exit(1);
    }
}

struct Step(usize);

impl Step {
    const NAMES: [&'static str; 5] = [
        "create the bucket and queues in moto",
        "start the DealMachine simulator and the webhook receiver",
        "start the Runtime API emulator and the Lambda binary",
        "create exports and deliver the queue to the function",
        "report",
    ];

    fn next(&mut self) {
        self.0 += 1;
        println!("[{}/5] {}", self.0, self.name());
    }

    fn name(&self) -> &'static str {
        Self::NAMES[self.0.saturating_sub(1)]
    }
}

async fn run(step: &mut Step, started: Instant) -> Result<()> {
    step.next();
    let aws = startup::aws_config().await;
    let s3 =
        aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&aws).force_path_style(true).build());
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let bucket = "export-relay-demo";
    s3.create_bucket().bucket(bucket).send().await?;
    let queue_url =
        sqs.create_queue().queue_name("export-relay-demo").send().await?.queue_url.unwrap_or_default();
    let dlq_url =
        sqs.create_queue().queue_name("export-relay-demo-dlq").send().await?.queue_url.unwrap_or_default();

    step.next();
    let options = SimOptions {
        pending_for: Duration::from_secs(2),
        processing_for: Duration::from_secs(5),
        // One export of each: progress the relay can time its polls by, and two it cannot.
        shapes: vec![Shape::Steady, Shape::StuckThenFast, Shape::Jumping],
        rows_per_file: 20_000,
        files_per_export: 2,
        // Each export's first file breaks off once, to show the relay resuming it.
        cut_first_download_after: Some(300_000),
        ..SimOptions::default()
    };
    let sim = Simulator::start(options, "127.0.0.1:0".parse()?).await?;
    let receiver = Receiver::start(SECRET, "127.0.0.1:0".parse()?, false).await?;

    step.next();
    std::fs::create_dir_all(".local")?;
    let log = ".local/demo-function.log";
    let binary = std::env::var("RELAY_BINARY").unwrap_or_else(|_| "target/debug/bootstrap".into());
    let env = [
        ("DEALMACHINE_API_KEY", sim.api_key().to_string()),
        ("DEALMACHINE_API_URL", sim.api_url()),
        ("DESTINATION_BUCKET", bucket.to_string()),
        ("QUEUE_URL", queue_url.clone()),
        ("DEAD_LETTER_QUEUE_URL", dlq_url),
        ("WEBHOOK_URL", receiver.url()),
        ("WEBHOOK_SECRET", SECRET.to_string()),
        ("DOWNLOAD_HOSTS", "127.0.0.1".to_string()),
        ("ALLOW_INSECURE_HTTP", "true".to_string()),
        ("S3_FORCE_PATH_STYLE", "true".to_string()),
        ("POLL_INITIAL_DELAY_SECONDS", "1".to_string()),
        ("POLL_MAX_DELAY_SECONDS", "2".to_string()),
    ];
    let (stdout, stderr) = (File::create(log)?, File::create(format!("{log}.err"))?);
    let mut lambda = LocalLambda::start(binary.as_ref(), &env, stdout.into(), stderr.into()).await?;
    println!("      function logs: {log}");

    step.next();
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for kind in ["properties", "people", "properties"] {
        let created: Value = http
            .post(format!("{}/{kind}/export", sim.api_url()))
            .bearer_auth(sim.api_key())
            .send()
            .await?
            .json()
            .await?;
        let id = created["data"]["export_id"]
            .as_str()
            .ok_or("the simulator did not return an export_id")?
            .to_string();
        sqs.send_message()
            .queue_url(&queue_url)
            .message_body(json!({"export_id": id, "metadata": {"source": "demo"}}).to_string())
            .send()
            .await?;
        println!("      created {kind} export {id} and put it on the queue");
        ids.push(id);
    }
    let mut invocations = 0;
    while receiver.received().len() < ids.len() {
        if started.elapsed() > DEADLINE {
            return Err(format!("not every export finished within {} s", DEADLINE.as_secs()).into());
        }
        if let Some(status) = lambda.exited() {
            return Err(format!("the function exited ({status}); see {log}.err").into());
        }
        invocations += deliver_once(&sqs, &lambda, &queue_url).await?;
    }

    step.next();
    report(&sim, &receiver, &s3, bucket, &ids, invocations, started).await
}

/// Receives what is visible on the queue and invokes the function with it, as Lambda's SQS
/// poller does: records the function does not report as failed are deleted.
async fn deliver_once(sqs: &aws_sdk_sqs::Client, lambda: &LocalLambda, queue_url: &str) -> Result<usize> {
    let received = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await?;
    let messages = received.messages();
    if messages.is_empty() {
        return Ok(0);
    }
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            json!({
                "messageId": m.message_id(), "receiptHandle": m.receipt_handle(), "body": m.body(),
                "attributes": m.attributes().map(|a| a.iter().map(|(k, v)| (k.as_str().to_string(), Value::from(v.as_str()))).collect::<serde_json::Map<_, _>>()),
                "messageAttributes": {}, "md5OfBody": m.md5_of_body(), "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:export-relay-demo", "awsRegion": "us-east-1"
            })
        })
        .collect();
    let response = lambda.invoke(&json!({ "Records": records })).await?;
    let failed: Vec<&str> = response["batchItemFailures"]
        .as_array()
        .ok_or_else(|| format!("the function answered without batchItemFailures: {response}"))?
        .iter()
        .filter_map(|f| f["itemIdentifier"].as_str())
        .collect();
    let done: Vec<&Message> =
        messages.iter().filter(|m| !failed.contains(&m.message_id().unwrap_or_default())).collect();
    println!(
        "      invoked the function with {} record(s): {} done, {} to retry",
        messages.len(),
        done.len(),
        failed.len()
    );
    queue::delete_done(sqs, queue_url, &done).await?;
    Ok(1)
}

async fn report(
    sim: &Simulator,
    receiver: &Receiver,
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    ids: &[String],
    invocations: usize,
    started: Instant,
) -> Result<()> {
    println!("\nExports, as the API reported them");
    for id in ids {
        let history = sim.history(id);
        let first = history.first().map(|(_, at)| *at);
        let path: Vec<String> = history
            .iter()
            .map(|(status, at)| {
                format!("{} (+{:.1}s)", status.as_str(), (*at - first.unwrap_or(*at)).as_seconds_f64())
            })
            .collect();
        let polls = sim.seen_matching(&format!("/v1/exports/{id}")).len();
        println!("  {id}: {}  ({polls} × GET /exports/{{id}})", path.join(" -> "));
    }
    println!("\nDownloads, as the file host saw them");
    for get in sim.seen_matching("/files/") {
        let asked =
            get.header("range").map_or("whole file".to_string(), |r| format!("Range: {r} (a resume)"));
        println!("  {}  {asked}  -> {}", get.path, get.status);
    }
    let pages = sim.seen().iter().filter(|s| s.path == "/v1/exports").count();
    println!("  and {pages} list pages answering for a batch's due polls at once");
    println!("\nObjects in s3://{bucket}");
    let listed = s3.list_objects_v2().bucket(bucket).send().await?;
    for object in listed.contents() {
        let key = object.key().unwrap_or_default();
        let bytes = s3.get_object().bucket(bucket).key(key).send().await?.body.collect().await?.into_bytes();
        let sha = format!("{:x}", Sha256::digest(&bytes));
        println!("  {key}  {:>9} bytes  sha256 {}", bytes.len(), &sha[..16]);
    }
    println!("\nWebhooks received");
    for hook in receiver.received() {
        println!(
            "  {} {}  files={}  signature {}",
            hook.body["type"].as_str().unwrap_or("?"),
            hook.body["data"]["export_id"].as_str().unwrap_or("?"),
            hook.body["data"]["files"].as_array().map_or(0, Vec::len),
            if hook.verified { "verified" } else { "INVALID" }
        );
    }
    if receiver.received().iter().any(|h| !h.verified) {
        return Err("a webhook signature did not verify".into());
    }
    println!(
        "\n{} exports relayed in {invocations} invocations, {:.1} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
