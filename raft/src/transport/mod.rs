//! The peer transport: one long-lived TCP connection per pair of nodes, carrying Raft RPCs
//! (tagged with their group) and forwarded application requests, multiplexed by request id.
//!
//! Who connects: the node with the lower id dials the higher one and redials with capped,
//! jittered exponential backoff when the connection drops; the higher id accepts. So a pair
//! never races two connections, and a restarted node is found again without configuration.
//! Each dial resolves the peer's address again ([`PeerAddr`]: a DNS name or an IP literal),
//! so a peer that restarts at another IP is found at the next redial. Peers learnt after
//! the start (a node added to the cluster, see [`Transport::learn_peer`]) get a dialer
//! then. The acceptor takes an authenticated dialer with a lower id whether or not it knows
//! its address: a node that joins a running cluster is dialed by nodes it has not heard of.
//! An accepted connection from a peer replaces (closes) an older one from the same peer:
//! the newest is the one the peer is using.
//!
//! The hello exchange: the dialer sends [`codec::Frame::Hello`] with its id, the protocol
//! version and a nonce; the acceptor checks them (lower id, same version) and
//! answers with its own hello, proving it holds the cluster secret; the dialer checks that
//! proof and answers with its own ([`auth`]). Only then is the connection registered, and
//! until then no frame above [`codec::MAX_HANDSHAKE_FRAME_BYTES`] is read. A request to a peer with no
//! registered connection fails at once with [`TransportError::Unreachable`], so openraft
//! backs off and retries instead of every RPC waiting out its timeout.
//!
//! With peer TLS ([`tls`]) the hello exchange runs inside a mutually authenticated TLS
//! session, and the dialer's claimed id must be one its certificate names.
//!
//! A connection silent for `idle_timeout` (each side pings when idle) is closed, so a peer
//! that vanished without a FIN is noticed and redialed.

pub mod auth;
pub(crate) mod codec;
mod connection;
pub mod error;
pub mod faults;
pub mod tls;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use rand::Rng;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::peer_addr::PeerAddr;
use crate::transport::auth::{fresh_nonce, ClusterSecret, Exchange, Nonce, Proof, Role};
use crate::transport::codec::{
    Frame, PeerRequest, PeerResponse, MAX_FRAME_BYTES, PROTOCOL_VERSION,
};
use crate::transport::connection::{
    Connection, ConnectionEnv, FrameReader, FrameWriter, ReadHalf, WriteHalf,
};
use crate::transport::tls::PeerTls;
use crate::types::NodeId;

pub use error::TransportError;
pub use faults::Faults;

/// Serves requests that arrive from peers (the registry implements it).
pub(crate) trait InboundHandler: Send + Sync + 'static {
    /// Answers one request from `from`. Never fails: a request that cannot be served is
    /// answered with [`PeerResponse::Refused`].
    fn handle(&self, from: NodeId, request: PeerRequest) -> BoxFuture<'static, PeerResponse>;
}

/// The transport's bounds and timers (taken from [`RaftTuning`](crate::RaftTuning)).
#[derive(Debug, Clone)]
pub(crate) struct TransportLimits {
    /// Outgoing requests awaiting an answer, and incoming requests being served, per
    /// connection.
    pub max_inflight: usize,
    /// Encoded frames queued for the writer, per connection.
    pub outbound_queue: usize,
    /// A side idle this long sends a ping.
    pub keepalive: Duration,
    /// A connection that received nothing for this long is closed.
    pub idle_timeout: Duration,
    /// A connection that received nothing for this long is suspect: forwarded requests
    /// are not sent on it (see [`Transport::is_silent`]). Below `idle_timeout`.
    pub suspect_after: Duration,
    /// Deadline for a TCP connect.
    pub connect_timeout: Duration,
    /// Deadline for the hello exchange.
    pub handshake_timeout: Duration,
    /// First redial delay; doubled per failure up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest redial delay.
    pub reconnect_max: Duration,
}

/// What a transport is started with.
pub(crate) struct TransportSetup {
    /// This node's id.
    pub id: NodeId,
    /// Every node's transport address; this node's own entry is ignored.
    pub peers: BTreeMap<NodeId, PeerAddr>,
    /// Bounds and timers.
    pub limits: TransportLimits,
    /// Injected faults (tests, chaos).
    pub faults: Arc<Faults>,
    /// Serves the peers' requests.
    pub handler: Arc<dyn InboundHandler>,
    /// This node's low-space state, told to every peer.
    pub low_space: watch::Receiver<bool>,
    /// The secret every peer must prove it holds.
    pub secret: ClusterSecret,
    /// Mutual TLS with every peer, if configured.
    pub tls: Option<PeerTls>,
}

/// The node's end of the peer transport. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    /// Every known node's address (dialers read it at each attempt). Lock order: taken
    /// alone, never held across an await.
    peers: RwLock<BTreeMap<NodeId, PeerAddr>>,
    limits: TransportLimits,
    faults: Arc<Faults>,
    handler: Arc<dyn InboundHandler>,
    /// This node's low-space state, told to every peer.
    low_space: watch::Receiver<bool>,
    /// The cluster secret every peer must prove it holds.
    secret: ClusterSecret,
    /// Mutual TLS with every peer, if configured.
    tls: Option<PeerTls>,
    /// Peers whose failed proof was logged: a misconfigured peer redials every few seconds,
    /// and one WARN says it all. Cleared for a peer once it handshakes again.
    proof_failures_logged: Mutex<HashSet<NodeId>>,
    /// The live connection to each peer. Lock order: this lock is taken alone, never held
    /// across an await.
    connections: RwLock<HashMap<NodeId, Arc<Connection>>>,
    next_serial: AtomicU64,
    shutdown: CancellationToken,
    /// The listener and dialer tasks, awaited at shutdown.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Peers' application requests taken in and not yet answered on the wire (see
    /// [`Transport::await_answered`]).
    answering: connection::AnsweringCount,
}

impl Transport {
    /// Binds the listen address (a separate step so a bind failure is reported before any
    /// other resource is set up).
    ///
    /// # Errors
    /// [`TransportError::Bind`] if the address is taken or not local.
    pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, TransportError> {
        TcpListener::bind(addr)
            .await
            .map_err(|source| TransportError::Bind { addr, source })
    }

    /// Starts accepting on `listener` and dialing every peer with a higher id.
    pub(crate) fn start(listener: TcpListener, setup: TransportSetup) -> Transport {
        let TransportSetup {
            id,
            peers,
            limits,
            faults,
            handler,
            low_space,
            secret,
            tls,
        } = setup;
        let inner = Arc::new(Inner {
            id,
            peers: RwLock::new(peers),
            limits,
            faults,
            handler,
            low_space,
            secret,
            tls,
            proof_failures_logged: Mutex::new(HashSet::new()),
            connections: RwLock::new(HashMap::new()),
            next_serial: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            answering: connection::AnsweringCount::default(),
        });
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(accept_loop(inner.clone(), listener)));
        let higher: Vec<NodeId> = inner
            .read_peers()
            .range(id.saturating_add(1)..)
            .map(|(&peer, _)| peer)
            .collect();
        for peer in higher {
            tasks.push(tokio::spawn(dial_loop(inner.clone(), peer)));
        }
        *inner.lock_tasks() = tasks;
        Transport { inner }
    }

    /// Every known node's address, this node's included.
    pub(crate) fn peers(&self) -> BTreeMap<NodeId, PeerAddr> {
        self.inner.read_peers().clone()
    }

    /// Records `peer`'s address (a node added to the cluster, or one that moved): the next
    /// dial uses it, and a peer with a higher id than this node's that was not known before
    /// gets a dialer now. Answers whether anything changed.
    pub(crate) fn learn_peer(&self, peer: NodeId, addr: PeerAddr) -> bool {
        let known = {
            let mut peers = self.inner.write_peers();
            match peers.insert(peer, addr.clone()) {
                Some(old) if old == addr => return false,
                old => old.is_some(),
            }
        };
        tracing::info!(peer, %addr, "learnt a peer's address");
        if !known && peer > self.inner.id && !self.inner.shutdown.is_cancelled() {
            let task = tokio::spawn(dial_loop(self.inner.clone(), peer));
            self.inner.lock_tasks().push(task);
        }
        true
    }

    /// This node's id.
    pub(crate) fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The peers with a live connection right now.
    pub(crate) fn connected_peers(&self) -> Vec<NodeId> {
        let mut peers: Vec<NodeId> = self
            .inner
            .read_connections()
            .iter()
            .filter(|(_, c)| !c.is_closed())
            .map(|(&p, _)| p)
            .collect();
        peers.sort_unstable();
        peers
    }

    /// True when `peer`'s live connection last said the peer is low on space. A peer without
    /// a connection counts as not low: it takes no replication from here either way.
    pub(crate) fn peer_low_space(&self, peer: NodeId) -> bool {
        self.inner
            .read_connections()
            .get(&peer)
            .is_some_and(|c| !c.is_closed() && c.peer_low_space())
    }

    /// True when a connection to `peer` exists but nothing came from the peer for
    /// `suspect_after` (twice the keepalive): the peer is probably cut off or stopped, and
    /// a request sent now would most likely sit until the connection is given up. The
    /// caller can then go elsewhere, knowing nothing was sent.
    pub(crate) fn is_silent(&self, peer: NodeId) -> bool {
        self.inner
            .read_connections()
            .get(&peer)
            .is_some_and(|c| !c.is_closed() && c.silent_for() > self.inner.limits.suspect_after)
    }

    /// The peers this node is in contact with now — a live connection on which the peer
    /// spoke within `suspect_after` and did not say it is stopping — each with the serial
    /// number of that connection, which changes when the connection is replaced (the peer
    /// restarted, or the link was redialed). The serial, not the connection's address: a
    /// replacement allocated where the old one was freed has the same address, and quiet
    /// followers of a leader that restarted within a pass then never woke. This is the
    /// node-level liveness every quiet group relies on (see `crate::quiet`): one keepalive
    /// per peer pair stands in for the heartbeats of all the groups the two share.
    pub(crate) fn contact(&self) -> BTreeMap<NodeId, u64> {
        let suspect_after = self.inner.limits.suspect_after;
        self.inner
            .read_connections()
            .iter()
            .filter(|(_, c)| !c.is_closed() && !c.is_departing() && c.silent_for() <= suspect_after)
            .map(|(&peer, c)| (peer, c.serial()))
            .collect()
    }

    /// Sends `body` to `peer` and waits for the answer, at most `timeout`.
    ///
    /// # Errors
    /// [`TransportError::Unreachable`] at once if no connection is up; otherwise timeout,
    /// closed-connection and codec errors from the connection.
    pub(crate) async fn request(
        &self,
        peer: NodeId,
        body: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, TransportError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(TransportError::Shutdown);
        }
        if peer == self.inner.id {
            return Err(TransportError::UnknownPeer { peer });
        }
        let conn = self.inner.read_connections().get(&peer).cloned();
        match conn {
            Some(conn) if !conn.is_closed() => conn.request(body, timeout).await,
            _ => Err(TransportError::Unreachable { peer }),
        }
    }

    /// `peer` said it is stopping: no application request goes to it until it connects
    /// again (see [`Transport::is_departing`]). Raft's own messages still do: it is a voter
    /// of its groups until it stops.
    pub(crate) fn mark_departing(&self, peer: NodeId) {
        if let Some(conn) = self.inner.read_connections().get(&peer) {
            conn.mark_departing();
        }
    }

    /// Waits until every application request a peer sent here has its answer written to
    /// the connection (or the connection is gone), at most `wait`: a stopping node closes
    /// its connections only then, so no peer sees one close under a request it answered.
    pub(crate) async fn await_answered(&self, wait: Duration) {
        self.inner.answering.await_zero(wait).await;
    }

    /// True when `peer` said, on the connection up now, that it is stopping.
    pub(crate) fn is_departing(&self, peer: NodeId) -> bool {
        self.inner
            .read_connections()
            .get(&peer)
            .is_some_and(|c| c.is_departing())
    }

    /// Stops accepting and dialing, closes every connection (failing its pending requests)
    /// and waits for the listener and dialer tasks to end. Idempotent.
    pub(crate) async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let conns: Vec<_> = self.inner.write_connections().drain().collect();
        for (_, conn) in conns {
            conn.close();
        }
        let tasks = std::mem::take(&mut *self.inner.lock_tasks());
        for task in tasks {
            if let Err(err) = task.await {
                tracing::warn!(cause = %err, "transport task ended abnormally");
            }
        }
    }

    /// Stops the transport's tasks without waiting (used when the owner is dropped
    /// without a shutdown).
    pub(crate) fn cancel(&self) {
        self.inner.shutdown.cancel();
    }
}

impl Inner {
    fn read_peers(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<NodeId, PeerAddr>> {
        // Critical sections are single map operations: a poisoned map is still consistent.
        self.peers.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_peers(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<NodeId, PeerAddr>> {
        self.peers.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read_connections(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodeId, Arc<Connection>>> {
        // Critical sections are single map operations: a poisoned map is still consistent.
        self.connections.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_connections(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<NodeId, Arc<Connection>>> {
        self.connections.write().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs, once per peer until it handshakes again, that `peer` (at `addr`) failed to
    /// prove it holds our cluster secret: a misconfiguration the operator must fix.
    fn proof_failed(&self, peer: NodeId, addr: &dyn std::fmt::Display) {
        let first = self
            .proof_failures_logged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer);
        if first {
            tracing::warn!(
                peer,
                addr = %addr,
                "peer refused: it does not hold this node's cluster secret \
                 (check --cluster-secret-file on both nodes); not logged again until it connects"
            );
        } else {
            tracing::debug!(peer, addr = %addr, "peer refused again: cluster secret mismatch");
        }
    }

    /// Forgets a logged proof failure of `peer` (it handshook successfully).
    fn proof_passed(&self, peer: NodeId) {
        self.proof_failures_logged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer);
    }

    /// Makes a handshaken connection the one used for `peer`, closing any older one, and
    /// arranges for it to unregister itself when it closes.
    fn register(
        self: &Arc<Self>,
        peer: NodeId,
        reader: FrameReader,
        writer: FrameWriter,
    ) -> Arc<Connection> {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let conn = Connection::spawn(
            peer,
            serial,
            reader,
            writer,
            ConnectionEnv {
                limits: &self.limits,
                faults: &self.faults,
                handler: &self.handler,
                shutdown: &self.shutdown,
                low_space: &self.low_space,
                answering: &self.answering,
            },
        );
        let old = self.write_connections().insert(peer, conn.clone());
        if let Some(old) = old {
            old.close();
        }
        tracing::info!(peer, serial, "peer connection up");
        let inner = self.clone();
        let watched = conn.clone();
        tokio::spawn(async move {
            watched.closed().await;
            let mut conns = inner.write_connections();
            if conns
                .get(&peer)
                .is_some_and(|c| c.serial() == watched.serial())
            {
                conns.remove(&peer);
            }
            drop(conns);
            tracing::info!(
                peer = watched.peer(),
                serial = watched.serial(),
                "peer connection down"
            );
        });
        conn
    }
}

/// Frames a new stream's halves; the reader takes only handshake-sized frames until
/// [`authenticated`] lifts the limit.
fn framed((r, w): (ReadHalf, WriteHalf)) -> (FrameReader, FrameWriter) {
    (
        FramedRead::new(r, codec::handshake_codec()),
        FramedWrite::new(w, codec::length_codec()),
    )
}

/// A plain TCP stream's halves.
fn plain(stream: TcpStream) -> (ReadHalf, WriteHalf) {
    let (r, w) = stream.into_split();
    (Box::new(r), Box::new(w))
}

/// A TLS stream's halves.
fn encrypted<S>(stream: S) -> (ReadHalf, WriteHalf)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (r, w) = tokio::io::split(stream);
    (Box::new(r), Box::new(w))
}

/// Lifts the handshake frame limit once the peer has proved itself.
fn authenticated(mut reader: FrameReader) -> FrameReader {
    reader.decoder_mut().set_max_frame_length(MAX_FRAME_BYTES);
    reader
}

/// Why a handshake failed (logged at debug: a down peer is routine).
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("timed out")]
    Timeout,
    #[error("peer closed the connection")]
    Closed,
    #[error("unexpected first frame")]
    NotHello,
    #[error("protocol version {0} is not ours")]
    Version(u32),
    #[error("node {0} may not connect here")]
    Refused(NodeId),
    #[error("node {0} did not prove it holds our cluster secret")]
    BadProof(NodeId),
    #[error("the dialer's certificate does not name node {0}")]
    NotCertified(NodeId),
    #[error("the link is cut by an injected fault")]
    Cut,
}

/// A hello as read: the sender, its nonce and its proof (the acceptor's).
struct Hello {
    node: NodeId,
    nonce: Nonce,
    proof: Option<Proof>,
}

async fn read_frame(reader: &mut FrameReader) -> Result<Frame, HandshakeError> {
    let body = reader.next().await.ok_or(HandshakeError::Closed)??;
    Ok(codec::decode(&body)?)
}

async fn read_hello(reader: &mut FrameReader) -> Result<Hello, HandshakeError> {
    match read_frame(reader).await? {
        Frame::Hello {
            version,
            node,
            nonce,
            proof,
        } if version == PROTOCOL_VERSION => Ok(Hello { node, nonce, proof }),
        Frame::Hello { version, .. } => Err(HandshakeError::Version(version)),
        _ => Err(HandshakeError::NotHello),
    }
}

async fn send_frame(writer: &mut FrameWriter, frame: &Frame) -> Result<(), HandshakeError> {
    writer.send(codec::encode(frame)?).await?;
    Ok(())
}

/// Resolves `addr` and connects to the first of its addresses that answers, all within the
/// connect timeout.
async fn connect(inner: &Inner, addr: &PeerAddr) -> Result<TcpStream, HandshakeError> {
    let attempt = async {
        let mut last = None;
        for resolved in addr.resolve().await? {
            match TcpStream::connect(resolved).await {
                Ok(stream) => return Ok(stream),
                Err(error) => last = Some(error),
            }
        }
        Err(last
            .unwrap_or_else(|| std::io::Error::other("no address"))
            .into())
    };
    tokio::time::timeout(inner.limits.connect_timeout, attempt)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}

async fn dial(
    inner: &Inner,
    peer: NodeId,
    addr: &PeerAddr,
) -> Result<(FrameReader, FrameWriter), HandshakeError> {
    if inner.faults.is_cut(peer) {
        return Err(HandshakeError::Cut);
    }
    let stream = connect(inner, addr).await?;
    stream.set_nodelay(true)?;
    let exchange = async {
        let halves = match &inner.tls {
            Some(tls) => encrypted(tls.connect(peer, stream).await?),
            None => plain(stream),
        };
        let (mut reader, mut writer) = framed(halves);
        let dialer_nonce = fresh_nonce();
        send_frame(
            &mut writer,
            &Frame::Hello {
                version: PROTOCOL_VERSION,
                node: inner.id,
                nonce: dialer_nonce,
                proof: None,
            },
        )
        .await?;
        let answer = read_hello(&mut reader).await?;
        if answer.node != peer {
            // The address belongs to another node: a configuration error worth a loud log.
            tracing::error!(peer, answered = answer.node, %addr, "dialed address answered as another node");
            return Err(HandshakeError::Refused(answer.node));
        }
        let exchange = Exchange {
            dialer: inner.id,
            acceptor: peer,
            dialer_nonce,
            acceptor_nonce: answer.nonce,
        };
        let proved = answer
            .proof
            .is_some_and(|proof| exchange.verify(&inner.secret, Role::Acceptor, &proof));
        if !proved {
            return Err(HandshakeError::BadProof(peer));
        }
        let proof = exchange.proof(&inner.secret, Role::Dialer);
        send_frame(&mut writer, &Frame::Proof { proof }).await?;
        Ok::<_, HandshakeError>((reader, writer))
    };
    let (reader, writer) = tokio::time::timeout(inner.limits.handshake_timeout, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    inner.proof_passed(peer);
    Ok((authenticated(reader), writer))
}

/// Dials `peer` at its current address (looked up, and resolved, again at every attempt)
/// until the transport shuts down.
async fn dial_loop(inner: Arc<Inner>, peer: NodeId) {
    let mut backoff = inner.limits.reconnect_min;
    loop {
        if inner.shutdown.is_cancelled() {
            return;
        }
        let Some(addr) = inner.read_peers().get(&peer).cloned() else {
            return;
        };
        match dial(&inner, peer, &addr).await {
            Ok((reader, writer)) => {
                backoff = inner.limits.reconnect_min;
                let conn = inner.register(peer, reader, writer);
                tokio::select! {
                    _ = conn.closed() => {}
                    _ = inner.shutdown.cancelled() => return,
                }
            }
            Err(HandshakeError::BadProof(peer)) => inner.proof_failed(peer, &addr),
            Err(err) => {
                tracing::debug!(peer, %addr, cause = %err, "dial failed");
            }
        }
        // Equal jitter: half the backoff fixed, half random, so nodes that lost a peer at
        // the same moment do not redial in lockstep.
        let half = backoff / 2;
        let jitter = rand::thread_rng().gen_range(Duration::ZERO..=half);
        tokio::select! {
            _ = tokio::time::sleep(half + jitter) => {}
            _ = inner.shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(inner.limits.reconnect_max);
    }
}

async fn accept_one(inner: Arc<Inner>, stream: TcpStream, from: SocketAddr) {
    let handshake = async {
        stream.set_nodelay(true)?;
        let (halves, certificate) = match &inner.tls {
            Some(tls) => {
                let stream = tls.accept(stream).await?;
                let certificate = tls::dialer_certificate(&stream);
                (encrypted(stream), certificate)
            }
            None => (plain(stream), None),
        };
        let (mut reader, mut writer) = framed(halves);
        let hello = read_hello(&mut reader).await?;
        let peer = hello.node;
        if peer >= inner.id || peer == 0 {
            return Err(HandshakeError::Refused(peer));
        }
        if inner.tls.is_some()
            && !certificate.is_some_and(|certificate| tls::certifies(&certificate, peer))
        {
            return Err(HandshakeError::NotCertified(peer));
        }
        if inner.faults.is_cut(peer) {
            return Err(HandshakeError::Cut);
        }
        let exchange = Exchange {
            dialer: peer,
            acceptor: inner.id,
            dialer_nonce: hello.nonce,
            acceptor_nonce: fresh_nonce(),
        };
        send_frame(
            &mut writer,
            &Frame::Hello {
                version: PROTOCOL_VERSION,
                node: inner.id,
                nonce: exchange.acceptor_nonce,
                proof: Some(exchange.proof(&inner.secret, Role::Acceptor)),
            },
        )
        .await?;
        match read_frame(&mut reader).await {
            Ok(Frame::Proof { proof }) if exchange.verify(&inner.secret, Role::Dialer, &proof) => {
                Ok::<_, HandshakeError>((peer, authenticated(reader), writer))
            }
            Ok(Frame::Proof { .. }) => Err(HandshakeError::BadProof(peer)),
            // A dialer that cannot verify our proof (it holds another secret) hangs up here.
            Err(HandshakeError::Closed) => Err(HandshakeError::BadProof(peer)),
            Ok(_) => Err(HandshakeError::NotHello),
            Err(other) => Err(other),
        }
    };
    match tokio::time::timeout(inner.limits.handshake_timeout, handshake).await {
        Ok(Ok((peer, reader, writer))) => {
            inner.proof_passed(peer);
            if !inner.shutdown.is_cancelled() {
                inner.register(peer, reader, writer);
            }
        }
        Ok(Err(HandshakeError::BadProof(peer))) => inner.proof_failed(peer, &from),
        Ok(Err(HandshakeError::Refused(peer))) => {
            tracing::warn!(peer, %from, "refused connection from a node that may not dial here");
        }
        Ok(Err(HandshakeError::NotCertified(peer))) => {
            tracing::warn!(peer, %from, "refused a connection whose certificate does not name the node it claims");
        }
        Ok(Err(err)) => tracing::debug!(%from, cause = %err, "inbound handshake failed"),
        Err(_) => tracing::debug!(%from, "inbound handshake timed out"),
    }
}

/// Handshakes in progress at once; beyond this, new sockets are closed at once, so a burst
/// of stray connections cannot pile up tasks (peers are few, and they redial).
const MAX_PENDING_HANDSHAKES: usize = 64;

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, from)) => match handshakes.clone().try_acquire_owned() {
                Ok(permit) => {
                    let inner = inner.clone();
                    tokio::spawn(async move {
                        accept_one(inner, stream, from).await;
                        drop(permit);
                    });
                }
                Err(_) => tracing::warn!(%from, "too many pending handshakes, closing"),
            },
            Err(err) => {
                // Typically out of file descriptors: wait a little instead of spinning.
                tracing::warn!(cause = %err, "failed to accept");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = inner.shutdown.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::codec::Refusal;
    use crate::RaftTuning;
    use bytes::Bytes;

    /// Refuses everything: these tests never get past the handshake.
    struct NoService;

    impl InboundHandler for NoService {
        fn handle(&self, _from: NodeId, _request: PeerRequest) -> BoxFuture<'static, PeerResponse> {
            Box::pin(async { PeerResponse::Refused(Refusal::NoService) })
        }
    }

    /// Node 2 of a two-node cluster, listening on loopback with `secret`.
    async fn node_two(secret: &str) -> (Transport, SocketAddr) {
        let listener = Transport::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        // Node 1 sits on a port nobody listens on: node 2 only accepts.
        let peers = BTreeMap::from([
            (1, PeerAddr::parse("127.0.0.1:9").unwrap()),
            (2, PeerAddr::from(addr)),
        ]);
        let (_low_space, watch_rx) = watch::channel(false);
        let transport = Transport::start(
            listener,
            TransportSetup {
                id: 2,
                peers,
                limits: RaftTuning::default().transport_limits(),
                faults: Arc::new(Faults::default()),
                handler: Arc::new(NoService),
                low_space: watch_rx,
                secret: ClusterSecret::new(secret.as_bytes()).unwrap(),
                tls: None,
            },
        );
        (transport, addr)
    }

    async fn raw(addr: SocketAddr) -> (FrameReader, FrameWriter) {
        let (r, w) = plain(TcpStream::connect(addr).await.unwrap());
        (
            FramedRead::new(r, codec::length_codec()),
            FramedWrite::new(w, codec::length_codec()),
        )
    }

    /// Whether the other side closed the connection (rather than answering).
    async fn closed_by_peer(reader: &mut FrameReader) -> bool {
        match tokio::time::timeout(Duration::from_secs(5), reader.next()).await {
            Ok(None) | Ok(Some(Err(_))) => true,
            Ok(Some(Ok(_))) => false,
            Err(_) => panic!("the connection was neither answered nor closed within 5 s"),
        }
    }

    /// Dials `addr` as node 1 and reads node 2's answering hello: the connection, and the
    /// exchange both proofs cover.
    async fn hello_as_node_one(addr: SocketAddr) -> (FrameReader, FrameWriter, Exchange, Proof) {
        let (mut reader, mut writer) = raw(addr).await;
        let dialer_nonce = fresh_nonce();
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            node: 1,
            nonce: dialer_nonce,
            proof: None,
        };
        send_frame(&mut writer, &hello).await.unwrap();
        let answer = read_hello(&mut reader).await.unwrap();
        let exchange = Exchange {
            dialer: 1,
            acceptor: 2,
            dialer_nonce,
            acceptor_nonce: answer.nonce,
        };
        (
            reader,
            writer,
            exchange,
            answer.proof.expect("the acceptor proves itself"),
        )
    }

    #[tokio::test]
    async fn a_connection_claiming_a_node_id_without_the_secret_is_closed() {
        let (transport, addr) = node_two("the real cluster secret").await;
        let (mut reader, mut writer, exchange, acceptor_proof) = hello_as_node_one(addr).await;
        // A stranger can neither check the acceptor's proof nor make its own.
        let guessed = ClusterSecret::new(b"a guess at the secret").unwrap();
        assert!(!exchange.verify(&guessed, Role::Acceptor, &acceptor_proof));
        let proof = exchange.proof(&guessed, Role::Dialer);
        send_frame(&mut writer, &Frame::Proof { proof })
            .await
            .unwrap();
        assert!(
            closed_by_peer(&mut reader).await,
            "a wrong proof must close the connection"
        );
        assert!(
            transport.connected_peers().is_empty(),
            "nothing was registered"
        );

        // With the secret, the same exchange is taken.
        let secret = ClusterSecret::new(b"the real cluster secret").unwrap();
        let (_reader, mut writer, exchange, acceptor_proof) = hello_as_node_one(addr).await;
        assert!(exchange.verify(&secret, Role::Acceptor, &acceptor_proof));
        let proof = exchange.proof(&secret, Role::Dialer);
        send_frame(&mut writer, &Frame::Proof { proof })
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while transport.connected_peers() != vec![1] {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the proved peer is registered");
        transport.cancel();
    }

    #[tokio::test]
    async fn a_large_frame_before_the_handshake_closes_the_connection() {
        let (transport, addr) = node_two("the real cluster secret").await;
        let (mut reader, mut writer) = raw(addr).await;
        writer
            .send(Bytes::from(vec![0u8; codec::MAX_HANDSHAKE_FRAME_BYTES + 1]))
            .await
            .unwrap();
        assert!(closed_by_peer(&mut reader).await);
        assert!(transport.connected_peers().is_empty());
        transport.cancel();
    }
}
