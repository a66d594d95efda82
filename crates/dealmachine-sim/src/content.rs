//! Export files: gzip CSV with realistic property columns, generated as a stream from a seed,
//! so a file of any size is the same bytes every time and is never held whole in memory.

use std::io::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use crc_fast::{CrcAlgorithm, Digest as CrcDigest};
use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};

const ROWS_PER_CHUNK: u64 = 512;

pub const HEADER: &str = "property_id,address,city,state,zip,county,owner_name,owner_type,property_type,\
bedrooms,bathrooms,sqft,year_built,estimated_value,equity_percent,last_sale_date,last_sale_price,notes\n";

const STREETS: &[&str] =
    &["Maple St", "Oak Ave", "Pine Rd", "Cedar Ln", "Elm Dr", "Lakeview Blvd", "Sunset Way"];
const CITIES: &[(&str, &str, &str, &str)] = &[
    ("Austin", "TX", "787", "Travis"),
    ("Columbus", "OH", "432", "Franklin"),
    ("Phoenix", "AZ", "850", "Maricopa"),
    ("Tampa", "FL", "336", "Hillsborough"),
    ("Charlotte", "NC", "282", "Mecklenburg"),
];
const SURNAMES: &[&str] = &["Smith", "Garcia", "Johnson", "Nguyen", "Williams", "Brown", "Martinez"];
const GIVEN: &[&str] = &["John", "Maria", "Wei", "Aisha", "Robert", "Linda", "Carlos"];
const TYPES: &[&str] = &["Single Family", "Condo", "Townhouse", "Multi Family", "Vacant Land"];

/// One CSV file, described by what generates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvGz {
    pub seed: u64,
    /// Data rows, after the header.
    pub rows: u64,
    /// gzip level 0 to 9; 0 stores the CSV uncompressed inside valid gzip, which is fast.
    pub level: u32,
}

/// Size and digests of a file's bytes, computed by generating it once: SHA-256 as the relay
/// reports it, CRC32C and MD5 as Google Cloud Storage's `x-goog-hash` does (base64, big-endian).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measured {
    pub size: u64,
    pub sha256: String,
    pub crc32c: String,
    pub md5: String,
}

impl Measured {
    pub fn of(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        let mut sha256 = Sha256::new();
        let mut crc32c = CrcDigest::new(CrcAlgorithm::Crc32Iscsi);
        let mut md5 = <md5::Md5 as md5::Digest>::new();
        let mut size = 0;
        for chunk in chunks {
            size += chunk.len() as u64;
            sha256.update(&chunk);
            crc32c.update(&chunk);
            md5::Digest::update(&mut md5, &chunk);
        }
        Self {
            size,
            sha256: format!("{:x}", sha256.finalize()),
            crc32c: BASE64.encode((crc32c.finalize() as u32).to_be_bytes()),
            md5: BASE64.encode(md5::Digest::finalize(md5)),
        }
    }
}

impl CsvGz {
    pub fn chunks(&self) -> Chunks {
        self.chunks_stamped(0)
    }

    /// The same CSV with `mtime` in the gzip header: other bytes of the same size and content,
    /// as a re-uploaded object would be.
    pub fn chunks_stamped(&self, mtime: u32) -> Chunks {
        Chunks {
            spec: *self,
            encoder: Some(GzBuilder::new().mtime(mtime).write(Vec::new(), Compression::new(self.level))),
            next_row: 0,
            header_done: false,
        }
    }

    pub fn measure(&self) -> Measured {
        Measured::of(self.chunks())
    }
}

/// The file's bytes in pieces of a few dozen KiB.
pub struct Chunks {
    spec: CsvGz,
    encoder: Option<GzEncoder<Vec<u8>>>,
    next_row: u64,
    header_done: bool,
}

impl Iterator for Chunks {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        loop {
            let encoder = self.encoder.as_mut()?;
            if !self.header_done {
                encoder.write_all(HEADER.as_bytes()).expect("writing to memory");
                self.header_done = true;
            }
            let end = (self.next_row + ROWS_PER_CHUNK).min(self.spec.rows);
            let mut text = String::with_capacity(160 * ROWS_PER_CHUNK as usize);
            for row in self.next_row..end {
                push_row(&mut text, self.spec.seed, row);
            }
            self.next_row = end;
            encoder.write_all(text.as_bytes()).expect("writing to memory");
            let out = if end == self.spec.rows {
                self.encoder.take().expect("present").finish().expect("writing to memory")
            } else {
                std::mem::take(encoder.get_mut())
            };
            if !out.is_empty() {
                return Some(Bytes::from(out));
            }
        }
    }
}

fn mix(seed: u64, row: u64, salt: u64) -> u64 {
    // splitmix64: cheap, and the same on every machine.
    let mut z = seed ^ row.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn push_row(out: &mut String, seed: u64, row: u64) {
    use std::fmt::Write;
    let r = |salt: u64, n: u64| mix(seed, row, salt) % n;
    let (city, state, zip3, county) = CITIES[r(1, CITIES.len() as u64) as usize];
    let value = 90_000 + r(2, 900_000);
    let owner_is_company = r(3, 5) == 0;
    let owner = if owner_is_company {
        format!("\"{} Holdings, LLC\"", SURNAMES[r(4, 7) as usize])
    } else {
        format!("\"{}, {}\"", SURNAMES[r(4, 7) as usize], GIVEN[r(5, 7) as usize])
    };
    // Now and then a note with a quoted line break, as real CRM exports have.
    let notes = match r(6, 50) {
        0 => "\"vacant; \"\"needs work\"\"\nsee photos\"",
        1 => "\"absentee owner, out of state\"",
        _ => "",
    };
    let _ = writeln!(
        out,
        "P{seed:x}-{row},{} {},{city},{state},{zip3}{:02},{county},{owner},{},{},{},{}.{},{},{},{value},{},20{:02}-{:02}-{:02},{},{notes}",
        100 + r(7, 9800),
        STREETS[r(8, STREETS.len() as u64) as usize],
        r(9, 100),
        if owner_is_company { "Company" } else { "Individual" },
        TYPES[r(10, TYPES.len() as u64) as usize],
        1 + r(11, 5),
        1 + r(12, 3),
        5 * r(13, 2),
        700 + r(14, 3300),
        1950 + r(15, 74),
        r(16, 100),
        r(17, 24),
        1 + r(18, 12),
        1 + r(19, 28),
        value * (50 + r(20, 50)) / 100,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    #[test]
    fn files_are_valid_gzip_csv_and_the_same_every_time() {
        let spec = CsvGz { seed: 7, rows: 2000, level: 6 };
        let bytes: Vec<u8> = spec.chunks().flat_map(|c| c.to_vec()).collect();
        assert_eq!(spec.measure().size, bytes.len() as u64);
        assert_eq!(spec.measure(), spec.measure());
        let mut text = String::new();
        GzDecoder::new(&bytes[..]).read_to_string(&mut text).unwrap();
        assert!(text.starts_with("property_id,"));
        assert!(text.lines().count() > 2000, "quoted line breaks add physical lines");
    }

    #[test]
    fn an_empty_file_still_has_its_header() {
        let spec = CsvGz { seed: 1, rows: 0, level: 0 };
        assert!(spec.measure().size > HEADER.len() as u64);
    }
}
