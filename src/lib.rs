//! export-relay: watches DealMachine exports, copies finished ones into S3 and announces them
//! with a signed webhook. `handler` holds the flow of one export; each other module is one
//! concern it calls on.

pub mod announce;
pub mod batch_status;
pub mod config;
pub mod deadletter;
pub mod dealmachine;
pub mod events;
pub mod handler;
pub mod http;
pub mod integrity;
pub mod manifest;
pub mod metrics;
pub mod notify;
pub mod pages;
pub mod replay;
pub mod requeue;
pub mod retry;
pub mod secrets;
pub mod startup;
pub mod sweep;
pub mod transfer;

/// Sent with every request, so the other side can tell who is calling.
pub const USER_AGENT: &str = concat!("export-relay/", env!("CARGO_PKG_VERSION"));
