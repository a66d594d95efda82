//! The world a test relays in: moto's S3 and SQS (reached through the real AWS SDK), the
//! DealMachine simulator with its file host, and a webhook receiver, all on loopback.
#![allow(dead_code)] // Shared by several test binaries, each using part of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use dealmachine_sim::{ExportSpec, FileSpec, Receiver, SimOptions, Simulator};
use export_relay::config::{Config, RetryPolicy};
use export_relay::handler::Relay;
use export_relay::metrics::Metrics;
use export_relay::startup;
use export_relay::transfer::Deadline;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const PART: usize = 5 * 1024 * 1024;

pub struct TestApp {
    pub relay: Relay,
    pub config: Config,
    pub sim: Simulator,
    pub receiver: Receiver,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub bucket: String,
    pub queue_url: String,
    pub dlq_url: String,
    /// The relay's settings as environment variables, for running the real binary.
    pub env: Vec<(&'static str, String)>,
    /// The relay's metric lines (EMF), as CloudWatch would get them.
    pub metrics: Arc<Mutex<Vec<u8>>>,
}

/// Settings a test may change before the relay is built.
#[derive(Default)]
pub struct Setup {
    pub env: Vec<(&'static str, String)>,
    pub sim: SimOptions,
}

impl Setup {
    /// Polls a minute apart: a requeued record is still delayed when the test looks at the
    /// queue, however slow the machine (the default 2 s can pass during a few moto calls).
    pub fn slow_polls() -> Self {
        Self { env: vec![("POLL_INITIAL_DELAY_SECONDS", "60".into())], ..Default::default() }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Setup::default()).await
}

pub async fn spawn_app_with(setup: Setup) -> TestApp {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").expect(
        "AWS_ENDPOINT_URL is not set: the integration tests need moto's server; run them with `make test`",
    );
    let loopback = "127.0.0.1:0".parse().unwrap();
    let sim = Simulator::start(setup.sim, loopback).await.unwrap();
    let receiver = Receiver::start(WEBHOOK_SECRET, loopback, true).await.unwrap();
    let aws = startup::aws_config().await;
    let s3 = test_s3_client(&aws);
    let sqs = aws_sdk_sqs::Client::new(&aws);

    let name = format!("relay-{}", uuid::Uuid::new_v4().simple());
    s3.create_bucket().bucket(&name).send().await.expect("create bucket in moto");
    let queue_url = create_queue(&sqs, &name).await;
    let dlq_url = create_queue(&sqs, &format!("{name}-dlq")).await;

    let mut env = vec![
        ("DEALMACHINE_API_KEY", sim.api_key().to_string()),
        ("DEALMACHINE_API_URL", sim.api_url()),
        ("DESTINATION_BUCKET", name.clone()),
        ("QUEUE_URL", queue_url.clone()),
        ("DEAD_LETTER_QUEUE_URL", dlq_url.clone()),
        ("WEBHOOK_URL", receiver.url()),
        ("WEBHOOK_SECRET", WEBHOOK_SECRET.to_string()),
        ("DOWNLOAD_HOSTS", "127.0.0.1".to_string()),
        ("ALLOW_INSECURE_HTTP", "true".to_string()),
        ("S3_FORCE_PATH_STYLE", "true".to_string()),
        ("PART_SIZE_MIB", "5".to_string()),
        ("POLL_INITIAL_DELAY_SECONDS", "2".to_string()),
        ("AWS_ENDPOINT_URL", endpoint),
    ];
    env.retain(|(k, _)| !setup.env.iter().any(|(o, _)| o == k));
    env.extend(setup.env);
    let mut config =
        Config::from_pairs(env.iter().map(|(k, v)| (*k, v.as_str()))).expect("test settings are valid");
    // The same schedule as in production, made fast.
    config.api_retry =
        RetryPolicy { retries: 3, first_delay: Duration::from_millis(20), max_delay: Duration::from_secs(2) };
    if let Some(webhook) = config.webhook.as_mut() {
        webhook.retry = RetryPolicy {
            retries: 2,
            first_delay: Duration::from_millis(20),
            max_delay: Duration::from_secs(1),
        };
    }
    let metrics = Arc::new(Mutex::new(Vec::new()));
    let relay =
        startup::build_relay_with(&config, &aws, Metrics::to(&config.metrics_namespace, metrics.clone()))
            .unwrap();
    TestApp { relay, config, sim, receiver, s3, sqs, bucket: name, queue_url, dlq_url, env, metrics }
}

/// The tests' own S3 client. It does not check response checksums: moto reports a CRC32 where
/// a CRC64NVME was asked for, while the tests compare SHA-256 of what they read anyway.
pub fn test_s3_client(aws: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(aws)
        .force_path_style(true)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> String {
    sqs.create_queue().queue_name(name).send().await.expect("create queue in moto").queue_url.unwrap()
}

/// An SQS event as Lambda delivers it, with message IDs `m0`, `m1`, ...
pub fn sqs_event(bodies: &[&str]) -> Value {
    let records: Vec<Value> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            json!({
                "messageId": format!("m{i}"), "receiptHandle": "rh", "body": body,
                "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
                "md5OfBody": "", "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:relay", "awsRegion": "us-east-1"
            })
        })
        .collect();
    json!({ "Records": records })
}

/// A sent message as read back from a queue.
#[derive(Debug)]
pub struct QueuedMessage {
    pub body: Value,
    pub raw: String,
    /// Message attributes, as strings.
    pub attributes: HashMap<String, String>,
    /// SQS's own attributes, such as `ApproximateReceiveCount`.
    pub system: HashMap<String, String>,
    pub message_id: String,
    pub receipt_handle: String,
}

impl QueuedMessage {
    /// The record Lambda's SQS poller makes of this message.
    pub fn lambda_record(&self, queue_arn: &str) -> Value {
        let attributes: serde_json::Map<String, Value> = self
            .attributes
            .iter()
            .map(|(name, value)| {
                let attribute = json!({"stringValue": value, "stringListValues": [], "binaryListValues": [],
                                       "dataType": "String"});
                (name.clone(), attribute)
            })
            .collect();
        json!({
            "messageId": self.message_id, "receiptHandle": self.receipt_handle, "body": self.raw,
            "attributes": self.system, "messageAttributes": attributes, "md5OfBody": "",
            "eventSource": "aws:sqs", "eventSourceARN": queue_arn, "awsRegion": "us-east-1"
        })
    }
}

impl TestApp {
    pub fn completed(&self, files: Vec<FileSpec>) -> String {
        self.sim.add_export(ExportSpec::completed(files))
    }

    /// Feeds the relay an SQS batch and returns the IDs it reported as failed.
    pub async fn deliver(&self, bodies: &[&str]) -> Vec<String> {
        self.deliver_by(bodies, Deadline::NONE).await
    }

    /// Feeds a batch to an invocation that must end by `deadline`.
    pub async fn deliver_by(&self, bodies: &[&str], deadline: Deadline) -> Vec<String> {
        let response = self
            .relay
            .handle(sqs_event(bodies), deadline)
            .await
            .expect("an SQS batch always gets a response");
        response["batchItemFailures"]
            .as_array()
            .expect("batchItemFailures")
            .iter()
            .map(|f| f["itemIdentifier"].as_str().unwrap().to_string())
            .collect()
    }

    pub async fn invoke(&self, event: Value) -> Value {
        self.relay.handle(event, Deadline::NONE).await.expect("invocation succeeds")
    }

    /// The relay's ledger in the test's bucket, read and written directly.
    pub fn ledger(&self) -> export_relay::manifest::Ledger {
        export_relay::manifest::Ledger::new(self.s3.clone(), self.bucket.clone(), self.config.prefix.clone())
    }

    pub async fn object(
        &self,
        key: &str,
    ) -> Option<(Vec<u8>, aws_sdk_s3::operation::get_object::GetObjectOutput)> {
        let mut output = self.s3.get_object().bucket(&self.bucket).key(key).send().await.ok()?;
        let body = std::mem::replace(&mut output.body, ByteStream::from_static(b""));
        Some((body.collect().await.unwrap().to_vec(), output))
    }

    /// The exports' files in the bucket, without the ledger: manifests and the dot-named
    /// objects beside them (no file's key starts with a dot).
    pub async fn file_keys(&self) -> Vec<String> {
        let mut keys = self.keys().await;
        keys.retain(|k| {
            let in_export =
                k.strip_prefix(&self.config.prefix).and_then(|k| k.split_once('/')).map(|(_, r)| r);
            in_export.is_some_and(|rest| rest != "manifest.json" && !rest.starts_with('.'))
        });
        keys
    }

    /// Every key in the bucket, sorted.
    pub async fn keys(&self) -> Vec<String> {
        let listed = self.s3.list_objects_v2().bucket(&self.bucket).send().await.unwrap();
        listed.contents().iter().filter_map(|o| o.key.clone()).collect()
    }

    pub async fn pending_uploads(&self) -> usize {
        let listed = self.s3.list_multipart_uploads().bucket(&self.bucket).send().await.unwrap();
        listed.uploads().len()
    }

    /// The sum of one metric over every line the relay wrote, as CloudWatch's `Sum` would be.
    pub fn metric_sum(&self, name: &str) -> f64 {
        let lines = String::from_utf8(self.metrics.lock().unwrap().clone()).unwrap();
        lines
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter_map(|doc| doc[name].as_f64())
            .sum()
    }

    /// The webhooks delivered (answered 2xx), by type.
    pub fn delivered_types(&self) -> Vec<String> {
        let hooks = self.webhooks();
        let delivered = hooks.iter().filter(|h| (200..300).contains(&h.answered));
        delivered.map(|h| h.body["type"].as_str().unwrap().to_string()).collect()
    }

    /// Every webhook received so far, each checked against the published JSON Schema and its
    /// strict copy.
    pub fn webhooks(&self) -> Vec<dealmachine_sim::Received> {
        let received = self.receiver.received();
        for hook in &received {
            assert_valid_event(&hook.body);
        }
        received
    }

    /// Reads and parses an export's committed manifest.
    pub async fn manifest(&self, export_id: &str) -> Option<Value> {
        let (bytes, _) = self.object(&self.key(export_id, "manifest.json")).await?;
        Some(serde_json::from_slice(&bytes).expect("the manifest is JSON"))
    }

    /// Asserts that no file and no manifest is in the bucket (delivery markers may be), and no
    /// upload is left open.
    pub async fn assert_no_files(&self) {
        assert_eq!(self.file_keys().await, Vec::<String>::new(), "no file");
        assert!(self.keys().await.iter().all(|k| !k.ends_with("/manifest.json")), "no manifest");
        assert_eq!(self.pending_uploads().await, 0, "no multipart upload left open");
    }

    /// Asserts that nothing of the export is in the bucket but its poll chain (the ledger's
    /// mark that a record has the export in hand, opened at its first receipt), and no upload
    /// is left open.
    pub async fn assert_nothing_stored(&self) {
        let mut keys = self.keys().await;
        keys.retain(|k| !k.ends_with("/.chain.json"));
        assert_eq!(keys, Vec::<String>::new(), "no object");
        assert_eq!(self.pending_uploads().await, 0, "no multipart upload left open");
    }

    pub fn key(&self, export_id: &str, filename: &str) -> String {
        format!("{}{export_id}/{filename}", self.config.prefix)
    }

    /// Messages waiting on `queue_url`, waiting up to `wait` for the first.
    pub async fn receive(&self, queue_url: &str, wait: Duration) -> Vec<QueuedMessage> {
        let output = self
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait.as_secs() as i32)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        output
            .messages()
            .iter()
            .map(|m| {
                let raw = m.body().unwrap_or_default().to_string();
                QueuedMessage {
                    body: serde_json::from_str(&raw).unwrap_or(Value::Null),
                    attributes: m
                        .message_attributes()
                        .map(|a| {
                            a.iter()
                                .map(|(k, v)| (k.clone(), v.string_value().unwrap_or_default().to_string()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    system: m
                        .attributes()
                        .map(|a| a.iter().map(|(k, v)| (k.as_str().to_string(), v.clone())).collect())
                        .unwrap_or_default(),
                    message_id: m.message_id().unwrap_or_default().to_string(),
                    receipt_handle: m.receipt_handle().unwrap_or_default().to_string(),
                    raw,
                }
            })
            .collect()
    }

    /// Sends `body` to a queue, with string message attributes.
    pub async fn send(&self, queue_url: &str, body: &str, attributes: &HashMap<String, String>) {
        let mut send = self.sqs.send_message().queue_url(queue_url).message_body(body);
        for (name, value) in attributes {
            let value =
                MessageAttributeValue::builder().data_type("String").string_value(value).build().unwrap();
            send = send.message_attributes(name, value);
        }
        send.send().await.expect("send to moto");
    }

    pub async fn delete(&self, queue_url: &str, message: &QueuedMessage) {
        let delete = self.sqs.delete_message().queue_url(queue_url).receipt_handle(&message.receipt_handle);
        delete.send().await.expect("delete from moto");
    }

    pub async fn set_queue_attribute(&self, queue_url: &str, name: QueueAttributeName, value: &str) {
        let set = self.sqs.set_queue_attributes().queue_url(queue_url).attributes(name, value);
        set.send().await.expect("set queue attributes in moto");
    }

    async fn queue_attribute(&self, queue_url: &str, name: QueueAttributeName) -> String {
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(name.clone())
            .send()
            .await
            .unwrap();
        attrs.attributes().and_then(|a| a.get(&name)).cloned().unwrap_or_default()
    }

    pub async fn queue_arn(&self, queue_url: &str) -> String {
        self.queue_attribute(queue_url, QueueAttributeName::QueueArn).await
    }

    /// Messages on a queue: visible, and received but not yet visible again (in flight or
    /// waiting out a retry).
    pub async fn queue_depth(&self, queue_url: &str) -> (u64, u64) {
        let count = |name| async move { self.queue_attribute(queue_url, name).await.parse::<u64>().unwrap() };
        (
            count(QueueAttributeName::ApproximateNumberOfMessages).await,
            count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible).await,
        )
    }

    /// Does once what Lambda's SQS poller does: receives a batch from the relay queue, invokes
    /// the relay with it, and deletes the records it did not report as failed. Returns what was
    /// received, waiting up to `wait` for it.
    pub async fn poll(&self, wait: Duration) -> Vec<QueuedMessage> {
        self.poll_with(&self.relay, wait, |_| {}).await
    }

    /// `poll` with another relay, and the event edited before it is handed over.
    pub async fn poll_with(
        &self,
        relay: &Relay,
        wait: Duration,
        edit: impl FnOnce(&mut Value),
    ) -> Vec<QueuedMessage> {
        let messages = self.receive(&self.queue_url, wait).await;
        if messages.is_empty() {
            return messages;
        }
        let arn = self.queue_arn(&self.queue_url).await;
        let mut event =
            json!({"Records": messages.iter().map(|m| m.lambda_record(&arn)).collect::<Vec<_>>()});
        edit(&mut event);
        let response =
            relay.handle(event, Deadline::NONE).await.expect("an SQS batch always gets a response");
        let failed: Vec<&str> = response["batchItemFailures"]
            .as_array()
            .expect("batchItemFailures")
            .iter()
            .map(|f| f["itemIdentifier"].as_str().unwrap())
            .collect();
        for message in messages.iter().filter(|m| !failed.contains(&m.message_id.as_str())) {
            self.delete(&self.queue_url, message).await;
        }
        messages
    }

    /// Polls until a batch arrives, for at most `within`.
    pub async fn poll_until(&self, within: Duration) -> Option<Vec<QueuedMessage>> {
        let started = Instant::now();
        while started.elapsed() < within {
            let messages = self.poll(Duration::from_secs(1)).await;
            if !messages.is_empty() {
                return Some(messages);
            }
        }
        None
    }

    pub async fn delayed_count(&self) -> u64 {
        let delayed = QueueAttributeName::ApproximateNumberOfMessagesDelayed;
        self.queue_attribute(&self.queue_url, delayed).await.parse().unwrap()
    }
}

/// The published schema, `schemas/webhook-event.schema.json`.
pub fn published_schema() -> Value {
    serde_json::from_str(include_str!("../../schemas/webhook-event.schema.json")).unwrap()
}

/// The strict copy the tests hold the relay to: the published schema with unknown fields
/// refused everywhere, so it checks exactly what is sent. Derived, so the two never drift.
pub fn strict_schema() -> Value {
    fn close(schema: &mut Value) {
        match schema {
            Value::Object(map) => {
                if map.contains_key("properties") {
                    map.insert("additionalProperties".into(), Value::Bool(false));
                }
                map.values_mut().for_each(close);
            }
            Value::Array(items) => items.iter_mut().for_each(close),
            _ => {}
        }
    }
    let mut schema = published_schema();
    close(&mut schema);
    schema
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::options().should_validate_formats(true).build(schema).expect("the schema is valid")
}

/// The schema's complaints about `body`, if any.
pub fn schema_errors(schema: &jsonschema::Validator, body: &Value) -> Vec<String> {
    schema.iter_errors(body).map(|e| format!("{} at {}", e, e.instance_path())).collect()
}

pub static PUBLISHED: std::sync::LazyLock<jsonschema::Validator> =
    std::sync::LazyLock::new(|| validator(&published_schema()));
pub static STRICT: std::sync::LazyLock<jsonschema::Validator> =
    std::sync::LazyLock::new(|| validator(&strict_schema()));

/// Fails the test unless `body` matches the published schema and its strict copy.
pub fn assert_valid_event(body: &Value) {
    for (name, schema) in [("published", &*PUBLISHED), ("strict", &*STRICT)] {
        let errors = schema_errors(schema, body);
        assert!(errors.is_empty(), "webhook body does not match the {name} schema: {errors:#?}\n{body:#}");
    }
}

/// Runs one of `tests/consumer/`'s scripts with the virtualenv's Python (`make venv` installs
/// what they use), `stdin` fed in; whether it succeeded, and what it printed.
pub fn consumer_script(script: &str, stdin: &str) -> (bool, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let root = env!("CARGO_MANIFEST_DIR");
    let python = std::env::var("CONSUMER_PYTHON").unwrap_or_else(|_| format!("{root}/.venv/bin/python3"));
    let mut child = Command::new(&python)
        .arg(format!("{root}/tests/consumer/{script}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python} runs ({e}); run `make venv`"));
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stdout).trim().to_string())
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}
