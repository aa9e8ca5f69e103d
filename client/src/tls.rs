//! HTTPS to nodes that serve TLS (`psubd node --tls-cert …`): rustls with the ring
//! provider, as the node uses. The roots are the cluster's own CA certificates, given by
//! the caller — a psubd cluster usually runs on certificates of its operator's CA, and the
//! client carries no platform certificate store. A client certificate answers nodes that
//! require one (`--tls-client-ca`).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::error::Error;

/// TLS settings of a [`crate::Client`], as PEM text.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// CA certificates the nodes' certificates must chain to.
    pub ca_pem: Vec<u8>,
    /// A client certificate chain and its key, for nodes that require one.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsSettings {
    /// The rustls configuration these settings describe.
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, Error> {
        let bad = |what: &str, e: &dyn std::fmt::Display| Error::Config(format!("{what}: {e}"));
        let mut roots = RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(&self.ca_pem) {
            let der = der.map_err(|e| bad("CA certificates", &e))?;
            roots.add(der).map_err(|e| bad("CA certificates", &e))?;
        }
        if roots.is_empty() {
            return Err(Error::Config(
                "CA certificates: no PEM certificate found".into(),
            ));
        }
        // ring, as the node uses (no C toolchain beyond cc); rustls marks it deprecated
        // only for lacking post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS protocol versions", &e))?
            .with_root_certificates(roots);
        let mut config = match &self.identity_pem {
            Some((chain, key)) => {
                let chain = CertificateDer::pem_slice_iter(chain)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad("client certificate", &e))?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad("client key", &e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad("client certificate and key", &e))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}
