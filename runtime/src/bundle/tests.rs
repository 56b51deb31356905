//! Snapshot tests of the generated OCI spec.

use std::path::{Path, PathBuf};

use expect_test::{expect, Expect};

use super::*;

fn plan() -> ProcessPlan {
    ProcessPlan {
        args: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
        env: vec!["PATH=/bin".into(), "A=1".into()],
        cwd: "/app".into(),
        uid: 1000,
        gid: 1000,
    }
}

/// Serializes `spec` with capability sets sorted (they are hash sets).
fn check(input: &SpecInput<'_>, expect: Expect) {
    let spec = oci_spec(input).expect("spec builds");
    let mut value = serde_json::to_value(&spec).expect("spec serializes");
    if let Some(caps) = value.pointer_mut("/process/capabilities").and_then(|c| c.as_object_mut()) {
        for set in caps.values_mut() {
            if let Some(list) = set.as_array_mut() {
                list.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    let text = serde_json::to_string_pretty(&value).expect("value serializes");
    expect.assert_eq(&text);
}

fn input<'a>(plan: &'a ProcessPlan, network: &'a Network, limits: Limits) -> SpecInput<'a> {
    SpecInput {
        process: plan,
        hostname: "web-0",
        bundle: Path::new("/var/lib/peer/runtime/containers/c1"),
        network,
        cgroups_path: PathBuf::from("/peer/c1"),
        limits,
        swap_accounting: true,
        readonly_etc: ReadonlyEtc::default(),
    }
}

#[test]
fn pod_container_with_limits() {
    let plan = plan();
    let network = Network::Namespace("/var/lib/peer/runtime/netns/pod1".into());
    let limits = Limits { cpu_millis: Some(500), memory_bytes: Some(64 << 20), pids: Some(100) };
    check(
        &input(&plan, &network, limits),
        expect![[r#"
            {
              "annotations": {},
              "hostname": "web-0",
              "linux": {
                "cgroupsPath": "/peer/c1",
                "maskedPaths": [
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
                  "/sys/firmware"
                ],
                "namespaces": [
                  {
                    "type": "pid"
                  },
                  {
                    "type": "ipc"
                  },
                  {
                    "type": "uts"
                  },
                  {
                    "type": "mount"
                  },
                  {
                    "path": "/var/lib/peer/runtime/netns/pod1",
                    "type": "network"
                  }
                ],
                "readonlyPaths": [
                  "/proc/bus",
                  "/proc/fs",
                  "/proc/irq",
                  "/proc/sys",
                  "/proc/sysrq-trigger"
                ],
                "resources": {
                  "cpu": {
                    "period": 100000,
                    "quota": 50000
                  },
                  "devices": [
                    {
                      "access": "rwm",
                      "allow": false
                    }
                  ],
                  "memory": {
                    "limit": 67108864,
                    "swap": 67108864
                  },
                  "pids": {
                    "limit": 100
                  }
                }
              },
              "mounts": [
                {
                  "destination": "/proc",
                  "options": [
                    "nosuid",
                    "noexec",
                    "nodev"
                  ],
                  "source": "proc",
                  "type": "proc"
                },
                {
                  "destination": "/dev",
                  "options": [
                    "nosuid",
                    "strictatime",
                    "mode=755",
                    "size=65536k"
                  ],
                  "source": "tmpfs",
                  "type": "tmpfs"
                },
                {
                  "destination": "/dev/pts",
                  "options": [
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5"
                  ],
                  "source": "devpts",
                  "type": "devpts"
                },
                {
                  "destination": "/dev/shm",
                  "options": [
                    "nosuid",
                    "noexec",
                    "nodev",
                    "mode=1777",
                    "size=65536k"
                  ],
                  "source": "shm",
                  "type": "tmpfs"
                },
                {
                  "destination": "/dev/mqueue",
                  "options": [
                    "nosuid",
                    "noexec",
                    "nodev"
                  ],
                  "source": "mqueue",
                  "type": "mqueue"
                },
                {
                  "destination": "/sys",
                  "options": [
                    "nosuid",
                    "noexec",
                    "nodev",
                    "ro"
                  ],
                  "source": "sysfs",
                  "type": "sysfs"
                },
                {
                  "destination": "/etc/hostname",
                  "options": [
                    "rbind",
                    "rprivate"
                  ],
                  "source": "/var/lib/peer/runtime/containers/c1/hostname",
                  "type": "bind"
                },
                {
                  "destination": "/etc/hosts",
                  "options": [
                    "rbind",
                    "rprivate"
                  ],
                  "source": "/var/lib/peer/runtime/containers/c1/hosts",
                  "type": "bind"
                },
                {
                  "destination": "/etc/resolv.conf",
                  "options": [
                    "rbind",
                    "rprivate"
                  ],
                  "source": "/var/lib/peer/runtime/containers/c1/resolv.conf",
                  "type": "bind"
                }
              ],
              "ociVersion": "1.0.2",
              "process": {
                "args": [
                  "/bin/sh",
                  "-c",
                  "echo hi"
                ],
                "capabilities": {
                  "ambient": [],
                  "bounding": [
                    "CAP_AUDIT_WRITE",
                    "CAP_CHOWN",
                    "CAP_DAC_OVERRIDE",
                    "CAP_FOWNER",
                    "CAP_FSETID",
                    "CAP_KILL",
                    "CAP_MKNOD",
                    "CAP_NET_BIND_SERVICE",
                    "CAP_NET_RAW",
                    "CAP_SETFCAP",
                    "CAP_SETGID",
                    "CAP_SETPCAP",
                    "CAP_SETUID",
                    "CAP_SYS_CHROOT"
                  ],
                  "effective": [
                    "CAP_AUDIT_WRITE",
                    "CAP_CHOWN",
                    "CAP_DAC_OVERRIDE",
                    "CAP_FOWNER",
                    "CAP_FSETID",
                    "CAP_KILL",
                    "CAP_MKNOD",
                    "CAP_NET_BIND_SERVICE",
                    "CAP_NET_RAW",
                    "CAP_SETFCAP",
                    "CAP_SETGID",
                    "CAP_SETPCAP",
                    "CAP_SETUID",
                    "CAP_SYS_CHROOT"
                  ],
                  "inheritable": [],
                  "permitted": [
                    "CAP_AUDIT_WRITE",
                    "CAP_CHOWN",
                    "CAP_DAC_OVERRIDE",
                    "CAP_FOWNER",
                    "CAP_FSETID",
                    "CAP_KILL",
                    "CAP_MKNOD",
                    "CAP_NET_BIND_SERVICE",
                    "CAP_NET_RAW",
                    "CAP_SETFCAP",
                    "CAP_SETGID",
                    "CAP_SETPCAP",
                    "CAP_SETUID",
                    "CAP_SYS_CHROOT"
                  ]
                },
                "cwd": "/app",
                "env": [
                  "PATH=/bin",
                  "A=1"
                ],
                "noNewPrivileges": false,
                "terminal": false,
                "user": {
                  "gid": 1000,
                  "uid": 1000
                }
              },
              "root": {
                "path": "rootfs",
                "readonly": false
              }
            }"#]],
    );
}

#[test]
fn host_network_defaults() {
    let plan = plan();
    let mut spec_input = input(&plan, &Network::Host, Limits::default());
    spec_input.swap_accounting = false;
    let spec = oci_spec(&spec_input).expect("spec builds");
    let linux = spec.linux().as_ref().expect("linux section");
    let namespaces: Vec<String> = linux
        .namespaces()
        .as_ref()
        .expect("namespaces")
        .iter()
        .map(|n| format!("{}{:?}", n.typ(), n.path()))
        .collect();
    assert_eq!(namespaces, ["pid None", "ipc None", "uts None", "mnt None"].map(|s| s.replace(' ', "")));
    let resources = linux.resources().as_ref().expect("resources");
    assert_eq!(resources.pids().as_ref().map(|p| p.limit()), Some(DEFAULT_PIDS));
    assert!(resources.memory().is_none() && resources.cpu().is_none());
}

#[test]
fn small_cpu_limits_are_clamped_and_no_swap_without_accounting() {
    let plan = plan();
    let limits = Limits { cpu_millis: Some(1), memory_bytes: Some(1 << 20), pids: None };
    let mut spec_input = input(&plan, &Network::Host, limits);
    spec_input.swap_accounting = false;
    let spec = oci_spec(&spec_input).expect("spec builds");
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone()).expect("resources");
    assert_eq!(resources.cpu().as_ref().and_then(|c| c.quota()), Some(MIN_CPU_QUOTA_US));
    let memory = resources.memory().as_ref().expect("memory");
    assert_eq!((memory.limit(), memory.swap()), (Some(1 << 20), None));
}

#[test]
fn no_cgroup_mount_and_no_sys_admin() {
    let plan = plan();
    let spec = oci_spec(&input(&plan, &Network::Host, Limits::default())).expect("spec builds");
    let mounts = spec.mounts().as_ref().expect("mounts");
    assert!(mounts.iter().all(|m| !m.destination().starts_with("/sys/fs/cgroup")));
    assert!(mounts.iter().all(|m| m.typ().as_deref() != Some("cgroup")));
    let caps = spec.process().as_ref().and_then(|p| p.capabilities().clone()).expect("caps");
    for set in [caps.bounding(), caps.effective(), caps.permitted()] {
        assert!(!set.as_ref().expect("set").contains(&Capability::SysAdmin));
    }
    assert!(spec.process().as_ref().and_then(|p| p.oom_score_adj()).is_none());
}
