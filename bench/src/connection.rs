//! One keep-alive HTTP/1.1 connection per producer loop, on hyper's connection API.
//!
//! Why not the `reqwest` client the rest of the bench uses: the load generator shares
//! two cores with three nodes, so its cost per request is taken from the figure being
//! measured. Measured against a stub server with single-record publishes, `reqwest`
//! spent about twice the CPU per request of this path (URL re-parsing into a URI, the
//! pool's lookups and locks, per-request timers); a loop owns its connection anyway
//! (HTTP/1.1 has one request in flight per connection), so a pool buys nothing here.
//! Consumers and the control plane keep `reqwest`: they send few, large requests.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::error_class::ErrorClass;

/// An answer, read to the end so the connection can carry the next request.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<HeaderValue>,
}

/// A lazily (re)connected HTTP/1.1 connection to one node.
///
/// Invariant: `sender` is `Some` only while the connection task is alive and the last
/// exchange on it completed; any failure drops it, so the next request reconnects.
#[derive(Debug)]
pub struct Connection {
    /// `host:port` to connect to.
    authority: String,
    host: HeaderValue,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
    /// `Bearer <key>`, when the cluster requires API keys.
    authorization: Option<HeaderValue>,
}

impl Connection {
    /// A connection to `base` (`http://host:port`); nothing is dialled until the first
    /// request.
    ///
    /// # Errors
    ///
    /// `base` is not `http://host:port`.
    pub fn new(
        base: &str,
        timeout: Duration,
        authorization: Option<HeaderValue>,
    ) -> anyhow::Result<Self> {
        let authority = base
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|a| !a.is_empty() && !a.contains('/'))
            .ok_or_else(|| anyhow::anyhow!("node URL '{base}' is not http://host:port"))?
            .to_string();
        let host = HeaderValue::from_str(&authority)?;
        Ok(Connection {
            authority,
            host,
            sender: None,
            timeout,
            authorization,
        })
    }

    /// POSTs `body` to `path` (origin form, e.g. `/v1/topics/t/records?acks=all`) and
    /// reads the whole answer, within the connection's timeout.
    ///
    /// # Errors
    ///
    /// The class of the failure: connect, timeout or transport. HTTP error statuses are
    /// answers, not errors.
    pub async fn post(
        &mut self,
        path: &Uri,
        content_type: &HeaderValue,
        body: Bytes,
    ) -> Result<Answer, ErrorClass> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(path, content_type, body)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(class)) => {
                self.sender = None;
                Err(class)
            }
            Err(_) => {
                self.sender = None;
                Err(ErrorClass::Timeout)
            }
        }
    }

    async fn exchange(
        &mut self,
        path: &Uri,
        content_type: &HeaderValue,
        body: Bytes,
    ) -> Result<Answer, ErrorClass> {
        let sender = match self.sender.as_mut() {
            Some(s) if !s.is_closed() => s,
            _ => self.sender.insert(self.connect().await?),
        };
        sender.ready().await.map_err(|_| ErrorClass::Transport)?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(path.clone())
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, content_type.clone());
        if let Some(authorization) = &self.authorization {
            req = req.header(AUTHORIZATION, authorization.clone());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|_| ErrorClass::Transport)?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|_| ErrorClass::Transport)?;
        let status = resp.status();
        let retry_after = resp.headers().get(RETRY_AFTER).cloned();
        resp.into_body()
            .collect()
            .await
            .map_err(|_| ErrorClass::Transport)?;
        Ok(Answer {
            status,
            retry_after,
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ErrorClass> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|_| ErrorClass::Connect)?;
        // Small requests must leave at once, not wait for Nagle's timer.
        stream.set_nodelay(true).map_err(|_| ErrorClass::Connect)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| ErrorClass::Connect)?;
        // The connection task ends when the sender is dropped or the peer closes.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}
