//! Finding the `psubd` binary a launcher starts: cargo builds every binary of a profile
//! into one directory, so the one to start is the one beside the launcher's own.

use std::path::PathBuf;

/// The binary's file name on this platform.
pub fn file_name() -> String {
    format!("psubd{}", std::env::consts::EXE_SUFFIX)
}

/// Where `psubd` would be beside the running executable, `up` directories above the one
/// holding it (0: the same directory; 1: for a test binary in `<target>/<profile>/deps/`,
/// which follows `CARGO_TARGET_DIR` and the profile by construction). The path may not
/// exist; `None` when the executable's path is unknown.
pub fn beside_current_exe(up: usize) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    for _ in 0..up {
        dir = dir.parent()?;
    }
    Some(dir.join(file_name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beside_the_test_binary_is_the_profile_dir() {
        let exe = std::env::current_exe().expect("exe");
        let deps = exe.parent().expect("deps dir");
        assert_eq!(beside_current_exe(0), Some(deps.join(file_name())));
        assert_eq!(
            beside_current_exe(1),
            deps.parent().map(|p| p.join(file_name()))
        );
    }
}
