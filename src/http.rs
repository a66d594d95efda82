//! HTTP pieces shared by the DealMachine client and the webhook notifier: short in-invocation
//! retries that honour `Retry-After`, and reading bodies with a size cap.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::{RequestBuilder, Response, StatusCode, header};

use crate::config::RetryPolicy;

/// The last answer of a retried request, which may still be an error status.
#[derive(Debug)]
pub struct Sent {
    pub response: Response,
    /// The longest `Retry-After` asked for along the way, so a caller that re-enqueues can
    /// wait at least that long.
    pub throttled_for: Option<Duration>,
    /// Tries made, counting the first.
    pub tries: usize,
    /// Answers that were 429 Too Many Requests.
    pub rate_limited: usize,
}

enum Failure {
    Status(Response),
    Transport(reqwest::Error),
}

/// Sends the request built by `make`, again after connection errors and after statuses for
/// which `retry_status` is true, with jittered exponential backoff.
///
/// A `Retry-After` within `policy.max_delay` is waited out; a longer one ends the retries, as a
/// Lambda should not sleep that long: the caller gets the answer and `throttled_for`.
pub async fn send_with_retry(
    policy: &RetryPolicy,
    retry_status: impl Fn(StatusCode) -> bool,
    make: impl Fn() -> RequestBuilder,
) -> Result<Sent, reqwest::Error> {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.first_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(policy.retries)
        .with_jitter();
    let mut throttled_for: Option<Duration> = None;
    let mut tries = 0;
    let mut rate_limited = 0;
    let outcome = (|| {
        tries += 1;
        let request = make();
        async {
            match request.send().await {
                Ok(response) if retry_status(response.status()) => Err(Failure::Status(response)),
                Ok(response) => Ok(response),
                Err(e) => Err(Failure::Transport(e)),
            }
        }
    })
    .retry(backoff)
    .when(|failure| match failure {
        Failure::Status(_) => true,
        Failure::Transport(e) => e.is_connect() || e.is_timeout() || e.is_request(),
    })
    .adjust(|failure, planned| {
        let Failure::Status(response) = failure else {
            return planned;
        };
        rate_limited += usize::from(response.status() == StatusCode::TOO_MANY_REQUESTS);
        let Some(wait) = retry_after(response) else {
            return planned;
        };
        throttled_for = throttled_for.max(Some(wait));
        match planned {
            Some(planned) if wait <= policy.max_delay => Some(planned.max(wait)),
            // Rather than sleep past the cap, hand the answer back for re-enqueueing.
            _ => None,
        }
    })
    .await;
    match outcome {
        Ok(response) | Err(Failure::Status(response)) => {
            Ok(Sent { response, throttled_for, tries, rate_limited })
        }
        Err(Failure::Transport(e)) => Err(e),
    }
}

/// `Retry-After` in seconds or as an HTTP date.
pub fn retry_after(response: &Response) -> Option<Duration> {
    let value = response.headers().get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.to_utc() - chrono::Utc::now()).to_std().unwrap_or_default())
}

/// A body larger than the cap: the peer is broken or hostile.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("response body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the response body failed: {0}")]
    Read(#[from] reqwest::Error),
}

/// Reads at most `limit` bytes of a body, and fails rather than buffer more.
pub async fn read_capped(response: Response, limit: usize) -> Result<Bytes, BodyError> {
    if response.content_length().is_some_and(|len| len > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = BytesMut::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Up to `limit` bytes of a body, lossily as text, for error messages; never fails.
pub async fn body_excerpt(response: Response, limit: usize) -> String {
    let mut excerpt = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = limit - excerpt.len();
        excerpt.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if excerpt.len() == limit {
            break;
        }
    }
    String::from_utf8_lossy(&excerpt).into_owned()
}
