//! The `psubd node` command line of one node, built in one place so every launcher
//! starts nodes the same way.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::layout::NodePlace;
use crate::spawn::Launch;

/// Everything needed to start one node, and to start it again as the same node.
#[derive(Debug, Clone)]
pub struct NodeCommand {
    /// The `psubd` binary.
    pub program: PathBuf,
    /// Run through this command first (`ip netns exec <ns>`, which execs the program in
    /// place, so the pid is still the node's); empty to run the program directly.
    pub wrapper: Vec<OsString>,
    /// The node's identity and places.
    pub place: NodePlace,
    /// `--peers` (see [`crate::layout::peers`]); empty for a node started with `--join`
    /// (among `args`), which is then given no `--peers`.
    pub peers: String,
    /// `--cluster-secret-file`, if any.
    pub secret_file: Option<PathBuf>,
    /// Flags after the ones above.
    pub args: Vec<OsString>,
    /// Environment of the process, in order (a later entry overrides an earlier one).
    pub env: Vec<(OsString, OsString)>,
    /// Variables of this process's environment the node does not inherit.
    pub env_removed: Vec<OsString>,
    /// `RUST_LOG` for the node unless the caller's environment sets `RUST_LOG` or
    /// `PSUBD_LOG` (`None`: the node's own default filter).
    pub default_log_filter: Option<String>,
    /// See [`Launch::death_signal`].
    pub death_signal: Option<libc::c_int>,
}

impl NodeCommand {
    /// `program node` for `place` among `peers`, with nothing else.
    pub fn new(program: impl Into<PathBuf>, place: NodePlace, peers: impl Into<String>) -> Self {
        NodeCommand {
            program: program.into(),
            wrapper: Vec::new(),
            place,
            peers: peers.into(),
            secret_file: None,
            args: Vec::new(),
            env: Vec::new(),
            env_removed: Vec::new(),
            default_log_filter: None,
            death_signal: None,
        }
    }

    /// Node id.
    pub fn id(&self) -> u64 {
        self.place.id
    }

    /// Sets an environment variable, replacing an earlier value of it.
    pub fn set_env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
    }

    /// The arguments after the program: `node --id … --http … --raft … --peers …
    /// --data-dir … [--cluster-secret-file …] [args…]`.
    pub fn node_args(&self) -> Vec<OsString> {
        let p = &self.place;
        let mut out: Vec<OsString> = vec![
            "node".into(),
            "--id".into(),
            p.id.to_string().into(),
            "--http".into(),
            p.http.to_string().into(),
            "--raft".into(),
            p.raft.to_string().into(),
        ];
        if !self.peers.is_empty() {
            out.extend(["--peers".into(), self.peers.clone().into()]);
        }
        out.extend(["--data-dir".into(), p.data_dir.clone().into()]);
        if let Some(secret) = &self.secret_file {
            out.extend(["--cluster-secret-file".into(), secret.clone().into()]);
        }
        out.extend(self.args.iter().cloned());
        out
    }

    /// How to start the process, its output appended to the node's log.
    pub fn launch(&self) -> Launch {
        let mut launch = match self.wrapper.split_first() {
            Some((first, rest)) => Launch::new(first)
                .args(rest.iter().cloned())
                .args([&self.program]),
            None => Launch::new(&self.program),
        }
        .args(self.node_args())
        .log_to(&self.place.log);
        if let Some(filter) = &self.default_log_filter {
            if std::env::var_os("RUST_LOG").is_none() && std::env::var_os("PSUBD_LOG").is_none() {
                launch = launch.env("RUST_LOG", filter);
            }
        }
        for key in &self.env_removed {
            launch = launch.env_remove(key);
        }
        for (k, v) in &self.env {
            launch = launch.env(k, v);
        }
        if let Some(signal) = self.death_signal {
            launch = launch.death_signal(signal);
        }
        launch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{peers, DevPorts, Layout};

    #[test]
    fn the_command_line_names_everything() {
        let places = DevPorts::new(8081, 2)
            .expect("in range")
            .places(&Layout::new("/d"));
        let mut cmd = NodeCommand::new("/bin/psubd", places[0].clone(), peers(&places));
        cmd.secret_file = Some("/d/cluster-secret".into());
        cmd.args = vec!["--insecure".into()];
        let args: Vec<String> = cmd
            .node_args()
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "node --id 1 --http 127.0.0.1:8081 --raft 127.0.0.1:9081 \
             --peers 1=127.0.0.1:9081,2=127.0.0.1:9082 --data-dir /d/1 \
             --cluster-secret-file /d/cluster-secret --insecure"
        );
    }

    #[test]
    fn set_env_replaces() {
        let places = DevPorts::new(8081, 1)
            .expect("in range")
            .places(&Layout::new("/d"));
        let mut cmd = NodeCommand::new("/bin/psubd", places[0].clone(), "");
        cmd.set_env("A", "1");
        cmd.set_env("A", "2");
        assert_eq!(cmd.env, vec![("A".into(), "2".into())]);
    }
}
