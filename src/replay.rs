//! Replays: an export's webhook sent again, for a consumer that lost it on its own side.
//!
//! The event is sent as the bytes stored in the ledger's outbox when it was first rendered: the
//! same type, `webhook-id` and body, so a consumer that did get it drops it as a duplicate. An
//! event delivered before the outbox existed is rebuilt once from its marker (and a completed
//! one's manifest) and stored there. Nothing is copied, and the API is not asked.

use serde::Serialize;
use tracing::{info, warn};

use chrono::{DateTime, Utc};

use crate::announce::Ending;
use crate::events::{ExportId, ReplayRequest};
use crate::handler::{Relay, RelayError};
use crate::manifest::DeliveryRecord;
use crate::notify::{ErrorInfo, Event, EventData, EventType, NotifyError, OutcomeData};

/// Why there is nothing to replay. Each says what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "export {0} was never delivered, so there is nothing to replay; relay it with {{\"export_id\": \"{0}\"}} instead"
    )]
    NeverDelivered(ExportId),
    #[error(
        "export {0} never had {1} delivered, so there is nothing to replay; leave \"type\" out to replay what it had"
    )]
    TypeNeverDelivered(ExportId, &'static str),
    #[error(
        "the {1} marker of export {0} was written before replays existed and does not hold the event; delete it and relay the export again (docs/OPERATIONS.md)"
    )]
    OldMarker(ExportId, &'static str),
    #[error(
        "export {0} had export.completed delivered, but its manifest.json is gone; put it back before replaying (docs/OPERATIONS.md)"
    )]
    ManifestMissing(ExportId),
    #[error("WEBHOOK_URL is not set, so there is nowhere to replay to")]
    NoWebhook,
    #[error("the webhook endpoint answered 410 Gone: it is retired; set a new WEBHOOK_URL, then replay")]
    EndpointGone,
}

impl ReplayError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NeverDelivered(_) | Self::TypeNeverDelivered(..) => "never_delivered",
            Self::OldMarker(..) => "marker_without_event",
            Self::ManifestMissing(_) => "manifest_missing",
            Self::NoWebhook => "no_webhook_url",
            Self::EndpointGone => "webhook_gone",
        }
    }
}

/// The answer to a replay invoke.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub export_id: String,
    pub replayed: bool,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<EventType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

impl Relay {
    /// Sends the export's delivered webhook again. Nothing to replay is an answer, not a
    /// failure; a webhook or S3 that fails is an invocation error, as for a direct invoke.
    pub async fn replay(&self, request: ReplayRequest) -> Result<ReplayReport, RelayError> {
        let report = ReplayReport {
            export_id: request.export_id.to_string(),
            replayed: false,
            kind: None,
            webhook_id: None,
            error: None,
        };
        match self.send_again(&request).await {
            Ok(kind) => {
                self.metrics.replayed();
                let webhook_id = kind.webhook_id(request.export_id.as_str());
                info!(event = kind.as_str(), %webhook_id, "webhook replayed");
                Ok(ReplayReport { replayed: true, kind: Some(kind), webhook_id: Some(webhook_id), ..report })
            }
            Err(e @ RelayError::Replay(_)) => {
                warn!(code = e.code(), error = %e, "nothing replayed");
                Ok(ReplayReport { error: Some(e.info()), ..report })
            }
            Err(e) => Err(e),
        }
    }

    async fn send_again(&self, request: &ReplayRequest) -> Result<EventType, RelayError> {
        let notifier = self.notifier.as_ref().ok_or(ReplayError::NoWebhook)?;
        let id = &request.export_id;
        let delivered = self.last_delivery(request).await?;
        let kind = delivered.kind;
        let body = match self.ledger.stored_event(id, kind).await? {
            Some(body) => body,
            None => self.store_legacy(id, delivered).await?,
        };
        match self.send_counted(notifier, id, kind, &body).await {
            Err(RelayError::Notify(NotifyError::Gone { .. })) => Err(ReplayError::EndpointGone.into()),
            sent => sent.map(|()| kind),
        }
    }

    /// The delivery asked for, or else the last one.
    async fn last_delivery(&self, request: &ReplayRequest) -> Result<DeliveryRecord, RelayError> {
        let id = &request.export_id;
        let kinds = request.kind.map_or(EventType::ALL.to_vec(), |kind| vec![kind]);
        let mut last: Option<DeliveryRecord> = None;
        for kind in kinds {
            if let Some(found) = self.ledger.delivery(id, kind).await?
                && last.as_ref().is_none_or(|l| found.delivered_at > l.delivered_at)
            {
                last = Some(found);
            }
        }
        last.ok_or_else(|| match request.kind {
            Some(kind) => ReplayError::TypeNeverDelivered(id.clone(), kind.as_str()).into(),
            None => ReplayError::NeverDelivered(id.clone()).into(),
        })
    }

    /// An event delivered before the outbox existed, rebuilt from its marker as it was delivered
    /// (a completed one's files from the manifest, with fresh links) and stored in the outbox, so
    /// every later replay sends these bytes.
    async fn store_legacy(&self, id: &ExportId, delivered: DeliveryRecord) -> Result<Vec<u8>, RelayError> {
        let kind = delivered.kind;
        let data = delivered.data.ok_or(ReplayError::OldMarker(id.clone(), kind.as_str()))?;
        let at = delivered
            .timestamp
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map_or(delivered.delivered_at, |t| t.with_timezone(&Utc));
        let event = match (kind, data.error) {
            (EventType::Completed, _) => {
                let manifest =
                    self.ledger.committed(id).await?.ok_or(ReplayError::ManifestMissing(id.clone()))?;
                let ending = Ending::completed(&manifest.export, &manifest);
                self.event(id, &ending, data.export.metadata, at).await?
            }
            (kind, Some(error)) => Event::new(
                kind,
                at,
                EventData { export: data.export, outcome: OutcomeData::Failure { error } },
            ),
            (kind, None) => return Err(ReplayError::OldMarker(id.clone(), kind.as_str()).into()),
        };
        Ok(self.ledger.store_event(id, kind, event.render()).await?)
    }
}
