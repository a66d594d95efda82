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
        // No answer came: refused, reset or timed out while sending (connects and timeouts
        // are request errors too). Redirect, body and decode errors are not retried.
        Failure::Transport(e) => e.is_timeout() || e.is_request(),
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use axum::response::IntoResponse;

    use super::*;

    /// A status, and the `Retry-After` to send with it.
    type Answer = (u16, Option<&'static str>);

    /// A local server answering `answers` in turn (then 200), noting when each request came.
    #[derive(Clone, Default)]
    struct Scripted {
        answers: Arc<Mutex<VecDeque<Answer>>>,
        arrivals: Arc<Mutex<Vec<Instant>>>,
    }

    impl Scripted {
        async fn start(answers: &[Answer]) -> (Self, String) {
            let scripted =
                Self { answers: Arc::new(Mutex::new(answers.iter().copied().collect())), ..Self::default() };
            let state = scripted.clone();
            let app = axum::Router::new().fallback(move || {
                let state = state.clone();
                async move {
                    state.arrivals.lock().unwrap().push(Instant::now());
                    let (status, retry_after) =
                        state.answers.lock().unwrap().pop_front().unwrap_or((200, None));
                    let status = StatusCode::from_u16(status).unwrap();
                    match retry_after {
                        Some(value) => (status, [(header::RETRY_AFTER, value)]).into_response(),
                        None => status.into_response(),
                    }
                }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            (scripted, url)
        }

        fn requests(&self) -> usize {
            self.arrivals.lock().unwrap().len()
        }
    }

    const FAST: RetryPolicy =
        RetryPolicy { retries: 4, first_delay: Duration::from_millis(1), max_delay: Duration::from_secs(2) };

    fn throttled_or_failing(status: StatusCode) -> bool {
        status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
    }

    async fn send(url: &str, policy: &RetryPolicy) -> Result<Sent, reqwest::Error> {
        let client = reqwest::Client::new();
        send_with_retry(policy, throttled_or_failing, || client.get(url)).await
    }

    #[tokio::test]
    async fn named_statuses_are_retried_and_429s_counted() {
        let (server, url) = Scripted::start(&[(429, Some("0")), (503, None), (429, Some("0"))]).await;
        let sent = send(&url, &FAST).await.unwrap();
        assert_eq!(sent.response.status(), StatusCode::OK);
        assert_eq!((server.requests(), sent.tries, sent.rate_limited), (4, 4, 2));
    }

    #[tokio::test]
    async fn other_statuses_are_answered_at_once() {
        let (server, url) = Scripted::start(&[(404, None)]).await;
        let sent = send(&url, &FAST).await.unwrap();
        assert_eq!((sent.response.status(), server.requests(), sent.tries), (StatusCode::NOT_FOUND, 1, 1));
    }

    #[tokio::test]
    async fn the_last_answer_is_returned_when_the_retries_run_out() {
        let (server, url) = Scripted::start(&[(500, None); 9]).await;
        let sent = send(&url, &FAST).await.unwrap();
        assert_eq!(sent.response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(server.requests(), FAST.retries + 1);
    }

    #[tokio::test]
    async fn a_retry_after_within_the_cap_is_waited_out() {
        let (server, url) = Scripted::start(&[(429, Some("1"))]).await;
        let sent = send(&url, &FAST).await.unwrap();
        assert_eq!(sent.response.status(), StatusCode::OK);
        assert_eq!(sent.throttled_for, Some(Duration::from_secs(1)));
        let arrivals = server.arrivals.lock().unwrap().clone();
        assert!(arrivals[1] - arrivals[0] >= Duration::from_millis(950), "{:?}", arrivals[1] - arrivals[0]);
    }

    #[tokio::test]
    async fn a_retry_after_past_the_cap_hands_the_answer_back_at_once() {
        let (server, url) = Scripted::start(&[(429, Some("120"))]).await;
        let sent = tokio::time::timeout(Duration::from_secs(10), send(&url, &FAST)).await.expect("no sleep");
        let sent = sent.unwrap();
        assert_eq!((sent.response.status(), server.requests()), (StatusCode::TOO_MANY_REQUESTS, 1));
        assert_eq!(sent.throttled_for, Some(Duration::from_secs(120)));
    }

    #[tokio::test]
    async fn a_connection_closed_without_an_answer_is_retried() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let accepted = Arc::new(Mutex::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                *counter.lock().unwrap() += 1;
                drop(socket);
            }
        });
        assert!(send(&url, &FAST).await.unwrap_err().is_request());
        assert_eq!(*accepted.lock().unwrap(), FAST.retries + 1);
    }

    fn response(body: reqwest::Body, headers: &[(header::HeaderName, &str)]) -> Response {
        let mut answer = http::Response::new(body);
        for (name, value) in headers {
            answer.headers_mut().insert(name, value.parse().unwrap());
        }
        Response::from(answer)
    }

    fn chunked(chunks: &[&'static [u8]]) -> reqwest::Body {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        reqwest::Body::wrap_stream(futures::stream::iter(chunks))
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date() {
        let after =
            |value: &str| retry_after(&response(reqwest::Body::from(""), &[(header::RETRY_AFTER, value)]));
        assert_eq!(after(" 7 "), Some(Duration::from_secs(7)));
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let wait = after(&soon).unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30), "{wait:?}");
        let past = (chrono::Utc::now() - chrono::Duration::seconds(30)).to_rfc2822();
        assert_eq!(after(&past), Some(Duration::ZERO));
        assert_eq!(after("soon"), None);
        assert_eq!(retry_after(&response(reqwest::Body::from(""), &[])), None);
    }

    #[tokio::test]
    async fn a_body_up_to_the_cap_is_read_and_one_byte_more_is_refused() {
        let sized = |body: &'static str| response(reqwest::Body::from(body), &[]);
        assert_eq!(read_capped(sized("0123456789"), 10).await.unwrap(), "0123456789");
        assert!(matches!(
            read_capped(sized("0123456789a"), 10).await,
            Err(BodyError::TooLarge { limit: 10 })
        ));
        // No length announced: counted as the chunks come.
        let exact = response(chunked(&[b"0", b"123456789"]), &[]);
        assert_eq!(read_capped(exact, 10).await.unwrap(), "0123456789");
        let over = response(chunked(&[b"0", b"123456789a"]), &[]);
        assert!(matches!(read_capped(over, 10).await, Err(BodyError::TooLarge { limit: 10 })));
    }

    #[tokio::test]
    async fn an_excerpt_stops_at_its_limit() {
        let excerpt = body_excerpt(response(chunked(&[b"abc", b"defgh", b"ij"]), &[]), 5).await;
        assert_eq!(excerpt, "abcde");
        let short = body_excerpt(response(chunked(&[b"ab", b"c"]), &[]), 5).await;
        assert_eq!(short, "abc");
    }
}
