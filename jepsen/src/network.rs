//! The network the nodes live on: one network namespace per node, joined by veth pairs to
//! a bridge in a control namespace, plus the nftables rules that cut or thin it.
//!
//! All addresses exist only inside those namespaces: the veth ends are created directly
//! in their namespaces (`ip link add ... netns A type veth peer ... netns B`), so nothing
//! is ever added to the host's namespace. The harness's own HTTP client talks to the
//! nodes from the control namespace (see [`Namespaces::enter_control`]).
//!
//! Faults are nftables rules in a table of each node's namespace, on the input hook,
//! matching the *peer* addresses only: the harness (at the control address) can always
//! reach every node, so a minority node's answers (503) are observed rather than hidden.

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use tracing::{info, warn};

use crate::error::JepsenError;

/// Prefix of every namespace this harness creates; followed by the harness pid, so
/// leftovers of a dead run can be recognised (see [`remove_stale`]).
pub const NS_PREFIX: &str = "psj";

/// The /24 the namespaces use. Node `i` (1-based) is `.i`, the control bridge `.254`.
/// Private, but no packet to it can leave the namespaces: the host's namespace has no
/// route to it, and the harness binds its client to the control address.
const SUBNET: [u8; 3] = [10, 77, 0];

/// Name of the nftables table the harness owns inside each node namespace.
const TABLE: &str = "psubd_jepsen";

/// What a node's input hook drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropRule {
    /// Every packet from these peers.
    All(Vec<usize>),
    /// `percent`% of packets from these peers, drawn at random per packet.
    Random {
        /// The peers (0-based node indexes).
        from: Vec<usize>,
        /// Share dropped, 1..=100.
        percent: u8,
    },
}

/// Namespaces for `n` nodes and a control namespace with the bridge.
#[derive(Debug)]
pub struct Namespaces {
    control: String,
    nodes: Vec<String>,
    /// False once torn down, so teardown runs once.
    live: bool,
}

impl Namespaces {
    /// Creates the namespaces, the bridge, the veth pairs and an empty nftables table in
    /// each node namespace. On any failure, what was created is removed again.
    ///
    /// # Errors
    /// `NamespacesUnavailable` when `ip netns add` or veth/bridge creation is refused
    /// (the caller falls back to loopback); `Command` for later failures.
    pub fn setup(n: usize) -> Result<Self, JepsenError> {
        remove_stale();
        let prefix = format!("{NS_PREFIX}{}", std::process::id());
        let mut ns = Namespaces {
            control: format!("{prefix}-ctl"),
            nodes: (1..=n).map(|i| format!("{prefix}-n{i}")).collect(),
            live: true,
        };
        if let Err(e) = ns.build() {
            ns.teardown();
            return Err(e);
        }
        info!(control = %ns.control, nodes = n, "network namespaces ready");
        Ok(ns)
    }

    fn build(&mut self) -> Result<(), JepsenError> {
        run("ip", &["netns", "add", &self.control], None).map_err(unavailable)?;
        for name in &self.nodes {
            run("ip", &["netns", "add", name], None).map_err(unavailable)?;
        }
        let ctl = self.control.clone();
        self.exec(&ctl, "ip", &["link", "set", "lo", "up"])?;
        self.exec(&ctl, "ip", &["link", "add", "br0", "type", "bridge"])
            .map_err(unavailable)?;
        for (i, name) in self.nodes.iter().enumerate() {
            let bridge_end = format!("vn{}", i + 1);
            run(
                "ip",
                &[
                    "link",
                    "add",
                    "name",
                    "eth0",
                    "netns",
                    name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &bridge_end,
                    "netns",
                    &ctl,
                ],
                None,
            )
            .map_err(unavailable)?;
            self.exec(&ctl, "ip", &["link", "set", &bridge_end, "master", "br0"])?;
            self.exec(&ctl, "ip", &["link", "set", &bridge_end, "up"])?;
            let addr = format!("{}/24", node_ip(i));
            self.exec(name, "ip", &["link", "set", "lo", "up"])?;
            self.exec(name, "ip", &["addr", "add", &addr, "dev", "eth0"])?;
            self.exec(name, "ip", &["link", "set", "eth0", "up"])?;
            let script = format!(
                "add table inet {TABLE}\nadd chain inet {TABLE} input {{ type filter hook input priority 0; policy accept; }}\n"
            );
            self.nft(i, &script).map_err(unavailable)?;
        }
        let ctl_addr = format!("{}/24", control_ip());
        self.exec(&ctl, "ip", &["addr", "add", &ctl_addr, "dev", "br0"])?;
        self.exec(&ctl, "ip", &["link", "set", "br0", "up"])?;
        Ok(())
    }

    /// Runs a command inside namespace `ns`.
    fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Result<String, JepsenError> {
        let mut full = vec!["netns", "exec", ns, program];
        full.extend_from_slice(args);
        run("ip", &full, None)
    }

    fn nft(&self, node: usize, script: &str) -> Result<String, JepsenError> {
        let name = self
            .nodes
            .get(node)
            .ok_or_else(|| JepsenError::InvalidArgument {
                detail: format!("no node index {node}"),
            })?;
        run(
            "ip",
            &["netns", "exec", name, "nft", "-f", "-"],
            Some(script),
        )
    }

    /// The namespace node `i` (0-based) runs in.
    pub fn node_ns(&self, i: usize) -> Option<&str> {
        self.nodes.get(i).map(String::as_str)
    }

    /// Address of node `i` (0-based) inside its namespace.
    pub fn node_addr(&self, i: usize) -> Ipv4Addr {
        node_ip(i)
    }

    /// Address of the control namespace's bridge: the harness's source address.
    pub fn control_addr(&self) -> Ipv4Addr {
        control_ip()
    }

    /// Moves the calling thread into the control namespace and checks that it got there.
    /// Call it on the main thread before the tokio runtime is built: threads inherit the
    /// namespace of the thread that creates them, so every runtime thread then lives in
    /// the control namespace. Child processes started afterwards (`ip netns exec ...`)
    /// choose their own namespace by name and are not affected.
    ///
    /// # Errors
    /// `setns` fails, or the thread's namespace is not the control one afterwards.
    pub fn enter_control(&self) -> Result<(), JepsenError> {
        let path = format!("/var/run/netns/{}", self.control);
        let file = File::open(&path).map_err(|e| JepsenError::io(&path, e))?;
        // SAFETY: `file` is an open namespace file descriptor for the duration of the call;
        // setns only changes the calling thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(JepsenError::io(&path, std::io::Error::last_os_error()));
        }
        let want = std::fs::metadata(&path).map_err(|e| JepsenError::io(&path, e))?;
        let have = std::fs::metadata("/proc/thread-self/ns/net")
            .map_err(|e| JepsenError::io("/proc/thread-self/ns/net", e))?;
        if want.ino() != have.ino() || want.dev() != have.dev() {
            return Err(JepsenError::NamespacesUnavailable {
                reason: "setns did not move the thread into the control namespace".into(),
            });
        }
        Ok(())
    }

    /// Replaces node `i`'s rules with `drops` (empty: heal that node).
    ///
    /// # Errors
    /// nft refuses the rules.
    pub fn set_drops(&self, i: usize, drops: &[DropRule]) -> Result<(), JepsenError> {
        let mut script = format!("flush chain inet {TABLE} input\n");
        for d in drops {
            match d {
                DropRule::All(from) if !from.is_empty() => {
                    script.push_str(&format!(
                        "add rule inet {TABLE} input ip saddr {} drop\n",
                        addr_set(from)
                    ));
                }
                DropRule::Random { from, percent } if !from.is_empty() => {
                    script.push_str(&format!(
                        "add rule inet {TABLE} input ip saddr {} numgen random mod 100 < {} drop\n",
                        addr_set(from),
                        percent
                    ));
                }
                _ => {}
            }
        }
        self.nft(i, &script).map(|_| ())
    }

    /// Removes every rule on every node.
    ///
    /// # Errors
    /// The first nft failure (the others are still attempted).
    pub fn heal_all(&self) -> Result<(), JepsenError> {
        let mut first = Ok(());
        for i in 0..self.nodes.len() {
            if let Err(e) = self.set_drops(i, &[]) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// The current rules of node `i`, for the log.
    ///
    /// # Errors
    /// nft cannot list them.
    pub fn list_rules(&self, i: usize) -> Result<String, JepsenError> {
        let name = self.node_ns(i).unwrap_or_default().to_string();
        self.exec(&name, "nft", &["list", "table", "inet", TABLE])
    }

    /// Deletes the namespaces (which deletes the veths, the bridge and the rules).
    /// Idempotent; the node processes must be gone first.
    pub fn teardown(&mut self) {
        if !self.live {
            return;
        }
        self.live = false;
        for name in self.nodes.iter().chain(std::iter::once(&self.control)) {
            if let Err(e) = run("ip", &["netns", "del", name], None) {
                // Absent after a partial setup: nothing to do.
                if !e.to_string().contains("No such file") {
                    warn!(namespace = %name, cause = %e, "failed to delete namespace");
                }
            }
        }
    }
}

impl std::ops::Drop for Namespaces {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn node_ip(i: usize) -> Ipv4Addr {
    let host = u8::try_from(i + 1).unwrap_or(1);
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], host)
}

fn control_ip() -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 254)
}

fn addr_set(nodes: &[usize]) -> String {
    let addrs: Vec<String> = nodes.iter().map(|i| node_ip(*i).to_string()).collect();
    format!("{{ {} }}", addrs.join(", "))
}

fn unavailable(e: JepsenError) -> JepsenError {
    JepsenError::NamespacesUnavailable {
        reason: e.to_string(),
    }
}

/// Checks the tools the namespace mode needs are on the PATH.
///
/// # Errors
/// `NamespacesUnavailable` naming the missing tool.
pub fn probe_tools() -> Result<(), JepsenError> {
    for (tool, arg) in [("ip", "-V"), ("nft", "--version")] {
        run(tool, &[arg], None).map_err(|e| JepsenError::NamespacesUnavailable {
            reason: format!("{tool}: {e}"),
        })?;
    }
    Ok(())
}

/// Deletes namespaces left by a harness that died without tearing down (its pid no longer
/// exists). Nodes started by a dead harness are gone too: they are started with a parent
/// death signal (cluster.rs). Namespaces that still hold processes are left alone.
pub fn remove_stale() {
    let Ok(list) = run("ip", &["netns", "list"], None) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        if pid.parse::<u32>().is_err() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let busy = run("ip", &["netns", "pids", name], None)
            .map(|s| !s.trim().is_empty())
            .unwrap_or(true);
        if busy {
            warn!(namespace = %name, "stale namespace still holds processes; left alone");
            continue;
        }
        if run("ip", &["netns", "del", name], None).is_ok() {
            info!(namespace = %name, "removed stale namespace of a dead run");
        }
    }
}

/// Runs `program args`, feeding `stdin` if given; returns stdout.
///
/// # Errors
/// The program cannot be started or exits non-zero (stderr in the detail).
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, JepsenError> {
    let command = format!("{program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| JepsenError::Command {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| JepsenError::Command {
                command: command.clone(),
                detail: format!("writing stdin: {e}"),
            })?;
    }
    let out = child.wait_with_output().map_err(|e| JepsenError::Command {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(JepsenError::Command {
            command,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
