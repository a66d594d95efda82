//! A local stand-in for the DealMachine exports API, its signed file host, and a webhook
//! receiver: what export-relay's tests and `make demo` run against, since every real API key
//! is live.

pub mod api;
pub mod content;
pub mod files;
pub mod lambda;
pub mod receiver;
mod tls;

pub use api::{ApiFault, ExportSpec, Lifecycle, Seen, Shape, SimOptions, Simulator, Status};
pub use content::CsvGz;
pub use files::{DownloadFault, FileSpec, HashHeader};
pub use lambda::LocalLambda;
pub use receiver::{Answer, Received, Receiver};
