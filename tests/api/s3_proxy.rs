//! A fault proxy in front of moto's S3 and SQS: what the relay asked them to do, and S3 failures
//! on demand.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use export_relay::manifest::Ledger;
use export_relay::startup;

type FailWhen = dyn Fn(&str) -> bool + Send + Sync;
/// An answer to give instead of moto's, chosen by method and path.
type Rule = dyn Fn(&Method, &str) -> Option<(StatusCode, &'static str)> + Send + Sync;

/// Stands between the relay and moto: records every request, and answers `503 SlowDown` to
/// chosen `UploadPart` calls.
#[derive(Clone)]
pub struct FaultyS3 {
    moto: String,
    http: reqwest::Client,
    /// Fails the UploadPart tries whose query string satisfies this.
    fail: Arc<FailWhen>,
    rule: Arc<Rule>,
    pub injected: Arc<AtomicUsize>,
    /// The JSON body of each SQS `SendMessage`, in order.
    sqs_sends: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Requests that asked S3 to copy from an object (`x-amz-copy-source`).
    copies: Arc<AtomicUsize>,
    /// `METHOD path?query` and the headers of each request, in order.
    sent: Arc<Mutex<Vec<(String, HeaderMap)>>>,
    /// The status answered to each manifest write, and the manifest sent.
    manifest_puts: Arc<Mutex<Vec<(u16, serde_json::Value)>>>,
    /// How long each UploadPart is held before it goes on to moto, so parts pile up.
    part_hold: Duration,
    /// UploadPart requests not answered yet, and the most there were at once.
    parts_in_flight: Arc<AtomicUsize>,
    peak_parts_in_flight: Arc<AtomicUsize>,
}

/// A message the relay sent to SQS, as SQS was asked to take it.
#[derive(Debug)]
pub struct SentMessage {
    pub queue_url: String,
    pub body: serde_json::Value,
    pub delay_seconds: i64,
}

impl FaultyS3 {
    /// A proxy that only records.
    pub async fn recording() -> (Self, String) {
        Self::start(|_| false).await
    }

    /// A proxy that answers `rule`'s status and body where it gives one, and passes the rest.
    pub async fn answering(
        rule: impl Fn(&Method, &str) -> Option<(StatusCode, &'static str)> + Send + Sync + 'static,
    ) -> (Self, String) {
        Self::listen(Arc::new(|_: &str| false), Arc::new(rule), Duration::ZERO).await
    }

    pub async fn start(fail: impl Fn(&str) -> bool + Send + Sync + 'static) -> (Self, String) {
        Self::listen(Arc::new(fail), Arc::new(|_: &Method, _: &str| None), Duration::ZERO).await
    }

    /// A proxy that holds each UploadPart for `hold` before passing it on.
    pub async fn holding_parts(hold: Duration) -> (Self, String) {
        Self::listen(Arc::new(|_: &str| false), Arc::new(|_: &Method, _: &str| None), hold).await
    }

    async fn listen(fail: Arc<FailWhen>, rule: Arc<Rule>, part_hold: Duration) -> (Self, String) {
        let proxy = Self {
            moto: std::env::var("AWS_ENDPOINT_URL").unwrap(),
            http: reqwest::Client::new(),
            fail,
            rule,
            injected: Arc::default(),
            sqs_sends: Arc::default(),
            copies: Arc::default(),
            sent: Arc::default(),
            manifest_puts: Arc::default(),
            part_hold,
            parts_in_flight: Arc::default(),
            peak_parts_in_flight: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(forward)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(proxy.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (proxy, url)
    }

    /// How many requests of `method` had a query string containing `query`.
    pub fn count(&self, method: &str, query: &str) -> usize {
        let requests = self.requests();
        requests.iter().filter(|r| r.starts_with(&format!("{method} ")) && r.contains(query)).count()
    }

    /// CreateMultipartUpload calls made.
    pub fn uploads_started(&self) -> usize {
        self.count("POST", "?uploads")
    }

    /// AbortMultipartUpload calls made.
    pub fn uploads_aborted(&self) -> usize {
        self.count("DELETE", "uploadId=")
    }

    /// The `x-amz-checksum-crc64nvme` headers sent, with `METHOD path?query` of their request.
    pub fn crc64nvme_sent(&self) -> Vec<(String, String)> {
        self.header_sent("x-amz-checksum-crc64nvme")
    }

    /// `METHOD path?query` of each request, in order.
    fn requests(&self) -> Vec<String> {
        self.sent.lock().unwrap().iter().map(|(request, _)| request.clone()).collect()
    }

    /// The `name` headers sent, with `METHOD path?query` of each request that sent one.
    pub fn header_sent(&self, name: &str) -> Vec<(String, String)> {
        let sent = self.sent.lock().unwrap();
        let value = |headers: &HeaderMap| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        sent.iter().filter_map(|(request, headers)| Some((request.clone(), value(headers)?))).collect()
    }

    /// Each `PutObject` of a `manifest.json`, in order: the status S3 answered and the manifest.
    pub fn manifest_puts(&self) -> Vec<(u16, serde_json::Value)> {
        self.manifest_puts.lock().unwrap().clone()
    }

    /// The SQS `SendMessage` calls made, in order.
    pub fn sqs_sent(&self) -> Vec<SentMessage> {
        let sends = self.sqs_sends.lock().unwrap();
        sends
            .iter()
            .map(|send| SentMessage {
                queue_url: send["QueueUrl"].as_str().unwrap_or_default().to_string(),
                body: serde_json::from_str(send["MessageBody"].as_str().unwrap_or_default())
                    .unwrap_or(serde_json::Value::Null),
                delay_seconds: send["DelaySeconds"].as_i64().unwrap_or(0),
            })
            .collect()
    }

    /// The most UploadPart requests that were waiting for their answer at once.
    pub fn peak_parts_in_flight(&self) -> usize {
        self.peak_parts_in_flight.load(Ordering::SeqCst)
    }

    /// CopyObject and UploadPartCopy calls made: the requests naming an `x-amz-copy-source`.
    pub fn copies(&self) -> usize {
        self.copies.load(Ordering::SeqCst)
    }

    /// Requests that start writing the object at `key`: PutObject (or CopyObject) and
    /// CreateMultipartUpload, but not the parts of an upload.
    pub fn writes_to(&self, key: &str) -> usize {
        let requests = self.requests();
        let starts_object = |request: &&String| {
            let (method, uri) = request.split_once(' ').unwrap();
            let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
            let put = method == "PUT" && !query.contains("uploadId=");
            let create = method == "POST" && query.contains("uploads") && !query.contains("uploadId=");
            path.ends_with(&format!("/{key}")) && (put || create)
        };
        requests.iter().filter(starts_object).count()
    }
}

async fn forward(
    State(proxy): State<FaultyS3>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = uri.query().unwrap_or_default();
    proxy.sent.lock().unwrap().push((format!("{method} {uri}"), headers.clone()));
    if headers.get("x-amz-target").is_some_and(|target| target == "AmazonSQS.SendMessage") {
        proxy.sqs_sends.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or_default());
    }
    if headers.contains_key("x-amz-copy-source") {
        proxy.copies.fetch_add(1, Ordering::SeqCst);
    }
    if let Some((status, body)) = (proxy.rule)(&method, uri.path()) {
        proxy.injected.fetch_add(1, Ordering::SeqCst);
        return (status, body).into_response();
    }
    let upload_part = method == Method::PUT && query.contains("partNumber=") && query.contains("uploadId=");
    if upload_part && (proxy.fail)(query) {
        proxy.injected.fetch_add(1, Ordering::SeqCst);
        let xml = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
        return (StatusCode::SERVICE_UNAVAILABLE, xml).into_response();
    }
    let manifest = (method == Method::PUT && uri.path().ends_with("/manifest.json")).then(|| {
        // The JSON, without any aws-chunked framing around it.
        let (start, end) = (body.iter().position(|b| *b == b'{'), body.iter().rposition(|b| *b == b'}'));
        let json = start.zip(end).and_then(|(s, e)| serde_json::from_slice(&body[s..=e]).ok());
        json.unwrap_or_default()
    });
    let url = format!("{}{}", proxy.moto, uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let mut request = proxy.http.request(method, url).body(body);
    for (name, value) in &headers {
        if name != "host" {
            request = request.header(name, value);
        }
    }
    if upload_part {
        let now = proxy.parts_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        proxy.peak_parts_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(proxy.part_hold).await;
    }
    let answer = request.send().await.unwrap();
    if upload_part {
        proxy.parts_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
    let status = answer.status();
    if let Some(manifest) = manifest {
        proxy.manifest_puts.lock().unwrap().push((status.as_u16(), manifest));
    }
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap();
    let mut response = (status, bytes).into_response();
    *response.headers_mut() = headers;
    response
}

/// Ignores endpoint settings from the environment, so one client can be pointed elsewhere
/// while the other tests keep using `AWS_ENDPOINT_URL`.
#[derive(Debug)]
struct NoEnvironment;

impl aws_types::service_config::LoadServiceConfig for NoEnvironment {
    fn load_config(&self, _key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
        None
    }
}

/// The relay, built to reach S3 (and SQS) through `proxy_url`.
pub async fn relay_through(app: &crate::helpers::TestApp, proxy_url: &str) -> export_relay::handler::Relay {
    startup::build_relay(&app.config, &aws_through(proxy_url).await).unwrap()
}

/// The relay's ledger in the test's bucket, reached through `proxy_url`, as the relay builds it.
pub async fn ledger_through(app: &crate::helpers::TestApp, proxy_url: &str) -> Ledger {
    let s3 = startup::s3_client(&app.config, &aws_through(proxy_url).await);
    Ledger::new(s3, app.config.bucket.clone(), app.config.prefix.clone())
}

async fn aws_through(proxy_url: &str) -> aws_config::SdkConfig {
    startup::aws_config().await.into_builder().service_config(NoEnvironment).endpoint_url(proxy_url).build()
}
