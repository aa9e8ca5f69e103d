//! The machine a report was measured on: cores, memory, the disk under the data dir
//! (with a quick fsync probe, since acknowledged writes wait for fsync) and the build.
//!
//! Everything here is best effort: a field that cannot be read is left out, never an
//! error, because a missing disk model must not cost a benchmark run.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use super::latency::Latency;

/// fsyncs in the disk probe: enough for a stable median, short enough to be free.
const FSYNC_PROBES: u32 = 50;

/// The machine.
#[derive(Debug, Clone, Serialize)]
pub struct Hardware {
    /// Logical CPUs available to this process.
    pub cores: usize,
    /// CPU model name from `/proc/cpuinfo`.
    pub cpu_model: Option<String>,
    /// Total memory, bytes.
    pub memory_bytes: Option<u64>,
    /// Kernel release.
    pub kernel: Option<String>,
    /// The disk under the nodes' data dir, when known.
    pub disk: Option<Disk>,
}

/// A disk as seen from a path on it.
#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    /// The path it was resolved from.
    pub path: PathBuf,
    /// Mount point holding the path.
    pub mount_point: Option<String>,
    /// Mounted device (e.g. `/dev/nvme0n1p2`, `overlay`).
    pub device: Option<String>,
    /// File system type.
    pub fs_type: Option<String>,
    /// Whether the kernel reports it as rotational (spinning).
    pub rotational: Option<bool>,
    /// Device model.
    pub model: Option<String>,
    /// Median latency of a 4 KiB write + fdatasync in that directory, µs.
    pub fsync_4k_p50_us: Option<u64>,
    /// 99th percentile of the same, µs.
    pub fsync_4k_p99_us: Option<u64>,
}

/// The build being measured.
#[derive(Debug, Clone, Serialize)]
pub struct Build {
    /// Package version.
    pub version: &'static str,
    /// `release` or `debug` (debug figures are not comparable).
    pub profile: &'static str,
    /// `git rev-parse HEAD` of the working directory, if it is a checkout.
    pub git_commit: Option<String>,
    /// Whether tracked files differ from that commit.
    pub git_dirty: Option<bool>,
}

/// Probes the machine; `data_dir` is where the nodes write (it may not exist yet: its
/// nearest existing ancestor is used).
pub fn probe(data_dir: Option<&Path>) -> Hardware {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Hardware {
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        cpu_model: cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string()),
        memory_bytes: meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib * 1024),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_string()),
        disk: data_dir.and_then(existing_ancestor).map(|p| disk_of(&p)),
    }
}

/// The build: version, profile and git commit of the current directory.
pub fn build() -> Build {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let git_commit = git(&["rev-parse", "HEAD"]);
    let git_dirty = git_commit
        .as_ref()
        .and_then(|_| git(&["status", "--porcelain", "--untracked-files=no"]))
        .map(|s| !s.is_empty());
    Build {
        version: env!("CARGO_PKG_VERSION"),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        git_commit,
        git_dirty,
    }
}

fn existing_ancestor(p: &Path) -> Option<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(p)
    };
    abs.ancestors()
        .find(|a| a.exists())
        .and_then(|a| a.canonicalize().ok())
}

fn disk_of(path: &Path) -> Disk {
    let mount = mount_of(path);
    let (mount_point, device, fs_type) = match mount {
        Some((m, d, f)) => (Some(m), Some(d), Some(f)),
        None => (None, None, None),
    };
    let block = device.as_deref().and_then(block_device);
    let (p50, p99) = fsync_probe(path);
    Disk {
        path: path.to_path_buf(),
        mount_point,
        rotational: block
            .as_ref()
            .and_then(|b| read_trim(&format!("/sys/block/{b}/queue/rotational")))
            .map(|v| v == "1"),
        model: block
            .as_ref()
            .and_then(|b| read_trim(&format!("/sys/block/{b}/device/model"))),
        device,
        fs_type,
        fsync_4k_p50_us: p50,
        fsync_4k_p99_us: p99,
    }
}

/// (mount point, source, fs type) of the mount holding `path`, from mountinfo.
fn mount_of(path: &Path) -> Option<(String, String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(String, String, String)> = None;
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split(' ');
        let (Some(mount_point), Some(fs_type), Some(source)) =
            (left.split(' ').nth(4), right.next(), right.next())
        else {
            continue;
        };
        let mount_point = mount_point.replace("\\040", " ");
        let (fs_type, source) = (fs_type.to_string(), source.to_string());
        if path.starts_with(&mount_point)
            && best.as_ref().is_none_or(|b| mount_point.len() >= b.0.len())
        {
            best = Some((mount_point, source, fs_type));
        }
    }
    best
}

/// The whole-disk name in `/sys/block` for a `/dev/...` source (partitions and
/// device-mapper names resolved), if there is one.
fn block_device(source: &str) -> Option<String> {
    let dev = Path::new(source).canonicalize().ok()?;
    let name = dev.strip_prefix("/dev").ok()?.to_str()?.to_string();
    let class = Path::new("/sys/class/block").join(&name);
    if !class.exists() {
        return None;
    }
    if class.join("partition").exists() {
        let real = class.canonicalize().ok()?;
        return real.parent()?.file_name()?.to_str().map(str::to_string);
    }
    Some(name)
}

fn read_trim(path: &str) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Times 4 KiB write + fdatasync in `dir`, the cost every acknowledged write pays.
fn fsync_probe(dir: &Path) -> (Option<u64>, Option<u64>) {
    let file = dir.join(format!(".psubd-bench-fsync-{}", std::process::id()));
    let result = (|| -> std::io::Result<Latency> {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&file)?;
        let block = [0x5au8; 4096];
        let mut lat = Latency::new();
        for _ in 0..FSYNC_PROBES {
            let t = Instant::now();
            f.write_all(&block)?;
            f.sync_data()?;
            lat.record(t.elapsed());
        }
        Ok(lat)
    })();
    let _ = std::fs::remove_file(&file);
    match result {
        Ok(lat) => {
            let s = lat.summary();
            (Some(s.p50_us), Some(s.p99_us))
        }
        Err(_) => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_a_temp_dir() {
        let dir = tempfile::tempdir().unwrap();
        let hw = probe(Some(&dir.path().join("not-yet-created")));
        assert!(hw.cores >= 1);
        let disk = hw.disk.unwrap();
        assert_eq!(disk.path, dir.path().canonicalize().unwrap());
        assert!(disk.fs_type.is_some());
        assert!(disk.fsync_4k_p50_us.is_some());
    }
}
