//! The source side of a copy: one file downloaded as Google Cloud Storage serves it. It asks for
//! the stored bytes, reads what the host says about them (`x-goog-hash`, the generation, the
//! stored length and encoding), and resumes where a broken connection left off instead of
//! starting the file again.
//!
//! GCS's rules: <https://cloud.google.com/storage/docs/xml-api/reference-headers>,
//! <https://cloud.google.com/storage/docs/transcoding>.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::error::DisplayErrorContext;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use reqwest::header::{self, HeaderMap, HeaderName};
use reqwest::{Response, StatusCode};
use url::Url;

use super::TransferError;
use super::deadline::Deadline;
use crate::integrity::Announced;
use crate::metrics::Metrics;

/// GCS pins a read to one version of an object with this header.
const GENERATION_MATCH: HeaderName = HeaderName::from_static("x-goog-if-generation-match");
/// A resume request that failed outright waits this long, times its number, before the next.
const RESUME_BACKOFF: Duration = Duration::from_millis(200);

/// How many times one file's download may recover from a break, by resuming or by starting
/// again: one budget for every attempt at the file, so recovery always ends.
#[derive(Debug)]
pub(super) struct Recoveries {
    limit: u32,
    resumes: AtomicU32,
    restarts: AtomicU32,
}

impl Recoveries {
    pub(super) fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self { limit, resumes: AtomicU32::new(0), restarts: AtomicU32::new(0) })
    }

    /// Takes one resume from the budget, and says which resume it is.
    fn resume(&self) -> Option<u32> {
        self.spend(&self.resumes)
    }

    /// Takes one restart from the budget, and says which restart it is.
    pub(super) fn restart(&self) -> Option<u32> {
        self.spend(&self.restarts)
    }

    pub(super) fn resumes(&self) -> u32 {
        self.resumes.load(Ordering::Relaxed)
    }

    pub(super) fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    fn spend(&self, counter: &AtomicU32) -> Option<u32> {
        (self.resumes() + self.restarts() < self.limit).then(|| counter.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// Why the bytes stopped coming.
enum Break {
    Error(reqwest::Error),
    EndedEarly,
    Status(StatusCode),
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // reqwest's own message rarely says what happened; its causes do.
            Self::Error(e) => write!(f, "{}", DisplayErrorContext(e)),
            Self::EndedEarly => f.write_str("the body ended early"),
            Self::Status(status) => write!(f, "the resume was answered {status}"),
        }
    }
}

/// One file's bytes, from the first GET and as many resumes as it takes.
pub(super) struct Download {
    client: reqwest::Client,
    url: Url,
    expected: u64,
    /// Bytes handed out so far: a resume asks for the rest from here.
    received: u64,
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    /// The header that pins a resume to the object version already half received.
    pin: Option<(HeaderName, String)>,
    recoveries: Arc<Recoveries>,
    started: Instant,
    deadline: Deadline,
    metrics: Metrics,
}

impl Download {
    /// Sends the first GET and checks what the host says about the object against the size the
    /// API announced. Returns the download and the host's checksums.
    pub(super) async fn open(
        client: &reqwest::Client,
        url: &Url,
        expected: u64,
        recoveries: Arc<Recoveries>,
        (started, deadline): (Instant, Deadline),
        metrics: Metrics,
    ) -> Result<(Self, Announced), TransferError> {
        let response = client.get(url.clone()).send().await.map_err(download_error)?;
        if !response.status().is_success() {
            return Err(refused(response.status()));
        }
        let stored = StoredObject::from(response.headers());
        stored.check(expected, response.content_length())?;
        let download = Self {
            client: client.clone(),
            url: url.clone(),
            expected,
            received: 0,
            body: response.bytes_stream().boxed(),
            pin: stored.pin(),
            recoveries,
            started,
            deadline,
            metrics,
        };
        Ok((download, stored.announced))
    }

    /// The file's bytes, each exactly once, resumed across breaks.
    pub(super) fn into_stream(self) -> BoxStream<'static, Result<Bytes, TransferError>> {
        futures::stream::unfold(Some(self), |download| async move {
            let mut download = download?;
            match download.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(download))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed()
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, TransferError> {
        loop {
            let broke = match self.body.next().await {
                Some(Ok(chunk)) => {
                    self.received += chunk.len() as u64;
                    return Ok(Some(chunk));
                }
                None if self.received >= self.expected => return Ok(None),
                None => Break::EndedEarly,
                Some(Err(e)) => Break::Error(e.without_url()),
            };
            self.resume(broke).await?;
        }
    }

    /// Asks for the rest of the object, pinned to the version already half received, so that
    /// what follows goes into the same upload and the same running checks.
    async fn resume(&mut self, mut broke: Break) -> Result<(), TransferError> {
        let Some((pin, version)) = self.pin.clone() else {
            return Err(TransferError::Restart(format!(
                "{broke}, and the host named no generation or ETag to resume against"
            )));
        };
        loop {
            let Some(resume) = self.recoveries.resume() else {
                return Err(TransferError::BrokeOff {
                    offset: self.received,
                    expected: self.expected,
                    resumes: self.recoveries.resumes(),
                    reason: broke.to_string(),
                });
            };
            self.deadline.check_rest(self.expected, self.received, self.started)?;
            tracing::warn!(offset = self.received, resume, reason = %broke, "download broke off; resuming from the first byte not received");
            self.metrics.download_resumed();
            let sent = self
                .client
                .get(self.url.clone())
                .header(header::RANGE, format!("bytes={}-", self.received))
                .header(pin.clone(), &version)
                .send()
                .await;
            broke = match sent {
                Err(e) => Break::Error(e.without_url()),
                Ok(response) => match response.status() {
                    StatusCode::PARTIAL_CONTENT => {
                        self.check_range(&response)?;
                        self.body = response.bytes_stream().boxed();
                        return Ok(());
                    }
                    StatusCode::OK => {
                        return Err(TransferError::Restart(format!(
                            "the host answered 200 with the whole object where bytes {}- were asked for",
                            self.received
                        )));
                    }
                    StatusCode::PRECONDITION_FAILED | StatusCode::RANGE_NOT_SATISFIABLE => {
                        return Err(TransferError::Restart(format!(
                            "the object changed during the download ({})",
                            response.status()
                        )));
                    }
                    status if transient(status) => Break::Status(status),
                    status => return Err(refused(status)),
                },
            };
            // No answer, or one a moment may cure: the same byte again, a little later each time.
            tokio::time::sleep(RESUME_BACKOFF * resume).await;
        }
    }

    /// A resume must continue exactly where the bytes stopped, within the same object.
    fn check_range(&self, response: &Response) -> Result<(), TransferError> {
        let range = response.headers().get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok());
        let parsed = range.and_then(|r| {
            let (span, total) = r.strip_prefix("bytes ")?.split_once('/')?;
            let start = span.split_once('-')?.0.parse::<u64>().ok()?;
            Some((start, total.parse::<u64>().ok()))
        });
        match parsed {
            Some((start, total)) if start == self.received && total.is_none_or(|t| t == self.expected) => {
                Ok(())
            }
            _ => Err(TransferError::Restart(format!(
                "the host sent Content-Range {:?} where bytes {}- of {} were asked for",
                range.unwrap_or("(none)"),
                self.received,
                self.expected
            ))),
        }
    }
}

/// What the host says about the object it stores.
struct StoredObject {
    announced: Announced,
    etag: Option<String>,
    stored_length: Option<u64>,
    stored_gzip: bool,
    sent_gzip: bool,
}

impl From<&HeaderMap> for StoredObject {
    fn from(headers: &HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let is_gzip = |name: &str| text(name).is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
        let mut announced =
            Announced { generation: text("x-goog-generation").map(str::to_string), ..Announced::default() };
        // One header with both values, comma-separated, or one header per value.
        let hashes = headers.get_all("x-goog-hash").iter().filter_map(|v| v.to_str().ok());
        for (name, value) in hashes.flat_map(|v| v.split(',')).filter_map(|p| p.trim().split_once('=')) {
            match name {
                "crc32c" => announced.crc32c = Some(value.to_string()),
                "md5" => announced.md5 = Some(value.to_string()),
                _ => {}
            }
        }
        Self {
            announced,
            etag: text("etag").map(str::to_string),
            stored_length: text("x-goog-stored-content-length").and_then(|v| v.parse().ok()),
            stored_gzip: is_gzip("x-goog-stored-content-encoding"),
            sent_gzip: is_gzip("content-encoding"),
        }
    }
}

impl StoredObject {
    /// The relay stores the stored bytes, so they must be what is sent, at the announced size.
    fn check(&self, expected: u64, content_length: Option<u64>) -> Result<(), TransferError> {
        if self.stored_gzip && !self.sent_gzip {
            return Err(TransferError::Transcoded);
        }
        match content_length.or(self.stored_length) {
            Some(got) if got != expected => Err(TransferError::SizeMismatch { expected, got }),
            _ => Ok(()),
        }
    }

    /// The generation where the host has one (GCS), else the ETag.
    fn pin(&self) -> Option<(HeaderName, String)> {
        let generation = self.announced.generation.clone().map(|g| (GENERATION_MATCH, g));
        generation.or_else(|| self.etag.clone().map(|tag| (header::IF_MATCH, tag)))
    }
}

/// The download client. It asks for the stored bytes and never decodes them on the way, so a
/// gzip object lands byte for byte and its checksums still apply. Redirects follow `policy`.
///
/// It speaks HTTP/1.1 only, so each download has a connection, and flow control, of its own. Over
/// HTTP/2 every download from one host shares one connection window: a copy waiting for a part
/// slot stops reading, its stream keeps taking the window's credit, and with enough of them the
/// copies that hold the slots receive nothing at all until the idle timeout. On HTTP/1.1 an
/// unread download stalls only itself (TCP pushes back on its own connection).
pub(super) fn client(
    policy: &super::UrlPolicy,
    idle: Duration,
    roots: &[reqwest::Certificate],
) -> Result<reqwest::Client, reqwest::Error> {
    let headers = HeaderMap::from_iter([(header::ACCEPT_ENCODING, header::HeaderValue::from_static("gzip"))]);
    let builder = reqwest::Client::builder()
        .http1_only()
        .redirect(policy.clone().redirects())
        .default_headers(headers)
        .no_gzip()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(idle)
        .user_agent(crate::USER_AGENT);
    match roots {
        [] => builder.build(),
        roots => builder.tls_certs_merge(roots.iter().cloned()).build(),
    }
}

/// The statuses Google's retry strategy calls transient (408, 429 and 5xx): a moment may cure them.
/// <https://cloud.google.com/storage/docs/retry-strategy>
pub(super) fn transient(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// A refusal by the file host: the link's own failure (expired, revoked, or signed with a key
/// since rotated), or some other status.
fn refused(status: StatusCode) -> TransferError {
    match status {
        StatusCode::BAD_REQUEST
        | StatusCode::UNAUTHORIZED
        | StatusCode::FORBIDDEN
        | StatusCode::NOT_FOUND
        | StatusCode::GONE => TransferError::SourceGone(status),
        status => TransferError::SourceStatus(status),
    }
}

fn download_error(e: reqwest::Error) -> TransferError {
    // The signed query string is a credential; keep it out of messages.
    let e = e.without_url();
    if e.is_redirect() {
        TransferError::UrlRefused(format!(
            "{e}: {}",
            std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default()
        ))
    } else {
        TransferError::Download(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn x_goog_hash_is_read_in_either_layout() {
        let combined =
            StoredObject::from(&headers(&[("x-goog-hash", "crc32c=n03x6A==,md5=Ojk9c3dhfxgoKVVHYwFbHQ==")]));
        let separate = StoredObject::from(&headers(&[
            ("x-goog-hash", "crc32c=n03x6A=="),
            ("x-goog-hash", "md5=Ojk9c3dhfxgoKVVHYwFbHQ=="),
        ]));
        for stored in [combined, separate] {
            assert_eq!(stored.announced.crc32c.as_deref(), Some("n03x6A=="));
            assert_eq!(stored.announced.md5.as_deref(), Some("Ojk9c3dhfxgoKVVHYwFbHQ=="));
        }
        let md5_only = StoredObject::from(&headers(&[("x-goog-hash", "md5=Ojk9c3dhfxgoKVVHYwFbHQ==")]));
        assert_eq!(md5_only.announced.crc32c, None);
        assert_eq!(StoredObject::from(&HeaderMap::new()).announced, Announced::default());
    }

    #[test]
    fn resumes_are_pinned_to_the_generation_or_else_the_etag() {
        let gcs = StoredObject::from(&headers(&[("x-goog-generation", "1767"), ("etag", "\"abc\"")]));
        assert_eq!(gcs.pin(), Some((GENERATION_MATCH, "1767".into())));
        let other = StoredObject::from(&headers(&[("etag", "\"abc\"")]));
        assert_eq!(other.pin(), Some((header::IF_MATCH, "\"abc\"".into())));
        assert_eq!(StoredObject::from(&HeaderMap::new()).pin(), None);
    }

    #[test]
    fn a_transcoded_or_wrongly_sized_object_is_refused_before_a_byte_is_stored() {
        let transcoded = StoredObject::from(&headers(&[("x-goog-stored-content-encoding", "gzip")]));
        assert!(matches!(transcoded.check(10, None), Err(TransferError::Transcoded)));
        let gzip_as_stored = StoredObject::from(&headers(&[
            ("x-goog-stored-content-encoding", "gzip"),
            ("content-encoding", "gzip"),
            ("x-goog-stored-content-length", "10"),
        ]));
        assert!(gzip_as_stored.check(10, None).is_ok());
        assert!(matches!(gzip_as_stored.check(11, None), Err(TransferError::SizeMismatch { got: 10, .. })));
        assert!(matches!(gzip_as_stored.check(10, Some(9)), Err(TransferError::SizeMismatch { got: 9, .. })));
    }

    #[test]
    fn the_budget_covers_resumes_and_restarts_together() {
        let budget = Recoveries::new(3);
        assert_eq!(budget.resume(), Some(1));
        assert_eq!(budget.restart(), Some(1));
        assert_eq!(budget.resume(), Some(2));
        assert_eq!(budget.resume(), None);
        assert_eq!(budget.restart(), None);
        assert_eq!((budget.resumes(), budget.restarts()), (2, 1));
    }

    /// The reason in "the download broke off at byte N of M (reason)".
    #[test]
    fn a_break_says_why_the_bytes_stopped() {
        assert_eq!(Break::EndedEarly.to_string(), "the body ended early");
        let refused = Break::Status(StatusCode::SERVICE_UNAVAILABLE).to_string();
        assert_eq!(refused, "the resume was answered 503 Service Unavailable");
    }
}
