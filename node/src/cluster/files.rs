//! The cluster's credentials and settings on disk, under `DATA/cluster/`.
//!
//! `ca.pem`, `ca.key` (every node holds the CA key so any node can admit joiners),
//! `node.pem`, `node.key` (this node's certificate names its node id), and
//! `cluster.json`: cluster id, the join token, known peers (seeds after a restart) and
//! revoked node ids. Keys are written mode 0600.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use protocol::tls::{self, ClusterCa, JoinToken, NodeCert, NodeIdentity};
use protocol::transport::JoinResponse;
use serde::{Deserialize, Serialize};

use crate::store::write_atomic;

/// Cluster-wide settings every node keeps and gossips (newest token, union of revocations).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// `<ca hash>.<secret>`; see `protocol::tls::JoinToken`.
    pub token: String,
    /// Version of the token: (rotation counter, node that rotated); the greatest wins.
    pub token_version: (u64, String),
    pub revoked: BTreeSet<String>,
}

impl Settings {
    /// Merges a peer's settings; returns whether anything changed.
    pub fn merge(&mut self, other: &Settings) -> bool {
        let mut changed = false;
        if other.token_version > self.token_version {
            self.token = other.token.clone();
            self.token_version = other.token_version.clone();
            changed = true;
        }
        for r in &other.revoked {
            changed |= self.revoked.insert(r.clone());
        }
        changed
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ClusterJson {
    cluster_id: String,
    settings: Settings,
    peers: BTreeSet<SocketAddr>,
    /// Node ids seen live and not gone for good (left or removed): the base of the
    /// StatefulSet quorum (`protocol::fence`).
    #[serde(default)]
    members: BTreeSet<String>,
}

/// Everything a node needs to take part in its cluster.
#[derive(Debug, Clone)]
pub struct ClusterFiles {
    dir: PathBuf,
    pub cluster_id: String,
    pub ca: ClusterCa,
    pub node: NodeCert,
    pub settings: Settings,
    pub peers: BTreeSet<SocketAddr>,
    /// Node ids seen live and not gone for good (left or removed).
    pub members: BTreeSet<String>,
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster")
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    write_atomic(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buf)
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

impl ClusterFiles {
    pub fn exists(data_dir: &Path) -> bool {
        dir(data_dir).join("cluster.json").exists()
    }

    /// Creates a new cluster with this node as its first member.
    pub fn init(data_dir: &Path, node_id: &str) -> anyhow::Result<ClusterFiles> {
        if Self::exists(data_dir) {
            anyhow::bail!("{} already belongs to a cluster", data_dir.display());
        }
        let cluster_id = random_hex(8)?;
        let ca = ClusterCa::generate(&cluster_id).context("generating the cluster CA")?;
        let node = tls::issue_node_cert(&ca, node_id)
            .with_context(|| format!("issuing a certificate for node {node_id}"))?;
        let token = JoinToken::generate(&ca).context("generating a join token")?;
        let files = ClusterFiles {
            dir: dir(data_dir),
            cluster_id,
            ca,
            node,
            settings: Settings {
                token: token.to_string(),
                token_version: (0, node_id.to_owned()),
                revoked: BTreeSet::new(),
            },
            peers: BTreeSet::new(),
            members: BTreeSet::from([node_id.to_owned()]),
        };
        files.save_all()?;
        Ok(files)
    }

    /// Stores what a successful join returned.
    pub fn from_join(data_dir: &Path, resp: JoinResponse, token: &str) -> anyhow::Result<ClusterFiles> {
        if Self::exists(data_dir) {
            anyhow::bail!("{} already belongs to a cluster", data_dir.display());
        }
        let files = ClusterFiles {
            dir: dir(data_dir),
            cluster_id: resp.cluster_id,
            ca: ClusterCa { cert_pem: resp.ca_cert_pem, key_pem: resp.ca_key_pem },
            node: NodeCert { cert_pem: resp.node_cert_pem, key_pem: resp.node_key_pem },
            settings: Settings {
                token: token.to_owned(),
                token_version: (0, String::new()),
                revoked: BTreeSet::new(),
            },
            peers: resp.seeds.into_iter().collect(),
            members: BTreeSet::new(),
        };
        files.save_all()?;
        Ok(files)
    }

    pub fn load(data_dir: &Path) -> anyhow::Result<ClusterFiles> {
        let d = dir(data_dir);
        let json: ClusterJson = serde_json::from_str(&read(&d.join("cluster.json"))?)
            .with_context(|| format!("parsing {}", d.join("cluster.json").display()))?;
        Ok(ClusterFiles {
            ca: ClusterCa { cert_pem: read(&d.join("ca.pem"))?, key_pem: read(&d.join("ca.key"))? },
            node: NodeCert { cert_pem: read(&d.join("node.pem"))?, key_pem: read(&d.join("node.key"))? },
            dir: d,
            cluster_id: json.cluster_id,
            settings: json.settings,
            peers: json.peers,
            members: json.members,
        })
    }

    fn save_all(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        write_atomic(&self.dir.join("ca.pem"), self.ca.cert_pem.as_bytes())?;
        write_secret(&self.dir.join("ca.key"), &self.ca.key_pem)?;
        write_atomic(&self.dir.join("node.pem"), self.node.cert_pem.as_bytes())?;
        write_secret(&self.dir.join("node.key"), &self.node.key_pem)?;
        self.save()
    }

    /// Saves settings and known peers (`cluster.json`).
    pub fn save(&self) -> anyhow::Result<()> {
        let json = ClusterJson {
            cluster_id: self.cluster_id.clone(),
            settings: self.settings.clone(),
            peers: self.peers.clone(),
            members: self.members.clone(),
        };
        let path = self.dir.join("cluster.json");
        write_secret(&path, &serde_json::to_string_pretty(&json)?)
    }

    pub fn identity(&self) -> anyhow::Result<NodeIdentity> {
        NodeIdentity::from_pem(&self.ca.cert_pem, &self.node).context("loading this node's certificate")
    }

    pub fn token(&self) -> anyhow::Result<JoinToken> {
        JoinToken::parse(&self.settings.token).context("parsing the stored join token")
    }

    /// Makes a new token; the old one stops admitting nodes everywhere once this spreads.
    pub fn rotate_token(&mut self, node_id: &str) -> anyhow::Result<JoinToken> {
        let token = JoinToken::generate(&self.ca).context("generating a join token")?;
        self.settings.token = token.to_string();
        self.settings.token_version = (self.settings.token_version.0 + 1, node_id.to_owned());
        self.save()?;
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_merge_keeps_the_newest_token_and_all_revocations() {
        let mut a =
            Settings { token: "a".into(), token_version: (1, "n1".into()), revoked: ["x".into()].into() };
        let b = Settings { token: "b".into(), token_version: (2, "n2".into()), revoked: ["y".into()].into() };
        assert!(a.merge(&b));
        assert_eq!(a.token, "b");
        assert_eq!(a.revoked.len(), 2);
        assert!(!a.merge(&b), "merging again changes nothing");
        let older = Settings { token: "c".into(), token_version: (1, "n9".into()), revoked: BTreeSet::new() };
        assert!(!a.merge(&older));
    }

    #[test]
    fn init_then_load_round_trips() {
        let data = std::env::temp_dir().join(format!("peer-cluster-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let made = ClusterFiles::init(&data, "n1").expect("init");
        assert!(ClusterFiles::init(&data, "n1").is_err(), "a second init is refused");
        let loaded = ClusterFiles::load(&data).expect("load");
        assert_eq!(loaded.cluster_id, made.cluster_id);
        assert_eq!(loaded.identity().expect("identity").node_id, "n1");
        let mode = std::fs::metadata(data.join("cluster/ca.key")).expect("ca.key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&data).expect("cleanup");
    }
}
