//! The OCI bundle of one container: `config.json` built from the merged process and
//! limits, plus the generated `/etc` files it bind-mounts.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use libcontainer::oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder,
    Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use libcontainer::oci_spec::OciSpecError;

use crate::error::Error;
use crate::process::ProcessPlan;
use crate::spec::{ContainerSpec, DnsConfig, Limits, Network};

/// Pids limit when the spec gives none.
pub(crate) const DEFAULT_PIDS: i64 = 1024;
/// CFS period; the quota is `cpu_millis * 100` per period.
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses CFS quotas below 1 ms.
const MIN_CPU_QUOTA_US: i64 = 1_000;

/// Docker's default capability set; notably without `CAP_SYS_ADMIN`.
pub const DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths hidden from the container (Docker's default list).
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Paths the container may read but not write (runc's default list).
pub const READONLY_PATHS: [&str; 5] =
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Where the pieces of one container live: `<root>/containers/<id>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BundlePaths {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl BundlePaths {
    pub fn new(containers_dir: &Path, id: &str) -> BundlePaths {
        let dir = containers_dir.join(id);
        BundlePaths { rootfs: dir.join("rootfs"), upper: dir.join("upper"), work: dir.join("work"), dir }
    }
}

/// Everything the OCI spec of one container depends on.
#[derive(Debug, Clone)]
pub(crate) struct SpecInput<'a> {
    pub process: &'a ProcessPlan,
    pub hostname: &'a str,
    /// Absolute bundle directory; the generated `/etc` files are bind-mounted from it.
    pub bundle: &'a Path,
    pub network: &'a Network,
    pub cgroups_path: PathBuf,
    pub limits: Limits,
    /// Whether the kernel accounts swap, so that swap can be forbidden on top of the memory limit.
    pub swap_accounting: bool,
    /// The `/etc` files the caller gave (`resolv.conf`, `hosts`): mounted read-only.
    pub readonly_etc: ReadonlyEtc,
}

/// Which generated `/etc` files are the caller's and so mounted read-only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ReadonlyEtc {
    pub resolv_conf: bool,
    pub hosts: bool,
}

impl ReadonlyEtc {
    pub fn of(spec: &ContainerSpec) -> ReadonlyEtc {
        ReadonlyEtc { resolv_conf: spec.dns.is_some(), hosts: !spec.hosts.is_empty() }
    }

    fn contains(self, file: &str) -> bool {
        match file {
            "resolv.conf" => self.resolv_conf,
            "hosts" => self.hosts,
            _ => false,
        }
    }
}

/// Builds the OCI runtime spec. Pure: the same input gives the same spec.
pub(crate) fn oci_spec(input: &SpecInput<'_>) -> Result<Spec, OciSpecError> {
    let plan = input.process;
    let caps: std::collections::HashSet<Capability> = DEFAULT_CAPS.into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(std::collections::HashSet::new())
        .ambient(std::collections::HashSet::new())
        .build()?;
    // No rlimits: the container inherits the agent's, as Docker containers inherit
    // dockerd's. Raising a hard limit needs CAP_SYS_RESOURCE, which some hosts withhold
    // even from root (measured: libcontainer then fails with EPERM).
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(plan.uid).gid(plan.gid).build()?)
        .args(plan.args.clone())
        .env(plan.env.clone())
        .cwd(plan.cwd.clone())
        .capabilities(capabilities)
        .no_new_privileges(false)
        .build()?;
    // The builder fills in oci-spec's default rlimits (RLIMIT_NOFILE 1024).
    process.set_rlimits(None);

    let mut namespaces = Vec::new();
    for typ in
        [LinuxNamespaceType::Pid, LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts, LinuxNamespaceType::Mount]
    {
        namespaces.push(LinuxNamespaceBuilder::default().typ(typ).build()?);
    }
    if let Network::Namespace(path) = input.network {
        namespaces.push(
            LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network).path(path.clone()).build()?,
        );
    }

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(input.cgroups_path.clone())
        .resources(resources(input.limits, input.swap_accounting)?)
        .masked_paths(MASKED_PATHS.map(String::from).to_vec())
        .readonly_paths(READONLY_PATHS.map(String::from).to_vec())
        .build()?;

    SpecBuilder::default()
        .version("1.0.2")
        .root(RootBuilder::default().path("rootfs").readonly(false).build()?)
        .hostname(input.hostname)
        .process(process)
        .mounts(mounts_with(input.bundle, input.readonly_etc)?)
        .linux(linux)
        .build()
}

fn resources(
    limits: Limits,
    swap_accounting: bool,
) -> Result<libcontainer::oci_spec::runtime::LinuxResources, OciSpecError> {
    // Deny every device first; libcontainer then allows its default set (null, zero, tty, ...).
    let deny_all = LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build()?;
    let mut builder = LinuxResourcesBuilder::default()
        .devices(vec![deny_all])
        .pids(LinuxPidsBuilder::default().limit(limits.pids.unwrap_or(DEFAULT_PIDS)).build()?);
    if let Some(millis) = limits.cpu_millis {
        let quota = i64::try_from(millis.saturating_mul(100)).unwrap_or(i64::MAX).max(MIN_CPU_QUOTA_US);
        builder = builder.cpu(LinuxCpuBuilder::default().quota(quota).period(CPU_PERIOD_US).build()?);
    }
    if let Some(bytes) = limits.memory_bytes {
        let limit = i64::try_from(bytes).unwrap_or(i64::MAX);
        let mut memory = LinuxMemoryBuilder::default().limit(limit);
        if swap_accounting {
            // memory+swap equal to memory: the container may not swap (as in Kubernetes).
            memory = memory.swap(limit);
        }
        builder = builder.memory(memory.build()?);
    }
    builder.build()
}

/// runc's default mounts without `/sys/fs/cgroup` (libcontainer would mount cgroup v1
/// read-write there, letting a root container raise its own limits), plus the
/// generated `/etc` files.
pub fn mounts(bundle: &Path) -> Result<Vec<Mount>, OciSpecError> {
    mounts_with(bundle, ReadonlyEtc::default())
}

/// [`mounts`], with the `/etc` files in `readonly` mounted read-only.
fn mounts_with(bundle: &Path, readonly: ReadonlyEtc) -> Result<Vec<Mount>, OciSpecError> {
    let m = |dest: &str, typ: &str, source: &str, options: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(source)
            .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
    };
    let mut mounts = vec![
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        m("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        )?,
        m("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])?,
        m("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        m("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"])?,
    ];
    for file in ETC_FILES {
        let source = bundle.join(file);
        let mut options = vec!["rbind".to_owned(), "rprivate".to_owned()];
        if readonly.contains(file) {
            options.push("ro".to_owned());
        }
        mounts.push(
            MountBuilder::default()
                .destination(format!("/etc/{file}"))
                .typ("bind")
                .source(source)
                .options(options)
                .build()?,
        );
    }
    Ok(mounts)
}

/// Files generated in the bundle directory and bind-mounted over `/etc/<name>`.
const ETC_FILES: [&str; 3] = ["hostname", "hosts", "resolv.conf"];

/// Writes `config.json` and the `/etc` files, and creates `rootfs/`, `upper/`, `work/`.
/// Existing `upper/` content is kept: it belongs to earlier runs of the same container.
/// `dns` and `hosts` replace the default `resolv.conf` and `hosts` when given.
pub(crate) fn write(paths: &BundlePaths, spec: &ContainerSpec, oci: &Spec) -> Result<(), Error> {
    let (id, hostname) = (spec.id.as_str(), spec.hostname.as_str());
    let object = format!("container {id}");
    let hosts = if !spec.hosts.is_empty() {
        hosts_file(&spec.hosts).map_err(|reason| Error::InvalidNet { object: object.clone(), reason })?
    } else {
        match spec.network {
            Network::Host => read_host_file(Path::new("/etc/hosts")),
            Network::Namespace(_) => pod_hosts(hostname),
        }
    };
    let resolv_conf = match &spec.dns {
        Some(dns) => {
            resolv_conf(dns).map_err(|reason| Error::InvalidNet { object: object.clone(), reason })?
        }
        None => host_resolv_conf(),
    };
    for dir in [&paths.dir, &paths.rootfs, &paths.upper, &paths.work] {
        fs::create_dir_all(dir).map_err(|e| Error::io(&object, "create directory", dir, e))?;
    }
    let files =
        [("hostname", format!("{hostname}\n").into_bytes()), ("hosts", hosts), ("resolv.conf", resolv_conf)];
    for (name, content) in files {
        let path = paths.dir.join(name);
        write_atomic(&path, &content).map_err(|e| Error::io(&object, "write", &path, e))?;
    }
    let config = paths.dir.join("config.json");
    let json = serde_json::to_vec_pretty(oci).map_err(|e| Error::io(&object, "encode", &config, e.into()))?;
    write_atomic(&config, &json).map_err(|e| Error::io(&object, "write", &config, e))
}

/// `/etc/hosts` for a container in its own network namespace.
fn pod_hosts(hostname: &str) -> Vec<u8> {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
    )
    .into_bytes()
}

/// `/etc/resolv.conf` from the caller's settings; words with white space (which would
/// change the file's meaning) are refused.
fn resolv_conf(dns: &DnsConfig) -> Result<Vec<u8>, String> {
    let mut text = String::new();
    for server in &dns.nameservers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    for (key, words) in [("search", &dns.searches), ("options", &dns.options)] {
        if words.is_empty() {
            continue;
        }
        for word in words {
            check_word(&format!("dns {key}"), word)?;
        }
        text.push_str(&format!("{key} {}\n", words.join(" ")));
    }
    Ok(text.into_bytes())
}

/// `/etc/hosts` with the localhost lines and `entries`.
fn hosts_file(entries: &[(std::net::Ipv4Addr, Vec<String>)]) -> Result<Vec<u8>, String> {
    let mut text = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for (addr, names) in entries {
        if names.is_empty() {
            return Err(format!("hosts entry {addr} has no names"));
        }
        for name in names {
            check_word("hosts name", name)?;
        }
        text.push_str(&format!("{addr}\t{}\n", names.join(" ")));
    }
    Ok(text.into_bytes())
}

fn check_word(what: &str, word: &str) -> Result<(), String> {
    if word.is_empty() || word.chars().any(|c| c.is_whitespace() || c.is_control() || c == '#') {
        return Err(format!("{what} {word:?} must be one non-empty word"));
    }
    Ok(())
}

/// The host's resolver config. With systemd-resolved the stub at 127.0.0.53 is not
/// reachable from another network namespace, so its upstream list is used instead.
fn host_resolv_conf() -> Vec<u8> {
    let upstream = Path::new("/run/systemd/resolve/resolv.conf");
    if upstream.exists() {
        return read_host_file(upstream);
    }
    read_host_file(Path::new("/etc/resolv.conf"))
}

fn read_host_file(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_default()
}

fn write_atomic(path: &Path, content: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests;
