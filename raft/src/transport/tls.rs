//! Mutual TLS for the peer transport (optional): every node holds a certificate signed by
//! the cluster's CA and naming it, `psubd-node-<id>` as a DNS subject alternative name
//! ([`node_name`]).
//!
//! - The dialer checks that the acceptor's certificate chains to the CA and names the peer
//!   it meant to reach (standard server verification, with the node name as the server
//!   name), so a stolen address cannot pose as the peer.
//! - The acceptor requires a client certificate chaining to the CA, and takes the dialer's
//!   node id from it: the id the dialer's hello claims must be one its certificate names,
//!   or the connection is closed before any frame past the hello is read.
//!
//! The cluster-secret exchange ([`super::auth`]) still runs inside the TLS session; with
//! TLS a node needs no secret to leave loopback, the certificates authenticate the peers.
//! Traffic between nodes is encrypted.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::types::NodeId;

/// The name a node's certificate carries (a DNS subject alternative name).
pub fn node_name(id: NodeId) -> String {
    format!("psubd-node-{id}")
}

/// Why peer TLS could not be set up from its files.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {why}")]
pub struct PeerTlsError {
    /// Which file: "certificate", "key" or "CA".
    pub what: &'static str,
    /// Its path.
    pub path: String,
    /// What is wrong with it.
    pub why: String,
}

/// A node's TLS identity and trust for the peer transport. Cheap to clone.
#[derive(Clone)]
pub struct PeerTls {
    connector: TlsConnector,
    acceptor: TlsAcceptor,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerTls")
    }
}

/// Reads a PEM certificate chain (at least one certificate).
///
/// # Errors
/// The file cannot be read or holds no certificate.
pub fn certificate_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, PeerTlsError> {
    let error = |why: String| PeerTlsError {
        what: "certificate",
        path: path.display().to_string(),
        why,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| error(format!("not a PEM certificate chain ({e})")))?;
    if chain.is_empty() {
        return Err(error("holds no certificate".into()));
    }
    Ok(chain)
}

/// Reads a PEM private key.
///
/// # Errors
/// The file cannot be read or holds no private key.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PeerTlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| PeerTlsError {
        what: "key",
        path: path.display().to_string(),
        why: format!("not a PEM private key ({e})"),
    })
}

/// Reads the PEM certificates of the CAs to trust.
///
/// # Errors
/// The file cannot be read, or holds no usable certificate.
pub fn trust_roots(path: &Path) -> Result<RootCertStore, PeerTlsError> {
    let error = |why: String| PeerTlsError {
        what: "CA",
        path: path.display().to_string(),
        why,
    };
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(path).map_err(|e| error(e.to_string()))? {
        let der = der.map_err(|e| error(e.to_string()))?;
        roots.add(der).map_err(|e| error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(error("holds no certificate".into()));
    }
    Ok(roots)
}

/// The crypto provider of every TLS configuration here: ring rather than aws-lc-rs, as it
/// builds with the C compiler alone (rustls marks it deprecated only for lacking
/// post-quantum key exchange).
#[allow(deprecated)]
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl PeerTls {
    /// This node's identity (`cert`, `key`) and the CA its peers' certificates chain to.
    ///
    /// # Errors
    /// A file that cannot be read or holds nothing usable, or a key that does not match
    /// the certificate.
    pub fn from_pem_files(cert: &Path, key: &Path, ca: &Path) -> Result<PeerTls, PeerTlsError> {
        let chain = certificate_chain(cert)?;
        let key_der = private_key(key)?;
        let roots = Arc::new(trust_roots(ca)?);
        let provider = crypto_provider();
        let mismatch = |e: rustls::Error| PeerTlsError {
            what: "key",
            path: key.display().to_string(),
            why: format!("does not fit the certificate ({e})"),
        };
        let setup = |e: rustls::Error| PeerTlsError {
            what: "CA",
            path: ca.display().to_string(),
            why: e.to_string(),
        };
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| setup(rustls::Error::General(e.to_string())))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(setup)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key_der.clone_key())
            .map_err(mismatch)?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(setup)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key_der)
            .map_err(mismatch)?;
        Ok(PeerTls {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// Opens TLS to `peer` over `stream`, checking that its certificate names `peer`.
    ///
    /// # Errors
    /// The handshake failed (the peer's certificate is not the CA's or not `peer`'s).
    pub(crate) async fn connect(
        &self,
        peer: NodeId,
        stream: TcpStream,
    ) -> io::Result<client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(node_name(peer))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.connector.connect(name, stream).await
    }

    /// Accepts TLS on `stream`, requiring a client certificate of the CA.
    ///
    /// # Errors
    /// The handshake failed.
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
    ) -> io::Result<server::TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await
    }
}

/// The certificate the dialer presented on `stream` (verified against the CA by the
/// handshake), if any.
pub(crate) fn dialer_certificate(
    stream: &server::TlsStream<TcpStream>,
) -> Option<CertificateDer<'static>> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| leaf.clone().into_owned())
}

/// Whether `certificate` names node `claimed` (see the module docs).
pub(crate) fn certifies(certificate: &CertificateDer<'_>, claimed: NodeId) -> bool {
    let Ok(name) = ServerName::try_from(node_name(claimed)) else {
        return false;
    };
    webpki::EndEntityCert::try_from(certificate)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
}
