//! What the container's process is: args, environment, working directory and user,
//! merged from the container spec over the image config.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::image::ResolvedImage;
use crate::spec::ContainerSpec;

/// `PATH` used when neither the image nor the spec sets one (Docker's default).
pub(crate) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The merged process of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcessPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
}

/// Merges `spec` over `image` into the process to run.
pub(crate) fn plan(spec: &ContainerSpec, image: &ResolvedImage) -> Result<ProcessPlan, Error> {
    let args = merge_args(spec, &image.config.entrypoint, &image.config.cmd);
    if args.is_empty() {
        return Err(Error::NoCommand { id: spec.id.clone(), image: image.reference.clone() });
    }
    let cwd = spec
        .working_dir
        .clone()
        .or_else(|| image.config.working_dir.clone())
        .filter(|dir| !dir.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    let (uid, gid) = match image.config.user.as_deref().filter(|u| !u.is_empty()) {
        None => (0, 0),
        Some(user) => resolve_user(user, &image.layers).map_err(|reason| Error::User {
            id: spec.id.clone(),
            user: user.to_owned(),
            reason,
        })?,
    };
    Ok(ProcessPlan { args, env: merge_env(&image.config.env, &spec.env), cwd, uid, gid })
}

/// Kubernetes semantics: `command` replaces the entrypoint and drops the image's cmd;
/// `args` replaces the cmd.
pub(crate) fn merge_args(spec: &ContainerSpec, entrypoint: &[String], cmd: &[String]) -> Vec<String> {
    let (head, tail) = match (spec.command.is_empty(), spec.args.is_empty()) {
        (true, true) => (entrypoint, cmd),
        (true, false) => (entrypoint, spec.args.as_slice()),
        (false, _) => (spec.command.as_slice(), spec.args.as_slice()),
    };
    head.iter().chain(tail).cloned().collect()
}

/// The image's `K=V` list with the spec's pairs set over it; a later key replaces an
/// earlier one in place. `PATH` is added when missing.
pub(crate) fn merge_env(image_env: &[String], spec_env: &[(String, String)]) -> Vec<String> {
    let mut merged: Vec<(String, String)> = Vec::new();
    let pairs = image_env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.clone(), String::new()),
        })
        .chain(spec_env.iter().cloned());
    for (key, value) in pairs {
        if key.is_empty() {
            continue;
        }
        match merged.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => merged.push((key, value)),
        }
    }
    if !merged.iter().any(|(k, _)| k == "PATH") {
        merged.insert(0, ("PATH".to_owned(), DEFAULT_PATH.to_owned()));
    }
    merged.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Resolves an image `User` (`uid`, `uid:gid`, `name`, `name:group`) to numeric ids.
/// Names are looked up in `/etc/passwd` and `/etc/group` of the topmost layer that has them.
pub(crate) fn resolve_user(user: &str, layers: &[PathBuf]) -> Result<(u32, u32), String> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, primary_gid) = match user_part.parse::<u32>() {
        Ok(uid) => {
            let gid = lookup(layers, "etc/passwd", |f| f.get(2) == Some(&user_part))
                .and_then(|f| f.get(3).and_then(|g| g.parse().ok()))
                .unwrap_or(0);
            (uid, gid)
        }
        Err(_) => {
            let fields = lookup(layers, "etc/passwd", |f| f.first() == Some(&user_part))
                .ok_or_else(|| format!("no user {user_part:?} in the image's /etc/passwd"))?;
            let uid = fields.get(2).and_then(|s| s.parse().ok());
            let gid = fields.get(3).and_then(|s| s.parse().ok());
            match (uid, gid) {
                (Some(uid), Some(gid)) => (uid, gid),
                _ => return Err(format!("malformed /etc/passwd entry for {user_part:?}")),
            }
        }
    };
    let gid = match group_part {
        None => primary_gid,
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup(layers, "etc/group", |f| f.first() == Some(&group))
                .and_then(|f| f.get(2).and_then(|s| s.parse().ok()))
                .ok_or_else(|| format!("no group {group:?} in the image's /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

/// The first line (split at `:`) matching `pred` in `file` of the topmost layer having it.
fn lookup(layers: &[PathBuf], file: &str, pred: impl Fn(&[&str]) -> bool) -> Option<Vec<String>> {
    let text = layers.iter().rev().find_map(|layer| read_small(&layer.join(file)))?;
    text.lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| pred(fields))
        .map(|fields| fields.into_iter().map(str::to_owned).collect())
}

/// Reads a file of at most 1 MiB; image files are data, not trust.
fn read_small(path: &Path) -> Option<String> {
    let meta = fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() > 1 << 20 {
        return None;
    }
    fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: &[&str], args: &[&str]) -> ContainerSpec {
        ContainerSpec {
            id: "c1".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..ContainerSpec::default()
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn args_follow_kubernetes_semantics() {
        let ep = strings(&["/entry", "-x"]);
        let cmd = strings(&["serve"]);
        assert_eq!(merge_args(&spec(&[], &[]), &ep, &cmd), ["/entry", "-x", "serve"]);
        assert_eq!(merge_args(&spec(&[], &["run"]), &ep, &cmd), ["/entry", "-x", "run"]);
        assert_eq!(merge_args(&spec(&["/bin/sh"], &[]), &ep, &cmd), ["/bin/sh"]);
        assert_eq!(merge_args(&spec(&["/bin/sh"], &["-c", "x"]), &ep, &cmd), ["/bin/sh", "-c", "x"]);
        assert!(merge_args(&spec(&[], &[]), &[], &[]).is_empty());
    }

    #[test]
    fn env_overlays_and_defaults_path() {
        let image = strings(&["A=1", "B=2", "NOVALUE"]);
        let over = vec![("B".to_owned(), "x=y".to_owned()), ("C".to_owned(), "3".to_owned())];
        assert_eq!(
            merge_env(&image, &over),
            [format!("PATH={DEFAULT_PATH}"), "A=1".into(), "B=x=y".into(), "NOVALUE=".into(), "C=3".into()]
        );
        assert_eq!(merge_env(&strings(&["PATH=/bin"]), &[]), ["PATH=/bin"]);
    }

    #[test]
    fn users_resolve_numeric_and_by_name() {
        let dir = std::env::temp_dir().join(format!("peer-user-test-{}", std::process::id()));
        let etc = dir.join("etc");
        fs::create_dir_all(&etc).expect("mkdir");
        fs::write(etc.join("passwd"), "root:x:0:0::/root:/bin/sh\nweb:x:1000:1001::/:/bin/sh\n")
            .expect("write");
        fs::write(etc.join("group"), "root:x:0:\nstaff:x:50:\n").expect("write");
        let layers = vec![dir.clone()];
        assert_eq!(resolve_user("1000", &layers), Ok((1000, 1001)));
        assert_eq!(resolve_user("7:8", &layers), Ok((7, 8)));
        assert_eq!(resolve_user("web", &layers), Ok((1000, 1001)));
        assert_eq!(resolve_user("web:staff", &layers), Ok((1000, 50)));
        assert!(resolve_user("nobody", &layers).is_err());
        assert!(resolve_user("web:nogroup", &layers).is_err());
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
