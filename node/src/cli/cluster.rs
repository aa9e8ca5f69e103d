//! `psubd cluster`: the nodes and who leads what; `psubd cluster decommission ID`.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};

use super::connect::Connect;
use super::output::{opt, print_json, print_table, Output};

/// `psubd cluster`
#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// How to print the answer.
    #[arg(long, value_enum, default_value_t = Output::Table)]
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
                leading.get(&n.id).copied().unwrap_or(0).to_string(),
                role.join(","),
            ]
        })
        .collect();
    print_table(
        &["NODE", "HTTP", "RAFT", "ALIVE", "STATE", "LEADS", "ROLE"],
        &rows,
    )?;
    println!("\n{} partitions", info.partitions.len());
    Ok(())
}
