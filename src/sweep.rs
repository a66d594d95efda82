//! The scheduled sweep: pages through the organization's recent exports and puts on the queue
//! every one that should be relayed or polled and is not, so the bucket eventually holds every
//! completed export even when upstream forgot one or a message ended in the dead-letter queue.

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use tracing::{info, warn};

use crate::dealmachine::{Export, ExportStatus};
use crate::events::{ExportId, ExportRequest, SweepRequest};
use crate::handler::{Relay, RelayError};
use crate::notify::EventType;
use crate::pages::{ListStop, Pages};

/// What a sweep did; also its invocation's response.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct SweepSummary {
    pub pages_read: u32,
    pub exports_seen: u32,
    pub already_relayed: u32,
    /// Already on the queue: a poll chain or a copy started within `POLL_TIMEOUT_SECONDS`.
    pub already_in_flight: u32,
    pub enqueued_for_copy: u32,
    pub enqueued_for_polling: u32,
    pub skipped_expired: u32,
    /// Completed exports the relay already reported as `export.failed`.
    pub skipped_failed: u32,
    pub stopped_early: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

impl SweepSummary {
    fn stop(&mut self, reason: String) {
        self.stopped_early = true;
        self.stop_reason = Some(reason);
    }
}

impl Relay {
    /// Completed exports first (the ones at risk of expiring), then running ones, each newest
    /// first, until the lookback window, `max_exports`, or the rate budget ends the sweep.
    pub async fn sweep(&self, request: SweepRequest) -> Result<SweepSummary, RelayError> {
        let cutoff = Utc::now() - chrono::Duration::hours(i64::from(request.lookback_hours));
        let max_exports = request.max_exports.unwrap_or(u32::MAX);
        let mut summary = SweepSummary::default();
        let mut pages = Pages::new(&self.api, &self.metrics, self.sweep_reserve);
        'statuses: for status in [ExportStatus::Completed, ExportStatus::Pending, ExportStatus::Processing] {
            loop {
                let page = match pages.next(status).await {
                    Ok(Some((page, _))) => page,
                    Ok(None) => break,
                    Err(ListStop::Api(e)) => return Err(e.into()),
                    Err(stop) => {
                        summary.stop(stop.to_string());
                        break 'statuses;
                    }
                };
                summary.pages_read = pages.pages_read;
                for export in &page.exports {
                    if export.created_at.is_some_and(|at| at < cutoff) {
                        continue 'statuses;
                    }
                    if summary.exports_seen >= max_exports {
                        summary.stop(format!("max_exports ({max_exports}) reached"));
                        break 'statuses;
                    }
                    summary.exports_seen += 1;
                    self.sweep_one(export, &mut summary).await?;
                }
            }
        }
        info!(
            pages_read = summary.pages_read,
            exports_seen = summary.exports_seen,
            already_relayed = summary.already_relayed,
            already_in_flight = summary.already_in_flight,
            enqueued_for_copy = summary.enqueued_for_copy,
            enqueued_for_polling = summary.enqueued_for_polling,
            skipped_expired = summary.skipped_expired,
            skipped_failed = summary.skipped_failed,
            stopped_early = summary.stopped_early,
            stop_reason = summary.stop_reason.as_deref(),
            "sweep finished"
        );
        Ok(summary)
    }

    /// Enqueues one listed export if it needs the relay and nobody is on it yet.
    async fn sweep_one(&self, export: &Export, summary: &mut SweepSummary) -> Result<(), RelayError> {
        let Ok(id) = ExportId::parse(&export.export_id) else {
            warn!(export_id = %export.export_id, "the API listed an export ID that is not an ID; skipped");
            return Ok(());
        };
        let completed = export.status == ExportStatus::Completed;
        if completed {
            if self.ledger.is_committed(&id).await? {
                summary.already_relayed += 1;
                return Ok(());
            }
            if export.is_expired(Utc::now()) {
                summary.skipped_expired += 1;
                return Ok(());
            }
            if self.ledger.delivered(&id, EventType::Failed).await? {
                summary.skipped_failed += 1;
                return Ok(());
            }
        }
        if self.ledger.in_flight(&id, self.poll.timeout).await? {
            summary.already_in_flight += 1;
            return Ok(());
        }
        // On the queue first, then the marker: a lost marker costs a duplicate, never an export.
        self.requeuer.enqueue(&ExportRequest::new(id.clone()), Duration::ZERO).await?;
        self.ledger.mark_in_flight(&id).await?;
        if completed {
            summary.enqueued_for_copy += 1;
        } else {
            summary.enqueued_for_polling += 1;
        }
        info!(export_id = %id, status = ?export.status, "enqueued by the sweep");
        Ok(())
    }
}
