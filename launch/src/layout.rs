//! Where each node of a local cluster lives: its addresses, its data directory, its log.
//!
//! Every node must know every peer's Raft address when it starts, so a cluster's layout
//! is decided in full before the first process runs; [`peers`] renders it as `--peers`.
//! [`Layout`] is the one on-disk arrangement `psubd dev`, the end-to-end tests and the
//! load generator share (the chaos harness keeps its own, documented with its output).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// One node's identity and places: what its `psubd node` command line says about it.
/// Kept across restarts, so a restarted node is the same node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlace {
    /// Node id (1-based).
    pub id: u64,
    /// `--http`.
    pub http: SocketAddr,
    /// `--raft`.
    pub raft: SocketAddr,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// Where the process's stdout and stderr are appended, over all its runs.
    pub log: PathBuf,
}

/// The `--peers` value naming every node's Raft address: `1=127.0.0.1:21001,2=…`.
pub fn peers(nodes: &[NodePlace]) -> String {
    nodes
        .iter()
        .map(|n| format!("{}={}", n.id, n.raft))
        .collect::<Vec<_>>()
        .join(",")
}

/// A cluster's files under one root directory: node `n`'s data in `<root>/<n>`, its log in
/// `<root>/node-<n>.log`, the cluster secret in `<root>/cluster-secret`.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.root.join(id.to_string())
    }

    /// Node `id`'s log file.
    pub fn log(&self, id: u64) -> PathBuf {
        self.root.join(format!("node-{id}.log"))
    }

    /// The cluster secret file (see [`crate::secret`]).
    pub fn secret(&self) -> PathBuf {
        self.root.join("cluster-secret")
    }

    /// The admin key file, with authentication on (see [`crate::secret`]).
    pub fn admin_key(&self) -> PathBuf {
        self.root.join("admin-key")
    }

    /// Node `id`'s place on loopback with the given ports.
    pub fn place(&self, id: u64, http_port: u16, raft_port: u16) -> NodePlace {
        NodePlace {
            id,
            http: SocketAddr::from((Ipv4Addr::LOCALHOST, http_port)),
            raft: SocketAddr::from((Ipv4Addr::LOCALHOST, raft_port)),
            data_dir: self.data_dir(id),
            log: self.log(id),
        }
    }
}

/// `psubd dev`'s fixed ports: node `n` serves HTTP on `base + n - 1` and its peer
/// transport on `base + 1000 + n - 1` (docs/operations.md), so a developer's URLs do not
/// change between runs.
#[derive(Debug, Clone, Copy)]
pub struct DevPorts {
    base: u16,
    nodes: u16,
}

/// How far above the HTTP ports the Raft ports of a dev cluster lie.
pub const DEV_RAFT_PORT_OFFSET: u16 = 1000;

impl DevPorts {
    /// The ports of `nodes` nodes from `base`; `None` when the highest would pass 65535.
    pub fn new(base: u16, nodes: u16) -> Option<Self> {
        let highest = u32::from(base) + u32::from(DEV_RAFT_PORT_OFFSET) + u32::from(nodes);
        (nodes >= 1 && highest <= u32::from(u16::MAX) + 1).then_some(DevPorts { base, nodes })
    }

    /// Node ids, 1..=nodes.
    pub fn ids(&self) -> impl Iterator<Item = u64> {
        1..=u64::from(self.nodes)
    }

    /// Node `id`'s HTTP port.
    pub fn http(&self, id: u64) -> u16 {
        self.base + self.index(id)
    }

    /// Node `id`'s Raft port.
    pub fn raft(&self, id: u64) -> u16 {
        self.base + DEV_RAFT_PORT_OFFSET + self.index(id)
    }

    /// Node `id`'s HTTP base URL.
    pub fn url(&self, id: u64) -> String {
        format!("http://127.0.0.1:{}", self.http(id))
    }

    /// Every port of the cluster, HTTP and Raft.
    pub fn all(&self) -> impl Iterator<Item = u16> + '_ {
        self.ids().flat_map(|id| [self.http(id), self.raft(id)])
    }

    /// Every node's place under `layout`.
    pub fn places(&self, layout: &Layout) -> Vec<NodePlace> {
        self.ids()
            .map(|id| layout.place(id, self.http(id), self.raft(id)))
            .collect()
    }

    fn index(&self, id: u64) -> u16 {
        assert!(
            (1..=u64::from(self.nodes)).contains(&id),
            "node {id} outside 1..={}",
            self.nodes
        );
        // In range by the assertion and `new`'s bound.
        (id - 1) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_ports_follow_the_documented_scheme() {
        let p = DevPorts::new(8081, 3).expect("in range");
        assert_eq!((p.http(1), p.raft(1)), (8081, 9081));
        assert_eq!((p.http(3), p.raft(3)), (8083, 9083));
        assert_eq!(p.url(2), "http://127.0.0.1:8082");
        assert_eq!(p.all().count(), 6);
    }

    #[test]
    fn dev_ports_refuse_to_overflow() {
        assert!(DevPorts::new(64_535, 1).is_some());
        assert!(DevPorts::new(64_535, 2).is_none());
        assert!(DevPorts::new(8081, 0).is_none());
    }

    #[test]
    fn layout_and_peers() {
        let layout = Layout::new("/d");
        let places = DevPorts::new(8081, 2).expect("in range").places(&layout);
        assert_eq!(places[1].data_dir, PathBuf::from("/d/2"));
        assert_eq!(places[1].log, PathBuf::from("/d/node-2.log"));
        assert_eq!(peers(&places), "1=127.0.0.1:9081,2=127.0.0.1:9082");
    }
}
