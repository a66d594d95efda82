//! How much one sweep puts on the queue, and when each export becomes visible: spread over the
//! minutes so the relay's polls and copies do not all ask the API at once, and capped by what
//! is left of the day's budget.

use std::time::Duration;

use crate::config::MAX_SQS_DELAY_SECONDS;
use crate::dealmachine::RateInfo;

/// Requests a minute the API allows (`X-RateLimit-Limit`) when an answer does not say.
const DEFAULT_MINUTE_LIMIT: u64 = 60;
/// One sweep releases at most this share (1/10) of the requests left today: each export it
/// releases costs at least one `GET`, a running one many, and the day must last for the
/// exports upstream enqueues.
const DAY_SHARE: u64 = 10;

/// The releases of one sweep.
#[derive(Debug, Clone)]
pub struct Release {
    /// Exports made visible a minute: half of what the minute's budget holds above the
    /// reserve, so the other half stays for the main path.
    per_minute: u32,
    cap: u32,
    cap_reason: String,
    released: u32,
}

impl Release {
    /// Sized from the first page's rate headers.
    pub fn new(rate: &RateInfo, reserve: u64, max_exports: Option<u32>) -> Self {
        let minute = rate.limit.unwrap_or(DEFAULT_MINUTE_LIMIT);
        let per_minute = (minute.saturating_sub(reserve) / 2).clamp(1, u64::from(u32::MAX)) as u32;
        let minutes = (MAX_SQS_DELAY_SECONDS / 60) as u32 + 1;
        let mut caps = vec![(
            per_minute.saturating_mul(minutes),
            format!("as many as fit SQS's {MAX_SQS_DELAY_SECONDS} s delay at {per_minute} a minute"),
        )];
        if let Some(left) = rate.remaining_today {
            let share = (left / DAY_SHARE).min(u64::from(u32::MAX)) as u32;
            caps.push((share, format!("a tenth of the {left} API requests left today")));
        }
        if let Some(max) = max_exports {
            caps.push((max, format!("max_exports ({max})")));
        }
        let (cap, cap_reason) = caps.into_iter().min_by_key(|(cap, _)| *cap).expect("one cap at least");
        Self { per_minute, cap, cap_reason, released: 0 }
    }

    /// The delay for the next export to release, or `None` once the sweep has released all
    /// it may.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.released >= self.cap {
            return None;
        }
        let minute = u64::from(self.released / self.per_minute);
        self.released += 1;
        Some(Duration::from_secs((minute * 60).min(MAX_SQS_DELAY_SECONDS)))
    }

    /// Why the sweep stops releasing.
    pub fn stop_reason(&self) -> String {
        format!("{} exports enqueued, the most one sweep releases: {}", self.cap, self.cap_reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(limit: u64, today: Option<u64>) -> RateInfo {
        RateInfo { limit: Some(limit), remaining_today: today, ..RateInfo::default() }
    }

    fn delays(release: &mut Release) -> Vec<u64> {
        std::iter::from_fn(|| release.next_delay()).map(|d| d.as_secs()).collect()
    }

    #[test]
    fn releases_are_spread_a_minute_apart_within_sqs_delay() {
        let mut release = Release::new(&rate(60, None), 10, None);
        let delays = delays(&mut release);
        assert_eq!(delays.len(), 25 * 16, "25 a minute, for the minutes 0 to 15");
        assert_eq!(&delays[..26], [[0; 25].as_slice(), &[60]].concat());
        assert_eq!(*delays.last().unwrap(), 900);
        assert!(release.stop_reason().contains("900 s"), "{}", release.stop_reason());
    }

    #[test]
    fn the_days_budget_and_max_exports_cap_a_sweep() {
        let mut by_day = Release::new(&rate(60, Some(120)), 10, Some(50));
        assert_eq!(delays(&mut by_day).len(), 12, "a tenth of the 120 left today");
        assert!(by_day.stop_reason().contains("120 API requests left today"));
        let mut by_max = Release::new(&rate(60, Some(5000)), 10, Some(7));
        assert_eq!(delays(&mut by_max).len(), 7);
        assert!(by_max.stop_reason().contains("max_exports (7)"));
    }
}
