//! `peer`: runs the node agent (`peer up`) or talks to it (every other command).

use anyhow::{bail, Context};
use clap::Parser;
use node::agent::{AgentConfig, DefaultLimits};
use node::api::Request;
use node::cli::{Cli, Command, ImageCommand};
use node::client::{self, Client};
use node::cluster::files::ClusterFiles;
use runtime::image::{ImageStore, PullOptions};

fn main() -> std::process::ExitCode {
    // The runtime helper must run before anything starts a thread (see ARCHITECTURE.md).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(node::RUNTIME_HELPER_ARG) {
        let code = runtime::helper::main(&args[2..]);
        return std::process::ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Up(_)) {
        // A CLI command whose output goes into a pipe that closes (`peer get pods | head`)
        // ends quietly, as other Unix tools do, instead of panicking on EPIPE. The agent
        // keeps SIGPIPE ignored: its sockets report EPIPE as errors.
        // SAFETY: no other thread exists yet, and SIG_DFL installs no handler code.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // libcontainer and libcgroups log every create at info and warn about controllers this
    // kernel lacks; the agent's own messages say what matters. CLI commands stay quiet.
    let default_filter = match cli.command {
        Command::Up(_) => "info,libcgroups=error,libcontainer=error,hickory_server=warn",
        _ => "warn,libcgroups=error,libcontainer=error",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
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
                listen: up.listen,
                advertise: up.advertise,
                labels: up
                    .labels
                    .iter()
                    .map(|l| node::nodecfg::parse_label(l))
                    .collect::<anyhow::Result<_>>()?,
                taints: up.taints,
                net: {
                    let plan = node::network::Plan {
                        cluster: node::network::Net::parse(&up.cluster_cidr)
                            .map_err(|e| anyhow::anyhow!("--cluster-cidr: {e}"))?,
                        node_prefix: up.node_cidr_mask_size,
                        services: node::network::Net::parse(&up.service_cidr)
                            .map_err(|e| anyhow::anyhow!("--service-cidr: {e}"))?,
                    };
                    plan.validate().map_err(|e| anyhow::anyhow!("pod network: {e}"))?;
                    plan
                },
                pod_network: match up.pod_network.as_str() {
                    "bridge" => true,
                    "none" => false,
                    other => anyhow::bail!("--pod-network: expected bridge or none, got {other:?}"),
                },
                test_hooks: std::env::var("PEER_TEST_HOOKS").as_deref() == Ok("1"),
                hpa_sync_period: std::time::Duration::from_secs(up.hpa_sync_period.max(1)),
                image_distribution: up.image_distribution,
                image_gc_period: up.image_gc_period.max(std::time::Duration::from_secs(1)),
                image_gc_policy: {
                    let policy = runtime::image::gc::GcPolicy {
                        high_percent: up.image_gc_high_threshold,
                        low_percent: up.image_gc_low_threshold,
                        min_age: up.image_gc_min_age,
                        max_age: up.image_gc_max_age,
                    };
                    policy.validate().map_err(|e| anyhow::anyhow!("--image-gc-low-threshold: {e}"))?;
                    policy
                },
            };
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(node::agent::run(cfg))?;
        }
        Command::Get { resource, output, watch: true } => client::watch(&client, &resource, output)?,
        Command::Get { resource, output, .. } => client::get(&client, &resource, output)?,
        Command::Top { resource, namespace, all_namespaces, output } => {
            let namespace = (!all_namespaces).then_some(namespace);
            node::top::top(&client, &resource, namespace, output)?;
        }
        Command::Describe { resource, name, namespace } => {
            let req = match resource.as_str() {
                "pod" | "pods" | "po" => Request::DescribePod { namespace, name },
                "service" | "services" | "svc" => Request::DescribeService { namespace, name },
                "hpa" | "horizontalpodautoscaler" | "horizontalpodautoscalers" => {
                    Request::DescribeAutoscaler { namespace, name }
                }
                "secret" | "secrets" => Request::DescribeSecret { namespace, name },
                _ => bail!("describe supports pods, services, hpa and secrets (got {resource:?})"),
            };
            let data = client.call(&req)?;
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
        Command::Scale { target, name, replicas, namespace } => {
            let (kind, name) = split_target(&target, name)?;
            let data = client.call(&Request::Scale { kind, namespace, name, replicas })?;
            client::report_write(&data, "scaled")?;
        }
        Command::Rollout { action, target, name, namespace, no_wait, revision, to_revision, output } => {
            let (kind, name) = split_target(&target, name)?;
            if !matches!(kind.as_str(), "deployment" | "deployments" | "deploy") {
                bail!("peer rollout manages deployments (got {kind:?})");
            }
            match action.as_str() {
                "status" => match output {
                    Some(output) => {
                        let data = client.call(&Request::RolloutStatus { namespace, name })?;
                        client::print_structured(&data, output)?;
                    }
                    None => return client::rollout_status(&client, &namespace, &name, !no_wait),
                },
                "history" => {
                    let data =
                        client.call(&Request::RolloutHistory { namespace, name: name.clone(), revision })?;
                    match output {
                        Some(output) => client::print_structured(&data, output)?,
                        None => client::print_history(&name, &data),
                    }
                }
                "undo" => {
                    let req = Request::RolloutUndo { namespace, name: name.clone(), to_revision };
                    let data = client.call(&req)?;
                    match data["skipped"].as_str() {
                        Some(why) => println!("deployment/{name} skipped rollback ({why})"),
                        None => println!("deployment/{name} rolled back"),
                    }
                    client::print_warnings(&data);
                }
                "pause" | "resume" => {
                    let paused = action == "pause";
                    let data =
                        client.call(&Request::RolloutPause { namespace, name: name.clone(), paused })?;
                    println!("deployment/{name} {}", if paused { "paused" } else { "resumed" });
                    client::print_warnings(&data);
                }
                other => {
                    bail!("unknown rollout action {other:?}; expected status, history, undo, pause or resume")
                }
            }
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
        Command::Init { name } => {
            std::fs::create_dir_all(&cli.global.data_dir)?;
            let id = node::identity::load_and_bump(&cli.global.data_dir, name.as_deref())?;
            let files = ClusterFiles::init(&cli.global.data_dir, &id.node_id)?;
            println!("created cluster {} with node {}", files.cluster_id, id.node_id);
            println!("join token: {}", files.settings.token);
            println!("start the node with `peer up`; other machines join with `peer join <this node's address>:7946 --token <token>`");
        }
        Command::Join { addr, token, name } => {
            std::fs::create_dir_all(&cli.global.data_dir)?;
            if ClusterFiles::exists(&cli.global.data_dir) {
                bail!("{} already belongs to a cluster", cli.global.data_dir.display());
            }
            let id = node::identity::load_and_bump(&cli.global.data_dir, name.as_deref())?;
            let parsed = protocol::tls::JoinToken::parse(&token).context("reading --token")?;
            let server = resolve(&addr)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let resp = rt
                .block_on(protocol::transport::join(server, &parsed, &id.node_id))
                .with_context(|| format!("joining through {addr}"))?;
            let files = ClusterFiles::from_join(&cli.global.data_dir, resp, &token)?;
            println!("node {} joined cluster {}; start it with `peer up`", id.node_id, files.cluster_id);
        }
        Command::Token { action } => {
            let req = if action.is_some() { Request::TokenRotate } else { Request::Token };
            match client.call(&req) {
                Ok(data) => println!("{}", data["token"].as_str().unwrap_or_default()),
                Err(e) if action.is_none() && ClusterFiles::exists(&cli.global.data_dir) => {
                    tracing::debug!("agent not reachable ({e}); reading the token from disk");
                    println!("{}", ClusterFiles::load(&cli.global.data_dir)?.settings.token);
                }
                Err(e) => return Err(e),
            }
        }
        Command::Node { action: _, name } => {
            client.call(&Request::NodeRemove { name: name.clone() })?;
            println!("node {name} removed; its certificate is refused from now on");
        }
        Command::Label { label } => {
            let (key, value) = node::agent::parse_label_arg(&label)?;
            let data = client.call(&Request::Label { key, value })?;
            println!("{}", serde_json::to_string(&data["labels"])?);
        }
        Command::Taint { taint } => {
            let (taint, remove) = match taint.strip_suffix('-') {
                Some(t) => (t.to_owned(), true),
                None => (taint, false),
            };
            let data = client.call(&Request::Taint { taint, remove })?;
            println!("{}", serde_json::to_string(&data["taints"])?);
        }
        Command::Cordon { name } => {
            let data = client.call(&Request::Cordon { name, cordoned: true })?;
            println!("node {} cordoned", data["node"].as_str().unwrap_or("?"));
        }
        Command::Drain { name, no_wait } => client::drain(&client, name, !no_wait)?,
        Command::Uncordon { name } => {
            let data = client.call(&Request::Cordon { name, cordoned: false })?;
            println!("node {} uncordoned", data["node"].as_str().unwrap_or("?"));
        }
        Command::Leave => {
            client.call(&Request::Leave)?;
            println!("left the cluster; the agent stops (containers keep running)");
        }
        Command::Block { addrs } => {
            client.call(&Request::Block { addrs })?;
        }
        Command::Image { command } => {
            let store = ImageStore::open(&cli.global.data_dir.join("images"))?;
            match command {
                ImageCommand::Import { path } => {
                    for img in store.import(&path)? {
                        println!("imported {} ({})", img.reference.as_deref().unwrap_or("<none>"), img.id);
                    }
                }
                ImageCommand::Pull { reference, credentials, insecure_registries }
                    if std::os::unix::net::UnixStream::connect(cli.global.socket()).is_ok() =>
                {
                    // A running agent pulls, so blobs come from peers as it is configured.
                    let req = Request::PullImage { reference, credentials, insecure_registries };
                    let data = client.call(&req)?;
                    let mb = |key: &str| data[key].as_f64().unwrap_or(0.0) / 1e6;
                    println!(
                        "pulled {} ({}) in {:.1}s: {:.1} MB, {:.1} MB from the registry, {:.1} MB from peers",
                        data["reference"].as_str().unwrap_or("?"),
                        data["id"].as_str().unwrap_or("?"),
                        data["seconds"].as_f64().unwrap_or(0.0),
                        mb("bytes"),
                        mb("from_registry"),
                        mb("from_peers"),
                    );
                }
                ImageCommand::Pull { reference, credentials, insecure_registries } => {
                    let options = PullOptions { credentials, insecure_registries, ..PullOptions::default() };
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    let img = rt
                        .block_on(store.pull(&reference, &options))
                        .with_context(|| format!("pulling image {reference}"))?;
                    println!("pulled {} ({})", img.reference.as_deref().unwrap_or(&reference), img.id);
                }
                ImageCommand::Ls => {
                    let now = node::agent::now_ms();
                    let rows: Vec<Vec<String>> = store
                        .list()?
                        .into_iter()
                        .map(|i| {
                            let reference = i.reference.unwrap_or_else(|| "<none>".to_owned());
                            let id = i.id.chars().take(19).collect();
                            let used = i.last_used_ms.map_or_else(
                                || "never".to_owned(),
                                |t| format!("{} ago", client::age(now.saturating_sub(t) / 1000)),
                            );
                            vec![reference, id, format!("{:.1}MB", i.size as f64 / 1e6), used]
                        })
                        .collect();
                    client::print_table(&["REFERENCE", "ID", "SIZE", "LAST USED"], &rows);
                }
                ImageCommand::Prune { all } => client::prune_images(&client, all)?,
                ImageCommand::Rm { reference } => {
                    store.remove(&reference)?;
                    println!("removed {reference}");
                }
            }
        }
    }
    Ok(0)
}

/// `host:port` to one socket address.
fn resolve(addr: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .with_context(|| format!("resolving {addr:?} (expected host:port)"))?
        .next()
        .with_context(|| format!("{addr:?} resolves to no address"))
}

/// `deployment/web` or (`deployment`, `web`) as kubectl takes them.
fn split_target(target: &str, name: Option<String>) -> anyhow::Result<(String, String)> {
    match (target.split_once('/'), name) {
        (Some((kind, name)), None) if !kind.is_empty() && !name.is_empty() => {
            Ok((kind.to_owned(), name.to_owned()))
        }
        (None, Some(name)) => Ok((target.to_owned(), name)),
        _ => bail!("expected KIND/NAME (such as deployment/web) or KIND NAME, got {target:?}"),
    }
}
