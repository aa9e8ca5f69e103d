//! `psubd cluster`: the nodes and who leads what.

use std::collections::BTreeMap;

use clap::Args;

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
}

/// Runs `psubd cluster`.
///
/// # Errors
///
/// The server's error, or no node reachable.
pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let admin = args.connect.client()?.admin();
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
                leading.get(&n.id).copied().unwrap_or(0).to_string(),
                role.join(","),
            ]
        })
        .collect();
    print_table(&["NODE", "HTTP", "RAFT", "ALIVE", "LEADS", "ROLE"], &rows)?;
    println!("\n{} partitions", info.partitions.len());
    Ok(())
}
