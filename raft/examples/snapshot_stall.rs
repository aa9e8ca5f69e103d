//! How long Raft log flushes stall while a large snapshot file is written, with and without
//! write-behind ([`psubd_raft::write_behind`]).
//!
//! A probe thread appends 4 KiB to a log-like file and `fdatasync`s it every millisecond (what
//! the node's flusher does for a busy group); the main thread writes a snapshot-sized file
//! and fsyncs it, alternately the plain way (buffered writes, one fsync at the end) and
//! through `WriteBehind`. For each write it prints the probe's flush latencies during it.
//! Run on the disk the nodes use:
//!
//! `cargo run --release -p psubd-raft --example snapshot_stall -- [DIR] [MIB] [ROUNDS]`
//! (defaults: the system temp dir, 64 MiB, 3 rounds of each).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use psubd_raft::state::write_behind::WriteBehind;

/// Flush latencies recorded by the probe, in microseconds.
type Samples = Arc<Mutex<Vec<u64>>>;

fn probe(path: PathBuf, samples: Samples, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    let block = [7u8; 4096];
    let mut offset = 0u64;
    while !stop.load(Ordering::Relaxed) {
        file.write_all_at(&block, offset)?;
        offset += block.len() as u64;
        let started = Instant::now();
        file.sync_data()?;
        let micros = started.elapsed().as_micros() as u64;
        samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(micros);
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn write_snapshot(path: &Path, mib: usize, write_behind: bool) -> std::io::Result<Duration> {
    let started = Instant::now();
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let file = File::create(path)?;
    let file = if write_behind {
        let mut writer = BufWriter::with_capacity(1 << 20, WriteBehind::new(file));
        for _ in 0..mib {
            writer.write_all(&chunk)?;
        }
        writer
            .into_inner()
            .map_err(|e| e.into_error())?
            .into_inner()
    } else {
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        for _ in 0..mib {
            writer.write_all(&chunk)?;
        }
        writer.into_inner().map_err(|e| e.into_error())?
    };
    file.sync_all()?;
    let took = started.elapsed();
    std::fs::remove_file(path)?;
    Ok(took)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let samples: Samples = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let probe_thread = {
        let (path, samples, stop) = (dir.join("stall-probe.log"), samples.clone(), stop.clone());
        std::thread::spawn(move || probe(path, samples, stop))
    };
    println!(
        "snapshot file {mib} MiB in {}; probe: 4 KiB append + fdatasync every 1 ms",
        dir.display()
    );
    println!(
        "{:<14} {:>9} {:>8} {:>9} {:>9} {:>9}",
        "writer", "write ms", "probes", "p50 ms", "p99 ms", "max ms"
    );
    let mut worst = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (slot, write_behind) in [(0, false), (1, true)] {
            std::thread::sleep(Duration::from_millis(500));
            samples.lock().unwrap_or_else(|e| e.into_inner()).clear();
            let took = write_snapshot(&dir.join("stall-snapshot.tmp"), mib, write_behind)?;
            let mut during =
                std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
            during.sort_unstable();
            let max = percentile(&during, 1.0);
            worst[slot].push(max);
            println!(
                "{:<14} {:>9.0} {:>8} {:>9.2} {:>9.2} {:>9.2}",
                if write_behind {
                    "write-behind"
                } else {
                    "plain"
                },
                took.as_secs_f64() * 1000.0,
                during.len(),
                percentile(&during, 0.5),
                percentile(&during, 0.99),
                max
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    probe_thread
        .join()
        .map_err(|_| std::io::Error::other("probe thread panicked"))??;
    std::fs::remove_file(dir.join("stall-probe.log"))?;
    for (name, maxes) in ["plain", "write-behind"].iter().zip(worst.iter_mut()) {
        maxes.sort_by(f64::total_cmp);
        println!(
            "{name}: median of the per-write worst probe flush {:.2} ms",
            maxes[maxes.len() / 2]
        );
    }
    Ok(())
}
