//! Streaming copy from a download URL into S3, in constant memory.
//!
//! Bytes go from the HTTP response into fixed-size parts, and each full part is uploaded while
//! the next one fills. Parts in flight share one semaphore across every copy in the process, so
//! memory stays below `part_size * parts_in_flight` whatever the size or number of files.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart, MetadataDirective,
};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{StatusCode, redirect};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use url::Url;

use crate::integrity::{Beside, CorruptGzip, Inspection, Inspector};

/// Longest file name kept in a key; S3 allows 1024 bytes for the whole key.
const MAX_FILE_NAME_LEN: usize = 200;
/// How long a download may send nothing before it is given up.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Redirect hops a download may take, each to an allowed host.
const MAX_REDIRECTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("download URL refused: {0}")]
    UrlRefused(String),
    #[error("file name {0:?} cannot be used as an S3 key: {1}")]
    BadFileName(String, &'static str),
    #[error("the file host refused the download with {0}: the link has expired or was revoked")]
    SourceGone(StatusCode),
    #[error("the file host answered {0}")]
    SourceStatus(StatusCode),
    #[error("download failed: {0}")]
    Download(#[source] reqwest::Error),
    #[error("the download was {got} bytes where {expected} were announced")]
    SizeMismatch { expected: u64, got: u64 },
    #[error(transparent)]
    Corrupt(CorruptGzip),
    #[error(
        "not enough time left to copy the remaining {remaining} bytes ({seconds_left} s left); SQS will deliver the record again"
    )]
    OutOfTime { remaining: u64, seconds_left: u64 },
    #[error("S3 {operation} failed: {message}")]
    S3 { operation: &'static str, message: String },
}

impl TransferError {
    /// True when copying again cannot help: the URL or name is unacceptable, or the file
    /// itself is broken (the size check and TLS rule out damage in transit).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::UrlRefused(_) | Self::BadFileName(..) | Self::Corrupt(_))
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::UrlRefused(_) => "download_url_refused",
            Self::BadFileName(..) => "bad_file_name",
            Self::SourceGone(_) => "download_link_expired",
            Self::SourceStatus(_) => "download_http_error",
            Self::Download(_) => "download_failed",
            Self::SizeMismatch { .. } => "size_mismatch",
            Self::Corrupt(_) => "corrupt_file",
            Self::OutOfTime { .. } => "out_of_time",
            Self::S3 { .. } => "s3_error",
        }
    }

    fn s3(operation: &'static str, error: impl std::error::Error) -> Self {
        Self::S3 { operation, message: DisplayErrorContext(error).to_string() }
    }
}

/// Which download URLs the relay will fetch: https (or http when allowed) on listed hosts.
#[derive(Debug, Clone)]
pub struct UrlPolicy {
    pub hosts: Vec<String>,
    pub allow_insecure_http: bool,
}

impl UrlPolicy {
    pub fn check(&self, url: &Url) -> Result<(), String> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_insecure_http => {}
            scheme => return Err(format!("scheme {scheme}:// is not allowed, only https://")),
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if self.hosts.contains(&host) {
            Ok(())
        } else {
            Err(format!("host {host:?} is not in DOWNLOAD_HOSTS"))
        }
    }

    /// Redirects are followed a few hops, and only to hosts the policy allows.
    fn redirects(self) -> redirect::Policy {
        redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match self.check(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(reason) => attempt.error(format!("redirect refused: {reason}")),
            }
        })
    }
}

/// Where a file goes, and what the object records about it.
#[derive(Debug, Clone)]
pub struct Destination {
    pub key: String,
    /// The API's file name, which picks the content checks.
    pub filename: String,
    pub content_type: &'static str,
    pub metadata: HashMap<String, String>,
}

/// A file safely in S3, with what was checked on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub key: String,
    pub size: u64,
    pub parts: usize,
    pub elapsed: Duration,
    pub inspection: Inspection,
}

/// When this invocation must be done, so a copy can stop cleanly before Lambda kills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// Time kept back for aborting the upload and answering Lambda.
    const MARGIN: Duration = Duration::from_secs(5);

    pub const NONE: Self = Self(None);

    pub fn at(instant: Instant) -> Self {
        Self(Some(instant))
    }

    /// From Lambda's `Lambda-Runtime-Deadline-Ms`: epoch milliseconds. Some emulators send a
    /// bare duration instead (cargo-lambda sends `600000`); a value too small to be a date this
    /// century is read that way.
    pub fn from_lambda(deadline_ms: u64) -> Self {
        const YEAR_2001_MS: u64 = 978_307_200_000;
        let left = if deadline_ms < YEAR_2001_MS {
            Duration::from_millis(deadline_ms)
        } else {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            Duration::from_millis(deadline_ms).saturating_sub(now)
        };
        Self::at(Instant::now() + left)
    }

    /// Fails if `remaining` bytes, at `rate` bytes a second so far, would not arrive in time.
    fn check(self, remaining: u64, rate: Option<f64>) -> Result<(), TransferError> {
        let Some(deadline) = self.0 else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now()).saturating_sub(Self::MARGIN);
        let needed = rate
            .filter(|r| *r > 0.0)
            .map_or(Duration::ZERO, |r| Duration::from_secs_f64(remaining as f64 / r));
        if left.is_zero() || needed > left {
            return Err(TransferError::OutOfTime { remaining, seconds_left: left.as_secs() });
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct Transfer {
    s3: aws_sdk_s3::Client,
    http: reqwest::Client,
    bucket: String,
    policy: UrlPolicy,
    part_size: usize,
    part_slots: Arc<Semaphore>,
}

impl Transfer {
    pub fn new(
        s3: aws_sdk_s3::Client,
        bucket: String,
        policy: UrlPolicy,
        part_size: usize,
        parts_in_flight: usize,
    ) -> Result<Self, reqwest::Error> {
        let http = download_client(&policy, DEFAULT_IDLE_TIMEOUT)?;
        Ok(Self {
            s3,
            http,
            bucket,
            policy,
            part_size,
            part_slots: Arc::new(Semaphore::new(parts_in_flight)),
        })
    }

    /// Parses a download URL and checks it against the policy.
    pub fn check_url(&self, source: &str) -> Result<Url, TransferError> {
        let url = Url::parse(source).map_err(|e| TransferError::UrlRefused(format!("not a URL ({e})")))?;
        self.policy.check(&url).map_err(TransferError::UrlRefused)?;
        Ok(url)
    }

    /// Gives up on a download that sends nothing for `idle`; the invocation's deadline bounds
    /// the whole copy.
    pub fn with_idle_timeout(self, idle: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self { http: download_client(&self.policy, idle)?, ..self })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Copies one file from `source` to `destination`, whose size must be `expected_size`.
    ///
    /// Either the whole, checked object lands at its key or nothing does: a multipart upload
    /// that fails, for any reason this process lives to see, is aborted.
    pub async fn copy(
        &self,
        source: &str,
        expected_size: u64,
        destination: &Destination,
        deadline: Deadline,
    ) -> Result<Copied, TransferError> {
        let started = Instant::now();
        deadline.check(expected_size, None)?;
        let url = self.check_url(source)?;
        let response = self.http.get(url).send().await.map_err(download_error)?;
        match response.status() {
            status if status.is_success() => {}
            status @ (StatusCode::BAD_REQUEST
            | StatusCode::FORBIDDEN
            | StatusCode::NOT_FOUND
            | StatusCode::GONE) => {
                return Err(TransferError::SourceGone(status));
            }
            status => return Err(TransferError::SourceStatus(status)),
        }
        if let Some(announced) = response.content_length().filter(|len| *len != expected_size) {
            return Err(TransferError::SizeMismatch { expected: expected_size, got: announced });
        }
        let inspector = Inspector::for_file(&destination.filename);
        let mut body = PartReader::new(response.bytes_stream(), expected_size, self.part_size, inspector);
        let slot = self.slot().await;
        let first = body.next_part().await?;
        let (parts, inspection) = if body.finished() {
            let inspection = body.inspection().await?;
            self.put_whole(destination, first, &inspection).await?;
            (1, inspection)
        } else {
            self.put_multipart(destination, (first, slot), &mut body, (started, deadline)).await?
        };
        Ok(Copied {
            key: destination.key.clone(),
            size: expected_size,
            parts,
            elapsed: started.elapsed(),
            inspection,
        })
    }

    async fn slot(&self) -> OwnedSemaphorePermit {
        self.part_slots.clone().acquire_owned().await.expect("the part semaphore is never closed")
    }

    /// A file that fits in one part goes up in one request, checksum and all.
    async fn put_whole(
        &self,
        destination: &Destination,
        bytes: Bytes,
        inspection: &Inspection,
    ) -> Result<(), TransferError> {
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(&destination.key)
            .content_type(destination.content_type)
            .set_metadata(Some(with_sha256(destination, inspection)))
            .checksum_crc64_nvme(&inspection.crc64nvme)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| TransferError::s3("PutObject", e))?;
        Ok(())
    }

    async fn put_multipart(
        &self,
        destination: &Destination,
        first: (Bytes, OwnedSemaphorePermit),
        body: &mut PartReader<impl Stream<Item = reqwest::Result<Bytes>> + Unpin>,
        timing: (Instant, Deadline),
    ) -> Result<(usize, Inspection), TransferError> {
        let upload_id = self
            .s3
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&destination.key)
            .content_type(destination.content_type)
            .set_metadata(Some(destination.metadata.clone()))
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .checksum_type(ChecksumType::FullObject)
            .send()
            .await
            .map_err(|e| TransferError::s3("CreateMultipartUpload", e))?
            .upload_id
            .ok_or_else(|| TransferError::S3 {
                operation: "CreateMultipartUpload",
                message: "no upload ID".into(),
            })?;
        let completed = async {
            let parts = self.upload_parts(&destination.key, &upload_id, first, body, timing).await?;
            let inspection = body.inspection().await?;
            let count = self.complete(&destination.key, &upload_id, parts, &inspection).await?;
            Ok((count, inspection))
        }
        .await;
        if completed.is_err() {
            self.abort(&destination.key, &upload_id).await;
        }
        let (count, inspection) = completed?;
        self.set_metadata(destination, &inspection).await?;
        Ok((count, inspection))
    }

    /// Uploads parts as they fill, each in its own task, holding a slot until it is stored.
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: (Bytes, OwnedSemaphorePermit),
        body: &mut PartReader<impl Stream<Item = reqwest::Result<Bytes>> + Unpin>,
        (started, deadline): (Instant, Deadline),
    ) -> Result<Vec<CompletedPart>, TransferError> {
        let mut uploads = JoinSet::new();
        let mut parts = Vec::new();
        let (mut bytes, mut slot) = first;
        for number in 1.. {
            uploads.spawn(self.upload_part(key, upload_id, number, bytes, slot));
            while let Some(done) = uploads.try_join_next() {
                parts.push(joined(done)?);
            }
            if body.finished() {
                break;
            }
            let rate = body.received as f64 / started.elapsed().as_secs_f64().max(1e-3);
            deadline.check(body.expected - body.received, Some(rate))?;
            slot = self.slot().await;
            bytes = body.next_part().await?;
        }
        while let Some(done) = uploads.join_next().await {
            parts.push(joined(done)?);
        }
        parts.sort_by_key(|p| p.part_number);
        Ok(parts)
    }

    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        bytes: Bytes,
        slot: OwnedSemaphorePermit,
    ) -> impl Future<Output = Result<CompletedPart, TransferError>> + Send + 'static {
        let request = self
            .s3
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .body(ByteStream::from(bytes));
        async move {
            let output = request.send().await.map_err(|e| TransferError::s3("UploadPart", e))?;
            drop(slot);
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(output.e_tag)
                .set_checksum_crc64_nvme(output.checksum_crc64_nvme)
                .build())
        }
    }

    /// Completes the upload with the whole file's CRC64NVME, which S3 checks against what it
    /// stored.
    async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
        inspection: &Inspection,
    ) -> Result<usize, TransferError> {
        let count = parts.len();
        self.s3
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .checksum_type(ChecksumType::FullObject)
            .checksum_crc64_nvme(&inspection.crc64nvme)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| TransferError::s3("CompleteMultipartUpload", e))?;
        Ok(count)
    }

    /// S3 fixes metadata when a multipart upload starts, before the SHA-256 is known. A copy of
    /// the object onto itself, inside S3, adds it: no byte passes through the relay again.
    async fn set_metadata(
        &self,
        destination: &Destination,
        inspection: &Inspection,
    ) -> Result<(), TransferError> {
        self.s3
            .copy_object()
            .bucket(&self.bucket)
            .key(&destination.key)
            .copy_source(format!("{}/{}", self.bucket, urlencoding(&destination.key)))
            .metadata_directive(MetadataDirective::Replace)
            .content_type(destination.content_type)
            .set_metadata(Some(with_sha256(destination, inspection)))
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .send()
            .await
            .map_err(|e| TransferError::s3("CopyObject", e))?;
        Ok(())
    }

    /// A GET URL for the object that works without AWS credentials until it expires (or until
    /// the signing credentials do: a Lambda role's session lasts hours, not days).
    pub async fn presign(&self, key: &str, ttl: Duration) -> Result<String, TransferError> {
        let config = PresigningConfig::expires_in(ttl)
            .map_err(|e| TransferError::S3 { operation: "presign GetObject", message: e.to_string() })?;
        let request = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| TransferError::s3("presign GetObject", e))?;
        Ok(request.uri().to_string())
    }

    /// Best effort: a failed abort is left to the bucket's lifecycle rule, and logged.
    async fn abort(&self, key: &str, upload_id: &str) {
        let aborted =
            self.s3.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(upload_id).send().await;
        if let Err(e) = aborted {
            tracing::warn!(key, error = %DisplayErrorContext(e), "could not abort multipart upload; the lifecycle rule will");
        }
    }
}

fn download_client(policy: &UrlPolicy, idle: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(policy.clone().redirects())
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(idle)
        .user_agent(crate::USER_AGENT)
        .build()
}

fn with_sha256(destination: &Destination, inspection: &Inspection) -> HashMap<String, String> {
    let mut metadata = destination.metadata.clone();
    metadata.insert("sha256".into(), inspection.sha256.clone());
    metadata
}

/// A copy source is URL-encoded; `/` stays, as it separates the key's folders.
fn urlencoding(key: &str) -> String {
    const KEEP: &AsciiSet =
        &NON_ALPHANUMERIC.remove(b'/').remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    utf8_percent_encode(key, KEEP).to_string()
}

fn joined(
    done: Result<Result<CompletedPart, TransferError>, tokio::task::JoinError>,
) -> Result<CompletedPart, TransferError> {
    done.unwrap_or_else(|e| {
        Err(TransferError::S3 { operation: "UploadPart", message: format!("upload task ended: {e}") })
    })
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

/// Cuts a byte stream into parts of `part_size`, checks its length against the announced size
/// as it goes (an over-long body is stopped early, a short one caught at the end), and shows
/// every byte to the inspector.
struct PartReader<S> {
    stream: S,
    carry: Bytes,
    received: u64,
    expected: u64,
    part_size: usize,
    ended: bool,
    inspector: Option<Beside>,
}

impl<S: Stream<Item = reqwest::Result<Bytes>> + Unpin> PartReader<S> {
    fn new(stream: S, expected: u64, part_size: usize, inspector: Inspector) -> Self {
        Self {
            stream,
            carry: Bytes::new(),
            received: 0,
            expected,
            part_size,
            ended: false,
            inspector: Some(Beside::spawn(inspector)),
        }
    }

    /// True once the stream has ended and every byte has been handed out.
    fn finished(&self) -> bool {
        self.ended && self.carry.is_empty()
    }

    /// The checks' findings, once the stream has ended (or the inspector has stopped).
    async fn inspection(&mut self) -> Result<Inspection, TransferError> {
        let inspector = self.inspector.take().expect("inspected once");
        inspector.finish().await.map_err(TransferError::Corrupt)
    }

    /// The next part: `part_size` bytes, or fewer for the last one.
    async fn next_part(&mut self) -> Result<Bytes, TransferError> {
        let mut part = BytesMut::with_capacity(self.part_size);
        loop {
            let room = self.part_size - part.len();
            if !self.carry.is_empty() {
                let take = room.min(self.carry.len());
                part.extend_from_slice(&self.carry.split_to(take));
            }
            if part.len() == self.part_size {
                // Peek so that a body ending exactly on a part boundary is seen as finished.
                if self.carry.is_empty() && !self.ended {
                    self.pull().await?;
                }
                return Ok(part.freeze());
            }
            if self.ended {
                return Ok(part.freeze());
            }
            self.pull().await?;
        }
    }

    async fn pull(&mut self) -> Result<(), TransferError> {
        match self.stream.next().await {
            Some(chunk) => {
                let chunk = chunk.map_err(download_error)?;
                self.received += chunk.len() as u64;
                if self.received > self.expected {
                    return Err(self.mismatch());
                }
                let inspector = self.inspector.as_mut().expect("inspected at the end only");
                if inspector.update(chunk.clone()).await.is_err() {
                    return Err(self.inspection().await.err().unwrap_or(TransferError::Corrupt(
                        CorruptGzip("the inspection stopped early".into()),
                    )));
                }
                self.carry = chunk;
            }
            None if self.received == self.expected => self.ended = true,
            None => return Err(self.mismatch()),
        }
        Ok(())
    }

    fn mismatch(&self) -> TransferError {
        TransferError::SizeMismatch { expected: self.expected, got: self.received }
    }
}

/// The key for one of an export's files: `{prefix}{export_id}/{name}`, where `name` is the API's
/// file name with anything but letters, digits, `.`, `-` and `_` replaced by `_`, so that no
/// name can leave the export's folder.
pub fn object_key(prefix: &str, export_id: &str, filename: &str) -> Result<String, TransferError> {
    let refuse =
        |why| Err(TransferError::BadFileName(filename.chars().take(MAX_FILE_NAME_LEN).collect(), why));
    if filename.is_empty() {
        return refuse("it is empty");
    }
    if filename.len() > MAX_FILE_NAME_LEN {
        return refuse("it is longer than 200 bytes");
    }
    let safe: String = filename
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect();
    if safe.chars().all(|c| c == '.') {
        return refuse("it is only dots");
    }
    Ok(format!("{prefix}{export_id}/{safe}"))
}

/// What the object says it is. Bytes are stored as downloaded, so a `.gz` stays gzip.
pub fn content_type(filename: &str) -> &'static str {
    let lower = filename.to_ascii_lowercase();
    if lower.ends_with(".gz") {
        "application/gzip"
    } else if lower.ends_with(".csv") {
        "text/csv"
    } else {
        "application/octet-stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    fn chunks(sizes: &[usize]) -> impl Stream<Item = reqwest::Result<Bytes>> + Unpin {
        let mut next = 0u8;
        let items: Vec<_> = sizes
            .iter()
            .map(|n| {
                let chunk: Vec<u8> = (0..*n)
                    .map(|_| {
                        next = next.wrapping_add(1);
                        next
                    })
                    .collect();
                Ok(Bytes::from(chunk))
            })
            .collect();
        stream::iter(items)
    }

    async fn parts(sizes: &[usize], expected: u64, part_size: usize) -> Result<Vec<usize>, TransferError> {
        let mut reader = PartReader::new(chunks(sizes), expected, part_size, Inspector::for_file("x"));
        let mut out = vec![];
        loop {
            out.push(reader.next_part().await?.len());
            if reader.finished() {
                return Ok(out);
            }
        }
    }

    #[tokio::test]
    async fn parts_are_full_except_the_last() {
        assert_eq!(parts(&[3, 7, 2, 9], 21, 5).await.unwrap(), vec![5, 5, 5, 5, 1]);
        assert_eq!(parts(&[10], 10, 5).await.unwrap(), vec![5, 5]);
        assert_eq!(parts(&[4], 4, 5).await.unwrap(), vec![4]);
        assert_eq!(parts(&[], 0, 5).await.unwrap(), vec![0]);
    }

    #[tokio::test]
    async fn a_body_of_the_wrong_length_is_refused() {
        assert!(matches!(
            parts(&[5, 5], 9, 5).await,
            Err(TransferError::SizeMismatch { expected: 9, got: 10 })
        ));
        assert!(matches!(
            parts(&[5, 3], 9, 5).await,
            Err(TransferError::SizeMismatch { expected: 9, got: 8 })
        ));
    }

    #[test]
    fn lambda_deadlines_are_epoch_millis_or_a_bare_duration() {
        let left = |d: Deadline| d.0.unwrap().saturating_duration_since(Instant::now()).as_secs();
        let in_a_minute = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(60);
        assert!((58..=60).contains(&left(Deadline::from_lambda(in_a_minute.as_millis() as u64))));
        assert!((598..=600).contains(&left(Deadline::from_lambda(600_000))));
        assert!(Deadline::from_lambda(1_000_000_000_000).check(0, None).is_err(), "a deadline in the past");
    }

    #[test]
    fn keys_stay_inside_the_export_folder() {
        let key = |name| object_key("p/", "e1", name);
        assert_eq!(
            key("properties_export_2026-02-17.csv.gz").unwrap(),
            "p/e1/properties_export_2026-02-17.csv.gz"
        );
        assert_eq!(key("../../x").unwrap(), "p/e1/.._.._x");
        assert_eq!(key("/etc/passwd").unwrap(), "p/e1/_etc_passwd");
        assert_eq!(key("a/b").unwrap(), "p/e1/a_b");
        assert_eq!(key("tab\there\n").unwrap(), "p/e1/tab_here_");
        assert!(key("").is_err());
        assert!(key("..").is_err());
        assert!(key(&"a".repeat(201)).is_err());
    }

    #[test]
    fn urls_must_be_https_on_an_allowed_host() {
        let policy = UrlPolicy { hosts: vec!["storage.googleapis.com".into()], allow_insecure_http: false };
        let check = |u: &str| policy.check(&Url::parse(u).unwrap());
        assert!(check("https://storage.googleapis.com/b/o?X-Goog-Signature=1").is_ok());
        assert!(check("https://STORAGE.googleapis.com/b/o").is_ok());
        assert!(check("http://storage.googleapis.com/b/o").is_err());
        assert!(check("https://storage.googleapis.com.evil.com/o").is_err());
        assert!(check("https://169.254.169.254/latest/meta-data").is_err());
        assert!(check("file:///etc/passwd").is_err());
    }
}
