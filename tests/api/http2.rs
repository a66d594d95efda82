//! Downloads from a host that speaks HTTP/2, as Google Cloud Storage does: a batch of copies
//! waiting for part slots must not starve the ones that hold them.

use std::time::Duration;

use dealmachine_sim::{CsvGz, FileSpec, SimOptions};
use export_relay::startup;
use export_relay::transfer::Deadline;
use http::Version;

use crate::helpers::{Setup, sha256, spawn_app_with, sqs_event};

#[tokio::test]
async fn a_batch_of_ten_big_files_from_an_http2_host_copies_without_a_stall() {
    let app = spawn_app_with(Setup {
        env: vec![("DOWNLOAD_IDLE_TIMEOUT_SECONDS", "20".into()), ("PARTS_IN_FLIGHT", "4".into())],
        sim: SimOptions { files_over_tls: true, ..SimOptions::default() },
    })
    .await;
    let ca = reqwest::Certificate::from_pem(app.sim.ca_pem().unwrap().as_bytes()).unwrap();
    let mut config = app.config.clone();
    config.download_roots = vec![ca.clone()];
    let relay = startup::build_relay(&config, &startup::aws_config().await).unwrap();
    // Ten files of about 12 MiB: each far more than hyper's 2 MiB stream and 5 MiB connection
    // windows, and more copies than the 4 part slots.
    let big = |seed| FileSpec {
        content: CsvGz { seed, rows: 120_000, level: 0 },
        ..FileSpec::csv("big.csv.gz", seed, 0)
    };
    let ids: Vec<String> = (0..10).map(|seed| app.completed(vec![big(seed)])).collect();
    let bodies: Vec<&str> = ids.iter().map(String::as_str).collect();

    // The host does offer HTTP/2 to a client that wants it.
    let probe = reqwest::Client::builder().tls_certs_merge([ca]).build().unwrap();
    let offered = probe.get(app.sim.download_urls(&ids[0]).remove(0)).send().await.unwrap().version();
    assert_eq!(offered, Version::HTTP_2);

    let response =
        tokio::time::timeout(Duration::from_secs(120), relay.handle(sqs_event(&bodies), Deadline::NONE))
            .await
            .expect("the batch does not hang")
            .unwrap();

    assert_eq!(response["batchItemFailures"], serde_json::json!([]));
    let downloads: Vec<_> = app.sim.seen_matching("/files/").into_iter().skip(1).collect();
    assert_eq!(downloads.len(), 10, "one GET per file: no stall ever needed a resume");
    assert!(downloads.iter().all(|d| d.header("range").is_none()));
    assert!(
        downloads.iter().all(|d| d.version == Some(Version::HTTP_11)),
        "each download on its own connection"
    );
    for id in &ids {
        let (bytes, _) = app.object(&app.key(id, "big.csv.gz")).await.expect("the file landed");
        assert_eq!(sha256(&bytes), app.sim.files(id)[0].1.sha256);
    }
}
