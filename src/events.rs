//! What the function is asked to do: the three kinds of event it accepts, and the one request
//! each of them boils down to, "relay this export".

use std::fmt;

use aws_lambda_events::sqs::SqsEvent;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::notify::EventType;

/// SQS's classic limit; an export request is a few hundred bytes.
const MAX_BODY_BYTES: usize = 256 * 1024;
/// Longest export ID accepted; anything longer is not an ID.
const MAX_EXPORT_ID_LEN: usize = 64;

/// Input that can never become a valid request; retrying it would not help.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message body of {0} bytes is over the 256 KiB an export request may take")]
    TooLarge(usize),
    #[error("invalid export ID {0:?}: expected 1 to 64 letters, digits or '-'")]
    InvalidExportId(String),
    #[error(
        "unrecognised event: expected an SQS batch, a schedule with export_ids, {{\"export_id\": ...}}, or {{\"export_id\": ..., \"replay\": true}}"
    )]
    Unrecognised,
}

/// An export ID that is safe to put into a URL path and an S3 key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ExportId(String);

impl ExportId {
    pub fn parse(raw: &str) -> Result<Self, EventError> {
        let ok = (1..=MAX_EXPORT_ID_LEN).contains(&raw.len())
            && raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if ok { Ok(Self(raw.to_string())) } else { Err(EventError::InvalidExportId(shorten(raw))) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ExportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ExportId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// "Relay this export": what an SQS record, a schedule entry or a direct invoke asks for.
///
/// It is also the body of the message that re-enqueues a running export, so `attempt`,
/// `first_seen_at` and `last_seen` travel with it from poll to poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportRequest {
    pub export_id: ExportId,
    /// Upstream's correlation data, passed to the webhook untouched.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Which poll this is, counting from 1.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// When the relay first saw this export; polling stops `POLL_TIMEOUT_SECONDS` after it.
    #[serde(default)]
    pub first_seen_at: Option<DateTime<Utc>>,
    /// The SQS message this request came in, if it did: a retry of the same message may take
    /// over the poll it claimed. Never part of the body.
    #[serde(skip)]
    pub message_id: Option<String>,
    /// The progress the previous poll saw, so this one can estimate when the export finishes.
    /// Absent in bodies written before it existed, and when the API showed no progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<LastSeen>,
}

/// What one poll saw of a running export's `progress`, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSeen {
    /// The API's `progress`, 0 to 100.
    pub progress: u32,
    pub at: DateTime<Utc>,
    /// The poll before saw the same progress: the next change ends a stall, and the pace over
    /// it mixes the stall with the new speed, so it is no pace to extrapolate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stalled: bool,
}

fn first_attempt() -> u32 {
    1
}

impl ExportRequest {
    pub fn new(export_id: ExportId) -> Self {
        Self { export_id, metadata: None, attempt: 1, first_seen_at: None, last_seen: None, message_id: None }
    }

    /// Parses an SQS body: a bare export ID, or `{"export_id": ..., "metadata": {...}}`.
    pub fn from_body(body: &str) -> Result<Self, EventError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(EventError::TooLarge(body.len()));
        }
        let body = body.trim();
        if body.starts_with('{') {
            serde_json::from_str(body).map_err(|e| match e.classify() {
                serde_json::error::Category::Data => data_error(e),
                _ => EventError::Malformed(format!("not valid JSON ({e})")),
            })
        } else {
            ExportId::parse(body).map(Self::new)
        }
    }

    /// Who claims this request's next poll in the ledger: its SQS message, or a direct invoke.
    pub fn claimant(&self) -> &str {
        self.message_id.as_deref().unwrap_or("invoke")
    }

    /// The request for the next poll of a still-running export, carrying what this one saw.
    pub fn next_poll(&self, now: DateTime<Utc>, last_seen: Option<LastSeen>) -> Self {
        Self {
            attempt: self.attempt.saturating_add(1),
            first_seen_at: Some(self.first_seen_at.unwrap_or(now)),
            last_seen,
            message_id: None,
            ..self.clone()
        }
    }
}

/// serde reports our `ExportId` refusal as a custom data error; keep its wording.
fn data_error(e: serde_json::Error) -> EventError {
    let text = e.to_string();
    if text.starts_with("invalid export ID") {
        EventError::InvalidExportId(text)
    } else {
        EventError::Malformed(text)
    }
}

/// The three ways the function is invoked.
#[derive(Debug)]
pub enum Invocation {
    /// The main path: a batch of records from the relay's queue.
    Sqs(SqsEvent),
    /// An EventBridge rule or Scheduler input naming exports to check once.
    Schedule(Vec<String>),
    /// A schedule without `export_ids`, or with `"sweep": true`: find completed exports that
    /// nobody enqueued.
    Sweep(SweepRequest),
    /// An operator or script asking for one export, and for the outcome in the response.
    Direct(ExportRequest),
    /// An operator asking for an export's delivered webhook again.
    Replay(ReplayRequest),
}

impl Invocation {
    pub fn classify(event: Value) -> Result<Self, EventError> {
        let Value::Object(mut fields) = event else {
            return Err(EventError::Unrecognised);
        };
        if fields.contains_key("Records") {
            return serde_json::from_value(Value::Object(fields))
                .map(Invocation::Sqs)
                .map_err(|e| EventError::Malformed(format!("not an SQS event ({e})")));
        }
        if fields.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event") {
            return schedule(fields.remove("detail").unwrap_or_else(|| Value::Object(Map::new())));
        }
        if fields.contains_key("export_ids") || fields.contains_key("sweep") || fields.is_empty() {
            return schedule(Value::Object(fields));
        }
        if fields.get("replay") == Some(&Value::Bool(true)) {
            return serde_json::from_value(Value::Object(fields)).map(Invocation::Replay).map_err(data_error);
        }
        if fields.contains_key("export_id") {
            return serde_json::from_value(Value::Object(fields)).map(Invocation::Direct).map_err(data_error);
        }
        Err(EventError::Unrecognised)
    }
}

/// `{"export_id": "...", "replay": true}`: send the export's webhook again, as it was delivered.
/// `"type": "export.completed"` picks one event when the export had several; without it, the
/// last one delivered is sent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReplayRequest {
    pub export_id: ExportId,
    #[serde(default, rename = "type")]
    pub kind: Option<EventType>,
}

/// What a sweep looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct SweepRequest {
    /// How far back to look for running and failed exports, by their `created_at`. Completed
    /// ones are looked at while their links live (`expires_at`), however old.
    #[serde(default = "default_lookback_hours")]
    pub lookback_hours: u32,
    /// Stop after enqueuing this many exports; the next sweep carries on from there.
    #[serde(default)]
    pub max_exports: Option<u32>,
}

fn default_lookback_hours() -> u32 {
    48
}

/// A schedule's input: `{"export_ids": [...]}` checks those; anything else without IDs sweeps.
fn schedule(input: Value) -> Result<Invocation, EventError> {
    #[derive(Deserialize)]
    struct ScheduleInput {
        #[serde(default)]
        export_ids: Option<Vec<String>>,
        #[serde(default)]
        sweep: bool,
        #[serde(flatten)]
        sweep_options: SweepRequest,
    }
    let input: ScheduleInput = serde_json::from_value(input).map_err(|e| {
        EventError::Malformed(format!(
            "schedule input is {{\"export_ids\": [..]}} or {{\"sweep\": true, \"lookback_hours\": 48, \"max_exports\": N}} ({e})"
        ))
    })?;
    match input.export_ids {
        Some(ids) if !input.sweep => Ok(Invocation::Schedule(ids)),
        _ => Ok(Invocation::Sweep(input.sweep_options)),
    }
}

/// Keeps log lines readable when someone sends a megabyte where an ID should be.
fn shorten(raw: &str) -> String {
    const KEEP: usize = 80;
    match raw.char_indices().nth(KEEP) {
        Some((cut, _)) => format!("{}...", &raw[..cut]),
        None => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "a1b2c3d4-e5f6-7890-abcd-ef1234567890";

    #[test]
    fn a_bare_id_is_a_request_at_its_first_attempt() {
        let request = ExportRequest::from_body(&format!(" {ID}\n")).unwrap();
        assert_eq!(request.export_id.as_str(), ID);
        assert_eq!(request.attempt, 1);
        assert_eq!(request.metadata, None);
        assert_eq!(request.first_seen_at, None);
        assert_eq!(request.last_seen, None);
    }

    #[test]
    fn json_bodies_carry_metadata_and_poll_state() {
        let body = json!({"export_id": ID, "metadata": {"crm": "hubspot", "n": 3}, "attempt": 4,
                          "first_seen_at": "2026-02-17T15:30:00Z"})
        .to_string();
        let request = ExportRequest::from_body(&body).unwrap();
        assert_eq!(request.metadata.unwrap()["crm"], "hubspot");
        assert_eq!(request.attempt, 4);
        assert_eq!(request.first_seen_at.unwrap().to_rfc3339(), "2026-02-17T15:30:00+00:00");
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        let cases = [
            ("{not json", "malformed"),
            ("{\"metadata\": {}}", "malformed"),
            ("{\"export_id\": 7}", "malformed"),
            ("{\"export_id\": \"x\", \"metadata\": [1]}", "malformed"),
            ("{\"export_id\": \"../../etc\"}", "invalid export ID"),
            ("../../etc/passwd", "invalid export ID"),
            ("", "invalid export ID"),
            ("a b", "invalid export ID"),
        ];
        for (body, expected) in cases {
            let err = ExportRequest::from_body(body).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{body:?} gave {err}");
        }
    }

    #[test]
    fn ids_are_limited_to_64_safe_characters() {
        assert!(ExportId::parse(&"a".repeat(64)).is_ok());
        assert!(ExportId::parse(&"a".repeat(65)).is_err());
        assert!(ExportId::parse("abc%2F..").is_err());
        let long = ExportId::parse(&"é".repeat(500)).unwrap_err().to_string();
        assert!(long.len() < 400, "errors stay short: {long}");
    }

    #[test]
    fn next_poll_counts_attempts_keeps_the_first_sighting_and_carries_the_last() {
        let now = Utc::now();
        let first = ExportRequest::new(ExportId::parse(ID).unwrap());
        let seen = LastSeen { progress: 40, at: now, stalled: false };
        let second = first.next_poll(now, Some(seen));
        assert_eq!((second.attempt, second.first_seen_at, second.last_seen), (2, Some(now), Some(seen)));
        let third = second.next_poll(now + chrono::Duration::minutes(5), None);
        assert_eq!((third.attempt, third.first_seen_at, third.last_seen), (3, Some(now), None));
    }

    #[test]
    fn bodies_written_before_last_seen_existed_still_parse() {
        let old = json!({"export_id": ID, "metadata": null, "attempt": 3,
                         "first_seen_at": "2026-02-17T15:30:00Z"})
        .to_string();
        let request = ExportRequest::from_body(&old).unwrap();
        assert_eq!((request.attempt, request.last_seen), (3, None));
    }

    #[test]
    fn last_seen_round_trips_and_stays_out_of_bodies_without_it() {
        let at = "2026-02-17T15:31:00Z".parse().unwrap();
        let mut request = ExportRequest::new(ExportId::parse(ID).unwrap());
        assert!(!serde_json::to_string(&request).unwrap().contains("last_seen"));
        request.last_seen = Some(LastSeen { progress: 37, at, stalled: false });
        let body = serde_json::to_value(&request).unwrap();
        assert_eq!(body["last_seen"], json!({"progress": 37, "at": "2026-02-17T15:31:00Z"}));
        assert_eq!(ExportRequest::from_body(&body.to_string()).unwrap(), request);
        let stalled = json!({"export_id": ID, "last_seen": {"progress": 5, "at": at, "stalled": true}});
        assert!(ExportRequest::from_body(&stalled.to_string()).unwrap().last_seen.unwrap().stalled);
    }

    #[test]
    fn events_are_classified_by_shape() {
        let sqs = json!({"Records": [{"messageId": "m1", "body": ID, "eventSource": "aws:sqs"}]});
        assert!(matches!(Invocation::classify(sqs).unwrap(), Invocation::Sqs(e) if e.records.len() == 1));

        let rule =
            json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {"export_ids": [ID]}});
        assert!(matches!(Invocation::classify(rule).unwrap(), Invocation::Schedule(ids) if ids == [ID]));

        let scheduler = json!({"export_ids": [ID, "bad id"]});
        assert!(
            matches!(Invocation::classify(scheduler).unwrap(), Invocation::Schedule(ids) if ids.len() == 2)
        );

        let direct = json!({"export_id": ID, "metadata": {"k": "v"}});
        assert!(
            matches!(Invocation::classify(direct).unwrap(), Invocation::Direct(r) if r.metadata.is_some())
        );

        let replay = json!({"export_id": ID, "replay": true});
        assert!(
            matches!(Invocation::classify(replay).unwrap(), Invocation::Replay(r) if r.kind.is_none() && r.export_id.as_str() == ID)
        );
        let one_type = json!({"export_id": ID, "replay": true, "type": "export.failed"});
        assert!(
            matches!(Invocation::classify(one_type).unwrap(), Invocation::Replay(r) if r.kind == Some(EventType::Failed))
        );
        let not_a_type = json!({"export_id": ID, "replay": true, "type": "export.done"});
        assert!(matches!(Invocation::classify(not_a_type).unwrap_err(), EventError::Malformed(_)));
        assert!(matches!(
            Invocation::classify(json!({"export_id": ID, "replay": false})).unwrap(),
            Invocation::Direct(_)
        ));

        let sweeps = [
            json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}),
            json!({"sweep": true, "lookback_hours": 6, "max_exports": 50}),
            json!({}),
        ];
        let expected = [(48, None), (6, Some(50)), (48, None)];
        for (event, (hours, max)) in sweeps.into_iter().zip(expected) {
            let Invocation::Sweep(sweep) = Invocation::classify(event).unwrap() else { panic!("a sweep") };
            assert_eq!((sweep.lookback_hours, sweep.max_exports), (hours, max));
        }
        assert!(Invocation::classify(json!({"sweep": true, "lookback_hours": -1})).is_err());

        assert_eq!(Invocation::classify(json!({"hello": 1})).unwrap_err(), EventError::Unrecognised);
        assert_eq!(Invocation::classify(json!([1, 2])).unwrap_err(), EventError::Unrecognised);
    }

    #[test]
    fn the_sample_events_in_the_repository_are_understood() {
        let sample = |text: &str| Invocation::classify(serde_json::from_str(text).unwrap()).unwrap();
        let Invocation::Sqs(batch) = sample(include_str!("../events/sqs.json")) else {
            panic!("sqs.json is not an SQS event");
        };
        for record in batch.records {
            ExportRequest::from_body(record.body.as_deref().unwrap()).unwrap();
        }
        assert!(
            matches!(sample(include_str!("../events/schedule.json")), Invocation::Schedule(ids) if ids.len() == 2)
        );
        assert!(matches!(sample(include_str!("../events/direct.json")), Invocation::Direct(_)));
    }
}
