//! Which listed exports a sweep looks at: completed ones while their links live, running and
//! failed ones created within the lookback, and where in the list none can be left.

use chrono::{DateTime, Duration, Utc};

use crate::dealmachine::{Export, ExportStatus};

/// How long DealMachine keeps an export's files from its creation. Only for a completed
/// export listed without `expires_at`, which is swept while younger than this.
pub const LINKS_LIVE_DAYS: i64 = 7;

/// The sweep's window, as of the moment it started.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub now: DateTime<Utc>,
    /// Running and failed exports created before this are left alone: the relay's poll
    /// timeout has long passed for them, and their number only grows.
    pub since: DateTime<Utc>,
}

impl Window {
    pub fn new(now: DateTime<Utc>, lookback_hours: u32) -> Self {
        Self { now, since: now - Duration::hours(i64::from(lookback_hours)) }
    }

    /// Whether the sweep should look at `export`. A completed one is judged by its
    /// `expires_at` alone: list items need not carry `download_urls`, and the relay's own
    /// `GET` finds out what the links are worth.
    pub fn holds(&self, export: &Export) -> bool {
        match export.status {
            ExportStatus::Completed => match export.expires_at {
                Some(at) => at > self.now,
                None => export.created_at.is_none_or(|at| at > self.now - Duration::days(LINKS_LIVE_DAYS)),
            },
            _ => export.created_at.is_none_or(|at| at >= self.since),
        }
    }

    /// True when a whole page is behind the window: every export on it is out of the window
    /// and older than the lookback. Newest first, no later page can hold one in the window.
    /// One old export among new ones stops nothing: the list's order is not promised.
    pub fn is_behind(&self, page: &[Export]) -> bool {
        !page.is_empty()
            && page.iter().all(|e| !self.holds(e) && e.created_at.is_some_and(|at| at < self.since))
    }

    /// Whether a sweep that stopped at `at` should be carried on from where it stopped: not
    /// once everything it had left is behind the lookback anyway.
    pub fn resumes(&self, at: DateTime<Utc>) -> bool {
        at >= self.since
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn export(status: &str, age_hours: i64, expires_in_hours: Option<i64>) -> Export {
        let now = Utc::now();
        serde_json::from_value(json!({
            "export_id": "e", "status": status,
            "created_at": now - Duration::hours(age_hours),
            "expires_at": expires_in_hours.map(|h| now + Duration::hours(h)),
        }))
        .unwrap()
    }

    #[test]
    fn completed_exports_are_in_the_window_while_their_links_live() {
        let window = Window::new(Utc::now(), 48);
        assert!(window.holds(&export("completed", 24 * 6, Some(20))), "six days old, links live a day more");
        assert!(!window.holds(&export("completed", 1, Some(-1))), "an hour old, links gone");
        assert!(window.holds(&export("completed", 24 * 6, None)), "no expires_at: seven days from creation");
        assert!(!window.holds(&export("completed", 24 * 8, None)));
    }

    #[test]
    fn running_and_failed_exports_are_in_the_window_within_the_lookback() {
        let window = Window::new(Utc::now(), 48);
        for status in ["pending", "processing", "failed"] {
            assert!(window.holds(&export(status, 47, Some(100))), "{status}");
            assert!(!window.holds(&export(status, 49, Some(100))), "{status}");
        }
    }

    #[test]
    fn only_a_whole_page_behind_the_window_ends_the_pass() {
        let window = Window::new(Utc::now(), 48);
        let old = export("processing", 72, None);
        let expired = export("completed", 72, Some(-1));
        let live = export("completed", 72, Some(24));
        let young_expired = export("completed", 1, Some(-1));
        assert!(window.is_behind(&[old.clone(), expired.clone()]));
        assert!(!window.is_behind(&[old.clone(), live]), "links that live keep the pass going");
        assert!(!window.is_behind(&[old, young_expired]), "an export within the lookback too");
        assert!(!window.is_behind(&[]));
    }
}
