//! Reading the export list, `GET /exports?status=…`, a page at a time within the
//! organization's rate budget. The sweep and a batch's status check both read it this way, so
//! both stop the same way: before the budget runs low, or at the first 429.

use crate::dealmachine::{ApiError, DealMachineClient, ExportStatus, Page, RateInfo};
use crate::metrics::Metrics;

/// The API's largest page.
pub const PAGE_SIZE: u32 = 100;

/// Why no more pages are read.
#[derive(Debug, thiserror::Error)]
pub enum ListStop {
    #[error("rate budget: X-RateLimit-Remaining is {left}, below SWEEP_RESERVE_REQUESTS ({reserve})")]
    LowBudget { left: u64, reserve: u64 },
    #[error("rate limited (429) by the DealMachine API")]
    RateLimited,
    #[error(transparent)]
    Api(ApiError),
}

/// Pages of one status after another, newest first, counting what they cost.
pub struct Pages<'a> {
    api: &'a DealMachineClient,
    metrics: &'a Metrics,
    /// Stop when fewer requests than this remain (`SWEEP_RESERVE_REQUESTS`).
    reserve: u64,
    /// The tighter of the minute's and the day's budget, as the last answer told it.
    remaining: Option<u64>,
    /// The status being read, the offset of its next page, and whether it has one.
    cursor: Option<(ExportStatus, u32, bool)>,
    pub pages_read: u32,
}

impl<'a> Pages<'a> {
    pub fn new(api: &'a DealMachineClient, metrics: &'a Metrics, reserve: u64) -> Self {
        Self { api, metrics, reserve, remaining: None, cursor: None, pages_read: 0 }
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
        if let Some(left) = self.remaining.filter(|left| *left < self.reserve) {
            return Err(ListStop::LowBudget { left, reserve: self.reserve });
        }
        let (page, rate) = self.api.list_exports(status, PAGE_SIZE, offset).await.map_err(|e| match e {
            ApiError::RateLimited { .. } => ListStop::RateLimited,
            e => ListStop::Api(e),
        })?;
        self.pages_read += 1;
        self.remaining = [rate.remaining, rate.remaining_today].into_iter().flatten().min();
        self.metrics.api_answer(rate.rate_limited, rate.remaining);
        let more = page.has_more && !page.exports.is_empty();
        self.cursor = Some((status, offset + page.exports.len() as u32, more));
        Ok(Some((page, rate)))
    }
}
