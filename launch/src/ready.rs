//! Whether a node is ready: `GET /readyz` answers 2xx.
//!
//! A minimal HTTP/1.1 exchange over a plain TCP connection, so that `psubd dev` needs no
//! HTTP client library for it. Nodes serving HTTPS are probed by the caller's own client
//! instead (see [`crate::NodeSet::wait_ready`], which takes any probe).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one probe may take, connection included.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the node at `addr` answers `GET /readyz` with a 2xx status within
/// [`PROBE_TIMEOUT`]. Any failure (refused, reset, slow, malformed) is "not ready".
pub async fn http_ready(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, readyz_status(addr)).await,
        Ok(Some(200..=299))
    )
}

/// The status code of `GET /readyz`, or `None` on any failure.
async fn readyz_status(addr: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    // The status line is all that is read: "HTTP/1.1 200 OK".
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() && !head[..len].contains(&b'\n') {
        let n = stream.read(&mut head[len..]).await.ok()?;
        if n == 0 {
            break;
        }
        len += n;
    }
    status_code(&head[..len])
}

/// The status code of a response's first line.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head).ok()?.lines().next()?;
    let mut words = line.split_whitespace();
    words.next()?.starts_with("HTTP/").then_some(())?;
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn parses_status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_code(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b""), None);
    }

    async fn answering(response: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(response.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn ready_only_on_2xx() {
        let ok = answering("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        let busy = answering("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert!(http_ready(ok).await);
        assert!(!http_ready(busy).await);
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        assert!(!http_ready(closed).await);
    }
}
