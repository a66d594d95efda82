//! Builds the relay from its settings: the HTTP and AWS clients, created once per cold start.

use aws_config::{BehaviorVersion, SdkConfig};

use crate::config::{Config, ConfigError};
use crate::deadletter::DeadLetters;
use crate::dealmachine::DealMachineClient;
use crate::handler::Relay;
use crate::manifest::Ledger;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::requeue::Requeuer;
use crate::retry::Retries;
use crate::secrets::{self, SecretError, SecretSource};
use crate::transfer::{Transfer, UrlPolicy};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("could not set up the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Reads the settings from the environment, with secrets named by ARN fetched first.
pub async fn load_config(aws: &SdkConfig) -> Result<Config, StartupError> {
    load_config_with(|name| std::env::var(name).ok(), aws).await
}

/// `load_config` over any lookup, so tests can pass a map.
pub async fn load_config_with(
    lookup: impl Fn(&str) -> Option<String>,
    aws: &SdkConfig,
) -> Result<Config, StartupError> {
    let secrets = secrets::fetch(&lookup, aws).await?;
    Ok(Config::from_lookup(|name| secrets.get(name).cloned().or_else(|| lookup(name)))?)
}

/// AWS settings from the standard chain; `AWS_ENDPOINT_URL` points it at moto or LocalStack.
pub async fn aws_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

pub fn build_relay(config: &Config, aws: &SdkConfig) -> Result<Relay, StartupError> {
    build_relay_with(config, aws, Metrics::stdout(&config.metrics_namespace))
}

/// The S3 client the copies and the ledger share, addressed as `S3_FORCE_PATH_STYLE` says.
pub fn s3_client(config: &Config, aws: &SdkConfig) -> aws_sdk_s3::Client {
    let s3_config =
        aws_sdk_s3::config::Builder::from(aws).force_path_style(config.s3_force_path_style).build();
    aws_sdk_s3::Client::from_conf(s3_config)
}

/// `build_relay` with its metrics written where the caller says: tests read them back.
pub fn build_relay_with(config: &Config, aws: &SdkConfig, metrics: Metrics) -> Result<Relay, StartupError> {
    let s3 = s3_client(config, aws);
    let sqs = aws_sdk_sqs::Client::new(aws);
    let api_http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(30))
        .user_agent(crate::USER_AGENT)
        .build()?;
    let policy =
        UrlPolicy { hosts: config.download_hosts.clone(), allow_insecure_http: config.allow_insecure_http };
    let mut api =
        DealMachineClient::new(api_http, config.api_url.clone(), config.api_key.clone(), config.api_retry);
    if let Some(arn) = &config.api_key_secret_arn {
        api = api.with_key_source(SecretSource::new(aws, "DEALMACHINE_API_KEY_SECRET_ARN", arn.clone()));
    }
    Ok(Relay {
        api,
        ledger: Ledger::new(s3.clone(), config.bucket.clone(), config.prefix.clone()),
        transfer: Transfer::new(s3, config.bucket.clone(), policy, config.part_size, config.parts_in_flight)?
            .with_idle_timeout(config.download_idle_timeout)?
            .with_root_certificates(config.download_roots.clone())?
            .with_max_resumes(config.download_max_resumes)
            .with_metrics(metrics.clone()),
        notifier: config.webhook.as_ref().map(Notifier::new).transpose()?,
        requeuer: Requeuer::new(sqs.clone(), config.queue_url.clone()),
        retries: Retries::new(sqs.clone(), config.queue_url.clone(), config.retry_schedule.clone())
            .with_max_receives(config.max_receive_count),
        dead_letters: config.dead_letter_queue_url.clone().map(|url| DeadLetters::new(sqs, url)),
        prefix: config.prefix.clone(),
        poll: config.poll,
        strict_record_count: config.strict_record_count,
        presign_ttl: config.presign_ttl,
        metrics,
        sweep_reserve: config.sweep_reserve_requests,
    })
}
