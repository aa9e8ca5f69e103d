//! How a command reaches the cluster.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use psubd_client::{Client, Error};

/// Default node URL: the first node of `psubd dev`.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8081";

/// Flags shared by every client command.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Connection")]
pub struct Connect {
    /// Node URL(s), tried in turn until one answers: repeat the flag or separate with
    /// commas.
    #[arg(long = "url", env = "PSUBD_URL", value_delimiter = ',', default_value = DEFAULT_URL, global = true)]
    pub urls: Vec<String>,
    /// Bearer token sent as `Authorization: Bearer <token>`.
    #[arg(long, env = "PSUBD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// PEM CA certificates that signed the nodes' certificates, for https:// URLs.
    #[arg(long, env = "PSUBD_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for nodes that require one (with --client-key).
    #[arg(
        long,
        env = "PSUBD_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        env = "PSUBD_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

fn read(path: &PathBuf, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
}

impl Connect {
    /// The client these flags describe.
    ///
    /// # Errors
    ///
    /// A malformed URL.
    pub fn client(&self) -> anyhow::Result<Client> {
        let mut builder = Client::builder(self.urls.iter().cloned());
        if let Some(token) = &self.token {
            builder = builder.token(token.clone());
        }
        if let Some(ca) = &self.ca_file {
            builder = builder.ca_certificates_pem(read(ca, "--ca-file")?);
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            builder =
                builder.identity_pem(read(cert, "--client-cert")?, read(key, "--client-key")?);
        }
        builder.build().map_err(|e| self.explain(e))
    }

    /// Turns a client error into the message a user reads: the server's message as it
    /// is, and for an unreachable cluster the URLs that were tried.
    pub fn explain(&self, error: Error) -> anyhow::Error {
        match &error {
            Error::Transport {
                maybe_sent: false,
                message,
                ..
            } => anyhow::anyhow!(
                "cannot reach any node at {}: {message}",
                self.urls.join(", ")
            ),
            _ => anyhow::Error::new(error),
        }
    }
}
