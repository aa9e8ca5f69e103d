//! What every handler shares.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use psubd_actors::Broker;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::edge::Edge;
use crate::metrics::Metrics;

/// Request limits (docs/api.md § Names and limits). Over a limit: 413, nothing written.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest record (key + value), bytes.
    pub max_record_bytes: usize,
    /// Largest request body, bytes.
    pub max_request_bytes: usize,
    /// Most records in one request.
    pub max_records_per_request: usize,
    /// Largest headers of one record, bytes.
    pub max_header_bytes: usize,
    /// Most fire-and-forget (`acks=0`) publishes being written at once; more wait.
    pub max_unacked_publishes: usize,
    /// Most open streams (SSE, NDJSON) per node; more are refused with 429.
    pub max_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_record_bytes: 1 << 20,
            max_request_bytes: 10 << 20,
            max_records_per_request: 1000,
            max_header_bytes: 8 << 10,
            max_unacked_publishes: 1024,
            max_streams: 1024,
        }
    }
}

/// The state behind every route. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The router between nodes.
    pub edge: Arc<Edge>,
    /// Request limits.
    pub limits: Limits,
    /// Round-robin counter for records with neither key nor partition.
    pub round_robin: Arc<AtomicU64>,
    /// Bounds `acks=0` background writes.
    pub unacked: Arc<Semaphore>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Bounds open streams.
    pub streams: Arc<Semaphore>,
    /// Cancelled when the node shuts down: open streams end cleanly on it.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// The state for a node's edge.
    pub fn new(edge: Arc<Edge>, limits: Limits, shutdown: CancellationToken) -> Self {
        Self {
            edge,
            limits,
            round_robin: Arc::new(AtomicU64::new(0)),
            unacked: Arc::new(Semaphore::new(limits.max_unacked_publishes)),
            metrics: Arc::new(Metrics::new()),
            streams: Arc::new(Semaphore::new(limits.max_streams)),
            shutdown,
        }
    }

    /// This node's broker.
    pub fn broker(&self) -> &Broker {
        self.edge.broker()
    }
}
