//! `peer-bench`: times peer's spec-to-running against raw libcontainer and crun, and
//! measures the agent's memory. `scripts/bench` sets up an agent and runs it as root.

mod bundle;
mod cluster;
mod gossip;
mod images;
mod machine;
mod peer;
mod procfs;
mod refs;
mod report;
mod run;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "peer-bench", about = "Benchmarks of peer against raw libcontainer and crun")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Runs every benchmark against a running agent and prints markdown tables.
    Run(run::RunArgs),
    /// Internal: one reference batch (driven by `run` over stdin/stdout).
    #[command(hide = true)]
    Batch(refs::BatchArgs),
    /// Prints the markdown tables again from a `--json-out` file.
    Report { json: PathBuf },
    /// Real agents on loopback: failure detection, spec spread, soak (false deaths).
    Cluster {
        #[command(flatten)]
        args: cluster::ClusterArgs,
        /// Also writes the raw samples here as JSON.
        #[arg(long)]
        json_out: Option<PathBuf>,
    },
    /// In-process nodes with the real transport and membership: idle gossip bytes per node.
    Gossip(gossip::GossipArgs),
    /// Real agents pulling one image through a throttled registry: registry only against
    /// peers first.
    Images(images::ImagesArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Batch(args) => refs::batch(&args),
        Cmd::Run(args) => {
            let report = run::run(&args)?;
            if let Some(path) = &args.json_out {
                let json = serde_json::to_vec_pretty(&report).context("encoding the results")?;
                std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
            }
            print!("{}", report::markdown(&report));
            Ok(())
        }
        Cmd::Cluster { args, json_out } => {
            let report = cluster::run(&args)?;
            if let Some(path) = &json_out {
                let json = serde_json::to_vec_pretty(&report).context("encoding the results")?;
                std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
            }
            print!("{}", cluster::markdown(&report));
            Ok(())
        }
        Cmd::Gossip(args) => gossip::main(&args),
        Cmd::Images(args) => images::main(&args),
        Cmd::Report { json } => {
            let text =
                std::fs::read_to_string(&json).with_context(|| format!("reading {}", json.display()))?;
            let report: run::Report = serde_json::from_str(&text).context("decoding the results")?;
            print!("{}", report::markdown(&report));
            Ok(())
        }
    }
}
