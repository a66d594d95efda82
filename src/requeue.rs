//! Polling without sleeping: a running export goes back on the queue with a delay.
//!
//! The delay comes from the export's progress when two polls show a pace, and doubles from
//! `POLL_INITIAL_DELAY_SECONDS` when they do not. Everything here except `Requeuer` is a pure
//! function of the policy, the request, the API's answer and the time, so it is tested alone.

use std::cmp::Ordering;
use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use chrono::{DateTime, Utc};
use rand::Rng;

use crate::config::{MAX_SQS_DELAY_SECONDS, PollPolicy, PollSchedule};
use crate::dealmachine::Export;
use crate::events::{ExportRequest, LastSeen};

/// How far past the estimated finish the next poll lands, as a share of the time left: enough
/// that an export running a little slower than estimated is done when we look, small enough to
/// keep the wait after completion well under a tenth of the run.
const MARGIN: f64 = 0.02;
/// Estimates longer than this are as good as "not soon"; capping them keeps the arithmetic
/// finite. Any delay is capped far below it.
const LONGEST_ESTIMATE_SECS: f64 = 30.0 * 86_400.0;
/// Doubling stops after this many steps; `POLL_MAX_DELAY_SECONDS` usually stops it sooner.
const MAX_DOUBLINGS: u32 = 20;

#[derive(Debug, thiserror::Error)]
#[error("could not enqueue export {export_id} on {queue}: {message}")]
pub struct EnqueueError {
    pub export_id: String,
    pub queue: String,
    pub message: String,
}

/// Why the next poll's delay is what it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Basis {
    /// Two polls showed a pace: at that pace the export finishes in this long.
    Estimate(Duration),
    /// The doubling schedule, because progress said nothing this time.
    Doubling(Fallback),
}

/// Why progress said nothing about when the export will finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// `POLL_SCHEDULE=doubling`.
    Configured,
    /// The API gave no answer to read (rate limited), so nothing new was seen.
    NoAnswer,
    /// The API showed no `progress`.
    Missing,
    /// No earlier poll's progress to compare with.
    FirstLook,
    /// Progress reads 100 but the export is not completed: nothing left to extrapolate.
    AtEnd,
    /// Progress went down.
    Backwards,
    /// Progress has not moved since the previous poll.
    Stuck,
    /// The previous poll saw 0: the time since then includes the wait before work began.
    NotStarted,
    /// Progress moved after a stall; the pace over the stall is not the new pace.
    Resumed,
    /// The previous poll's time is not before this one's.
    ClockSkew,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Configured => "configured",
            Self::NoAnswer => "no_answer",
            Self::Missing => "missing",
            Self::FirstLook => "first_look",
            Self::AtEnd => "at_end",
            Self::Backwards => "backwards",
            Self::Stuck => "stuck",
            Self::NotStarted => "not_started",
            Self::Resumed => "resumed",
            Self::ClockSkew => "clock_skew",
        }
    }
}

impl Basis {
    /// `estimate` or `doubling`, as the `requeued` log line says.
    pub fn schedule(self) -> &'static str {
        match self {
            Self::Estimate(_) => "estimate",
            Self::Doubling(_) => "doubling",
        }
    }

    pub fn fallback(self) -> Option<Fallback> {
        match self {
            Self::Estimate(_) => None,
            Self::Doubling(why) => Some(why),
        }
    }

    /// The estimated time left, in whole seconds rounded up.
    pub fn estimate_seconds(self) -> Option<u64> {
        match self {
            Self::Estimate(left) => Some(whole_seconds(left)),
            Self::Doubling(_) => None,
        }
    }
}

/// When the next poll comes, why, and what it is told about this one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollPlan {
    /// Whole seconds, within SQS's 0..=900.
    pub delay: Duration,
    pub basis: Basis,
    /// To carry in the next poll's message.
    pub last_seen: Option<LastSeen>,
}

/// Plans the next poll of a running export. `export` is the API's answer this time, `None`
/// when there was none to read (rate limited); `throttled_for` is any `Retry-After` on the way.
pub fn plan(
    policy: &PollPolicy,
    request: &ExportRequest,
    export: Option<&Export>,
    throttled_for: Option<Duration>,
    now: DateTime<Utc>,
) -> PollPlan {
    plan_with_jitter(policy, request, export, throttled_for, now, jitter())
}

/// `plan`, with the doubling schedule's jitter given: `jitter` is in 0.8..=1.0.
fn plan_with_jitter(
    policy: &PollPolicy,
    request: &ExportRequest,
    export: Option<&Export>,
    throttled_for: Option<Duration>,
    now: DateTime<Utc>,
    jitter: f64,
) -> PollPlan {
    let Some(export) = export else {
        // Nothing new was seen: the next poll still compares with the last sighting.
        let delay = bounded(doubling_delay(policy, request.attempt, jitter), throttled_for);
        return PollPlan { delay, basis: Basis::Doubling(Fallback::NoAnswer), last_seen: request.last_seen };
    };
    let seen = export.progress.map(|progress| LastSeen {
        progress,
        at: now,
        stalled: request.last_seen.is_some_and(|before| before.progress == progress),
    });
    let basis = match policy.schedule {
        PollSchedule::Doubling => Basis::Doubling(Fallback::Configured),
        PollSchedule::Progress => match estimate(request.last_seen, seen) {
            Ok(left) => Basis::Estimate(left),
            Err(why) => Basis::Doubling(why),
        },
    };
    let delay = match basis {
        Basis::Estimate(left) => estimated_delay(policy, request, left, now),
        Basis::Doubling(_) => doubling_delay(policy, request.attempt, jitter),
    };
    PollPlan { delay: bounded(delay, throttled_for), basis, last_seen: seen }
}

/// How long until the export reaches 100 %, at the pace between the previous poll and this
/// one; or why that pace says nothing.
pub fn estimate(before: Option<LastSeen>, now: Option<LastSeen>) -> Result<Duration, Fallback> {
    let now = now.ok_or(Fallback::Missing)?;
    let before = before.ok_or(Fallback::FirstLook)?;
    if now.progress >= 100 {
        return Err(Fallback::AtEnd);
    }
    match now.progress.cmp(&before.progress) {
        Ordering::Less => return Err(Fallback::Backwards),
        Ordering::Equal => return Err(Fallback::Stuck),
        Ordering::Greater => {}
    }
    if before.progress == 0 {
        return Err(Fallback::NotStarted);
    }
    if before.stalled {
        return Err(Fallback::Resumed);
    }
    let elapsed = (now.at - before.at).as_seconds_f64();
    if elapsed <= 0.0 {
        return Err(Fallback::ClockSkew);
    }
    let percent_per_second = f64::from(now.progress - before.progress) / elapsed;
    // A reading of p means somewhere in [p, p + 1): aim from the middle.
    let left = (100.0 - f64::from(now.progress) - 0.5) / percent_per_second;
    Ok(Duration::from_secs_f64(left.min(LONGEST_ESTIMATE_SECS)))
}

/// Just after the estimated finish, within the configured delays, and never before the doubling
/// schedule's next poll: so the progress-aware schedule never makes more requests than
/// doubling would on the same export.
fn estimated_delay(
    policy: &PollPolicy,
    request: &ExportRequest,
    left: Duration,
    now: DateTime<Utc>,
) -> Duration {
    let first_seen = request.first_seen_at.unwrap_or(now);
    let elapsed = (now - first_seen).to_std().unwrap_or_default();
    let doubling_next = doubling_poll_at(policy, request.attempt).saturating_sub(elapsed);
    left.mul_f64(1.0 + MARGIN).max(doubling_next).max(policy.initial_delay).min(policy.max_delay)
}

/// The doubling schedule: before poll `attempt + 1`, wait `initial * 2^(attempt-1)` up to the
/// maximum, less up to 20% jitter so that exports started together spread out, and never
/// less than a `Retry-After` the API asked for. Whole seconds, within SQS's 0..=900.
pub fn poll_delay(policy: &PollPolicy, attempt: u32, throttled_for: Option<Duration>) -> Duration {
    bounded(doubling_delay(policy, attempt, jitter()), throttled_for)
}

fn doubling_delay(policy: &PollPolicy, attempt: u32, jitter: f64) -> Duration {
    doubling_step(policy, attempt).mul_f64(jitter)
}

/// The doubling schedule's delay after poll `attempt`, without jitter.
fn doubling_step(policy: &PollPolicy, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(MAX_DOUBLINGS);
    policy.initial_delay.saturating_mul(1 << doublings).min(policy.max_delay)
}

/// When, counted from the first poll, the doubling schedule without jitter makes poll
/// `attempt + 1`: the latest it could, so a poll no earlier never adds a request.
pub fn doubling_poll_at(policy: &PollPolicy, attempt: u32) -> Duration {
    let mut at = Duration::ZERO;
    for done in 0..attempt {
        let step = doubling_step(policy, done + 1);
        if step >= policy.max_delay || done >= MAX_DOUBLINGS {
            // Every later step is this one.
            return at.saturating_add(step.saturating_mul(attempt - done));
        }
        at += step;
    }
    at
}

/// At least any `Retry-After`, at most SQS's 900 s, in whole seconds rounded up.
fn bounded(delay: Duration, throttled_for: Option<Duration>) -> Duration {
    let delay = delay.max(throttled_for.unwrap_or_default()).min(Duration::from_secs(MAX_SQS_DELAY_SECONDS));
    Duration::from_secs(whole_seconds(delay))
}

/// Rounded up: SQS takes whole seconds, and a poll a fraction early can cost a request.
pub fn whole_seconds(delay: Duration) -> u64 {
    delay.as_secs() + u64::from(delay.subsec_nanos() > 0)
}

fn jitter() -> f64 {
    rand::rng().random_range(0.8..=1.0)
}

pub struct Requeuer {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

impl Requeuer {
    pub fn new(sqs: aws_sdk_sqs::Client, queue_url: String) -> Self {
        Self { sqs, queue_url }
    }

    /// Puts `request` on the queue, to be delivered after `delay`.
    pub async fn enqueue(&self, request: &ExportRequest, delay: Duration) -> Result<(), EnqueueError> {
        let body = serde_json::to_string(request).expect("requests always serialize");
        let delay_seconds = whole_seconds(delay).min(MAX_SQS_DELAY_SECONDS) as i32;
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .delay_seconds(delay_seconds)
            .send()
            .await
            .map_err(|e| EnqueueError {
                export_id: request.export_id.to_string(),
                queue: self.queue_url.clone(),
                message: DisplayErrorContext(e).to_string(),
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dealmachine::ExportStatus;
    use crate::events::ExportId;
    use proptest::prelude::*;

    const POLICY: PollPolicy = PollPolicy {
        initial_delay: Duration::from_secs(30),
        max_delay: Duration::from_secs(900),
        timeout: Duration::from_secs(86_400),
        schedule: PollSchedule::Progress,
    };

    fn secs(n: i64) -> chrono::Duration {
        chrono::Duration::seconds(n)
    }

    fn seen(progress: u32, at: DateTime<Utc>) -> LastSeen {
        LastSeen { progress, at, stalled: false }
    }

    fn processing(progress: Option<u32>) -> Export {
        let mut export: Export =
            serde_json::from_value(serde_json::json!({"export_id": "e", "status": "processing"})).unwrap();
        export.progress = progress;
        export
    }

    /// Poll `attempt` of an export first polled at `first_seen_at`, whose previous poll saw
    /// `before`.
    fn request(attempt: u32, first_seen_at: DateTime<Utc>, before: Option<LastSeen>) -> ExportRequest {
        ExportRequest {
            attempt,
            first_seen_at: Some(first_seen_at),
            last_seen: before,
            ..ExportRequest::new(ExportId::parse("e").unwrap())
        }
    }

    #[test]
    fn delays_double_from_the_initial_delay_with_jitter_below() {
        for (attempt, full) in [(1, 30), (2, 60), (3, 120), (4, 240), (5, 480), (6, 900), (40, 900)] {
            let delay = poll_delay(&POLICY, attempt, None).as_secs_f64();
            assert!(delay <= full as f64 && delay >= full as f64 * 0.8, "attempt {attempt}: {delay}");
        }
        // 96 to 120 s in whole seconds: twenty exports started together do not all wait alike.
        let spread: std::collections::HashSet<_> = (0..20).map(|_| poll_delay(&POLICY, 3, None)).collect();
        assert!(spread.len() > 1, "{spread:?}");
    }

    #[test]
    fn a_retry_after_sets_a_floor_but_never_passes_900() {
        assert!(poll_delay(&POLICY, 1, Some(Duration::from_secs(120))) >= Duration::from_secs(120));
        assert_eq!(poll_delay(&POLICY, 1, Some(Duration::from_secs(5000))), Duration::from_secs(900));
    }

    #[test]
    fn the_estimate_extrapolates_the_pace_between_two_polls() {
        let t0 = Utc::now();
        // 20 % to 60 % in 40 s: 1 % a second, and 39.5 % left from the middle of the 60th.
        let left = estimate(Some(seen(20, t0)), Some(seen(60, t0 + secs(40)))).unwrap();
        assert_eq!(left, Duration::from_millis(39_500));
        // 1 % in ten days: 975 days left, said as the 30 days any delay is far below.
        let crawl = estimate(Some(seen(1, t0)), Some(seen(2, t0 + secs(864_000)))).unwrap();
        assert_eq!(crawl, Duration::from_secs(30 * 86_400));
    }

    /// What the `requeued` log line says: which schedule, why not the estimate, the time left.
    #[test]
    fn the_basis_names_its_schedule_its_reason_and_the_time_left() {
        let estimate = Basis::Estimate(Duration::from_secs_f64(296.25));
        assert_eq!(
            (estimate.schedule(), estimate.fallback(), estimate.estimate_seconds()),
            ("estimate", None, Some(297))
        );
        let doubling = Basis::Doubling(Fallback::Stuck);
        assert_eq!(
            (doubling.schedule(), doubling.fallback().map(Fallback::as_str), doubling.estimate_seconds()),
            ("doubling", Some("stuck"), None)
        );
    }

    #[test]
    fn each_kind_of_uninformative_progress_falls_back_to_doubling() {
        let t0 = Utc::now();
        let t1 = t0 + secs(60);
        let stalled = LastSeen { stalled: true, ..seen(30, t0) };
        let cases = [
            (Some(seen(10, t0)), None, Fallback::Missing),
            (None, Some(seen(10, t1)), Fallback::FirstLook),
            (Some(seen(0, t0)), Some(seen(100, t1)), Fallback::AtEnd),
            (Some(seen(80, t0)), Some(seen(100, t1)), Fallback::AtEnd),
            (Some(seen(50, t0)), Some(seen(40, t1)), Fallback::Backwards),
            (Some(seen(50, t0)), Some(seen(50, t1)), Fallback::Stuck),
            (Some(seen(0, t0)), Some(seen(30, t1)), Fallback::NotStarted),
            (Some(stalled), Some(seen(60, t1)), Fallback::Resumed),
            (Some(seen(10, t1)), Some(seen(20, t0)), Fallback::ClockSkew),
        ];
        for (before, now, expected) in cases {
            assert_eq!(estimate(before, now), Err(expected), "{before:?} then {now:?}");
            let request = request(5, t0 - secs(3600), before);
            let export = processing(now.map(|n| n.progress));
            let plan = plan_with_jitter(&POLICY, &request, Some(&export), None, t1, 1.0);
            assert_eq!(plan.basis, Basis::Doubling(expected));
            assert_eq!(plan.delay, Duration::from_secs(480), "doubling's delay after poll 5");
        }
    }

    #[test]
    fn the_next_poll_lands_just_after_the_estimated_finish() {
        let now = Utc::now();
        // Poll 4, ten minutes in: doubling's poll 5 would come at 450 s, already past.
        let request = request(4, now - secs(600), Some(seen(20, now - secs(300))));
        let plan = plan(&POLICY, &request, Some(&processing(Some(60))), None, now);
        // 40 % in 300 s; 39.5 % left takes 296.25 s, plus 2 %: 302.2 s, rounded up.
        assert_eq!(plan.basis, Basis::Estimate(Duration::from_secs_f64(296.25)));
        assert_eq!(plan.delay, Duration::from_secs(303));
        assert_eq!(plan.last_seen, Some(seen(60, now)));
    }

    #[test]
    fn an_estimate_never_polls_before_the_doubling_schedule_would() {
        let now = Utc::now();
        // Poll 2, 30 s in: doubling's poll 3 comes at 30 + 60 = 90 s, so 60 s from now, even
        // though the export should be done in about 5 s.
        let request = request(2, now - secs(30), Some(seen(10, now - secs(30))));
        let plan = plan(&POLICY, &request, Some(&processing(Some(90))), None, now);
        assert!(matches!(plan.basis, Basis::Estimate(left) if left < Duration::from_secs(5)));
        assert_eq!(plan.delay, Duration::from_secs(60));
    }

    #[test]
    fn estimates_stay_within_the_configured_delays_and_below_a_retry_after() {
        let now = Utc::now();
        let long_ago = now - secs(86_000);
        let soon = request(30, long_ago, Some(seen(90, now - secs(100))));
        let late = request(30, long_ago, Some(seen(1, now - secs(100))));
        let plan_for = |request: &ExportRequest, progress, throttled| {
            plan(&POLICY, request, Some(&processing(Some(progress))), throttled, now)
        };
        assert_eq!(plan_for(&soon, 99, None).delay, POLICY.initial_delay, "at least the initial delay");
        assert_eq!(plan_for(&late, 2, None).delay, POLICY.max_delay, "at most the maximum");
        let throttled = plan_for(&soon, 99, Some(Duration::from_secs(400)));
        assert!(matches!(throttled.basis, Basis::Estimate(_)));
        assert_eq!(throttled.delay, Duration::from_secs(400), "at least the Retry-After");
        let huge = plan_for(&soon, 99, Some(Duration::from_secs(4000)));
        assert_eq!(huge.delay, Duration::from_secs(900), "never past SQS's 900 s");
    }

    #[test]
    fn delays_are_whole_seconds_rounded_up() {
        assert_eq!(whole_seconds(Duration::from_millis(40_001)), 41);
        assert_eq!(whole_seconds(Duration::from_secs(40)), 40);
        let now = Utc::now();
        let policy = PollPolicy { initial_delay: Duration::from_secs(1), ..POLICY };
        // 1 % a second from 50 %: 49.5 s left, 50.49 s with the margin.
        let request = request(9, now - secs(86_000), Some(seen(40, now - secs(10))));
        let plan = plan(&policy, &request, Some(&processing(Some(50))), None, now);
        assert_eq!(plan.delay, Duration::from_secs(51));
    }

    #[test]
    fn the_doubling_setting_ignores_progress_but_still_carries_it() {
        let now = Utc::now();
        let policy = PollPolicy { schedule: PollSchedule::Doubling, ..POLICY };
        let request = request(4, now - secs(600), Some(seen(20, now - secs(300))));
        let plan = plan_with_jitter(&policy, &request, Some(&processing(Some(60))), None, now, 1.0);
        assert_eq!(plan.basis, Basis::Doubling(Fallback::Configured));
        assert_eq!(plan.delay, Duration::from_secs(240));
        assert_eq!(plan.last_seen, Some(seen(60, now)));
    }

    #[test]
    fn a_poll_without_an_answer_keeps_the_last_sighting_and_a_repeat_is_marked_stalled() {
        let now = Utc::now();
        let before = seen(20, now - secs(300));
        let request = request(3, now - secs(600), Some(before));
        let unanswered = plan_with_jitter(&POLICY, &request, None, Some(Duration::from_secs(200)), now, 1.0);
        assert_eq!(unanswered.basis, Basis::Doubling(Fallback::NoAnswer));
        assert_eq!(unanswered.last_seen, Some(before));
        assert_eq!(unanswered.delay, Duration::from_secs(200));
        let repeat = plan(&POLICY, &request, Some(&processing(Some(20))), None, now);
        assert_eq!(repeat.last_seen, Some(LastSeen { stalled: true, ..seen(20, now) }));
    }

    #[test]
    fn the_doubling_schedule_is_summed_up_to_its_maximum() {
        let at = |attempt| doubling_poll_at(&POLICY, attempt).as_secs();
        assert_eq!([at(0), at(1), at(2), at(3), at(5)], [0, 30, 90, 210, 930]);
        assert_eq!(at(7), 930 + 900 + 900, "then the maximum each time");
        assert_eq!(at(u32::MAX), u64::from(u32::MAX - 5) * 900 + 930, "no overflow, no long loop");
        let zero = PollPolicy { initial_delay: Duration::ZERO, ..POLICY };
        assert_eq!(doubling_poll_at(&zero, u32::MAX), Duration::ZERO);
    }

    /// A progress reading per poll, whatever the export says: it need not rise, nor make sense.
    fn readings() -> impl Strategy<Value = Vec<Option<u32>>> {
        proptest::collection::vec(proptest::option::weighted(0.9, 0u32..=120), 1..64)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Run side by side, with the same jitter, until the export completes: whatever the
        /// progress readings, the progress-aware schedule never polls more often than doubling.
        #[test]
        fn never_more_requests_than_doubling(
            initial in 0u64..=120,
            max in 1u64..=900,
            completes_after in 0u64..40_000,
            readings in readings(),
            jitters in proptest::collection::vec(0.8f64..=1.0, 64),
        ) {
            let policy = PollPolicy {
                initial_delay: Duration::from_secs(initial.min(max)),
                max_delay: Duration::from_secs(max),
                ..POLICY
            };
            let polls = |schedule| {
                let policy = PollPolicy { schedule, ..policy };
                let start = Utc::now();
                let mut request = ExportRequest::new(ExportId::parse("e").unwrap());
                let mut elapsed = 0u64;
                for poll in 1..=1000usize {
                    if elapsed >= completes_after {
                        return poll;
                    }
                    let now = start + secs(elapsed as i64);
                    let export = Export {
                        progress: readings[(poll - 1) % readings.len()],
                        status: ExportStatus::Processing,
                        ..processing(None)
                    };
                    let jitter = jitters[(poll - 1) % jitters.len()];
                    let plan = plan_with_jitter(&policy, &request, Some(&export), None, now, jitter);
                    request = request.next_poll(now, plan.last_seen);
                    elapsed += plan.delay.as_secs();
                }
                usize::MAX
            };
            prop_assert!(polls(PollSchedule::Progress) <= polls(PollSchedule::Doubling));
        }

        /// Whatever was seen, the delay is whole seconds within SQS's limit and any
        /// Retry-After, and an estimate stays within the configured delays.
        #[test]
        fn planned_delays_stay_within_their_bounds(
            initial in 0u64..=900,
            max in 1u64..=900,
            attempt in any::<u32>(),
            first_seen_ago in 0i64..200_000,
            before in proptest::option::of((0u32..=120, 0i64..100_000, any::<bool>())),
            now_progress in proptest::option::of(0u32..=120),
            throttled in proptest::option::of(0u64..100_000),
        ) {
            let policy = PollPolicy {
                initial_delay: Duration::from_secs(initial.min(max)),
                max_delay: Duration::from_secs(max),
                ..POLICY
            };
            let now = Utc::now();
            let before = before.map(|(progress, ago, stalled)| LastSeen { progress, at: now - secs(ago), stalled });
            let request = request(attempt, now - secs(first_seen_ago), before);
            let throttled = throttled.map(Duration::from_secs);
            let plan = plan(&policy, &request, Some(&processing(now_progress)), throttled, now);
            let retry_after = throttled.unwrap_or_default().min(Duration::from_secs(900));
            prop_assert_eq!(plan.delay.subsec_nanos(), 0);
            prop_assert!(plan.delay <= Duration::from_secs(900));
            prop_assert!(plan.delay >= retry_after);
            if let Basis::Estimate(_) = plan.basis {
                prop_assert!(plan.delay >= policy.initial_delay);
                prop_assert!(plan.delay <= policy.max_delay.max(retry_after));
            }
        }
    }
}
