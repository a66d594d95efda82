//! The relay itself: what happens to one export, from the API's answer to the webhook, and how
//! the three kinds of invocation feed it.

use std::collections::HashSet;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::Utc;
use futures::{StreamExt, stream};
use serde::Serialize;
use serde_json::{Value, json};
use tracing::{Instrument, info, info_span, warn};

use crate::announce::Ending;
use crate::config::PollPolicy;
use crate::deadletter::DeadLetters;
use crate::dealmachine::{ApiError, DealMachineClient, DownloadFile, Export, ExportStatus, Fetched};
use crate::events::{EventError, ExportId, ExportRequest, Invocation};
use crate::manifest::{Chain, ChainState, Ledger, LedgerError, Manifest, ManifestFile, Versioned};
use crate::metrics::Metrics;
use crate::notify::{ErrorInfo, EventType, FileRef, Notifier, NotifyError};
use crate::replay::ReplayError;
use crate::requeue::{self, EnqueueError, Fallback, Requeuer};
use crate::retry::Retries;
use crate::transfer::{self, Copied, Deadline, Destination, Transfer, TransferError};

/// Exports a schedule checks at once; each may copy files, so keep it modest.
const SCHEDULE_CONCURRENCY: usize = 4;
/// Time kept back at the end of an invocation for answering Lambda with the batch's failures
/// (and setting their retry steps): no record may run into it.
const ANSWER_RESERVE: std::time::Duration = std::time::Duration::from_secs(2);

/// How one export ended, for this invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    Requeued,
    Failed,
    Expired,
    TimedOut,
    /// Nothing done: another message of the export's poll chain owns the next poll.
    Duplicate,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Requeued => "requeued",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::TimedOut => "timed_out",
            Self::Duplicate => "duplicate",
        }
    }
}

/// The result of relaying one export; also the response to a direct invoke.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub export_id: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileRef>>,
    /// For `requeued`: the next poll's number and delay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Event(#[from] EventError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error(transparent)]
    Notify(#[from] NotifyError),
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("two files of the export map to the same key {0}; the API's file names must be unique")]
    DuplicateKey(String),
    #[error("{0}; not committed because STRICT_RECORD_COUNT is on")]
    Unverified(String),
    #[error(
        "gave up after {receives} deliveries of the record; the last failed with {last_code}: {last_message}"
    )]
    RetriesExhausted { receives: u32, last_code: &'static str, last_message: String },
}

impl RelayError {
    /// True when the record can never succeed, so retrying it only wastes the queue's time.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Event(_) => true,
            Self::Api(e) => e.is_permanent(),
            Self::Notify(e) => e.is_permanent(),
            _ => false,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Event(EventError::InvalidExportId(_)) => "invalid_export_id",
            Self::Event(EventError::TooLarge(_)) => "message_too_large",
            Self::Event(_) => "malformed_message",
            Self::Api(e) => e.code(),
            Self::Transfer(e) => e.code(),
            Self::Notify(e) => e.code(),
            Self::Enqueue(_) => "enqueue_failed",
            Self::Ledger(_) => "manifest_store_failed",
            Self::Replay(e) => e.code(),
            Self::DuplicateKey(_) => "duplicate_file_name",
            Self::Unverified(_) => "record_count_mismatch",
            Self::RetriesExhausted { .. } => "retries_exhausted",
        }
    }

    pub(crate) fn info(&self) -> ErrorInfo {
        ErrorInfo { code: self.code().into(), message: self.to_string() }
    }
}

pub struct Relay {
    pub(crate) api: DealMachineClient,
    pub(crate) transfer: Transfer,
    pub(crate) ledger: Ledger,
    pub(crate) notifier: Option<Notifier>,
    pub(crate) requeuer: Requeuer,
    /// Hides failed records for the next step of the retry schedule.
    pub(crate) retries: Retries,
    pub(crate) dead_letters: Option<DeadLetters>,
    pub(crate) prefix: String,
    pub(crate) poll: PollPolicy,
    pub(crate) strict_record_count: bool,
    pub(crate) presign_ttl: Option<std::time::Duration>,
    pub(crate) metrics: Metrics,
    /// A sweep stops when fewer API requests than this remain this minute.
    pub(crate) sweep_reserve: u64,
}

/// What a look at the export's state found.
enum Lookup {
    Seen(Box<Fetched>),
    /// Rate limited for longer than an invocation waits: poll again after this.
    Throttled(Option<std::time::Duration>),
}

impl Relay {
    /// The Lambda entry point: an SQS batch, a schedule, a sweep or a direct invoke in, the
    /// matching response out.
    pub async fn handle(&self, event: Value, deadline: Deadline) -> Result<Value, RelayError> {
        match Invocation::classify(event)? {
            Invocation::Sqs(batch) => Ok(to_json(self.handle_batch(batch, deadline).await)),
            Invocation::Schedule(ids) => Ok(to_json(self.handle_schedule(ids, deadline).await?)),
            Invocation::Sweep(request) => Ok(to_json(self.sweep(request).await?)),
            Invocation::Direct(request) => {
                let span = info_span!("export", export_id = %request.export_id, attempt = request.attempt);
                Ok(to_json(self.handle_direct(request, deadline).instrument(span).await?))
            }
            Invocation::Replay(request) => {
                let span = info_span!("export", export_id = %request.export_id);
                Ok(to_json(self.replay(request).instrument(span).await?))
            }
        }
    }

    /// Relays one export as far as it can go now. This is the whole flow, top to bottom.
    /// `listed` is the export as a batch's list pages showed it, which saves its own `GET`.
    pub async fn relay(
        &self,
        request: &ExportRequest,
        listed: Option<Fetched>,
        deadline: Deadline,
    ) -> Result<Report, RelayError> {
        // A duplicate of a poll, or a retry its successor has overtaken, costs no API request.
        let chain = self.ledger.chain(&request.export_id).await?;
        if let Some(ahead) = ahead_of(request, chain.as_ref()) {
            return Ok(self.overtaken(request, ahead));
        }
        // The ledger before the API: a committed export is completed whatever the API says now
        // (a 404, links gone), and a redelivery of it costs no API request.
        if let Some(manifest) = self.ledger.committed(&request.export_id).await? {
            info!(manifest = %self.ledger.manifest_key(&request.export_id), "already committed; completed without asking the API");
            return self.announce(request, Ending::completed(&manifest.export, &manifest)).await;
        }
        let fetched = match self.look_up(request, listed).await? {
            Lookup::Seen(fetched) => *fetched,
            Lookup::Throttled(wait) => return self.poll_later(request, chain.as_ref(), None, wait).await,
        };
        // The export is in hand from its first receipt (once the API has shown it, so unknown
        // IDs leave no trace): the sweep starts no second copy of it. A record that polls again
        // claims the next poll in the chain a moment later, which marks it just the same.
        let polls_again = matches!(fetched.export.status, ExportStatus::Pending | ExportStatus::Processing)
            && !self.polled_too_long(request);
        let chain = match polls_again {
            true => chain,
            false => self.ledger.hold(&request.export_id, chain, request.attempt, request.claimant()).await?,
        };
        if let Some(ahead) = ahead_of(request, chain.as_ref()) {
            return Ok(self.overtaken(request, ahead));
        }
        if request.attempt == 1 {
            self.keep_metadata(request).await?;
        }
        let export = &fetched.export;
        match export.status {
            ExportStatus::Pending | ExportStatus::Processing if self.polled_too_long(request) => {
                let message =
                    format!("still {:?} after {} s of polling", export.status, self.poll.timeout.as_secs());
                self.announce(
                    request,
                    Ending::without_files(EventType::TimedOut, Some(export), "poll_timeout", message),
                )
                .await
            }
            ExportStatus::Pending | ExportStatus::Processing => {
                self.poll_later(request, chain.as_ref(), Some(export), fetched.rate.throttled_for).await
            }
            ExportStatus::Failed => {
                let stage = export.progress_stage.as_deref().unwrap_or("unknown");
                let message = format!("DealMachine reports the export failed (stage: {stage})");
                self.announce(
                    request,
                    Ending::without_files(EventType::Failed, Some(export), "export_failed", message),
                )
                .await
            }
            ExportStatus::Completed => self.relay_completed(request, export, deadline).await,
        }
    }

    /// The export's state: as the list pages showed it, or from its own `GET`. An export the API
    /// will not show us is announced as failed here.
    async fn look_up(&self, request: &ExportRequest, listed: Option<Fetched>) -> Result<Lookup, RelayError> {
        let from_list = listed.is_some();
        let fetched = match listed {
            Some(listed) => listed,
            None => match self.api.get_export(&request.export_id).await {
                Ok(fetched) => {
                    self.metrics.api_answer(fetched.rate.rate_limited, fetched.rate.remaining);
                    fetched
                }
                Err(ApiError::RateLimited { rate, .. }) => {
                    self.metrics.api_answer(rate.rate_limited, rate.remaining);
                    return Ok(Lookup::Throttled(rate.throttled_for));
                }
                Err(e) if e.is_unreadable_export() => {
                    let error = RelayError::from(e);
                    self.announce(request, Ending::from_error(EventType::Failed, None, &error)).await?;
                    return Err(error);
                }
                Err(e) => return Err(e.into()),
            },
        };
        let export = &fetched.export;
        info!(status = ?export.status, progress = export.progress, stage = export.progress_stage.as_deref(), listed = from_list, "status fetched");
        Ok(Lookup::Seen(Box::new(fetched)))
    }

    /// Copies a completed export's files and commits its manifest. An earlier run's commit was
    /// found before the API was asked; files it copied are not copied again.
    async fn relay_completed(
        &self,
        request: &ExportRequest,
        export: &Export,
        deadline: Deadline,
    ) -> Result<Report, RelayError> {
        if export.is_expired(Utc::now()) {
            let message = "the export's download links are gone; run the export again".to_string();
            return self
                .announce(
                    request,
                    Ending::without_files(EventType::Expired, Some(export), "export_expired", message),
                )
                .await;
        }
        let manifest = match self.copy_and_commit(export, deadline).await {
            Ok(manifest) => manifest,
            Err(e @ RelayError::Transfer(TransferError::SourceGone(_))) => {
                return self
                    .announce(request, Ending::from_error(EventType::Expired, Some(export), &e))
                    .await;
            }
            Err(e) if is_bad_export(&e) => {
                return self.announce(request, Ending::from_error(EventType::Failed, Some(export), &e)).await;
            }
            Err(e) => return Err(e),
        };
        self.announce(request, Ending::completed(export, &manifest)).await
    }

    async fn copy_and_commit(&self, export: &Export, deadline: Deadline) -> Result<Manifest, RelayError> {
        let manifest = Manifest::new(export, self.copy_files(export, deadline).await?);
        match &manifest.verification_error {
            Some(reason) if self.strict_record_count => {
                return Err(RelayError::Unverified(reason.clone()));
            }
            Some(reason) => warn!(reason, "committing an unverified export (STRICT_RECORD_COUNT is off)"),
            None => {}
        }
        let committed = self.ledger.commit(manifest).await?;
        info!(manifest = %self.ledger.manifest_key(&ExportId::parse(&export.export_id)?), files = committed.files.len(), "manifest committed");
        Ok(committed)
    }

    fn polled_too_long(&self, request: &ExportRequest) -> bool {
        let first_seen = request.first_seen_at.unwrap_or_else(Utc::now);
        (Utc::now() - first_seen).to_std().unwrap_or_default() >= self.poll.timeout
    }

    /// Re-enqueues a running export, carrying what this poll saw (`export`, none when the API
    /// gave no answer to read). The next attempt is claimed in the ledger first, so of two
    /// copies of this record only one sends it; a failed send fails the record, and its retry,
    /// finding its own claim, sends again. Only once the message is on the queue is the current
    /// record done.
    async fn poll_later(
        &self,
        request: &ExportRequest,
        chain: Option<&Versioned<Chain>>,
        export: Option<&Export>,
        throttled_for: Option<std::time::Duration>,
    ) -> Result<Report, RelayError> {
        let now = Utc::now();
        let plan = requeue::plan(&self.poll, request, export, throttled_for, now);
        let next = request.next_poll(now, plan.last_seen);
        let claim = Chain {
            attempt: next.attempt,
            state: ChainState::Claimed,
            by: request.claimant().into(),
            at: now,
        };
        let Some(claimed) = self.ledger.move_chain(&request.export_id, chain, claim).await? else {
            let ahead = self.ledger.chain(&request.export_id).await?;
            return Ok(self.overtaken(request, &ahead.map_or_else(|| next_claim(&next), |c| c.value)));
        };
        self.requeuer.enqueue(&next, plan.delay).await?;
        let sent = Chain { state: ChainState::Sent, ..claimed.value.clone() };
        if let Err(e) = self.ledger.move_chain(&request.export_id, Some(&claimed), sent).await {
            // The claim stands; a retry of this record would take it over and send again.
            warn!(error = %e, "the next poll is on the queue, but the ledger could not record it");
        }
        info!(
            next_attempt = next.attempt,
            delay_seconds = plan.delay.as_secs(),
            schedule = plan.basis.schedule(),
            fallback = plan.basis.fallback().map(Fallback::as_str),
            estimated_seconds_left = plan.basis.estimate_seconds(),
            progress = plan.last_seen.map(|seen| seen.progress),
            "requeued"
        );
        self.metrics.outcome(Outcome::Requeued.as_str());
        Ok(Report {
            next_attempt: Some(next.attempt),
            delay_seconds: Some(plan.delay.as_secs()),
            ..Report::new(request, Outcome::Requeued)
        })
    }

    /// Acknowledges a record whose poll another message owns: a duplicate delivery, a second
    /// request for an export already being polled, or a retry that its successor overtook.
    fn overtaken(&self, request: &ExportRequest, chain: &Chain) -> Report {
        info!(
            chain_attempt = chain.attempt,
            "another message of this export's poll chain owns the next poll; nothing to do"
        );
        self.metrics.outcome(Outcome::Duplicate.as_str());
        Report { next_attempt: Some(chain.attempt), ..Report::new(request, Outcome::Duplicate) }
    }

    /// Marks the poll chain ended once the export has an outcome, so a new request for it may
    /// start one again. Best effort: a chain left open only makes later requests wait for it.
    pub(crate) async fn end_chain(&self, request: &ExportRequest) {
        let ended = async {
            let Some(chain) = self.ledger.chain(&request.export_id).await? else { return Ok(()) };
            if chain.value.state != ChainState::Ended {
                let end = Chain { state: ChainState::Ended, at: Utc::now(), ..chain.value.clone() };
                self.ledger.move_chain(&request.export_id, Some(&chain), end).await?;
            }
            Ok::<_, LedgerError>(())
        };
        if let Err(e) = ended.await {
            warn!(error = %e, "could not mark the poll chain ended");
        }
    }

    /// Where each file goes. Every name and URL is checked before the first byte moves, so a
    /// refused export leaves nothing behind.
    fn plan<'e>(&self, export: &'e Export) -> Result<Vec<(&'e DownloadFile, Destination)>, RelayError> {
        let files = export.download_urls.as_deref().unwrap_or_default();
        let mut keys = HashSet::new();
        files
            .iter()
            .map(|file| {
                let key = transfer::object_key(&self.prefix, &export.export_id, &file.filename)?;
                if !keys.insert(key.clone()) {
                    return Err(RelayError::DuplicateKey(key));
                }
                self.transfer.check_url(&file.url)?;
                let destination = Destination {
                    content_type: transfer::content_type(&file.filename),
                    filename: file.filename.clone(),
                    metadata: [
                        ("export-id".to_string(), export.export_id.clone()),
                        ("source-size".to_string(), file.size.to_string()),
                    ]
                    .into(),
                    key,
                };
                Ok((file, destination))
            })
            .collect()
    }

    /// Copies every file of a completed export, one after another. Each file is recorded in the
    /// ledger as it lands, so a run cut short is resumed by the next one file by file.
    async fn copy_files(&self, export: &Export, deadline: Deadline) -> Result<Vec<ManifestFile>, RelayError> {
        let id = ExportId::parse(&export.export_id)?;
        let plan = self.plan(export)?;
        let mut links = Links::from(export);
        let mut copied = Vec::with_capacity(plan.len());
        for (file, destination) in plan {
            if let Some(earlier) = self.ledger.copied(&id, &destination.key).await? {
                info!(key = %earlier.key, "copied and checked in an earlier run; not copied again");
                copied.push(earlier);
                continue;
            }
            let done = self.copy_file(&mut links, file, &destination, deadline).await?;
            let seconds = done.elapsed.as_secs_f64();
            info!(
                key = %done.key, bytes = done.size, parts = done.parts, seconds,
                mib_per_s = done.size as f64 / 1_048_576.0 / seconds.max(1e-6),
                sha256 = %done.inspection.sha256, rows = done.inspection.rows,
                source_crc32c = ?done.inspection.source.crc32c, resumes = done.resumes, restarts = done.restarts,
                "file copied"
            );
            self.metrics.file_copied(done.size, seconds);
            let record = ManifestFile {
                filename: file.filename.clone(),
                key: done.key,
                size: done.size,
                sha256: done.inspection.sha256,
                crc64nvme: done.inspection.crc64nvme,
                rows: done.inspection.rows,
                source: done.inspection.source,
                version_id: done.version_id,
            };
            self.ledger.record_copied(&id, &record).await?;
            copied.push(record);
        }
        Ok(copied)
    }

    /// Copies one file. Signed links die before their export does (their own `X-Goog-Expires`,
    /// a rotated signing key), so a link the host refuses is swapped, once per run, for a fresh
    /// one from the API. Only the API, or a refused fresh link, says the export has expired.
    async fn copy_file(
        &self,
        links: &mut Links,
        file: &DownloadFile,
        destination: &Destination,
        deadline: Deadline,
    ) -> Result<Copied, RelayError> {
        match self.transfer.copy(links.url(file), file.size, destination, deadline).await {
            Err(TransferError::SourceGone(status)) if !links.refreshed => {
                warn!(%status, file = %file.filename, "the file host refused the link; asking the API for fresh links");
                self.refresh(links, status).await?;
                Ok(self.transfer.copy(links.url(file), file.size, destination, deadline).await?)
            }
            copied => Ok(copied?),
        }
    }

    /// Replaces the links with the API's current ones, unless the API says they are gone.
    async fn refresh(&self, links: &mut Links, refused: reqwest::StatusCode) -> Result<(), RelayError> {
        let fetched = self.api.get_export(&ExportId::parse(&links.export_id)?).await?;
        self.metrics.api_answer(fetched.rate.rate_limited, fetched.rate.remaining);
        if fetched.export.is_expired(Utc::now()) {
            return Err(TransferError::SourceGone(refused).into());
        }
        *links = Links { refreshed: true, ..Links::from(&fetched.export) };
        Ok(())
    }

    /// Runs a batch's records at once; the response names only those worth retrying. The due
    /// polls among them are first checked together on the list endpoint when that takes fewer
    /// requests than a `GET` each.
    pub async fn handle_batch(&self, batch: SqsEvent, deadline: Deadline) -> SqsBatchResponse {
        let records: Vec<(SqsMessage, Result<ExportRequest, EventError>)> = batch
            .records
            .into_iter()
            .map(|record| {
                let parsed = ExportRequest::from_body(record.body.as_deref().unwrap_or_default());
                (record, parsed)
            })
            .collect();
        let listed =
            self.check_due_polls(records.iter().filter_map(|(_, parsed)| parsed.as_ref().ok())).await;
        let results = futures::future::join_all(records.into_iter().map(|(record, parsed)| {
            let span = info_span!(
                "export",
                message_id = record.message_id.as_deref().unwrap_or_default(),
                export_id = tracing::field::Empty,
                attempt = tracing::field::Empty,
            );
            let message_id = record.message_id.clone().unwrap_or_default();
            let seen = parsed.as_ref().ok().and_then(|request| listed.get(&request.export_id).cloned());
            async move { (message_id, self.handle_in_time(&record, parsed, seen, deadline).await) }
                .instrument(span)
        }))
        .await;
        let mut response = SqsBatchResponse::default();
        for (message_id, ok) in results {
            if !ok {
                response.add_failure(message_id);
            }
        }
        response
    }

    /// Handles a record within its share of the invocation: it must be done before the
    /// invocation's answer is due, so one slow record (a webhook that hangs, a stalled S3 call)
    /// fails alone instead of timing out the invocation, which would make SQS deliver the whole
    /// batch again, records already done included.
    async fn handle_in_time(
        &self,
        record: &SqsMessage,
        parsed: Result<ExportRequest, EventError>,
        listed: Option<Fetched>,
        deadline: Deadline,
    ) -> bool {
        let handled = self.handle_record(record, parsed, listed, deadline);
        let Some(until) = deadline.less(ANSWER_RESERVE) else {
            return handled.await;
        };
        match tokio::time::timeout_at(until.into(), handled).await {
            Ok(done) => done,
            Err(_) => {
                warn!(
                    code = "out_of_time",
                    "the record ran out of the invocation's time; SQS will deliver it again"
                );
                self.metrics.record_failed("out_of_time");
                self.retries.schedule(record).await;
                false
            }
        }
    }

    /// True when the record is done with: relayed, or set aside as one that can never succeed.
    /// One that is not waits out the next step of the retry schedule before SQS delivers it again.
    async fn handle_record(
        &self,
        record: &SqsMessage,
        parsed: Result<ExportRequest, EventError>,
        listed: Option<Fetched>,
        deadline: Deadline,
    ) -> bool {
        let request = parsed.map(|mut request| {
            request.message_id = record.message_id.clone();
            request
        });
        let result = match &request {
            Ok(request) => {
                let span = tracing::Span::current();
                span.record("export_id", request.export_id.as_str());
                span.record("attempt", request.attempt);
                info!("received");
                self.relay(request, listed, deadline).await
            }
            Err(e) => Err(e.clone().into()),
        };
        let done = match result {
            Ok(_) => true,
            Err(e) if e.is_permanent() => self.set_aside(record, &e).await,
            Err(e) if self.retries.is_last_receive(record) => {
                self.last_word(record, request.as_ref().ok(), e).await
            }
            Err(e) => {
                warn!(code = e.code(), error = %e, "record failed; SQS will deliver it again");
                self.metrics.record_failed(e.code());
                false
            }
        };
        if !done {
            self.retries.schedule(record).await;
        }
        done
    }

    /// On the last receive SQS allows, a failed record would move to the dead-letter queue with
    /// no reason, and downstream would never hear that the export will not arrive. So the relay
    /// says it: `export.failed` (`retries_exhausted`, with the last error), and the record set
    /// aside with the same reason.
    async fn last_word(
        &self,
        record: &SqsMessage,
        request: Option<&ExportRequest>,
        last: RelayError,
    ) -> bool {
        let receives = crate::retry::receive_count(record);
        let exhausted =
            RelayError::RetriesExhausted { receives, last_code: last.code(), last_message: last.to_string() };
        if let Some(request) = request {
            let ending = Ending::from_error(EventType::Failed, None, &exhausted);
            if let Err(e) = self.announce(request, ending).await {
                warn!(code = e.code(), error = %e, "could not announce that the export will not arrive");
            }
        }
        self.set_aside(record, &exhausted).await
    }

    /// A record that can never succeed goes to the dead-letter queue with the reason, so it
    /// neither blocks the queue nor vanishes.
    async fn set_aside(&self, record: &SqsMessage, error: &RelayError) -> bool {
        let Some(dead_letters) = &self.dead_letters else {
            tracing::error!(code = error.code(), error = %error, "record can never succeed; dropped (no DEAD_LETTER_QUEUE_URL set)");
            return true;
        };
        match dead_letters.send(record, error.code(), &error.to_string()).await {
            Ok(()) => {
                tracing::error!(code = error.code(), error = %error, "record can never succeed; sent to the dead-letter queue");
                self.metrics.outcome("dlq");
                true
            }
            Err(e) => {
                tracing::error!(code = error.code(), error = %error, dlq_error = %e, "record can never succeed, and the dead-letter queue refused it; SQS will redrive it");
                false
            }
        }
    }

    /// Checks each export a schedule names once. Running ones go on the queue; ones that fail
    /// for a passing reason go on it too, so that SQS retries them and none is lost.
    pub async fn handle_schedule(&self, ids: Vec<String>, deadline: Deadline) -> Result<Value, RelayError> {
        let results: Vec<Value> = stream::iter(ids)
            .map(|id| async move {
                let request = match ExportId::parse(&id) {
                    Ok(export_id) => ExportRequest::new(export_id),
                    Err(e) => return Ok(json!({"export_id": id, "error": RelayError::from(e).info()})),
                };
                let span = info_span!("export", export_id = %request.export_id, attempt = request.attempt);
                match self.relay(&request, None, deadline).instrument(span).await {
                    Ok(report) => Ok(to_json(report)),
                    Err(e) if e.is_permanent() => Ok(json!({"export_id": id, "error": e.info()})),
                    Err(e) => {
                        warn!(export_id = %id, error = %e, "check failed; handing the export to the queue");
                        self.requeuer.enqueue(&request, std::time::Duration::ZERO).await?;
                        Ok(json!({"export_id": id, "outcome": "enqueued", "error": e.info()}))
                    }
                }
            })
            .buffered(SCHEDULE_CONCURRENCY)
            .collect::<Vec<Result<Value, RelayError>>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        info!(checked = results.len(), "schedule handled");
        Ok(json!({ "checked": results.len(), "results": results }))
    }

    /// For operators: the outcome, or the permanent error as a `failed` outcome.
    async fn handle_direct(&self, request: ExportRequest, deadline: Deadline) -> Result<Report, RelayError> {
        info!("received");
        match self.relay(&request, None, deadline).await {
            Err(e) if e.is_permanent() => {
                Ok(Report { error: Some(e.info()), ..Report::new(&request, Outcome::Failed) })
            }
            other => other,
        }
    }
}

impl Report {
    pub(crate) fn new(request: &ExportRequest, outcome: Outcome) -> Self {
        Self {
            export_id: request.export_id.to_string(),
            outcome,
            files: None,
            next_attempt: None,
            delay_seconds: None,
            error: None,
        }
    }
}

/// Where each of an export's files is downloaded from, by file name: the API's first links, or
/// the fresh ones it gave after the host refused one.
struct Links {
    export_id: String,
    urls: std::collections::HashMap<String, String>,
    refreshed: bool,
}

impl From<&Export> for Links {
    fn from(export: &Export) -> Self {
        let files = export.download_urls.iter().flatten();
        Self {
            export_id: export.export_id.clone(),
            urls: files.map(|f| (f.filename.clone(), f.url.clone())).collect(),
            refreshed: false,
        }
    }
}

impl Links {
    fn url<'a>(&'a self, file: &'a DownloadFile) -> &'a str {
        self.urls.get(&file.filename).map_or(&file.url, String::as_str)
    }
}

/// What a chain looks like to a record that lost the race to claim `next`'s poll, when the
/// winner's claim cannot be read back.
fn next_claim(next: &ExportRequest) -> Chain {
    Chain { attempt: next.attempt, state: ChainState::Claimed, by: String::new(), at: Utc::now() }
}

/// The chain ahead of `request`, when another message of the export owns the next poll.
fn ahead_of<'c>(request: &ExportRequest, chain: Option<&'c Versioned<Chain>>) -> Option<&'c Chain> {
    chain.map(|c| &c.value).filter(|c| !c.lets_poll(request.attempt, request.claimant(), Utc::now()))
}

/// A bad URL, name or file list in the export itself: retrying cannot fix it.
fn is_bad_export(error: &RelayError) -> bool {
    match error {
        RelayError::Transfer(e) => e.is_permanent(),
        RelayError::DuplicateKey(_) | RelayError::Unverified(_) => true,
        _ => false,
    }
}

fn to_json(value: impl Serialize) -> Value {
    serde_json::to_value(value).expect("responses always serialize")
}

/// What Lambda reports for a failed invocation: the error code as its type, and the message.
impl From<RelayError> for lambda_runtime::Diagnostic {
    fn from(error: RelayError) -> Self {
        Self { error_type: error.code().into(), error_message: error.to_string() }
    }
}
