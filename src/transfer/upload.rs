//! The upload side of a copy: a file that fits in one part goes up with one PutObject, a larger
//! one as a multipart upload whose parts go up while the next fills. Every part holds a slot of
//! the semaphore shared by all copies, so memory stays below `part_size * parts_in_flight`.
//!
//! Each file is written once: no CopyObject afterwards, so one `ObjectCreated` event per file,
//! one version in a versioned bucket, and no 5 GiB limit. The SHA-256 is known only after the
//! last byte, too late for a multipart upload's metadata; it goes into the manifest and the
//! webhook, while the object carries S3's own full-object CRC64NVME, which S3 checks.
//!
//! Bodies go up with `UNSIGNED-PAYLOAD`: signing one means a second SHA-256 of every byte (the
//! SDK's, beside ours), while its integrity is already covered by the CRC64NVME checksum S3
//! checks on every part and on the whole object, and by TLS on the way. It is set once on the
//! client ([`unsigned_bodies`]): the per-request `customize()` that does the same costs about
//! 0.67 MB of binary (BENCHMARKS.md, *Levers tried*).

use std::time::{Duration, Instant};

use aws_runtime::auth::PayloadSigningOverride;
use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::{BoxError, DisplayErrorContext};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use bytes::Bytes;
use futures::Stream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use super::deadline::Deadline;
use super::parts::PartReader;
use super::{Destination, Transfer, TransferError};
use crate::integrity::Inspection;

/// The client the copies upload with: `s3`, sending file bodies unsigned.
pub(super) fn unsigned_bodies(s3: aws_sdk_s3::Client) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(s3.config().to_builder().interceptor(UnsignedBodies).build())
}

/// Marks the body of each PutObject and UploadPart `UNSIGNED-PAYLOAD`, as the SDK's own
/// `disable_payload_signing()` would, for every request of the client at once.
#[derive(Debug)]
struct UnsignedBodies;

impl Intercept for UnsignedBodies {
    fn name(&self) -> &'static str {
        "UnsignedBodies"
    }

    fn modify_before_signing(
        &self,
        _context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if matches!(cfg.load::<Metadata>().map(Metadata::name), Some("PutObject" | "UploadPart")) {
            cfg.interceptor_state().store_put(PayloadSigningOverride::unsigned_payload());
        }
        Ok(())
    }
}

impl Transfer {
    /// Room for one part of `part_size` bytes among the parts in flight. A part larger than
    /// every slot together takes them all.
    pub(super) async fn slot(&self, part_size: usize) -> OwnedSemaphorePermit {
        let permits = super::mib(part_size).clamp(1, self.slot_permits);
        self.part_slots.clone().acquire_many_owned(permits).await.expect("the part semaphore is never closed")
    }

    /// A file that fits in one part goes up in one request, checksum and all.
    pub(super) async fn put_whole(
        &self,
        destination: &Destination,
        bytes: Bytes,
        inspection: &Inspection,
    ) -> Result<Landed, TransferError> {
        let output = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(&destination.key)
            .content_type(destination.content_type)
            .set_metadata(Some(destination.metadata.clone()))
            .checksum_crc64_nvme(&inspection.crc64nvme)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| TransferError::s3("PutObject", e))?;
        Ok(Landed { parts: 1, version_id: version(output.version_id) })
    }

    /// Streams the rest of the body into a multipart upload, and completes it only once the
    /// checks have passed. Any error aborts the upload, so nothing partial is left.
    pub(super) async fn put_multipart(
        &self,
        destination: &Destination,
        first: (Bytes, OwnedSemaphorePermit),
        body: &mut PartReader<impl Stream<Item = Result<Bytes, TransferError>> + Unpin>,
        timing: (Instant, Deadline),
    ) -> Result<(Landed, Inspection), TransferError> {
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
            let landed = self.complete(&destination.key, &upload_id, parts, &inspection).await?;
            Ok::<_, TransferError>((landed, inspection))
        }
        .await;
        if completed.is_err() {
            self.abort(&destination.key, &upload_id).await;
        }
        completed
    }

    /// Uploads parts as they fill, each in its own task, holding a slot until it is stored.
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: (Bytes, OwnedSemaphorePermit),
        body: &mut PartReader<impl Stream<Item = Result<Bytes, TransferError>> + Unpin>,
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
            deadline.check_rest(body.expected, body.received, started)?;
            slot = self.slot(body.part_size()).await;
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
            .body(ByteStream::from(bytes.clone()));
        let buffers = self.part_buffers.clone();
        async move {
            let output = request.send().await.map_err(|e| TransferError::s3("UploadPart", e))?;
            buffers.give_back(bytes);
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
    ) -> Result<Landed, TransferError> {
        let count = parts.len();
        let output = self
            .s3
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
        Ok(Landed { parts: count, version_id: version(output.version_id) })
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

fn joined(
    done: Result<Result<CompletedPart, TransferError>, tokio::task::JoinError>,
) -> Result<CompletedPart, TransferError> {
    done.unwrap_or_else(|e| {
        Err(TransferError::S3 { operation: "UploadPart", message: format!("upload task ended: {e}") })
    })
}

/// How an object landed: in how many parts, and the version S3 gave it (in a versioned bucket).
pub(super) struct Landed {
    pub(super) parts: usize,
    pub(super) version_id: Option<String>,
}

/// S3 answers `null` (or nothing) for an object in a bucket that is not versioned.
fn version(version_id: Option<String>) -> Option<String> {
    version_id.filter(|v| !v.is_empty() && v != "null")
}

#[cfg(test)]
mod tests {
    use super::version;

    #[test]
    fn an_unversioned_buckets_null_or_empty_version_is_no_version() {
        assert_eq!(version(Some("null".into())), None);
        assert_eq!(version(Some(String::new())), None);
        assert_eq!(version(None), None);
        assert_eq!(version(Some("3HL4kqtJlcpXroDTDmJ".into())).as_deref(), Some("3HL4kqtJlcpXroDTDmJ"));
    }
}
