//! Polling without sleeping: a running export goes back on the queue with a growing delay.

use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use rand::Rng;

use crate::config::{MAX_SQS_DELAY_SECONDS, PollPolicy};
use crate::events::ExportRequest;

#[derive(Debug, thiserror::Error)]
#[error("could not enqueue export {export_id} on {queue}: {message}")]
pub struct EnqueueError {
    pub export_id: String,
    pub queue: String,
    pub message: String,
}

/// The delay before poll `attempt + 1`: `initial * 2^(attempt-1)` up to the maximum, less up to
/// 20% jitter so that exports started together spread out, and never shorter than a
/// `Retry-After` the API asked for. Always within SQS's 0..=900 s.
pub fn poll_delay(policy: &PollPolicy, attempt: u32, throttled_for: Option<Duration>) -> Duration {
    let doublings = attempt.saturating_sub(1).min(20);
    let planned = policy.initial_delay.saturating_mul(1 << doublings).min(policy.max_delay);
    let jittered = planned.mul_f64(rand::rng().random_range(0.8..=1.0));
    jittered.max(throttled_for.unwrap_or_default()).min(Duration::from_secs(MAX_SQS_DELAY_SECONDS))
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
        let delay_seconds = delay.as_secs().min(MAX_SQS_DELAY_SECONDS) as i32;
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

    const POLICY: PollPolicy = PollPolicy {
        initial_delay: Duration::from_secs(30),
        max_delay: Duration::from_secs(900),
        timeout: Duration::from_secs(86_400),
    };

    #[test]
    fn delays_double_from_the_initial_delay_with_jitter_below() {
        for (attempt, full) in [(1, 30), (2, 60), (3, 120), (4, 240), (5, 480), (6, 900), (40, 900)] {
            let delay = poll_delay(&POLICY, attempt, None).as_secs_f64();
            assert!(delay <= full as f64 && delay >= full as f64 * 0.8, "attempt {attempt}: {delay}");
        }
    }

    #[test]
    fn a_retry_after_sets_a_floor_but_never_passes_900() {
        assert!(poll_delay(&POLICY, 1, Some(Duration::from_secs(120))) >= Duration::from_secs(120));
        assert_eq!(poll_delay(&POLICY, 1, Some(Duration::from_secs(5000))), Duration::from_secs(900));
    }
}
