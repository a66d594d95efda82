//! The Lambda binary: read settings, build the relay, serve events.

use export_relay::{config::Config, startup};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = Config::from_env().inspect_err(|e| tracing::error!("configuration: {e}"))?;
    let relay = startup::build_relay(&config, &startup::aws_config().await)?;
    let relay = &relay;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        relay.handle(event.payload).await
    }))
    .await
}
