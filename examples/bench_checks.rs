//! `make bench` helper: what each check costs on its own, in CPU seconds for one file read
//! from the page cache, one pass per check, on one thread, with the relay's own code and crates.
//!
//! `bench_checks PATH` prints one JSON line: the CPU seconds of reading the file alone, and of
//! reading it through each check (SHA-256, CRC64NVME, CRC32C, inflate to the gzip trailer, and
//! inflate with the CSV rows counted).

#[path = "support/cpu.rs"]
mod cpu;

use std::io::Read;

use crc_fast::{CrcAlgorithm, Digest as CrcDigest};
use export_relay::integrity::Content;
use sha2::{Digest, Sha256};

const CHUNK: usize = 1 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: bench_checks PATH")?;
    let read_only = pass(&path, &mut |_| {})?;
    let mut sha = Sha256::new();
    let sha256 = pass(&path, &mut |b| sha.update(b))?;
    let mut crc64 = CrcDigest::new(CrcAlgorithm::Crc64Nvme);
    let crc64nvme = pass(&path, &mut |b| crc64.update(b))?;
    let mut crc32 = CrcDigest::new(CrcAlgorithm::Crc32Iscsi);
    let crc32c = pass(&path, &mut |b| crc32.update(b))?;
    let (inflate, inflated) = content(&path, "x.gz")?;
    let (inflate_and_rows, rows) = content(&path, "x.csv.gz")?;
    std::hint::black_box((sha.finalize(), crc64.finalize(), crc32.finalize(), inflated));
    println!(
        "{}",
        serde_json::json!({
            "read_only": read_only, "sha256": sha256, "crc64nvme": crc64nvme, "crc32c": crc32c,
            "inflate": inflate, "inflate_and_rows": inflate_and_rows, "rows": rows,
        })
    );
    Ok(())
}

/// Reads the file at `path` in chunks through `check`; the CPU seconds it took.
fn pass(path: &str, check: &mut dyn FnMut(&[u8])) -> std::io::Result<f64> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; CHUNK];
    let before = cpu::seconds();
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(cpu::seconds() - before);
        }
        check(&buf[..n]);
    }
}

/// One pass through the content checks the relay picks for `name`; the rows it counted.
fn content(path: &str, name: &str) -> Result<(f64, Option<u64>), Box<dyn std::error::Error>> {
    let mut checks = Content::for_file(name);
    let mut failed = None;
    let seconds = pass(path, &mut |b| {
        if let Err(e) = checks.update(b) {
            failed.get_or_insert(e);
        }
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok((seconds, checks.finish()?))
}
