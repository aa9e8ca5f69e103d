//! API keys as clients present them: `Authorization: Bearer <key_id>.<secret>`. The key
//! id names the stored key (it is not secret and may be logged); only a SHA-256 of the
//! secret part is stored, compared in constant time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use psubd_actors::controller::access::SecretHash;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest key id accepted: ids are generated short; anything longer is garbage.
const MAX_KEY_ID: usize = 64;

/// Longest secret accepted (a generated one is 43 characters; the admin key's is the
/// operator's choice).
const MAX_SECRET: usize = 512;

/// Shortest secret of the admin key file: a guessable admin key is no key.
pub const MIN_ADMIN_SECRET: usize = 32;

/// A presented key, split; borrowed from the request header.
#[derive(Debug, PartialEq, Eq)]
pub struct Presented<'a> {
    /// The key id (not secret).
    pub key_id: &'a str,
    /// The secret part.
    pub secret: &'a str,
}

/// Why a request carries no usable key (all are 401; the reason goes in the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <key_id>.<secret>`.
    Malformed,
}

/// Splits an `Authorization` header value into a key id and secret.
///
/// # Errors
/// [`Malformed`] when absent or not of the form `Bearer <key_id>.<secret>`.
pub fn parse_bearer(header: Option<&[u8]>) -> Result<Presented<'_>, Malformed> {
    let raw = header.ok_or(Malformed::Missing)?;
    let text = std::str::from_utf8(raw).map_err(|_| Malformed::Malformed)?;
    let (scheme, token) = text.split_once(' ').ok_or(Malformed::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Malformed::Malformed);
    }
    parse_key(token.trim())
}

/// Splits a key `<key_id>.<secret>`.
///
/// # Errors
/// [`Malformed::Malformed`] for anything else.
pub fn parse_key(token: &str) -> Result<Presented<'_>, Malformed> {
    let (key_id, secret) = token.split_once('.').ok_or(Malformed::Malformed)?;
    let id_ok = valid_key_id(key_id);
    let secret_ok = !secret.is_empty()
        && secret.len() <= MAX_SECRET
        && secret.bytes().all(|b| b.is_ascii_graphic());
    if id_ok && secret_ok {
        Ok(Presented { key_id, secret })
    } else {
        Err(Malformed::Malformed)
    }
}

/// True for a well-formed key id: 1 to 64 of A-Z, a-z, 0-9, '-' and '_'.
pub fn valid_key_id(key_id: &str) -> bool {
    !key_id.is_empty()
        && key_id.len() <= MAX_KEY_ID
        && key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// True when `secret` hashes to `stored`, in time independent of where they differ.
pub fn verify(secret: &str, stored: &SecretHash) -> bool {
    hash_secret(secret).ct_eq(stored).into()
}

/// A freshly made key: shown to the client once, stored only as `hash`.
pub struct NewKey {
    /// The key id.
    pub key_id: String,
    /// The whole key, `<key_id>.<secret>`.
    pub key: String,
    /// SHA-256 of the secret.
    pub hash: SecretHash,
}

impl NewKey {
    /// A key with a random 8-byte id and a random 32-byte secret, from the operating
    /// system's generator.
    pub fn generate() -> Self {
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id);
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let key_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let secret = URL_SAFE_NO_PAD.encode(secret);
        Self {
            key: format!("{key_id}.{secret}"),
            hash: hash_secret(&secret),
            key_id,
        }
    }
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers_parse_and_garbage_is_malformed() {
        assert_eq!(parse_bearer(None), Err(Malformed::Missing));
        let ok = parse_bearer(Some(b"Bearer ab12.s3cr3t")).unwrap();
        assert_eq!((ok.key_id, ok.secret), ("ab12", "s3cr3t"));
        assert!(parse_bearer(Some(b"bearer ab12.x")).is_ok());
        for bad in [
            &b"Basic ab12.x"[..],
            b"Bearer",
            b"Bearer nodot",
            b"Bearer .secret",
            b"Bearer id.",
            b"Bearer i d.x",
            b"Bearer \xff.x",
        ] {
            assert_eq!(
                parse_bearer(Some(bad)),
                Err(Malformed::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn generated_keys_verify_and_others_do_not() {
        let key = NewKey::generate();
        let presented = parse_key(&key.key).unwrap();
        assert_eq!(presented.key_id, key.key_id);
        assert_eq!(presented.secret.len(), 43);
        assert!(verify(presented.secret, &key.hash));
        assert!(!verify("not-the-secret", &key.hash));
        assert!(!format!("{key:?}").contains(presented.secret));
        assert_ne!(NewKey::generate().key_id, key.key_id);
    }
}
