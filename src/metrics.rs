//! Metrics as CloudWatch Embedded Metric Format log lines: CloudWatch turns each line into
//! metrics, so recording one costs no API call and no time on the request path.
//!
//! The format is small and stable (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>),
//! so it lives here rather than in a dependency; the tests compare against the specification.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};

pub const DEFAULT_NAMESPACE: &str = "ExportRelay";

/// Metric names, as they appear in CloudWatch, the dashboard and the alarms.
pub mod name {
    /// Count, with dimension `Outcome`: completed, requeued, failed, expired, timed_out, dlq.
    pub const EXPORTS: &str = "Exports";
    pub const BYTES_COPIED: &str = "BytesCopied";
    pub const COPY_SECONDS: &str = "CopySeconds";
    /// Polls an export needed before it completed.
    pub const POLL_ATTEMPTS: &str = "PollAttempts";
    /// From the export's `created_at` to the `export.completed` webhook delivered.
    pub const CREATED_TO_DELIVERED_SECONDS: &str = "CreatedToDeliveredSeconds";
    pub const WEBHOOK_ATTEMPTS: &str = "WebhookAttempts";
    pub const WEBHOOK_FAILURES: &str = "WebhookFailures";
    /// A delivered webhook sent again because an operator asked for it.
    pub const WEBHOOK_REPLAYS: &str = "WebhookReplays";
    pub const API_RATE_LIMITED: &str = "ApiRateLimited";
    /// Count, with dimension `Code`: records reported as failed for SQS to deliver again.
    pub const RECORD_FAILURES: &str = "RecordFailures";
    /// A download that broke off and went on from the first byte not received.
    pub const DOWNLOAD_RESUMES: &str = "DownloadResumes";
    /// A download started again from byte 0: the host ignored a range, the object changed, or
    /// the bytes were not what the host stored.
    pub const DOWNLOAD_RESTARTS: &str = "DownloadRestarts";
    pub const API_RATE_REMAINING: &str = "ApiRateLimitRemaining";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Bytes,
    Seconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Bytes => "Bytes",
            Self::Seconds => "Seconds",
        }
    }
}

/// Where EMF lines go: stdout in Lambda (through `println!`, which tests capture), or a
/// buffer a test reads.
#[derive(Clone)]
enum Sink {
    Stdout,
    Buffer(Arc<Mutex<Vec<u8>>>),
}

/// Writes EMF lines under one namespace, to stdout in Lambda.
#[derive(Clone)]
pub struct Metrics {
    namespace: String,
    sink: Sink,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("namespace", &self.namespace).finish()
    }
}

impl Metrics {
    pub fn stdout(namespace: &str) -> Self {
        Self { namespace: namespace.to_string(), sink: Sink::Stdout }
    }

    /// Writes to `buffer` instead, for tests.
    pub fn to(namespace: &str, buffer: Arc<Mutex<Vec<u8>>>) -> Self {
        Self { namespace: namespace.to_string(), sink: Sink::Buffer(buffer) }
    }

    pub fn outcome(&self, outcome: &str) {
        self.emit(&[("Outcome", outcome)], &[(name::EXPORTS, 1.0, Unit::Count)]);
    }

    pub fn file_copied(&self, bytes: u64, seconds: f64) {
        self.emit(
            &[],
            &[(name::BYTES_COPIED, bytes as f64, Unit::Bytes), (name::COPY_SECONDS, seconds, Unit::Seconds)],
        );
    }

    pub fn record_failed(&self, code: &str) {
        self.emit(&[("Code", code)], &[(name::RECORD_FAILURES, 1.0, Unit::Count)]);
    }

    pub fn download_resumed(&self) {
        self.emit(&[], &[(name::DOWNLOAD_RESUMES, 1.0, Unit::Count)]);
    }

    pub fn download_restarted(&self) {
        self.emit(&[], &[(name::DOWNLOAD_RESTARTS, 1.0, Unit::Count)]);
    }

    pub fn completed(&self, poll_attempts: u32, created_to_delivered: Option<f64>) {
        let mut values = vec![(name::POLL_ATTEMPTS, f64::from(poll_attempts), Unit::Count)];
        values.extend(created_to_delivered.map(|s| (name::CREATED_TO_DELIVERED_SECONDS, s, Unit::Seconds)));
        self.emit(&[], &values);
    }

    pub fn webhook(&self, attempts: usize, failed: bool) {
        self.emit(
            &[],
            &[
                (name::WEBHOOK_ATTEMPTS, attempts as f64, Unit::Count),
                (name::WEBHOOK_FAILURES, f64::from(u8::from(failed)), Unit::Count),
            ],
        );
    }

    pub fn replayed(&self) {
        self.emit(&[], &[(name::WEBHOOK_REPLAYS, 1.0, Unit::Count)]);
    }

    pub fn api_answer(&self, rate_limited: usize, remaining: Option<u64>) {
        let mut values = vec![(name::API_RATE_LIMITED, rate_limited as f64, Unit::Count)];
        values.extend(remaining.map(|r| (name::API_RATE_REMAINING, r as f64, Unit::Count)));
        self.emit(&[], &values);
    }

    fn emit(&self, dimensions: &[(&str, &str)], values: &[(&str, f64, Unit)]) {
        let line = document(&self.namespace, chrono::Utc::now().timestamp_millis(), dimensions, values);
        match &self.sink {
            Sink::Stdout => println!("{line}"),
            Sink::Buffer(buffer) => {
                let mut buffer = buffer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let _ = writeln!(buffer, "{line}");
            }
        }
    }
}

/// One EMF document: the `_aws` metadata, then each dimension and value as a top-level member.
fn document(
    namespace: &str,
    timestamp_ms: i64,
    dimensions: &[(&str, &str)],
    values: &[(&str, f64, Unit)],
) -> Value {
    let names: Vec<&str> = dimensions.iter().map(|(k, _)| *k).collect();
    let definitions: Vec<Value> =
        values.iter().map(|(n, _, unit)| json!({"Name": n, "Unit": unit.as_str()})).collect();
    let mut root = Map::new();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{"Namespace": namespace, "Dimensions": [names], "Metrics": definitions}],
        }),
    );
    for (key, value) in dimensions {
        root.insert((*key).into(), json!(value));
    }
    for (key, value, _) in values {
        root.insert((*key).into(), json!(value));
    }
    Value::Object(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example document from the EMF specification, with its values.
    const SPEC_EXAMPLE: &str = r#"{
      "_aws": {
        "Timestamp": 1574109732004,
        "CloudWatchMetrics": [
          {
            "Namespace": "lambda-function-metrics",
            "Dimensions": [["functionVersion"]],
            "Metrics": [{"Name": "time", "Unit": "Milliseconds"}]
          }
        ]
      },
      "functionVersion": "$LATEST",
      "time": 100
    }"#;

    #[test]
    fn documents_have_the_shape_of_the_specification_example() {
        let spec: Value = serde_json::from_str(SPEC_EXAMPLE).unwrap();
        let ours = document(
            "lambda-function-metrics",
            1574109732004,
            &[("functionVersion", "$LATEST")],
            &[("time", 100.0, Unit::Count)],
        );
        assert_eq!(ours["_aws"]["Timestamp"], spec["_aws"]["Timestamp"]);
        let (a, b) = (&ours["_aws"]["CloudWatchMetrics"][0], &spec["_aws"]["CloudWatchMetrics"][0]);
        assert_eq!(a["Namespace"], b["Namespace"]);
        assert_eq!(a["Dimensions"], b["Dimensions"]);
        assert_eq!(a["Metrics"][0]["Name"], b["Metrics"][0]["Name"]);
        assert_eq!(ours["functionVersion"], spec["functionVersion"]);
        assert_eq!(ours["time"].as_f64(), spec["time"].as_f64());
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&ours), keys(&spec));
    }

    #[test]
    fn each_record_is_one_json_line_naming_its_metrics() {
        let buffer: Arc<Mutex<Vec<u8>>> = Arc::default();
        let metrics = Metrics::to("Test", buffer.clone());
        metrics.outcome("completed");
        metrics.file_copied(1024, 0.5);
        metrics.webhook(2, false);
        metrics.replayed();
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["Outcome"], "completed");
        assert_eq!(lines[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["Outcome"]]));
        assert_eq!(lines[1]["BytesCopied"], 1024.0);
        assert_eq!(lines[1]["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([[]]));
        assert_eq!(lines[2]["WebhookFailures"], 0.0);
        assert_eq!(lines[3]["WebhookReplays"], 1.0);
    }
}
