//! The scheduled sweep: pages through the organization's recent exports and puts on the queue
//! every one that should be relayed or polled and is not, so the bucket eventually holds every
//! completed export even when upstream forgot one or a message ended in the dead-letter queue.

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use tracing::{info, warn};

use crate::dealmachine::{ApiError, Export, ExportStatus};
use crate::events::{ExportId, ExportRequest, SweepRequest};
use crate::handler::{Relay, RelayError};
use crate::notify::EventType;

/// The API's largest page.
const PAGE_SIZE: u32 = 100;

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
        let mut remaining: Option<u64> = None;
        'statuses: for status in [ExportStatus::Completed, ExportStatus::Pending, ExportStatus::Processing] {
            let mut offset = 0;
            loop {
                if let Some(left) = remaining.filter(|left| *left < self.sweep_reserve) {
                    summary.stop(format!(
                        "rate budget: X-RateLimit-Remaining is {left}, below SWEEP_RESERVE_REQUESTS ({})",
                        self.sweep_reserve
                    ));
                    break 'statuses;
                }
                let (page, rate) = match self.api.list_exports(status, PAGE_SIZE, offset).await {
                    Ok(answer) => answer,
                    Err(ApiError::RateLimited { .. }) => {
                        summary.stop("rate limited (429) by the DealMachine API".into());
                        break 'statuses;
                    }
                    Err(e) => return Err(e.into()),
                };
                summary.pages_read += 1;
                // The tighter of the minute's and the day's budget.
                remaining = [rate.remaining, rate.remaining_today].into_iter().flatten().min();
                self.metrics.api_answer(rate.rate_limited, rate.remaining);
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
                if !page.has_more || page.exports.is_empty() {
                    break;
                }
                offset += page.exports.len() as u32;
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
