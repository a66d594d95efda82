//! Properties that must hold for every input, not only the ones we thought of.

use std::time::Duration;

use export_relay::config::{PollPolicy, PollSchedule};
use export_relay::dealmachine::{parse_export, parse_page};
use export_relay::events::ExportRequest;
use export_relay::requeue::poll_delay;
use export_relay::transfer::object_key;
use proptest::prelude::*;

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_sqs_body_parses_to_a_safe_id_or_a_clear_error(body in ".{0,300}") {
        match ExportRequest::from_body(&body) {
            Ok(request) => prop_assert!(valid_id(request.export_id.as_str())),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn json_bodies_keep_their_metadata(id in "[A-Za-z0-9-]{1,64}", key in "[a-z_]{1,10}", value in any::<i64>(), attempt in 1u32..1000) {
        let body = serde_json::json!({"export_id": id, "metadata": {key.clone(): value}, "attempt": attempt}).to_string();
        let request = ExportRequest::from_body(&body).unwrap();
        prop_assert_eq!(request.export_id.as_str(), id.as_str());
        prop_assert_eq!(request.attempt, attempt);
        prop_assert_eq!(&request.metadata.unwrap()[&key], &serde_json::json!(value));
    }

    #[test]
    fn ids_with_anything_else_are_refused(id in "[A-Za-z0-9-]{0,30}[^A-Za-z0-9-][A-Za-z0-9-]{0,30}") {
        let body = serde_json::json!({"export_id": id}).to_string();
        prop_assert!(ExportRequest::from_body(&body).is_err());
    }

    #[test]
    fn any_api_answer_parses_or_fails_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = parse_export(&body);
        let _ = parse_page(&body);
    }

    #[test]
    fn any_json_export_parses_or_fails_without_panicking(
        status in prop_oneof![
            Just("pending".to_string()),
            Just("processing".to_string()),
            Just("completed".to_string()),
            Just("failed".to_string()),
            ".{0,10}",
        ],
        size in any::<i64>(),
        filename in ".{0,40}",
        files in 0usize..5,
    ) {
        let urls: Vec<_> = (0..files).map(|_| serde_json::json!({"filename": filename, "url": "https://h/x", "size": size})).collect();
        let body = serde_json::json!({"data": {"export_id": "e", "status": status, "download_urls": urls}}).to_string();
        if let Ok(export) = parse_export(body.as_bytes()) {
            prop_assert!(size >= 0 || files == 0, "a negative size never parses");
            prop_assert_eq!(export.download_urls.map_or(0, |u| u.len()), files);
        }
    }

    #[test]
    fn no_file_name_escapes_the_export_folder(filename in "\\PC{0,260}", id in "[A-Za-z0-9-]{1,64}") {
        let prefix = "dealmachine/exports/";
        if let Ok(key) = object_key(prefix, &id, &filename) {
            let folder = format!("{prefix}{id}/");
            prop_assert!(key.starts_with(&folder));
            let name = &key[folder.len()..];
            prop_assert!(!name.is_empty() && !name.contains('/') && !name.contains('\\'));
            prop_assert!(!name.starts_with('.') && name != "manifest.json", "not one of the ledger's objects");
            prop_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')));
            prop_assert!(key.len() <= 1024, "S3's key limit");
        }
    }

    #[test]
    fn poll_delays_stay_within_what_sqs_accepts(
        initial in 0u64..=900,
        max in 1u64..=900,
        attempt in any::<u32>(),
        throttled in proptest::option::of(0u64..100_000),
    ) {
        let policy = PollPolicy {
            initial_delay: Duration::from_secs(initial.min(max)),
            max_delay: Duration::from_secs(max),
            timeout: Duration::from_secs(86_400),
            schedule: PollSchedule::Doubling,
        };
        let delay = poll_delay(&policy, attempt, throttled.map(Duration::from_secs));
        prop_assert!(delay <= Duration::from_secs(900));
        prop_assert!(delay <= policy.max_delay.max(throttled.map_or(Duration::ZERO, Duration::from_secs).min(Duration::from_secs(900))));
        if let Some(t) = throttled {
            prop_assert!(delay >= Duration::from_secs(t.min(900)));
        }
    }
}

/// The plain byte-by-byte reading of RFC 4180 records, to check the fast counter against.
fn reference_rows(csv: &[u8]) -> u64 {
    let (mut records, mut in_quotes, mut open) = (0u64, false, false);
    for &byte in csv {
        match byte {
            b'"' => {
                in_quotes = !in_quotes;
                open = true;
            }
            b'\n' if !in_quotes => {
                records += 1;
                open = false;
            }
            b'\r' if !in_quotes => {}
            _ => open = true,
        }
    }
    (records + u64::from(open)).saturating_sub(1)
}

proptest! {
    #[test]
    fn csv_rows_are_counted_the_same_however_the_bytes_are_split(
        csv in proptest::collection::vec(prop_oneof![Just(b'"'), Just(b'\n'), Just(b'\r'), Just(b','), Just(b'a')], 0..400),
        cuts in proptest::collection::vec(1usize..50, 1..20),
    ) {
        let mut inspector = export_relay::integrity::Inspector::for_file("x.csv", Default::default());
        let mut rest = &csv[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((*cut).min(rest.len()));
            inspector.update(piece).unwrap();
            rest = tail;
        }
        prop_assert_eq!(inspector.finish().unwrap().rows, Some(reference_rows(&csv)));
    }
}
