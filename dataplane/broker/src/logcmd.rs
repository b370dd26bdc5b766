//! `ferrolog log dump` and `ferrolog log verify`.

use ferrolog_storage::inspect::{find_log_dirs, inspect_log, inspect_log_records, LogReport};
use std::path::Path;
use std::process::ExitCode;

const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

fn reports(dir: &Path, records: bool) -> Result<Vec<LogReport>, String> {
    let dirs = find_log_dirs(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if dirs.is_empty() {
        return Err(format!("{}: no log segments found", dir.display()));
    }
    dirs.iter()
        .map(|d| {
            let r = if records {
                inspect_log_records(d)
            } else {
                inspect_log(d)
            };
            r.map_err(|e| format!("{}: {e}", d.display()))
        })
        .collect()
}

pub fn dump(dir: &Path, records: bool) -> ExitCode {
    let reports = match reports(dir, records) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferrolog log dump: {e}");
            return ExitCode::from(2);
        }
    };
    for r in &reports {
        println!("log {}", r.dir.display());
        for s in &r.segments {
            let index = s.index_entries.map_or("absent".to_string(), |n| n.to_string());
            println!(
                "  segment {} base={} bytes={} batches={} index_entries={} padding={}",
                s.path
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default(),
                s.base,
                s.file_bytes,
                s.batches.len(),
                index,
                s.padding_bytes
            );
            for b in &s.batches {
                let codec = CODECS.get(b.compression as usize).copied().unwrap_or("unknown");
                println!(
                    "    offsets={}..={} position={} bytes={} records={} max_timestamp={} codec={} crc32c={:08x} crc={}",
                    b.base_offset,
                    b.last_offset,
                    b.position,
                    b.bytes,
                    b.records,
                    b.max_timestamp,
                    codec,
                    b.crc,
                    if b.crc_ok { "ok" } else { "BAD" }
                );
                match &b.record_list {
                    None => {}
                    Some(Err(e)) => println!("      records unreadable: {e}"),
                    Some(Ok(list)) => {
                        for r in list {
                            let key = r.key.as_ref().map_or("null".to_string(), |k| {
                                format!("{:?}", String::from_utf8_lossy(k))
                            });
                            match r.value_len {
                                Some(len) => println!(
                                    "      record offset={} key={key} value_bytes={len} value_crc32c={:08x}",
                                    r.offset, r.value_crc
                                ),
                                None => println!("      record offset={} key={key} value=null", r.offset),
                            }
                        }
                    }
                }
            }
        }
        for p in &r.problems {
            println!("  CORRUPT {p}");
        }
    }
    if reports.iter().any(|r| !r.problems.is_empty()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

pub fn verify(dir: &Path) -> ExitCode {
    let reports = match reports(dir, false) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferrolog log verify: {e}");
            return ExitCode::from(2);
        }
    };
    let mut bad = false;
    for r in &reports {
        if r.problems.is_empty() {
            let range = r
                .offset_range()
                .map_or("empty".to_string(), |(a, b)| format!("offsets {a}..{b}"));
            println!(
                "OK {}: {} segments, {} batches, {range}",
                r.dir.display(),
                r.segments.len(),
                r.batch_count()
            );
        } else {
            bad = true;
            for p in &r.problems {
                println!("CORRUPT {p}");
            }
        }
    }
    if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
