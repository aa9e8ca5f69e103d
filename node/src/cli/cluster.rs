//! `psubd cluster`: the nodes and who leads what; `psubd cluster add-node` (add a node to
//! the running cluster); `psubd cluster decommission ID`.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use psubd_wire::AddNode;

use super::connect::Connect;
use super::output::{opt, print_json, print_table, Output};

/// `psubd cluster`
#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// How to print the answer.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// How to reach the cluster (last, so its help heading covers only its flags).
    #[command(flatten)]
    connect: Connect,
    /// Without one, shows the nodes.
    #[command(subcommand)]
    command: Option<ClusterCommand>,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Move every replica off a node, then remove it from the controller group (admin);
    /// answers once the decommission started (`psubd cluster` shows the node's state).
    Decommission {
        /// The node's id.
        id: u64,
    },
    /// Add a node to the running cluster (admin only): it becomes a voter of the
    /// controller group, and new topics may place replicas on it. The node itself is
    /// started with `psubd node --join URL`, which does this on its own.
    AddNode {
        /// The new node's id: a positive integer no other node has.
        #[arg(long)]
        id: u64,
        /// Its peer-transport address as the other nodes reach it, HOST:PORT (an IP
        /// address or a DNS name).
        #[arg(long)]
        raft: String,
        /// Base URL of its HTTP API, e.g. http://psubd-4.internal:8084.
        #[arg(long)]
        http: String,
    },
}

/// Runs `psubd cluster`.
///
/// # Errors
///
/// The server's error, or no node reachable.
pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let admin = args.connect.client()?.admin();
    if let Some(ClusterCommand::Decommission { id }) = args.command {
        let answer = admin
            .decommission(id)
            .await
            .map_err(|e| args.connect.explain(e))?;
        return match args.output {
            Output::Json => print_json(&answer),
            Output::Table => {
                println!("node {} is {}", answer.node, answer.state);
                Ok(())
            }
        };
    }
    if let Some(ClusterCommand::AddNode { id, raft, http }) = args.command {
        let node = admin
            .add_node(&AddNode { id, raft, http })
            .await
            .map_err(|e| args.connect.explain(e))?;
        if args.output == Output::Json {
            return print_json(&node);
        }
        println!(
            "node {} added: raft {}, http {}",
            node.id,
            node.raft,
            opt(node.http)
        );
        return Ok(());
    }
    let info = admin.cluster().await.map_err(|e| args.connect.explain(e))?;
    if args.output == Output::Json {
        return print_json(&info);
    }
    let mut leading: BTreeMap<u64, usize> = BTreeMap::new();
    for p in &info.partitions {
        if let Some(leader) = p.leader {
            *leading.entry(leader).or_default() += 1;
        }
    }
    let rows: Vec<Vec<String>> = info
        .nodes
        .iter()
        .map(|n| {
            let mut role = Vec::new();
            if Some(n.id) == info.controller_leader {
                role.push("controller");
            }
            if n.id == info.node_id {
                role.push("answered");
            }
            vec![
                n.id.to_string(),
                opt(n.http.clone()),
                n.raft.clone(),
                if n.alive { "yes" } else { "no" }.to_string(),
                n.state.clone(),
                if n.voter { "yes" } else { "no" }.to_string(),
                leading.get(&n.id).copied().unwrap_or(0).to_string(),
                role.join(","),
            ]
        })
        .collect();
    print_table(
        &[
            "NODE", "HTTP", "RAFT", "ALIVE", "STATE", "VOTER", "LEADS", "ROLE",
        ],
        &rows,
    )?;
    println!("\n{} partitions", info.partitions.len());
    Ok(())
}
