//! Checks computed on the bytes as they stream past, so no file is ever read twice: SHA-256 for
//! consumers, CRC64NVME for S3's own full-object check, CRC32C (or MD5) against the checksum the
//! file host announced for what it stored, and, for gzip CSV, a decode to the trailer with a
//! count of the CSV rows inside.

mod gzip;
mod rows;

use std::io::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use crc_fast::{CrcAlgorithm, Digest as CrcDigest};
use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use self::gzip::GzipStream;
pub use self::rows::RowCounter;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the file is not valid gzip: {0}")]
pub struct CorruptGzip(pub String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InspectionError {
    #[error(transparent)]
    Corrupt(#[from] CorruptGzip),
    /// The bytes received are not the bytes the file host says it stored.
    #[error(
        "the {algorithm} of the bytes received is {computed}, but the file host announced {announced} for the object it stored"
    )]
    SourceMismatch { algorithm: &'static str, announced: String, computed: String },
}

/// What the file host says about the object it stores, from `x-goog-hash` and
/// `x-goog-generation`: base64 big-endian digests, as Google Cloud Storage sends them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announced {
    pub crc32c: Option<String>,
    pub md5: Option<String>,
    pub generation: Option<String>,
}

/// The file host's checksums of the stored object, as the manifest records them, each with
/// whether the bytes received were checked against it and matched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceChecksums {
    /// The object version the checksums belong to.
    pub generation: Option<String>,
    pub crc32c: Option<Checked>,
    pub md5: Option<Checked>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checked {
    pub value: String,
    /// False for a checksum recorded without being checked: MD5 when CRC32C was checked, as
    /// computing both would cost copy speed and buy nothing more against transfer errors.
    pub verified: bool,
}

/// What the checks found, once the last byte has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub sha256: String,
    /// The object's CRC64NVME, base64 as S3 writes it.
    pub crc64nvme: String,
    /// CSV data rows after the header, for `.csv` and `.csv.gz` files.
    pub rows: Option<u64>,
    pub source: SourceChecksums,
}

/// Watches one file's bytes go by: the digests of the bytes as stored, and the content checks
/// of what they decode to. The two halves are independent, so [`Beside`] runs each on a thread
/// of its own.
pub struct Inspector {
    digests: Digests,
    content: Content,
}

/// The digests of the bytes as they are stored: SHA-256 for consumers, CRC64NVME for S3, and the
/// host's own CRC32C (or MD5) to check the bytes against.
pub struct Digests {
    sha256: Sha256,
    crc: CrcDigest,
    crc32c: CrcDigest,
    /// Only when MD5 is the one checksum the host announced.
    md5: Option<Md5>,
    announced: Announced,
}

/// What the bytes decode to: a `.gz` file must be gzip to its trailer, and CSV rows are counted.
pub enum Content {
    Opaque,
    Csv(RowCounter),
    GzipCsv(Box<GzipStream<RowCounter>>),
    Gzip(Box<GzipStream<std::io::Sink>>),
}

impl Inspector {
    /// Chooses the checks from the file name (`.gz` must be gzip, `.csv` is counted) and from
    /// what the host announced.
    pub fn for_file(filename: &str, announced: Announced) -> Self {
        Self { digests: Digests::new(announced), content: Content::for_file(filename) }
    }

    pub fn update(&mut self, chunk: &[u8]) -> Result<(), CorruptGzip> {
        self.digests.update(chunk);
        self.content.update(chunk)
    }

    /// Checks the bytes against the host's checksum, then the gzip trailer (CRC and size), and
    /// returns what was found. The host's checksum comes first: bytes that are not what it
    /// stored say nothing about the file itself.
    pub fn finish(self) -> Result<Inspection, InspectionError> {
        let digested = self.digests.finish()?;
        Ok(digested.with_rows(self.content.finish()?))
    }
}

/// The digests' findings, waiting for the row count.
struct Digested {
    sha256: String,
    crc64nvme: String,
    source: SourceChecksums,
}

impl Digested {
    fn with_rows(self, rows: Option<u64>) -> Inspection {
        Inspection { sha256: self.sha256, crc64nvme: self.crc64nvme, rows, source: self.source }
    }
}

impl Digests {
    pub fn new(announced: Announced) -> Self {
        let md5 = (announced.crc32c.is_none() && announced.md5.is_some()).then(<Md5 as md5::Digest>::new);
        Self {
            sha256: Sha256::new(),
            crc: CrcDigest::new(CrcAlgorithm::Crc64Nvme),
            crc32c: CrcDigest::new(CrcAlgorithm::Crc32Iscsi),
            md5,
            announced,
        }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.sha256.update(chunk);
        self.crc.update(chunk);
        self.crc32c.update(chunk);
        if let Some(md5) = &mut self.md5 {
            md5::Digest::update(md5, chunk);
        }
    }

    fn finish(self) -> Result<Digested, InspectionError> {
        let crc64nvme = BASE64.encode(self.crc.finalize().to_be_bytes());
        let crc32c = BASE64.encode((self.crc32c.finalize() as u32).to_be_bytes());
        let md5 = self.md5.map(|md5| BASE64.encode(md5::Digest::finalize(md5)));
        let source = SourceChecksums {
            crc32c: check("crc32c", self.announced.crc32c, Some(crc32c))?,
            md5: check("md5", self.announced.md5, md5)?,
            generation: self.announced.generation,
        };
        Ok(Digested { sha256: format!("{:x}", self.sha256.finalize()), crc64nvme, source })
    }
}

impl Content {
    pub fn for_file(filename: &str) -> Self {
        let name = filename.to_ascii_lowercase();
        if name.ends_with(".csv.gz") {
            Self::GzipCsv(Box::new(GzipStream::new(RowCounter::default())))
        } else if name.ends_with(".gz") {
            Self::Gzip(Box::new(GzipStream::new(std::io::sink())))
        } else if name.ends_with(".csv") {
            Self::Csv(RowCounter::default())
        } else {
            Self::Opaque
        }
    }

    pub fn update(&mut self, chunk: &[u8]) -> Result<(), CorruptGzip> {
        let decoded = match self {
            Self::Opaque => Ok(()),
            Self::Csv(counter) => counter.write_all(chunk),
            Self::GzipCsv(decoder) => decoder.write_all(chunk),
            Self::Gzip(decoder) => decoder.write_all(chunk),
        };
        decoded.map_err(|e| CorruptGzip(e.to_string()))
    }

    /// Checks the gzip trailer, and returns the CSV data rows.
    pub fn finish(self) -> Result<Option<u64>, CorruptGzip> {
        let trailer = |e: std::io::Error| CorruptGzip(e.to_string());
        match self {
            Self::Opaque => Ok(None),
            Self::Csv(counter) => Ok(Some(counter.data_rows())),
            Self::GzipCsv(decoder) => {
                decoder.finish().map_err(trailer)?;
                Ok(Some(decoder.get_ref().data_rows()))
            }
            Self::Gzip(decoder) => decoder.finish().map(|()| None).map_err(trailer),
        }
    }
}

/// Compares an announced checksum with the computed one, if there is one to compare with.
fn check(
    algorithm: &'static str,
    announced: Option<String>,
    computed: Option<String>,
) -> Result<Option<Checked>, InspectionError> {
    match (announced, computed) {
        (Some(announced), Some(computed)) if announced != computed => {
            Err(InspectionError::SourceMismatch { algorithm, announced, computed })
        }
        (Some(value), computed) => Ok(Some(Checked { value, verified: computed.is_some() })),
        (None, _) => Ok(None),
    }
}

/// Runs an [`Inspector`] beside the copy, its digests on one blocking thread and its content
/// checks on another, so hashing, decoding and the network overlap on as many cores as the
/// Lambda has. Chunks are shared, not copied, and at most a few wait for each thread, so memory
/// stays bounded.
pub struct Beside {
    digests: Worker<Result<Digested, InspectionError>>,
    content: Worker<Result<Option<u64>, Stopped>>,
}

/// Chunks that may wait for each thread. A chunk can be hundreds of KiB on a fast link, so keep
/// this small: it adds to the memory bound, while more buys no speed once a thread is the
/// slower side.
const CHUNKS_WAITING: usize = 4;

/// The content checks failed: on a chunk (the stream is broken before its end), or at the end.
enum Stopped {
    Early(CorruptGzip),
    AtEnd(CorruptGzip),
}

/// One blocking thread fed chunks through a bounded channel.
struct Worker<T> {
    chunks: Option<tokio::sync::mpsc::Sender<Bytes>>,
    task: tokio::task::JoinHandle<T>,
}

impl<T: Send + 'static> Worker<T> {
    /// `work` takes chunks until the channel closes, or until it gives up on its own.
    fn spawn(work: impl FnOnce(&mut tokio::sync::mpsc::Receiver<Bytes>) -> T + Send + 'static) -> Self {
        let (chunks, mut received) = tokio::sync::mpsc::channel::<Bytes>(CHUNKS_WAITING);
        let task = tokio::task::spawn_blocking(move || work(&mut received));
        Self { chunks: Some(chunks), task }
    }

    async fn send(&mut self, chunk: Bytes) -> Result<(), ()> {
        let chunks = self.chunks.as_ref().ok_or(())?;
        chunks.send(chunk).await.map_err(|_| self.chunks = None)
    }

    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        self.chunks = None;
        self.task.await
    }
}

impl Beside {
    pub fn spawn(inspector: Inspector) -> Self {
        let Inspector { mut digests, mut content } = inspector;
        let digests = Worker::spawn(move |chunks| {
            while let Some(chunk) = chunks.blocking_recv() {
                digests.update(&chunk);
            }
            digests.finish()
        });
        let content = Worker::spawn(move |chunks| {
            while let Some(chunk) = chunks.blocking_recv() {
                content.update(&chunk).map_err(Stopped::Early)?;
            }
            content.finish().map_err(Stopped::AtEnd)
        });
        Self { digests, content }
    }

    /// Hands a chunk over to both threads. An error means the content checks have stopped on a
    /// broken file; `finish` says why.
    pub async fn update(&mut self, chunk: Bytes) -> Result<(), ()> {
        self.digests.send(chunk.clone()).await?;
        self.content.send(chunk).await
    }

    /// Waits for both threads to see the last chunk, and returns what they found, in the order
    /// [`Inspector::finish`] checks it: a file broken before its end is corrupt whatever its
    /// digests, else the host's checksum comes before the gzip trailer.
    pub async fn finish(self) -> Result<Inspection, InspectionError> {
        let stopped = |e| CorruptGzip(format!("the inspection stopped: {e}"));
        let content = self.content.join().await.unwrap_or_else(|e| Err(Stopped::Early(stopped(e))));
        if let Err(Stopped::Early(e)) = content {
            return Err(e.into());
        }
        let digested = self.digests.join().await.map_err(stopped)??;
        match content {
            Ok(rows) => Ok(digested.with_rows(rows)),
            Err(Stopped::Early(e) | Stopped::AtEnd(e)) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn inspect(name: &str, bytes: &[u8], chunk: usize) -> Result<Inspection, InspectionError> {
        inspect_announced(name, bytes, chunk, Announced::default())
    }

    fn inspect_announced(
        name: &str,
        bytes: &[u8],
        chunk: usize,
        announced: Announced,
    ) -> Result<Inspection, InspectionError> {
        let mut inspector = Inspector::for_file(name, announced);
        for piece in bytes.chunks(chunk.max(1)) {
            inspector.update(piece)?;
        }
        inspector.finish()
    }

    #[test]
    fn rows_are_records_not_newlines() {
        let csv =
            b"id,name,notes\r\n1,\"Smith, John\",\"line one\nline two\"\r\n2,\"Say \"\"hi\"\"\",x\r\n3,a,b";
        for chunk in [1, 3, 1000] {
            assert_eq!(inspect("a.csv", csv, chunk).unwrap().rows, Some(3));
        }
        assert_eq!(inspect("a.csv", b"id,name\n", 10).unwrap().rows, Some(0));
        assert_eq!(inspect("a.csv", b"", 10).unwrap().rows, Some(0));
        assert_eq!(inspect("a.bin", b"x\ny\n", 10).unwrap().rows, None);
    }

    #[test]
    fn gzip_csv_is_decoded_to_its_trailer_and_counted() {
        let csv = b"id\n1\n2\n\"multi\nline\"\n";
        let gz = gzip(csv);
        for chunk in [1, 7, 4096] {
            assert_eq!(inspect("export.csv.gz", &gz, chunk).unwrap().rows, Some(3));
        }
        let twice = [gz.clone(), gz].concat();
        assert_eq!(
            inspect("export.csv.gz", &twice, 64).unwrap().rows,
            Some(7),
            "multi-member gzip is valid gzip"
        );
    }

    #[test]
    fn corrupt_or_truncated_gzip_is_refused() {
        let gz = gzip(&b"id\n1\n2\n".repeat(100));
        let mut flipped = gz.clone();
        let last = flipped.len() - 6;
        flipped[last] ^= 0xff; // inside the trailer's CRC
        assert!(inspect("x.csv.gz", &flipped, 16).is_err(), "bad CRC");
        assert!(inspect("x.csv.gz", &gz[..gz.len() - 4], 16).is_err(), "no trailer");
        assert!(inspect("x.gz", b"this is plain text, not gzip", 16).is_err(), "not gzip at all");
        let mut garbage = gz.clone();
        garbage.extend_from_slice(b"junk after the end");
        assert!(inspect("x.gz", &garbage, 16).is_err(), "trailing garbage");
    }

    #[test]
    fn digests_match_known_values() {
        let found = inspect("a.bin", b"123456789", 4).unwrap();
        assert_eq!(found.sha256, "15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225");
        // CRC-64/NVME's check value for "123456789" is 0xAE8B14860A799888.
        assert_eq!(found.crc64nvme, BASE64.encode(0xAE8B_1486_0A79_9888u64.to_be_bytes()));
    }

    /// CRC-32C's check value for "123456789" is 0xE3069283; MD5's is 25f9e794323b453885f5181f1b624d0b.
    const CRC32C_123456789: &str = "4waSgw==";
    const MD5_123456789: &str = "JfnnlDI7RTiF9RgfG2JNCw==";

    fn announced(crc32c: Option<&str>, md5: Option<&str>) -> Announced {
        Announced { crc32c: crc32c.map(Into::into), md5: md5.map(Into::into), generation: Some("7".into()) }
    }

    #[test]
    fn the_hosts_crc32c_is_checked_and_its_md5_recorded() {
        let both = announced(Some(CRC32C_123456789), Some(MD5_123456789));
        let found = inspect_announced("a.bin", b"123456789", 4, both).unwrap();
        assert_eq!(found.source.crc32c, Some(Checked { value: CRC32C_123456789.into(), verified: true }));
        assert_eq!(found.source.md5, Some(Checked { value: MD5_123456789.into(), verified: false }));
        assert_eq!(found.source.generation.as_deref(), Some("7"));

        let wrong = announced(Some("AAAAAA=="), Some(MD5_123456789));
        assert_eq!(
            inspect_announced("a.bin", b"123456789", 4, wrong),
            Err(InspectionError::SourceMismatch {
                algorithm: "crc32c",
                announced: "AAAAAA==".into(),
                computed: CRC32C_123456789.into()
            })
        );
    }

    #[test]
    fn md5_is_checked_when_it_is_all_the_host_announced() {
        let found =
            inspect_announced("a.bin", b"123456789", 2, announced(None, Some(MD5_123456789))).unwrap();
        assert_eq!(found.source.md5, Some(Checked { value: MD5_123456789.into(), verified: true }));
        assert_eq!(found.source.crc32c, None);
        let wrong = inspect_announced("a.bin", b"123456780", 2, announced(None, Some(MD5_123456789)));
        assert!(matches!(wrong, Err(InspectionError::SourceMismatch { algorithm: "md5", .. })));
        let nothing = inspect_announced("a.bin", b"123456789", 2, Announced::default()).unwrap();
        assert_eq!(nothing.source, SourceChecksums::default(), "no header, nothing to check");
    }

    #[test]
    fn bytes_that_differ_from_the_stored_ones_are_not_blamed_on_the_file() {
        let gz = gzip(b"id\n1\n");
        let mut flipped = gz.clone();
        let last = flipped.len() - 6;
        flipped[last] ^= 0xff;
        let crc32c = {
            let mut digest = CrcDigest::new(CrcAlgorithm::Crc32Iscsi);
            digest.update(&gz);
            BASE64.encode((digest.finalize() as u32).to_be_bytes())
        };
        let found = inspect_announced("x.csv.gz", &flipped, 16, announced(Some(&crc32c), None));
        assert!(matches!(found, Err(InspectionError::SourceMismatch { .. })), "{found:?}");
    }
}
