//! A peer's transport address as configured: `host:port`, where the host is an IP literal
//! (`10.0.0.5`, `[::1]`) or a DNS name (`psubd-2.internal`). A name is resolved each time
//! the transport dials, so a peer that comes back at another IP (a restarted container) is
//! found again at the next redial.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Longest accepted address text (a DNS name is at most 253 bytes, plus `:65535`).
pub const MAX_PEER_ADDR_BYTES: usize = 260;

/// A peer's `host:port`, validated. Equal addresses have equal text (IP literals are kept
/// in their canonical form, names in lower case).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerAddr(String);

impl PeerAddr {
    /// Parses `host:port`: an IP literal (IPv6 in brackets) or a DNS name of letters,
    /// digits, `-` and `.` (labels of 1–63 bytes, not starting or ending with `-`), and a
    /// port from 1 to 65535.
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn parse(raw: &str) -> Result<PeerAddr, String> {
        let raw = raw.trim();
        if raw.len() > MAX_PEER_ADDR_BYTES {
            return Err(format!(
                "an address must be at most {MAX_PEER_ADDR_BYTES} bytes"
            ));
        }
        if let Ok(addr) = raw.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(format!("'{raw}': the port must be 1 to 65535"));
            }
            return Ok(PeerAddr(addr.to_string()));
        }
        let (host, port) = raw
            .rsplit_once(':')
            .ok_or_else(|| format!("'{raw}' must look like HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("'{raw}': the port must be 1 to 65535"))?;
        if !is_dns_name(host) {
            return Err(format!(
                "'{raw}': the host must be an IP address or a DNS name (letters, digits, '-', '.')"
            ));
        }
        Ok(PeerAddr(format!("{}:{port}", host.to_ascii_lowercase())))
    }

    /// The address text, `host:port`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address when its host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.0.parse().ok()
    }

    /// True when only processes of this machine can be behind the address: a loopback IP
    /// literal, or the name `localhost`. Any other name is not, even if it resolves to a
    /// loopback address today: what a name resolves to can change without this node seeing
    /// it, so it cannot excuse peers from authenticating.
    pub fn is_loopback(&self) -> bool {
        match self.socket_addr() {
            Some(addr) => addr.ip().is_loopback(),
            None => self
                .0
                .rsplit_once(':')
                .is_some_and(|(host, _)| host == "localhost"),
        }
    }

    /// Resolves the address now (a DNS lookup for a name; none for an IP literal).
    ///
    /// # Errors
    /// The lookup's error, or NotFound when the name has no address.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Some(addr) = self.socket_addr() {
            return Ok(vec![addr]);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(self.0.as_str()).await?.collect();
        if addrs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} resolves to no address", self.0),
            ));
        }
        Ok(addrs)
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> Self {
        PeerAddr(addr.to_string())
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A DNS name as RFC 1123 allows it (an IP literal never reaches here: it parsed as one).
fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.parse::<IpAddr>().is_err()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_and_names_parse() {
        assert_eq!(
            PeerAddr::parse("127.0.0.1:9081").unwrap().as_str(),
            "127.0.0.1:9081"
        );
        assert_eq!(
            PeerAddr::parse("[::1]:9081").unwrap().as_str(),
            "[::1]:9081"
        );
        let name = PeerAddr::parse(" Node-2.Internal:9082 ").unwrap();
        assert_eq!(name.as_str(), "node-2.internal:9082");
        assert!(name.socket_addr().is_none());
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            "",
            "localhost",
            "host:0",
            "host:65536",
            "host:x",
            ":9081",
            "-bad.host:1",
            "a..b:1",
            "under_score:1",
            "sp ace:1",
            "::1:9081",
            &format!("{}:1", "a".repeat(64)),
        ] {
            assert!(PeerAddr::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn only_loopback_literals_and_localhost_count_as_loopback() {
        assert!(PeerAddr::parse("127.0.0.1:1").unwrap().is_loopback());
        assert!(PeerAddr::parse("[::1]:1").unwrap().is_loopback());
        assert!(PeerAddr::parse("localhost:1").unwrap().is_loopback());
        assert!(!PeerAddr::parse("10.0.0.1:1").unwrap().is_loopback());
        assert!(!PeerAddr::parse("localhost.example:1")
            .unwrap()
            .is_loopback());
        assert!(!PeerAddr::parse("my-loopback-alias:1")
            .unwrap()
            .is_loopback());
    }

    #[tokio::test]
    async fn localhost_and_literals_resolve() {
        let literal = PeerAddr::parse("127.0.0.1:9").unwrap();
        assert_eq!(
            literal.resolve().await.unwrap(),
            vec!["127.0.0.1:9".parse().unwrap()]
        );
        let named = PeerAddr::parse("localhost:9").unwrap();
        assert!(named
            .resolve()
            .await
            .unwrap()
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 9));
    }
}
