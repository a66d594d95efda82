//! Reading the export list, `GET /exports`, a page at a time within the organization's rate
//! budget. The sweep and a batch's status check both read it this way, so both stop the same
//! way: before the budget runs low, or at the first 429, which is never retried.
//!
//! The sweep reads the list as one [`Pass`] over all statuses: the unfiltered list is ordered by
//! `created_at`, which never changes, so an export that moves from `processing` to `completed`
//! keeps its place, where in a per-status list it would leave and shift every offset behind it.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::dealmachine::{ApiError, DealMachineClient, Export, ExportStatus, Page, RateInfo};
use crate::metrics::Metrics;

/// The API's largest page.
pub const PAGE_SIZE: u32 = 100;
/// Items each page of a pass reads again from the page before: an export deleted while the
/// pass runs shifts the rest back by one, and this many such shifts per page skip nothing.
pub const OVERLAP: u32 = 5;

/// Why no more pages are read.
#[derive(Debug, thiserror::Error)]
pub enum ListStop {
    #[error(
        "rate budget: {left} requests left, below SWEEP_RESERVE_REQUESTS ({reserve}); the minute's budget comes back at {}",
        at_or_unknown(*reset)
    )]
    LowBudget { left: u64, reserve: u64, reset: Option<DateTime<Utc>> },
    #[error(
        "rate limited (429) by the DealMachine API; not retried, its budget comes back at {}",
        at_or_unknown(*reset)
    )]
    RateLimited { reset: Option<DateTime<Utc>> },
    #[error(transparent)]
    Api(ApiError),
}

impl ListStop {
    /// When the API said its budget comes back, if it did.
    pub fn reset(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::LowBudget { reset, .. } | Self::RateLimited { reset } => *reset,
            Self::Api(_) => None,
        }
    }
}

fn at_or_unknown(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "an unknown time (no X-RateLimit-Reset)".into(), |at| at.to_rfc3339())
}

/// Pages of the list, newest first, counting what they cost.
pub struct Pages<'a> {
    api: &'a DealMachineClient,
    metrics: &'a Metrics,
    /// Stop when fewer requests than this remain (`SWEEP_RESERVE_REQUESTS`).
    reserve: u64,
    /// What the last answer said about the budget.
    pub rate: RateInfo,
    /// For [`Pages::next`]: the status being read, the offset of its next page, and whether it
    /// has one.
    cursor: Option<(ExportStatus, u32, bool)>,
    pub pages_read: u32,
}

impl<'a> Pages<'a> {
    pub fn new(api: &'a DealMachineClient, metrics: &'a Metrics, reserve: u64) -> Self {
        Self { api, metrics, reserve, rate: RateInfo::default(), cursor: None, pages_read: 0 }
    }

    /// The next page of `status` (the first, when the last call read another status), `None`
    /// once its pages are all read, or why reading must stop.
    pub async fn next(&mut self, status: ExportStatus) -> Result<Option<(Page, RateInfo)>, ListStop> {
        let (offset, more) = match self.cursor {
            Some((current, offset, more)) if current == status => (offset, more),
            _ => (0, true),
        };
        if !more {
            return Ok(None);
        }
        let (page, rate) = self.read(Some(status), offset).await?;
        let more = page.has_more && !page.exports.is_empty();
        self.cursor = Some((status, offset + page.exports.len() as u32, more));
        Ok(Some((page, rate)))
    }

    /// The page at `offset` (of one status, or of all), unless the budget says stop: fewer
    /// requests left, this minute or today, than the reserve, or a 429.
    pub async fn read(
        &mut self,
        status: Option<ExportStatus>,
        offset: u32,
    ) -> Result<(Page, RateInfo), ListStop> {
        if let Some(left) = self.left().filter(|left| *left < self.reserve) {
            return Err(ListStop::LowBudget { left, reserve: self.reserve, reset: self.rate.reset });
        }
        let answer = self.api.list_exports(status, PAGE_SIZE, offset).await;
        let (page, rate) = answer.map_err(|e| match e {
            ApiError::RateLimited { rate, .. } => {
                self.metrics.api_answer(rate.rate_limited.max(1), rate.remaining);
                ListStop::RateLimited { reset: rate.reset }
            }
            e => ListStop::Api(e),
        })?;
        self.pages_read += 1;
        self.rate = rate;
        self.metrics.api_answer(rate.rate_limited, rate.remaining);
        Ok((page, rate))
    }

    /// The tighter of the minute's and the day's budget, as the last answer told it.
    fn left(&self) -> Option<u64> {
        [self.rate.remaining, self.rate.remaining_today].into_iter().flatten().min()
    }
}

/// Where a pass stopped, to be carried on from: a position in the list as it stood when the
/// pass began, and the list's `total` then, so a later reader can shift it by the exports
/// created since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub offset: u32,
    pub total: Option<u64>,
}

/// An export as a pass listed it, with its position in the list as it stood when the pass
/// began (the resume point, if the reader stops before it).
#[derive(Debug, Clone)]
pub struct Listed {
    pub position: Position,
    pub export: Export,
}

/// One pass over the unfiltered list that neither skips nor repeats an export while exports
/// are created at the head (`pagination.total` grows, and the offsets move by as much) or
/// deleted (each page re-reads [`OVERLAP`] items), and that drops IDs it has already taken.
#[derive(Debug, Default)]
pub struct Pass {
    /// The first position (in the list as it stood at the start) not yet taken.
    taken_to: u32,
    /// `total` when the pass began, and as the last page told it.
    total_at_start: Option<u64>,
    total_now: Option<u64>,
    /// The offset the last page was read at, to tell a pass that moves from one that is stuck.
    last_offset: Option<u32>,
    seen: HashSet<String>,
    done: bool,
}

impl Pass {
    /// A pass from the head of the list.
    pub fn new() -> Self {
        Self::default()
    }

    /// A pass that carries on from where another stopped.
    pub fn resume(from: Position) -> Self {
        Self { taken_to: from.offset, total_at_start: from.total, total_now: from.total, ..Self::default() }
    }

    /// Exports created at the head since the pass began.
    fn grown(&self) -> u32 {
        match (self.total_at_start, self.total_now) {
            (Some(start), Some(now)) => now.saturating_sub(start).min(u64::from(u32::MAX)) as u32,
            _ => 0,
        }
    }

    /// Where the next page starts; `None` once the list is read to its end.
    pub fn next_offset(&self) -> Option<u32> {
        (!self.done).then(|| (self.taken_to + self.grown()).saturating_sub(OVERLAP))
    }

    /// Takes the page read at `offset`: the exports on it not taken before, each with its
    /// position, oldest last.
    pub fn take(&mut self, offset: u32, page: &Page) -> Vec<Listed> {
        if self.total_at_start.is_none() {
            self.total_at_start = page.total;
        }
        self.total_now = page.total.or(self.total_now);
        let start = offset.saturating_sub(self.grown());
        let listed: Vec<Listed> = page
            .exports
            .iter()
            .enumerate()
            .filter(|(_, export)| self.seen.insert(export.export_id.clone()))
            .map(|(i, export)| Listed {
                position: Position { offset: start + i as u32, total: self.total_at_start },
                export: export.clone(),
            })
            .collect();
        self.taken_to = self.taken_to.max(start + page.exports.len() as u32);
        let stuck = self.last_offset.is_some_and(|last| last >= offset);
        self.last_offset = Some(offset);
        self.done = !page.has_more || page.exports.is_empty() || stuck;
        listed
    }

    /// Where a reader that stops now should carry on: after everything taken.
    pub fn position(&self) -> Position {
        Position { offset: self.taken_to, total: self.total_at_start }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dealmachine::parse_page;
    use serde_json::json;

    /// A page of the IDs `from..to` (the list's positions), with `total` and whether more follow.
    fn page(ids: std::ops::Range<u32>, total: u64) -> Page {
        let has_more = u64::from(ids.end) < total;
        let data: Vec<_> =
            ids.map(|i| json!({"export_id": format!("e{i}"), "status": "completed"})).collect();
        parse_page(
            json!({"data": data, "pagination": {"has_more": has_more, "total": total}})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
    }

    fn ids(listed: &[Listed]) -> Vec<String> {
        listed.iter().map(|l| l.export.export_id.clone()).collect()
    }

    #[test]
    fn each_page_overlaps_the_one_before_and_repeats_nothing() {
        let mut pass = Pass::new();
        assert_eq!(pass.next_offset(), Some(0));
        assert_eq!(pass.take(0, &page(0..100, 250)).len(), 100);
        assert_eq!(pass.next_offset(), Some(100 - OVERLAP), "overlaps the last page");
        let second = pass.take(95, &page(95..195, 250));
        assert_eq!(second.len(), 95, "the overlap is not taken twice");
        assert_eq!(second[0].export.export_id, "e100");
        assert_eq!(second[0].position.offset, 100);
    }

    #[test]
    fn a_deleted_export_shifts_nothing_past_the_overlap() {
        let mut pass = Pass::new();
        pass.take(0, &page(0..100, 250));
        // e50 and e51 are deleted: the next page, at 95, starts at what was 97.
        let second = pass.take(95, &page(97..197, 248));
        assert_eq!(ids(&second)[0], "e100", "nothing between the pages is skipped");
    }

    #[test]
    fn exports_created_at_the_head_move_the_offsets_by_as_many() {
        let mut pass = Pass::new();
        pass.take(0, &page(0..100, 250));
        // Seven new exports at the head: the page at 95 holds what was at 88 when the pass began.
        let second = pass.take(95, &page(88..188, 257));
        assert_eq!(ids(&second)[0], "e100", "the seven read again are not taken twice");
        assert_eq!(pass.next_offset(), Some(188 + 7 - OVERLAP), "the next page starts 7 further on");
        assert_eq!(pass.position(), Position { offset: 188, total: Some(250) });
    }

    #[test]
    fn a_resumed_pass_shifts_its_start_by_the_exports_created_since() {
        let mut pass = Pass::resume(Position { offset: 300, total: Some(1000) });
        assert_eq!(pass.next_offset(), Some(300 - OVERLAP));
        // Twenty created since: the page at 295 holds what was at 275.
        let listed = pass.take(295, &page(275..375, 1020));
        assert_eq!(listed[0].position.offset, 275);
        assert_eq!(pass.next_offset(), Some(375 + 20 - OVERLAP));
    }

    #[test]
    fn the_pass_ends_at_the_last_page_or_when_it_stops_moving() {
        let mut pass = Pass::new();
        pass.take(0, &page(0..40, 40));
        assert_eq!(pass.next_offset(), None);
        let mut stuck = Pass::new();
        stuck.take(0, &page(0..100, 250));
        stuck.take(0, &page(0..100, 250));
        assert_eq!(stuck.next_offset(), None, "a page read twice at one offset ends the pass");
    }
}
