//! The file host, as Google Cloud Storage serves a signed URL: the stored object's checksums in
//! `x-goog-hash`, ranges answered with `206`, reads pinned to a generation or ETag answered with
//! `412` once the object has changed, and decompressive transcoding of objects stored with
//! `Content-Encoding: gzip` for clients that do not accept gzip.
//! (<https://cloud.google.com/storage/docs/xml-api/reference-headers>,
//! <https://cloud.google.com/storage/docs/transcoding>.)
//!
//! Fault switches make a download misbehave the ways a real one can.

use std::io::Write;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use flate2::write::MultiGzDecoder;
use futures::StreamExt;

use crate::content::{CsvGz, Measured};

/// GCS generations are microsecond timestamps; this one is the first an object here gets.
const FIRST_GENERATION: i64 = 1_767_225_600_000_001;

/// How a download misbehaves. Byte counts are of one response, so a fault that hits every
/// request still lets a client that resumes make progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadFault {
    /// Close the connection after this many bytes.
    CloseAfter(u64),
    /// Send this many bytes more than the announced size, without a `Content-Length`.
    ExtraBytes(u64),
    /// The stored object has this byte inverted: a corrupt file, whose `x-goog-hash` matches it.
    FlipByteAt(u64),
    /// Pause this long between chunks.
    Slow(Duration),
    /// Send this many bytes, then nothing, without closing.
    StallAfter(u64),
    /// Answer with this status instead of the file.
    Status(u16),
    /// Redirect (302) to this URL.
    Redirect(&'static str),
    /// Redirect (302) this many times, each hop to the same file with `hop=N` added to the
    /// query, before the file is served: a chain a client follows to the real bytes.
    RedirectHops(u32),
    /// Announce checksums in `x-goog-hash` that are not the object's.
    WrongHash,
    /// End the body cleanly after this many bytes, announcing no length.
    ShortAfter(u64),
    /// Send this many bytes and close; meanwhile the object is overwritten (same size, other
    /// bytes) and gets a new generation. Happens on the first request only.
    ReplacedAfter(u64),
    /// Answer a `Range` request from one byte before the one asked for (saying so in
    /// `Content-Range`), as a broken proxy might.
    ShiftedRange,
    /// Read the request, then close the connection without a status line, as a host that
    /// restarts or a load balancer that gives up does.
    NoAnswer,
}

/// How `x-goog-hash` is laid out. GCS sends one header with both values or one header per
/// value; composite objects have no MD5, and hosts other than GCS send nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashHeader {
    #[default]
    Combined,
    Separate,
    Crc32cOnly,
    Md5Only,
    Absent,
}

#[derive(Debug, Clone)]
pub struct FileSpec {
    pub filename: String,
    pub content: CsvGz,
    pub fault: Option<DownloadFault>,
    /// The fault hits only the first this many requests; `None` for every request.
    pub fault_times: Option<u32>,
    /// Stored with `Content-Encoding: gzip`, so the host transcodes it for a client that does
    /// not send `Accept-Encoding: gzip`.
    pub stored_gzip: bool,
    pub hash_header: HashHeader,
    /// Answers `Range` requests with `200` and the whole object, as some proxies do.
    pub ignores_range: bool,
    /// One fault per request in turn, then none; when set, `fault` is not used.
    pub faults_in_turn: Vec<DownloadFault>,
}

impl FileSpec {
    pub fn csv(filename: &str, seed: u64, rows: u64) -> Self {
        Self {
            filename: filename.into(),
            content: CsvGz { seed, rows, level: 1 },
            fault: None,
            fault_times: None,
            stored_gzip: false,
            hash_header: HashHeader::default(),
            ignores_range: false,
            faults_in_turn: Vec::new(),
        }
    }

    /// This file, misbehaving with `fault` on every request.
    pub fn with_fault(self, fault: DownloadFault) -> Self {
        Self { fault: Some(fault), ..self }
    }

    /// Limits the fault to the first request.
    pub fn once(self) -> Self {
        Self { fault_times: Some(1), ..self }
    }

    /// This file, with the first request getting the first of `faults`, the second the next,
    /// and so on: a host that misbehaves differently when asked to resume.
    pub fn with_faults_in_turn(self, faults: &[DownloadFault]) -> Self {
        Self { faults_in_turn: faults.to_vec(), ..self }
    }
}

/// One stored object and what has been asked of it.
pub(crate) struct SimFile {
    pub spec: FileSpec,
    /// Of the current generation.
    pub measured: Measured,
    generation: i64,
    requests: u32,
}

impl SimFile {
    pub fn new(spec: FileSpec) -> Self {
        let measured = Measured::of(stored(&spec, FIRST_GENERATION));
        Self { spec, measured, generation: FIRST_GENERATION, requests: 0 }
    }

    /// Counts a request and says what it will be served: the object as it is now, and the
    /// fault, if this request gets one. A `ReplacedAfter` fault overwrites the object after
    /// taking this request's snapshot.
    pub fn serve(&mut self) -> Object {
        self.requests += 1;
        let replaced_before =
            matches!(self.spec.fault, Some(DownloadFault::ReplacedAfter(_))) && self.requests > 1;
        let fault = match self.spec.faults_in_turn.as_slice() {
            [] => self
                .spec
                .fault
                .filter(|_| !replaced_before && self.spec.fault_times.is_none_or(|n| self.requests <= n)),
            in_turn => in_turn.get(self.requests as usize - 1).copied(),
        };
        let object = Object {
            spec: self.spec.clone(),
            measured: self.measured.clone(),
            generation: self.generation,
            fault,
        };
        if let Some(DownloadFault::ReplacedAfter(_)) = fault {
            self.generation += 1;
            self.measured = Measured::of(stored(&self.spec, self.generation));
        }
        object
    }
}

/// A snapshot of an object, as one request sees it.
pub(crate) struct Object {
    spec: FileSpec,
    measured: Measured,
    generation: i64,
    fault: Option<DownloadFault>,
}

/// The object's stored bytes at a generation: a new generation differs in the gzip header's
/// timestamp only, so it keeps its size and rows.
fn stored(spec: &FileSpec, generation: i64) -> impl Iterator<Item = Bytes> + Send + 'static {
    let flip = match spec.fault {
        Some(DownloadFault::FlipByteAt(at)) => Some(at),
        _ => None,
    };
    let mut offset = 0u64;
    spec.content.chunks_stamped((generation - FIRST_GENERATION) as u32).map(move |chunk| {
        let start = offset;
        offset += chunk.len() as u64;
        match flip.filter(|at| (start..offset).contains(at)) {
            Some(at) => {
                let mut bytes = chunk.to_vec();
                bytes[(at - start) as usize] ^= 0xff;
                Bytes::from(bytes)
            }
            None => chunk,
        }
    })
}

/// What a request asked for, from its headers.
struct Ask {
    range: Option<(u64, Option<u64>)>,
    accepts_gzip: bool,
    generation_match: Option<String>,
    if_match: Option<String>,
}

impl Ask {
    fn from(headers: &HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let range = text("range").and_then(|r| {
            let (start, end) = r.strip_prefix("bytes=")?.split_once('-')?;
            Some((start.parse().ok()?, end.parse().ok()))
        });
        Self {
            range,
            accepts_gzip: text("accept-encoding").is_some_and(|v| v.split(',').any(|e| e.trim() == "gzip")),
            generation_match: text("x-goog-if-generation-match").map(str::to_string),
            if_match: text("if-match").map(str::to_string),
        }
    }
}

impl Object {
    /// False when this request's connection is to be closed without an answer.
    pub fn answers(&self) -> bool {
        self.fault != Some(DownloadFault::NoAnswer)
    }

    fn etag(&self) -> String {
        let md5 = BASE64.decode(&self.measured.md5).expect("our own base64");
        format!("\"{}\"", md5.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    /// The answer to one GET of this object, at `uri` (path and query, for redirect chains).
    pub fn respond(self, headers: &HeaderMap, uri: &str) -> Response {
        match self.fault {
            Some(DownloadFault::RedirectHops(hops)) => {
                let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
                let hop = query
                    .split('&')
                    .find_map(|p| p.strip_prefix("hop="))
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or(0);
                if hop < hops {
                    let rest: Vec<&str> = query.split('&').filter(|p| !p.starts_with("hop=")).collect();
                    let to = format!("{path}?{}&hop={}", rest.join("&"), hop + 1);
                    return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
                }
            }
            Some(DownloadFault::Status(code)) => {
                return StatusCode::from_u16(code)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                    .into_response();
            }
            Some(DownloadFault::Redirect(to)) => {
                return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
            }
            _ => {}
        }
        let ask = Ask::from(headers);
        let size = self.measured.size;
        let changed = ask.generation_match.as_ref().is_some_and(|g| *g != self.generation.to_string())
            || ask.if_match.as_ref().is_some_and(|tag| *tag != self.etag());
        if changed {
            return (StatusCode::PRECONDITION_FAILED, "<Error><Code>ConditionNotMet</Code></Error>")
                .into_response();
        }
        let transcoded = self.spec.stored_gzip && !ask.accepts_gzip;
        // GCS serves a transcoded object whole, whatever the range.
        let range = ask
            .range
            .filter(|_| !transcoded && !self.spec.ignores_range)
            .map(|(start, end)| (start, end.unwrap_or(u64::MAX).min(size.saturating_sub(1))))
            .map(|(start, end)| match self.fault {
                Some(DownloadFault::ShiftedRange) => (start.saturating_sub(1), end),
                _ => (start, end),
            });
        if range.is_some_and(|(start, _)| start >= size) {
            let mut refused = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            refused.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
            );
            return refused;
        }
        let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
        let mut response = Body::from_stream(self.body(start, end, transcoded)).into_response();
        if range.is_some() {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        }
        self.describe(response.headers_mut(), range.map(|_| (start, end)), transcoded);
        response
    }

    /// The bytes from `start` to `end` inclusive, with this request's fault applied.
    fn body(
        &self,
        start: u64,
        end: u64,
        transcoded: bool,
    ) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let fault = self.fault;
        let extra = match fault {
            Some(DownloadFault::ExtraBytes(n)) => Some(Bytes::from(vec![b'x'; n as usize])),
            _ => None,
        };
        let cut_at = match fault {
            Some(
                DownloadFault::CloseAfter(n)
                | DownloadFault::StallAfter(n)
                | DownloadFault::ReplacedAfter(n)
                | DownloadFault::ShortAfter(n),
            ) => n,
            _ => u64::MAX,
        };
        let clean_end = matches!(fault, Some(DownloadFault::ShortAfter(_)));
        let mut offset = 0u64;
        let wanted = stored(&self.spec, self.generation).filter_map(move |chunk| {
            let at = offset;
            offset += chunk.len() as u64;
            let from = start.saturating_sub(at).min(chunk.len() as u64) as usize;
            let to = (end + 1).saturating_sub(at).min(chunk.len() as u64) as usize;
            (from < to).then(|| chunk.slice(from..to))
        });
        let chunks: Box<dyn Iterator<Item = Bytes> + Send> =
            if transcoded { Box::new(decompressed(wanted)) } else { Box::new(wanted) };
        let mut sent = 0u64;
        let stream = futures::stream::iter(chunks.chain(extra)).flat_map(move |chunk| {
            let before = sent;
            sent += chunk.len() as u64;
            let mut items: Vec<Result<Bytes, std::io::Error>> = Vec::with_capacity(2);
            if sent > cut_at {
                items.push(Ok(chunk.slice(..(cut_at.saturating_sub(before) as usize))));
                items.push(Err(std::io::Error::other("simulated connection drop")));
                if clean_end {
                    items.pop();
                }
            } else {
                items.push(Ok(chunk));
            }
            futures::stream::iter(items)
        });
        // Nothing after the cut: a dropped connection stays dropped, a short body stays short.
        let mut total = 0u64;
        let stream = stream.scan(false, move |done, item| {
            let out = (!*done).then_some(item);
            total += out.as_ref().and_then(|i| i.as_ref().ok()).map_or(0, |c| c.len() as u64);
            *done = *done || out.as_ref().is_some_and(Result::is_err) || (clean_end && total >= cut_at);
            futures::future::ready(out)
        });
        stream.then(move |item| async move {
            match (fault, &item) {
                (Some(DownloadFault::Slow(pause)), _) => tokio::time::sleep(pause).await,
                (Some(DownloadFault::StallAfter(_)), Err(_)) => std::future::pending::<()>().await,
                // Let what was sent reach the client before the connection drops, so a drop
                // after N bytes is seen after N bytes.
                (_, Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => {}
            }
            item
        })
    }

    /// The headers GCS sends with an object.
    fn describe(&self, headers: &mut HeaderMap, range: Option<(u64, u64)>, transcoded: bool) {
        let size = self.measured.size;
        let mut put = |name: &'static str, value: String| {
            headers.append(name, HeaderValue::from_str(&value).expect("ascii"));
        };
        put("x-goog-generation", self.generation.to_string());
        put("x-goog-metageneration", "1".into());
        put("x-goog-stored-content-length", size.to_string());
        put("x-goog-stored-content-encoding", if self.spec.stored_gzip { "gzip" } else { "identity" }.into());
        put("etag", self.etag());
        put("accept-ranges", "bytes".into());
        let wrong = self.fault == Some(DownloadFault::WrongHash);
        let announced =
            if wrong { Measured::of([Bytes::from_static(b"other")]) } else { self.measured.clone() };
        let (crc32c, md5) = (announced.crc32c, announced.md5);
        match self.spec.hash_header {
            HashHeader::Combined => put("x-goog-hash", format!("crc32c={crc32c},md5={md5}")),
            HashHeader::Separate => {
                put("x-goog-hash", format!("crc32c={crc32c}"));
                put("x-goog-hash", format!("md5={md5}"));
            }
            HashHeader::Crc32cOnly => put("x-goog-hash", format!("crc32c={crc32c}")),
            HashHeader::Md5Only => put("x-goog-hash", format!("md5={md5}")),
            HashHeader::Absent => {}
        }
        put("content-type", if self.spec.stored_gzip { "text/csv" } else { "application/gzip" }.into());
        if transcoded {
            // Decompressed on the way: no length is announced, and none would match.
            return;
        }
        if self.spec.stored_gzip {
            put("content-encoding", "gzip".into());
        }
        if let Some((start, end)) = range {
            put("content-range", format!("bytes {start}-{end}/{size}"));
        }
        // A host sending extra bytes, or ending early, is one that does not announce a length,
        // as with chunked encoding.
        if !matches!(self.fault, Some(DownloadFault::ExtraBytes(_) | DownloadFault::ShortAfter(_))) {
            let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
            put("content-length", if size == 0 { 0 } else { end + 1 - start }.to_string());
        }
    }
}

/// Gzip bytes, decoded as they stream: what decompressive transcoding sends.
fn decompressed(chunks: impl Iterator<Item = Bytes> + Send) -> impl Iterator<Item = Bytes> + Send {
    let mut decoder = Some(MultiGzDecoder::new(Vec::new()));
    chunks.map(Some).chain(std::iter::once(None)).filter_map(move |chunk| {
        let out = decoder.as_mut()?;
        match chunk {
            Some(chunk) => out.write_all(&chunk).expect("the stored object is gzip"),
            None => out.try_finish().expect("the stored object is gzip"),
        }
        let decoded = std::mem::take(out.get_mut());
        (!decoded.is_empty()).then(|| Bytes::from(decoded))
    })
}
