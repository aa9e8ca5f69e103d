//! The `lost-responses` nemesis: one TCP proxy per node between the harness's client and
//! the node. While the fault is held, a share of requests reach the node and are answered
//! there, but the proxy closes the client's connection at the first byte of the answer,
//! so the client never learns the outcome (what a real client sees when its connection
//! drops at the wrong moment). The proxies listen on loopback only, hold a bounded number
//! of connections and buffers, and stop with the run.
//!
//! A node the proxy cannot connect to is reported to the client as a 502 carrying
//! [`CONNECT_FAILED_HEADER`], so "connection refused" still means "never sent" in the
//! history (client.rs maps it back to a connect failure).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::error::JepsenError;

/// Header of the proxy's own 502 when the node refused the connection.
pub const CONNECT_FAILED_HEADER: &str = "x-jepsen-proxy";

/// Most connections one proxy relays at once; more wait for a free slot.
const MAX_CONNECTIONS: usize = 256;
/// Relay buffer per direction and connection.
const BUFFER: usize = 16 * 1024;
/// Connect timeout towards the node (the client's own is 1 s).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// The running proxies and their shared drop rate.
pub struct Proxies {
    /// Loopback address of each node's proxy, in node order.
    pub addrs: Vec<SocketAddr>,
    drop_percent: Arc<AtomicU8>,
    dropped: Arc<AtomicU64>,
}

impl Proxies {
    /// Starts one proxy per upstream on 127.0.0.1 (an ephemeral port). `local` is the
    /// source address of connections to the nodes (the control namespace's address).
    ///
    /// # Errors
    /// A listener cannot be bound.
    pub async fn start(
        upstreams: &[SocketAddr],
        local: Option<IpAddr>,
        seed: u64,
        stop: CancellationToken,
    ) -> Result<Self, JepsenError> {
        let drop_percent = Arc::new(AtomicU8::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(
            seed ^ 0x6c6f_7374_2d72_6573,
        )));
        let mut addrs = Vec::with_capacity(upstreams.len());
        for upstream in upstreams {
            let listener = TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
                .await
                .map_err(|e| JepsenError::io("proxy listener", e))?;
            let addr = listener
                .local_addr()
                .map_err(|e| JepsenError::io("proxy listener", e))?;
            addrs.push(addr);
            let relay = Relay {
                upstream: *upstream,
                local,
                drop_percent: drop_percent.clone(),
                dropped: dropped.clone(),
                rng: rng.clone(),
                stop: stop.clone(),
            };
            tokio::spawn(relay.serve(listener));
        }
        info!(?addrs, "lost-responses proxies listening");
        Ok(Proxies {
            addrs,
            drop_percent,
            dropped,
        })
    }

    /// Sets the share of answers dropped (0 heals).
    pub fn set_drop_percent(&self, percent: u8) {
        self.drop_percent.store(percent.min(100), Ordering::Relaxed);
    }

    /// Answers dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct Relay {
    upstream: SocketAddr,
    local: Option<IpAddr>,
    drop_percent: Arc<AtomicU8>,
    dropped: Arc<AtomicU64>,
    rng: Arc<Mutex<StdRng>>,
    stop: CancellationToken,
}

impl Relay {
    async fn serve(self, listener: TcpListener) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = self.stop.cancelled() => return,
            };
            let Ok((client, _)) = accepted else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.relay(client).await;
                drop(permit);
            });
        }
    }

    async fn connect(&self) -> std::io::Result<TcpStream> {
        let socket = match self.upstream {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(local) = self.local {
            socket.bind(SocketAddr::new(local, 0))?;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(self.upstream)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            )),
        }
    }

    /// Whether to drop the answer that just started.
    fn roll(&self) -> bool {
        let percent = self.drop_percent.load(Ordering::Relaxed);
        if percent == 0 {
            return false;
        }
        let roll: u8 = match self.rng.lock() {
            Ok(mut rng) => rng.gen_range(0..100),
            Err(_) => return false,
        };
        roll < percent
    }

    async fn relay(&self, mut client: TcpStream) {
        let server = match self.connect().await {
            Ok(s) => s,
            Err(e) => {
                debug!(upstream = %self.upstream, cause = %e, "proxy could not reach the node");
                let answer = format!(
                    "HTTP/1.1 502 Bad Gateway\r\n{CONNECT_FAILED_HEADER}: connect-failed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = client.write_all(answer.as_bytes()).await;
                let _ = client.shutdown().await;
                return;
            }
        };
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let mut cbuf = vec![0u8; BUFFER];
        let mut sbuf = vec![0u8; BUFFER];
        // A request was forwarded and its answer has not started yet.
        let mut awaiting = false;
        let mut client_open = true;
        loop {
            tokio::select! {
                n = cr.read(&mut cbuf), if client_open => match n {
                    Ok(0) | Err(_) => {
                        client_open = false;
                        let _ = sw.shutdown().await;
                    }
                    Ok(n) => {
                        if sw.write_all(&cbuf[..n]).await.is_err() {
                            return;
                        }
                        awaiting = true;
                    }
                },
                n = sr.read(&mut sbuf) => match n {
                    Ok(0) | Err(_) => {
                        let _ = cw.shutdown().await;
                        return;
                    }
                    Ok(n) => {
                        if std::mem::take(&mut awaiting) && self.roll() {
                            // The node answered; the client never hears it.
                            self.dropped.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        if cw.write_all(&sbuf[..n]).await.is_err() {
                            return;
                        }
                    }
                },
                _ = self.stop.cancelled() => return,
            }
        }
    }
}
