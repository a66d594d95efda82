//! A batch's due polls, checked together: a few pages of `GET /exports?status=…` answer for up
//! to 100 exports each, where a `GET /exports/{id}` answers for one.

use std::collections::{HashMap, HashSet};

use tracing::info;

use crate::dealmachine::{ExportStatus, Fetched, Page, RateInfo};
use crate::events::{ExportId, ExportRequest};
use crate::handler::Relay;
use crate::pages::Pages;

/// The order the statuses are listed in: a due poll most often finds its export still
/// processing, or just completed.
const STATUSES: [ExportStatus; 3] =
    [ExportStatus::Processing, ExportStatus::Completed, ExportStatus::Pending];

impl Relay {
    /// What the list pages showed of the due polls among `requests` (the re-enqueued ones), by
    /// export. Exports the pages did not show, and completed ones listed without their download
    /// URLs, are left out: each gets its own `GET`.
    pub(crate) async fn check_due_polls<'r>(
        &self,
        requests: impl Iterator<Item = &'r ExportRequest>,
    ) -> HashMap<ExportId, Fetched> {
        let mut wanted: HashSet<&ExportId> =
            requests.filter(|request| request.attempt > 1).map(|request| &request.export_id).collect();
        let due = wanted.len();
        let mut found = HashMap::new();
        if !worth_a_page(wanted.len(), 0, 0) {
            return found;
        }
        let mut pages = Pages::new(&self.api, &self.metrics, self.sweep_reserve);
        'statuses: for status in STATUSES {
            while worth_a_page(wanted.len(), pages.pages_read, found.len()) {
                match pages.next(status).await {
                    Ok(Some((page, rate))) => take_listed(page, rate, &mut wanted, &mut found),
                    Ok(None) => continue 'statuses,
                    Err(stop) => {
                        info!(reason = %stop, "stopped listing; the rest get their own GET");
                        break 'statuses;
                    }
                }
            }
        }
        info!(due, pages = pages.pages_read, listed = found.len(), "due polls checked on the list endpoint");
        found
    }
}

/// A page is worth reading while it could answer for two exports or more (for one, a `GET` is
/// as cheap), and the pages read so far answered for at least one export each but the last:
/// so the list never costs more than one request over a `GET` each, and usually far less.
fn worth_a_page(unanswered: usize, pages_read: u32, answered: usize) -> bool {
    unanswered >= 2 && pages_read as usize <= answered
}

/// Takes from `page` the wanted exports it shows. A completed one without download URLs is no
/// longer wanted from the list, and not found either: it needs its own `GET`.
fn take_listed(
    page: Page,
    rate: RateInfo,
    wanted: &mut HashSet<&ExportId>,
    found: &mut HashMap<ExportId, Fetched>,
) {
    for export in page.exports {
        let Some(id) = wanted.iter().find(|id| id.as_str() == export.export_id).copied() else {
            continue;
        };
        wanted.remove(id);
        if export.status == ExportStatus::Completed && export.download_urls.is_none() {
            continue;
        }
        // The page's rate figures are already counted; a Retry-After on the way still holds.
        let rate = RateInfo { throttled_for: rate.throttled_for, ..RateInfo::default() };
        found.insert(id.clone(), Fetched { export, rate });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dealmachine::parse_page;
    use serde_json::json;

    #[test]
    fn pages_are_read_only_while_they_pay_for_themselves() {
        assert!(!worth_a_page(1, 0, 0), "one export: a GET is as cheap");
        assert!(worth_a_page(2, 0, 0), "the first page may answer for two");
        assert!(!worth_a_page(5, 1, 0), "a page that answered for none ends the listing");
        assert!(worth_a_page(5, 2, 2));
        assert!(!worth_a_page(5, 3, 2));
    }

    #[test]
    fn listed_exports_are_taken_unless_completed_without_download_urls() {
        let ids: Vec<ExportId> = ["a", "b", "c", "d"].iter().map(|id| ExportId::parse(id).unwrap()).collect();
        let mut wanted: HashSet<&ExportId> = ids.iter().collect();
        let mut found = HashMap::new();
        let page = parse_page(
            json!({"data": [
                {"export_id": "a", "status": "processing", "progress": 40},
                {"export_id": "b", "status": "completed", "download_urls": null},
                {"export_id": "c", "status": "completed",
                 "download_urls": [{"filename": "f.csv", "url": "https://h/f", "size": 1}]},
                {"export_id": "z", "status": "processing"},
            ], "pagination": {"has_more": false}})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        take_listed(page, RateInfo::default(), &mut wanted, &mut found);
        let mut taken: Vec<&str> = found.keys().map(ExportId::as_str).collect();
        taken.sort();
        assert_eq!(taken, ["a", "c"]);
        assert_eq!(wanted, HashSet::from([&ids[3]]), "d was not shown; b needs its own GET");
    }
}
