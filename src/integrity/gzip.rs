//! gzip (RFC 1952) decoded as chunks are pushed in, members one after another, to the trailer of
//! the last one.
//!
//! Why not `flate2::write::MultiGzDecoder`: it inflates into a fixed 32 KiB buffer, and the
//! inflate is most of the copy's CPU. Inflating into 256 KiB cut the decode of the 1 GiB bench
//! file by about a sixth (BENCHMARKS.md, *Levers tried*). The deflate itself is still flate2's
//! (zlib-rs), and the trailer's CRC-32 is crc32fast's, as in flate2.

use std::io::{self, Write};

use flate2::{Decompress, FlushDecompress, Status};

/// Inflated bytes handed on at a time (256 KiB). Larger buffers measured no faster.
const INFLATE_BUFFER: usize = 262_144;
/// A header longer than this (64 KiB: its optional name, comment and extra field) is not an
/// export's.
const HEADER_MAX: usize = 65_536;
const TRAILER: usize = 8;

/// Inflates every member into `inner` and checks each trailer (CRC-32 and length).
pub struct GzipStream<W> {
    inner: W,
    part: Part,
    inflate: Decompress,
    buffer: Box<[u8]>,
    /// The member's CRC-32, and its inflated length (`total_len`).
    crc: crc32fast::Hasher,
    /// Header or trailer bytes split across chunks.
    gathered: Vec<u8>,
    members: u64,
    /// A trailer that did not match, told at the end: the caller checks first whether the bytes
    /// are the ones the host stored, and only then blames the file.
    damaged: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Header,
    Body,
    Trailer,
}

impl<W: Write> GzipStream<W> {
    pub fn new(inner: W) -> Self {
        Self::with_buffer(inner, INFLATE_BUFFER)
    }

    fn with_buffer(inner: W, buffer: usize) -> Self {
        Self {
            inner,
            part: Part::Header,
            inflate: Decompress::new(false),
            buffer: vec![0; buffer].into_boxed_slice(),
            crc: crc32fast::Hasher::new(),
            gathered: Vec::new(),
            members: 0,
            damaged: None,
        }
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Checks that the stream ended right after a member's trailer.
    pub fn finish(&self) -> io::Result<()> {
        if let Some(damaged) = &self.damaged {
            return Err(invalid(damaged.clone()));
        }
        match (self.part, self.gathered.is_empty(), self.members) {
            (Part::Header, true, 1..) => Ok(()),
            (Part::Header, true, 0) => Err(invalid("the file is empty".into())),
            _ => Err(invalid("the stream ends before the gzip trailer: the file is truncated".into())),
        }
    }

    /// Takes what it can of `input` for the part being read; returns the bytes it used.
    fn step(&mut self, input: &[u8]) -> io::Result<usize> {
        match self.part {
            Part::Header => self.header(input),
            Part::Body => self.body(input),
            Part::Trailer => self.trailer(input),
        }
    }

    fn header(&mut self, input: &[u8]) -> io::Result<usize> {
        let before = self.gathered.len();
        let wanted = input.len().min(HEADER_MAX - before);
        self.gathered.extend_from_slice(&input[..wanted]);
        match header_length(&self.gathered, self.members)? {
            Some(length) => {
                self.gathered.clear();
                self.part = Part::Body;
                Ok(length - before)
            }
            None if self.gathered.len() == HEADER_MAX => {
                Err(invalid(format!("the gzip header is longer than {HEADER_MAX} bytes")))
            }
            None => Ok(wanted),
        }
    }

    /// Inflates until `input` is used up or the member's deflate stream ends.
    fn body(&mut self, input: &[u8]) -> io::Result<usize> {
        let mut used = 0;
        loop {
            let (read, written) = (self.inflate.total_in(), self.inflate.total_out());
            let status = self
                .inflate
                .decompress(&input[used..], &mut self.buffer, FlushDecompress::None)
                .map_err(|e| invalid(format!("the deflate data is invalid: {e}")))?;
            used += (self.inflate.total_in() - read) as usize;
            let out = &self.buffer[..(self.inflate.total_out() - written) as usize];
            self.crc.update(out);
            self.inner.write_all(out)?;
            if status == Status::StreamEnd {
                self.part = Part::Trailer;
                return Ok(used);
            }
            // A full buffer may hold back more output; anything less means the input is used up.
            if out.len() < self.buffer.len() {
                return Ok(used);
            }
        }
    }

    fn trailer(&mut self, input: &[u8]) -> io::Result<usize> {
        let wanted = input.len().min(TRAILER - self.gathered.len());
        self.gathered.extend_from_slice(&input[..wanted]);
        if self.gathered.len() == TRAILER {
            if let Err(damaged) = self.check_trailer() {
                self.damaged.get_or_insert(damaged);
            }
            self.next_member();
        }
        Ok(wanted)
    }

    fn check_trailer(&self) -> Result<(), String> {
        let field = |at: usize| u32::from_le_bytes(self.gathered[at..at + 4].try_into().expect("4 bytes"));
        let (crc, length) = (field(0), field(4));
        let computed = self.crc.clone().finalize();
        // The trailer keeps the length modulo 2^32.
        let inflated = self.crc.total_len() as u32;
        if crc != computed {
            return Err(format!(
                "the gzip trailer's CRC-32 is {crc:08x} but the data's is {computed:08x}: the file is damaged"
            ));
        }
        if length != inflated {
            return Err(format!(
                "the gzip trailer says {length} bytes (mod 2^32) but {inflated} were inflated"
            ));
        }
        Ok(())
    }

    fn next_member(&mut self) {
        self.members += 1;
        self.part = Part::Header;
        self.gathered.clear();
        self.crc.reset();
        self.inflate.reset(false);
    }
}

impl<W: Write> Write for GzipStream<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut used = 0;
        while used < buf.len() {
            match self.step(&buf[used..])? {
                // Each part takes at least a byte of what it is given; anything else would spin.
                0 => return Err(invalid("the gzip stream stopped taking bytes".into())),
                taken => used += taken,
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const RESERVED: u8 = 0xe0;

/// The length of the member header at the start of `bytes`, or `None` if more bytes are needed.
/// `members` read so far only tailors the error: anything after the last member is not gzip.
fn header_length(bytes: &[u8], members: u64) -> io::Result<Option<usize>> {
    let not_gzip = |why: &str| match members {
        0 => invalid(format!("not gzip: {why}")),
        _ => invalid(format!("bytes after the last gzip member are not gzip: {why}")),
    };
    if !b"\x1f\x8b".starts_with(&bytes[..bytes.len().min(2)]) {
        return Err(not_gzip("no gzip magic bytes"));
    }
    let (Some(&method), Some(&flags)) = (bytes.get(2), bytes.get(3)) else { return Ok(None) };
    if method != 8 || flags & RESERVED != 0 {
        return Err(not_gzip("an unknown compression method or reserved flags"));
    }
    // The fixed part is 10 bytes; the extra field, if any, comes first, after a 2-byte length.
    let mut at = 10;
    if flags & FEXTRA != 0 {
        let Some(&[low, high]) = bytes.get(10..12) else { return Ok(None) };
        at = 12 + usize::from(u16::from_le_bytes([low, high]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let Some(end) = bytes.get(at..).and_then(|rest| memchr::memchr(0, rest)) else { return Ok(None) };
            at += end + 1;
        }
    }
    if flags & FHCRC != 0 {
        let Some(stored) = bytes.get(at..at + 2) else { return Ok(None) };
        if u16::from_le_bytes([stored[0], stored[1]]) != crc32fast::hash(&bytes[..at]) as u16 {
            return Err(not_gzip("the header's CRC does not match"));
        }
        at += 2;
    }
    Ok((bytes.len() >= at).then_some(at))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use flate2::{Compression, GzBuilder};

    use super::*;

    fn decode(bytes: &[u8], chunk: usize) -> io::Result<Vec<u8>> {
        decode_into(GzipStream::new(Vec::new()), bytes, chunk)
    }

    fn decode_into(mut stream: GzipStream<Vec<u8>>, bytes: &[u8], chunk: usize) -> io::Result<Vec<u8>> {
        for piece in bytes.chunks(chunk.max(1)) {
            stream.write_all(piece)?;
        }
        stream.finish()?;
        Ok(stream.inner)
    }

    fn gzip_with(builder: GzBuilder, data: &[u8]) -> Vec<u8> {
        let mut encoder = builder.write(Vec::new(), Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// Bytes that compress poorly, so the inflate buffer fills more than once.
    fn noise(length: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..length)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b"abcdefghij,\n\""[(state % 13) as usize]
            })
            .collect()
    }

    #[test]
    fn every_header_field_and_any_chunking_decode_to_the_same_bytes() {
        let data = noise(3 * INFLATE_BUFFER + 17);
        let plain = gzip_with(GzBuilder::new(), &data);
        let fields = gzip_with(
            GzBuilder::new().filename("export.csv").comment("c").extra(vec![1, 2, 3]).operating_system(3),
            &data,
        );
        // With nothing after it, a misread extra field's length would shift where the deflate data starts.
        let extra_only = gzip_with(GzBuilder::new().extra(vec![1, 2, 3]), &data);
        for gz in [&plain, &fields, &extra_only] {
            for chunk in [1, 9, 4096, gz.len()] {
                assert_eq!(decode(gz, chunk).unwrap(), data, "chunks of {chunk}");
            }
        }
    }

    #[test]
    fn output_held_back_when_the_input_runs_out_is_still_inflated() {
        // With a small buffer, the last bytes of input inflate to several buffers of zeros.
        let data = [noise(1000), vec![b'0'; 100_000]].concat();
        let gz = gzip_with(GzBuilder::new(), &data);
        for chunk in [gz.len(), 100] {
            assert_eq!(decode_into(GzipStream::with_buffer(Vec::new(), 64), &gz, chunk).unwrap(), data);
        }
    }

    #[test]
    fn a_header_crc_is_checked() {
        let mut gz = gzip_with(GzBuilder::new(), b"id\n1\n");
        // Set FHCRC and insert the header's CRC-16 after the 10 fixed bytes.
        gz[3] |= FHCRC;
        let good = (crc32fast::hash(&gz[..10]) as u16).to_le_bytes();
        let with = |stored: [u8; 2]| [&gz[..10], &stored, &gz[10..]].concat();
        assert_eq!(decode(&with(good), 3).unwrap(), b"id\n1\n");
        assert!(decode(&with([good[0] ^ 1, good[1]]), 3).is_err());
    }

    #[test]
    fn members_follow_one_another_and_nothing_else_may() {
        let (one, two) = (gzip_with(GzBuilder::new(), b"a\n"), gzip_with(GzBuilder::new(), b"b\n"));
        assert_eq!(decode(&[one.clone(), two].concat(), 5).unwrap(), b"a\nb\n");
        let error = decode(&[one.clone(), b"junk".to_vec()].concat(), 5).unwrap_err();
        assert!(error.to_string().contains("after the last gzip member"), "{error}");
        assert!(decode(&[one, vec![0x1f]].concat(), 5).is_err(), "half a header after the end");
    }

    #[test]
    fn damage_anywhere_is_an_error() {
        let data = noise(100_000);
        let gz = gzip_with(GzBuilder::new(), &data);
        let at = |offset: usize| {
            let mut damaged = gz.clone();
            damaged[offset] ^= 0x55;
            decode(&damaged, 4096)
        };
        assert!(at(gz.len() - 8).unwrap_err().to_string().contains("CRC-32"), "trailer CRC");
        assert!(at(gz.len() - 2).unwrap_err().to_string().contains("mod 2^32"), "trailer length");
        assert!(at(gz.len() / 2).is_err(), "deflate data");
        assert!(at(0).unwrap_err().to_string().starts_with("not gzip:"), "magic");
        assert!(at(2).is_err(), "method");
        for cut in [gz.len() - 1, gz.len() - 8, gz.len() / 2, 5] {
            let error = decode(&gz[..cut], 4096).unwrap_err();
            assert!(error.to_string().contains("truncated"), "cut at {cut}: {error}");
        }
        assert!(decode(b"", 1).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn a_flush_reaches_the_writer_inside() {
        let mut stream = GzipStream::new(io::BufWriter::new(Vec::new()));
        stream.write_all(&gzip_with(GzBuilder::new(), b"id\n1\n")).unwrap();
        stream.flush().unwrap();
        assert_eq!(stream.inner.get_ref(), b"id\n1\n");
    }

    #[test]
    fn a_long_name_in_the_header_is_read_past() {
        let gz = gzip_with(GzBuilder::new().filename("n".repeat(HEADER_MAX / 2)), b"id\n");
        assert_eq!(decode(&gz, 4096).unwrap(), b"id\n");
    }

    #[test]
    fn an_endless_header_is_refused() {
        let mut header = vec![0x1f, 0x8b, 8, FNAME, 0, 0, 0, 0, 0, 3];
        header.extend(std::iter::repeat_n(b'a', HEADER_MAX));
        let error = decode(&header, 1000).unwrap_err();
        assert!(error.to_string().contains("longer than"), "{error}");
    }
}
