//! Exactly-once delivery, kept in the bucket itself.
//!
//! `manifest.json` is written last, with `If-None-Match: *`, as the commit marker: a consumer
//! that sees it can trust every file it names, and a redelivered message that finds it copies
//! nothing. A small marker per webhook type records that the webhook went out, so a redelivery
//! sends only what is still owed, and holds the event, so an operator can replay it.

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::dealmachine::Export;
use crate::events::ExportId;
use crate::integrity::SourceChecksums;
use crate::notify::{Event, EventData, EventType};

/// Manifests and markers are small; a larger one was not written by the relay.
const MAX_MANIFEST_BYTES: usize = 8 * 1024 * 1024;

/// What a relayed export's folder holds, written after every file is in place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The export as the API described it when it was relayed.
    pub export: Export,
    pub files: Vec<ManifestFile>,
    /// False when a check failed; `verification_error` says which.
    pub verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_error: Option<String>,
    pub relayed_at: DateTime<Utc>,
    pub relay_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub filename: String,
    pub key: String,
    pub size: u64,
    pub sha256: String,
    /// S3's full-object CRC64NVME, base64, as `HeadObject` with checksum mode reports it.
    pub crc64nvme: String,
    /// CSV data rows, for `.csv` and `.csv.gz` files.
    pub rows: Option<u64>,
    /// The file host's own checksums of what it stored, and which the bytes were checked
    /// against. Manifests written before the relay read them have none.
    #[serde(default)]
    pub source: SourceChecksums,
}

impl Manifest {
    pub fn new(export: &Export, files: Vec<ManifestFile>) -> Self {
        let verification_error = record_count_mismatch(export.record_count, &files);
        Self {
            export: export.clone(),
            files,
            verified: verification_error.is_none(),
            verification_error,
            relayed_at: Utc::now(),
            relay_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// Compares the API's `record_count` with the rows counted in the files, when both are known.
fn record_count_mismatch(record_count: Option<u64>, files: &[ManifestFile]) -> Option<String> {
    let expected = record_count?;
    let counted: Option<u64> = files.iter().map(|f| f.rows).sum();
    match counted {
        Some(rows) if rows != expected => Some(format!(
            "record_count mismatch: the API reports {expected} records, the files hold {rows} CSV rows"
        )),
        _ => None,
    }
}

/// What `.delivered/<type>.json` holds: that the webhook went out, and enough to send the same
/// event again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub webhook_id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub delivered_at: DateTime<Utc>,
    /// The body's `timestamp`, so a replay sends the same body. Older markers have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// The body's `data` without `files`: a completed export's files are in its manifest, and
    /// presigned links must not be stored. Older markers have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<EventData>,
}

impl DeliveryRecord {
    fn of(event: &Event) -> Self {
        Self {
            webhook_id: event.webhook_id(),
            kind: event.kind,
            delivered_at: Utc::now(),
            timestamp: Some(event.timestamp.clone()),
            data: Some(EventData { files: None, ..event.data.clone() }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("S3 {operation} on {key} failed: {message}")]
    S3 { operation: &'static str, key: String, message: String },
    #[error("{key} is not a manifest or delivery marker this relay can read: {message}")]
    Unreadable { key: String, message: String },
}

/// The manifests and delivery markers of one bucket and prefix.
pub struct Ledger {
    s3: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl Ledger {
    pub fn new(s3: aws_sdk_s3::Client, bucket: String, prefix: String) -> Self {
        Self { s3, bucket, prefix }
    }

    pub fn manifest_key(&self, id: &ExportId) -> String {
        format!("{}{id}/manifest.json", self.prefix)
    }

    fn marker_key(&self, id: &ExportId, event: EventType) -> String {
        format!("{}{id}/.delivered/{}.json", self.prefix, event.as_str())
    }

    fn in_flight_key(&self, id: &ExportId) -> String {
        format!("{}{id}/.in-flight.json", self.prefix)
    }

    /// True when a manifest is committed, without reading it.
    pub async fn is_committed(&self, id: &ExportId) -> Result<bool, LedgerError> {
        self.exists(&self.manifest_key(id)).await.map(|modified| modified.is_some())
    }

    /// Records that a message for this export is on the queue (a poll chain or a copy), so a
    /// sweep does not start a second one.
    pub async fn mark_in_flight(&self, id: &ExportId) -> Result<(), LedgerError> {
        let key = self.in_flight_key(id);
        let body = serde_json::json!({"export_id": id.as_str(), "since": Utc::now()});
        self.put_json(&key, body).await
    }

    /// True when a message was put on the queue for this export less than `within` ago.
    pub async fn in_flight(&self, id: &ExportId, within: std::time::Duration) -> Result<bool, LedgerError> {
        let since = self.exists(&self.in_flight_key(id)).await?;
        Ok(since.is_some_and(|at| (Utc::now() - at).to_std().unwrap_or_default() < within))
    }

    /// When the object was last written, if it exists.
    async fn exists(&self, key: &str) -> Result<Option<DateTime<Utc>>, LedgerError> {
        match self.s3.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(head) => Ok(Some(
                head.last_modified()
                    .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
                    .unwrap_or_else(Utc::now),
            )),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(e) => Err(s3_error("HeadObject", key, e)),
        }
    }

    async fn put_json(&self, key: &str, body: serde_json::Value) -> Result<(), LedgerError> {
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body.to_string().into_bytes()))
            .send()
            .await
            .map_err(|e| s3_error("PutObject", key, e))?;
        Ok(())
    }

    /// The committed manifest, if the export was relayed before.
    pub async fn committed(&self, id: &ExportId) -> Result<Option<Manifest>, LedgerError> {
        self.get_json(&self.manifest_key(id)).await
    }

    /// An object the relay wrote as JSON, if it exists.
    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, LedgerError> {
        let output = match self.s3.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(output) => output,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(s3_error("GetObject", key, e)),
        };
        let unreadable = |message: String| LedgerError::Unreadable { key: key.to_string(), message };
        if output.content_length().unwrap_or_default() as usize > MAX_MANIFEST_BYTES {
            return Err(unreadable("larger than 8 MiB".into()));
        }
        let bytes = output
            .body
            .collect()
            .await
            .map_err(|e| LedgerError::S3 {
                operation: "GetObject",
                key: key.to_string(),
                message: e.to_string(),
            })?
            .into_bytes();
        serde_json::from_slice(&bytes).map(Some).map_err(|e| unreadable(e.to_string()))
    }

    /// Writes the manifest unless one exists. If another run committed first, its manifest
    /// wins and is returned, so every run reports the same files.
    pub async fn commit(&self, manifest: Manifest) -> Result<Manifest, LedgerError> {
        let id =
            ExportId::parse(&manifest.export.export_id).expect("manifests are built from checked exports");
        let key = self.manifest_key(&id);
        let body = serde_json::to_vec_pretty(&manifest).expect("manifests always serialize");
        let put = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .if_none_match("*")
            .body(ByteStream::from(body))
            .send()
            .await;
        match put {
            Ok(_) => Ok(manifest),
            Err(e) if matches!(e.code(), Some("PreconditionFailed" | "ConditionalRequestConflict")) => {
                tracing::info!(key, "another run committed this export first; using its manifest");
                self.committed(&id).await?.ok_or(LedgerError::Unreadable {
                    key,
                    message: "the conditional write failed, yet no manifest is there".into(),
                })
            }
            Err(e) => Err(s3_error("PutObject", &key, e)),
        }
    }

    /// True when this event's webhook was delivered before.
    pub async fn delivered(&self, id: &ExportId, event: EventType) -> Result<bool, LedgerError> {
        self.exists(&self.marker_key(id, event)).await.map(|modified| modified.is_some())
    }

    /// Records that `event` was delivered, with what it takes to replay it.
    pub async fn mark_delivered(&self, id: &ExportId, event: &Event) -> Result<(), LedgerError> {
        let body = serde_json::to_value(DeliveryRecord::of(event)).expect("markers always serialize");
        self.put_json(&self.marker_key(id, event.kind), body).await
    }

    /// The record of this event's delivery, if it was delivered.
    pub async fn delivery(
        &self,
        id: &ExportId,
        event: EventType,
    ) -> Result<Option<DeliveryRecord>, LedgerError> {
        self.get_json(&self.marker_key(id, event)).await
    }
}

fn s3_error<E: std::error::Error>(operation: &'static str, key: &str, e: E) -> LedgerError {
    LedgerError::S3 { operation, key: key.to_string(), message: DisplayErrorContext(e).to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rows: Option<u64>) -> ManifestFile {
        ManifestFile {
            filename: "a.csv.gz".into(),
            key: "p/e/a.csv.gz".into(),
            size: 1,
            sha256: "00".into(),
            crc64nvme: "AAAAAAAAAAA=".into(),
            rows,
            source: SourceChecksums::default(),
        }
    }

    #[test]
    fn record_counts_are_compared_only_when_both_sides_are_known() {
        assert_eq!(record_count_mismatch(Some(5), &[file(Some(2)), file(Some(3))]), None);
        assert!(
            record_count_mismatch(Some(6), &[file(Some(2)), file(Some(3))]).unwrap().contains("6 records")
        );
        assert_eq!(record_count_mismatch(None, &[file(Some(2))]), None);
        assert_eq!(record_count_mismatch(Some(6), &[file(Some(2)), file(None)]), None);
    }
}
