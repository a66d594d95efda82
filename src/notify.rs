//! The webhook: one signed POST per export outcome, by the Standard Webhooks specification
//! (<https://www.standardwebhooks.com>), so consumers verify it with their usual libraries.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use reqwest::{StatusCode, header, redirect};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;
use url::Url;

use crate::config::{RetryPolicy, WebhookConfig};
use crate::http;

/// The spec asks for keys of 24 to 64 bytes.
const MIN_KEY_BYTES: usize = 24;
/// How much of a receiver's error body is kept for the log.
const MAX_ERROR_BODY: usize = 1024;

/// The `whsec_` secrets the webhook is signed with. Several, during a rotation.
#[derive(Clone)]
pub struct SigningKeys(Vec<Vec<u8>>);

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKeys(<{} redacted>)", self.0.len())
    }
}

impl SigningKeys {
    /// Parses `whsec_<base64>` secrets separated by spaces. The error never repeats a secret.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let keys = raw
            .split_whitespace()
            .enumerate()
            .map(|(i, secret)| {
                let encoded = secret
                    .strip_prefix("whsec_")
                    .ok_or_else(|| format!("secret {} does not start with whsec_", i + 1))?;
                let key = BASE64
                    .decode(encoded)
                    .map_err(|_| format!("secret {} is not whsec_ followed by base64", i + 1))?;
                if key.len() < MIN_KEY_BYTES {
                    return Err(format!(
                        "secret {} decodes to {} bytes; at least {MIN_KEY_BYTES} are needed",
                        i + 1,
                        key.len()
                    ));
                }
                Ok(key)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err("no secret given".into());
        }
        Ok(Self(keys))
    }

    /// The `webhook-signature` header: `v1,<base64>` for each key, separated by spaces.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        self.0
            .iter()
            .map(|key| {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
                mac.update(format!("{id}.{timestamp}.").as_bytes());
                mac.update(body);
                format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The version of the body's shape, in the schema's `$id` and every body's `schema_version`.
/// Fields may be added within a type without a new version's meaning changing for a consumer
/// that ignores what it does not know; a breaking change is a new event type (README).
pub const SCHEMA_VERSION: &str = "1.0";
/// Above this, a completed event's presigned links are dropped and `links_omitted` is set: the
/// files are then found through `data.manifest`. Keeps bodies under receivers' usual limits.
pub const MAX_BODY_WITH_LINKS: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "export.completed")]
    Completed,
    #[serde(rename = "export.failed")]
    Failed,
    #[serde(rename = "export.expired")]
    Expired,
    #[serde(rename = "export.timed_out")]
    TimedOut,
}

impl EventType {
    pub const ALL: [Self; 4] = [Self::Completed, Self::Failed, Self::Expired, Self::TimedOut];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "export.completed",
            Self::Failed => "export.failed",
            Self::Expired => "export.expired",
            Self::TimedOut => "export.timed_out",
        }
    }

    /// Stable across retries, redeliveries and replays, so consumers can drop duplicates.
    pub fn webhook_id(self, export_id: &str) -> String {
        format!("{}_{export_id}", self.as_str().replace('.', "_"))
    }
}

/// A webhook body: `{"type", "timestamp", "schema_version", "data"}`. Rendered once per export
/// and type, stored in the ledger's outbox, and sent as those bytes on every try.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When the outcome happened: for `export.completed`, when the manifest was committed.
    pub timestamp: String,
    pub schema_version: &'static str,
    pub data: EventData,
}

/// What every event tells about the export, as the API showed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportFields {
    pub export_id: String,
    pub name: Option<String>,
    pub status: Option<String>,
    pub record_count: Option<u64>,
    pub file_size: Option<u64>,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Upstream's correlation data, as the first record that carried it had it.
    pub metadata: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventData {
    #[serde(flatten)]
    pub export: ExportFields,
    #[serde(flatten)]
    pub outcome: OutcomeData,
}

/// What only one kind of event carries: files for `export.completed`, an error for the rest.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum OutcomeData {
    Completed(CompletedData),
    Failure { error: ErrorInfo },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompletedData {
    pub manifest: ObjectRef,
    pub files: Vec<FileRef>,
    /// True when the presigned links were left out to keep the body small.
    pub links_omitted: bool,
    /// False when a check (the record count) did not match.
    pub verified: bool,
    pub verification_error: Option<String>,
}

/// Where an object is in S3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub bucket: String,
    pub key: String,
    pub region: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub filename: String,
    pub bucket: String,
    pub key: String,
    pub region: Option<String>,
    /// The S3 version the relay wrote, when the bucket is versioned.
    pub version_id: Option<String>,
    pub size: u64,
    pub sha256: String,
    /// CSV data rows, for `.csv` and `.csv.gz` files; null for others, as in the manifest.
    pub rows: Option<u64>,
    /// A presigned GET URL, when `PRESIGN_TTL_SECONDS` is set. Its lifetime starts when the
    /// event is rendered, not when it is sent.
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

impl Event {
    pub fn new(kind: EventType, at: DateTime<Utc>, data: EventData) -> Self {
        Self {
            kind,
            timestamp: at.to_rfc3339_opts(SecondsFormat::Millis, true),
            schema_version: SCHEMA_VERSION,
            data,
        }
    }

    /// The exact bytes to store and send. A body over `MAX_BODY_WITH_LINKS` loses its presigned
    /// links, which a consumer can do without by reading `data.manifest`.
    pub fn render(mut self) -> Vec<u8> {
        let body = serde_json::to_vec(&self).expect("events always serialize");
        let OutcomeData::Completed(completed) = &mut self.data.outcome else { return body };
        if body.len() <= MAX_BODY_WITH_LINKS || completed.files.iter().all(|f| f.url.is_none()) {
            return body;
        }
        completed.files.iter_mut().for_each(|f| f.url = None);
        completed.links_omitted = true;
        serde_json::to_vec(&self).expect("events always serialize")
    }
}

/// The files a stored body names, for the invocation's report.
pub fn files_of(body: &[u8]) -> Option<Vec<FileRef>> {
    #[derive(Deserialize)]
    struct Body {
        data: Files,
    }
    #[derive(Deserialize)]
    struct Files {
        files: Option<Vec<FileRef>>,
    }
    serde_json::from_slice::<Body>(body).ok().and_then(|b| b.data.files)
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("webhook endpoint unreachable: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("webhook endpoint answered {status} after {tries} tries: {body}")]
    Rejected { status: StatusCode, tries: usize, body: String },
    #[error(
        "webhook endpoint answered 410 Gone: it is retired, so nothing more is sent to it; set a new WEBHOOK_URL, then redrive the dead-letter queue"
    )]
    Gone { tries: usize },
}

impl NotifyError {
    /// Tries made, when the endpoint answered at all.
    pub fn tries(&self) -> Option<usize> {
        match self {
            Self::Transport(_) => None,
            Self::Rejected { tries, .. } | Self::Gone { tries } => Some(*tries),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Gone { .. } => "webhook_gone",
            _ => "webhook_failed",
        }
    }

    /// A retired endpoint stays retired: retrying the record only delays the dead-letter queue.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Gone { .. })
    }
}

pub struct Notifier {
    http: reqwest::Client,
    url: Url,
    keys: SigningKeys,
    retry: RetryPolicy,
}

impl Notifier {
    pub fn new(config: &WebhookConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .build()?;
        Ok(Self { http, url: config.url.clone(), keys: config.keys.clone(), retry: config.retry })
    }

    /// Posts `body` as webhook `id`, with a few quick retries on answers that may pass, and
    /// returns the tries it took. Anything but 2xx is an error: the caller lets SQS deliver the
    /// record again, or, for 410, sets it aside.
    pub async fn send(&self, id: &str, body: &[u8]) -> Result<usize, NotifyError> {
        let sent = http::send_with_retry(&self.retry, is_transient, || {
            // Only the timestamp and so the signature change per try; the body never does.
            let timestamp = Utc::now().timestamp();
            self.http
                .post(self.url.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::USER_AGENT, crate::USER_AGENT)
                .header("webhook-id", id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", self.keys.sign(id, timestamp, body))
                .body(body.to_vec())
        })
        .await
        .map_err(|e| NotifyError::Transport(e.without_url()))?;
        let status = sent.response.status();
        if status.is_success() {
            return Ok(sent.tries);
        }
        if status == StatusCode::GONE {
            return Err(NotifyError::Gone { tries: sent.tries });
        }
        let body = http::body_excerpt(sent.response, MAX_ERROR_BODY).await;
        Err(NotifyError::Rejected { status, tries: sent.tries, body })
    }
}

fn is_transient(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example from the Standard Webhooks specification's test vectors.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn signs_like_the_specification_example() {
        let keys = SigningKeys::parse(SPEC_SECRET).unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            keys.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn signs_with_every_key_during_a_rotation() {
        let other = format!("whsec_{}", BASE64.encode([7u8; 32]));
        let keys = SigningKeys::parse(&format!("{SPEC_SECRET}  {other}")).unwrap();
        let header = keys.sign("id", 1, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(header.split(' ').all(|s| s.starts_with("v1,")));
    }

    #[test]
    fn weak_or_malformed_secrets_are_refused_without_echoing_them() {
        for bad in ["", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_!!!", "whsec_c2hvcnQ="] {
            let err = SigningKeys::parse(bad).unwrap_err();
            assert!(bad.is_empty() || !err.contains(bad), "{err}");
        }
        assert!(format!("{:?}", SigningKeys::parse(SPEC_SECRET).unwrap()).contains("redacted"));
    }

    fn export(id: &str) -> ExportFields {
        ExportFields {
            export_id: id.into(),
            name: None,
            status: None,
            record_count: None,
            file_size: None,
            created_at: None,
            expires_at: None,
            metadata: Map::new(),
        }
    }

    fn file(url: Option<String>) -> FileRef {
        FileRef {
            filename: "a.csv".into(),
            bucket: "b".into(),
            key: "k/a.csv".into(),
            region: None,
            version_id: None,
            size: 1,
            sha256: "00".into(),
            rows: None,
            url,
        }
    }

    #[test]
    fn webhook_ids_are_stable_per_export_and_type() {
        assert_eq!(EventType::Completed.webhook_id("e1"), "export_completed_e1");
        assert_ne!(EventType::Completed.webhook_id("e1"), EventType::Failed.webhook_id("e1"));
        let error = ErrorInfo { code: "x".into(), message: "y".into() };
        let data = EventData { export: export("e1"), outcome: OutcomeData::Failure { error } };
        let body: Value =
            serde_json::from_slice(&Event::new(EventType::Failed, Utc::now(), data).render()).unwrap();
        assert_eq!(body["type"], "export.failed");
        assert_eq!(body["schema_version"], SCHEMA_VERSION);
        assert!(body["data"].get("files").is_none());
        assert_eq!(body["data"]["error"]["code"], "x");
    }

    #[test]
    fn a_body_too_big_for_its_links_loses_them_and_says_so() {
        let completed = |files: Vec<FileRef>| {
            let outcome = OutcomeData::Completed(CompletedData {
                manifest: ObjectRef { bucket: "b".into(), key: "k/manifest.json".into(), region: None },
                files,
                links_omitted: false,
                verified: true,
                verification_error: None,
            });
            Event::new(EventType::Completed, Utc::now(), EventData { export: export("e1"), outcome }).render()
        };
        let link = Some(format!("https://b.s3.amazonaws.com/k/a.csv?{}", "X".repeat(2000)));
        let small: Value = serde_json::from_slice(&completed(vec![file(link.clone())])).unwrap();
        assert_eq!(
            (small["data"]["links_omitted"].as_bool(), small["data"]["files"][0]["url"].is_string()),
            (Some(false), true)
        );
        let many = completed(vec![file(link); 200]);
        assert!(many.len() < MAX_BODY_WITH_LINKS, "{} bytes", many.len());
        let many: Value = serde_json::from_slice(&many).unwrap();
        assert_eq!(many["data"]["links_omitted"], true);
        assert!(many["data"]["files"].as_array().unwrap().iter().all(|f| f["url"].is_null()));
    }
}
