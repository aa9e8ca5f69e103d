//! `psubd dev`: a local cluster of N node processes in one command.
//!
//! Each node is a real `psubd node` process (this same binary), so the dev cluster
//! behaves exactly like a deployed one. Logs go to `<data-dir>/node-<id>.log`.
//! Ctrl-C or SIGTERM stops every node gracefully (SIGTERM, then SIGKILL after a bound).
//! Starting, watching and stopping the processes is `psubd-launch`'s; what is `dev`'s own
//! is its flags, its fixed ports and its console output.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use psubd_launch::ready::http_ready;
use psubd_launch::{peers, ports, secret, DevPorts, Layout, NodeCommand, NodeSet};

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
    /// Directory holding every node's data (node N in DATA_DIR/N).
    #[arg(long, default_value = "./data/dev")]
    pub data_dir: PathBuf,
    /// First HTTP port; node N listens on base+N-1 and its peer transport on base+1000+N-1.
    #[arg(long, default_value_t = 8081)]
    pub base_port: u16,
    /// Require API keys (each node runs with --auth): the key of the built-in `admin`
    /// principal is made in DATA_DIR/admin-key the first time.
    #[arg(long)]
    pub auth: bool,
}

/// How long nodes get to stop after SIGTERM before they are killed: a node may spend up
/// to 6 s finishing a leader-balance move, 5 s handing its leaderships over, 8 s
/// (`--shutdown-timeout-ms`) draining and 2 s saying goodbye to its peers.
const STOP_GRACE: Duration = Duration::from_secs(25);

/// How long `dev` waits for every node to answer /readyz before saying so.
const READY_WAIT: Duration = Duration::from_secs(30);

/// The node processes of a dev cluster.
pub struct DevCluster {
    nodes: NodeSet,
    /// Each node's HTTP base URL.
    pub urls: Vec<String>,
    /// The admin key file, with `--auth`.
    pub admin_key: Option<PathBuf>,
}

impl DevCluster {
    /// Spawns the node processes.
    ///
    /// # Errors
    /// When a port is taken, the data directory or the cluster secret cannot be made, or
    /// a process cannot be spawned.
    pub async fn start(args: &DevArgs) -> anyhow::Result<Self> {
        anyhow::ensure!(
            args.nodes >= 1 && args.nodes <= 9,
            "--nodes must be between 1 and 9"
        );
        let dev_ports = u16::try_from(args.nodes)
            .ok()
            .and_then(|n| DevPorts::new(args.base_port, n))
            .context("--base-port is too high")?;
        // Fail early and clearly when a port is taken: otherwise another process
        // answering on it could pass for one of our nodes.
        if let Some((port, e)) = ports::first_taken(dev_ports.all()) {
            return Err(e).with_context(|| {
                format!("port {port} on 127.0.0.1 is in use; pick another --base-port")
            });
        }
        let exe = std::env::current_exe().context("locating the psubd binary")?;
        let layout = Layout::new(&args.data_dir);
        // The nodes are on loopback and could go without a secret, but a dev cluster runs
        // the peers' authentication as a deployed one does.
        let secret = layout.secret();
        secret::ensure(&secret).with_context(|| format!("creating {}", secret.display()))?;
        let admin_key = layout.admin_key();
        if args.auth {
            secret::ensure_admin_key(&admin_key)
                .with_context(|| format!("creating {}", admin_key.display()))?;
        }
        let places = dev_ports.places(&layout);
        let peers = peers(&places);
        let commands = places
            .into_iter()
            .map(|place| {
                let mut command = NodeCommand::new(&exe, place, peers.clone());
                command.secret_file = Some(secret.clone());
                // A node outlives a `dev` killed with SIGKILL (which no handler sees)
                // unless the kernel tells it: it then gets SIGTERM and stops gracefully,
                // instead of holding the ports and the data directory as an orphan.
                command.death_signal = Some(libc::SIGTERM);
                // Authentication is --auth's to decide, whatever the environment says.
                command.env_removed = vec!["PSUBD_AUTH".into(), "PSUBD_ADMIN_KEY_FILE".into()];
                if args.auth {
                    command.args.extend([
                        "--auth".into(),
                        "--admin-key-file".into(),
                        admin_key.clone().into_os_string(),
                    ]);
                }
                command
            })
            .collect();
        let mut nodes = NodeSet::new(commands);
        if let Err((id, e)) = nodes.start_all() {
            return Err(e).with_context(|| format!("spawning node {id}"));
        }
        let urls = dev_ports.ids().map(|id| dev_ports.url(id)).collect();
        Ok(Self {
            nodes,
            urls,
            admin_key: args.auth.then_some(admin_key),
        })
    }

    /// Waits until every node answers `/readyz` 200 — and fails at once if one of our
    /// node processes exits meanwhile (a port taken, a bad data dir), so a foreign
    /// process on the same port is never mistaken for ours.
    ///
    /// # Errors
    /// When a node exits or is not ready within the bound.
    pub async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let ids = self.nodes.ids();
        let addrs: Vec<_> = ids
            .iter()
            .map(|&id| (id, self.nodes.command(id).place.http))
            .collect();
        let addrs = &addrs;
        let ready = self
            .nodes
            .wait_ready(&ids, within, |id| async move {
                match addrs.iter().find(|(i, _)| *i == id) {
                    Some((_, addr)) => http_ready(*addr).await,
                    None => false,
                }
            })
            .await;
        ready.map_err(|e| match e {
            psubd_launch::NotReady::Exited(id, status) => {
                anyhow::anyhow!("node {id} exited ({status}); see its log")
            }
            psubd_launch::NotReady::Timeout(pending) => {
                let urls: Vec<&str> = pending
                    .iter()
                    .filter_map(|&id| self.urls.get((id - 1) as usize).map(String::as_str))
                    .collect();
                anyhow::anyhow!("{} not ready within {within:?}", urls.join(", "))
            }
            other => anyhow::anyhow!("{other}"),
        })
    }

    /// Stops every node: SIGTERM, then SIGKILL for any still running after the grace.
    pub async fn stop(mut self) {
        // A node that could not be told or reaped is killed when `nodes` drops.
        let _ = self.nodes.stop_all(STOP_GRACE).await;
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
    if let Some(admin_key) = &cluster.admin_key {
        say!(
            "  API keys required: the admin key is in {}",
            admin_key.display()
        );
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
