//! The scheduled sweep: reads the organization's exports and puts on the queue every one that
//! should be relayed, polled or announced and that nobody has in hand, so the bucket
//! eventually holds every completed export even when upstream forgot one or a message ended in
//! the dead-letter queue.
//!
//! It reads the unfiltered list in one drift-proof [`Pass`], takes each export's status from
//! its item, and leaves everything else (links, files) to the relay's own `GET`. It stops at
//! the first 429 or a low budget, or once it has released what one sweep may, and records
//! where, so the next sweep carries on from there.

mod release;
mod window;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{info, warn};

use crate::config::MAX_SQS_DELAY_SECONDS;
use crate::dealmachine::{Export, ExportStatus};
use crate::events::{ExportId, ExportRequest, SweepRequest};
use crate::handler::{Relay, RelayError};
use crate::manifest::{Chain, ChainState, SweepCursor, Versioned};
use crate::notify::EventType;
use crate::pages::{ListStop, Listed, Pages, Pass, Position};
use release::Release;
pub use window::{LINKS_LIVE_DAYS, Window};

/// Who opens a chain for an export the sweep enqueues.
const SWEEP_CLAIMANT: &str = "sweep";

/// What a sweep did; also its invocation's response.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct SweepSummary {
    pub pages_read: u32,
    /// Distinct exports listed.
    pub exports_seen: u32,
    /// Running or failed exports created before the lookback.
    pub out_of_window: u32,
    pub already_relayed: u32,
    /// In hand: a record of the export was received, or the sweep enqueued it, and its poll
    /// chain has not ended.
    pub already_in_flight: u32,
    pub enqueued_for_copy: u32,
    pub enqueued_for_polling: u32,
    /// Failed exports never announced, enqueued so the relay sends `export.failed`.
    pub enqueued_failed: u32,
    /// Completed exports whose `expires_at` has passed, or that the relay announced expired.
    pub skipped_expired: u32,
    /// Exports the relay already reported as `export.failed`.
    pub skipped_failed: u32,
    /// Running exports whose poll chain ended with `export.timed_out`: never restarted by a
    /// sweep (they are enqueued for copying once they complete).
    pub skipped_timed_out: u32,
    pub stopped_early: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// Where in the list this sweep started, when it carried on from the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<u32>,
    /// Where the next sweep carries on, when this one stopped early.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_at: Option<u32>,
    /// `X-RateLimit-Reset`, when the budget stopped the sweep.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_resets_at: Option<DateTime<Utc>>,
}

/// What the sweep makes of one listed export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    OutOfWindow,
    Relayed,
    InHand,
    Expired,
    Failed,
    TimedOut,
    Enqueue(Work),
}

/// What an enqueued export is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Copy,
    Poll,
    AnnounceFailure,
}

/// Why a sweep stopped before the end of its window, and where to carry on.
struct Stop {
    reason: String,
    at: Position,
}

impl Relay {
    /// One pass over the list, newest first, until a whole page is behind the window, the
    /// rate budget, or what one sweep may release, ends it.
    pub async fn sweep(&self, request: SweepRequest) -> Result<SweepSummary, RelayError> {
        let window = Window::new(Utc::now(), request.lookback_hours);
        let resumed = self.ledger.sweep_cursor().await?.filter(|c| window.resumes(c.stopped_at));
        let mut summary =
            SweepSummary { resumed_from: resumed.as_ref().map(|c| c.position.offset), ..Default::default() };
        let mut pass = resumed.map_or_else(Pass::new, |c| Pass::resume(c.position));
        let stop = self.sweep_pass(&mut pass, &window, request.max_exports, &mut summary).await?;
        let cursor = stop.map(|stop| {
            summary.stopped_early = true;
            summary.stop_reason = Some(stop.reason.clone());
            summary.resume_at = Some(stop.at.offset);
            SweepCursor { position: stop.at, stopped_at: window.now, reason: stop.reason }
        });
        self.ledger.save_sweep_cursor(cursor.as_ref()).await?;
        info!(summary = ?summary, "sweep finished");
        Ok(summary)
    }

    /// Reads pages and judges their exports; `Some` when the sweep stops before the end.
    async fn sweep_pass(
        &self,
        pass: &mut Pass,
        window: &Window,
        max_exports: Option<u32>,
        summary: &mut SweepSummary,
    ) -> Result<Option<Stop>, RelayError> {
        let mut pages = Pages::new(&self.api, &self.metrics, self.sweep_reserve);
        let mut release: Option<Release> = None;
        while let Some(offset) = pass.next_offset() {
            let page = match pages.read(None, offset).await {
                Ok((page, _)) => page,
                Err(ListStop::Api(e)) => return Err(e.into()),
                Err(stop) => {
                    warn!(offset, reason = %stop, "the sweep stops at the rate budget");
                    summary.budget_resets_at = stop.reset();
                    return Ok(Some(Stop {
                        reason: format!("{stop} (at offset {offset})"),
                        at: pass.position(),
                    }));
                }
            };
            summary.pages_read = pages.pages_read;
            let release =
                release.get_or_insert_with(|| Release::new(&pages.rate, self.sweep_reserve, max_exports));
            for listed in pass.take(offset, &page) {
                summary.exports_seen += 1;
                if let Some(stop) = self.sweep_one(&listed, window, release, summary).await? {
                    return Ok(Some(stop));
                }
            }
            if window.is_behind(&page.exports) {
                break;
            }
        }
        Ok(None)
    }

    /// Judges one listed export and enqueues it if it needs the relay and nobody has it in
    /// hand; `Some` when the sweep may release no more.
    async fn sweep_one(
        &self,
        listed: &Listed,
        window: &Window,
        release: &mut Release,
        summary: &mut SweepSummary,
    ) -> Result<Option<Stop>, RelayError> {
        let export = &listed.export;
        let Ok(id) = ExportId::parse(&export.export_id) else {
            warn!(export_id = %export.export_id, "the API listed an export ID that is not an ID; skipped");
            return Ok(None);
        };
        let (verdict, chain) = self.judge(export, &id, window).await?;
        let work = match verdict {
            Verdict::Enqueue(work) => work,
            other => {
                count(summary, other);
                return Ok(None);
            }
        };
        let Some(delay) = release.next_delay() else {
            return Ok(Some(Stop { reason: release.stop_reason(), at: listed.position }));
        };
        if self.release(&id, chain.as_ref(), delay).await? {
            count(summary, Verdict::Enqueue(work));
            info!(export_id = %id, status = ?export.status, delay_seconds = delay.as_secs(), "enqueued by the sweep");
        } else {
            count(summary, Verdict::InHand);
        }
        Ok(None)
    }

    /// What the sweep should do with `export`, and its chain as read (to open it from).
    async fn judge(
        &self,
        export: &Export,
        id: &ExportId,
        window: &Window,
    ) -> Result<(Verdict, Option<Versioned<Chain>>), RelayError> {
        if !window.holds(export) {
            let expired = export.status == ExportStatus::Completed;
            return Ok((if expired { Verdict::Expired } else { Verdict::OutOfWindow }, None));
        }
        if export.status == ExportStatus::Completed && self.ledger.is_committed(id).await? {
            return Ok((Verdict::Relayed, None));
        }
        let chain = self.ledger.chain(id).await?;
        if chain.as_ref().is_some_and(|c| c.value.in_hand(window.now, self.in_hand_lease())) {
            return Ok((Verdict::InHand, chain));
        }
        let ended = chain.as_ref().is_some_and(|c| c.value.state == ChainState::Ended);
        let verdict = match export.status {
            ExportStatus::Completed if self.ledger.delivered(id, EventType::Failed).await? => Verdict::Failed,
            ExportStatus::Completed if self.ledger.delivered(id, EventType::Expired).await? => {
                Verdict::Expired
            }
            ExportStatus::Completed => Verdict::Enqueue(Work::Copy),
            // A running export's chain ends only with `export.timed_out`.
            ExportStatus::Pending | ExportStatus::Processing if ended => Verdict::TimedOut,
            ExportStatus::Pending | ExportStatus::Processing => Verdict::Enqueue(Work::Poll),
            ExportStatus::Failed if ended || self.ledger.delivered(id, EventType::Failed).await? => {
                Verdict::Failed
            }
            ExportStatus::Failed => Verdict::Enqueue(Work::AnnounceFailure),
        };
        Ok((verdict, chain))
    }

    /// Opens the export's chain for the sweep, then enqueues it with `delay`. False when a
    /// record opened the chain since it was read: the export is in hand, and nothing is sent.
    async fn release(
        &self,
        id: &ExportId,
        chain: Option<&Versioned<Chain>>,
        delay: Duration,
    ) -> Result<bool, RelayError> {
        let claim =
            Chain { attempt: 1, state: ChainState::Claimed, by: SWEEP_CLAIMANT.into(), at: Utc::now() };
        let Some(claimed) = self.ledger.move_chain(id, chain, claim).await? else {
            return Ok(false);
        };
        self.requeuer.enqueue(&ExportRequest::new(id.clone()), delay).await?;
        let sent = Chain { state: ChainState::Sent, ..claimed.value.clone() };
        if let Err(e) = self.ledger.move_chain(id, Some(&claimed), sent).await {
            // The claim marks the export in hand just as well, for as long.
            warn!(export_id = %id, error = %e, "enqueued, but the ledger could not record it as sent");
        }
        Ok(true)
    }

    /// How long an open chain marks its export in hand without moving: a message delayed as
    /// long as SQS allows, then retried through the whole retry schedule before the redrive
    /// policy takes it. A chain older than that lost its message (to the dead-letter queue).
    fn in_hand_lease(&self) -> Duration {
        Duration::from_secs(MAX_SQS_DELAY_SECONDS) + self.retries.span()
    }
}

fn count(summary: &mut SweepSummary, verdict: Verdict) {
    let counter = match verdict {
        Verdict::OutOfWindow => &mut summary.out_of_window,
        Verdict::Relayed => &mut summary.already_relayed,
        Verdict::InHand => &mut summary.already_in_flight,
        Verdict::Expired => &mut summary.skipped_expired,
        Verdict::Failed => &mut summary.skipped_failed,
        Verdict::TimedOut => &mut summary.skipped_timed_out,
        Verdict::Enqueue(Work::Copy) => &mut summary.enqueued_for_copy,
        Verdict::Enqueue(Work::Poll) => &mut summary.enqueued_for_polling,
        Verdict::Enqueue(Work::AnnounceFailure) => &mut summary.enqueued_failed,
    };
    *counter += 1;
}
