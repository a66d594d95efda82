//! `make bench` contender 1: one file copied by export-relay's own transfer path, the library
//! code the Lambda runs (`Transfer::copy`: streaming multipart upload with the size, SHA-256,
//! CRC64NVME, gzip and CSV row checks), from an HTTP URL into an S3-compatible server.
//!
//! `bench_copy URL SIZE BUCKET KEY [PART_SIZE_MIB] [PARTS_IN_FLIGHT]`, with the AWS settings
//! (`AWS_ENDPOINT_URL`, credentials, region) from the environment. Prints one JSON line.

use std::collections::HashMap;
use std::time::Instant;

use export_relay::startup;
use export_relay::transfer::{Deadline, Destination, Transfer, UrlPolicy};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        return Err("usage: bench_copy URL SIZE BUCKET KEY [PART_SIZE_MIB] [PARTS_IN_FLIGHT]".into());
    }
    let (url, size, bucket, key) = (&args[1], args[2].parse::<u64>()?, &args[3], &args[4]);
    let part_mib = args.get(5).map_or(Ok(8), |a| a.parse::<usize>())?;
    let in_flight = args.get(6).map_or(Ok(4), |a| a.parse::<usize>())?;
    let started = Instant::now();
    let aws = startup::aws_config().await;
    // As `startup::build_relay` builds it, with path-style addressing for a local server.
    let s3 =
        aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&aws).force_path_style(true).build());
    let policy = UrlPolicy { hosts: vec!["127.0.0.1".into()], allow_insecure_http: true };
    let transfer = Transfer::new(s3, bucket.clone(), policy, part_mib << 20, in_flight)?;
    let filename = key.rsplit('/').next().unwrap_or(key).to_string();
    let destination = Destination {
        key: key.clone(),
        filename,
        content_type: "application/gzip",
        metadata: HashMap::from([("source-size".to_string(), size.to_string())]),
    };
    let copied = transfer.copy(url, size, &destination, Deadline::NONE).await?;
    println!(
        "{}",
        serde_json::json!({
            "size": copied.size,
            "parts": copied.parts,
            "rows": copied.inspection.rows,
            "copy_seconds": copied.elapsed.as_secs_f64(),
            "process_seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}
