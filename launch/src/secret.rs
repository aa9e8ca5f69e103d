//! The secret files a local cluster's nodes share: the cluster secret
//! (`--cluster-secret-file`) and, with authentication on, the admin key
//! (`--admin-key-file`).
//!
//! Nodes on loopback could go without a cluster secret, but a local cluster then runs the
//! peers' authentication as a deployed one does; nodes in network namespaces need one.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Random bytes in a secret (hex-encoded in the file: twice as many characters).
const SECRET_BYTES: usize = 32;

/// Makes `path` hold a random secret, readable by the owner only, unless it exists:
/// a kept cluster keeps its secret across runs. Creates the parent directory.
///
/// # Errors
/// The directory or the file cannot be created or written.
pub fn ensure(path: &Path) -> io::Result<()> {
    ensure_with_prefix(path, "")
}

/// Makes `path` hold the key of the built-in `admin` principal (`admin.` and a random
/// secret), readable by the owner only, unless it exists.
///
/// # Errors
/// As [`ensure`].
pub fn ensure_admin_key(path: &Path) -> io::Result<()> {
    ensure_with_prefix(path, "admin.")
}

/// [`ensure`] with `prefix` before the random hex.
fn ensure_with_prefix(path: &Path, prefix: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            let bytes: [u8; SECRET_BYTES] = rand::random();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            file.write_all(format!("{prefix}{hex}").as_bytes())?;
            file.sync_all()
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replaces `path` with a new random secret: a fresh cluster per run.
///
/// # Errors
/// As [`ensure`], or the old file cannot be removed.
pub fn renew(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    ensure(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ensure_keeps_and_renew_replaces() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub").join("cluster-secret");
        ensure(&path).expect("made");
        let first = std::fs::read_to_string(&path).expect("read");
        assert_eq!(first.len(), 2 * SECRET_BYTES);
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        ensure(&path).expect("kept");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), first);
        renew(&path).expect("renewed");
        assert_ne!(std::fs::read_to_string(&path).expect("read"), first);
    }
}
