//! Who this node is: its name, a random per-install incarnation, and a generation that
//! grows on every start (chitchat needs it to tell a restarted node from its past self).

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::store::write_atomic;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: String,
    /// Random per install: a node that lost its disk and comes back under the same name
    /// never reuses a write stamp.
    pub incarnation: u64,
    /// Incremented and persisted on every start.
    pub generation: u64,
}

/// Loads `DATA/node.json` (creating it on first start), bumps the generation and saves it.
///
/// `name` overrides the stored node name only on first start; renaming a node means a
/// new data dir, as its name is in its certificate and its writes.
pub fn load_and_bump(data_dir: &Path, name: Option<&str>) -> anyhow::Result<Identity> {
    let path = data_dir.join("node.json");
    let mut id = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Identity>(&bytes)
            .with_context(|| format!("reading {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Identity {
            node_id: match name {
                Some(n) => n.to_owned(),
                None => default_name()?,
            },
            incarnation: random_u64()?,
            generation: 0,
        },
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if let Some(n) = name {
        if n != id.node_id {
            anyhow::bail!(
                "data dir {} belongs to node {:?}, not {n:?}; use another --data-dir for another node",
                data_dir.display(),
                id.node_id
            );
        }
    }
    id.generation += 1;
    let bytes = serde_json::to_vec_pretty(&id)?;
    write_atomic(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// The host name, made a valid node name (lowercase DNS label characters).
fn default_name() -> anyhow::Result<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the host name")?;
    let name: String = host
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
        .collect();
    if name.is_empty() {
        anyhow::bail!("the host name is empty; give the node a name with --name");
    }
    Ok(name)
}

fn random_u64() -> anyhow::Result<u64> {
    let mut buf = [0u8; 8];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buf)
        .context("reading /dev/urandom")?;
    Ok(u64::from_le_bytes(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_grows_and_identity_stays() {
        let dir = std::env::temp_dir().join(format!("peer-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let a = load_and_bump(&dir, Some("n1")).expect("first");
        let b = load_and_bump(&dir, None).expect("second");
        assert_eq!((a.node_id.as_str(), a.generation), ("n1", 1));
        assert_eq!((b.node_id.as_str(), b.generation, b.incarnation), ("n1", 2, a.incarnation));
        assert!(load_and_bump(&dir, Some("other")).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
