//! Replays: an export's webhook sent again, for a consumer that lost it on its own side.
//!
//! The event is rebuilt from the ledger, never from the API: a completed export's body from its
//! manifest, any other from its delivery marker. It keeps its type, its `webhook-id` and its
//! timestamp, so a consumer that did get it drops it as a duplicate. Nothing is copied, and no
//! marker changes.

use serde::Serialize;
use tracing::{info, warn};

use crate::events::{ExportId, ExportRequest, ReplayRequest};
use crate::handler::{Ending, Relay, RelayError};
use crate::manifest::DeliveryRecord;
use crate::notify::{Delivery, ErrorInfo, Event, EventType};

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
            Ok(event) => {
                self.metrics.replayed();
                info!(event = event.kind.as_str(), webhook_id = %event.webhook_id(), "webhook replayed");
                Ok(ReplayReport {
                    replayed: true,
                    kind: Some(event.kind),
                    webhook_id: Some(event.webhook_id()),
                    ..report
                })
            }
            Err(e @ RelayError::Replay(_)) => {
                warn!(code = e.code(), error = %e, "nothing replayed");
                Ok(ReplayReport { error: Some(e.info()), ..report })
            }
            Err(e) => Err(e),
        }
    }

    async fn send_again(&self, request: &ReplayRequest) -> Result<Event, RelayError> {
        let notifier = self.notifier.as_ref().ok_or(ReplayError::NoWebhook)?;
        let delivered = self.last_delivery(request).await?;
        let event = self.rebuild(&request.export_id, delivered).await?;
        match self.send_counted(notifier, &event).await? {
            Delivery::Delivered { .. } => Ok(event),
            Delivery::Gone => Err(ReplayError::EndpointGone.into()),
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

    /// The event as it was delivered: a completed export's from its manifest (with fresh
    /// presigned links), any other's from the marker.
    async fn rebuild(&self, id: &ExportId, delivered: DeliveryRecord) -> Result<Event, RelayError> {
        let data = delivered.data.ok_or(ReplayError::OldMarker(id.clone(), delivered.kind.as_str()))?;
        let mut event = match delivered.kind {
            EventType::Completed => {
                let manifest =
                    self.ledger.committed(id).await?.ok_or(ReplayError::ManifestMissing(id.clone()))?;
                let request =
                    ExportRequest { metadata: Some(data.metadata), ..ExportRequest::new(id.clone()) };
                self.event(&request, &Ending::completed(&manifest.export, &manifest)).await?
            }
            kind => Event::new(kind, data),
        };
        if let Some(timestamp) = delivered.timestamp {
            event.timestamp = timestamp;
        }
        Ok(event)
    }
}
