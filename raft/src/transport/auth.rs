//! Peer authentication: a mutual challenge-response over the cluster secret.
//!
//! Every node of a cluster holds the same secret (`--cluster-secret-file`). At the hello
//! exchange each side sends a fresh random nonce, and each proves it knows the secret with
//! an HMAC-SHA256 over both node ids and both nonces, under a label naming its role:
//!
//! ```text
//! dialer   → Hello { node: d, nonce: n_d }
//! acceptor → Hello { node: a, nonce: n_a, proof: HMAC(secret, "acceptor" | d | a | n_d | n_a) }
//! dialer   → Proof { HMAC(secret, "dialer" | d | a | n_d | n_a) }
//! ```
//!
//! The secret never crosses the wire, a proof is bound to this exchange's nonces (a recorded
//! one is worthless), and neither side takes a frame beyond the hello until the other has
//! proved itself. Without a secret the same exchange runs with an empty key, which proves
//! nothing: the node configuration allows that only when every peer address is loopback
//! (or the operator says `--insecure`).

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::types::NodeId;

/// Bytes of a handshake nonce.
pub(crate) const NONCE_BYTES: usize = 32;

/// A handshake nonce.
pub(crate) type Nonce = [u8; NONCE_BYTES];

/// An HMAC-SHA256 proof.
pub(crate) type Proof = [u8; 32];

/// The fewest bytes a cluster secret may have.
pub const MIN_SECRET_BYTES: usize = 16;

/// The secret shared by every node of the cluster, or none. Never printed.
#[derive(Clone, Default)]
pub struct ClusterSecret {
    key: Option<Arc<[u8]>>,
}

impl ClusterSecret {
    /// A secret from its bytes (leading and trailing whitespace removed, so a file ending
    /// in a newline works).
    ///
    /// # Errors
    /// A message when fewer than [`MIN_SECRET_BYTES`] bytes remain.
    pub fn new(bytes: &[u8]) -> Result<ClusterSecret, String> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "a cluster secret needs at least {MIN_SECRET_BYTES} bytes, this one has {}",
                trimmed.len()
            ));
        }
        Ok(ClusterSecret {
            key: Some(Arc::from(trimmed)),
        })
    }

    /// No secret: peers are not authenticated.
    pub fn none() -> ClusterSecret {
        ClusterSecret { key: None }
    }

    /// True when a secret is set.
    pub fn is_set(&self) -> bool {
        self.key.is_some()
    }

    fn mac(&self) -> Hmac<Sha256> {
        let key: &[u8] = self.key.as_deref().unwrap_or(&[]);
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length")
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_set() {
            "ClusterSecret(set)"
        } else {
            "ClusterSecret(none)"
        })
    }
}

/// Which side of the hello exchange a proof speaks for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    Dialer,
    Acceptor,
}

/// What both proofs of one exchange cover.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange {
    pub dialer: NodeId,
    pub acceptor: NodeId,
    pub dialer_nonce: Nonce,
    pub acceptor_nonce: Nonce,
}

impl Exchange {
    fn mac(&self, secret: &ClusterSecret, role: Role) -> Hmac<Sha256> {
        let mut mac = secret.mac();
        mac.update(match role {
            Role::Dialer => b"psubd peer hello v1: dialer",
            Role::Acceptor => b"psubd peer hello v1: accept",
        });
        mac.update(&self.dialer.to_le_bytes());
        mac.update(&self.acceptor.to_le_bytes());
        mac.update(&self.dialer_nonce);
        mac.update(&self.acceptor_nonce);
        mac
    }

    /// The proof `role` sends.
    pub(crate) fn proof(&self, secret: &ClusterSecret, role: Role) -> Proof {
        self.mac(secret, role).finalize().into_bytes().into()
    }

    /// True when `proof` is what `role` must send (compared in constant time).
    pub(crate) fn verify(&self, secret: &ClusterSecret, role: Role, proof: &Proof) -> bool {
        self.mac(secret, role).verify_slice(proof).is_ok()
    }
}

/// A fresh random nonce.
pub(crate) fn fresh_nonce() -> Nonce {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange() -> Exchange {
        Exchange {
            dialer: 1,
            acceptor: 2,
            dialer_nonce: fresh_nonce(),
            acceptor_nonce: fresh_nonce(),
        }
    }

    #[test]
    fn a_proof_holds_only_for_the_same_secret_role_and_nonces() {
        let secret = ClusterSecret::new(b"0123456789abcdef-the-cluster\n").unwrap();
        let other = ClusterSecret::new(b"0123456789abcdef-another-one").unwrap();
        let x = exchange();
        let proof = x.proof(&secret, Role::Dialer);
        assert!(x.verify(&secret, Role::Dialer, &proof));
        assert!(!x.verify(&other, Role::Dialer, &proof), "another secret");
        assert!(!x.verify(&secret, Role::Acceptor, &proof), "the other role");
        let replayed = Exchange {
            acceptor_nonce: fresh_nonce(),
            ..x
        };
        assert!(!replayed.verify(&secret, Role::Dialer, &proof), "new nonce");
        assert!(!x.verify(&ClusterSecret::none(), Role::Dialer, &proof));
    }

    #[test]
    fn a_short_secret_is_refused_and_none_is_never_printed() {
        assert!(ClusterSecret::new(b"  short \n").is_err());
        let secret = ClusterSecret::new(b"a secret that is long enough").unwrap();
        assert_eq!(format!("{secret:?}"), "ClusterSecret(set)");
    }
}
