//! The service layer: every operation a client may ask of a node, as typed requests and
//! answers, with [`ApiError`] as the one error. HTTP handlers, WebSocket operations and
//! anything later (another protocol, an admin tool) call these; they only parse and
//! render. This is the one place where authentication, ACLs and quotas belong: every
//! operation takes the [`Caller`] it serves.
//!
//! - [`publish`]: validated records, encoded into one run per partition, and appended.
//! - [`reads`]: fetch by offset.
//! - [`groups`]: consumer groups (join, leave, commit).
//! - [`names`]: the one check of topic, group and member names.
//! - [`push`]: push subscriptions (set with every setting checked, read, delete).
//! - [`members`]: a member's fetch: poll (the heartbeat), read, delivery report.
//! - [`keys`]: key views of compacted topics (lookup, scan, put, delete).
//! - [`topics`]: topic admin (create, patch, delete, describe, list).
//! - [`moves`]: replica moves and decommissions (start, list).
//! - [`access`]: authentication of a request, ACL and quota checks, the audit log, and
//!   the admin operations on principals, keys, ACLs and quotas.
//!
//! Below it: routing ([`crate::edge`]), which reaches the node that owns the work over
//! the node-to-node protocol ([`crate::protocol`]).

pub mod access;
pub mod groups;
pub mod keys;
pub mod members;
pub mod moves;
pub mod names;
pub mod publish;
pub mod push;
pub mod reads;
pub mod topics;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::auth::{Auth, Identity};
use crate::edge::Edge;
use crate::error::ApiError;
use crate::limits::Limits;
use crate::metrics::Metrics;

/// Who asks for an operation: established once where the request enters the cluster
/// (an HTTP request, a WebSocket upgrade), then read by the ACL and quota checks at the
/// start of each operation. Forwarded hops between nodes carry no caller: they were
/// checked at the edge that took the request.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// The protocol the request came in by (for the audit log).
    pub via: Via,
    /// Who it is.
    pub identity: Identity,
}

/// The protocol a request came in by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Via {
    /// The HTTP API.
    #[default]
    Http,
    /// The WebSocket API.
    WebSocket,
}

impl Caller {
    /// A caller of `identity` by `via`.
    pub fn new(via: Via, identity: Identity) -> Self {
        Self { via, identity }
    }
}

/// The operations of one node. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    /// Routing between nodes.
    pub(crate) edge: Arc<Edge>,
    /// Request limits.
    pub(crate) limits: Limits,
    /// Round-robin counter for records with neither key nor partition.
    round_robin: Arc<AtomicU64>,
    /// Bounds `acks=0` background writes.
    unacked: Arc<Semaphore>,
    /// Counts records published and fetched.
    pub(crate) metrics: Arc<Metrics>,
    /// Authentication settings and quota counters.
    pub(crate) auth: Arc<Auth>,
}

impl Service {
    /// The operations over a node's edge.
    pub fn new(edge: Arc<Edge>, limits: Limits, metrics: Arc<Metrics>) -> Self {
        Self {
            edge,
            limits,
            round_robin: Arc::new(AtomicU64::new(0)),
            unacked: Arc::new(Semaphore::new(limits.max_unacked_publishes)),
            metrics,
            auth: Arc::new(Auth::off()),
        }
    }

    /// Turns authentication on (or off) for these operations.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Arc::new(auth);
        self
    }

    /// The request limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// The one result type of the service layer.
pub type Result<T> = std::result::Result<T, ApiError>;
