//! `--dev`: a local cluster started through `psubd dev` in a temporary data dir.
//!
//! The bench runs its own executable with `dev` arguments (so the cluster is the very
//! build being measured) in a process group of its own, sends the launcher SIGTERM when
//! dropped (the launcher stops its nodes), and kills the whole group if it lingers. The
//! process handling, the port scheme and the port check are `psubd-launch`'s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use psubd_launch::{binary, logs, ports, DevPorts, Launch, Layout, Process};

/// How long the launcher gets to stop its nodes after SIGTERM before the group is killed
/// (nodes shut down gracefully within ~10 s).
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Bytes of the launcher's log shown when it fails.
const LOG_TAIL_BYTES: u64 = 4096;

/// The `psubd` binary beside this executable (both are built and installed together),
/// else `psubd` as the PATH finds it.
fn psubd_next_to_me() -> PathBuf {
    binary::beside_current_exe(0)
        .filter(|beside| beside.is_file())
        .unwrap_or_else(|| PathBuf::from(binary::file_name()))
}

/// A running `psubd dev` cluster, stopped on drop.
#[derive(Debug)]
pub struct DevCluster {
    launcher: Option<Process>,
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
        auth: bool,
    ) -> anyhow::Result<Self> {
        let Some(dev_ports) = DevPorts::new(base_port, nodes) else {
            bail!("--dev-nodes {nodes} from --dev-base-port {base_port} passes port 65535");
        };
        if let Some((port, _)) = ports::first_taken(dev_ports.all()) {
            bail!("port {port} is in use: choose another --dev-base-port");
        }
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
        let exe = psubd.map_or_else(psubd_next_to_me, Path::to_path_buf);
        let launcher = Launch::new(&exe)
            .args(["dev", "--nodes", &nodes.to_string(), "--data-dir"])
            .args([&data_dir])
            .args(["--base-port", &base_port.to_string()])
            .args(auth.then_some("--auth"))
            .log_to(&log_path)
            // Its own group: Ctrl-C on the bench reaches the bench only, which then stops
            // the cluster in order; and the group can be killed as a whole.
            .own_group()
            .spawn()
            .with_context(|| format!("failed to start {} dev", exe.display()))?;
        let urls = dev_ports.ids().map(|id| dev_ports.url(id)).collect();
        let temp = if keep_data {
            let kept = temp.keep();
            eprintln!("psubd-bench: --dev data kept in {}", kept.display());
            None
        } else {
            Some(temp)
        };
        Ok(DevCluster {
            launcher: Some(launcher),
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

    /// The admin key `psubd dev --auth` made (read it once the cluster is ready).
    ///
    /// # Errors
    ///
    /// The file cannot be read.
    pub fn admin_key(&self) -> anyhow::Result<String> {
        let path = Layout::new(&self.data_dir).admin_key();
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "failed to read the dev cluster's admin key {}",
                path.display()
            )
        })
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
        if let Some(launcher) = self.launcher.as_mut() {
            if let Ok(Some(status)) = launcher.try_exit() {
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
        logs::tail_bytes(&self.log_path, LOG_TAIL_BYTES)
    }

    /// Node processes (node id, pid): the launcher's children, named by their `--id`.
    pub fn node_pids(&self) -> Vec<(String, u32)> {
        let Some(parent) = self.launcher.as_ref().map(Process::pid) else {
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
    /// [`STOP_GRACE`] (and to any node that outlived it). Idempotent.
    fn stop(&mut self) {
        let Some(mut launcher) = self.launcher.take() else {
            return;
        };
        match launcher.stop_blocking(STOP_GRACE) {
            Ok(stopped) if !stopped.graceful => {
                eprintln!("psubd-bench: `psubd dev` did not stop within {STOP_GRACE:?}; killed it")
            }
            Ok(_) => {}
            // Dropping the handle kills and reaps the group.
            Err(e) => eprintln!("psubd-bench: stopping `psubd dev`: {e}"),
        }
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        // Stop before `temp` is dropped (field drops run after this), so the data dir is
        // removed only once no node writes to it.
        self.stop();
    }
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
