//! The Lambda binary: read settings, build the relay, serve events.

use export_relay::{startup, transfer::Deadline};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let aws = startup::aws_config().await;
    let config = startup::load_config(&aws).await.inspect_err(|e| tracing::error!("configuration: {e}"))?;
    let relay = startup::build_relay(&config, &aws)?;
    let relay = &relay;
    // On SIGTERM, say so and flush, so the last log and metric lines are not lost. Registering
    // needs Lambda's Extensions API; an emulator without it must not stop the function.
    let shutdown_hook = tokio::spawn(lambda_runtime::spawn_graceful_shutdown_handler(|| async {
        tracing::info!("shutting down");
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }));
    if shutdown_hook.await.is_err() {
        tracing::warn!("no Extensions API here: running without the graceful-shutdown hook");
    }
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        relay.handle(event.payload, Deadline::from_lambda(event.context.deadline)).await
    }))
    .await
}
