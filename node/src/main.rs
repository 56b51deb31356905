//! `peer`: runs the node agent (`peer up`) or talks to it (every other command).

use anyhow::bail;
use clap::Parser;
use node::agent::{AgentConfig, DefaultLimits};
use node::api::Request;
use node::cli::{Cli, Command, ImageCommand};
use node::client::{self, Client};
use runtime::image::ImageStore;

fn main() -> std::process::ExitCode {
    // The runtime helper must run before anything starts a thread (see ARCHITECTURE.md).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(node::RUNTIME_HELPER_ARG) {
        let code = runtime::helper::main(&args[2..]);
        return std::process::ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let client = Client::new(cli.global.socket());
    match cli.command {
        Command::Up(up) => {
            let cfg = AgentConfig {
                data_dir: cli.global.data_dir.clone(),
                specs_dir: up.specs,
                socket: cli.global.socket(),
                cgroup_parent: up.cgroup_parent,
                node_name: up.name,
                default_limits: DefaultLimits {
                    cpu_millis: up.default_cpu_millis,
                    memory_bytes: up.default_memory_mib << 20,
                },
                log_max_bytes: up.log_max_mib << 20,
                log_keep: 2,
            };
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(node::agent::run(cfg))?;
        }
        Command::Get { resource, output } => client::get(&client, &resource, output)?,
        Command::Describe { resource, name, namespace } => {
            if !matches!(resource.as_str(), "pod" | "pods" | "po") {
                bail!("describe supports pods only (got {resource:?})");
            }
            let data = client.call(&Request::DescribePod { namespace, name })?;
            client::print_structured(&data, node::cli::Output::Yaml)?;
        }
        Command::Logs { pod, container, follow, previous, namespace } => {
            let req = Request::LogPath { namespace, pod, container, previous };
            client::logs(&client, req, follow)?;
        }
        Command::Apply { files } => {
            let files = client::read_files(&files)?;
            let data = client.call(&Request::Apply { files })?;
            client::report_write(&data, "applied")?;
        }
        Command::Delete { files, kind, name, namespace } => {
            let req = match (files.is_empty(), kind, name) {
                (false, None, None) => Request::DeleteFiles { files: client::read_files(&files)? },
                (true, Some(kind), Some(name)) => Request::Delete { kind, namespace, name },
                _ => bail!("use `peer delete -f FILE` or `peer delete KIND NAME`"),
            };
            let data = client.call(&req)?;
            client::report_write(&data, "deleted")?;
        }
        Command::Exec { pod, container, namespace, command } => {
            let code = client::exec(&client, Request::ExecTarget { namespace, pod, container }, &command)?;
            return Ok(u8::try_from(code).unwrap_or(1));
        }
        Command::Image { command } => {
            let store = ImageStore::open(&cli.global.data_dir.join("images"))?;
            match command {
                ImageCommand::Import { path } => {
                    for img in store.import(&path)? {
                        println!("imported {} ({})", img.reference.as_deref().unwrap_or("<none>"), img.id);
                    }
                }
                ImageCommand::Ls => {
                    let rows: Vec<Vec<String>> = store
                        .list()?
                        .into_iter()
                        .map(|i| {
                            let reference = i.reference.unwrap_or_else(|| "<none>".to_owned());
                            let id = i.id.chars().take(19).collect();
                            vec![reference, id, format!("{:.1}MB", i.size as f64 / 1e6)]
                        })
                        .collect();
                    client::print_table(&["REFERENCE", "ID", "SIZE"], &rows);
                }
                ImageCommand::Rm { reference } => {
                    store.remove(&reference)?;
                    println!("removed {reference}");
                }
            }
        }
    }
    Ok(0)
}
