//! Streaming copy from a download URL into S3, in constant memory.
//!
//! Bytes go from the HTTP response into fixed-size parts, and each full part is uploaded while
//! the next one fills. Parts in flight share one semaphore across every copy in the process, so
//! memory stays below `part_size * parts_in_flight` whatever the size or number of files.
//!
//! `source` downloads a file as Google Cloud Storage serves it and resumes it across breaks,
//! `parts` cuts it into parts, `upload` puts them in S3, `policy` says which URLs and keys are
//! acceptable, and `deadline` stops a copy before Lambda would. [`Transfer::copy`] tells the
//! story of one file.

mod deadline;
mod parts;
mod policy;
mod source;
mod upload;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::error::DisplayErrorContext;
use reqwest::StatusCode;
use tokio::sync::Semaphore;
use url::Url;

pub use self::deadline::Deadline;
use self::parts::{PartBuffers, PartReader};
pub use self::policy::{UrlPolicy, content_type, object_key};
use self::source::{Download, Recoveries};
use self::upload::Landed;
use crate::integrity::{CorruptGzip, Inspection, InspectionError, Inspector};
use crate::metrics::Metrics;

/// How long a download may send nothing before it is given up (and resumed).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How many times one file's download may resume or start again before the copy fails.
pub const DEFAULT_MAX_RESUMES: u32 = 5;
/// A first request that failed outright waits this long, times its number, before the next.
const RESTART_BACKOFF: Duration = Duration::from_millis(100);
const MIB: u64 = 1024 * 1024;
/// S3 takes at most this many parts in one upload, and objects of at most 5 TiB: so parts never
/// need more than 525 MiB, within S3's 5 GiB.
const MAX_PARTS: u64 = 10_000;
const MAX_OBJECT_SIZE: u64 = 5 * 1024 * 1024 * MIB;

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
    #[error(
        "the download broke off at byte {offset} of {expected} ({reason}), and {resumes} resumes did not bring the rest; SQS will deliver the record again"
    )]
    BrokeOff { offset: u64, expected: u64, resumes: u32, reason: String },
    /// What was received cannot be continued; the copy starts the file again from byte 0.
    #[error("the download has to start again: {0}")]
    Restart(String),
    #[error(
        "the file host decompressed a file stored with Content-Encoding: gzip although the relay asked for the stored bytes (Accept-Encoding: gzip); a proxy on the way may be dropping that header"
    )]
    Transcoded,
    #[error("the download was {got} bytes where {expected} were announced")]
    SizeMismatch { expected: u64, got: u64 },
    #[error(transparent)]
    Corrupt(CorruptGzip),
    #[error(
        "{algorithm} mismatch: the bytes received hash to {computed}, but the file host announced {announced} for the object it stored"
    )]
    ChecksumMismatch { algorithm: &'static str, announced: String, computed: String },
    #[error(
        "every download of the file gave the same bytes, whose {algorithm} {computed} is not the {announced} the file host announced for the object it stores: the stored file is damaged; run the export again"
    )]
    SourceDamaged { algorithm: &'static str, announced: String, computed: String },
    #[error(
        "not enough time left to copy the remaining {remaining} bytes ({seconds_left} s left); SQS will deliver the record again"
    )]
    OutOfTime { remaining: u64, seconds_left: u64 },
    #[error("S3 {operation} failed: {message}")]
    S3 { operation: &'static str, message: String },
    #[error("the file is {0} bytes, more than the 5 TiB an S3 object can hold")]
    TooLarge(u64),
}

impl TransferError {
    /// True when copying again cannot help: the URL or name is unacceptable, or the file
    /// itself is broken (the size check, the host's checksum and TLS rule out damage in transit).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::UrlRefused(_)
                | Self::BadFileName(..)
                | Self::Corrupt(_)
                | Self::SourceDamaged { .. }
                | Self::TooLarge(_)
        )
    }

    /// How long to wait before starting the file again from byte 0, if that can help: what was
    /// received cannot be continued or trusted, or the first request failed in a way a moment
    /// may cure (the connection, or a status Google calls transient).
    fn restart_pause(&self) -> Option<Duration> {
        match self {
            Self::Restart(_) | Self::ChecksumMismatch { .. } => Some(Duration::ZERO),
            Self::Download(_) => Some(RESTART_BACKOFF),
            Self::SourceStatus(status) if source::transient(*status) => Some(RESTART_BACKOFF),
            _ => None,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::UrlRefused(_) => "download_url_refused",
            Self::BadFileName(..) => "bad_file_name",
            Self::SourceGone(_) => "download_link_expired",
            Self::SourceStatus(_) => "download_http_error",
            Self::Download(_) => "download_failed",
            Self::BrokeOff { .. } => "download_broke_off",
            Self::Restart(_) => "download_restarted",
            Self::Transcoded => "download_transcoded",
            Self::SizeMismatch { .. } => "size_mismatch",
            Self::Corrupt(_) => "corrupt_file",
            Self::ChecksumMismatch { .. } => "checksum_mismatch",
            Self::SourceDamaged { .. } => "source_checksum_mismatch",
            Self::OutOfTime { .. } => "out_of_time",
            Self::S3 { .. } => "s3_error",
            Self::TooLarge(_) => "file_too_large",
        }
    }

    fn s3(operation: &'static str, error: impl std::error::Error) -> Self {
        Self::S3 { operation, message: DisplayErrorContext(error).to_string() }
    }
}

impl From<InspectionError> for TransferError {
    fn from(error: InspectionError) -> Self {
        match error {
            InspectionError::Corrupt(e) => Self::Corrupt(e),
            InspectionError::SourceMismatch { algorithm, announced, computed } => {
                Self::ChecksumMismatch { algorithm, announced, computed }
            }
        }
    }
}

/// The configured part size, or more for a file that would need over 10,000 parts (S3's limit),
/// in whole MiB: worked out before the first byte, not found out at part 10,001.
fn part_size_for(size: u64, configured: usize) -> Result<usize, TransferError> {
    if size > MAX_OBJECT_SIZE {
        return Err(TransferError::TooLarge(size));
    }
    let needed = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    Ok(needed.max(configured as u64) as usize)
}

fn mib(bytes: usize) -> u32 {
    (bytes as u64).div_ceil(MIB) as u32
}

/// The same wrong bytes twice is what the host stores, not a bad transfer: the file is damaged.
fn same_mismatch_twice(error: TransferError, last: &mut Option<String>) -> TransferError {
    match error {
        TransferError::ChecksumMismatch { algorithm, announced, computed }
            if last.as_ref() == Some(&computed) =>
        {
            TransferError::SourceDamaged { algorithm, announced, computed }
        }
        TransferError::ChecksumMismatch { ref computed, .. } => {
            *last = Some(computed.clone());
            error
        }
        other => other,
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
    /// The version S3 gave the object, in a versioned bucket: the one this copy wrote.
    pub version_id: Option<String>,
    pub elapsed: Duration,
    pub inspection: Inspection,
    /// Times the download continued after a break, and times it started again from byte 0.
    pub resumes: u32,
    pub restarts: u32,
}

#[derive(Clone)]
pub struct Transfer {
    s3: aws_sdk_s3::Client,
    http: reqwest::Client,
    bucket: String,
    policy: UrlPolicy,
    part_size: usize,
    /// One permit per MiB of part buffers, so a file whose parts had to grow holds fewer of
    /// them at once and memory stays at `part_size * parts_in_flight` whatever the file.
    part_slots: Arc<Semaphore>,
    slot_permits: u32,
    part_buffers: PartBuffers,
    idle_timeout: Duration,
    /// Trusted beside the system's roots, for a file host with a private certificate.
    roots: Vec<reqwest::Certificate>,
    max_resumes: u32,
    metrics: Metrics,
}

impl Transfer {
    pub fn new(
        s3: aws_sdk_s3::Client,
        bucket: String,
        policy: UrlPolicy,
        part_size: usize,
        parts_in_flight: usize,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            s3: upload::unsigned_bodies(s3),
            http: source::client(&policy, DEFAULT_IDLE_TIMEOUT, &[])?,
            bucket,
            policy,
            part_size,
            part_slots: Arc::new(Semaphore::new(parts_in_flight * mib(part_size) as usize)),
            slot_permits: (parts_in_flight * mib(part_size) as usize) as u32,
            part_buffers: PartBuffers::new(part_size, parts_in_flight),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            roots: Vec::new(),
            max_resumes: DEFAULT_MAX_RESUMES,
            metrics: Metrics::stdout(crate::metrics::DEFAULT_NAMESPACE),
        })
    }

    /// Gives up on a download that sends nothing for `idle` (and resumes it, within the
    /// budget); the invocation's deadline bounds the whole copy.
    pub fn with_idle_timeout(self, idle: Duration) -> Result<Self, reqwest::Error> {
        if idle == self.idle_timeout {
            return Ok(self);
        }
        Self { idle_timeout: idle, ..self }.rebuilt()
    }

    /// Trusts `roots` beside the system's, for a file host whose certificate a private CA signed.
    pub fn with_root_certificates(self, roots: Vec<reqwest::Certificate>) -> Result<Self, reqwest::Error> {
        if roots.is_empty() && self.roots.is_empty() {
            return Ok(self);
        }
        Self { roots, ..self }.rebuilt()
    }

    /// Builds the download client again; only when a setting differs from what it was built
    /// with, as each build loads the system's root certificates (cold-start time).
    fn rebuilt(self) -> Result<Self, reqwest::Error> {
        Ok(Self { http: source::client(&self.policy, self.idle_timeout, &self.roots)?, ..self })
    }

    /// How many times one file's download may resume or start again.
    pub fn with_max_resumes(self, max_resumes: u32) -> Self {
        Self { max_resumes, ..self }
    }

    /// Where resumes and restarts are counted.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        Self { metrics, ..self }
    }

    /// Parses a download URL and checks it against the policy.
    pub fn check_url(&self, source: &str) -> Result<Url, TransferError> {
        self.policy.parse(source)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Copies one file from `source` to `destination`, whose size must be `expected_size`.
    ///
    /// Either the whole, checked object lands at its key or nothing does: a multipart upload
    /// that fails, for any reason this process lives to see, is aborted. A download that breaks
    /// off resumes where it stopped; one that cannot be continued, or whose bytes are not what
    /// the host stored, starts again from byte 0 into a new upload. Both come out of one budget.
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
        let part_size = part_size_for(expected_size, self.part_size)?;
        let recoveries = Recoveries::new(self.max_resumes);
        let mut last_mismatch = None;
        loop {
            let error = match self
                .copy_from_start(
                    &url,
                    (expected_size, part_size),
                    destination,
                    (started, deadline),
                    &recoveries,
                )
                .await
            {
                Ok((landed, inspection)) => {
                    return Ok(Copied {
                        key: destination.key.clone(),
                        size: expected_size,
                        parts: landed.parts,
                        version_id: landed.version_id,
                        elapsed: started.elapsed(),
                        inspection,
                        resumes: recoveries.resumes(),
                        restarts: recoveries.restarts(),
                    });
                }
                Err(error) => same_mismatch_twice(error, &mut last_mismatch),
            };
            let Some(pause) = error.restart_pause() else {
                return Err(error);
            };
            let Some(restart) = recoveries.restart() else {
                return Err(error);
            };
            tokio::time::sleep(pause * restart).await;
            tracing::warn!(key = %destination.key, restart, reason = %error, "starting the download again from byte 0");
            self.metrics.download_restarted();
        }
    }

    /// One pass over the file from its first byte: download, checks and upload together.
    async fn copy_from_start(
        &self,
        url: &Url,
        (expected_size, part_size): (u64, usize),
        destination: &Destination,
        timing: (Instant, Deadline),
        recoveries: &Arc<Recoveries>,
    ) -> Result<(Landed, Inspection), TransferError> {
        // The slot comes first, so a download is asked for only when its bytes have somewhere
        // to go: an answer left unread would hold its connection's flow-control window.
        let slot = self.slot(part_size).await;
        let (download, announced) =
            Download::open(&self.http, url, expected_size, recoveries.clone(), timing, self.metrics.clone())
                .await?;
        let inspector = Inspector::for_file(&destination.filename, announced);
        let buffers = self.part_buffers.for_parts_of(part_size);
        let mut body = PartReader::new(download.into_stream(), expected_size, buffers, inspector);
        let first = body.next_part().await?;
        if body.finished() {
            let inspection = body.inspection().await?;
            let landed = self.put_whole(destination, first, &inspection).await?;
            return Ok((landed, inspection));
        }
        self.put_multipart(destination, (first, slot), &mut body, timing).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_part_that_grew_takes_a_slot_as_large_as_it_is() {
        let s3 =
            aws_sdk_s3::Client::from_conf(aws_sdk_s3::Config::builder().behavior_version_latest().build());
        let policy = UrlPolicy { hosts: vec![], allow_insecure_http: false };
        let five = 5 * MIB as usize;
        let transfer = Transfer::new(s3, "bucket".into(), policy, five, 4).unwrap();
        let free = || transfer.part_slots.available_permits();
        assert_eq!(free(), 20, "four parts of 5 MiB");

        let grown = transfer.slot(2 * five + 1).await;
        assert_eq!(free(), 9, "a part of 10 MiB and a byte holds 11 MiB");
        let huge = tokio::time::timeout(Duration::from_millis(50), transfer.slot(100 * MIB as usize));
        assert!(huge.await.is_err(), "a part larger than every slot together waits for all of them");
        drop(grown);
        let huge = transfer.slot(100 * MIB as usize).await;
        assert_eq!(free(), 0);
        drop(huge);
        assert_eq!(free(), 20, "all given back");
    }

    #[test]
    fn parts_grow_so_that_no_file_needs_more_than_ten_thousand() {
        let eight = 8 * MIB as usize;
        assert_eq!(part_size_for(0, eight).unwrap(), eight);
        assert_eq!(part_size_for(78 * 1024 * MIB, eight).unwrap(), eight, "78 GiB fits in 8 MiB parts");
        let bigger = part_size_for(107_374_182_400, eight).unwrap() as u64;
        assert_eq!(bigger, 11_534_336, "100 GiB needs 10.24 MiB parts, rounded up to whole MiB");
        assert!(107_374_182_400u64.div_ceil(bigger) <= MAX_PARTS);
        let five_tib = 5_497_558_138_880;
        assert_eq!(part_size_for(five_tib, eight).unwrap(), 525 * MIB as usize, "S3's largest object");
        for too_large in [five_tib + 1, 49 * five_tib / 5] {
            assert!(
                matches!(part_size_for(too_large, eight), Err(TransferError::TooLarge(_))),
                "{too_large}"
            );
        }
    }
}
