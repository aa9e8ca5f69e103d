//! `psubd node --join URL`: a node that is not in any `--peers` list asks a running
//! cluster to add it (`POST /v1/cluster/nodes` through the node at URL), then records its
//! own addresses as every member does at boot.
//!
//! The request is idempotent, so a restarted node sends it again with the same flags and
//! the cluster answers at once (it is already a voter). Until then the node serves HTTP
//! but is not ready (`/readyz` 503: it knows no controller leader). A refusal that cannot
//! change by retrying (id or address taken, bad address, not allowed) stops the process
//! with [`JOIN_REFUSED_EXIT_CODE`]: the operator must fix the flags.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use psubd_actors::controller::Member;
use psubd_api::Edge;
use psubd_client::{Admin, Client, Error};
use psubd_wire::AddNode;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Exit status of a node whose join the cluster refused for good.
pub const JOIN_REFUSED_EXIT_CODE: i32 = 78; // EX_CONFIG

/// Longest pause between two attempts to join.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The request to join and the client that sends it.
pub struct Join {
    admin: Admin,
    request: AddNode,
}

impl Join {
    /// The join through the node at `url`, as `me`; with `--auth`, sent with the admin key
    /// read from `admin_key_file`.
    ///
    /// # Errors
    /// When the URL is not usable or the key file cannot be read.
    pub fn new(url: &str, me: Member, admin_key_file: Option<&Path>) -> anyhow::Result<Join> {
        let client = Client::new([url]).context("--join")?;
        let client = match admin_key_file {
            Some(path) => {
                let key = std::fs::read_to_string(path)
                    .with_context(|| format!("--admin-key-file {}", path.display()))?;
                client.with_token(key.trim())
            }
            None => client,
        };
        Ok(Join {
            admin: client.admin(),
            request: AddNode {
                id: me.id,
                raft: me.raft.to_string(),
                http: me.http,
            },
        })
    }
}

/// Asks to be added until the cluster says this node is a voter, then registers its
/// addresses as any member does; stops early if the node shuts down.
pub async fn join_then_register(join: Join, edge: Arc<Edge>, me: Member, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = join.admin.add_node(&join.request);
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = attempt => outcome,
        };
        match outcome {
            Ok(_) => {
                info!(id = me.id, raft = %me.raft, "joined the cluster");
                break;
            }
            Err(Error::Api { status, body, .. }) if (400..500).contains(&status) => {
                tracing::error!(
                    status,
                    error = %body.error,
                    message = %body.message,
                    "the cluster refused to add this node; fix --id, --advertise-raft, \
                     --advertise-http or --join and start it again"
                );
                std::process::exit(JOIN_REFUSED_EXIT_CODE);
            }
            // Unavailable, outcome unknown (the learner still catching up) or the node at
            // --join not reachable: the request is idempotent, so send it again.
            Err(error) => debug!(%error, "not added yet; asking again"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    crate::server::register_node(edge, me, stop).await;
}
