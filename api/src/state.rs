//! What every handler shares.

use std::ops::Deref;
use std::sync::Arc;

use psubd_actors::Broker;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::edge::Edge;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::service::Service;

/// The state behind every route. Each middleware layer and handler of a request takes its
/// own clone, so the state is one shared allocation and a clone is one reference count
/// (cloning the fields one by one showed in profiles of single-record publishes).
#[derive(Clone)]
pub struct AppState(Arc<StateInner>);

/// The fields of [`AppState`], reached through it.
#[derive(Clone)]
pub struct StateInner {
    /// The operations handlers call.
    pub service: Service,
    /// Bounds open streams.
    pub streams: Arc<Semaphore>,
    /// Cancelled when the node shuts down: open streams end cleanly on it.
    pub shutdown: CancellationToken,
    /// Web origins whose pages may call this API from a browser (`--allowed-origins`).
    pub allowed_origins: Arc<[String]>,
}

impl Deref for AppState {
    type Target = StateInner;

    fn deref(&self) -> &StateInner {
        &self.0
    }
}

impl AppState {
    /// The state for a node's edge.
    pub fn new(edge: Arc<Edge>, limits: Limits, shutdown: CancellationToken) -> Self {
        Self(Arc::new(StateInner {
            service: Service::new(edge, limits, Arc::new(Metrics::new())),
            streams: Arc::new(Semaphore::new(limits.max_streams)),
            shutdown,
            allowed_origins: Arc::from([]),
        }))
    }

    /// Lets pages of these web origins (`scheme://host[:port]`) call the API from a browser.
    pub fn with_allowed_origins(mut self, origins: Vec<String>) -> Self {
        Arc::make_mut(&mut self.0).allowed_origins = origins.into();
        self
    }

    /// Turns authentication on (or off): see [`crate::auth`].
    pub fn with_auth(mut self, auth: crate::auth::Auth) -> Self {
        let inner = Arc::make_mut(&mut self.0);
        inner.service = inner.service.clone().with_auth(auth);
        self
    }

    /// This node's broker.
    pub fn broker(&self) -> &Broker {
        self.service.edge.broker()
    }
}
