//! Records that can never succeed are set aside on the dead-letter queue, intact, with the
//! reason in message attributes, so an operator can read, fix and redrive them.

use aws_lambda_events::sqs::SqsMessage;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::MessageAttributeValue;

/// SQS caps all attributes together; a reason is a sentence, not a dump.
const MAX_REASON_CHARS: usize = 1000;

pub struct DeadLetters {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

impl DeadLetters {
    pub fn new(sqs: aws_sdk_sqs::Client, queue_url: String) -> Self {
        Self { sqs, queue_url }
    }

    /// Sends the record's original body, with `error_code`, `error_message` and
    /// `source_message_id` attributes.
    pub async fn send(&self, record: &SqsMessage, code: &str, reason: &str) -> Result<(), String> {
        let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
        let text = |value: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(if value.is_empty() { "-" } else { value })
                .build()
                .expect("data type and value are set")
        };
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(record.body.clone().filter(|b| !b.is_empty()).unwrap_or_else(|| "<empty>".into()))
            .message_attributes("error_code", text(code))
            .message_attributes("error_message", text(&reason))
            .message_attributes("source_message_id", text(record.message_id.as_deref().unwrap_or_default()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| DisplayErrorContext(e).to_string())
    }
}
