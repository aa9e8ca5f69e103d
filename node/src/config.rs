//! The node's configuration: flags, with `PSUBD_*` environment equivalents and named
//! defaults (precedence: flag, then environment, then default).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use psubd_api::auth::AdminKey;
use psubd_api::limits::{
    DEFAULT_MAX_DELAY_MS, DEFAULT_MAX_PUSH_SUBSCRIPTIONS, DEFAULT_MAX_RECORDS_PER_REQUEST,
    DEFAULT_MAX_RECORD_BYTES, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_STREAMS,
};
use psubd_raft::{ClusterSecret, NodeId, PeerTls, MAX_SNAPSHOT_STAGGER_PERCENT};

/// Cache sled may hold in memory per node. Bounded so a node's RSS stays predictable.
pub const DEFAULT_CACHE_MB: u64 = 64;

/// Free bytes below which a node refuses new records (507 insufficient_storage) on the
/// partitions it replicates. 256 MiB leaves room for what still has to be written while
/// space is short: Raft votes and metadata, consumer-group commits, snapshots, and the
/// records already accepted when the threshold was crossed (free space is measured once a
/// second).
pub const DEFAULT_MIN_FREE_BYTES: u64 = 256 << 20;

/// How long a proposed write may take before the client is told `outcome_unknown` (504).
/// Longer than a failover (two election timeouts) so writes ride through one.
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 10_000;

/// How long a graceful shutdown may drain HTTP requests before it stops anyway.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 8_000;

/// How often each partition leader runs retention, ms: expired records go within about a
/// second of expiring, and an idle tick costs one leadership check per partition.
pub const DEFAULT_MAINTENANCE_INTERVAL_MS: u64 = 1_000;

/// Leaders go back to their preferred replicas within seconds of a restart: each move
/// pauses its partition's writes for a round trip or two, so checking more often buys
/// little.
pub const DEFAULT_LEADER_BALANCE_INTERVAL_MS: u64 = 5_000;

/// Least Raft entries between snapshots of a group (the log behind a snapshot is purged).
/// 5 000 keeps the replay after a restart short without rebuilding snapshots often; tests
/// lower it to exercise snapshot transfers.
pub const DEFAULT_SNAPSHOT_EVERY_ENTRIES: u64 = 5_000;

/// A snapshot is also due only once the commands applied since the last one reach this
/// percentage of its size: snapshot writes then cost at most as much again as the appends,
/// however large a partition grows (0: entries alone decide).
pub const DEFAULT_SNAPSHOT_GROWTH_PERCENT: u64 = 100;

/// Spread of the snapshot thresholds across replicas, percent. 50: replicas and partitions
/// under the same load build their snapshots (each a copy of the whole partition) over half
/// an interval instead of all at one entry, which stalled a 2-core dev cluster for seconds.
pub const DEFAULT_SNAPSHOT_STAGGER_PERCENT: u64 = 50;

/// Raft entries kept behind a snapshot, so a follower a little behind catches up from the
/// log instead of a whole snapshot transfer.
pub const DEFAULT_KEEP_LOGS_AFTER_SNAPSHOT: u64 = 1_000;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `--peers` entry is malformed.
    #[error("--peers entry '{entry}' must look like ID=HOST_IP:PORT (e.g. 1=127.0.0.1:9081)")]
    BadPeer {
        /// The entry.
        entry: String,
    },
    /// The node's own id is missing from `--peers`.
    #[error(
        "--id {id} must appear in --peers (every node lists the whole cluster, itself included)"
    )]
    SelfNotInPeers {
        /// The id.
        id: NodeId,
    },
    /// A numeric setting is out of its range.
    #[error("{0}")]
    OutOfRange(String),
    /// The cluster secret cannot be used, or is missing where peers are not on loopback.
    #[error("{0}")]
    Secret(String),
    /// --auth, --admin-key-file or --http do not fit together, or the key file is bad.
    #[error("{0}")]
    Auth(String),
}

/// Parses `1=127.0.0.1:9081,2=127.0.0.1:9082`.
///
/// # Errors
/// [`ConfigError::BadPeer`] naming the entry.
pub fn parse_peers(raw: &str) -> Result<BTreeMap<NodeId, SocketAddr>, ConfigError> {
    raw.split(',')
        .filter(|e| !e.trim().is_empty())
        .map(|entry| {
            let bad = || ConfigError::BadPeer {
                entry: entry.to_string(),
            };
            let (id, addr) = entry.trim().split_once('=').ok_or_else(bad)?;
            Ok((
                id.trim().parse().map_err(|_| bad())?,
                addr.trim().parse().map_err(|_| bad())?,
            ))
        })
        .collect()
}

/// `psubd node`: one node of a cluster.
#[derive(Args, Debug, Clone)]
pub struct NodeConfig {
    /// This node's id: a positive integer, unique in the cluster, listed in --peers.
    #[arg(long, env = "PSUBD_ID")]
    pub id: NodeId,
    /// Address the HTTP API listens on.
    #[arg(long, env = "PSUBD_HTTP", default_value = "127.0.0.1:8081")]
    pub http: SocketAddr,
    /// Address the peer transport (Raft and forwarding) listens on.
    #[arg(long, env = "PSUBD_RAFT", default_value = "127.0.0.1:9081")]
    pub raft: SocketAddr,
    /// Every node of the cluster, this one included: ID=IP:PORT of their --raft address,
    /// comma separated. All nodes must be given the same list.
    #[arg(long, env = "PSUBD_PEERS")]
    pub peers: String,
    /// Directory for this node's data (sled database, snapshots).
    #[arg(long, env = "PSUBD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Base URL other nodes and clients should use for this node's HTTP API
    /// (default: http://<--http>).
    #[arg(long, env = "PSUBD_ADVERTISE_HTTP")]
    pub advertise_http: Option<String>,
    /// Free bytes on the data directory's file system below which new records are refused
    /// (507 insufficient_storage) until space returns; 0 never refuses.
    #[arg(long, env = "PSUBD_MIN_FREE_BYTES", default_value_t = DEFAULT_MIN_FREE_BYTES)]
    pub min_free_bytes: u64,
    /// Memory sled may use as page cache, MiB.
    #[arg(long, env = "PSUBD_CACHE_MB", default_value_t = DEFAULT_CACHE_MB)]
    pub cache_mb: u64,
    /// Largest record (key + value), bytes.
    #[arg(long, env = "PSUBD_MAX_RECORD_BYTES", default_value_t = DEFAULT_MAX_RECORD_BYTES)]
    pub max_record_bytes: usize,
    /// Largest publish request body, bytes.
    #[arg(long, env = "PSUBD_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Most records in one publish request.
    #[arg(long, env = "PSUBD_MAX_RECORDS_PER_REQUEST", default_value_t = DEFAULT_MAX_RECORDS_PER_REQUEST)]
    pub max_records_per_request: usize,
    /// How long a proposed write may take before it is answered 504 outcome_unknown, ms.
    #[arg(long, env = "PSUBD_WRITE_TIMEOUT_MS", default_value_t = DEFAULT_WRITE_TIMEOUT_MS)]
    pub write_timeout_ms: u64,
    /// Most open streams per node (SSE, NDJSON, WebSocket connections and their
    /// subscriptions); more are refused with 429 too_many_streams.
    #[arg(long, env = "PSUBD_MAX_STREAMS", default_value_t = DEFAULT_MAX_STREAMS)]
    pub max_streams: usize,
    /// Longest delay of a delayed record (`deliver_at_ms`, `delay_ms`), ms; a record due
    /// further ahead is refused with 400.
    #[arg(long, env = "PSUBD_MAX_DELAY_MS", default_value_t = DEFAULT_MAX_DELAY_MS)]
    pub max_delay_ms: u64,
    /// Most push subscriptions per offsets partition (the cluster has 4, so 4 times this
    /// in all); a new one past it is refused with 409 limit_reached. Give every node the
    /// same value: the node a PUT arrives at applies its own.
    #[arg(long, env = "PSUBD_MAX_PUSH_SUBSCRIPTIONS", default_value_t = DEFAULT_MAX_PUSH_SUBSCRIPTIONS)]
    pub max_push_subscriptions: u32,
    /// How long shutdown may drain in-flight HTTP requests, ms.
    #[arg(long, env = "PSUBD_SHUTDOWN_TIMEOUT_MS", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT_MS)]
    pub shutdown_timeout_ms: u64,
    /// How often each partition leader checks retention (the maintenance tick), ms.
    #[arg(long, env = "PSUBD_MAINTENANCE_INTERVAL_MS", default_value_t = DEFAULT_MAINTENANCE_INTERVAL_MS)]
    pub maintenance_interval_ms: u64,
    /// How often a node moves the partitions it leads back to their preferred replicas
    /// (the first of each replica set) when those are in contact and caught up, ms; 0 never.
    #[arg(long, env = "PSUBD_LEADER_BALANCE_INTERVAL_MS", default_value_t = DEFAULT_LEADER_BALANCE_INTERVAL_MS)]
    pub leader_balance_interval_ms: u64,
    /// Least Raft entries between snapshots of a group; the log behind a snapshot is purged.
    #[arg(long, env = "PSUBD_SNAPSHOT_EVERY_ENTRIES", default_value_t = DEFAULT_SNAPSHOT_EVERY_ENTRIES)]
    pub snapshot_every_entries: u64,
    /// ...and once the commands applied since the last snapshot reach this percentage of
    /// its size (0: entries alone decide).
    #[arg(long, env = "PSUBD_SNAPSHOT_GROWTH_PERCENT", default_value_t = DEFAULT_SNAPSHOT_GROWTH_PERCENT)]
    pub snapshot_growth_percent: u64,
    /// Each replica waits for both snapshot thresholds scaled by its own random factor,
    /// from 100 % to 100 % + this, so replicas and partitions under the same load do not
    /// all build their snapshots at once (0: exact thresholds).
    #[arg(long, env = "PSUBD_SNAPSHOT_STAGGER_PERCENT", default_value_t = DEFAULT_SNAPSHOT_STAGGER_PERCENT)]
    pub snapshot_stagger_percent: u64,
    /// Raft entries kept behind a snapshot for followers a little behind.
    #[arg(long, env = "PSUBD_KEEP_LOGS_AFTER_SNAPSHOT", default_value_t = DEFAULT_KEEP_LOGS_AFTER_SNAPSHOT)]
    pub keep_logs_after_snapshot: u64,
    /// A file holding the cluster secret (at least 16 bytes; surrounding whitespace is
    /// ignored). Every node of the cluster needs the same one: peers prove they hold it at
    /// every connection, and a node with another secret is refused. Required unless every
    /// --peers address is loopback (or --insecure).
    #[arg(long, env = "PSUBD_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// PEM certificate chain of this node for TLS between nodes (with --peer-tls-key and
    /// --peer-tls-ca). It must name the node as the DNS name `psubd-node-<id>` and allow
    /// both server and client authentication. Peers then talk over mutually authenticated,
    /// encrypted connections, and a node needs no --cluster-secret-file to leave loopback.
    #[arg(long, env = "PSUBD_PEER_TLS_CERT", requires_all = ["peer_tls_key", "peer_tls_ca"])]
    pub peer_tls_cert: Option<PathBuf>,
    /// PEM private key of --peer-tls-cert.
    #[arg(long, env = "PSUBD_PEER_TLS_KEY", requires = "peer_tls_cert")]
    pub peer_tls_key: Option<PathBuf>,
    /// PEM certificates of the CA every node's --peer-tls-cert is signed by.
    #[arg(long, env = "PSUBD_PEER_TLS_CA", requires = "peer_tls_cert")]
    pub peer_tls_ca: Option<PathBuf>,
    /// PEM certificate chain for HTTPS on the --http port (with --tls-key). Plain HTTP is
    /// then refused on that port.
    #[arg(long, env = "PSUBD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "PSUBD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: with it, HTTPS clients must present a certificate signed by one
    /// of them (mutual TLS).
    #[arg(long, env = "PSUBD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Web origins (`scheme://host[:port]`, comma separated) whose pages may call the API
    /// from a browser; other pages' writes and WebSocket upgrades get 403. Clients that send
    /// no `Origin` header (curl, libraries) are not affected.
    #[arg(long, env = "PSUBD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Run without peer authentication although peers are not on loopback (anyone who can
    /// reach the --raft port can then act as a node), or without --auth although --http is
    /// not on loopback (anyone who can reach it can do anything). Logged as a warning at
    /// start.
    #[arg(long, env = "PSUBD_INSECURE")]
    pub insecure: bool,
    /// Require an API key (`Authorization: Bearer <key>`) on every request but /healthz,
    /// /readyz and /metrics, and enforce the principals' ACLs and quotas. Needs
    /// --admin-key-file.
    #[arg(long, env = "PSUBD_AUTH")]
    pub auth: bool,
    /// A file holding the key of the built-in `admin` principal, `admin.<secret>` (the
    /// secret at least 32 characters; surrounding whitespace is ignored). Every node needs
    /// the same one; only its hash is kept in memory.
    #[arg(long, env = "PSUBD_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct ValidNodeConfig {
    /// The flags as given.
    pub raw: NodeConfig,
    /// The parsed peer list.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The cluster secret read from `--cluster-secret-file`, or none.
    pub cluster_secret: ClusterSecret,
    /// TLS between nodes, from `--peer-tls-*`, or none.
    pub peer_tls: Option<PeerTls>,
    /// The admin key when --auth is on; `None`: authentication is off.
    pub admin_key: Option<AdminKey>,
}

impl NodeConfig {
    /// Checks every rule and parses the peer list.
    ///
    /// # Errors
    /// [`ConfigError`] naming the rule broken.
    pub fn validate(self) -> Result<ValidNodeConfig, ConfigError> {
        let peers = parse_peers(&self.peers)?;
        if !peers.contains_key(&self.id) {
            return Err(ConfigError::SelfNotInPeers { id: self.id });
        }
        if self.cache_mb == 0 {
            return Err(ConfigError::OutOfRange(
                "--cache-mb must be at least 1".into(),
            ));
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > self.max_request_bytes {
            return Err(ConfigError::OutOfRange(
                "--max-record-bytes must be positive and at most --max-request-bytes".into(),
            ));
        }
        if self.max_request_bytes > 64 << 20 {
            return Err(ConfigError::OutOfRange(
                "--max-request-bytes may be at most 64 MiB (one request is one Raft entry at most)"
                    .into(),
            ));
        }
        if self.max_delay_ms > i64::MAX as u64 / 2 {
            return Err(ConfigError::OutOfRange(
                "--max-delay-ms must be at most 2^62 (a due time is ms since the epoch)".into(),
            ));
        }
        if self.max_push_subscriptions == 0 {
            return Err(ConfigError::OutOfRange(
                "--max-push-subscriptions must be at least 1".into(),
            ));
        }
        if self.max_streams == 0 {
            return Err(ConfigError::OutOfRange(
                "--max-streams must be at least 1".into(),
            ));
        }
        if self.write_timeout_ms < 1_000 {
            return Err(ConfigError::OutOfRange(
                "--write-timeout-ms must be at least 1000".into(),
            ));
        }
        if self.maintenance_interval_ms < 10 {
            return Err(ConfigError::OutOfRange(
                "--maintenance-interval-ms must be at least 10".into(),
            ));
        }
        if self.snapshot_every_entries < 10 {
            return Err(ConfigError::OutOfRange(
                "--snapshot-every-entries must be at least 10".into(),
            ));
        }
        if self.snapshot_stagger_percent > MAX_SNAPSHOT_STAGGER_PERCENT {
            return Err(ConfigError::OutOfRange(format!(
                "--snapshot-stagger-percent must be at most {MAX_SNAPSHOT_STAGGER_PERCENT}"
            )));
        }
        let cluster_secret = match &self.cluster_secret_file {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| {
                    ConfigError::Secret(format!(
                        "--cluster-secret-file {}: cannot read it: {e}",
                        path.display()
                    ))
                })?;
                ClusterSecret::new(&bytes).map_err(|why| {
                    ConfigError::Secret(format!("--cluster-secret-file {}: {why}", path.display()))
                })?
            }
            None => ClusterSecret::none(),
        };
        let peer_tls = match (&self.peer_tls_cert, &self.peer_tls_key, &self.peer_tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(
                PeerTls::from_pem_files(cert, key, ca)
                    .map_err(|e| ConfigError::Secret(format!("--peer-tls-*: {e}")))?,
            ),
            _ => None,
        };
        let authenticated = cluster_secret.is_set() || peer_tls.is_some();
        if !authenticated && !self.insecure && !peers_on_loopback(&peers) {
            return Err(ConfigError::Secret(
                "the --peers addresses are not all loopback, so peers must authenticate: give \
                 every node the same --cluster-secret-file (for example one made with \
                 `head -c 32 /dev/urandom | base64 > cluster-secret`) or certificates of one CA \
                 (--peer-tls-cert, --peer-tls-key, --peer-tls-ca), or pass --insecure to run \
                 without peer authentication"
                    .into(),
            ));
        }
        let admin_key = self.admin_key()?;
        Ok(ValidNodeConfig {
            raw: self,
            peers,
            cluster_secret,
            peer_tls,
            admin_key,
        })
    }

    /// The admin key when --auth is on. Refuses an open API on a non-loopback --http
    /// unless --insecure, --auth without a key file, and a key file without --auth (the
    /// operator believes the API is protected; it would not be).
    fn admin_key(&self) -> Result<Option<AdminKey>, ConfigError> {
        match (&self.admin_key_file, self.auth) {
            (None, true) => Err(ConfigError::Auth(
                "--auth needs --admin-key-file: a file holding the admin's key, for example \
                 made with `printf 'admin.%s\\n' \"$(head -c 32 /dev/urandom | base64 | tr -d \
                 '/+=')\" > admin.key` (the same file on every node)"
                    .into(),
            )),
            (Some(_), false) => Err(ConfigError::Auth(
                "--admin-key-file is given but --auth is not: pass --auth to require API keys"
                    .into(),
            )),
            (Some(path), true) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::Auth(format!(
                        "--admin-key-file {}: cannot read it: {e}",
                        path.display()
                    ))
                })?;
                AdminKey::parse(&text).map(Some).map_err(|why| {
                    ConfigError::Auth(format!("--admin-key-file {}: {why}", path.display()))
                })
            }
            (None, false) if !self.insecure && !self.http.ip().is_loopback() => {
                Err(ConfigError::Auth(format!(
                    "--http {} is not a loopback address, so clients must authenticate: pass \
                     --auth with --admin-key-file, or --insecure to serve the API without \
                     authentication",
                    self.http
                )))
            }
            (None, false) => Ok(None),
        }
    }
}

/// True when every peer address is a loopback address: only processes of this machine can
/// reach the transport, so peers may go unauthenticated.
pub fn peers_on_loopback(peers: &BTreeMap<NodeId, SocketAddr>) -> bool {
    peers.values().all(|addr| addr.ip().is_loopback())
}

impl ValidNodeConfig {
    /// The write timeout.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.raw.write_timeout_ms)
    }

    /// The URL this node's HTTP API is reached at.
    pub fn advertised_http(&self) -> String {
        let scheme = if self.raw.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        self.raw
            .advertise_http
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{}", self.raw.http))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_reject_garbage() {
        let peers = parse_peers("1=127.0.0.1:9081, 2=127.0.0.1:9082").unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[&2].port(), 9082);
        assert!(parse_peers("1=localhost").is_err());
        assert!(parse_peers("x=127.0.0.1:1").is_err());
    }
}
