//! `make bench` helper: the DealMachine simulator as a process of its own, so the poll
//! benchmark's contenders share one API and neither pays for it in its own CPU time.
//!
//! `bench_sim N` adds N exports that stay `processing`, prints `{"api_url", "api_key", "ids"}`
//! as one JSON line, and serves until its standard input closes.

use std::io::Read;

use dealmachine_sim::{ExportSpec, SimOptions, Simulator, Status};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: usize = std::env::args().nth(1).unwrap_or_else(|| "10".into()).parse()?;
    let sim = Simulator::start(SimOptions::default(), "127.0.0.1:0".parse()?).await?;
    let ids: Vec<String> =
        (0..count).map(|_| sim.add_export(ExportSpec::scripted(&[Status::Processing], vec![]))).collect();
    println!("{}", serde_json::json!({"api_url": sim.api_url(), "api_key": sim.api_key(), "ids": ids}));
    tokio::task::spawn_blocking(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    })
    .await?;
    Ok(())
}
