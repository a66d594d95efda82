//! The upload side of a copy: a file that fits in one part goes up with one PutObject, a larger
//! one as a multipart upload whose parts go up while the next fills. Every part holds a slot of
//! the semaphore shared by all copies, so memory stays below `part_size * parts_in_flight`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart, MetadataDirective,
};
use bytes::Bytes;
use futures::Stream;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use super::deadline::{self, Deadline};
use super::parts::PartReader;
use super::{Destination, Transfer, TransferError};
use crate::integrity::Inspection;

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

    /// Streams the rest of the body into a multipart upload, and completes it only once the
    /// checks have passed. Any error aborts the upload, so nothing partial is left.
    pub(super) async fn put_multipart(
        &self,
        destination: &Destination,
        first: (Bytes, OwnedSemaphorePermit),
        body: &mut PartReader<impl Stream<Item = Result<Bytes, TransferError>> + Unpin>,
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
            Ok::<_, TransferError>((count, inspection))
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
            deadline.check(body.expected - body.received, Some(deadline::rate(body.received, started)))?;
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
