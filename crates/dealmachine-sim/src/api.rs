//! The DealMachine exports API and its file host, on one local port.
//!
//! Exports move through `pending`, `processing` and `completed` over time, with `progress`
//! rising in one of a few shapes, or follow a script of statuses, one per `GET`. Download URLs are signed and expire, and lead to the file host in
//! `files`. Fault switches make the API misbehave the ways the real one can.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::content::Measured;
use crate::files::{DownloadFault, FileSpec, SimFile};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

/// One API answer to give instead of the real one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiFault {
    /// `429` with this `Retry-After`, in seconds.
    RateLimited(u64),
    /// A `500` in DealMachine's error shape.
    ServerError,
    /// Exactly this answer: for broken or hostile API responses.
    Raw { status: u16, content_type: &'static str, body: String },
}

/// How an export's status changes.
#[derive(Debug, Clone)]
pub enum Lifecycle {
    /// Each `GET` takes the next status; the last one stays.
    Scripted(VecDeque<Status>),
    /// Pending, then processing with `progress` rising in `shape`, then completed, by the clock.
    Timed { pending: Duration, processing: Duration, shape: Shape },
    /// Timed, then failed instead of completed.
    TimedFailure { pending: Duration, processing: Duration },
}

/// How `progress` rises while an export is processing: the ways a poller can be told the truth,
/// or told nothing useful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// In step with the clock, from 1 to 99.
    #[default]
    Steady,
    /// Stuck at 5 for the first 70 % of the time, then quickly up to 99.
    StuckThenFast,
    /// 0 all along, then completed: a jump from 0 to 100 that says nothing in advance.
    Jumping,
}

/// The reading `StuckThenFast` is stuck at, ...
const STUCK_AT: f64 = 5.0;
/// ... for this share of the processing time.
const STUCK_FOR: f64 = 0.7;

impl Shape {
    /// The progress reading `done` (0.0 to 1.0) of the way through processing.
    fn progress(self, done: f64) -> u32 {
        let percent = match self {
            Self::Steady => done * 100.0,
            Self::StuckThenFast if done < STUCK_FOR => STUCK_AT,
            Self::StuckThenFast => STUCK_AT + (done - STUCK_FOR) / (1.0 - STUCK_FOR) * (100.0 - STUCK_AT),
            Self::Jumping => return 0,
        };
        (percent as u32).clamp(1, 99)
    }
}

impl std::str::FromStr for Shape {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "steady" => Ok(Self::Steady),
            "stuck-then-fast" => Ok(Self::StuckThenFast),
            "jumping" => Ok(Self::Jumping),
            other => Err(format!("unknown progress shape {other:?}: steady, stuck-then-fast or jumping")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExportSpec {
    pub export_id: Option<String>,
    pub name: String,
    pub lifecycle: Lifecycle,
    pub files: Vec<FileSpec>,
    /// The export (and every link to its files) expires this long after creation.
    pub expires_in: chrono::Duration,
    /// Each signed link also expires this long after it was signed (GCS's `X-Goog-Expires`),
    /// often far sooner than the export; `None` for links that last as long as the export.
    pub link_ttl: Option<chrono::Duration>,
    /// Overrides the real row count, to simulate an API that miscounts.
    pub record_count: Option<u64>,
    pub created_at: Option<DateTime<Utc>>,
}

impl ExportSpec {
    pub fn scripted(statuses: &[Status], files: Vec<FileSpec>) -> Self {
        Self {
            export_id: None,
            name: "properties_export".into(),
            lifecycle: Lifecycle::Scripted(statuses.iter().copied().collect()),
            files,
            expires_in: chrono::Duration::days(7),
            link_ttl: None,
            record_count: None,
            created_at: None,
        }
    }

    pub fn completed(files: Vec<FileSpec>) -> Self {
        Self::scripted(&[Status::Completed], files)
    }

    /// Pending for `pending`, then processing for `processing` with progress in `shape`, then
    /// completed, counted from creation.
    pub fn timed(pending: Duration, processing: Duration, shape: Shape, files: Vec<FileSpec>) -> Self {
        Self { lifecycle: Lifecycle::Timed { pending, processing, shape }, ..Self::completed(files) }
    }
}

struct SimExport {
    id: String,
    spec: ExportSpec,
    files: Vec<SimFile>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    current: Status,
    /// Each status served, with when it was first served.
    history: Vec<(Status, DateTime<Utc>)>,
}

impl SimExport {
    /// Advances the lifecycle by one `GET`, or by the clock.
    fn advance(&mut self, now: DateTime<Utc>) {
        let before = self.current;
        self.current = match &mut self.spec.lifecycle {
            Lifecycle::Scripted(script) => {
                if script.len() > 1 {
                    script.pop_front().expect("not empty")
                } else {
                    script.front().copied().unwrap_or(Status::Completed)
                }
            }
            Lifecycle::Timed { pending, processing, .. } => {
                timed(now - self.created_at, *pending, *processing, Status::Completed)
            }
            Lifecycle::TimedFailure { pending, processing } => {
                timed(now - self.created_at, *pending, *processing, Status::Failed)
            }
        };
        if before != self.current {
            self.updated_at = now;
        }
        if self.history.last().map(|(s, _)| *s) != Some(self.current) {
            self.history.push((self.current, now));
        }
    }

    fn progress(&self, now: DateTime<Utc>) -> (u32, &'static str) {
        let shaped = |pending: &Duration, processing: &Duration, shape: Shape| {
            let into = (now - self.created_at).to_std().unwrap_or_default().saturating_sub(*pending);
            let pct = shape.progress(into.as_secs_f64() / processing.as_secs_f64().max(0.001));
            (pct, if pct < 50 { "Gathering records" } else { "Writing files" })
        };
        match (self.current, &self.spec.lifecycle) {
            (Status::Pending, _) => (0, "Queued"),
            (Status::Processing, Lifecycle::Timed { pending, processing, shape }) => {
                shaped(pending, processing, *shape)
            }
            (Status::Processing, Lifecycle::TimedFailure { pending, processing }) => {
                shaped(pending, processing, Shape::Steady)
            }
            (Status::Processing, _) => (50, "Gathering records"),
            (Status::Completed, _) => (100, "Complete"),
            (Status::Failed, _) => (0, "Failed"),
        }
    }

    fn to_json(&self, base: &str, key: &str, now: DateTime<Utc>) -> Value {
        let (progress, stage) = self.progress(now);
        let expires_at = self.created_at + self.spec.expires_in;
        let completed = self.current == Status::Completed;
        let live = completed && expires_at > now;
        let rows: u64 = self.files.iter().map(|f| f.spec.content.rows).sum();
        let size: u64 = self.files.iter().map(|f| f.measured.size).sum();
        let urls: Option<Vec<Value>> = live.then(|| {
            self.files
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let lifetime =
                        self.spec.link_ttl.unwrap_or(expires_at - now).min(chrono::Duration::days(7));
                    json!({
                        "filename": f.spec.filename,
                        "url": signed_url(base, key, &format!("/files/{}/{i}", self.id), now, lifetime),
                        "size": f.measured.size,
                    })
                })
                .collect()
        });
        json!({
            "export_id": self.id,
            "status": self.current.as_str(),
            "name": self.spec.name,
            "progress": progress,
            "progress_stage": stage,
            "record_count": completed.then(|| self.spec.record_count.unwrap_or(rows)),
            "file_size": completed.then_some(size),
            "download_urls": urls,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
            "expires_at": rfc3339(expires_at),
        })
    }
}

fn timed(age: chrono::Duration, pending: Duration, processing: Duration, end: Status) -> Status {
    let age = age.to_std().unwrap_or_default();
    if age < pending {
        Status::Pending
    } else if age < pending + processing {
        Status::Processing
    } else {
        end
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A link shaped like a GCS V4 signed URL: signed at `date`, good for `lifetime`. The query
/// string is the credential, as on the real thing.
fn signed_url(base: &str, key: &str, path: &str, date: DateTime<Utc>, lifetime: chrono::Duration) -> String {
    let date = date.format(GOOG_DATE).to_string();
    let expires = lifetime.num_seconds().max(1);
    format!(
        "{base}{path}?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=relay-sim%2Fauto%2Fstorage%2Fgoog4_request\
         &X-Goog-Date={date}&X-Goog-Expires={expires}&X-Goog-SignedHeaders=host&X-Goog-Signature={}",
        signature(key, path, &date, expires)
    )
}

const GOOG_DATE: &str = "%Y%m%dT%H%M%SZ";

fn signature(key: &str, path: &str, date: &str, expires: i64) -> String {
    format!("{:x}", Sha256::digest(format!("{key}\n{path}\n{date}\n{expires}")))
}

/// Settings for a simulator.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The only key accepted in `Authorization: Bearer`.
    pub api_key: String,
    /// Requests allowed per minute before 429s; `None` for no limit.
    pub per_minute_limit: Option<u32>,
    /// The `X-RateLimit-Remaining` to report, for tests of budget-aware callers.
    pub reported_remaining: Option<u32>,
    /// The `X-RateLimit-Remaining-Day` to report; by default 5,000 less the requests seen.
    pub reported_remaining_day: Option<u32>,
    /// List items as summaries, without `download_urls`: nothing in DealMachine's
    /// documentation promises that list items carry signed URLs, so callers must not need them.
    pub summary_list_items: bool,
    /// A share of API requests, 0.0 to 1.0, answered with a 500.
    pub error_rate: f64,
    /// Used for timed exports created by `POST`.
    pub pending_for: Duration,
    pub processing_for: Duration,
    /// The progress shapes of exports created by `POST`, one after another.
    pub shapes: Vec<Shape>,
    pub rows_per_file: u64,
    pub files_per_export: usize,
    /// The host name download URLs use, instead of the listening IP address; lets tests allow
    /// one name and see a redirect to another refused.
    pub public_host: Option<String>,
    /// For exports created by `POST`: the first download of each one's first file breaks off
    /// after this many bytes, so a client has to resume it.
    pub cut_first_download_after: Option<u64>,
    /// Serves download URLs over TLS on a port of their own, offering HTTP/2 (ALPN `h2`) as
    /// Google Cloud Storage does. The API stays plain HTTP.
    pub files_over_tls: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            api_key: "dm_sk_live_simulator".into(),
            per_minute_limit: None,
            reported_remaining: None,
            reported_remaining_day: None,
            summary_list_items: false,
            error_rate: 0.0,
            pending_for: Duration::from_secs(2),
            processing_for: Duration::from_secs(6),
            shapes: vec![Shape::Steady],
            rows_per_file: 5000,
            files_per_export: 2,
            public_host: None,
            cut_first_download_after: None,
            files_over_tls: false,
        }
    }
}

/// One request the API or the file host saw, for assertions.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: std::time::Instant,
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    /// The HTTP version of a download request (API requests leave it unset).
    pub version: Option<Version>,
    /// 0 when the connection was closed without an answer.
    pub status: u16,
}

impl Seen {
    /// A request header, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Runs before each list request is answered, given how many came before it: a test's way to
/// change the exports while a caller pages through them.
pub type ListHook = Arc<dyn Fn(usize) + Send + Sync>;

#[derive(Default)]
struct Inner {
    /// The key accepted since the last `rotate_key`.
    rotated_key: Option<String>,
    exports: HashMap<String, SimExport>,
    order: Vec<String>,
    faults: VecDeque<ApiFault>,
    seen: Vec<Seen>,
    window: (i64, u32),
    counter: u64,
    list_hook: Option<ListHook>,
    lists_answered: usize,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    options: Arc<SimOptions>,
    base: String,
    /// Where download URLs point: the API's own base, or the TLS listener's.
    files_base: String,
}

/// A running simulator. It stops when dropped with the runtime that started it.
#[derive(Clone)]
pub struct Simulator {
    shared: Shared,
    pub addr: SocketAddr,
    ca_pem: Option<String>,
}

impl Simulator {
    /// Starts on `addr` (port 0 picks a free one).
    pub async fn start(options: SimOptions, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let host = options.public_host.clone().unwrap_or_else(|| "127.0.0.1".into());
        let base = format!("http://{host}:{}", addr.port());
        let tls_listener = match options.files_over_tls {
            true => Some(tokio::net::TcpListener::bind((addr.ip(), 0)).await?),
            false => None,
        };
        let files_base = match &tls_listener {
            Some(tls) => format!("https://{host}:{}", tls.local_addr()?.port()),
            None => base.clone(),
        };
        let shared = Shared { inner: Arc::default(), base, files_base, options: Arc::new(options) };
        let app = Router::new()
            .route("/v1/exports", get(list_exports))
            .route("/v1/exports/{id}", get(get_export))
            .route("/v1/properties/export", post(create_export))
            .route("/v1/people/export", post(create_export))
            .route("/files/{id}/{index}", get(download))
            .with_state(shared.clone());
        let ca_pem = tls_listener.map(|tls| crate::tls::serve(tls, app.clone())).transpose()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { shared, addr, ca_pem })
    }

    /// With `files_over_tls`: the file host's certificate, as PEM, for a client to trust.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The API base URL, as `DEALMACHINE_API_URL` takes it.
    pub fn api_url(&self) -> String {
        format!("{}/v1", self.shared.base)
    }

    /// The key the simulator started with.
    pub fn api_key(&self) -> &str {
        &self.shared.options.api_key
    }

    /// From now on, only `key` is accepted, as after a rotation on DealMachine's side.
    pub fn rotate_key(&self, key: &str) {
        self.shared.inner.lock().unwrap().rotated_key = Some(key.to_string());
    }

    /// Adds an export and returns its ID.
    pub fn add_export(&self, spec: ExportSpec) -> String {
        let mut inner = self.shared.inner.lock().unwrap();
        inner.counter += 1;
        let id = spec.export_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let files = spec.files.iter().cloned().map(SimFile::new).collect();
        let created_at = spec.created_at.unwrap_or_else(Utc::now);
        let first = match &spec.lifecycle {
            Lifecycle::Scripted(s) => s.front().copied().unwrap_or(Status::Completed),
            _ => Status::Pending,
        };
        inner.order.push(id.clone());
        inner.exports.insert(
            id.clone(),
            SimExport {
                id: id.clone(),
                spec,
                files,
                created_at,
                updated_at: created_at,
                current: first,
                history: vec![],
            },
        );
        id
    }

    /// The signed download URLs the API gives for a completed export, in order, without asking
    /// the API (so without advancing the export's lifecycle).
    pub fn download_urls(&self, export_id: &str) -> Vec<String> {
        let inner = self.shared.inner.lock().unwrap();
        let export = inner.exports[export_id].to_json(
            &self.shared.files_base,
            &self.shared.options.api_key,
            Utc::now(),
        );
        let urls = export["download_urls"].as_array().cloned().unwrap_or_default();
        urls.iter().filter_map(|f| f["url"].as_str().map(str::to_string)).collect()
    }

    /// Size and digests of each of an export's files (of the current generation), in order.
    pub fn files(&self, export_id: &str) -> Vec<(String, Measured)> {
        let inner = self.shared.inner.lock().unwrap();
        inner.exports[export_id].files.iter().map(|f| (f.spec.filename.clone(), f.measured.clone())).collect()
    }

    /// The statuses `GET /exports/{id}` has served for an export, in order, with when.
    pub fn history(&self, export_id: &str) -> Vec<(Status, DateTime<Utc>)> {
        self.shared
            .inner
            .lock()
            .unwrap()
            .exports
            .get(export_id)
            .map(|e| e.history.clone())
            .unwrap_or_default()
    }

    /// Calls `hook` before each list request is answered (after its key and rate checks).
    pub fn on_list(&self, hook: impl Fn(usize) + Send + Sync + 'static) {
        self.shared.inner.lock().unwrap().list_hook = Some(Arc::new(hook));
    }

    /// Moves an export to `status` for good, as if its lifecycle had taken it there.
    pub fn set_status(&self, export_id: &str, status: Status) {
        let mut inner = self.shared.inner.lock().unwrap();
        let export = inner.exports.get_mut(export_id).expect("a known export");
        export.spec.lifecycle = Lifecycle::Scripted(VecDeque::from([status]));
        export.advance(Utc::now());
    }

    /// Queues API answers to give before the real ones.
    pub fn push_faults(&self, faults: &[ApiFault]) {
        self.shared.inner.lock().unwrap().faults.extend(faults.iter().cloned());
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.inner.lock().unwrap().seen.clone()
    }

    /// Requests seen whose path contains `needle`.
    pub fn seen_matching(&self, needle: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path.contains(needle)).collect()
    }
}

impl Shared {
    fn remaining_day(&self, seen: usize) -> u64 {
        self.options.reported_remaining_day.map_or(5000u64.saturating_sub(seen as u64), u64::from)
    }

    /// Runs the list hook, if any, outside the lock, so it may change exports.
    fn run_list_hook(&self) {
        let (hook, answered) = {
            let mut inner = self.inner.lock().unwrap();
            inner.lists_answered += 1;
            (inner.list_hook.clone(), inner.lists_answered - 1)
        };
        if let Some(hook) = hook {
            hook(answered);
        }
    }

    fn record(&self, method: &str, path: String, headers: &HeaderMap, status: StatusCode) {
        self.record_version(method, path, headers, None, Some(status));
    }

    fn record_version(
        &self,
        method: &str,
        path: String,
        headers: &HeaderMap,
        version: Option<Version>,
        status: Option<StatusCode>,
    ) {
        let seen = Seen {
            at: std::time::Instant::now(),
            method: method.into(),
            path,
            headers: headers.clone(),
            version,
            status: status.map_or(0, |s| s.as_u16()),
        };
        self.inner.lock().unwrap().seen.push(seen);
    }

    /// Checks the key, the rate limit and queued faults; `Err` is the answer to give instead.
    fn gate(&self, headers: &HeaderMap, path: &str, method: &str) -> Result<HeaderMap, Box<Response>> {
        let mut inner = self.inner.lock().unwrap();
        let now = Utc::now().timestamp();
        let minute = now / 60;
        if inner.window.0 != minute {
            inner.window = (minute, 0);
        }
        inner.window.1 += 1;
        let used = inner.window.1;
        let limit = self.options.per_minute_limit.unwrap_or(60);
        let remaining = self.options.reported_remaining.unwrap_or(limit.saturating_sub(used));
        let reset = (minute + 1) * 60;
        let mut rate = HeaderMap::new();
        for (name, value) in [
            ("x-ratelimit-limit", limit.to_string()),
            ("x-ratelimit-remaining", remaining.to_string()),
            ("x-ratelimit-reset", reset.to_string()),
            ("x-ratelimit-limit-day", "5000".to_string()),
            ("x-ratelimit-remaining-day", self.remaining_day(inner.seen.len()).to_string()),
            ("x-ratelimit-reset-day", ((now / 86_400 + 1) * 86_400).to_string()),
        ] {
            rate.insert(name, HeaderValue::from_str(&value).expect("ascii"));
        }
        let key = inner.rotated_key.as_deref().unwrap_or(&self.options.api_key);
        let authorized = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {key}"));
        let fault = if authorized { inner.faults.pop_front() } else { None };
        if let Some(ApiFault::Raw { status, content_type, body }) = fault {
            drop(inner);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            self.record(method, path.into(), headers, status);
            let response = (status, [(header::CONTENT_TYPE, content_type)], body).into_response();
            return Err(Box::new(response));
        }
        let refusal = if !authorized {
            Some((StatusCode::UNAUTHORIZED, "unauthorized", "Invalid or missing API key".to_string(), None))
        } else if let Some(fault) = fault {
            Some(match fault {
                ApiFault::RateLimited(after) => {
                    (StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Too many requests".into(), Some(after))
                }
                ApiFault::ServerError | ApiFault::Raw { .. } => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "Something went wrong".into(), None)
                }
            })
        } else if self.options.per_minute_limit.is_some_and(|l| used > l) {
            Some((
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Per-minute limit reached".into(),
                Some((reset - now).max(1) as u64),
            ))
        } else if self.options.error_rate > 0.0
            && (inner.seen.len() as f64 * 0.618_034).fract() < self.options.error_rate
        {
            Some((StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "Something went wrong".into(), None))
        } else {
            None
        };
        drop(inner);
        match refusal {
            None => Ok(rate),
            Some((status, code, message, retry_after)) => {
                self.record(method, path.into(), headers, status);
                let mut response = error(status, code, &message);
                response.headers_mut().extend(rate);
                if let Some(after) = retry_after {
                    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(after));
                }
                Err(Box::new(response))
            }
        }
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let request_id = format!("req_{}", uuid::Uuid::new_v4().simple());
    (
        status,
        Json(json!({"error": {"code": code, "message": message, "request_id": request_id, "details": {}}})),
    )
        .into_response()
}

async fn get_export(State(shared): State<Shared>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let path = format!("/v1/exports/{id}");
    let rate = match shared.gate(&headers, &path, "GET") {
        Ok(rate) => rate,
        Err(refusal) => return *refusal,
    };
    let now = Utc::now();
    let body = {
        let mut inner = shared.inner.lock().unwrap();
        inner.exports.get_mut(&id).map(|export| {
            export.advance(now);
            export.to_json(&shared.files_base, &shared.options.api_key, now)
        })
    };
    let response = match body {
        Some(data) => (StatusCode::OK, rate, Json(json!({ "data": data }))).into_response(),
        None => {
            let mut r = error(StatusCode::NOT_FOUND, "not_found", "Export not found");
            r.headers_mut().extend(rate);
            r
        }
    };
    shared.record("GET", path, &headers, response.status());
    response
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn list_exports(
    State(shared): State<Shared>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let path = "/v1/exports".to_string();
    let rate = match shared.gate(&headers, &path, "GET") {
        Ok(rate) => rate,
        Err(refusal) => return *refusal,
    };
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, "invalid_parameter", "limit must be between 1 and 100");
    }
    let offset = q.offset.unwrap_or(0);
    shared.run_list_hook();
    let now = Utc::now();
    let (page, total) = {
        let mut inner = shared.inner.lock().unwrap();
        // Newest first, as DealMachine lists them.
        let mut ids: Vec<String> = inner.order.iter().rev().cloned().collect();
        ids.sort_by_key(|id| std::cmp::Reverse(inner.exports[id].created_at));
        let mut matching = Vec::new();
        for id in ids {
            let export = inner.exports.get_mut(&id).expect("listed exports exist");
            if let Lifecycle::Timed { .. } | Lifecycle::TimedFailure { .. } = export.spec.lifecycle {
                export.advance(now);
            }
            if q.status.as_deref().is_none_or(|s| s == export.current.as_str()) {
                let mut item = export.to_json(&shared.files_base, &shared.options.api_key, now);
                if shared.options.summary_list_items {
                    item.as_object_mut().expect("an object").remove("download_urls");
                }
                matching.push(item);
            }
        }
        let total = matching.len();
        (matching.into_iter().skip(offset).take(limit).collect::<Vec<_>>(), total)
    };
    shared.record("GET", path, &headers, StatusCode::OK);
    let has_more = offset + page.len() < total;
    (rate, Json(json!({"data": page, "pagination": {"limit": limit, "offset": offset, "total": total, "has_more": has_more}}))).into_response()
}

async fn create_export(State(shared): State<Shared>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let path = uri.path().to_string();
    let rate = match shared.gate(&headers, &path, "POST") {
        Ok(rate) => rate,
        Err(refusal) => return *refusal,
    };
    let options = &shared.options;
    let name = if path.contains("people") { "people_export" } else { "properties_export" };
    let seed = shared.inner.lock().unwrap().counter + 1;
    let date = Utc::now().format("%Y-%m-%d");
    let files = (0..options.files_per_export)
        .map(|i| {
            let file = FileSpec::csv(
                &format!("{name}_{date}_part{}.csv.gz", i + 1),
                seed * 100 + i as u64,
                options.rows_per_file,
            );
            match options.cut_first_download_after {
                Some(bytes) if i == 0 => file.with_fault(DownloadFault::CloseAfter(bytes)).once(),
                _ => file,
            }
        })
        .collect();
    let shape =
        options.shapes.get((seed as usize - 1) % options.shapes.len().max(1)).copied().unwrap_or_default();
    let spec = ExportSpec {
        name: name.into(),
        ..ExportSpec::timed(options.pending_for, options.processing_for, shape, files)
    };
    let sim = Simulator { shared: shared.clone(), addr: "0.0.0.0:0".parse().expect("addr"), ca_pem: None };
    let id = sim.add_export(spec);
    let now = Utc::now();
    let data = shared.inner.lock().unwrap().exports[&id].to_json(&shared.files_base, &options.api_key, now);
    shared.record("POST", path, &headers, StatusCode::CREATED);
    (StatusCode::CREATED, rate, Json(json!({ "data": data }))).into_response()
}

#[derive(Deserialize)]
struct Signed {
    #[serde(rename = "X-Goog-Date")]
    date: Option<String>,
    #[serde(rename = "X-Goog-Expires")]
    expires: Option<i64>,
    #[serde(rename = "X-Goog-Signature")]
    signature: Option<String>,
}

impl Signed {
    /// True when the signature is ours and the link has not expired.
    fn valid(&self, key: &str, path: &str, now: DateTime<Utc>) -> bool {
        let (Some(date), Some(expires), Some(sig)) = (&self.date, self.expires, &self.signature) else {
            return false;
        };
        let signed_at = chrono::NaiveDateTime::parse_from_str(date, GOOG_DATE).map(|d| d.and_utc());
        *sig == signature(key, path, date, expires)
            && signed_at.is_ok_and(|at| now < at + chrono::Duration::seconds(expires))
    }
}

async fn download(
    State(shared): State<Shared>,
    Path((id, index)): Path<(String, usize)>,
    Query(q): Query<Signed>,
    version: Version,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let path = format!("/files/{id}/{index}");
    let valid = q.valid(&shared.options.api_key, &path, Utc::now());
    let object = {
        let mut inner = shared.inner.lock().unwrap();
        inner.exports.get_mut(&id).and_then(|e| e.files.get_mut(index)).map(SimFile::serve)
    };
    let response = match object {
        _ if !valid => (StatusCode::FORBIDDEN, "<Error><Code>AccessDenied</Code><Message>Request has expired or the signature does not match.</Message></Error>").into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
        Some(object) if !object.answers() => {
            shared.record_version("GET", path, &headers, Some(version), None);
            // A handler cannot close its connection, but unwinding the connection's task does,
            // before a byte of the answer is written. resume_unwind skips the panic hook, so the
            // test output stays quiet.
            std::panic::resume_unwind(Box::new("simulated: closed without an answer"))
        }
        Some(object) => object.respond(&headers, uri.path_and_query().map_or("", |p| p.as_str())),
    };
    shared.record_version("GET", path, &headers, Some(version), Some(response.status()));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An export's progress readings, 0 to 100 % of the way through processing.
    fn readings(shape: Shape) -> Vec<u32> {
        (0..=10).map(|tenth| shape.progress(f64::from(tenth) / 10.0)).collect()
    }

    #[test]
    fn progress_rises_in_each_shape() {
        assert_eq!(readings(Shape::Steady), [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99]);
        assert_eq!(readings(Shape::StuckThenFast), [5, 5, 5, 5, 5, 5, 5, 5, 36, 68, 99]);
        assert_eq!(readings(Shape::Jumping), [0; 11]);
    }

    #[test]
    fn a_timed_export_is_pending_briefly_then_processing_then_completed() {
        let (pending, processing) = (Duration::from_secs(2), Duration::from_secs(10));
        let mut export = SimExport {
            id: "e".into(),
            spec: ExportSpec::timed(pending, processing, Shape::Steady, vec![]),
            files: vec![],
            created_at: Utc::now() - chrono::Duration::seconds(7),
            updated_at: Utc::now(),
            current: Status::Pending,
            history: vec![],
        };
        let created_at = export.created_at;
        let at = |seconds: i64| created_at + chrono::Duration::seconds(seconds);
        let mut seen = Vec::new();
        for seconds in [1, 7, 12] {
            let now = at(seconds);
            export.advance(now);
            seen.push((export.current, export.progress(now).0));
        }
        assert_eq!(seen, [(Status::Pending, 0), (Status::Processing, 50), (Status::Completed, 100)]);
    }
}
