//! OCI bundles for the reference runs: the same `config.json` peer's runtime writes for a
//! pod container (capabilities, masked paths, mounts, limits), with its own network
//! namespace, pointing at one shared rootfs.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use libcontainer::oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

/// What every reference container gets; the numbers match the benchmark's pod spec.
#[derive(Debug, Clone)]
pub struct Limits {
    pub cpu_millis: u64,
    pub memory_mib: u64,
}

// The same security defaults as peer's own bundles, so the reference runs what peer runs.
use runtime::{DEFAULT_CAPS as CAPS, MASKED_PATHS, READONLY_PATHS};

/// Writes the bundle of container `id` under `dir` (created) and returns it.
pub fn write(
    dir: &Path,
    id: &str,
    rootfs: &Path,
    cgroups_path: &str,
    limits: &Limits,
) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating bundle {}", dir.display()))?;
    let hosts = format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{id}\n");
    let resolv = fs::read("/etc/resolv.conf").unwrap_or_default();
    for (name, content) in
        [("hostname", format!("{id}\n").into_bytes()), ("hosts", hosts.into_bytes()), ("resolv.conf", resolv)]
    {
        fs::write(dir.join(name), content).with_context(|| format!("writing {name} in {}", dir.display()))?;
    }
    let spec =
        spec(dir, id, rootfs, cgroups_path, limits).with_context(|| format!("building the spec of {id}"))?;
    let json = serde_json::to_vec_pretty(&spec).context("encoding config.json")?;
    fs::write(dir.join("config.json"), json)
        .with_context(|| format!("writing config.json in {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

fn spec(bundle: &Path, id: &str, rootfs: &Path, cgroups_path: &str, limits: &Limits) -> anyhow::Result<Spec> {
    let caps: HashSet<Capability> = CAPS.into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()?;
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(0u32).gid(0u32).build()?)
        .args(vec!["/peer-demo".to_owned(), "serve".to_owned()])
        .env(vec!["PATH=/".to_owned(), "PORT=8080".to_owned()])
        .cwd("/")
        .capabilities(capabilities)
        .no_new_privileges(false)
        .build()?;
    process.set_rlimits(None);

    // A fresh network namespace per container (peer gives each pod one; all the demo
    // servers listen on port 8080).
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<Result<Vec<_>, _>>()?;

    let memory = i64::try_from(limits.memory_mib << 20).context("memory limit too large")?;
    let mut mem = LinuxMemoryBuilder::default().limit(memory);
    if swap_accounting() {
        mem = mem.swap(memory);
    }
    let quota = i64::try_from(limits.cpu_millis * 100).context("cpu limit too large")?.max(1_000);
    let resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build()?])
        .pids(LinuxPidsBuilder::default().limit(1024).build()?)
        .cpu(LinuxCpuBuilder::default().quota(quota).period(100_000u64).build()?)
        .memory(mem.build()?)
        .build()?;
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(cgroups_path))
        .resources(resources)
        .masked_paths(MASKED_PATHS.map(String::from).to_vec())
        .readonly_paths(READONLY_PATHS.map(String::from).to_vec())
        .build()?;
    Ok(SpecBuilder::default()
        .version("1.0.2")
        .root(RootBuilder::default().path(rootfs).readonly(false).build()?)
        .hostname(id)
        .process(process)
        .mounts(runtime::container_mounts(bundle)?)
        .linux(linux)
        .build()?)
}

/// Whether the kernel accounts swap (then swap is forbidden on top of the limit, as peer does).
fn swap_accounting() -> bool {
    Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
        || Path::new("/sys/fs/cgroup/memory.swap.max").exists()
        || Path::new("/sys/fs/cgroup/unified/memory.swap.max").exists()
}
