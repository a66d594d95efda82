//! The DealMachine exports API, as far as the relay needs it: `GET /exports/{id}` and the list,
//! `GET /exports?status=…`.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::config::{RetryPolicy, Secret};
use crate::events::ExportId;
use crate::http::{self, BodyError};
use crate::secrets::SecretSource;

/// Export answers are small; a larger body means a broken or hostile server.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// An export names its files; thousands of them is not an export we know how to handle.
pub const MAX_FILES: usize = 1000;
/// After a 401, the key is read again from Secrets Manager at most this often per instance, so a
/// key that is really wrong costs one secret read a minute, not one per record.
const KEY_REREAD_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportStatus {
    Pending,
    Processing,
    Completed,
    Failed,
}

/// An export as the API describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Export {
    pub export_id: String,
    pub status: ExportStatus,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub progress: Option<u32>,
    #[serde(default)]
    pub progress_stage: Option<String>,
    #[serde(default)]
    pub record_count: Option<u64>,
    #[serde(default)]
    pub file_size: Option<u64>,
    /// Null until the export completes, and again once it expires.
    #[serde(default)]
    pub download_urls: Option<Vec<DownloadFile>>,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownloadFile {
    pub filename: String,
    pub url: String,
    pub size: u64,
}

impl Export {
    /// Completed, but its files can no longer be downloaded: it must be run again.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.download_urls.is_none() || self.expires_at.is_some_and(|at| at <= now)
    }
}

/// The export as read, plus what the answer said about the rate limit.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub export: Export,
    pub rate: RateInfo,
}

/// What an answer said about the organization's rate limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateInfo {
    /// Set when the API asked us to slow down on the way; the next poll waits at least this.
    pub throttled_for: Option<Duration>,
    /// 429 answers on the way.
    pub rate_limited: usize,
    /// `X-RateLimit-Limit`: requests allowed a minute.
    pub limit: Option<u64>,
    /// `X-RateLimit-Remaining`: requests left this minute.
    pub remaining: Option<u64>,
    /// `X-RateLimit-Reset`: when the minute's budget is refilled.
    pub reset: Option<DateTime<Utc>>,
    /// The day's header (see [`rate_headers::REMAINING_DAY`]): requests left today.
    pub remaining_today: Option<u64>,
}

/// The rate-limit headers the API sends on every answer, named here and nowhere else.
pub mod rate_headers {
    /// Requests allowed a minute, for the whole organization (60).
    pub const LIMIT: &str = "x-ratelimit-limit";
    /// Requests left this minute.
    pub const REMAINING: &str = "x-ratelimit-remaining";
    /// When this minute's budget is refilled, in Unix seconds.
    pub const RESET: &str = "x-ratelimit-reset";
    /// Requests left today (of the organization's 5,000). Where the name comes from: the
    /// minute's `X-RateLimit-*` pattern with a `-Day` suffix, as the relay has read it since the
    /// first sweep and as the simulator serves it (`crates/dealmachine-sim/src/api.rs`,
    /// `Shared::gate`, beside `-Limit-Day` and `-Reset-Day`). It is the one header name here
    /// not checked against a real answer: if DealMachine names it otherwise, change it here
    /// and only here. An absent header only means the day's budget is not read.
    pub const REMAINING_DAY: &str = "x-ratelimit-remaining-day";
}

/// One page of the export list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub exports: Vec<Export>,
    pub has_more: bool,
    /// `pagination.total`: how many exports the whole list holds now. It grows while a pass
    /// runs as exports are created at the head, shifting every offset by as much.
    pub total: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("export not found (404): check the ID and that it belongs to this API key's organization [{0}]")]
    NotFound(ApiMessage),
    #[error("this API key may not read the export (403) [{0}]")]
    Forbidden(ApiMessage),
    #[error(
        "the API key was refused (401), also after reading it again where it is kept: set a valid key in DEALMACHINE_API_KEY or the secret DEALMACHINE_API_KEY_SECRET_ARN names; SQS will deliver the record again [{0}]"
    )]
    Unauthorized(ApiMessage),
    #[error("rate limited by the DealMachine API (429), retry after {:?} [{message}]", rate.throttled_for)]
    RateLimited { rate: Box<RateInfo>, message: ApiMessage },
    #[error("the DealMachine API answered {status} [{message}]")]
    Status { status: StatusCode, message: ApiMessage },
    #[error("could not reach the DealMachine API: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("the DealMachine API answered something that is not an export: {0}")]
    InvalidResponse(String),
}

impl ApiError {
    /// True when asking again can never succeed, so the record should not be retried. A 401
    /// is not: the key may be mid-rotation, or DealMachine's auth may be having a bad minute, and
    /// the records it refuses include running exports whose poll chains must not end.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::NotFound(_) | Self::Forbidden(_))
            || matches!(self, Self::Status { status, .. } if *status == StatusCode::BAD_REQUEST)
    }

    /// True when the API says this export is not ours to read: consumers hear `export.failed`.
    pub fn is_unreadable_export(&self) -> bool {
        matches!(self, Self::NotFound(_) | Self::Forbidden(_))
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "export_not_found",
            Self::Forbidden(_) => "export_forbidden",
            Self::Unauthorized(_) => "api_key_refused",
            Self::RateLimited { .. } => "api_rate_limited",
            Self::Status { .. } => "api_error",
            Self::Transport(_) => "api_unreachable",
            Self::InvalidResponse(_) => "api_invalid_response",
        }
    }
}

/// DealMachine's error body, `{"error": {"code", "message", "request_id"}}`, kept for logs.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ApiMessage {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
}

impl std::fmt::Display for ApiMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let field = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        write!(
            f,
            "code={} message={} request_id={}",
            field(&self.code),
            field(&self.message),
            field(&self.request_id)
        )
    }
}

pub struct DealMachineClient {
    http: reqwest::Client,
    base: Url,
    key: RwLock<Secret>,
    /// Where the key is kept, to read it again after a 401.
    key_source: Option<KeySource>,
    retry: RetryPolicy,
}

/// The key's secret, and when it was last read again.
struct KeySource {
    secret: SecretSource,
    last_read: tokio::sync::Mutex<Option<Instant>>,
}

impl DealMachineClient {
    pub fn new(http: reqwest::Client, base: Url, key: Secret, retry: RetryPolicy) -> Self {
        Self { http, base, key: RwLock::new(key), key_source: None, retry }
    }

    /// Reads the key again from `secret` when the API refuses it, so a rotation reaches a warm
    /// environment without waiting for a cold start.
    pub fn with_key_source(self, secret: SecretSource) -> Self {
        let source = KeySource { secret, last_read: tokio::sync::Mutex::new(None) };
        Self { key_source: Some(source), ..self }
    }

    pub async fn get_export(&self, id: &ExportId) -> Result<Fetched, ApiError> {
        let (body, rate) = self.get(&["exports", id.as_str()], &[], is_transient).await?;
        let export = parse_export(&body)?;
        if export.export_id != id.as_str() {
            return Err(ApiError::InvalidResponse(format!(
                "asked for export {id}, got {:?}",
                export.export_id
            )));
        }
        Ok(Fetched { export, rate })
    }

    /// One page of `GET /exports` (of one status, or of all with `None`), newest first. A 429
    /// is not retried: a list is read to find work, never worth spending the budget twice on,
    /// so its reader stops at the first one and says when the budget comes back.
    pub async fn list_exports(
        &self,
        status: Option<ExportStatus>,
        limit: u32,
        offset: u32,
    ) -> Result<(Page, RateInfo), ApiError> {
        let mut query = vec![("limit", limit.to_string()), ("offset", offset.to_string())];
        if let Some(status) = status {
            let status = serde_json::to_value(status).expect("statuses serialize");
            query.insert(0, ("status", status.as_str().unwrap_or_default().to_string()));
        }
        let (body, rate) = self.get(&["exports"], &query, is_server_error).await?;
        Ok((parse_page(&body)?, rate))
    }

    /// A `GET` with the key, short retries (of the statuses `retry_status` names), a size cap,
    /// and DealMachine's error shape read. A 401 is asked once more if the key turns out to
    /// have changed where it is kept.
    async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        retry_status: fn(StatusCode) -> bool,
    ) -> Result<(Bytes, RateInfo), ApiError> {
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let key = self.key();
        match self.get_with(&url, &key, retry_status).await {
            Err(ApiError::Unauthorized(message)) => match self.fresh_key(&key).await {
                Some(fresh) => self.get_with(&url, &fresh, retry_status).await,
                None => Err(ApiError::Unauthorized(message)),
            },
            answer => answer,
        }
    }

    fn key(&self) -> Secret {
        self.key.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// A key other than the refused one: already replaced by another request, or read again
    /// from Secrets Manager if the last read is old enough. `None` when there is nothing new.
    async fn fresh_key(&self, refused: &Secret) -> Option<Secret> {
        let source = self.key_source.as_ref()?;
        let mut last_read = source.last_read.lock().await;
        let current = self.key();
        if current != *refused {
            return Some(current);
        }
        if last_read.is_some_and(|at| at.elapsed() < KEY_REREAD_INTERVAL) {
            return None;
        }
        *last_read = Some(Instant::now());
        let read = match source.secret.read().await {
            Ok(value) => Secret::new(value),
            Err(e) => {
                tracing::warn!(error = %e, "the API refused the key, and reading it again failed");
                return None;
            }
        };
        if read == *refused {
            return None;
        }
        tracing::info!("the API refused the key; read a new one from Secrets Manager");
        *self.key.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = read.clone();
        Some(read)
    }

    async fn get_with(
        &self,
        url: &Url,
        key: &Secret,
        retry_status: fn(StatusCode) -> bool,
    ) -> Result<(Bytes, RateInfo), ApiError> {
        let sent = http::send_with_retry(&self.retry, retry_status, || {
            self.http.get(url.clone()).bearer_auth(key.expose())
        })
        .await
        .map_err(|e| ApiError::Transport(e.without_url()))?;
        let rate = rate_info(&sent);
        let status = sent.response.status();
        let body = http::read_capped(sent.response, MAX_BODY_BYTES).await.map_err(|e| match e {
            BodyError::Read(e) => ApiError::Transport(e.without_url()),
            too_large => ApiError::InvalidResponse(too_large.to_string()),
        })?;
        if !status.is_success() {
            return Err(error_for(status, &body, rate));
        }
        Ok((body, rate))
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("the API URL is an http(s) URL, checked in config")
            .pop_if_empty()
            .extend(segments);
        url
    }
}

fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || is_server_error(status)
}

fn is_server_error(status: StatusCode) -> bool {
    status.is_server_error()
}

/// The rate-limit headers of the last answer, with what the retries on the way saw.
fn rate_info(sent: &http::Sent) -> RateInfo {
    let number = |name| header_number(&sent.response, name);
    RateInfo {
        throttled_for: sent.throttled_for,
        rate_limited: sent.rate_limited,
        limit: number(rate_headers::LIMIT),
        remaining: number(rate_headers::REMAINING),
        reset: number(rate_headers::RESET).and_then(|at| DateTime::from_timestamp(at as i64, 0)),
        remaining_today: number(rate_headers::REMAINING_DAY),
    }
}

fn header_number(response: &reqwest::Response, name: &str) -> Option<u64> {
    response.headers().get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Parses `{"data": [...], "pagination": {"has_more", "total"}}`.
pub fn parse_page(body: &[u8]) -> Result<Page, ApiError> {
    #[derive(Deserialize)]
    struct Pagination {
        has_more: bool,
        #[serde(default)]
        total: Option<u64>,
    }
    #[derive(Deserialize)]
    struct Envelope {
        data: Vec<Export>,
        pagination: Pagination,
    }
    let page: Envelope = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidResponse(format!("{e} (body starts {:?})", excerpt(body))))?;
    Ok(Page { exports: page.data, has_more: page.pagination.has_more, total: page.pagination.total })
}

/// Parses `{"data": {...}}` into an export, with an error that says what was wrong.
pub fn parse_export(body: &[u8]) -> Result<Export, ApiError> {
    #[derive(Deserialize)]
    struct Envelope {
        data: Export,
    }
    let export = serde_json::from_slice::<Envelope>(body)
        .map_err(|e| ApiError::InvalidResponse(format!("{e} (body starts {:?})", excerpt(body))))?
        .data;
    let files = export.download_urls.as_deref().unwrap_or_default();
    if files.len() > MAX_FILES {
        return Err(ApiError::InvalidResponse(format!(
            "{} download_urls, more than the {MAX_FILES} the relay accepts",
            files.len()
        )));
    }
    Ok(export)
}

fn error_for(status: StatusCode, body: &[u8], rate: RateInfo) -> ApiError {
    #[derive(Deserialize)]
    struct Envelope {
        error: ApiMessage,
    }
    let message = serde_json::from_slice::<Envelope>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| ApiMessage { message: Some(excerpt(body)), ..Default::default() });
    match status {
        StatusCode::NOT_FOUND => ApiError::NotFound(message),
        StatusCode::FORBIDDEN => ApiError::Forbidden(message),
        StatusCode::UNAUTHORIZED => ApiError::Unauthorized(message),
        StatusCode::TOO_MANY_REQUESTS => ApiError::RateLimited { rate: Box::new(rate), message },
        status => ApiError::Status { status, message },
    }
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(data: serde_json::Value) -> Vec<u8> {
        json!({ "data": data }).to_string().into_bytes()
    }

    #[test]
    fn parses_the_documented_example() {
        let example = include_str!("../tests/fixtures/get-export-completed.json");
        let export = parse_export(example.as_bytes()).unwrap();
        assert_eq!(export.status, ExportStatus::Completed);
        assert_eq!(export.record_count, Some(15432));
        let files = export.download_urls.unwrap();
        assert_eq!(files[0].filename, "properties_export_2026-02-17.csv.gz");
        assert_eq!(files[0].size, 2_457_600);
    }

    #[test]
    fn a_running_export_has_no_files_yet() {
        let export = parse_export(&body(json!({
            "export_id": "x", "status": "processing", "progress": 40, "progress_stage": "Building",
            "record_count": null, "file_size": null, "download_urls": null
        })))
        .unwrap();
        assert_eq!(export.status, ExportStatus::Processing);
        assert!(export.download_urls.is_none());
    }

    #[test]
    fn bad_answers_are_invalid_responses() {
        let cases: Vec<Vec<u8>> = vec![
            b"<html>502 Bad Gateway</html>".to_vec(),
            b"{\"data\": {\"export_id\": \"x\", \"status\": \"comp".to_vec(),
            body(json!({"export_id": "x", "status": "archived"})),
            body(json!({"export_id": "x", "status": "completed",
                        "download_urls": [{"filename": "a", "url": "https://h/a", "size": -1}]})),
            body(json!({"export_id": "x", "status": "completed",
                        "download_urls": [{"filename": "a", "url": "https://h/a"}]})),
            body(json!({"export_id": "x", "status": "completed",
                        "download_urls": vec![json!({"filename": "a", "url": "https://h/a", "size": 1}); MAX_FILES + 1]})),
        ];
        for case in cases {
            let err = parse_export(&case).unwrap_err();
            assert!(matches!(err, ApiError::InvalidResponse(_)), "{err}");
        }
        let most = vec![json!({"filename": "a", "url": "https://h/a", "size": 1}); MAX_FILES];
        let export =
            parse_export(&body(json!({"export_id": "x", "status": "completed", "download_urls": most})));
        assert_eq!(export.unwrap().download_urls.unwrap().len(), MAX_FILES, "as many files as allowed");
    }

    #[test]
    fn error_bodies_keep_the_request_id() {
        let body = br#"{"error": {"code": "not_found", "message": "Export not found", "request_id": "req_1", "details": {}}}"#;
        let err = error_for(StatusCode::NOT_FOUND, body, RateInfo::default());
        assert!(err.is_permanent() && err.is_unreadable_export());
        assert!(err.to_string().contains("request_id=req_1"), "{err}");
        // A body not in DealMachine's error shape, such as a proxy's page, is kept for the log.
        let err = error_for(StatusCode::BAD_GATEWAY, b"<html>Bad gateway</html>", RateInfo::default());
        assert!(!err.is_permanent());
        assert!(err.to_string().contains("message=<html>Bad gateway</html>"), "{err}");
        assert!(
            !error_for(StatusCode::UNAUTHORIZED, b"", RateInfo::default()).is_permanent(),
            "a key mid-rotation"
        );
    }

    #[test]
    fn expiry_follows_the_urls_and_the_clock() {
        let mut export = parse_export(include_bytes!("../tests/fixtures/get-export-completed.json")).unwrap();
        let before = "2026-02-20T00:00:00Z".parse().unwrap();
        let after = "2026-02-25T00:00:00Z".parse().unwrap();
        assert!(!export.is_expired(before));
        assert!(export.is_expired(after));
        export.download_urls = None;
        assert!(export.is_expired(before));
    }
}
