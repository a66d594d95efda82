//! The Lambda binary: read settings, build the relay, serve events.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use export_relay::{startup, transfer::Deadline};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let aws = startup::aws_config().await;
    let config = startup::load_config(&aws)
        .await
        .inspect_err(|e| tracing::error!("configuration: {e}"))?;
    let relay = startup::build_relay(&config, &aws)?;
    let relay = &relay;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        relay.handle(event.payload, deadline(&event.context)).await
    }))
    .await
}

/// Lambda gives the deadline as epoch milliseconds; the relay plans with a monotonic clock.
fn deadline(context: &lambda_runtime::Context) -> Deadline {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let left = Duration::from_millis(context.deadline).saturating_sub(now);
    Deadline::at(Instant::now() + left)
}
