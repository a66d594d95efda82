//! Shared by the examples that play Lambda's SQS poller (`#[path]`-included; not an example of
//! its own): deleting the messages the function finished with, as the poller does.

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message};

/// Deletes `done` (at most 10) from `queue_url`; the rest come back after their visibility
/// timeout, as SQS redelivers records a function reported as failed.
pub async fn delete_done(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    done: &[&Message],
) -> Result<(), Box<dyn std::error::Error>> {
    if done.is_empty() {
        return Ok(());
    }
    let entries: Vec<DeleteMessageBatchRequestEntry> = done
        .iter()
        .enumerate()
        .map(|(i, m)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .build()
                .expect("id and handle are set")
        })
        .collect();
    sqs.delete_message_batch().queue_url(queue_url).set_entries(Some(entries)).send().await?;
    Ok(())
}
