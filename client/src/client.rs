//! [`Client`]: seed URLs, timeouts, the bearer token, and the one place requests are sent
//! and answers decoded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use psubd_wire::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{chain, Error};
use crate::tls::TlsSettings;

/// Default bound on connecting to one seed: a dead node is skipped quickly.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Default bound on one request beyond its long-poll time: longer than a node's write
/// timeout (10 s), so an answer the node is still allowed to give is not cut off.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Default number of attempts of a request answered 503, 429 or 507 (whose bodies
/// promise nothing was done, so retrying is safe), or of a read answered 504.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Default cap on one honoured `Retry-After` wait.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Wait after a 503/429/507 answer without a usable `Retry-After`.
const DEFAULT_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Longest error body quoted in an [`Error::Unexpected`].
const QUOTE_LIMIT: usize = 300;

/// Most bytes read of a stream's error answer (an error body is far smaller).
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Settings of a [`Client`]; [`Client::builder`] starts from the defaults.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Bound on connecting to one seed.
    pub connect_timeout: Duration,
    /// Bound on one request, added to its long-poll time.
    pub request_timeout: Duration,
    /// Attempts of a request answered 503, 429 or 507 (at least 1).
    pub max_attempts: u32,
    /// Cap on one `Retry-After` wait.
    pub max_retry_after: Duration,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            token: None,
        }
    }
}

/// Builds a [`Client`] with non-default settings.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    seeds: Vec<String>,
    config: ClientConfig,
    tls: Option<TlsSettings>,
}

impl ClientBuilder {
    /// Sets [`ClientConfig::connect_timeout`].
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Sets [`ClientConfig::request_timeout`].
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// Sets [`ClientConfig::max_attempts`] (at least 1).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts.max(1);
        self
    }

    /// Sets [`ClientConfig::max_retry_after`].
    #[must_use]
    pub fn max_retry_after(mut self, cap: Duration) -> Self {
        self.config.max_retry_after = cap;
        self
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.token = Some(token.into());
        self
    }

    /// Trusts these CA certificates (PEM) for `https://` seeds: the CA that signed the
    /// nodes' `--tls-cert`.
    #[must_use]
    pub fn ca_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.get_or_insert_with(TlsSettings::default).ca_pem = pem.into();
        self
    }

    /// Presents this client certificate chain and key (PEM) to nodes that require one.
    #[must_use]
    pub fn identity_pem(mut self, chain: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.tls
            .get_or_insert_with(TlsSettings::default)
            .identity_pem = Some((chain.into(), key.into()));
        self
    }

    /// The client.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] without seeds, for a seed that is not an `http://` or `https://`
    /// URL, for `https://` seeds without CA certificates, for unusable certificates, or
    /// when the HTTP stack cannot start.
    pub fn build(self) -> Result<Client, Error> {
        let seeds = normalise_seeds(&self.seeds)?;
        let mut http = reqwest::Client::builder().connect_timeout(self.config.connect_timeout);
        match &self.tls {
            Some(tls) => http = http.use_preconfigured_tls(tls.client_config()?),
            None => {
                if let Some(seed) = seeds.iter().find(|s| s.starts_with("https://")) {
                    return Err(Error::Config(format!(
                        "{seed}: HTTPS needs the CA certificate that signed the nodes' \
                         certificates (--ca-file, or ClientBuilder::ca_certificates_pem)"
                    )));
                }
            }
        }
        let http = http
            .build()
            .map_err(|e| Error::Config(format!("cannot start the HTTP client: {}", chain(&e))))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                seeds,
                config: self.config,
                preferred: AtomicUsize::new(0),
            }),
        })
    }
}

/// A handle on a psubd cluster. Cheap to clone: clones share connections and the seed
/// that answered last.
///
/// Any node answers any request (the node forwards to the partition's leader), so the
/// client sends each request to the seed that answered last and moves to the next seed
/// only when that one cannot be reached.
///
/// # Retries
///
/// - A seed that refuses the connection is skipped (nothing was sent).
/// - A read (`GET`) whose connection fails mid-way is sent to the next seed.
/// - 503 `not_available`, 429 `too_many_streams` and 507 `insufficient_storage` promise
///   that nothing was done: the request is sent again after `Retry-After` (capped), at
///   most [`ClientConfig::max_attempts`] times in all.
/// - A read (`GET`) answered 504 (its node lost the node it forwarded to) is sent again
///   the same way.
/// - Nothing else is retried. In particular a write whose connection broke after it was
///   sent, or that was answered 504 `outcome_unknown`, is returned as an error: a retry
///   could store it twice, and only the caller knows whether that is acceptable.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    seeds: Vec<String>,
    config: ClientConfig,
    /// Index of the seed that answered last.
    preferred: AtomicUsize,
}

/// One request as [`Client::call`] sends it.
pub(crate) struct Call {
    pub method: Method,
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Vec<u8>>,
    /// The body's media type.
    pub content_type: &'static str,
    /// Added to the request timeout (long-polls).
    pub long_poll: Duration,
}

impl Call {
    pub(crate) fn new(method: Method, path: String) -> Self {
        Self {
            method,
            path,
            query: Vec::new(),
            body: None,
            content_type: "application/json",
            long_poll: Duration::ZERO,
        }
    }

    pub(crate) fn get(path: String) -> Self {
        Self::new(Method::GET, path)
    }

    pub(crate) fn query(mut self, name: &'static str, value: impl ToString) -> Self {
        self.query.push((name, value.to_string()));
        self
    }

    pub(crate) fn json(mut self, body: &impl Serialize) -> Result<Self, Error> {
        self.body = Some(
            serde_json::to_vec(body)
                .map_err(|e| Error::Config(format!("request body does not serialise: {e}")))?,
        );
        Ok(self)
    }

    pub(crate) fn raw(mut self, content_type: &'static str, body: Vec<u8>) -> Self {
        self.content_type = content_type;
        self.body = Some(body);
        self
    }

    pub(crate) fn long_poll(mut self, wait: Duration) -> Self {
        self.long_poll = wait;
        self
    }
}

/// An answer: status, body, and the URL it came from (for messages).
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Vec<u8>,
    pub url: String,
    /// The `Retry-After` header, in whole seconds as the server sends it.
    pub retry_after: Option<Duration>,
}

impl Answer {
    /// The body as `T` when the status is `expected`; the server's error otherwise.
    pub(crate) fn decode<T: DeserializeOwned>(self, expected: StatusCode) -> Result<T, Error> {
        if self.status != expected {
            return Err(self.into_error());
        }
        serde_json::from_slice(&self.body).map_err(|e| Error::Unexpected {
            url: self.url.clone(),
            status: self.status.as_u16(),
            detail: format!("body does not parse ({e}): {}", quote(&self.body)),
        })
    }

    /// Succeeds on `expected` (a body-less answer such as 204).
    pub(crate) fn expect(self, expected: StatusCode) -> Result<(), Error> {
        if self.status == expected {
            Ok(())
        } else {
            Err(self.into_error())
        }
    }

    /// The server's error body, or an [`Error::Unexpected`] quoting what it sent.
    pub(crate) fn into_error(self) -> Error {
        match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(body) if !self.status.is_success() => Error::Api {
                status: self.status.as_u16(),
                body,
                retry_after: self.retry_after,
            },
            _ => Error::Unexpected {
                url: self.url,
                status: self.status.as_u16(),
                detail: quote(&self.body),
            },
        }
    }
}

fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut end = text.len().min(QUOTE_LIMIT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{}…", &text[..end])
    } else {
        text.into_owned()
    }
}

/// Up to `limit` bytes of `response`'s body (what arrived before an error, if any).
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(limit - body.len());
                body.extend_from_slice(&chunk[..take]);
            }
            _ => break,
        }
    }
    body
}

/// The `Retry-After` header, in whole seconds as the server sends it.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn normalise_seeds(raw: &[String]) -> Result<Vec<String>, Error> {
    let mut seeds = Vec::new();
    for seed in raw.iter().flat_map(|s| s.split(',')) {
        let seed = seed.trim();
        if !seed.is_empty() {
            seeds.push(node_url(seed)?);
        }
    }
    if seeds.is_empty() {
        return Err(Error::Config("no node URL given".into()));
    }
    Ok(seeds)
}

/// `raw` as a node's base URL (`http(s)://HOST:PORT`, no trailing slash), or why not.
pub(crate) fn node_url(raw: &str) -> Result<String, Error> {
    let url = raw.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| {
            Error::Config(format!(
                "'{url}' is not a node URL: expected http://HOST:PORT or https://HOST:PORT"
            ))
        })?;
    if rest.is_empty() || rest.contains('/') {
        return Err(Error::Config(format!(
            "'{url}' is not a node URL: expected http(s)://HOST:PORT without a path"
        )));
    }
    Ok(url.to_string())
}

/// Percent-encodes one path segment (a topic, group or member name): names are validated
/// by the server, but a typo such as `a/b` must reach it as one segment to be refused as
/// a bad name rather than routed elsewhere.
pub(crate) fn segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Client {
    /// A client for the cluster reachable at any of `seeds` (`http://HOST:PORT`, each
    /// entry may also be a comma-separated list), with default settings.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] as [`ClientBuilder::build`].
    pub fn new<I, S>(seeds: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder(seeds).build()
    }

    /// A builder starting from the default settings.
    pub fn builder<I, S>(seeds: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder {
            seeds: seeds.into_iter().map(Into::into).collect(),
            config: ClientConfig::default(),
            tls: None,
        }
    }

    /// The same client sending `Authorization: Bearer <token>` (sharing connections).
    #[must_use]
    pub fn with_token(&self, token: impl Into<String>) -> Client {
        let mut config = self.inner.config.clone();
        config.token = Some(token.into());
        Client {
            inner: Arc::new(Inner {
                http: self.inner.http.clone(),
                seeds: self.inner.seeds.clone(),
                config,
                preferred: AtomicUsize::new(self.inner.preferred.load(Ordering::Relaxed)),
            }),
        }
    }

    /// The seed URLs, normalised.
    pub fn seeds(&self) -> &[String] {
        &self.inner.seeds
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Sends `call` per the retry rules of [`Client`] and returns the final answer,
    /// whatever its status.
    pub(crate) async fn call(&self, call: &Call) -> Result<Answer, Error> {
        let config = &self.inner.config;
        let mut attempt = 1;
        loop {
            let answer = self.send_to_some_seed(call).await?;
            // A read may be repeated after a 504 too: it changes nothing a repeat could
            // duplicate (a member fetch moves positions only by a token the caller sends).
            let retry = match answer.status.as_u16() {
                503 | 429 | 507 => true,
                504 => call.method == Method::GET,
                _ => false,
            };
            if !retry || attempt >= config.max_attempts {
                return Ok(answer);
            }
            attempt += 1;
            let pause = answer
                .retry_after
                .unwrap_or(DEFAULT_RETRY_PAUSE)
                .min(config.max_retry_after);
            tokio::time::sleep(pause).await;
        }
    }

    /// One attempt: the preferred seed, then the others in turn while they cannot be
    /// reached (any seed for a failed read).
    pub(crate) async fn send_to_some_seed(&self, call: &Call) -> Result<Answer, Error> {
        let inner = &self.inner;
        let first = inner.preferred.load(Ordering::Relaxed) % inner.seeds.len();
        let mut last_error = None;
        for step in 0..inner.seeds.len() {
            let index = (first + step) % inner.seeds.len();
            match self.send_to(&inner.seeds[index], call).await {
                Ok(answer) => {
                    inner.preferred.store(index, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(error) => {
                    let sent = matches!(
                        error,
                        Error::Transport {
                            maybe_sent: true,
                            ..
                        }
                    );
                    if sent && call.method != Method::GET {
                        return Err(error);
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Config("no node URL given".into())))
    }

    /// One attempt at the node whose base URL is `base` (a seed, or a node's advertised
    /// URL), without retries: [`Error::Transport`] says whether the request may have been
    /// sent (`maybe_sent` is false only when the connection was refused or not made).
    pub(crate) async fn send_to(&self, base: &str, call: &Call) -> Result<Answer, Error> {
        let url = format!("{base}{}", call.path);
        let request = self
            .request(&url, call)
            .timeout(self.inner.config.request_timeout + call.long_poll);
        let response = request.send().await.map_err(|e| Error::Transport {
            url: url.clone(),
            message: chain(&e),
            maybe_sent: !e.is_connect(),
        })?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = match response.bytes().await {
            Ok(body) => body.to_vec(),
            Err(e) => {
                return Err(Error::Transport {
                    url,
                    message: format!("HTTP {status}, then the body broke off: {}", chain(&e)),
                    maybe_sent: true,
                })
            }
        };
        Ok(Answer {
            status,
            body,
            url,
            retry_after,
        })
    }

    /// `call` as a request to `url`: query, body, token; no timeout (the caller's).
    fn request(&self, url: &str, call: &Call) -> reqwest::RequestBuilder {
        let inner = &self.inner;
        let mut request = inner.http.request(call.method.clone(), url);
        if !call.query.is_empty() {
            request = request.query(&call.query);
        }
        if let Some(body) = &call.body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, call.content_type)
                .body(body.clone());
        }
        if let Some(token) = &inner.config.token {
            request = request.bearer_auth(token);
        }
        request
    }

    /// Opens a stream (a GET whose answer does not end): the seeds in turn while they
    /// cannot be reached, the answer's head awaited within the request timeout and its
    /// body left open, with no timeout on it. Not retried otherwise: a stream's caller
    /// decides whether to open it again.
    pub(crate) async fn open_stream(
        &self,
        call: &Call,
        accept: &'static str,
    ) -> Result<reqwest::Response, Error> {
        let inner = &self.inner;
        let first = inner.preferred.load(Ordering::Relaxed) % inner.seeds.len();
        let mut last_error = None;
        for step in 0..inner.seeds.len() {
            let index = (first + step) % inner.seeds.len();
            let url = format!("{}{}", inner.seeds[index], call.path);
            let request = self
                .request(&url, call)
                .header(reqwest::header::ACCEPT, accept);
            let response =
                match tokio::time::timeout(inner.config.request_timeout, request.send()).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(e)) => {
                        last_error = Some(Error::Transport {
                            url,
                            message: chain(&e),
                            maybe_sent: !e.is_connect(),
                        });
                        continue;
                    }
                    Err(_) => {
                        last_error = Some(Error::Transport {
                            url,
                            message: "no answer within the request timeout".into(),
                            maybe_sent: true,
                        });
                        continue;
                    }
                };
            inner.preferred.store(index, Ordering::Relaxed);
            if response.status() == StatusCode::OK {
                return Ok(response);
            }
            let status = response.status();
            let retry_after = retry_after(response.headers());
            // An error answer is one small JSON body; read at most the quote's worth more
            // than any error body needs.
            let body = read_bounded(response, ERROR_BODY_LIMIT).await;
            return Err(Answer {
                status,
                body,
                url,
                retry_after,
            }
            .into_error());
        }
        Err(last_error.unwrap_or_else(|| Error::Config("no node URL given".into())))
    }

    /// `call`, then the body as `T` on `expected`; the server's error otherwise (with
    /// its `Retry-After`).
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        call: &Call,
        expected: StatusCode,
    ) -> Result<T, Error> {
        self.call(call).await?.decode(expected)
    }

    /// `call`, expecting a body-less `expected` answer.
    pub(crate) async fn empty(&self, call: &Call, expected: StatusCode) -> Result<(), Error> {
        self.call(call).await?.expect(expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_split_trimmed_and_checked() {
        let seeds = normalise_seeds(&["http://a:1/, http://b:2".into()]).ok();
        assert_eq!(
            seeds,
            Some(vec!["http://a:1".to_string(), "http://b:2".to_string()])
        );
        assert!(normalise_seeds(&[]).is_err());
        assert!(normalise_seeds(&["a:1".into()]).is_err());
        assert!(normalise_seeds(&["http://a:1/v1".into()]).is_err());
        assert!(normalise_seeds(&["https://a:1".into()]).is_ok());
        assert!(Client::new(["https://a:1"]).is_err(), "HTTPS needs a CA");
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(segment("orders.v1_x-y"), "orders.v1_x-y");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
