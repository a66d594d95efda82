//! The ledger: everything the relay remembers about an export, kept in the bucket itself beside
//! the files, and written with S3's conditional writes where two runs could race.
//!
//! - `manifest.json` is written last, with `If-None-Match: *`, as the commit marker: a consumer
//!   that sees it can trust every file it names, and a redelivered message that finds it copies
//!   nothing.
//! - `.files/{name}.json` records each file as it lands and passes its checks, so a run cut short
//!   (out of time, killed) is resumed by the next one file by file.
//! - `.chain.json` is the export's poll chain: the one attempt whose message may be on the queue.
//!   A record claims the next attempt before it sends it, so duplicates and retries never fork
//!   the chain. A record's first receipt opens it, and so does the sweep before it enqueues:
//!   an open chain is the export "in hand", which the sweep leaves alone; it ends when the
//!   export has an outcome.
//! - `.sweep-cursor.json` (beside the exports, not in one) is where the last sweep stopped, so
//!   the next carries on from there.
//! - `.receipt.json` keeps the `metadata` and `first_seen_at` of the first record that carried
//!   metadata, so a record without any (the sweep's) never replaces upstream's correlation data.
//! - `.events/{type}.json` is the outbox: each webhook body, rendered once and stored with
//!   `If-None-Match: *` before its first send, so every try, redelivery and replay sends the
//!   same bytes under one `webhook-id`.
//! - `.delivered/{type}.json` records that a webhook went out, so a redelivery sends only what is
//!   still owed. Markers from before the outbox also hold the event, for replays.

use std::time::Duration;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::primitives::ByteStream;
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::dealmachine::Export;
use crate::events::ExportId;
use crate::integrity::SourceChecksums;
use serde_json::{Map, Value};

use crate::notify::{ErrorInfo, EventType, ExportFields, ObjectRef};
use crate::pages::Position;

/// Manifests and markers are small; a larger one was not written by the relay.
const MAX_MANIFEST_BYTES: usize = 8 * 1024 * 1024;
/// A claim on the next poll by another message is taken over once it is this old and still not
/// sent: its record died between the claim and the send. Longer than any SQS delay.
const CLAIM_LEASE: Duration = Duration::from_secs(15 * 60);

/// What a relayed export's folder holds, written after every file is in place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The export as the API described it when it was relayed, with each download URL cut to
    /// where the file came from: a signed URL's query string is a credential, and anyone who
    /// can read the bucket can read the manifest.
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
    /// The version S3 gave the object when it landed, in a versioned bucket.
    #[serde(default)]
    pub version_id: Option<String>,
}

impl Manifest {
    pub fn new(export: &Export, files: Vec<ManifestFile>) -> Self {
        let verification_error = record_count_mismatch(export.record_count, &files);
        Self {
            export: without_signatures(export),
            files,
            verified: verification_error.is_none(),
            verification_error,
            relayed_at: Utc::now(),
            relay_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

fn without_signatures(export: &Export) -> Export {
    let mut export = export.clone();
    for file in export.download_urls.iter_mut().flatten() {
        if let Ok(mut url) = url::Url::parse(&file.url) {
            url.set_query(None);
            url.set_fragment(None);
            file.url = url.to_string();
        } else {
            file.url.clear();
        }
    }
    export
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

/// What `.delivered/<type>.json` holds: that the webhook went out. Markers written before the
/// outbox also hold the event, so a replay can still rebuild it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub webhook_id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub delivered_at: DateTime<Utc>,
    /// Before the outbox: the body's `timestamp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// Before the outbox: the body's `data`, without files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<LegacyData>,
}

/// The `data` a marker from before the outbox holds: the export's fields, and a failure's error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegacyData {
    #[serde(flatten)]
    pub export: ExportFields,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

/// What `.receipt.json` holds: upstream's correlation data, as its first record carried it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub metadata: Map<String, Value>,
    pub first_seen_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("S3 {operation} on {key} failed: {message}")]
    S3 { operation: &'static str, key: String, message: String },
    #[error("{key} is not a manifest or delivery marker this relay can read: {message}")]
    Unreadable { key: String, message: String },
}

/// Where an export's poll chain stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// The attempt whose message is (being) put on the queue.
    pub attempt: u32,
    pub state: ChainState,
    /// The SQS message ID of the record that claimed it.
    pub by: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainState {
    /// Claimed; the message may not be on the queue yet.
    Claimed,
    /// The message is on the queue.
    Sent,
    /// The export reached an outcome; a new request may start a new chain.
    Ended,
}

impl Chain {
    /// Whether the record for `attempt`, delivered as message `message_id`, should poll: not
    /// when a later attempt is already claimed, which makes it a duplicate or a stale retry.
    /// Its own claim, or a claim left unsent for longer than the lease, is taken over.
    pub fn lets_poll(&self, attempt: u32, message_id: &str, now: DateTime<Utc>) -> bool {
        let abandoned = self.state == ChainState::Claimed
            && (self.by == message_id || (now - self.at).to_std().unwrap_or_default() > CLAIM_LEASE);
        self.state == ChainState::Ended
            || self.attempt <= attempt
            || (self.attempt == attempt + 1 && abandoned)
    }

    /// Whether a message for the export is, or is about to be, on the queue: the chain is open
    /// and moved less than `lease` ago, the longest a live chain goes without moving. An ended
    /// chain is not in hand: it ended with the export's outcome, so the mark lasts exactly as
    /// long as the work, and a chain whose record was lost (dead-lettered) is let go after the
    /// lease.
    pub fn in_hand(&self, now: DateTime<Utc>, lease: Duration) -> bool {
        self.state != ChainState::Ended && (now - self.at).to_std().unwrap_or_default() < lease
    }
}

/// Where a sweep stopped before the end of its window, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepCursor {
    pub position: Position,
    pub stopped_at: DateTime<Utc>,
    pub reason: String,
}

/// A value read from the ledger, with the ETag to write it back conditionally.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub value: T,
    pub etag: String,
}

/// What a conditional write requires of the object it replaces.
#[derive(Debug, Clone, Copy)]
enum Condition<'a> {
    Absent,
    Matches(&'a str),
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

    /// Beside the exports' folders: a name that starts with a dot is no export ID.
    fn sweep_cursor_key(&self) -> String {
        format!("{}.sweep-cursor.json", self.prefix)
    }

    fn event_key(&self, id: &ExportId, event: EventType) -> String {
        format!("{}{id}/.events/{}.json", self.prefix, event.as_str())
    }

    fn receipt_key(&self, id: &ExportId) -> String {
        format!("{}{id}/.receipt.json", self.prefix)
    }

    /// Where the manifest is, for consumers: the webhook points at it.
    pub fn manifest_ref(&self, id: &ExportId) -> ObjectRef {
        ObjectRef { bucket: self.bucket.clone(), key: self.manifest_key(id), region: self.region() }
    }

    /// The bucket's region, as the S3 client was configured with it.
    pub fn region(&self) -> Option<String> {
        self.s3.config().region().map(ToString::to_string)
    }

    fn chain_key(&self, id: &ExportId) -> String {
        format!("{}{id}/.chain.json", self.prefix)
    }

    /// The record of one file, by the key it landed at.
    fn file_key(&self, id: &ExportId, object_key: &str) -> String {
        let name = object_key.rsplit('/').next().unwrap_or(object_key);
        format!("{}{id}/.files/{name}.json", self.prefix)
    }

    /// The record of a file that landed and passed its checks in an earlier run, if any.
    pub async fn copied(&self, id: &ExportId, object_key: &str) -> Result<Option<ManifestFile>, LedgerError> {
        let record = self.read_json::<ManifestFile>(&self.file_key(id, object_key)).await?;
        Ok(record.map(|r| r.value).filter(|file| file.key == object_key))
    }

    /// Records a file as landed and checked, so a later run skips it.
    pub async fn record_copied(&self, id: &ExportId, file: &ManifestFile) -> Result<(), LedgerError> {
        let body = serde_json::to_value(file).expect("file records always serialize");
        self.put_json(&self.file_key(id, &file.key), body).await
    }

    /// The export's poll chain, if one was started.
    pub async fn chain(&self, id: &ExportId) -> Result<Option<Versioned<Chain>>, LedgerError> {
        self.read_json(&self.chain_key(id)).await
    }

    /// Moves the chain to `next`, if it is still as `read`. `None` when another record moved it
    /// first: that record owns the next poll.
    pub async fn move_chain(
        &self,
        id: &ExportId,
        read: Option<&Versioned<Chain>>,
        next: Chain,
    ) -> Result<Option<Versioned<Chain>>, LedgerError> {
        let condition = read.map_or(Condition::Absent, |r| Condition::Matches(&r.etag));
        let body = serde_json::to_vec(&next).expect("chains always serialize");
        let written = self.put_if(&self.chain_key(id), body, condition).await?;
        Ok(written.map(|etag| Versioned { value: next, etag }))
    }

    /// True when a manifest is committed, without reading it.
    pub async fn is_committed(&self, id: &ExportId) -> Result<bool, LedgerError> {
        self.exists(&self.manifest_key(id)).await
    }

    /// Records a record's first receipt: a chain that is absent or ended is opened at the
    /// record's attempt, so from now on the sweep sees the export in hand, whichever path
    /// brought the record (upstream, a redrive, a retry after a passing failure). Returns the
    /// chain as it now stands: opened by this record, or by another that got there first.
    pub async fn hold(
        &self,
        id: &ExportId,
        read: Option<Versioned<Chain>>,
        attempt: u32,
        by: &str,
    ) -> Result<Option<Versioned<Chain>>, LedgerError> {
        if read.as_ref().is_some_and(|chain| chain.value.state != ChainState::Ended) {
            return Ok(read);
        }
        let open = Chain { attempt, state: ChainState::Sent, by: by.into(), at: Utc::now() };
        match self.move_chain(id, read.as_ref(), open).await? {
            Some(opened) => Ok(Some(opened)),
            None => self.chain(id).await,
        }
    }

    /// Where the last sweep stopped, if it stopped before the end of its window.
    pub async fn sweep_cursor(&self) -> Result<Option<SweepCursor>, LedgerError> {
        let read = self.read_json::<Option<SweepCursor>>(&self.sweep_cursor_key()).await?;
        Ok(read.and_then(|cursor| cursor.value))
    }

    /// Records where this sweep stopped; `None` when it read its whole window, so the next
    /// starts at the head of the list.
    pub async fn save_sweep_cursor(&self, cursor: Option<&SweepCursor>) -> Result<(), LedgerError> {
        let body = serde_json::to_value(cursor).expect("cursors always serialize");
        self.put_json(&self.sweep_cursor_key(), body).await
    }

    /// Whether the object is there, by `HeadObject`: only a 404 is "no"; any other failure is an
    /// error, so a marker that cannot be read is never taken as absent.
    async fn exists(&self, key: &str) -> Result<bool, LedgerError> {
        match self.s3.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(false),
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
        Ok(self.read_json(&self.manifest_key(id)).await?.map(|m| m.value))
    }

    /// Reads a ledger object, with its ETag; `None` if there is none.
    async fn read_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Versioned<T>>, LedgerError> {
        let Some(raw) = self.read_bytes(key).await? else { return Ok(None) };
        let value = serde_json::from_slice(&raw.value)
            .map_err(|e| LedgerError::Unreadable { key: key.to_string(), message: e.to_string() })?;
        Ok(Some(Versioned { value, etag: raw.etag }))
    }

    /// Reads a ledger object's bytes as they are, with its ETag; `None` if there is none.
    async fn read_bytes(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>, LedgerError> {
        let output = match self.s3.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(output) => output,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(s3_error("GetObject", key, e)),
        };
        if output.content_length().unwrap_or_default() as usize > MAX_MANIFEST_BYTES {
            let message = "larger than 8 MiB".into();
            return Err(LedgerError::Unreadable { key: key.to_string(), message });
        }
        let etag = output.e_tag.clone().unwrap_or_default();
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
        Ok(Some(Versioned { value: bytes.to_vec(), etag }))
    }

    /// Writes the manifest unless one exists. If another run committed first, its manifest
    /// wins and is returned, so every run reports the same files.
    pub async fn commit(&self, manifest: Manifest) -> Result<Manifest, LedgerError> {
        let id =
            ExportId::parse(&manifest.export.export_id).expect("manifests are built from checked exports");
        let key = self.manifest_key(&id);
        let body = serde_json::to_vec_pretty(&manifest).expect("manifests always serialize");
        if self.put_if(&key, body, Condition::Absent).await?.is_some() {
            return Ok(manifest);
        }
        tracing::info!(key, "another run committed this export first; using its manifest");
        self.committed(&id).await?.ok_or(LedgerError::Unreadable {
            key,
            message: "the conditional write failed, yet no manifest is there".into(),
        })
    }

    /// Writes `body` at `key` if `condition` holds, and returns the new ETag; `None` when it
    /// does not hold (412: another writer got there first). S3 answers 409
    /// `ConditionalRequestConflict` while a conflicting conditional write is still in flight,
    /// and asks for a retry: that is retried here, with backoff, never read as "someone won".
    async fn put_if(
        &self,
        key: &str,
        body: Vec<u8>,
        condition: Condition<'_>,
    ) -> Result<Option<String>, LedgerError> {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(5)
            .with_jitter()
            .build();
        loop {
            let request = self
                .s3
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type("application/json")
                .body(ByteStream::from(body.clone()));
            let request = match condition {
                Condition::Absent => request.if_none_match("*"),
                Condition::Matches(etag) => request.if_match(etag),
            };
            match request.send().await {
                Ok(output) => return Ok(Some(output.e_tag.unwrap_or_default())),
                Err(e) if e.code() == Some("PreconditionFailed") => return Ok(None),
                // A replaced object that is gone now also fails its condition.
                Err(e) if matches!(condition, Condition::Matches(_)) && e.code() == Some("NoSuchKey") => {
                    return Ok(None);
                }
                Err(e) if e.code() == Some("ConditionalRequestConflict") => match backoff.next() {
                    Some(pause) => {
                        tracing::info!(key, "S3 answered 409 to a conditional write in flight; trying again");
                        tokio::time::sleep(pause).await;
                    }
                    None => return Err(s3_error("PutObject", key, e)),
                },
                Err(e) => return Err(s3_error("PutObject", key, e)),
            }
        }
    }

    /// True when this event's webhook was delivered before.
    pub async fn delivered(&self, id: &ExportId, event: EventType) -> Result<bool, LedgerError> {
        self.exists(&self.marker_key(id, event)).await
    }

    /// Records that the event was delivered.
    pub async fn mark_delivered(&self, id: &ExportId, event: EventType) -> Result<(), LedgerError> {
        let record = DeliveryRecord {
            webhook_id: event.webhook_id(id.as_str()),
            kind: event,
            delivered_at: Utc::now(),
            timestamp: None,
            data: None,
        };
        let body = serde_json::to_value(record).expect("markers always serialize");
        self.put_json(&self.marker_key(id, event), body).await
    }

    /// The event's body as it was first rendered, if it was.
    pub async fn stored_event(
        &self,
        id: &ExportId,
        event: EventType,
    ) -> Result<Option<Vec<u8>>, LedgerError> {
        Ok(self.read_bytes(&self.event_key(id, event)).await?.map(|b| b.value))
    }

    /// Stores a rendered body unless one is stored, and returns the one that is: of two runs
    /// rendering at once, both send the first one's bytes.
    pub async fn store_event(
        &self,
        id: &ExportId,
        event: EventType,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, LedgerError> {
        let key = self.event_key(id, event);
        if self.put_if(&key, body.clone(), Condition::Absent).await?.is_some() {
            return Ok(body);
        }
        self.stored_event(id, event).await?.ok_or(LedgerError::Unreadable {
            key,
            message: "the conditional write failed, yet no event is there".into(),
        })
    }

    /// Keeps upstream's metadata from the first record that carried any; later ones, and
    /// records without metadata, change nothing.
    pub async fn keep_receipt(&self, id: &ExportId, receipt: &Receipt) -> Result<(), LedgerError> {
        let body = serde_json::to_vec(receipt).expect("receipts always serialize");
        self.put_if(&self.receipt_key(id), body, Condition::Absent).await.map(|_| ())
    }

    /// Upstream's metadata as first received, if a record carried any.
    pub async fn receipt(&self, id: &ExportId) -> Result<Option<Receipt>, LedgerError> {
        Ok(self.read_json(&self.receipt_key(id)).await?.map(|r| r.value))
    }

    /// The record of this event's delivery, if it was delivered.
    pub async fn delivery(
        &self,
        id: &ExportId,
        event: EventType,
    ) -> Result<Option<DeliveryRecord>, LedgerError> {
        Ok(self.read_json(&self.marker_key(id, event)).await?.map(|m| m.value))
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
            version_id: None,
        }
    }

    #[test]
    fn a_later_claim_stops_duplicates_and_stale_retries_but_not_the_claimers_own_retry() {
        let now = Utc::now();
        let chain = |attempt, state, by: &str, age: i64| Chain {
            attempt,
            state,
            by: by.into(),
            at: now - chrono::Duration::seconds(age),
        };
        let sent = chain(4, ChainState::Sent, "m3", 10);
        assert!(sent.lets_poll(4, "m4", now), "the attempt on the queue polls");
        assert!(!sent.lets_poll(3, "m3", now), "attempt 3 is done: its successor is on the queue");
        let claimed = chain(4, ChainState::Claimed, "m3", 10);
        assert!(claimed.lets_poll(3, "m3", now), "the claimer's own retry sends what it claimed");
        assert!(!claimed.lets_poll(3, "other", now), "another copy of attempt 3 leaves it to the claimer");
        assert!(!chain(4, ChainState::Claimed, "m3", 15 * 60).lets_poll(3, "other", now), "within the lease");
        assert!(
            chain(4, ChainState::Claimed, "m3", 16 * 60).lets_poll(3, "other", now),
            "an abandoned claim"
        );
        assert!(!chain(5, ChainState::Claimed, "m3", 3600).lets_poll(3, "m3", now), "two steps behind");
        assert!(
            chain(9, ChainState::Ended, "m8", 10).lets_poll(1, "new", now),
            "a new request after the end"
        );
    }

    #[test]
    fn an_open_chain_is_in_hand_until_it_ends_or_outlives_its_lease() {
        let now = Utc::now();
        let lease = Duration::from_secs(3600);
        let chain = |state, age_seconds: i64| Chain {
            attempt: 1,
            state,
            by: "m".into(),
            at: now - chrono::Duration::seconds(age_seconds),
        };
        assert!(chain(ChainState::Sent, 10).in_hand(now, lease));
        assert!(chain(ChainState::Claimed, 10).in_hand(now, lease));
        assert!(!chain(ChainState::Ended, 10).in_hand(now, lease), "the export's outcome ends it");
        assert!(chain(ChainState::Sent, 3599).in_hand(now, lease));
        assert!(!chain(ChainState::Sent, 3600).in_hand(now, lease), "its message was lost");
    }

    #[test]
    fn no_signed_url_is_kept() {
        let mut export: Export =
            crate::dealmachine::parse_export(include_bytes!("../tests/fixtures/get-export-completed.json"))
                .unwrap();
        export.download_urls.as_mut().unwrap()[0].url =
            "https://storage.googleapis.com/b/o.csv.gz?X-Goog-Signature=abc&X-Goog-Expires=60#x".into();
        let kept = Manifest::new(&export, vec![]).export.download_urls.unwrap();
        assert_eq!(kept[0].url, "https://storage.googleapis.com/b/o.csv.gz");
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
