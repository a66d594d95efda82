//! `make bench` helper: writes one gzip CSV export file of about the asked size to disk, with
//! the simulator's generator (the same rows and gzip level 1 as the simulated file host).
//!
//! `bench_gen OUT_PATH TARGET_MIB` prints `{"path", "size", "rows"}` as JSON.

use std::io::Write;

use dealmachine_sim::CsvGz;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, out, target_mib] = args.as_slice() else {
        return Err("usage: bench_gen OUT_PATH TARGET_MIB".into());
    };
    let target = target_mib.parse::<u64>()? * 1024 * 1024;
    // Bytes per row at this level, from a sample; the file then takes as many rows as it needs.
    let sample_rows = 200_000;
    let sample = CsvGz { seed: 7, rows: sample_rows, level: 1 }.measure();
    let rows = target * sample_rows / sample.size;
    let spec = CsvGz { seed: 7, rows, level: 1 };
    let tmp = format!("{out}.part");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let mut size = 0u64;
    for chunk in spec.chunks() {
        size += chunk.len() as u64;
        file.write_all(&chunk)?;
    }
    file.flush()?;
    drop(file);
    std::fs::rename(&tmp, out)?;
    println!("{}", serde_json::json!({"path": out, "size": size, "rows": rows}));
    Ok(())
}
