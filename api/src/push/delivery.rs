//! One POST of one record to a push endpoint: the body, its signature, the HTTP client
//! and its bounds, and the pause between two attempts.

use std::time::Duration;

use hmac::{Hmac, Mac};
use psubd_actors::push::PushConfig;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use sha2::Sha256;

/// The header carrying `sha256=<hex HMAC-SHA256 of the body>` when a secret is set.
pub const SIGNATURE_HEADER: &str = "x-psubd-signature";

/// Most bytes of an endpoint's answer read (and discarded) before the connection is
/// dropped: the status is all that counts, and the endpoint is not trusted.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Longest connect phase, within the request's own timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest error text kept (it travels in status answers and dead-letter headers).
const MAX_ERROR_CHARS: usize = 200;

/// The pause after `failed` failed attempts of one record (1 for the first failure):
/// `min_backoff_ms` doubled per further failure, never above `max_backoff_ms`.
pub fn backoff(min_backoff_ms: u64, max_backoff_ms: u64, failed: u32) -> Duration {
    let doublings = failed.saturating_sub(1).min(63);
    let ms = min_backoff_ms
        .saturating_mul(1u64 << doublings)
        .min(max_backoff_ms);
    Duration::from_millis(ms)
}

/// The `X-Psubd-Signature` value of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + digest.len() * 2);
    out.push_str("sha256=");
    for byte in digest {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The body of one attempt: the record's JSON object (as a fetch renders it) with
/// `"delivery_attempt"` added as its last field.
pub fn body(record_json: &[u8], attempt: u32) -> Vec<u8> {
    let open = record_json.strip_suffix(b"}").unwrap_or(record_json);
    let mut out = Vec::with_capacity(open.len() + 32);
    out.extend_from_slice(open);
    out.extend_from_slice(format!(",\"delivery_attempt\":{attempt}}}").as_bytes());
    out
}

/// Keeps an error text short enough for headers and status answers.
pub fn short(error: impl std::fmt::Display) -> String {
    let text = error.to_string();
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// A push endpoint and the client that reaches it.
pub struct Endpoint {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Option<Vec<u8>>,
}

impl Endpoint {
    /// The client for `config`: its timeouts, no redirects (a 3xx is a failure), at most
    /// `max_in_flight` idle connections per host.
    ///
    /// # Errors
    /// The URL or the client cannot be made (the URL was checked when the subscription
    /// was set).
    pub fn new(config: &PushConfig) -> Result<Self, String> {
        let url = reqwest::Url::parse(&config.endpoint).map_err(short)?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let client = reqwest::Client::builder()
            .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(config.max_in_flight as usize)
            .user_agent(concat!("psubd-push/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(short)?;
        Ok(Self {
            client,
            url,
            secret: config.secret.as_ref().map(|s| s.as_bytes().to_vec()),
        })
    }

    /// POSTs one body. `Ok` only for a 2xx answer.
    ///
    /// # Errors
    /// The status, a timeout or the connection failure, as a short text.
    pub async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(secret) = &self.secret {
            request = request.header(SIGNATURE_HEADER, signature(secret, &body));
        }
        let mut response = request.body(body).send().await.map_err(describe)?;
        let status = response.status();
        // Drain a bounded part of the answer so a small one leaves the connection
        // reusable; a larger one is dropped with its connection.
        let mut read = 0;
        while read < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", status.as_u16()))
        }
    }
}

fn describe(error: reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        // The innermost cause says what happened ("Connection refused", a DNS or TLS
        // failure); the layers above it only say "connect".
        let mut cause: &dyn std::error::Error = &error;
        while let Some(next) = cause.source() {
            cause = next;
        }
        short(format!("connection failed: {cause}"))
    } else {
        short(error.without_url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pause doubles from the minimum per failure and stops at the maximum, without
    /// overflowing however many attempts failed.
    #[test]
    fn backoff_doubles_from_min_to_max() {
        let ms = |failed| backoff(1_000, 60_000, failed).as_millis();
        assert_eq!(ms(1), 1_000);
        assert_eq!(ms(2), 2_000);
        assert_eq!(ms(3), 4_000);
        assert_eq!(ms(6), 32_000);
        assert_eq!(ms(7), 60_000);
        assert_eq!(ms(100), 60_000);
        assert_eq!(backoff(10, 10, 5).as_millis(), 10);
        assert_eq!(
            backoff(3_600_000, 3_600_000, u32::MAX).as_millis(),
            3_600_000
        );
        assert_eq!(backoff(1_000, 60_000, 0).as_millis(), 1_000);
    }

    /// RFC 4231 test case 2 (key "Jefe"), so receivers can check with any HMAC library.
    #[test]
    fn signature_is_the_hex_hmac_sha256_of_the_body() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_ne!(signature(b"other", b"x"), signature(b"Jefe", b"x"));
    }

    /// The body is the record's JSON with `delivery_attempt`: exactly psubd-wire's
    /// `PushDelivery`.
    #[test]
    fn body_is_the_record_with_its_attempt() {
        let record = br#"{"topic":"t","partition":1,"offset":7,"timestamp_ms":5,"key":"k","value":{"a":1},"headers":{"h":"v"}}"#;
        let body = body(record, 3);
        let typed: psubd_wire::PushDelivery = serde_json::from_slice(&body).unwrap();
        assert_eq!(typed.delivery_attempt, 3);
        assert_eq!(typed.record.offset, 7);
        assert_eq!(typed.record.headers["h"], "v");
        let reencoded = serde_json::to_value(&typed).unwrap();
        assert_eq!(
            reencoded,
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        );
    }

    #[test]
    fn error_texts_are_bounded() {
        assert_eq!(short("HTTP 500"), "HTTP 500");
        let long = "é".repeat(1_000);
        assert_eq!(short(&long).chars().count(), MAX_ERROR_CHARS + 1);
    }
}
