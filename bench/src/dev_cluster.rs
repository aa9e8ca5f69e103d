//! `--dev`: a local cluster started through `psubd dev` in a temporary data dir.
//!
//! The bench runs its own executable with `dev` arguments (so the cluster is the very
//! build being measured) in a process group of its own, sends the launcher SIGTERM when
//! dropped (the launcher stops its nodes), and kills the whole group if it lingers.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Raft ports are this far above HTTP ports (docs/operations.md, `psubd dev`).
const RAFT_PORT_OFFSET: u16 = 1000;

/// How long the launcher gets to stop its nodes after SIGTERM before the group is killed
/// (nodes shut down gracefully within ~10 s).
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Bytes of the launcher's log shown when it fails.
const LOG_TAIL_BYTES: u64 = 4096;

/// The `psubd` binary beside this executable (both are built and installed together),
/// else `psubd` as the PATH finds it.
fn psubd_next_to_me() -> PathBuf {
    let name = format!("psubd{}", std::env::consts::EXE_SUFFIX);
    std::env::current_exe()
        .ok()
        .and_then(|me| me.parent().map(|dir| dir.join(&name)))
        .filter(|beside| beside.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A running `psubd dev` cluster, stopped on drop.
#[derive(Debug)]
pub struct DevCluster {
    child: Option<Child>,
    urls: Vec<String>,
    data_dir: PathBuf,
    /// Removes the data dir when dropped (after `Drop::drop` stopped the nodes), unless
    /// `--keep-data`. Held only for that.
    _temp: Option<tempfile::TempDir>,
    log_path: PathBuf,
}

impl DevCluster {
    /// Starts `nodes` nodes on HTTP ports `base_port..` (raft ports 1000 above) with data
    /// under a fresh temporary dir in `parent` (the system temp dir by default).
    ///
    /// # Errors
    ///
    /// A port in use, a data dir that cannot be made, or a launcher that cannot start.
    pub fn start(
        nodes: u16,
        base_port: u16,
        parent: Option<&Path>,
        keep_data: bool,
        psubd: Option<&Path>,
    ) -> anyhow::Result<Self> {
        check_ports(nodes, base_port)?;
        let parent = parent
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("failed to create {}", parent.display()))?;
        let temp = tempfile::Builder::new()
            .prefix("psubd-bench-")
            .tempdir_in(&parent)
            .with_context(|| format!("failed to create a data dir in {}", parent.display()))?;
        let root = temp.path().to_path_buf();
        let data_dir = root.join("data");
        let log_path = root.join("dev.log");
        let log = File::create(&log_path)
            .with_context(|| format!("failed to create {}", log_path.display()))?;
        let log_err = log.try_clone().context("failed to share the log file")?;
        let exe = psubd.map_or_else(psubd_next_to_me, Path::to_path_buf);
        let child = Command::new(&exe)
            .arg("dev")
            .arg("--nodes")
            .arg(nodes.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--base-port")
            .arg(base_port.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own group: Ctrl-C on the bench reaches the bench only, which then stops
            // the cluster in order; and the group can be killed as a whole.
            .process_group(0)
            .spawn()
            .with_context(|| format!("failed to start {} dev", exe.display()))?;
        let urls = (0..nodes)
            .map(|i| format!("http://127.0.0.1:{}", base_port + i))
            .collect();
        let temp = if keep_data {
            let kept = temp.keep();
            eprintln!("psubd-bench: --dev data kept in {}", kept.display());
            None
        } else {
            Some(temp)
        };
        Ok(DevCluster {
            child: Some(child),
            urls,
            data_dir,
            _temp: temp,
            log_path,
        })
    }

    /// The nodes' HTTP URLs.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Where the nodes keep their data (the disk the report describes).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Fails if the launcher has exited, with the tail of its log.
    ///
    /// # Errors
    ///
    /// The launcher is gone (its exit status and log tail are in the message).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "`psubd dev` exited with {status}; node logs are in {}, its own log ({}) ends with:\n{}",
                    self.data_dir.display(),
                    self.log_path.display(),
                    self.log_tail()
                );
            }
        }
        Ok(())
    }

    /// The last few KiB of the launcher's output.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
            let _ = f.read_to_string(&mut out);
        }
        out
    }

    /// Node processes (node id, pid): the launcher's children, named by their `--id`.
    pub fn node_pids(&self) -> Vec<(String, u32)> {
        let Some(parent) = self.child.as_ref().map(Child::id) else {
            return Vec::new();
        };
        let mut nodes = Vec::new();
        for pid in super::sampler::process_ids() {
            if parent_pid(pid) != Some(parent) {
                continue;
            }
            let id = node_id_of(pid).unwrap_or_else(|| format!("pid{pid}"));
            nodes.push((id, pid));
        }
        nodes.sort();
        nodes
    }

    /// Stops the cluster: SIGTERM to the launcher, then SIGKILL to its group after
    /// [`STOP_GRACE`]. Idempotent.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let pid = child.id() as libc::pid_t;
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                // The launcher is gone; make sure no node outlived it.
                signal(-pid, libc::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("psubd-bench: `psubd dev` did not stop within {STOP_GRACE:?}; killing it");
        signal(-pid, libc::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        // Stop before `temp` is dropped (field drops run after this), so the data dir is
        // removed only once no node writes to it.
        self.stop();
    }
}

/// Sends `sig` to a process (or, with a negative pid, a process group). A missing target
/// is not an error: it already stopped.
fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Fails early and clearly if a port the cluster needs is taken.
fn check_ports(nodes: u16, base_port: u16) -> anyhow::Result<()> {
    for i in 0..nodes {
        for port in [base_port + i, base_port + RAFT_PORT_OFFSET + i] {
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
                bail!("port {port} is in use: choose another --dev-base-port");
            }
        }
    }
    Ok(())
}

/// The parent pid from `/proc/<pid>/stat` (the field after the parenthesised name).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The `--id` argument of a node process.
fn node_id_of(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args = cmdline.split(|&b| b == 0);
    while let Some(a) = args.next() {
        if a == b"--id" {
            return args.next().map(|v| String::from_utf8_lossy(v).into_owned());
        }
        if let Some(v) = a.strip_prefix(b"--id=") {
            return Some(String::from_utf8_lossy(v).into_owned());
        }
    }
    None
}
