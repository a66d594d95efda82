//! A webhook receiver that checks each request's Standard Webhooks signature with the
//! `standardwebhooks` crate, not with the relay's own code, and keeps what it got.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;

/// One request as received.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub webhook_id: String,
    pub timestamp: String,
    pub signature: String,
    pub user_agent: String,
    pub content_type: String,
    pub body: Value,
    pub raw: String,
    /// True when the signature verified against the receiver's secret.
    pub verified: bool,
    /// The status the receiver answered with; 0 when it never answered.
    pub answered: u16,
    /// When the request arrived.
    #[serde(skip)]
    pub at: std::time::Instant,
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    /// Answers to give, one per request, before answering 200 again.
    script: VecDeque<Answer>,
    /// Exports whose webhooks are never answered, whatever the script says.
    stalled: Vec<String>,
}

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// This status; a 429 comes with `Retry-After: 1`, a 3xx with a `Location` back to this
    /// receiver, which a client that follows redirects would POST to again.
    Status(u16),
    /// Never answer, as a stalled endpoint.
    Stall,
    /// This status, with a body of this many bytes.
    Huge(u16, usize),
    /// This status, with a body that never ends.
    Endless(u16),
}

#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Mutex<Inner>>,
    verifier: Arc<standardwebhooks::Webhook>,
    quiet: bool,
    pub addr: SocketAddr,
}

impl Receiver {
    /// Starts on `addr` (port 0 picks a free one), verifying with the `whsec_` `secret`.
    pub async fn start(secret: &str, addr: SocketAddr, quiet: bool) -> std::io::Result<Self> {
        let verifier = standardwebhooks::Webhook::new(secret)
            .map_err(|e| std::io::Error::other(format!("bad secret: {e:?}")))?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let receiver =
            Self { inner: Arc::default(), verifier: Arc::new(verifier), quiet, addr: listener.local_addr()? };
        let app = Router::new()
            .route("/webhook", post(receive))
            .route("/received", get(list))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(receiver)
    }

    pub fn url(&self) -> String {
        format!("http://{}/webhook", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// Answers the next requests with these statuses, then with 200 again.
    pub fn answer_next(&self, statuses: &[u16]) {
        self.script(&statuses.iter().map(|s| Answer::Status(*s)).collect::<Vec<_>>());
    }

    /// Answers the next requests these ways, then with 200 again.
    pub fn script(&self, answers: &[Answer]) {
        self.inner.lock().unwrap().script.extend(answers);
    }

    /// Never answers a webhook about this export, as an endpoint that hangs on one of them.
    pub fn stall_export(&self, export_id: &str) {
        self.inner.lock().unwrap().stalled.push(export_id.to_string());
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let verified = receiver.verifier.verify(&body, &headers).is_ok();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let answer = {
        let mut inner = receiver.inner.lock().unwrap();
        let export_id = parsed["data"]["export_id"].as_str().unwrap_or_default();
        if inner.stalled.iter().any(|id| id == export_id) {
            Answer::Stall
        } else {
            inner.script.pop_front().unwrap_or(Answer::Status(if verified { 200 } else { 401 }))
        }
    };
    let answered = match answer {
        Answer::Status(status) => status,
        Answer::Stall => 0,
        Answer::Huge(status, _) | Answer::Endless(status) => status,
    };
    if !receiver.quiet {
        println!(
            "webhook {} {} export={} signature {}",
            parsed["type"].as_str().unwrap_or("?"),
            answered,
            parsed["data"]["export_id"].as_str().unwrap_or("?"),
            if verified { "verified" } else { "INVALID" },
        );
    }
    receiver.inner.lock().unwrap().received.push(Received {
        webhook_id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        user_agent: header("user-agent"),
        content_type: header("content-type"),
        body: parsed,
        raw: String::from_utf8_lossy(&body).into_owned(),
        verified,
        answered,
        at: std::time::Instant::now(),
    });
    match answer {
        Answer::Stall => std::future::pending().await,
        Answer::Huge(status, size) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            (status, vec![b'x'; size]).into_response()
        }
        Answer::Endless(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let chunk = axum::body::Bytes::from(vec![b'x'; 64 * 1024]);
            let endless = futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            (status, axum::body::Body::from_stream(endless)).into_response()
        }
        Answer::Status(status @ 300..=399) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
            (status, [(header::LOCATION, "/webhook")]).into_response()
        }
        Answer::Status(429) => (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")]).into_response(),
        Answer::Status(status) => {
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR).into_response()
        }
    }
}

async fn list(State(receiver): State<Receiver>) -> Json<Vec<Received>> {
    Json(receiver.received())
}
