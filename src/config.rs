//! Settings, read once at cold start from the environment.
//!
//! Every setting is checked here, so a bad deployment fails at once with one line that names
//! the variable, instead of failing later on the first export.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use url::Url;

use crate::notify::SigningKeys;
use crate::retry::{self, RetrySchedule};

pub const DEFAULT_API_URL: &str = "https://api.v2.dealmachine.com/v1";
pub const DEFAULT_PREFIX: &str = "dealmachine/exports/";
pub const DEFAULT_DOWNLOAD_HOSTS: &str = "storage.googleapis.com";
/// SQS refuses a `DelaySeconds` above 15 minutes.
pub const MAX_SQS_DELAY_SECONDS: u64 = 900;
/// S3 signs URLs for at most 7 days.
const MAX_PRESIGN_SECONDS: u64 = 7 * 86_400;
const MIB: usize = 1024 * 1024;
/// S3 refuses parts under 5 MiB, except the last.
const MIN_PART_SIZE_MIB: usize = 5;
/// Memory the process needs beside its part buffers: the runtime, TLS, the SDK clients, and
/// the content checks' chunks in flight. Measured peak RSS is about 8 MiB over the parts.
const PROCESS_RESERVE_MIB: u64 = 48;

/// A value that must never reach a log line, an error or a `Debug` dump.
/// Standard Webhooks recommends 15 to 30 s per attempt: receivers that do work before
/// answering are not cut off, and a hung one does not hold the record for long.
pub const DEFAULT_WEBHOOK_TIMEOUT_SECONDS: u64 = 20;

/// A parameter's `Default:` in `template.yaml`, for tests that keep the code and the template
/// in step.
#[cfg(test)]
pub(crate) fn template_default(parameter: &str) -> String {
    let template = include_str!("../template.yaml");
    let block = template.split(&format!("\n  {parameter}:\n")).nth(1).expect(parameter);
    let line = block.lines().find(|l| l.trim_start().starts_with("Default:")).expect("a Default");
    line.split_once(':').unwrap().1.trim().trim_matches('"').to_string()
}

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw value, for the one place that has to send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A setting that is missing or malformed. The message names the variable and what it expects.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var} is not set: {expected}")]
    Missing { var: &'static str, expected: &'static str },
    #[error("{var} is invalid: {expected}, got {got:?}")]
    Invalid { var: &'static str, expected: String, got: String },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub api_key: Secret,
    /// The secret the key was read from, if any: read again when the API refuses the key.
    pub api_key_secret_arn: Option<String>,
    pub api_url: Url,
    pub bucket: String,
    /// Empty, or ends with `/`.
    pub prefix: String,
    pub queue_url: String,
    /// Where records that can never succeed are set aside; unset, they are logged and dropped.
    pub dead_letter_queue_url: Option<String>,
    pub webhook: Option<WebhookConfig>,
    pub poll: PollPolicy,
    /// How long a record that failed for a passing reason waits before SQS delivers it again.
    pub retry_schedule: RetrySchedule,
    /// The relay queue's `maxReceiveCount`, so the last receive can say why it gives up.
    pub max_receive_count: Option<u32>,
    pub download_hosts: Vec<String>,
    pub allow_insecure_http: bool,
    pub s3_force_path_style: bool,
    /// A sweep stops early when fewer API requests than this remain.
    pub sweep_reserve_requests: u64,
    /// The CloudWatch namespace of the embedded metrics.
    pub metrics_namespace: String,
    /// With a value, `export.completed` carries a presigned GET URL per file, valid this long.
    pub presign_ttl: Option<Duration>,
    /// When true, a record count that does not match the API's fails the delivery.
    pub strict_record_count: bool,
    /// A download that sends nothing for this long is given up.
    pub download_idle_timeout: Duration,
    /// How many times one file's download may resume after a break, or start again.
    pub download_max_resumes: u32,
    pub part_size: usize,
    /// Parts filling or uploading at once, across every file this process copies: a copy takes
    /// its slot before it asks for its file, so memory is bounded by `part_size * parts_in_flight`.
    pub parts_in_flight: usize,
    pub api_retry: RetryPolicy,
    /// Certificates trusted for downloads beside the system's roots. No setting fills it: it is
    /// for code that embeds the relay, and for tests against a file host with its own CA.
    pub download_roots: Vec<reqwest::Certificate>,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: Url,
    pub keys: SigningKeys,
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

/// How a running export is polled: by re-enqueueing it with a delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollPolicy {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub timeout: Duration,
    pub schedule: PollSchedule,
}

/// How the delay before the next poll is chosen (`POLL_SCHEDULE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PollSchedule {
    /// From the export's progress, when two polls show a pace; doubling otherwise.
    #[default]
    Progress,
    /// Always doubling, whatever the export says about itself: for an API whose progress
    /// misleads.
    Doubling,
}

/// Retries inside one invocation, for answers that may succeed a moment later (429, 5xx).
/// Longer waits are left to SQS, so a Lambda never sleeps for long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub retries: usize,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// DealMachine's advice: 1, 2, 4, 8 s, capped at 30 s, with jitter.
    pub const API: Self =
        Self { retries: 4, first_delay: Duration::from_secs(1), max_delay: Duration::from_secs(30) };
    /// A webhook gets a few fast tries; after that SQS redelivers the record.
    pub const WEBHOOK: Self =
        Self { retries: 2, first_delay: Duration::from_millis(500), max_delay: Duration::from_secs(5) };
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests can pass a map instead of the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let allow_insecure_http = env.boolean("ALLOW_INSECURE_HTTP", false)?;
        let poll = PollPolicy {
            // At 0 the doubling delay stays 0, and a running export is polled back to back.
            initial_delay: env.seconds("POLL_INITIAL_DELAY_SECONDS", 30, 1..=MAX_SQS_DELAY_SECONDS)?,
            max_delay: env.seconds("POLL_MAX_DELAY_SECONDS", 900, 1..=MAX_SQS_DELAY_SECONDS)?,
            timeout: env.seconds("POLL_TIMEOUT_SECONDS", 86_400, 1..=30 * 86_400)?,
            schedule: poll_schedule(&env)?,
        };
        if poll.max_delay < poll.initial_delay {
            return Err(invalid(
                "POLL_MAX_DELAY_SECONDS",
                "at least POLL_INITIAL_DELAY_SECONDS",
                poll.max_delay.as_secs().to_string(),
            ));
        }
        Self {
            api_key: Secret::new(
                env.required("DEALMACHINE_API_KEY", "the DealMachine API key (dm_sk_live_...)")?,
            ),
            api_key_secret_arn: env.optional("DEALMACHINE_API_KEY_SECRET_ARN"),
            api_url: env.url("DEALMACHINE_API_URL", DEFAULT_API_URL, allow_insecure_http)?,
            bucket: env.required("DESTINATION_BUCKET", "the name of the S3 bucket for the files")?,
            prefix: prefix(env.optional("DESTINATION_PREFIX").unwrap_or_else(|| DEFAULT_PREFIX.into()))?,
            queue_url: env
                .required("QUEUE_URL", "the URL of the SQS queue that running exports are re-enqueued on")?,
            dead_letter_queue_url: env.optional("DEAD_LETTER_QUEUE_URL"),
            webhook: webhook(&env, allow_insecure_http)?,
            poll,
            retry_schedule: retry_schedule(&env)?,
            max_receive_count: env
                .optional("MAX_RECEIVE_COUNT")
                .map(|_| env.number("MAX_RECEIVE_COUNT", 0, 1..=1000).map(|n| n as u32))
                .transpose()?,
            download_hosts: download_hosts(
                &env.optional("DOWNLOAD_HOSTS").unwrap_or_else(|| DEFAULT_DOWNLOAD_HOSTS.into()),
            )?,
            allow_insecure_http,
            s3_force_path_style: env.boolean("S3_FORCE_PATH_STYLE", false)?,
            strict_record_count: env.boolean("STRICT_RECORD_COUNT", false)?,
            sweep_reserve_requests: env.number("SWEEP_RESERVE_REQUESTS", 10, 0..=5000)?,
            metrics_namespace: env
                .optional("METRICS_NAMESPACE")
                .unwrap_or_else(|| crate::metrics::DEFAULT_NAMESPACE.into()),
            presign_ttl: env
                .optional("PRESIGN_TTL_SECONDS")
                .map(|_| env.seconds("PRESIGN_TTL_SECONDS", 0, 1..=MAX_PRESIGN_SECONDS))
                .transpose()?,
            part_size: env.number("PART_SIZE_MIB", 8, MIN_PART_SIZE_MIB as u64..=512)? as usize * MIB,
            download_idle_timeout: env.seconds(
                "DOWNLOAD_IDLE_TIMEOUT_SECONDS",
                crate::transfer::DEFAULT_IDLE_TIMEOUT.as_secs(),
                1..=900,
            )?,
            download_max_resumes: env.number(
                "DOWNLOAD_MAX_RESUMES",
                crate::transfer::DEFAULT_MAX_RESUMES.into(),
                0..=100,
            )? as u32,
            parts_in_flight: env.number("PARTS_IN_FLIGHT", 4, 1..=64)? as usize,
            api_retry: RetryPolicy::API,
            download_roots: Vec::new(),
        }
        .check_memory(env.optional("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"))
    }

    /// Fails when the parts in flight, with room for the rest of the process, do not fit the
    /// function's memory (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, which Lambda sets).
    fn check_memory(self, memory_mb: Option<String>) -> Result<Self, ConfigError> {
        let Some(raw) = memory_mb else { return Ok(self) };
        let memory: u64 = raw.trim().parse().map_err(|_| {
            invalid("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "the function's memory in MB", raw.clone())
        })?;
        let parts_mib = (self.part_size / MIB * self.parts_in_flight) as u64;
        let needed_mb = (parts_mib + PROCESS_RESERVE_MIB) * 1_048_576 / 1_000_000;
        if needed_mb > memory {
            return Err(invalid(
                "PARTS_IN_FLIGHT",
                &format!(
                    "PART_SIZE_MIB x PARTS_IN_FLIGHT ({parts_mib} MiB of parts) plus {PROCESS_RESERVE_MIB} MiB for the rest of \
                     the process must fit the function's {memory} MB: lower PARTS_IN_FLIGHT or PART_SIZE_MIB, or raise FunctionMemorySize"
                ),
                self.parts_in_flight.to_string(),
            ));
        }
        Ok(self)
    }

    /// Builds settings from `NAME=value` pairs; handy in tests and tools.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, ConfigError> {
        let map: HashMap<String, String> = pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        Self::from_lookup(|name| map.get(name).cloned())
    }
}

fn webhook(env: &Env<'_>, allow_insecure_http: bool) -> Result<Option<WebhookConfig>, ConfigError> {
    let Some(raw_url) = env.optional("WEBHOOK_URL") else {
        return Ok(None);
    };
    let url = parse_url("WEBHOOK_URL", &raw_url, allow_insecure_http)?;
    let secret = env.required(
        "WEBHOOK_SECRET",
        "one or more whsec_<base64> secrets, separated by spaces, when WEBHOOK_URL is set",
    )?;
    let keys = SigningKeys::parse(&secret)
        .map_err(|reason| invalid("WEBHOOK_SECRET", &reason, "<redacted>".into()))?;
    Ok(Some(WebhookConfig {
        url,
        keys,
        timeout: env.seconds("WEBHOOK_TIMEOUT_SECONDS", DEFAULT_WEBHOOK_TIMEOUT_SECONDS, 1..=300)?,
        retry: RetryPolicy::WEBHOOK,
    }))
}

fn retry_schedule(env: &Env<'_>) -> Result<RetrySchedule, ConfigError> {
    let raw = env.optional("RETRY_SCHEDULE_SECONDS").unwrap_or_else(|| retry::DEFAULT_SCHEDULE.into());
    RetrySchedule::parse(&raw).map_err(|expected| invalid("RETRY_SCHEDULE_SECONDS", &expected, raw))
}

fn poll_schedule(env: &Env<'_>) -> Result<PollSchedule, ConfigError> {
    match env.optional("POLL_SCHEDULE").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("progress") => Ok(PollSchedule::Progress),
        Some("doubling") => Ok(PollSchedule::Doubling),
        Some(other) => Err(invalid("POLL_SCHEDULE", "progress or doubling", other.to_string())),
    }
}

fn prefix(raw: String) -> Result<String, ConfigError> {
    let trimmed = raw.trim();
    if trimmed.starts_with('/') || trimmed.split('/').any(|part| part == ".." || part == ".") {
        return Err(invalid(
            "DESTINATION_PREFIX",
            "a relative key prefix such as dealmachine/exports/, without a leading / or . or .. segments",
            raw,
        ));
    }
    Ok(match trimmed {
        "" => String::new(),
        p if p.ends_with('/') => p.to_string(),
        p => format!("{p}/"),
    })
}

fn download_hosts(raw: &str) -> Result<Vec<String>, ConfigError> {
    let hosts: Vec<String> =
        raw.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect();
    let valid =
        |h: &String| h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if hosts.is_empty() || !hosts.iter().all(valid) {
        return Err(invalid(
            "DOWNLOAD_HOSTS",
            "a comma-separated list of host names, such as storage.googleapis.com",
            raw.to_string(),
        ));
    }
    Ok(hosts)
}

fn parse_url(var: &'static str, raw: &str, allow_insecure_http: bool) -> Result<Url, ConfigError> {
    let url = Url::parse(raw).map_err(|_| invalid(var, "an absolute URL", raw.to_string()))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_insecure_http => Ok(url),
        "http" => {
            Err(invalid(var, "an https:// URL (http:// needs ALLOW_INSECURE_HTTP=true)", raw.to_string()))
        }
        _ => Err(invalid(var, "an https:// URL", raw.to_string())),
    }
}

fn invalid(var: &'static str, expected: &str, got: String) -> ConfigError {
    ConfigError::Invalid { var, expected: expected.to_string(), got }
}

/// Lookup helpers that treat an empty value as unset, as SAM passes empty parameters.
struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn optional(&self, var: &str) -> Option<String> {
        (self.0)(var).filter(|v| !v.trim().is_empty())
    }

    fn required(&self, var: &'static str, expected: &'static str) -> Result<String, ConfigError> {
        self.optional(var).ok_or(ConfigError::Missing { var, expected })
    }

    fn url(&self, var: &'static str, default: &str, allow_insecure_http: bool) -> Result<Url, ConfigError> {
        parse_url(var, &self.optional(var).unwrap_or_else(|| default.into()), allow_insecure_http)
    }

    fn boolean(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.optional(var).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if v == "true" || v == "1" => Ok(true),
            Some(v) if v == "false" || v == "0" => Ok(false),
            Some(v) => Err(invalid(var, "true or false", v)),
        }
    }

    fn number(
        &self,
        var: &'static str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        let Some(raw) = self.optional(var) else {
            return Ok(default);
        };
        match raw.trim().parse::<u64>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(invalid(var, &format!("a whole number from {} to {}", range.start(), range.end()), raw)),
        }
    }

    fn seconds(
        &self,
        var: &'static str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        self.number(var, default, range).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("DEALMACHINE_API_KEY", "dm_sk_live_test"),
            ("DESTINATION_BUCKET", "bucket"),
            ("QUEUE_URL", "http://localhost/queue"),
        ]
    }

    fn with(extra: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
        let mut pairs = base();
        pairs.extend_from_slice(extra);
        Config::from_pairs(pairs)
    }

    #[test]
    fn defaults_apply_when_only_the_required_settings_are_given() {
        let config = with(&[]).unwrap();
        assert_eq!(config.api_url.as_str(), "https://api.v2.dealmachine.com/v1");
        assert_eq!(config.prefix, "dealmachine/exports/");
        assert_eq!(config.download_hosts, vec!["storage.googleapis.com"]);
        assert_eq!(config.poll.initial_delay, Duration::from_secs(30));
        assert_eq!(config.poll.max_delay, Duration::from_secs(900));
        assert_eq!(config.poll.timeout, Duration::from_secs(86_400));
        assert_eq!(config.poll.schedule, PollSchedule::Progress);
        assert!(config.webhook.is_none());
        assert!(!config.allow_insecure_http);
        assert_eq!(config.retry_schedule, RetrySchedule::default());
    }

    #[test]
    fn each_missing_required_setting_is_named() {
        for var in ["DEALMACHINE_API_KEY", "DESTINATION_BUCKET", "QUEUE_URL"] {
            let pairs: Vec<_> = base().into_iter().filter(|(k, _)| *k != var).collect();
            let err = Config::from_pairs(pairs).unwrap_err();
            assert!(err.to_string().starts_with(&format!("{var} is not set")), "{err}");
        }
    }

    #[test]
    fn an_empty_value_counts_as_missing() {
        let mut pairs = base();
        pairs[1] = ("DESTINATION_BUCKET", "  ");
        let err = Config::from_pairs(pairs).unwrap_err();
        assert!(matches!(err, ConfigError::Missing { var: "DESTINATION_BUCKET", .. }));
    }

    #[test]
    fn the_parts_in_flight_must_fit_the_functions_memory() {
        assert!(with(&[("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")]).is_ok(), "8 MiB x 4 at the default");
        assert!(with(&[("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"), ("PARTS_IN_FLIGHT", "8")]).is_ok());
        let err = with(&[("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512"), ("PART_SIZE_MIB", "128")]).unwrap_err();
        assert!(err.to_string().starts_with("PARTS_IN_FLIGHT is invalid"), "{err}");
        assert!(err.to_string().contains("512 MB"), "{err}");
    }

    #[test]
    fn malformed_settings_fail_with_the_variable_and_what_is_expected() {
        let cases: &[(&str, &str)] = &[
            ("DEALMACHINE_API_URL", "not a url"),
            ("DEALMACHINE_API_URL", "http://api.example.com"),
            ("POLL_INITIAL_DELAY_SECONDS", "-1"),
            ("POLL_INITIAL_DELAY_SECONDS", "0"),
            ("DOWNLOAD_MAX_RESUMES", "101"),
            ("MAX_RECEIVE_COUNT", "0"),
            ("POLL_MAX_DELAY_SECONDS", "901"),
            ("POLL_TIMEOUT_SECONDS", "soon"),
            ("ALLOW_INSECURE_HTTP", "maybe"),
            ("S3_FORCE_PATH_STYLE", "yes please"),
            ("DESTINATION_PREFIX", "/abs/"),
            ("DESTINATION_PREFIX", "a/../b"),
            ("DOWNLOAD_HOSTS", " , "),
            ("PART_SIZE_MIB", "4"),
            ("PRESIGN_TTL_SECONDS", "604801"),
            ("STRICT_RECORD_COUNT", "yes"),
            ("RETRY_SCHEDULE_SECONDS", "10,0"),
            ("RETRY_SCHEDULE_SECONDS", "10,43201"),
            ("POLL_SCHEDULE", "fast"),
        ];
        for (var, value) in cases {
            let err = with(&[(var, value)]).unwrap_err();
            assert!(err.to_string().starts_with(&format!("{var} is invalid")), "{var}={value}: {err}");
        }
    }

    #[test]
    fn the_doubling_schedule_can_be_chosen() {
        let config = with(&[("POLL_SCHEDULE", "Doubling")]).unwrap();
        assert_eq!(config.poll.schedule, PollSchedule::Doubling);
    }

    #[test]
    fn max_delay_below_initial_delay_is_refused() {
        let err =
            with(&[("POLL_INITIAL_DELAY_SECONDS", "60"), ("POLL_MAX_DELAY_SECONDS", "30")]).unwrap_err();
        assert!(err.to_string().contains("POLL_MAX_DELAY_SECONDS"), "{err}");
    }

    #[test]
    fn webhook_needs_a_whsec_secret_and_https() {
        let err = with(&[("WEBHOOK_URL", "https://hooks.example.com/x")]).unwrap_err();
        assert!(matches!(err, ConfigError::Missing { var: "WEBHOOK_SECRET", .. }));

        let err =
            with(&[("WEBHOOK_URL", "https://hooks.example.com/x"), ("WEBHOOK_SECRET", "plain")]).unwrap_err();
        assert!(err.to_string().starts_with("WEBHOOK_SECRET is invalid"), "{err}");
        assert!(!err.to_string().contains("plain"), "the secret must not be echoed: {err}");

        let err =
            with(&[("WEBHOOK_URL", "http://hooks.example.com/x"), ("WEBHOOK_SECRET", SECRET)]).unwrap_err();
        assert!(err.to_string().contains("ALLOW_INSECURE_HTTP"), "{err}");

        let ok = with(&[
            ("WEBHOOK_URL", "http://127.0.0.1:9/x"),
            ("WEBHOOK_SECRET", SECRET),
            ("ALLOW_INSECURE_HTTP", "true"),
        ])
        .unwrap();
        assert!(ok.webhook.is_some());
    }

    #[test]
    fn prefix_gets_a_trailing_slash_and_hosts_are_normalised() {
        let config =
            with(&[("DESTINATION_PREFIX", "team/drops"), ("DOWNLOAD_HOSTS", "A.example.com, b.example.com")])
                .unwrap();
        assert_eq!(config.prefix, "team/drops/");
        assert_eq!(config.download_hosts, vec!["a.example.com", "b.example.com"]);
    }

    #[test]
    fn the_api_key_never_shows_in_debug_output() {
        let config = with(&[]).unwrap();
        assert!(!format!("{config:?}").contains("dm_sk_live_test"));
    }

    #[test]
    fn the_webhook_timeout_defaults_inside_the_specifications_15_to_30_seconds() {
        assert!((15..=30).contains(&DEFAULT_WEBHOOK_TIMEOUT_SECONDS));
        assert_eq!(template_default("WebhookTimeoutSeconds"), DEFAULT_WEBHOOK_TIMEOUT_SECONDS.to_string());
    }
}
