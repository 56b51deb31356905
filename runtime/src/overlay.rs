//! The container rootfs: an overlay of the image layers with a per-container upper dir.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Mount data of one page is all the kernel takes.
const MAX_MOUNT_DATA: usize = 4000;

/// Whether something is mounted on `target`: it sits on another device than its parent.
pub(crate) fn is_mounted(target: &Path) -> io::Result<bool> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    let (t, p) = match (std::fs::metadata(target), std::fs::metadata(parent)) {
        (Ok(t), Ok(p)) => (t, p),
        (Err(e), _) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    Ok(t.dev() != p.dev())
}

/// The overlay mount data: `lowerdir` lists the top layer first. An image without
/// layers gets `empty` (an empty directory) as its only lower dir.
pub(crate) fn mount_data(layers: &[PathBuf], empty: &Path, upper: &Path, work: &Path) -> String {
    let lower: Vec<String> = if layers.is_empty() {
        vec![escape(empty)]
    } else {
        layers.iter().rev().map(|l| escape(l)).collect()
    };
    format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), escape(upper), escape(work))
}

/// Overlay options separate with `,` and `:`; both must be escaped inside paths.
fn escape(path: &Path) -> String {
    let s = path.to_string_lossy();
    s.replace('\\', "\\\\").replace(',', "\\,").replace(':', "\\:")
}

/// Mounts the overlay on `target` unless something is mounted there already.
///
/// Long layer lists exceed the one page the kernel accepts as mount data; then the
/// mount is made from inside the layers' common parent with relative names, which
/// changes this process's working directory — only call this from the helper process.
pub(crate) fn mount_rootfs(layers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    if is_mounted(target)? {
        return Ok(());
    }
    let empty = target.with_file_name("empty");
    if layers.is_empty() {
        std::fs::create_dir_all(&empty)?;
    }
    for layer in layers {
        if !layer.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("image layer {} is missing", layer.display()),
            ));
        }
    }
    let mut data = mount_data(layers, &empty, upper, work);
    if data.len() > MAX_MOUNT_DATA {
        let common =
            layers.first().and_then(|l| l.parent()).filter(|p| layers.iter().all(|l| l.parent() == Some(p)));
        let Some(common) = common else {
            return Err(io::Error::other(format!(
                "overlay options for {} exceed one page",
                target.display()
            )));
        };
        let relative: Vec<PathBuf> = layers.iter().filter_map(|l| l.file_name().map(PathBuf::from)).collect();
        std::env::set_current_dir(common)?;
        data = mount_data(&relative, &empty, upper, work);
        if data.len() > MAX_MOUNT_DATA {
            return Err(io::Error::other(format!(
                "overlay options for {} exceed one page",
                target.display()
            )));
        }
    }
    mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(data.as_str())).map_err(|e| {
        io::Error::new(io::Error::from(e).kind(), format!("mount overlay on {}: {e}", target.display()))
    })
}

/// Unmounts `target` if something is mounted there.
pub(crate) fn unmount(target: &Path) -> io::Result<()> {
    if !is_mounted(target)? {
        return Ok(());
    }
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => {
            Err(io::Error::new(io::Error::from(e).kind(), format!("unmount {}: {e}", target.display())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_dirs_list_the_top_layer_first() {
        let layers = vec![PathBuf::from("/l/base"), PathBuf::from("/l/mid"), PathBuf::from("/l/top")];
        let data = mount_data(&layers, Path::new("/b/empty"), Path::new("/b/upper"), Path::new("/b/work"));
        assert_eq!(data, "lowerdir=/l/top:/l/mid:/l/base,upperdir=/b/upper,workdir=/b/work");
        let data = mount_data(&[], Path::new("/b/empty"), Path::new("/b/u,p"), Path::new("/b/w:k"));
        assert_eq!(data, "lowerdir=/b/empty,upperdir=/b/u\\,p,workdir=/b/w\\:k");
    }
}
