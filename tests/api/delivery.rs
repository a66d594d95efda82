//! Exactly-once delivery: checks made while streaming, the manifest as commit marker, and
//! redeliveries that copy nothing twice. Each test ends by looking in the bucket.

use std::time::{Duration, Instant};

use dealmachine_sim::{CsvGz, DownloadFault, ExportSpec, FileSpec};
use export_relay::transfer::Deadline;
use serde_json::json;

use axum::http::{Method, StatusCode};

use crate::helpers::{PART, Setup, sha256, spawn_app, spawn_app_with, sqs_event};
use crate::s3_proxy::{FaultyS3, relay_through};

/// A file big enough for a multipart upload, stored uncompressed inside gzip so it builds fast.
fn big(name: &str, seed: u64) -> FileSpec {
    FileSpec { content: CsvGz { seed, rows: 60_000, level: 0 }, ..FileSpec::csv(name, seed, 0) }
}

#[tokio::test]
async fn no_more_parts_are_in_flight_than_the_setting_allows() {
    let app =
        spawn_app_with(Setup { env: vec![("PARTS_IN_FLIGHT", "2".into())], ..Default::default() }).await;
    let file =
        FileSpec { content: CsvGz { seed: 1, rows: 250_000, level: 0 }, ..FileSpec::csv("big.csv.gz", 1, 0) };
    let id = app.completed(vec![file]);
    assert!(app.sim.files(&id)[0].1.size > 4 * PART as u64, "five parts or more");
    // S3 answers each part slowly, so the parts a relay would send at once pile up at the proxy.
    let (proxy, url) = FaultyS3::holding_parts(Duration::from_millis(300)).await;

    let response = relay_through(&app, &url).await.handle(sqs_event(&[&id]), Deadline::NONE).await.unwrap();

    assert_eq!(response["batchItemFailures"], json!([]));
    assert_eq!(proxy.peak_parts_in_flight(), 2, "as many as PARTS_IN_FLIGHT, and never more");
    assert_eq!(
        app.object(&app.key(&id, "big.csv.gz")).await.unwrap().0.len() as u64,
        app.sim.files(&id)[0].1.size
    );
}

#[tokio::test]
async fn the_manifest_is_written_last_and_names_every_checked_file() {
    let app = spawn_app().await;
    let id = app.completed(vec![big("big.csv.gz", 1), FileSpec::csv("small.csv.gz", 2, 250)]);
    let expected = app.sim.files(&id);
    assert!(expected[0].1.size > PART as u64, "one multipart file");

    assert!(app.deliver(&[&id]).await.is_empty());

    let manifest = app.manifest(&id).await.expect("manifest committed");
    assert_eq!(manifest["export"]["export_id"], id.as_str());
    assert_eq!(manifest["export"]["record_count"], 60_250);
    assert_eq!(manifest["verified"], true);
    assert!(manifest.get("verification_error").is_none());
    assert_eq!(manifest["relay_version"], env!("CARGO_PKG_VERSION"));
    chrono::DateTime::parse_from_rfc3339(manifest["relayed_at"].as_str().unwrap()).unwrap();
    let files = manifest["files"].as_array().unwrap();
    for (file, (name, measured)) in files.iter().zip(&expected) {
        assert_eq!(file["filename"], name.as_str());
        assert_eq!(file["key"], app.key(&id, name).as_str());
        assert_eq!(file["size"], measured.size);
        assert_eq!(file["sha256"], measured.sha256.as_str());
        let (bytes, object) = app.object(&app.key(&id, name)).await.unwrap();
        assert_eq!(sha256(&bytes), measured.sha256);
        assert_eq!(object.metadata().unwrap().get("sha256"), None, "the SHA-256 is in the manifest only");
    }
    assert_eq!(files[0]["rows"], 60_000);
    assert_eq!(files[1]["rows"], 250);

    let hook = &app.webhooks()[0].body["data"];
    assert_eq!(hook["verified"], true);
    assert_eq!(hook["files"][0]["sha256"], expected[0].1.sha256.as_str());
    assert_eq!(app.pending_uploads().await, 0);
}

/// One write per file: one PutObject or one multipart upload, and no copy inside S3 afterwards,
/// so each file raises one `ObjectCreated`, keeps one version, and may be larger than 5 GiB.
#[tokio::test]
async fn every_file_is_written_once_and_nothing_is_copied_inside_s3() {
    let app = spawn_app().await;
    let id = app.completed(vec![big("big.csv.gz", 3), FileSpec::csv("small.csv.gz", 4, 250)]);
    let (proxy, url) = FaultyS3::recording().await;

    let response = relay_through(&app, &url).await.handle(sqs_event(&[&id]), Deadline::NONE).await.unwrap();

    assert_eq!(response["batchItemFailures"], json!([]));
    assert_eq!(proxy.copies(), 0, "no CopyObject, no UploadPartCopy");
    assert_eq!(proxy.uploads_started(), 1, "the big file is one multipart upload");
    for name in ["big.csv.gz", "small.csv.gz"] {
        assert_eq!(proxy.writes_to(&app.key(&id, name)), 1, "{name} is written once");
    }
    let manifest = app.manifest(&id).await.expect("manifest committed");
    assert_eq!(manifest["files"][0]["sha256"], app.sim.files(&id)[0].1.sha256.as_str());

    // File bodies are not hashed a second time by the SDK to sign them.
    let bodies: Vec<_> = proxy
        .header_sent("x-amz-content-sha256")
        .into_iter()
        .filter(|(request, _)| request.starts_with("PUT ") && request.contains(".csv.gz?"))
        .collect();
    let parts = proxy.count("PUT", "partNumber=");
    assert!(parts >= 2 && bodies.len() == parts + 1, "the parts and one PutObject: {bodies:?}");
    assert!(bodies.iter().all(|(_, hash)| hash == "UNSIGNED-PAYLOAD"), "{bodies:?}");
}

#[tokio::test]
async fn the_manifest_holds_no_signed_url() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 8, 10)]);
    assert!(app.sim.download_urls(&id)[0].contains("X-Goog-Signature="), "the API's links are signed");

    assert!(app.deliver(&[&id]).await.is_empty());

    let (raw, _) = app.object(&app.key(&id, "manifest.json")).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    assert!(!text.contains("X-Goog-Signature"), "{text}");
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    let url = manifest["export"]["download_urls"][0]["url"].as_str().unwrap();
    assert!(url.ends_with(&format!("/files/{id}/0")), "where the file came from, without a query: {url}");
}

#[tokio::test]
async fn the_crc64nvme_sent_to_s3_is_that_of_the_stored_bytes() {
    // S3 checks the full-object CRC64NVME it is given against what it stores; moto does not,
    // so the proxy reads the header the relay sent, on PutObject and CompleteMultipartUpload.
    use base64::Engine;
    let app = spawn_app().await;
    let id = app.completed(vec![big("big.csv.gz", 3), FileSpec::csv("small.csv.gz", 3, 100)]);
    let (proxy, url) = FaultyS3::recording().await;
    let relay = relay_through(&app, &url).await;

    let response = relay.handle(sqs_event(&[&id]), Deadline::NONE).await.unwrap();
    assert_eq!(response["batchItemFailures"], json!([]));

    let sent = proxy.crc64nvme_sent();
    for (name, how) in [("big.csv.gz", "POST"), ("small.csv.gz", "PUT")] {
        let key = app.key(&id, name);
        let (bytes, _) = app.object(&key).await.unwrap();
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, &bytes);
        let expected = base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes());
        let whole: Vec<&str> = sent
            .iter()
            .filter(|(request, _)| request.contains(&format!("/{key}")) && !request.contains("partNumber="))
            .map(|(request, crc)| {
                assert!(request.starts_with(how), "{name}: {request}");
                crc.as_str()
            })
            .collect();
        assert_eq!(whole, vec![expected.as_str()], "{name}: the full-object checksum, sent once");
        let manifest = app.manifest(&id).await.unwrap();
        let listed = manifest["files"].as_array().unwrap().iter().find(|f| f["key"] == key.as_str()).unwrap();
        assert_eq!(listed["crc64nvme"], expected.as_str());
    }
}

#[tokio::test]
async fn a_checksum_s3_rejects_aborts_the_upload_and_commits_nothing() {
    let app = spawn_app().await;
    let bad_digest = "<Error><Code>BadDigest</Code><Message>The CRC64NVME you specified did not match the calculated checksum.</Message></Error>";
    // A small file's PutObject, and a big file's second POST (its CompleteMultipartUpload).
    for file in [FileSpec::csv("small.csv.gz", 4, 100), big("big.csv.gz", 4)] {
        let name = file.filename.clone();
        let id = app.completed(vec![file]);
        let posts = std::sync::atomic::AtomicUsize::new(0);
        let target = format!("/{name}");
        let small = name.starts_with("small");
        let (proxy, url) = FaultyS3::answering(move |method, path| {
            let refused = path.ends_with(&target)
                && match *method {
                    Method::PUT => small,
                    Method::POST => posts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1,
                    _ => false,
                };
            refused.then_some((StatusCode::BAD_REQUEST, bad_digest))
        })
        .await;
        let relay = relay_through(&app, &url).await;

        let response = relay.handle(sqs_event(&[&id]), Deadline::NONE).await.unwrap();

        assert_eq!(response["batchItemFailures"][0]["itemIdentifier"], "m0", "{name}: retried");
        assert!(proxy.injected.load(std::sync::atomic::Ordering::SeqCst) >= 1, "{name}: refused");
        assert_eq!(proxy.uploads_aborted(), proxy.uploads_started(), "{name}: each upload aborted");
        app.assert_no_files().await;
        assert!(app.webhooks().is_empty(), "{name}: nothing announced");
    }
}

#[tokio::test]
async fn a_body_longer_than_its_size_is_refused_and_nothing_is_committed() {
    let app = spawn_app().await;
    let file = FileSpec { fault: Some(DownloadFault::ExtraBytes(10)), ..big("long.csv.gz", 4) };
    let id = app.completed(vec![file]);

    assert_eq!(app.deliver(&[&id]).await, vec!["m0"]);

    app.assert_nothing_stored().await;
    assert!(app.webhooks().is_empty());
}

#[tokio::test]
async fn a_truncated_download_leaves_no_object_and_no_manifest() {
    // No resumes allowed, so the break ends the copy (resumes have their own tests).
    let app =
        spawn_app_with(Setup { env: vec![("DOWNLOAD_MAX_RESUMES", "0".into())], ..Default::default() }).await;
    let file = FileSpec { fault: Some(DownloadFault::CloseAfter(PART as u64 + 100)), ..big("cut.csv.gz", 5) };
    let id = app.completed(vec![FileSpec::csv("first.csv.gz", 6, 10), file]);

    assert_eq!(app.deliver(&[&id]).await, vec!["m0"]);

    assert!(app.manifest(&id).await.is_none(), "no commit marker");
    assert_eq!(app.file_keys().await, vec![app.key(&id, "first.csv.gz")], "only the file that was complete");
    assert_eq!(app.pending_uploads().await, 0);
}

#[tokio::test]
async fn corrupt_gzip_is_refused_with_export_failed() {
    let app = spawn_app().await;
    let size = CsvGz { seed: 7, rows: 60_000, level: 0 }.measure().size;
    let file = FileSpec { fault: Some(DownloadFault::FlipByteAt(size - 5)), ..big("bad.csv.gz", 7) };
    let id = app.completed(vec![file]);

    let report = app.invoke(json!({"export_id": id})).await;

    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["error"]["code"], "corrupt_file");
    assert!(app.manifest(&id).await.is_none());
    assert!(app.file_keys().await.is_empty());
    assert_eq!(app.pending_uploads().await, 0);
    assert_eq!(app.webhooks()[0].body["data"]["error"]["code"], "corrupt_file");
}

#[tokio::test]
async fn a_record_count_mismatch_is_reported_but_committed_by_default() {
    let app = spawn_app().await;
    let id = app.sim.add_export(ExportSpec {
        record_count: Some(999),
        ..ExportSpec::completed(vec![FileSpec::csv("a.csv.gz", 8, 100)])
    });

    assert!(app.deliver(&[&id]).await.is_empty());

    let manifest = app.manifest(&id).await.expect("lenient mode commits");
    assert_eq!(manifest["verified"], false);
    let reason = manifest["verification_error"].as_str().unwrap();
    assert!(reason.contains("999") && reason.contains("100"), "{reason}");
    let hook = &app.webhooks()[0].body;
    assert_eq!(hook["type"], "export.completed");
    assert_eq!(hook["data"]["verified"], false);
    assert_eq!(hook["data"]["verification_error"], reason);
}

#[tokio::test]
async fn a_record_count_mismatch_fails_the_delivery_in_strict_mode() {
    let app =
        spawn_app_with(Setup { env: vec![("STRICT_RECORD_COUNT", "true".into())], ..Default::default() })
            .await;
    let id = app.sim.add_export(ExportSpec {
        record_count: Some(999),
        ..ExportSpec::completed(vec![FileSpec::csv("a.csv.gz", 8, 100)])
    });

    let report = app.invoke(json!({"export_id": id})).await;

    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["error"]["code"], "record_count_mismatch");
    assert!(app.manifest(&id).await.is_none(), "nothing committed");
    assert_eq!(app.pending_uploads().await, 0);
    assert_eq!(app.webhooks()[0].body["type"], "export.failed");
}

#[tokio::test]
async fn the_same_message_twice_in_a_row_copies_and_notifies_once() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 9, 100), FileSpec::csv("b.csv.gz", 10, 100)]);

    assert!(app.deliver(&[&id]).await.is_empty());
    let keys = app.keys().await;
    assert!(app.deliver(&[&id]).await.is_empty());

    assert_eq!(app.sim.seen_matching("/files/").len(), 2, "each file downloaded once");
    assert_eq!(app.webhooks().len(), 1, "one webhook");
    assert_eq!(app.keys().await, keys, "the bucket did not change");
    assert!(keys.contains(&app.key(&id, ".delivered/export.completed.json")));
}

#[tokio::test]
async fn the_same_message_twice_at_once_ends_with_one_consistent_export() {
    let app = spawn_app().await;
    let id = app.completed(vec![big("big.csv.gz", 11), FileSpec::csv("small.csv.gz", 12, 100)]);
    let expected = app.sim.files(&id);

    // Two invocations at the same time, as a redelivery racing a re-enqueued copy would be;
    // their manifests differ (`relayed_at`, to the nanosecond), so the bucket shows whose won.
    let (proxy, url) = FaultyS3::recording().await;
    let relay = relay_through(&app, &url).await;
    let (first, second) = tokio::join!(
        relay.handle(sqs_event(&[&id]), Deadline::NONE),
        relay.handle(sqs_event(&[&id]), Deadline::NONE)
    );
    assert_eq!(first.unwrap()["batchItemFailures"], json!([]));
    assert_eq!(second.unwrap()["batchItemFailures"], json!([]));

    let manifest = app.manifest(&id).await.unwrap();
    let puts = proxy.manifest_puts();
    let written: Vec<_> = puts.iter().filter(|(status, _)| *status == 200).collect();
    assert_eq!(written.len(), 1, "one manifest write succeeds; any other is refused: {puts:?}");
    assert_eq!(manifest, written[0].1, "the stored manifest is the first committer's");
    let hooks_files: Vec<_> = app.webhooks().iter().map(|h| h.body["data"]["files"].clone()).collect();
    assert!(hooks_files.iter().all(|f| *f == hooks_files[0]));
    for (file, (name, measured)) in manifest["files"].as_array().unwrap().iter().zip(&expected) {
        let (bytes, _) = app.object(&app.key(&id, name)).await.unwrap();
        assert_eq!(sha256(&bytes), measured.sha256);
        assert_eq!(file["sha256"], measured.sha256.as_str());
    }
    assert_eq!(app.pending_uploads().await, 0);
    let hooks = app.webhooks();
    assert!((1..=2).contains(&hooks.len()), "at most the webhooks needed, got {}", hooks.len());
    assert!(hooks.iter().all(|h| h.webhook_id == hooks[0].webhook_id), "all with one webhook-id");
    assert!(hooks.iter().all(|h| h.body["data"]["files"] == hooks[0].body["data"]["files"]));
}

#[tokio::test]
async fn a_webhook_that_failed_is_sent_on_redelivery_without_copying_again() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 13, 100)]);
    app.receiver.answer_next(&[500]);

    assert_eq!(app.deliver(&[&id]).await, vec!["m0"], "the webhook failed, so SQS must retry");
    assert!(app.manifest(&id).await.is_some(), "the files were committed all the same");

    assert!(app.deliver(&[&id]).await.is_empty());

    assert_eq!(app.sim.seen_matching("/files/").len(), 1, "not copied again");
    let hooks = app.webhooks();
    assert_eq!(hooks.iter().map(|h| h.answered).collect::<Vec<_>>(), vec![500, 200]);
    assert_eq!(hooks[0].webhook_id, hooks[1].webhook_id);
}

#[tokio::test]
async fn an_invocation_near_its_deadline_stops_cleanly_and_leaves_the_record_to_sqs() {
    let app = spawn_app().await;
    // Far more than the deadline per part at this pace, so the relay must stop while a part is
    // still being read, not between parts.
    let file =
        FileSpec { fault: Some(DownloadFault::Slow(Duration::from_millis(250))), ..big("slow.csv.gz", 14) };
    let id = app.completed(vec![file]);
    let deadline = Instant::now() + Duration::from_secs(7);

    let failures = app.deliver_by(&[&id], Deadline::at(deadline)).await;

    assert!(Instant::now() < deadline, "answered {:?} after the deadline", Instant::now() - deadline);
    assert_eq!(failures, vec!["m0"]);
    app.assert_nothing_stored().await;
    assert!(app.webhooks().is_empty());
}

#[tokio::test]
async fn an_invocation_with_no_time_left_does_not_start_a_copy() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 15, 10)]);

    let failures = app.deliver_by(&[&id], Deadline::at(Instant::now() + Duration::from_secs(1))).await;

    assert_eq!(failures, vec!["m0"]);
    assert!(app.sim.seen_matching("/files/").is_empty(), "no download started");
    app.assert_nothing_stored().await;
}

#[tokio::test]
async fn only_the_first_of_two_commits_wins() {
    use export_relay::dealmachine::parse_export;
    use export_relay::events::ExportId;
    use export_relay::manifest::Manifest;

    let app = spawn_app().await;
    let ledger = app.ledger();
    let export = parse_export(include_bytes!("../fixtures/get-export-completed.json")).unwrap();
    let first = Manifest::new(&export, vec![]);
    let mut second = Manifest::new(&export, vec![]);
    second.relay_version = "another run".into();

    assert_eq!(ledger.commit(first.clone()).await.unwrap(), first);
    assert_eq!(ledger.commit(second).await.unwrap(), first, "the later run adopts the committed manifest");
    let id = ExportId::parse(&export.export_id).unwrap();
    assert_eq!(ledger.committed(&id).await.unwrap(), Some(first));
}

#[tokio::test]
async fn a_ledger_object_is_read_up_to_8_mib_and_refused_past_it() {
    use export_relay::events::ExportId;
    use export_relay::notify::EventType;

    let app = spawn_app().await;
    let ledger = app.ledger();
    let cap = 8 * 1024 * 1024;
    let (at_cap, past_cap) =
        (ExportId::parse("exp-at-cap").unwrap(), ExportId::parse("exp-past-cap").unwrap());
    ledger.store_event(&at_cap, EventType::Completed, vec![b'x'; cap]).await.unwrap();
    ledger.store_event(&past_cap, EventType::Completed, vec![b'x'; cap + 1]).await.unwrap();

    let read = ledger.stored_event(&at_cap, EventType::Completed).await.unwrap();
    assert_eq!(read.map(|bytes| bytes.len()), Some(cap));
    let refused = ledger.stored_event(&past_cap, EventType::Completed).await.unwrap_err();
    assert!(refused.to_string().contains("larger than 8 MiB"), "{refused}");
}

#[tokio::test]
async fn each_exports_ledger_lies_in_its_own_folder_beside_its_files() {
    let app = spawn_app().await;
    let ids = [
        app.completed(vec![FileSpec::csv("a.csv.gz", 16, 10)]),
        app.completed(vec![FileSpec::csv("b.csv.gz", 17, 10)]),
    ];
    let bodies = ids.clone().map(|id| json!({"export_id": id, "metadata": {"crm": id}}).to_string());

    assert!(app.deliver(&[&bodies[0], &bodies[1]]).await.is_empty());

    let mut expected: Vec<String> = ids
        .iter()
        .zip(["a.csv.gz", "b.csv.gz"])
        .flat_map(|(id, file)| {
            [
                file.to_string(),
                "manifest.json".into(),
                ".chain.json".into(),
                ".receipt.json".into(),
                format!(".files/{file}.json"),
                ".events/export.completed.json".into(),
                ".delivered/export.completed.json".into(),
            ]
            .map(|name| app.key(id, &name))
        })
        .collect();
    expected.sort();
    assert_eq!(app.keys().await, expected);
}
