//! How a command reaches the cluster.

use clap::Args;
use psubd_client::{Client, Error};

/// Default node URL: the first node of `psubd dev`.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8081";

/// Flags shared by every client command.
#[derive(Args, Debug, Clone)]
pub struct Connect {
    /// Node URL(s), tried in turn until one answers: repeat the flag or separate with
    /// commas.
    #[arg(long = "url", env = "PSUBD_URL", value_delimiter = ',', default_value = DEFAULT_URL, global = true)]
    pub urls: Vec<String>,
    /// Bearer token sent as `Authorization: Bearer <token>`.
    #[arg(long, env = "PSUBD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
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
