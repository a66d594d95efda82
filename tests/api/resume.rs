//! Downloads as Google Cloud Storage serves them: checked against the host's own checksum,
//! resumed from the first byte not received when the connection breaks, started again cleanly
//! when they cannot be resumed, and stored as the bytes the host stores. Each test looks at
//! what the file host was asked, what S3 was asked, and what is in the bucket.

use std::time::{Duration, Instant};

use dealmachine_sim::{CsvGz, DownloadFault, FileSpec, HashHeader, Seen};
use export_relay::transfer::Deadline;
use serde_json::{Value, json};

use crate::helpers::{Setup, TestApp, sha256, spawn_app, spawn_app_with, sqs_event};
use crate::s3_proxy::{FaultyS3, relay_through};

const MIB: u64 = 1024 * 1024;

/// About 12 MiB: three parts of the tests' 5 MiB.
fn big(name: &str, seed: u64) -> FileSpec {
    FileSpec { content: CsvGz { seed, rows: 120_000, level: 0 }, ..FileSpec::csv(name, seed, 0) }
}

/// Every GET the file host saw, in order.
fn downloads(app: &TestApp) -> Vec<Seen> {
    app.sim.seen_matching("/files/")
}

fn ranges(gets: &[Seen]) -> Vec<Option<String>> {
    gets.iter().map(|g| g.header("range").map(str::to_string)).collect()
}

/// Where each GET asked to start: 0 for a whole-object GET, N for `Range: bytes=N-`.
fn starts(gets: &[Seen]) -> Vec<u64> {
    gets.iter()
        .map(|g| {
            g.header("range").map_or(0, |r| {
                r.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).unwrap().parse().unwrap()
            })
        })
        .collect()
}

/// Asserts a resume asked for the rest from a byte the first response got to: what a dropped
/// connection loses in flight depends on the machine's load, so the exact offset is not fixed.
/// That it was the first byte not received shows in the object: byte-identical, one upload.
fn assert_resumed_near(start: u64, cut: u64) {
    assert!((1..=cut).contains(&start), "resumed at {start}, cut at {cut}");
}

/// Relays `id` through a recording proxy in front of S3, and returns the proxy and the IDs of
/// the records reported as failed.
async fn relay_recorded(app: &TestApp, id: &str) -> (FaultyS3, Vec<Value>) {
    let (proxy, url) = FaultyS3::recording().await;
    let relay = relay_through(app, &url).await;
    let response = relay.handle(sqs_event(&[id]), Deadline::NONE).await.unwrap();
    (proxy, response["batchItemFailures"].as_array().unwrap().clone())
}

/// Asserts the object at the export's key holds exactly the file's bytes.
async fn assert_landed(app: &TestApp, id: &str, name: &str) {
    let measured = &app.sim.files(id).into_iter().find(|(n, _)| n == name).unwrap().1;
    let (bytes, _) = app.object(&app.key(id, name)).await.expect("the object is in the bucket");
    assert_eq!(bytes.len() as u64, measured.size);
    assert_eq!(sha256(&bytes), measured.sha256, "{name}: byte for byte what the host stores");
}

#[tokio::test]
async fn a_download_dropped_halfway_resumes_once_into_the_same_upload() {
    let app = spawn_app().await;
    let file = big("big.csv.gz", 21);
    let half = file.content.measure().size / 2;
    let id = app.completed(vec![file.with_fault(DownloadFault::CloseAfter(half)).once()]);

    let (s3, failures) = relay_recorded(&app, &id).await;

    assert!(failures.is_empty());
    let gets = downloads(&app);
    assert_eq!(
        ranges(&gets),
        vec![None, Some(format!("bytes={half}-"))],
        "one resume, from the first byte not received"
    );
    assert_eq!(gets[1].status, 206);
    assert_landed(&app, &id, "big.csv.gz").await;
    assert_eq!(s3.uploads_started(), 1, "the resume went into the same multipart upload");
    assert_eq!(s3.uploads_aborted(), 0);
    assert_eq!(app.pending_uploads().await, 0);

    let manifest = app.manifest(&id).await.unwrap();
    let entry = &manifest["files"][0];
    let measured = &app.sim.files(&id)[0].1;
    assert_eq!(entry["sha256"], measured.sha256.as_str());
    assert_eq!(entry["rows"], 120_000, "every row counted once");
    assert_eq!(entry["source"]["crc32c"], json!({"value": measured.crc32c, "verified": true}));
    assert_eq!(
        gets[1].header("x-goog-if-generation-match"),
        entry["source"]["generation"].as_str(),
        "the resume is pinned to the generation first served"
    );
}

#[tokio::test]
async fn a_reset_a_short_body_and_a_stall_each_resume() {
    // Long enough that a loaded machine's pauses are not taken for stalls.
    let app = spawn_app_with(Setup {
        env: vec![("DOWNLOAD_IDLE_TIMEOUT_SECONDS", "3".into())],
        ..Default::default()
    })
    .await;
    let cut = 100_000;
    let files = vec![
        FileSpec::csv("reset.csv.gz", 22, 20_000).with_fault(DownloadFault::CloseAfter(cut)).once(),
        FileSpec::csv("short.csv.gz", 23, 20_000).with_fault(DownloadFault::ShortAfter(cut)).once(),
        FileSpec::csv("stall.csv.gz", 24, 20_000).with_fault(DownloadFault::StallAfter(cut)).once(),
    ];
    let id = app.completed(files);

    let report = app.invoke(json!({"export_id": id})).await;
    assert_eq!(report["outcome"], "completed", "{report}");

    let gets = downloads(&app);
    for (index, name) in ["reset.csv.gz", "short.csv.gz", "stall.csv.gz"].iter().enumerate() {
        let of_file: Vec<Seen> =
            gets.iter().filter(|g| g.path.ends_with(&format!("/{index}"))).cloned().collect();
        assert_eq!(of_file.len(), 2, "{name}: the first GET and one resume");
        assert_resumed_near(starts(&of_file)[1], cut);
        assert_landed(&app, &id, name).await;
    }
}

#[tokio::test]
async fn a_resume_answered_503_or_429_is_tried_again_from_the_same_byte_after_a_growing_pause() {
    let app = spawn_app().await;
    let cut = 100_000;
    let files = vec![
        FileSpec::csv("busy.csv.gz", 28, 20_000).with_faults_in_turn(&[
            DownloadFault::CloseAfter(cut),
            DownloadFault::Status(503),
            DownloadFault::Status(503),
        ]),
        FileSpec::csv("limited.csv.gz", 29, 20_000)
            .with_faults_in_turn(&[DownloadFault::CloseAfter(cut), DownloadFault::Status(429)]),
    ];
    let id = app.completed(files);

    let report = app.invoke(json!({"export_id": id})).await;
    assert_eq!(report["outcome"], "completed", "{report}");

    let gets = downloads(&app);
    for (index, (name, refused)) in [("busy.csv.gz", 2), ("limited.csv.gz", 1)].into_iter().enumerate() {
        let of_file: Vec<Seen> =
            gets.iter().filter(|g| g.path.ends_with(&format!("/{index}"))).cloned().collect();
        let ranges: Vec<Option<&str>> = of_file.iter().map(|g| g.header("range")).collect();
        assert_eq!(ranges.len(), 2 + refused, "{name}: the first GET, the refused resumes, the one served");
        assert!(ranges[0].is_none(), "{name}");
        assert!(
            ranges[1..].iter().all(|r| r.is_some() && *r == ranges[1]),
            "{name}: not from byte 0: {ranges:?}"
        );
        assert_landed(&app, &id, name).await;
    }
    // The pause after the n-th refused resume is n times 200 ms.
    let busy: Vec<&Seen> = gets.iter().filter(|g| g.path.ends_with("/0")).collect();
    let second_pause = busy[3].at - busy[2].at;
    assert!(second_pause >= Duration::from_millis(400), "{second_pause:?}");
}

#[tokio::test]
async fn a_resume_closed_without_an_answer_is_tried_again_after_a_growing_pause() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("unanswered.csv.gz", 31, 20_000).with_faults_in_turn(&[
        DownloadFault::CloseAfter(100_000),
        DownloadFault::NoAnswer,
        DownloadFault::NoAnswer,
    ])]);

    let report = app.invoke(json!({"export_id": id})).await;
    assert_eq!(report["outcome"], "completed", "{report}");

    let gets = downloads(&app);
    assert_eq!(gets.iter().map(|g| g.status).collect::<Vec<_>>(), [200, 0, 0, 206], "0: no answer");
    let ranges = ranges(&gets);
    assert!(ranges[1..].iter().all(|r| r.is_some() && *r == ranges[1]), "not from byte 0: {ranges:?}");
    assert_landed(&app, &id, "unanswered.csv.gz").await;
    // The pause after the n-th unanswered resume is n times 200 ms.
    let second_pause = gets[3].at - gets[2].at;
    assert!(second_pause >= Duration::from_millis(400), "{second_pause:?}");
}

#[tokio::test]
async fn a_first_request_closed_without_an_answer_is_sent_again_after_a_growing_pause() {
    let app = spawn_app().await;
    let id = app.completed(vec![
        FileSpec::csv("unanswered.csv.gz", 32, 20_000)
            .with_faults_in_turn(&[DownloadFault::NoAnswer, DownloadFault::NoAnswer]),
    ]);

    let report = app.invoke(json!({"export_id": id})).await;
    assert_eq!(report["outcome"], "completed", "{report}");

    let gets = downloads(&app);
    assert_eq!(gets.iter().map(|g| g.status).collect::<Vec<_>>(), [0, 0, 200], "0: no answer");
    assert_eq!(ranges(&gets), [None, None, None], "each from byte 0");
    assert_landed(&app, &id, "unanswered.csv.gz").await;
    assert_eq!(app.metric_sum("DownloadRestarts"), 2.0);
    // The pause before the n-th restart is n times 100 ms.
    let second_pause = gets[2].at - gets[1].at;
    assert!(second_pause >= Duration::from_millis(200), "{second_pause:?}");
}

#[tokio::test]
async fn a_first_get_answered_408_429_or_5xx_is_sent_again_and_another_refusal_is_not() {
    let app = spawn_app().await;
    let transient = [408, 429, 500, 503];
    let refused_once = |seed: u64, code: u16| {
        FileSpec::csv(&format!("{code}.csv.gz"), seed, 5_000)
            .with_faults_in_turn(&[DownloadFault::Status(code)])
    };
    let passing =
        app.completed(transient.into_iter().zip(40..).map(|(code, seed)| refused_once(seed, code)).collect());
    let conflict =
        app.completed(vec![FileSpec::csv("409.csv.gz", 45, 5_000).with_fault(DownloadFault::Status(409))]);

    let report = app.invoke(json!({"export_id": passing})).await;
    assert_eq!(report["outcome"], "completed", "{report}");
    for (index, code) in transient.into_iter().enumerate() {
        let gets = app.sim.seen_matching(&format!("/files/{passing}/{index}"));
        assert_eq!(gets.iter().map(|g| g.status).collect::<Vec<_>>(), [code, 200], "sent again after {code}");
        assert_landed(&app, &passing, &format!("{code}.csv.gz")).await;
    }

    let (_, failures) = relay_recorded(&app, &conflict).await;
    assert_eq!(failures, vec![json!({"itemIdentifier": "m0"})], "left to SQS's retry");
    let gets = app.sim.seen_matching(&format!("/files/{conflict}/0"));
    assert_eq!(gets.iter().map(|g| g.status).collect::<Vec<_>>(), [409], "not sent again in the invocation");
}

#[tokio::test]
async fn a_resume_answered_from_another_byte_starts_the_file_again() {
    let app = spawn_app().await;
    let cut = 100_000;
    let id = app.completed(vec![
        FileSpec::csv("shifted.csv.gz", 30, 20_000)
            .with_faults_in_turn(&[DownloadFault::CloseAfter(cut), DownloadFault::ShiftedRange]),
    ]);

    let report = app.invoke(json!({"export_id": id})).await;
    assert_eq!(report["outcome"], "completed", "{report}");

    let ranges: Vec<Option<String>> =
        downloads(&app).iter().map(|g| g.header("range").map(str::to_string)).collect();
    assert_eq!(ranges.len(), 3, "the first GET, the resume, the GET from byte 0: {ranges:?}");
    assert!(ranges[1].is_some() && ranges[2].is_none(), "{ranges:?}");
    assert_landed(&app, &id, "shifted.csv.gz").await;
    let counted = (app.metric_sum("DownloadResumes"), app.metric_sum("DownloadRestarts"));
    assert_eq!(counted, (1.0, 1.0), "counted where the dashboards look");
}

#[tokio::test]
async fn drops_on_every_request_stop_at_the_bound_and_leave_nothing() {
    let app =
        spawn_app_with(Setup { env: vec![("DOWNLOAD_MAX_RESUMES", "2".into())], ..Default::default() }).await;
    let id = app.completed(vec![big("cut.csv.gz", 25).with_fault(DownloadFault::CloseAfter(2 * MIB))]);

    let (s3, failures) = relay_recorded(&app, &id).await;

    assert_eq!(failures, vec![json!({"itemIdentifier": "m0"})], "worth retrying: SQS delivers it again");
    let starts = starts(&downloads(&app));
    assert_eq!(starts.len(), 3, "two resumes, then no more");
    assert_resumed_near(starts[1], 2 * MIB);
    assert_resumed_near(starts[2] - starts[1], 2 * MIB);
    assert_eq!((s3.uploads_started(), s3.uploads_aborted()), (1, 1), "the upload was aborted");
    app.assert_nothing_stored().await;
    assert!(app.webhooks().is_empty(), "no webhook for a copy that did not finish");
}

#[tokio::test]
async fn a_resume_is_not_sent_past_the_deadline() {
    let app = spawn_app_with(Setup {
        env: vec![("DOWNLOAD_IDLE_TIMEOUT_SECONDS", "1".into())],
        ..Default::default()
    })
    .await;
    let id = app.completed(vec![big("stall.csv.gz", 26).with_fault(DownloadFault::StallAfter(1000)).once()]);
    // Lambda's margin is 5 s: this leaves a second, for the ledger's reads and writes and the
    // first GET, which the 1 s stall uses up.
    let deadline = Deadline::at(Instant::now() + Duration::from_millis(6_000));

    assert_eq!(app.deliver_by(&[&id], deadline).await, vec!["m0"]);

    assert_eq!(downloads(&app).len(), 1, "no resume once the time is gone");
    app.assert_nothing_stored().await;
}

#[tokio::test]
async fn a_wrong_x_goog_hash_commits_nothing_and_is_announced_once_it_repeats() {
    let app = spawn_app().await;
    let id = app.completed(vec![big("big.csv.gz", 27).with_fault(DownloadFault::WrongHash)]);

    let (s3, failures) = relay_recorded(&app, &id).await;

    assert!(
        failures.is_empty(),
        "the same mismatch twice is the file, not the transfer: announced, not retried"
    );
    assert_eq!(ranges(&downloads(&app)), vec![None, None], "one clean restart from byte 0");
    assert_eq!((s3.uploads_started(), s3.uploads_aborted()), (2, 2), "neither upload completed");
    app.assert_no_files().await;
    let hooks = app.webhooks();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].body["type"], "export.failed");
    assert_eq!(hooks[0].body["data"]["error"]["code"], "source_checksum_mismatch");
}

#[tokio::test]
async fn a_wrong_x_goog_hash_once_restarts_and_the_right_bytes_land() {
    let app = spawn_app().await;
    let id = app.completed(vec![big("big.csv.gz", 28).with_fault(DownloadFault::WrongHash).once()]);

    let (s3, failures) = relay_recorded(&app, &id).await;

    assert!(failures.is_empty());
    assert_eq!(ranges(&downloads(&app)), vec![None, None]);
    assert_eq!(
        (s3.uploads_started(), s3.uploads_aborted()),
        (2, 1),
        "the first upload aborted, the second completed"
    );
    assert_landed(&app, &id, "big.csv.gz").await;
    assert_eq!(app.pending_uploads().await, 0);
}

#[tokio::test]
async fn an_object_replaced_mid_download_restarts_cleanly_and_the_new_bytes_land() {
    let app = spawn_app().await;
    let file = big("big.csv.gz", 29);
    let first = file.content.measure();
    let id = app.completed(vec![file.with_fault(DownloadFault::ReplacedAfter(first.size / 2))]);

    let (s3, failures) = relay_recorded(&app, &id).await;

    assert!(failures.is_empty());
    let gets = downloads(&app);
    assert_eq!(gets.len(), 3, "the first GET, a resume, and a restart");
    assert_eq!(ranges(&gets)[2], None, "the restart asks for the whole object");
    assert_resumed_near(starts(&gets)[1], first.size / 2);
    assert_eq!(gets[1].status, 412, "the resume was pinned to the old generation");
    assert_eq!((s3.uploads_started(), s3.uploads_aborted()), (2, 1));
    let now = &app.sim.files(&id)[0].1;
    assert_ne!(now.sha256, first.sha256, "the object did change");
    assert_landed(&app, &id, "big.csv.gz").await;
    let manifest = app.manifest(&id).await.unwrap();
    assert_ne!(
        manifest["files"][0]["source"]["generation"].as_str(),
        gets[1].header("x-goog-if-generation-match")
    );
    assert_eq!(app.pending_uploads().await, 0);
}

#[tokio::test]
async fn a_host_that_ignores_range_gets_a_clean_restart() {
    let app = spawn_app().await;
    let file = big("big.csv.gz", 30);
    let half = file.content.measure().size / 2;
    let id = app.completed(vec![FileSpec {
        ignores_range: true,
        ..file.with_fault(DownloadFault::CloseAfter(half)).once()
    }]);

    let (s3, failures) = relay_recorded(&app, &id).await;

    assert!(failures.is_empty());
    let gets = downloads(&app);
    assert_eq!(gets.len(), 3, "the first GET, a resume, and a restart");
    assert_resumed_near(starts(&gets)[1], half);
    assert_eq!(ranges(&gets)[2], None, "the restart asks for the whole object");
    assert_eq!(gets[1].status, 200, "the whole object where a range was asked for");
    assert_eq!((s3.uploads_started(), s3.uploads_aborted()), (2, 1), "the spliced upload was aborted");
    assert_landed(&app, &id, "big.csv.gz").await;
}

#[tokio::test]
async fn an_object_stored_gzip_encoded_lands_as_the_stored_bytes() {
    let app = spawn_app().await;
    let id =
        app.completed(vec![FileSpec { stored_gzip: true, ..FileSpec::csv("encoded.csv.gz", 31, 2_000) }]);

    assert!(app.deliver(&[&id]).await.is_empty());

    assert_eq!(downloads(&app)[0].header("accept-encoding"), Some("gzip"), "the stored bytes were asked for");
    assert_landed(&app, &id, "encoded.csv.gz").await;
    let manifest = app.manifest(&id).await.unwrap();
    assert_eq!(manifest["files"][0]["source"]["crc32c"]["verified"], true);
    assert_eq!(manifest["files"][0]["rows"], 2_000);

    // The stand-in does transcode for a client that does not ask for gzip, as GCS does.
    let url = app.sim.download_urls(&id).remove(0);
    let plain = reqwest::get(url).await.unwrap();
    assert_eq!(plain.content_length(), None);
    assert!(plain.bytes().await.unwrap().starts_with(b"property_id,"), "decompressed on the way");
}

#[tokio::test]
async fn every_layout_of_x_goog_hash_is_read_and_recorded() {
    let app = spawn_app().await;
    let layouts = [
        HashHeader::Combined,
        HashHeader::Separate,
        HashHeader::Crc32cOnly,
        HashHeader::Md5Only,
        HashHeader::Absent,
    ];
    let files = layouts
        .iter()
        .enumerate()
        .map(|(i, layout)| FileSpec {
            hash_header: *layout,
            ..FileSpec::csv(&format!("f{i}.csv.gz"), 40 + i as u64, 100)
        })
        .collect();
    let id = app.completed(files);

    assert!(app.deliver(&[&id]).await.is_empty());

    let manifest = app.manifest(&id).await.unwrap();
    let measured = app.sim.files(&id);
    let source = |i: usize| manifest["files"][i]["source"].clone();
    let crc = |i: usize, verified: bool| json!({"value": measured[i].1.crc32c, "verified": verified});
    let md5 = |i: usize, verified: bool| json!({"value": measured[i].1.md5, "verified": verified});
    assert_eq!((source(0)["crc32c"].clone(), source(0)["md5"].clone()), (crc(0, true), md5(0, false)));
    assert_eq!((source(1)["crc32c"].clone(), source(1)["md5"].clone()), (crc(1, true), md5(1, false)));
    assert_eq!((source(2)["crc32c"].clone(), source(2)["md5"].clone()), (crc(2, true), Value::Null));
    assert_eq!((source(3)["crc32c"].clone(), source(3)["md5"].clone()), (Value::Null, md5(3, true)));
    assert_eq!((source(4)["crc32c"].clone(), source(4)["md5"].clone()), (Value::Null, Value::Null));
    assert_eq!(manifest["verified"], true, "a check that cannot run does not fail the export");
    assert_eq!(app.webhooks()[0].body["data"]["verified"], true);
}
