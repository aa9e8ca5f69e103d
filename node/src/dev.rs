//! `psubd dev`: a local cluster of N node processes in one command.
//!
//! Each node is a real `psubd node` process (this same binary), so the dev cluster
//! behaves exactly like a deployed one. Logs go to `<data-dir>/node-<id>.log`.
//! Ctrl-C or SIGTERM stops every node gracefully (SIGTERM, then SIGKILL after a bound).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::process::{Child, Command};

/// Prints a status line. Unlike `println!`, never panics when stdout is closed (e.g.
/// `psubd dev | head`): the cluster must still stop cleanly.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `psubd dev` flags.
#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Directory holding every node's data (node N in <data-dir>/N).
    #[arg(long, default_value = "./data/dev")]
    pub data_dir: PathBuf,
    /// First HTTP port; node N listens on base+N-1 and its peer transport on base+1000+N-1.
    #[arg(long, default_value_t = 8081)]
    pub base_port: u16,
}

/// How long nodes get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(12);

/// How long `dev` waits for every node to answer /readyz before saying so.
const READY_WAIT: Duration = Duration::from_secs(30);

/// The node processes of a dev cluster.
pub struct DevCluster {
    children: Vec<Child>,
    /// Each node's HTTP base URL.
    pub urls: Vec<String>,
}

impl DevCluster {
    /// Spawns the node processes.
    ///
    /// # Errors
    /// When the data directory cannot be created or a process cannot be spawned.
    pub async fn start(args: &DevArgs) -> anyhow::Result<Self> {
        anyhow::ensure!(
            args.nodes >= 1 && args.nodes <= 9,
            "--nodes must be between 1 and 9"
        );
        let http_port = |n: u64| args.base_port as u64 + n - 1;
        let raft_port = |n: u64| args.base_port as u64 + 1000 + n - 1;
        anyhow::ensure!(
            raft_port(args.nodes) <= u16::MAX as u64,
            "--base-port is too high"
        );
        let peers = (1..=args.nodes)
            .map(|n| format!("{n}=127.0.0.1:{}", raft_port(n)))
            .collect::<Vec<_>>()
            .join(",");
        for n in 1..=args.nodes {
            for port in [http_port(n), raft_port(n)] {
                // Fail early and clearly when a port is taken: otherwise another process
                // answering on it could pass for one of our nodes.
                std::net::TcpListener::bind(("127.0.0.1", port as u16)).with_context(|| {
                    format!("port {port} on 127.0.0.1 is in use; pick another --base-port")
                })?;
            }
        }
        let exe = std::env::current_exe().context("locating the psubd binary")?;
        let secret = cluster_secret_file(&args.data_dir)?;
        let mut children = Vec::new();
        let mut urls = Vec::new();
        for n in 1..=args.nodes {
            let dir = args.data_dir.join(n.to_string());
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let log_path = args.data_dir.join(format!("node-{n}.log"));
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("opening {}", log_path.display()))?;
            let mut command = Command::new(&exe);
            // A node outlives a `dev` killed with SIGKILL (which no handler sees) unless
            // the kernel tells it: it then gets SIGTERM and stops gracefully, instead of
            // holding the ports and the data directory as an orphan.
            // SAFETY: the closure only calls prctl, which is async-signal-safe, between
            // fork and exec.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            // A dev cluster is open (no --auth) whatever the environment says.
            let child = command
                .env_remove("PSUBD_AUTH")
                .env_remove("PSUBD_ADMIN_KEY_FILE")
                .arg("node")
                .args(["--id", &n.to_string()])
                .args(["--http", &format!("127.0.0.1:{}", http_port(n))])
                .args(["--raft", &format!("127.0.0.1:{}", raft_port(n))])
                .args(["--peers", &peers])
                .arg("--data-dir")
                .arg(&dir)
                .arg("--cluster-secret-file")
                .arg(&secret)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("spawning node {n}"))?;
            children.push(child);
            urls.push(format!("http://127.0.0.1:{}", http_port(n)));
        }
        Ok(Self { children, urls })
    }

    /// Waits until every node answers `/readyz` 200 — and fails at once if one of our
    /// node processes exits meanwhile (a port taken, a bad data dir), so a foreign
    /// process on the same port is never mistaken for ours.
    ///
    /// # Errors
    /// When a node exits or is not ready within the bound.
    pub async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()?;
        let deadline = tokio::time::Instant::now() + within;
        for index in 0..self.urls.len() {
            loop {
                for (n, child) in self.children.iter_mut().enumerate() {
                    if let Some(status) = child.try_wait()? {
                        anyhow::bail!("node {} exited ({status}); see its log", n + 1);
                    }
                }
                let url = &self.urls[index];
                let ready = client
                    .get(format!("{url}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ready {
                    break;
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "{url} not ready within {within:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Stops every node: SIGTERM, then SIGKILL for any still running after the grace.
    pub async fn stop(mut self) {
        for child in &self.children {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) with a pid of a child we spawned and still own.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        for child in &mut self.children {
            if tokio::time::timeout(STOP_GRACE, child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

/// Runs `psubd dev` until Ctrl-C or SIGTERM.
///
/// # Errors
/// When the cluster cannot start.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    // The nodes inherit the environment, and `dev` checks them over plain HTTP.
    for tls in ["PSUBD_TLS_CERT", "PSUBD_TLS_KEY", "PSUBD_TLS_CLIENT_CA"] {
        anyhow::ensure!(
            std::env::var_os(tls).is_none(),
            "psubd dev runs its nodes over plain HTTP: unset {tls} (try HTTPS with `psubd node`)"
        );
    }
    let mut cluster = DevCluster::start(&args).await?;
    say!(
        "psubd dev: {} nodes, data and logs under {}",
        args.nodes,
        args.data_dir.display()
    );
    for (i, url) in cluster.urls.iter().enumerate() {
        say!("  node {}: {url}", i + 1);
    }
    // One listener for the whole run: a signal that arrives between two listeners is
    // lost (the nodes would be orphaned when the caller then kills `dev`).
    let stop = crate::signal::terminated();
    tokio::pin!(stop);
    tokio::select! {
        ready = cluster.wait_ready(READY_WAIT) => match ready {
            Ok(()) => say!("cluster ready (Ctrl-C to stop)"),
            Err(error) => {
                cluster.stop().await;
                anyhow::bail!("{error} (logs under {})", args.data_dir.display());
            }
        },
        _ = &mut stop => {
            cluster.stop().await;
            return Ok(());
        }
    }
    stop.await;
    say!("stopping...");
    cluster.stop().await;
    say!("stopped");
    Ok(())
}

/// The local cluster's secret: `<data-dir>/cluster-secret`, made (random, readable by the
/// owner only) the first time. The nodes are on loopback and could go without one, but a
/// dev cluster runs the peers' authentication as a deployed one does.
fn cluster_secret_file(data_dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("cluster-secret");
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            let bytes: [u8; 32] = rand::random();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            file.write_all(hex.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    }
    Ok(path)
}
