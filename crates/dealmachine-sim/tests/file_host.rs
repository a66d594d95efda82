//! The file host answers as Google Cloud Storage does, so the relay's tests against it mean
//! something: checksum headers, ranges, preconditions on the generation, and transcoding.

use dealmachine_sim::content::Measured;
use dealmachine_sim::{DownloadFault, ExportSpec, FileSpec, SimOptions, Simulator};
use reqwest::StatusCode;

/// A simulator's file host with one object, its signed URL, and what the object holds.
async fn host_with(file: FileSpec) -> (Simulator, String, Measured) {
    let sim = Simulator::start(SimOptions::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let id = sim.add_export(ExportSpec::completed(vec![file]));
    let url = sim.download_urls(&id).remove(0);
    let measured = sim.files(&id).remove(0).1;
    (sim, url, measured)
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response.headers().get(name).map(|v| v.to_str().unwrap()).unwrap_or_default()
}

#[tokio::test]
async fn a_whole_object_comes_with_its_checksums_generation_and_length() {
    let (_sim, url, expected) = host_with(FileSpec::csv("a.csv.gz", 1, 500)).await;
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let hash = header(&response, "x-goog-hash").to_string();
    let length = header(&response, "content-length").to_string();
    assert_eq!(header(&response, "x-goog-stored-content-length"), length);
    assert_eq!(header(&response, "x-goog-stored-content-encoding"), "identity");
    assert!(!header(&response, "x-goog-generation").is_empty());
    let body = response.bytes().await.unwrap();
    assert_eq!(hash, format!("crc32c={},md5={}", expected.crc32c, expected.md5));
    assert_eq!(body.len().to_string(), length);
}

#[tokio::test]
async fn a_range_is_answered_206_and_pinned_reads_of_another_generation_412() {
    let (_sim, url, _) = host_with(FileSpec::csv("a.csv.gz", 2, 500)).await;
    let http = reqwest::Client::new();
    let whole = http.get(&url).send().await.unwrap();
    let generation = header(&whole, "x-goog-generation").to_string();
    let etag = header(&whole, "etag").to_string();
    let all = whole.bytes().await.unwrap();

    let rest = http.get(&url).header("range", "bytes=100-").header("x-goog-if-generation-match", &generation);
    let rest = rest.send().await.unwrap();
    assert_eq!(rest.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&rest, "content-range"), format!("bytes 100-{}/{}", all.len() - 1, all.len()));
    assert_eq!(rest.bytes().await.unwrap(), all.slice(100..));

    let other = http.get(&url).header("range", "bytes=100-").header("x-goog-if-generation-match", "1");
    assert_eq!(other.send().await.unwrap().status(), StatusCode::PRECONDITION_FAILED);
    let stale = http.get(&url).header("range", "bytes=100-").header("if-match", "\"0000\"");
    assert_eq!(stale.send().await.unwrap().status(), StatusCode::PRECONDITION_FAILED);
    let current = http.get(&url).header("range", "bytes=100-").header("if-match", &etag);
    assert_eq!(current.send().await.unwrap().status(), StatusCode::PARTIAL_CONTENT);
    let past = http.get(&url).header("range", format!("bytes={}-", all.len()));
    assert_eq!(past.send().await.unwrap().status(), StatusCode::RANGE_NOT_SATISFIABLE);
}

#[tokio::test]
async fn an_object_stored_gzip_encoded_is_transcoded_unless_gzip_is_accepted() {
    let (_sim, url, stored) =
        host_with(FileSpec { stored_gzip: true, ..FileSpec::csv("a.csv.gz", 3, 500) }).await;
    let http = reqwest::Client::new();

    let as_stored = http.get(&url).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(header(&as_stored, "content-encoding"), "gzip");
    assert_eq!(as_stored.bytes().await.unwrap().len() as u64, stored.size);

    let transcoded = http.get(&url).header("range", "bytes=10-").send().await.unwrap();
    assert_eq!(transcoded.status(), StatusCode::OK, "the range is ignored when transcoding");
    assert_eq!(header(&transcoded, "content-length"), "");
    assert_eq!(header(&transcoded, "x-goog-stored-content-encoding"), "gzip");
    let csv = transcoded.bytes().await.unwrap();
    assert!(csv.starts_with(b"property_id,"));
    assert_ne!(csv.len() as u64, stored.size);
}

#[tokio::test]
async fn a_request_given_no_answer_sees_its_connection_close_and_the_next_is_served() {
    let spec = FileSpec::csv("a.csv.gz", 4, 500).with_faults_in_turn(&[DownloadFault::NoAnswer]);
    let (sim, url, _) = host_with(spec).await;
    let http = reqwest::Client::new();
    let first = http.get(&url).send().await.expect_err("no status line");
    assert!(!first.is_timeout() && first.status().is_none(), "{first:?}");
    assert_eq!(http.get(&url).send().await.unwrap().status(), StatusCode::OK);
    let statuses: Vec<u16> = sim.seen_matching("/files/").iter().map(|s| s.status).collect();
    assert_eq!(statuses, [0, 200], "recorded, the first as given no answer");
}
