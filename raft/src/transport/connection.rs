//! One established connection to a peer, multiplexing requests in both directions.
//!
//! After the hello exchange a connection runs two tasks: the writer drains a bounded queue
//! of encoded frames onto the socket, and the reader decodes frames, completes pending
//! requests with their responses and hands incoming requests to the inbound handler (each
//! in its own task, so a slow snapshot install never holds up another group's heartbeat).
//!
//! Bounds: at most `max_inflight` outgoing requests wait for answers (a semaphore), at most
//! `max_inflight` incoming requests are being served (the reader stops reading beyond that,
//! which pushes back through TCP), and the outbound queue holds at most `outbound_queue`
//! frames. Every request has a deadline. When the connection closes, every pending request
//! fails at once with [`TransportError::ConnectionClosed`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use crate::transport::codec::{self, Frame, PeerRequest, PeerResponse, Refusal};
use crate::transport::error::TransportError;
use crate::transport::faults::{Faults, Verdict};
use crate::transport::{InboundHandler, TransportLimits};
use crate::types::NodeId;

/// The read half of a connection's stream: plain TCP or TLS.
pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a connection's stream: plain TCP or TLS.
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;
/// The read half of a connection's stream, framed.
pub(crate) type FrameReader = FramedRead<ReadHalf, LengthDelimitedCodec>;
/// The write half of a connection's stream, framed.
pub(crate) type FrameWriter = FramedWrite<WriteHalf, LengthDelimitedCodec>;

/// An encoded frame waiting for the writer, stamped so an injected delay is measured from
/// when it was queued (a delay models latency, not a bandwidth cap).
struct Outbound {
    frame: Bytes,
    queued_at: Instant,
    /// For the answer to a peer's application request: released once written out.
    answering: Option<Answering>,
}

/// How many peers' application requests (`PeerRequest::Service`) were taken in and do not
/// yet have their answer flushed to the connection. Shared by a transport's connections.
#[derive(Clone, Default)]
pub(crate) struct AnsweringCount(Arc<watch::Sender<usize>>);

impl AnsweringCount {
    fn start(&self) -> Answering {
        self.0.send_modify(|n| *n += 1);
        Answering(self.0.clone())
    }

    /// Waits until the count is zero, at most `wait`.
    pub(crate) async fn await_zero(&self, wait: Duration) {
        let mut count = self.0.subscribe();
        let _ = tokio::time::timeout(wait, count.wait_for(|n| *n == 0)).await;
    }
}

/// One request counted in an [`AnsweringCount`], until dropped: taken in by the read loop
/// (in stream order, so a stopping node counts every request that arrived before a later
/// frame), carried with the answer, and dropped once the answer is flushed or the
/// connection is gone.
pub(crate) struct Answering(Arc<watch::Sender<usize>>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// What every connection of a transport shares.
pub(crate) struct ConnectionEnv<'a> {
    /// Bounds and timers.
    pub limits: &'a TransportLimits,
    /// The node's injected faults.
    pub faults: &'a Arc<Faults>,
    /// Serves the peer's requests.
    pub handler: &'a Arc<dyn InboundHandler>,
    /// The transport's shutdown token; the connection's own token is its child.
    pub shutdown: &'a CancellationToken,
    /// This node's low-space state, told to the peer (see [`Frame::Status`]).
    pub low_space: &'a watch::Receiver<bool>,
    /// The transport's count of application requests being answered.
    pub answering: &'a AnsweringCount,
}

/// A live connection to one peer. Shared (`Arc`) between the transport's map, the tasks
/// and callers in the middle of a request.
pub(crate) struct Connection {
    peer: NodeId,
    /// Distinguishes this connection from the one that replaced it (or that it replaced),
    /// so a closing connection only unregisters itself.
    serial: u64,
    outbound: mpsc::Sender<Outbound>,
    /// Requests sent and not yet answered. Invariant: once `closed` is cancelled, nothing
    /// is left here for long (close drains it; a request that inserts after the drain sees
    /// `closed` and removes its own entry). The lock is never held across an await.
    pending: Mutex<HashMap<u64, oneshot::Sender<PeerResponse>>>,
    next_id: AtomicU64,
    inflight: Semaphore,
    closed: CancellationToken,
    /// When the connection was opened: the origin of `last_heard_ms`.
    opened: Instant,
    /// Milliseconds after `opened` at which the last frame from the peer was taken in (a
    /// dropped frame of an injected fault does not count). A healthy peer is heard at least
    /// every keepalive: it pings when it has nothing else to say.
    last_heard_ms: AtomicU64,
    /// What the peer last told of its free space ([`Frame::Status`]).
    peer_low_space: AtomicBool,
    /// The peer said it is stopping: no application request is sent to it on this
    /// connection (its successor, after the peer restarts, starts clear).
    departing: AtomicBool,
    /// Orders marking `departing` against queueing an application request: a request
    /// queued unmarked is in the stream before the answer to the peer's goodbye, which is
    /// queued after the mark, so the peer reads it first and waits for it.
    departure: Mutex<()>,
}

impl Connection {
    /// Starts the reader and writer tasks on a connection whose hello exchange is done.
    /// `shutdown` is the transport's token: cancelling it closes the connection too.
    pub(crate) fn spawn(
        peer: NodeId,
        serial: u64,
        reader: FrameReader,
        writer: FrameWriter,
        env: ConnectionEnv<'_>,
    ) -> Arc<Connection> {
        let ConnectionEnv {
            limits,
            faults,
            handler,
            shutdown,
            low_space,
            answering,
        } = env;
        let (tx, rx) = mpsc::channel(limits.outbound_queue);
        let conn = Arc::new(Connection {
            peer,
            serial,
            outbound: tx,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            inflight: Semaphore::new(limits.max_inflight),
            closed: shutdown.child_token(),
            opened: Instant::now(),
            last_heard_ms: AtomicU64::new(0),
            peer_low_space: AtomicBool::new(false),
            departing: AtomicBool::new(false),
            departure: Mutex::new(()),
        });
        let mut low_space = low_space.clone();
        // The first status goes out with the connection's first frames.
        low_space.mark_changed();
        tokio::spawn(write_loop(
            conn.clone(),
            writer,
            rx,
            faults.clone(),
            WriterTimers {
                keepalive: limits.keepalive,
                low_space,
            },
        ));
        tokio::spawn(read_loop(
            conn.clone(),
            reader,
            faults.clone(),
            handler.clone(),
            answering.clone(),
            Arc::new(Semaphore::new(limits.max_inflight)),
            ReadTimers {
                idle_timeout: limits.idle_timeout,
                suspect_after: limits.suspect_after,
            },
        ));
        conn
    }

    /// The peer at the other end.
    pub(crate) fn peer(&self) -> NodeId {
        self.peer
    }

    /// This connection's serial number (see the field).
    pub(crate) fn serial(&self) -> u64 {
        self.serial
    }

    /// True once the connection is closed (it never reopens).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// The peer is stopping: send it no more application requests on this connection.
    pub(crate) fn mark_departing(&self) {
        let _order = self.departure.lock().unwrap_or_else(|e| e.into_inner());
        self.departing.store(true, Ordering::Release);
    }

    /// True once the peer said it is stopping.
    pub(crate) fn is_departing(&self) -> bool {
        self.departing.load(Ordering::Acquire)
    }

    /// When the peer was last heard on this connection (its opening, before any frame).
    fn heard_at(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_heard_ms.load(Ordering::Relaxed))
    }

    /// True when the peer last said it is low on space.
    pub(crate) fn peer_low_space(&self) -> bool {
        self.peer_low_space.load(Ordering::Relaxed)
    }

    /// How long since the peer was last heard on this connection.
    pub(crate) fn silent_for(&self) -> Duration {
        self.heard_at().elapsed()
    }

    fn heard(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_heard_ms.store(now, Ordering::Relaxed);
    }

    /// Resolves when the connection is closed.
    pub(crate) async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// Closes the connection: the tasks stop and every pending request fails at once.
    pub(crate) fn close(&self) {
        self.closed.cancel();
        self.fail_pending();
    }

    /// Fails every request waiting for an answer (as if the connection had closed).
    fn fail_pending(&self) {
        let drained: Vec<_> = self.lock_pending().drain().collect();
        // Dropping the senders wakes every waiter with an error.
        drop(drained);
    }

    /// Sends `body` and waits for the answer, at most `timeout` in all (waiting for an
    /// in-flight slot, for queue space and for the answer).
    ///
    /// # Errors
    /// [`TransportError::Timeout`] when the deadline passes, [`TransportError::ConnectionClosed`]
    /// when the connection closes first, codec errors if the request cannot be encoded.
    pub(crate) async fn request(
        &self,
        body: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, TransportError> {
        let peer = self.peer;
        match tokio::time::timeout(timeout, self.request_inner(body)).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout {
                peer,
                after: timeout,
            }),
        }
    }

    async fn request_inner(&self, body: PeerRequest) -> Result<PeerResponse, TransportError> {
        let closed = || TransportError::ConnectionClosed { peer: self.peer };
        // Raft's own messages still go to a departing peer (a voter until it stops).
        let application = matches!(body, PeerRequest::Service(_));
        let _permit = self.inflight.acquire().await.map_err(|_| closed())?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = codec::encode(&Frame::Request { id, body })?;
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(id, tx);
        // Removes the entry if this future is dropped (caller's timeout) or fails.
        let _guard = PendingGuard { conn: self, id };
        if self.closed.is_cancelled() {
            return Err(closed());
        }
        let out = Outbound {
            frame,
            queued_at: Instant::now(),
            answering: None,
        };
        let slot = tokio::select! {
            slot = self.outbound.reserve() => slot.map_err(|_| closed())?,
            _ = self.closed.cancelled() => return Err(closed()),
        };
        // Only application requests are ordered against the departure mark (Raft's
        // messages, the most frequent, take no lock).
        {
            let _order =
                application.then(|| self.departure.lock().unwrap_or_else(|e| e.into_inner()));
            if application && self.departing.load(Ordering::Acquire) {
                // Nothing was sent: the caller goes elsewhere.
                return Err(TransportError::Unreachable { peer: self.peer });
            }
            slot.send(out);
        }
        rx.await.map_err(|_| closed())
    }

    fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<PeerResponse>>> {
        // Every critical section is a single map operation, so a poisoned map is consistent.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn complete(&self, id: u64, body: PeerResponse) {
        let waiter = self.lock_pending().remove(&id);
        match waiter {
            // The requester may have given up (timeout); its answer is simply dropped.
            Some(tx) => {
                let _ = tx.send(body);
            }
            None => tracing::debug!(peer = self.peer, id, "response for no pending request"),
        }
    }
}

/// Removes a pending entry when its request ends, however it ends.
struct PendingGuard<'a> {
    conn: &'a Connection,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.conn.lock_pending().remove(&self.id);
    }
}

/// Waits out an injected delay, or returns false if the connection closes meanwhile.
async fn hold(conn: &Connection, until: Instant) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(until) => true,
        _ = conn.closed.cancelled() => false,
    }
}

/// What makes the writer send frames of its own: the keepalive tick and status changes.
struct WriterTimers {
    keepalive: Duration,
    low_space: watch::Receiver<bool>,
}

async fn write_loop(
    conn: Arc<Connection>,
    mut writer: FrameWriter,
    mut rx: mpsc::Receiver<Outbound>,
    faults: Arc<Faults>,
    timers: WriterTimers,
) {
    let WriterTimers {
        keepalive,
        mut low_space,
    } = timers;
    let mut status_open = true;
    let ping = match codec::encode(&Frame::Ping) {
        Ok(p) => p,
        Err(err) => {
            tracing::error!(peer = conn.peer, cause = %err, "cannot encode ping");
            conn.close();
            return;
        }
    };
    let mut tick = tokio::time::interval(keepalive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wrote_since_tick = false;
    let mut unflushed: Vec<Answering> = Vec::new();
    loop {
        let out = tokio::select! {
            _ = conn.closed.cancelled() => break,
            out = rx.recv() => match out {
                Some(out) => out,
                None => break,
            },
            _ = tick.tick() => {
                if wrote_since_tick {
                    wrote_since_tick = false;
                    continue;
                }
                Outbound { frame: ping.clone(), queued_at: Instant::now(), answering: None }
            }
            changed = low_space.changed(), if status_open => {
                if changed.is_err() {
                    // The node's health is gone (shutting down): nothing more to tell.
                    status_open = false;
                    continue;
                }
                let low = *low_space.borrow_and_update();
                match codec::encode(&Frame::Status { low_space: low }) {
                    Ok(frame) => Outbound { frame, queued_at: Instant::now(), answering: None },
                    Err(err) => {
                        tracing::warn!(peer = conn.peer, cause = %err, "cannot encode status");
                        continue;
                    }
                }
            }
        };
        match faults.verdict(conn.peer) {
            Verdict::Pass => {}
            Verdict::Drop => continue,
            Verdict::Delay(d) => {
                if !hold(&conn, out.queued_at + d).await {
                    break;
                }
            }
        }
        // `feed` only buffers (flushing when the buffer is large); flush once the queue is
        // empty so a burst of frames goes out in few syscalls. Answers count as given once
        // flushed.
        unflushed.extend(out.answering);
        let mut result = writer.feed(out.frame).await;
        if result.is_ok() && rx.is_empty() {
            result = SinkExt::<Bytes>::flush(&mut writer).await;
            if result.is_ok() {
                unflushed.clear();
            }
        }
        if let Err(err) = result {
            tracing::debug!(peer = conn.peer, cause = %err, "connection write failed");
            break;
        }
        wrote_since_tick = true;
    }
    conn.close();
}

/// The reader's timers (from [`TransportLimits`]).
struct ReadTimers {
    /// Nothing received for this long (dropped frames included): the connection closes.
    idle_timeout: Duration,
    /// Nothing taken in from the peer for this long: pending requests fail.
    suspect_after: Duration,
}

async fn read_loop(
    conn: Arc<Connection>,
    mut reader: FrameReader,
    faults: Arc<Faults>,
    handler: Arc<dyn InboundHandler>,
    answering: AnsweringCount,
    serving: Arc<Semaphore>,
    timers: ReadTimers,
) {
    let mut last_frame = Instant::now();
    let mut suspected = false;
    loop {
        let suspect_at = conn.heard_at() + timers.suspect_after;
        let next = tokio::select! {
            _ = conn.closed.cancelled() => break,
            // The peer fell silent (cut off, paused): the requests waiting for its answers
            // fail now rather than when the connection is given up, so their callers learn
            // of it (as an unknown outcome, since they may have been delivered) seconds
            // sooner. The connection stays: the peer may only be slow.
            _ = tokio::time::sleep_until(suspect_at), if !suspected => {
                suspected = true;
                tracing::debug!(peer = conn.peer, "peer silent; failing the requests waiting on it");
                conn.fail_pending();
                continue;
            }
            next = tokio::time::timeout_at(last_frame + timers.idle_timeout, reader.next()) => next,
        };
        let body = match next {
            Err(_) => {
                tracing::info!(peer = conn.peer, "connection silent too long, closing");
                break;
            }
            Ok(None) => {
                tracing::debug!(peer = conn.peer, "connection closed by peer");
                break;
            }
            Ok(Some(Err(err))) => {
                tracing::debug!(peer = conn.peer, cause = %err, "connection read failed");
                break;
            }
            Ok(Some(Ok(body))) => body,
        };
        let received_at = Instant::now();
        last_frame = received_at;
        match faults.verdict(conn.peer) {
            Verdict::Pass => {}
            Verdict::Drop => continue,
            Verdict::Delay(d) => {
                if !hold(&conn, received_at + d).await {
                    break;
                }
            }
        }
        conn.heard();
        suspected = false;
        let frame = match codec::decode(&body) {
            Ok(frame) => frame,
            Err(err) => {
                tracing::warn!(peer = conn.peer, cause = %err, "undecodable frame, closing");
                break;
            }
        };
        match frame {
            Frame::Response { id, body } => conn.complete(id, body),
            Frame::Request { id, body } => {
                let permit = tokio::select! {
                    p = serving.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = conn.closed.cancelled() => break,
                };
                let conn = conn.clone();
                let handler = handler.clone();
                // Counted now, in stream order (not when the task first runs): a stopping
                // node counts a peer's request before it reads the next frame.
                let counted = matches!(body, PeerRequest::Service(_)).then(|| answering.start());
                tokio::spawn(async move {
                    let response = handler.handle(conn.peer, body).await;
                    drop(permit);
                    send_response(&conn, id, response, counted).await;
                });
            }
            Frame::Ping => {}
            Frame::Status { low_space } => conn.peer_low_space.store(low_space, Ordering::Relaxed),
            Frame::Hello { .. } | Frame::Proof { .. } => {
                tracing::warn!(
                    peer = conn.peer,
                    "handshake frame after the handshake, closing"
                );
                break;
            }
        }
    }
    conn.close();
}

async fn send_response(
    conn: &Connection,
    id: u64,
    body: PeerResponse,
    answering: Option<Answering>,
) {
    let frame = match codec::encode(&Frame::Response { id, body }) {
        Ok(frame) => frame,
        Err(err) => {
            tracing::warn!(peer = conn.peer, id, cause = %err, "cannot encode response");
            let refusal = Frame::Response {
                id,
                body: PeerResponse::Refused(Refusal::TooLarge),
            };
            match codec::encode(&refusal) {
                Ok(frame) => frame,
                Err(_) => return,
            }
        }
    };
    let out = Outbound {
        frame,
        queued_at: Instant::now(),
        answering,
    };
    tokio::select! {
        // A closed connection drops the answer; the asker's request fails with it.
        _ = conn.outbound.send(out) => {}
        _ = conn.closed.cancelled() => {}
    }
}
