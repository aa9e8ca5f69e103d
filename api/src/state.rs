//! What every handler shares.

use std::sync::Arc;

use psubd_actors::Broker;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::edge::Edge;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::service::Service;

/// The state behind every route. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The operations handlers call.
    pub service: Service,
    /// Bounds open streams.
    pub streams: Arc<Semaphore>,
    /// Cancelled when the node shuts down: open streams end cleanly on it.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// The state for a node's edge.
    pub fn new(edge: Arc<Edge>, limits: Limits, shutdown: CancellationToken) -> Self {
        Self {
            service: Service::new(edge, limits, Arc::new(Metrics::new())),
            streams: Arc::new(Semaphore::new(limits.max_streams)),
            shutdown,
        }
    }

    /// This node's broker.
    pub fn broker(&self) -> &Broker {
        self.service.edge.broker()
    }
}
