//! Boot and shutdown of one node: `run(config, shutdown)`. A storage failure ends the
//! process at once instead (fail-stop, exit status [`STORAGE_FAILED_EXIT_CODE`]).
//!
//! Shutdown order (as a broker must): hand every leadership this node holds to a caught-up
//! follower while the HTTP edge still serves (bounded; `psubd_api::leadership`), then stop
//! accepting HTTP and drain in-flight requests (bounded), then tell the peers this node
//! leaves and answer what they sent before (bounded), then stop the actors and every
//! Raft group, then a final storage flush. So a rolling restart costs clients a pause of
//! a round trip or two per partition rather than an election timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use psubd_actors::controller::NodeInfo;
use psubd_actors::{Broker, BrokerConfig};
use psubd_api::auth::Auth;
use psubd_api::protocol::ForwardRequest;
use psubd_api::{AppState, Edge, ForwardService, Limits};
use psubd_raft::{RaftNode, RaftNodeConfig, RaftTuning, StorageFailure};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ValidNodeConfig;

/// Runs a node until `shutdown` completes, then shuts it down gracefully.
///
/// # Errors
/// When the node cannot start (ports taken, data directory unusable) or the HTTP server
/// fails.
pub async fn run(
    config: ValidNodeConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let raw = &config.raw;
    info!(
        id = raw.id,
        http = %raw.http,
        raft = %raw.raft,
        peers = ?config.peers,
        data_dir = %raw.data_dir.display(),
        cache_mb = raw.cache_mb,
        write_timeout_ms = raw.write_timeout_ms,
        "starting node"
    );
    let peers_authenticated = config.cluster_secret.is_set() || config.peer_tls.is_some();
    if !peers_authenticated && !crate::config::peers_on_loopback(&config.peers) {
        warn!("peers are not authenticated (--insecure): anyone who can reach the --raft port can act as a node");
    }
    if config.admin_key.is_none() && !raw.http.ip().is_loopback() {
        warn!("the HTTP API is not authenticated (--insecure without --auth): anyone who can reach the --http port can read, write and administer the cluster");
    }
    info!(auth = config.admin_key.is_some(), "API authentication");
    if psubd_raft::SKIPS_LOG_FSYNC {
        warn!("TEST BUILD: this node never syncs its Raft log (feature chaos-skip-log-fsync); acknowledged writes are lost on power loss");
    }
    let raft_node = RaftNode::start(RaftNodeConfig {
        id: raw.id,
        listen: raw.raft,
        peers: config.peers.clone(),
        data_dir: raw.data_dir.clone(),
        cache_capacity_bytes: raw.cache_mb << 20,
        min_free_bytes: raw.min_free_bytes,
        cluster_secret: config.cluster_secret.clone(),
        peer_tls: config.peer_tls.clone(),
        tuning: RaftTuning {
            snapshot_every_entries: raw.snapshot_every_entries,
            snapshot_growth_percent: raw.snapshot_growth_percent,
            snapshot_stagger_percent: raw.snapshot_stagger_percent,
            keep_logs_after_snapshot: raw.keep_logs_after_snapshot,
            ..RaftTuning::default()
        },
    })
    .await
    .context("starting the Raft node")?;
    let mut broker_config = BrokerConfig::default();
    broker_config.limits.write_timeout = config.write_timeout();
    broker_config.maintenance_interval = Duration::from_millis(raw.maintenance_interval_ms);
    let broker = Broker::start(raft_node.clone(), broker_config)
        .await
        .context("starting the broker")?;
    let edge = Edge::new(broker.clone(), config.write_timeout());
    let limits = Limits {
        max_record_bytes: raw.max_record_bytes,
        max_request_bytes: raw.max_request_bytes,
        max_records_per_request: raw.max_records_per_request,
        max_streams: raw.max_streams,
        max_delay_ms: raw.max_delay_ms,
        max_push_subscriptions: raw.max_push_subscriptions,
        ..Limits::default()
    };
    raft_node.set_service(ForwardService::new(broker.clone(), limits));
    let root = CancellationToken::new();
    let state = AppState::new(edge.clone(), limits, root.child_token())
        .with_allowed_origins(raw.allowed_origins.clone())
        .with_auth(match &config.admin_key {
            Some(admin) => Auth::on(admin.clone()),
            None => Auth::off(),
        });
    let open_streams = state.streams.clone();
    let pushers = psubd_api::push::spawn(state.service.clone(), root.child_token());
    let app = psubd_api::router(state);
    let tls = match (&raw.tls_cert, &raw.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(
            cert,
            key,
            raw.tls_client_ca.as_deref(),
        )?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(raw.http)
        .await
        .with_context(|| format!("binding the HTTP address {}", raw.http))?;

    tokio::spawn(register_node(
        edge.clone(),
        NodeInfo {
            id: raw.id,
            http: config.advertised_http(),
        },
        root.child_token(),
    ));
    let http_stop = root.child_token();
    let stopped = async move { http_stop.cancelled().await };
    let server = match tls {
        Some(config) => {
            let listener = crate::tls::TlsListener::new(listener, config)
                .context("starting the HTTPS listener")?;
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            })
        }
        None => tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        }),
    };
    info!(http = %config.advertised_http(), "node serving");
    let balance_stop = root.child_token();
    let balancer = (raw.leader_balance_interval_ms > 0).then(|| {
        tokio::spawn(psubd_api::leadership::balance_leaders(
            edge.clone(),
            Duration::from_millis(raw.leader_balance_interval_ms),
            balance_stop.clone(),
        ))
    });

    // Replica moves and decommissions, carried out where the work is (stopped with the
    // balancer, before the leaderships are handed over).
    let mover = tokio::spawn(psubd_api::mover::run_moves(
        edge.clone(),
        balance_stop.clone(),
    ));

    let health = raft_node.storage().health().clone();
    tokio::select! {
        () = shutdown => {}
        failure = health.failed() => fail_stop(&failure),
    }
    info!("shutting down: handing leaderships over");
    balance_stop.cancel();
    if let Some(balancer) = balancer {
        let _ = balancer.await;
    }
    let _ = mover.await;
    let handed =
        psubd_api::leadership::hand_over_all(&edge, psubd_api::leadership::HANDOVER_TIMEOUT).await;
    info!(
        led = handed.led,
        moved = handed.moved,
        "shutting down: draining HTTP"
    );
    root.cancel();
    let drain = Duration::from_millis(raw.shutdown_timeout_ms);
    let deadline = tokio::time::Instant::now() + drain;
    match tokio::time::timeout_at(deadline, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => warn!(%error, "HTTP server failed while draining"),
        Ok(Err(error)) => warn!(%error, "HTTP server task failed"),
        Err(_) => warn!(
            after_ms = raw.shutdown_timeout_ms,
            "HTTP drain timed out; stopping anyway"
        ),
    }
    // The HTTP server's drain does not see upgraded (WebSocket) connections; every
    // stream holds a slot until it has said goodbye, so wait for all slots to return.
    let all_slots = u32::try_from(raw.max_streams).unwrap_or(u32::MAX);
    if tokio::time::timeout_at(deadline, open_streams.acquire_many(all_slots))
        .await
        .is_err()
    {
        warn!(
            open = raw.max_streams - open_streams.available_permits(),
            "streams still open at the drain deadline; stopping anyway"
        );
    }
    // The pushers saw the cancellation with everything else; they stop within a bound.
    let _ = pushers.await;
    psubd_api::leadership::say_goodbye(&edge, psubd_api::leadership::GOODBYE_TIMEOUT).await;
    info!("shutting down: stopping actors and Raft groups");
    broker.shutdown().await;
    // A sync that failed during the drain or the last flush: the exit status says so.
    if let Some(failure) = health.failure() {
        fail_stop(&failure);
    }
    info!("node stopped");
    Ok(())
}

/// Exit status of a node that stopped because its storage failed.
pub const STORAGE_FAILED_EXIT_CODE: i32 = 74; // EX_IOERR

/// Ends the process at once after a storage failure (see `psubd_raft::health`): no
/// graceful shutdown, whose flushes could only fail or, worse, report a retried sync as a
/// success. A process supervisor restarts the node, which recovers from its synced data and
/// its peers.
fn fail_stop(failure: &StorageFailure) -> ! {
    tracing::error!(
        cause = %failure.cause,
        exit_code = STORAGE_FAILED_EXIT_CODE,
        "stopping the node now because its storage failed; restart it once the disk is sound"
    );
    std::process::exit(STORAGE_FAILED_EXIT_CODE)
}

/// Records this node's HTTP address with the controller, retrying with capped backoff
/// until it succeeds or the node shuts down.
async fn register_node(edge: Arc<Edge>, info: NodeInfo, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let already = edge.broker().metadata().nodes.get(&info.id) == Some(&info);
        if already {
            return;
        }
        let attempt = edge.controller(ForwardRequest::RegisterNode(info.clone()), "");
        tokio::select! {
            _ = stop.cancelled() => return,
            result = attempt => match result {
                Ok(_) => {
                    info!(http = %info.http, "registered with the controller");
                    return;
                }
                Err(error) => tracing::debug!(%error, "registration not accepted yet"),
            },
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(3));
    }
}
