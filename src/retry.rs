//! Retries on SQS's own clock.
//!
//! A record that fails for a passing reason is reported in `batchItemFailures`, and SQS
//! delivers it again when it becomes visible. Left alone, that is the queue's visibility timeout
//! (90 minutes with the template's defaults), however short the outage was. So before the record
//! is reported, its visibility is set to the next step of `RETRY_SCHEDULE_SECONDS`, chosen by
//! how many times SQS has delivered it. If that fails, the queue's own timeout applies: the
//! record comes back later, but it is never lost.

use std::borrow::Cow;
use std::time::Duration;

use aws_lambda_events::sqs::SqsMessage;
use aws_sdk_sqs::error::DisplayErrorContext;

/// Svix's published schedule, minus its first 5 s step: 10 s, 1 min, 5 min, 30 min, 2 h, 5 h,
/// 10 h. A one-minute outage costs about a minute; a long one loses nothing for over a day.
pub const DEFAULT_SCHEDULE: &str = "10,60,300,1800,7200,18000,36000";
/// SQS's largest visibility timeout: 12 hours.
pub const MAX_STEP_SECONDS: u64 = 43_200;
/// SQS counts its 12 hours from when the poller received the record. That can be up to a
/// batching window (300 s) and a whole invocation (900 s) before the relay reports it, so a step
/// is shortened to what is surely left.
const RECEIVED_TO_REPORTED_SECONDS: u64 = 1_200;
/// The receive-count attribute Lambda copies from SQS into each record.
const RECEIVE_COUNT: &str = "ApproximateReceiveCount";

/// How long a failed record waits before SQS delivers it again: the first step after its first
/// delivery, the second after its second, and the last step from then on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl RetrySchedule {
    /// Parses whole seconds separated by commas, each from 1 to 43200.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let steps = raw
            .split(',')
            .map(|step| match step.trim().parse::<u64>() {
                Ok(seconds) if (1..=MAX_STEP_SECONDS).contains(&seconds) => Ok(Duration::from_secs(seconds)),
                _ => Err(()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|()| {
                format!(
                    "whole seconds from 1 to {MAX_STEP_SECONDS} (SQS's 12-hour limit), separated by commas, such as {DEFAULT_SCHEDULE}"
                )
            })?;
        Ok(Self(steps))
    }

    pub fn steps(&self) -> &[Duration] {
        &self.0
    }

    /// How long a record that keeps failing stays on the queue, waiting out every step, before
    /// the redrive policy (`MaxReceiveCount` = steps + 1) moves it to the dead-letter queue.
    pub fn span(&self) -> Duration {
        self.0.iter().sum()
    }

    /// The wait after the `receive_count`-th delivery failed.
    pub fn after(&self, receive_count: u32) -> Duration {
        let index = (receive_count.max(1) as usize - 1).min(self.0.len() - 1);
        self.0[index]
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::parse(DEFAULT_SCHEDULE).expect("the default schedule is valid")
    }
}

/// Why a failed record is left to the queue's visibility timeout instead of the schedule.
#[derive(Debug, thiserror::Error)]
pub enum BackoffError {
    #[error("the record has no receipt handle, so its visibility cannot be changed")]
    NoReceiptHandle,
    #[error(
        "eventSourceARN {0:?} is not an SQS queue ARN; invoke the function from an SQS event source mapping"
    )]
    NotAQueue(String),
    #[error(
        "could not look up the queue {name} the record came from: {message}; point QUEUE_URL at the event source queue, or allow sqs:GetQueueUrl on it"
    )]
    UnknownQueue { name: String, message: String },
    #[error(
        "ChangeMessageVisibility on {queue} failed: {message}; allow sqs:ChangeMessageVisibility on that queue in the function's role"
    )]
    Refused { queue: String, message: String },
}

/// Sets failed records' visibility on the queue they came from.
pub struct Retries {
    sqs: aws_sdk_sqs::Client,
    /// The relay queue; records from it need no lookup.
    queue_url: String,
    schedule: RetrySchedule,
    /// The queue's `maxReceiveCount`, when known: the receive after which SQS gives up.
    max_receives: Option<u32>,
}

impl Retries {
    pub fn new(sqs: aws_sdk_sqs::Client, queue_url: String, schedule: RetrySchedule) -> Self {
        Self { sqs, queue_url, schedule, max_receives: None }
    }

    /// Knows the queue's `maxReceiveCount`, so a record's last receive can be told apart.
    pub fn with_max_receives(self, max_receives: Option<u32>) -> Self {
        Self { max_receives, ..self }
    }

    /// True on the receive after which SQS moves a failed record to the dead-letter queue.
    pub fn is_last_receive(&self, record: &SqsMessage) -> bool {
        self.max_receives.is_some_and(|max| receive_count(record) >= max)
    }

    /// See [`RetrySchedule::span`].
    pub fn span(&self) -> Duration {
        self.schedule.span()
    }

    /// Hides a failed record for its next step. If that fails, the queue's visibility timeout
    /// applies instead; either way the record stays on the queue, so nothing is lost.
    pub async fn schedule(&self, record: &SqsMessage) {
        match self.back_off(record).await {
            Ok(wait) => tracing::info!(retry_in_seconds = wait.as_secs(), "retry scheduled"),
            Err(e) => {
                tracing::warn!(code = "retry_backoff_failed", error = %e, "the queue's visibility timeout applies instead of the retry schedule")
            }
        }
    }

    async fn back_off(&self, record: &SqsMessage) -> Result<Duration, BackoffError> {
        let handle = record.receipt_handle.as_deref().ok_or(BackoffError::NoReceiptHandle)?;
        let wait = self
            .schedule
            .after(receive_count(record))
            .min(Duration::from_secs(MAX_STEP_SECONDS - RECEIVED_TO_REPORTED_SECONDS));
        let queue = self.queue_of(record).await?;
        self.sqs
            .change_message_visibility()
            .queue_url(queue.as_ref())
            .receipt_handle(handle)
            .visibility_timeout(wait.as_secs() as i32)
            .send()
            .await
            .map_err(|e| BackoffError::Refused {
                queue: queue.to_string(),
                message: DisplayErrorContext(e).to_string(),
            })?;
        Ok(wait)
    }

    /// The URL of the queue the record came from: the relay queue itself, normally.
    async fn queue_of(&self, record: &SqsMessage) -> Result<Cow<'_, str>, BackoffError> {
        let Some(arn) = record.event_source_arn.as_deref() else {
            return Ok(Cow::Borrowed(&self.queue_url));
        };
        let (account, name) = queue_arn(arn).ok_or_else(|| BackoffError::NotAQueue(arn.to_string()))?;
        if self.queue_url.ends_with(&format!("/{account}/{name}")) {
            return Ok(Cow::Borrowed(&self.queue_url));
        }
        let found = self
            .sqs
            .get_queue_url()
            .queue_name(name)
            .queue_owner_aws_account_id(account)
            .send()
            .await
            .map_err(|e| BackoffError::UnknownQueue {
                name: name.to_string(),
                message: DisplayErrorContext(e).to_string(),
            })?;
        found.queue_url.map(Cow::Owned).ok_or_else(|| BackoffError::UnknownQueue {
            name: name.to_string(),
            message: "no URL in the answer".into(),
        })
    }
}

/// How many times SQS has delivered the record, this time included; 1 if Lambda did not say.
pub fn receive_count(record: &SqsMessage) -> u32 {
    record.attributes.get(RECEIVE_COUNT).and_then(|n| n.parse().ok()).unwrap_or(1)
}

/// The account and queue name of `arn:<partition>:sqs:<region>:<account>:<name>`.
fn queue_arn(arn: &str) -> Option<(&str, &str)> {
    match arn.split(':').collect::<Vec<_>>()[..] {
        ["arn", _, "sqs", _, account, name] if !account.is_empty() && !name.is_empty() => {
            Some((account, name))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(schedule: &RetrySchedule, receive_count: u32) -> u64 {
        schedule.after(receive_count).as_secs()
    }

    #[test]
    fn each_delivery_takes_the_next_step_and_the_last_step_repeats() {
        let schedule = RetrySchedule::default();
        let waits: Vec<u64> = (0..=9).map(|n| seconds(&schedule, n)).collect();
        assert_eq!(waits, [10, 10, 60, 300, 1800, 7200, 18000, 36000, 36000, 36000]);
    }

    #[test]
    fn bad_schedules_are_refused_with_what_is_expected() {
        for bad in ["", "0", "10,,60", "10,abc", "-5", "43201", "1.5", "10;60"] {
            let err = RetrySchedule::parse(bad).unwrap_err();
            assert!(err.contains("whole seconds from 1 to 43200"), "{bad:?}: {err}");
        }
        assert_eq!(RetrySchedule::parse(" 5, 43200 ").unwrap().steps().len(), 2);
    }

    #[test]
    fn the_receive_count_comes_from_the_record() {
        let mut record = SqsMessage::default();
        assert_eq!(receive_count(&record), 1, "absent: a first delivery");
        record.attributes.insert(RECEIVE_COUNT.into(), "4".into());
        assert_eq!(receive_count(&record), 4);
    }

    #[test]
    fn queue_arns_give_their_account_and_name() {
        assert_eq!(queue_arn("arn:aws:sqs:us-east-1:123456789012:relay"), Some(("123456789012", "relay")));
        assert_eq!(queue_arn("arn:aws-cn:sqs:cn-north-1:1:q"), Some(("1", "q")));
        assert_eq!(queue_arn("arn:aws:sns:us-east-1:1:topic"), None);
        assert_eq!(queue_arn("relay"), None);
    }

    /// The template's defaults must follow the schedule: one delivery per step plus the first,
    /// and messages kept for longer than the whole schedule takes.
    #[test]
    fn the_template_defaults_follow_the_schedule() {
        let template = include_str!("../template.yaml");
        let default_of = crate::config::template_default;
        assert_eq!(default_of("RetryScheduleSeconds"), DEFAULT_SCHEDULE);
        let steps = RetrySchedule::default().steps().to_vec();
        assert_eq!(default_of("MaxReceiveCount"), (steps.len() + 1).to_string());
        let whole: Duration = steps.iter().sum::<Duration>() + *steps.last().unwrap();
        let retention = template
            .split("\n  RelayQueue:\n")
            .nth(1)
            .and_then(|b| b.lines().find(|l| l.contains("MessageRetentionPeriod:")))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split('#').next())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("the relay queue's MessageRetentionPeriod");
        assert!(Duration::from_secs(retention) > whole, "{retention} s must cover {whole:?}");
    }
}
