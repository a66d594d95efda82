//! How an export's outcome reaches downstream. Each event is rendered once into the ledger's
//! outbox and sent as those bytes until it is delivered, so one `webhook-id` always means one
//! body; and an export found committed is announced as completed, never as a failure.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tracing::{info, warn};

use crate::dealmachine::Export;
use crate::events::{ExportId, ExportRequest};
use crate::handler::{Outcome, Relay, RelayError, Report};
use crate::manifest::{LedgerError, Manifest, Receipt};
use crate::notify::{
    self, CompletedData, ErrorInfo, Event, EventData, EventType, ExportFields, FileRef, Notifier,
    NotifyError, OutcomeData,
};

/// How an export ended, as the webhook tells it.
pub(crate) struct Ending<'a> {
    kind: EventType,
    export: Option<&'a Export>,
    manifest: Option<&'a Manifest>,
    error: Option<ErrorInfo>,
    /// Kept in the ledger (outbox and marker). Only exports the API showed us, or that are
    /// committed, are: an ID it does not know leaves no trace in the bucket.
    keep: bool,
}

impl<'a> Ending<'a> {
    pub(crate) fn completed(export: &'a Export, manifest: &'a Manifest) -> Self {
        Self {
            kind: EventType::Completed,
            export: Some(export),
            manifest: Some(manifest),
            error: None,
            keep: true,
        }
    }

    pub(crate) fn without_files(
        kind: EventType,
        export: Option<&'a Export>,
        code: &str,
        message: String,
    ) -> Self {
        let error = Some(ErrorInfo { code: code.into(), message });
        Self { kind, export, manifest: None, error, keep: export.is_some() }
    }

    pub(crate) fn from_error(kind: EventType, export: Option<&'a Export>, error: &RelayError) -> Self {
        Self::without_files(kind, export, error.code(), error.to_string())
    }

    /// A completed export whose manifest is gone, but whose event is in the outbox.
    fn stored_completed(export: Option<&'a Export>) -> Self {
        Self { kind: EventType::Completed, export, manifest: None, error: None, keep: true }
    }
}

impl Relay {
    /// Tells downstream how the export ended, and reports it. Completed always wins: before a
    /// failure goes out the ledger is read, and an export that is committed (or whose completed
    /// event was rendered) is announced as completed instead, re-sent if still owed.
    pub(crate) async fn announce(
        &self,
        request: &ExportRequest,
        ending: Ending<'_>,
    ) -> Result<Report, RelayError> {
        if ending.kind == EventType::Completed {
            return self.announce_as_is(request, ending).await;
        }
        let id = &request.export_id;
        if let Some(manifest) = self.ledger.committed(id).await? {
            warn!(
                instead_of = ending.kind.as_str(),
                "the export is committed: announced as completed, not as a failure"
            );
            return self.announce_as_is(request, Ending::completed(&manifest.export, &manifest)).await;
        }
        if self.ledger.stored_event(id, EventType::Completed).await?.is_some() {
            warn!(
                instead_of = ending.kind.as_str(),
                "export.completed was rendered before: it wins over a failure"
            );
            return self.announce_as_is(request, Ending::stored_completed(ending.export)).await;
        }
        self.announce_as_is(request, ending).await
    }

    async fn announce_as_is(
        &self,
        request: &ExportRequest,
        ending: Ending<'_>,
    ) -> Result<Report, RelayError> {
        let kind = ending.kind;
        let body = self.body(request, &ending).await?;
        match &self.notifier {
            Some(notifier) => {
                self.deliver_once(notifier, &request.export_id, kind, &body, ending.keep).await?
            }
            None => info!(event = kind.as_str(), "no WEBHOOK_URL set; nothing to notify"),
        }
        let outcome = match kind {
            EventType::Completed => Outcome::Completed,
            EventType::Failed => Outcome::Failed,
            EventType::Expired => Outcome::Expired,
            EventType::TimedOut => Outcome::TimedOut,
        };
        self.end_chain(request).await;
        self.metrics.outcome(outcome.as_str());
        if outcome == Outcome::Completed {
            let age = ending.export.and_then(|e| e.created_at).map(|at| (Utc::now() - at).as_seconds_f64());
            self.metrics.completed(request.attempt, age);
        }
        match &ending.error {
            Some(e) => {
                warn!(outcome = ?outcome, code = %e.code, reason = %e.message, "export finished without files")
            }
            None => info!(outcome = ?outcome, "export relayed"),
        }
        Ok(Report { files: notify::files_of(&body), error: ending.error, ..Report::new(request, outcome) })
    }

    /// The event's exact bytes: from the outbox when it was rendered before, or rendered now and
    /// stored there before anything is sent. Of two runs rendering at once, both get the first
    /// one's bytes.
    async fn body(&self, request: &ExportRequest, ending: &Ending<'_>) -> Result<Vec<u8>, RelayError> {
        let id = &request.export_id;
        if !ending.keep {
            return self.render(request, ending).await;
        }
        if let Some(stored) = self.ledger.stored_event(id, ending.kind).await? {
            return Ok(stored);
        }
        let rendered = self.render(request, ending).await?;
        Ok(self.ledger.store_event(id, ending.kind, rendered).await?)
    }

    /// Renders the event now: at the time of the outcome (the commit, for a completed export),
    /// with upstream's metadata as first received, and presigned links minted now.
    async fn render(&self, request: &ExportRequest, ending: &Ending<'_>) -> Result<Vec<u8>, RelayError> {
        let metadata = match ending.keep {
            true => self.kept_metadata(request).await?,
            false => request.metadata.clone().unwrap_or_default(),
        };
        let at = ending.manifest.map_or_else(Utc::now, |m| m.relayed_at);
        Ok(self.event(&request.export_id, ending, metadata, at).await?.render())
    }

    /// Keeps this record's metadata if it is the first to carry any, so a record without it
    /// (the sweep's) never replaces it. Only for exports the API showed us.
    pub(crate) async fn keep_metadata(&self, request: &ExportRequest) -> Result<(), RelayError> {
        let Some(metadata) = &request.metadata else { return Ok(()) };
        let receipt = Receipt {
            metadata: metadata.clone(),
            first_seen_at: request.first_seen_at.unwrap_or_else(Utc::now),
        };
        Ok(self.ledger.keep_receipt(&request.export_id, &receipt).await?)
    }

    /// Upstream's metadata as the first record that carried any had it. Read first: a receipt
    /// is usually there already (kept on first receipt), and then nothing is written.
    async fn kept_metadata(&self, request: &ExportRequest) -> Result<Map<String, Value>, RelayError> {
        if let Some(receipt) = self.ledger.receipt(&request.export_id).await? {
            return Ok(receipt.metadata);
        }
        let Some(metadata) = &request.metadata else { return Ok(Map::new()) };
        self.keep_metadata(request).await?;
        // Another record may have kept its own a moment earlier; its copy is the one kept.
        let receipt = self.ledger.receipt(&request.export_id).await?;
        Ok(receipt.map_or_else(|| metadata.clone(), |r| r.metadata))
    }

    /// The event telling how the export ended, with its files if it has any.
    pub(crate) async fn event(
        &self,
        id: &ExportId,
        ending: &Ending<'_>,
        metadata: Map<String, Value>,
        at: DateTime<Utc>,
    ) -> Result<Event, RelayError> {
        let outcome = match (ending.kind, ending.manifest) {
            (EventType::Completed, Some(manifest)) => OutcomeData::Completed(CompletedData {
                manifest: self.ledger.manifest_ref(id),
                files: self.file_refs(manifest).await?,
                links_omitted: false,
                verified: manifest.verified,
                verification_error: manifest.verification_error.clone(),
            }),
            (EventType::Completed, None) => {
                let message = "export.completed is owed, but neither its manifest nor its stored event is there; put manifest.json back (docs/OPERATIONS.md)".into();
                return Err(LedgerError::Unreadable { key: self.ledger.manifest_key(id), message }.into());
            }
            (_, _) => OutcomeData::Failure {
                error: ending
                    .error
                    .clone()
                    .unwrap_or_else(|| ErrorInfo { code: "unknown".into(), message: String::new() }),
            },
        };
        Ok(Event::new(
            ending.kind,
            at,
            EventData { export: export_fields(id, ending.export, metadata), outcome },
        ))
    }

    /// The webhook's view of the committed files: where each landed, the version S3 gave it,
    /// and a presigned link when configured.
    async fn file_refs(&self, manifest: &Manifest) -> Result<Vec<FileRef>, RelayError> {
        let mut refs = Vec::with_capacity(manifest.files.len());
        for file in &manifest.files {
            let url = match self.presign_ttl {
                Some(ttl) => Some(self.transfer.presign(&file.key, ttl).await?),
                None => None,
            };
            refs.push(FileRef {
                filename: file.filename.clone(),
                bucket: self.transfer.bucket().to_string(),
                key: file.key.clone(),
                region: self.ledger.region(),
                version_id: file.version_id.clone(),
                size: file.size,
                sha256: file.sha256.clone(),
                rows: file.rows,
                url,
            });
        }
        Ok(refs)
    }

    /// Sends the stored body unless it was delivered before, then records that it was.
    async fn deliver_once(
        &self,
        notifier: &Notifier,
        id: &ExportId,
        kind: EventType,
        body: &[u8],
        keep: bool,
    ) -> Result<(), RelayError> {
        if keep && self.ledger.delivered(id, kind).await? {
            info!(event = kind.as_str(), "webhook was delivered before; not sent again");
            return Ok(());
        }
        self.send_counted(notifier, id, kind, body).await?;
        if keep {
            self.ledger.mark_delivered(id, kind).await?;
        }
        Ok(())
    }

    /// Sends a body, counting the tries and logging how it went. A 410 counts as a failure: the
    /// endpoint is retired, and the event waits for a new one.
    pub(crate) async fn send_counted(
        &self,
        notifier: &Notifier,
        id: &ExportId,
        kind: EventType,
        body: &[u8],
    ) -> Result<(), RelayError> {
        let webhook_id = kind.webhook_id(id.as_str());
        let sent = notifier.send(&webhook_id, body).await;
        let tries = match &sent {
            Ok(tries) => *tries,
            Err(e) => e.tries().unwrap_or(1),
        };
        self.metrics.webhook(tries, sent.is_err());
        match sent {
            Ok(tries) => info!(event = kind.as_str(), %webhook_id, tries, "webhook delivered"),
            Err(e @ NotifyError::Gone { .. }) => {
                tracing::error!(event = kind.as_str(), %webhook_id, error = %e, "webhook endpoint gone; nothing marked delivered");
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

/// What the event tells about the export, as the API (or the manifest) showed it.
fn export_fields(id: &ExportId, export: Option<&Export>, metadata: Map<String, Value>) -> ExportFields {
    ExportFields {
        export_id: id.to_string(),
        name: export.and_then(|e| e.name.clone()),
        status: export.and_then(|e| serde_json::to_value(e.status).ok()?.as_str().map(str::to_string)),
        record_count: export.and_then(|e| e.record_count),
        file_size: export.and_then(|e| e.file_size),
        created_at: export.and_then(|e| e.created_at),
        expires_at: export.and_then(|e| e.expires_at),
        metadata,
    }
}
