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
}

/// A webhook body: `{"type", "timestamp", "data"}`.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub timestamp: String,
    pub data: EventData,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventData {
    pub export_id: String,
    pub name: Option<String>,
    pub status: Option<String>,
    pub record_count: Option<u64>,
    pub file_size: Option<u64>,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub metadata: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileRef>>,
    /// On `export.completed`: false when a check (the record count) did not match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub filename: String,
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub sha256: String,
    /// CSV data rows, for `.csv` and `.csv.gz` files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// A presigned GET URL, when `PRESIGN_TTL_SECONDS` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

impl Event {
    pub fn new(kind: EventType, data: EventData) -> Self {
        Self { kind, timestamp: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true), data }
    }

    /// Stable across retries and redeliveries, so consumers can drop duplicates.
    pub fn webhook_id(&self) -> String {
        format!("{}_{}", self.kind.as_str().replace('.', "_"), self.data.export_id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("webhook endpoint unreachable: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("webhook endpoint answered {status} after {tries} tries: {body}")]
    Rejected { status: StatusCode, tries: usize, body: String },
}

impl NotifyError {
    /// Tries made, when the endpoint answered at all.
    pub fn tries(&self) -> Option<usize> {
        match self {
            Self::Transport(_) => None,
            Self::Rejected { tries, .. } => Some(*tries),
        }
    }
}

/// What happened to a webhook that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered {
        tries: usize,
    },
    /// The receiver answered 410 Gone: it is retired, so the event is dropped, not retried.
    Gone,
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

    /// Posts the event, with a few quick retries on answers that may pass. Anything but 2xx
    /// (or 410) is an error, and the caller lets SQS deliver the record again.
    pub async fn send(&self, event: &Event) -> Result<Delivery, NotifyError> {
        let body = serde_json::to_vec(event).expect("events always serialize");
        let id = event.webhook_id();
        let sent = http::send_with_retry(&self.retry, is_transient, || {
            // A fresh timestamp each try, as receivers reject old ones.
            let timestamp = Utc::now().timestamp();
            self.http
                .post(self.url.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::USER_AGENT, crate::USER_AGENT)
                .header("webhook-id", &id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", self.keys.sign(&id, timestamp, &body))
                .body(body.clone())
        })
        .await
        .map_err(|e| NotifyError::Transport(e.without_url()))?;
        let status = sent.response.status();
        if status.is_success() {
            return Ok(Delivery::Delivered { tries: sent.tries });
        }
        if status == StatusCode::GONE {
            tracing::error!(webhook_id = %id, "webhook endpoint answered 410 Gone: it is retired, so this event is dropped; set a new WEBHOOK_URL");
            return Ok(Delivery::Gone);
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

    #[test]
    fn webhook_ids_are_stable_per_export_and_type() {
        let data = EventData {
            export_id: "e1".into(),
            name: None,
            status: None,
            record_count: None,
            file_size: None,
            created_at: None,
            expires_at: None,
            metadata: Map::new(),
            files: None,
            verified: None,
            verification_error: None,
            error: None,
        };
        let a = Event::new(EventType::Completed, data.clone());
        let b = Event::new(EventType::Completed, data.clone());
        let c = Event::new(EventType::Failed, data);
        assert_eq!(a.webhook_id(), b.webhook_id());
        assert_ne!(a.webhook_id(), c.webhook_id());
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["type"], "export.completed");
        assert!(json["data"].get("error").is_none());
    }
}
