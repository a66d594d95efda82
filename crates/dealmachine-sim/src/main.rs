//! `dealmachine-sim`: the DealMachine simulator and a webhook receiver as a standalone server,
//! for poking at the relay by hand. Settings come from `--name value` flags:
//!
//! ```text
//! dealmachine-sim --port 8900 --receiver-port 8901 --webhook-secret whsec_... \
//!     --pending-secs 2 --processing-secs 6 --shapes steady,stuck-then-fast,jumping \
//!     --rows 5000 --files 2 \
//!     --per-minute-limit 60 --error-rate 0.05 --api-key dm_sk_live_simulator \
//!     --cut-first-download-after 200000
//! ```
//!
//! Then `curl -X POST -H "Authorization: Bearer dm_sk_live_simulator" localhost:8900/v1/properties/export`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use dealmachine_sim::{Receiver, Shape, SimOptions, Simulator};

const USAGE: &str = "usage: dealmachine-sim [--port N] [--receiver-port N] [--webhook-secret whsec_...] \
[--api-key KEY] [--pending-secs N] [--processing-secs N] [--shapes steady,stuck-then-fast,jumping] \
[--rows N] [--files N] \
[--per-minute-limit N] [--error-rate 0.0-1.0] [--cut-first-download-after BYTES]";

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("dealmachine-sim: {e}\n{USAGE}");
        std::process::exit(2);
    }
}

async fn run() -> Result<(), String> {
    let flags = flags()?;
    let get = |name: &str| flags.get(name).map(String::as_str);
    let number = |name: &str, default: u64| -> Result<u64, String> {
        get(name).map_or(Ok(default), |v| {
            v.parse().map_err(|_| format!("--{name} takes a whole number, got {v:?}"))
        })
    };
    let defaults = SimOptions::default();
    let options = SimOptions {
        api_key: get("api-key").map_or(defaults.api_key.clone(), str::to_string),
        pending_for: Duration::from_secs(number("pending-secs", 2)?),
        processing_for: Duration::from_secs(number("processing-secs", 6)?),
        shapes: get("shapes")
            .map(|list| list.split(',').map(str::parse).collect::<Result<Vec<Shape>, _>>())
            .transpose()?
            .unwrap_or(defaults.shapes.clone()),
        rows_per_file: number("rows", defaults.rows_per_file)?,
        files_per_export: number("files", defaults.files_per_export as u64)? as usize,
        per_minute_limit: get("per-minute-limit")
            .map(|_| number("per-minute-limit", 60))
            .transpose()?
            .map(|n| n as u32),
        error_rate: get("error-rate")
            .map(|v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or(format!("--error-rate takes 0.0 to 1.0, got {v:?}"))
            })
            .transpose()?
            .unwrap_or(0.0),
        cut_first_download_after: get("cut-first-download-after")
            .map(|_| number("cut-first-download-after", 0))
            .transpose()?,
        ..defaults
    };
    let address = |port: u64| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], port as u16)) };
    let sim = Simulator::start(options, address(number("port", 8900)?)).await.map_err(|e| e.to_string())?;
    println!("DealMachine API   {}  (key: {})", sim.api_url(), sim.api_key());
    if let Some(secret) = get("webhook-secret") {
        let receiver = Receiver::start(secret, address(number("receiver-port", 8901)?), false)
            .await
            .map_err(|e| e.to_string())?;
        println!("webhook receiver  {}  (received: http://{}/received)", receiver.url(), receiver.addr);
    }
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())
}

fn flags() -> Result<HashMap<String, String>, String> {
    let mut flags = HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(name) = args.next() {
        let name = name.strip_prefix("--").ok_or(format!("unexpected argument {name:?}"))?.to_string();
        let value = args.next().ok_or(format!("--{name} needs a value"))?;
        flags.insert(name, value);
    }
    Ok(flags)
}
