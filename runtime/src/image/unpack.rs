//! Extracts a layer tar into its own directory, in the form overlayfs expects for a lower dir.
//!
//! OCI whiteouts become overlay whiteouts: `.wh.NAME` is a character device 0/0 named NAME,
//! and `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::blob::{Digest, HashingReader};
use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Extracts the layer blob at `blob` into `dest`, unless `dest` exists already.
///
/// Extraction goes to `staging` first and is renamed into place only after the uncompressed
/// stream matched `diff_id`, so `dest` is either absent or complete.
pub(crate) fn unpack_layer(
    blob: &Path,
    digest: &Digest,
    diff_id: &Digest,
    staging: &Path,
    dest: &Path,
) -> Result<(), ImageError> {
    if dest.is_dir() {
        return Ok(());
    }
    if staging.exists() {
        fs::remove_dir_all(staging).map_err(ImageError::io("removing", staging))?;
    }
    fs::create_dir(staging).map_err(ImageError::io("creating", staging))?;
    let result = unpack_into(blob, digest, diff_id, staging);
    if let Err(err) = result {
        let _ = fs::remove_dir_all(staging);
        return Err(err);
    }
    fs::rename(staging, dest).map_err(ImageError::io("renaming into", dest))
}

fn unpack_into(blob: &Path, digest: &Digest, diff_id: &Digest, root: &Path) -> Result<(), ImageError> {
    let layer_err = |reason: String| ImageError::Layer { digest: digest.to_string(), reason };
    let file = File::open(blob).map_err(ImageError::io("opening", blob))?;
    let mut buffered = BufReader::new(file);
    let head = buffered.fill_buf().map_err(ImageError::io("reading", blob))?;
    let decompressed: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(GzDecoder::new(buffered))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(layer_err("zstd-compressed layers are not supported".to_owned()));
    } else {
        Box::new(buffered)
    };
    let root = root.canonicalize().map_err(ImageError::io("resolving", root))?;
    let mut hashing = HashingReader::new(decompressed);
    {
        let mut archive = tar::Archive::new(&mut hashing);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        // Extended attributes from the archive are not applied: `trusted.overlay.*` ones would
        // steer overlayfs, and the tar crate cannot filter them.
        archive.set_unpack_xattrs(false);
        let entries = archive.entries().map_err(|e| layer_err(format!("reading tar: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| layer_err(format!("reading tar: {e}")))?;
            let path = entry.path().map_err(|e| layer_err(format!("reading entry path: {e}")))?.into_owned();
            unpack_entry(&root, &mut entry, &path)
                .map_err(|reason| layer_err(format!("entry {}: {reason}", path.display())))?;
        }
    }
    let (actual, _) = hashing.finish().map_err(|e| layer_err(format!("reading tar: {e}")))?;
    if actual != *diff_id {
        return Err(ImageError::DiffIdMismatch {
            digest: digest.to_string(),
            diff_id: diff_id.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

/// Unpacks one entry below `root` (canonical), turning whiteouts into overlay form.
fn unpack_entry<R: Read>(root: &Path, entry: &mut tar::Entry<'_, R>, path: &Path) -> Result<(), String> {
    let Some(rel) = relative(path)? else {
        return Ok(()); // The root directory itself.
    };
    let name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parent = resolve_dir(root, rel.parent().unwrap_or(Path::new("")))?;
    if name == OPAQUE_MARKER {
        return xattr::set(&parent, OPAQUE_XATTR, b"y")
            .map_err(|e| format!("setting {OPAQUE_XATTR} on {}: {e}", parent.display()));
    }
    if name.starts_with(&format!("{WHITEOUT_PREFIX}{WHITEOUT_PREFIX}")) {
        return Ok(()); // Other aufs metadata such as `.wh..wh.plnk` means nothing to overlay.
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
        if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
            return Err("whiteout names no file".to_owned());
        }
        let target = parent.join(hidden);
        // A file from this same layer stays: a whiteout hides only lower layers.
        if target.symlink_metadata().is_ok() {
            return Ok(());
        }
        return mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
            .map_err(|e| format!("creating whiteout device {}: {e}", target.display()));
    }
    let target = parent.join(&name);
    clear_for(&target, entry.header().entry_type().is_dir())?;
    match entry.unpack_in(root) {
        Ok(true) => Ok(()),
        Ok(false) => Err("path escapes the layer".to_owned()),
        Err(e) => Err(error_chain(&e)),
    }
}

/// The tar crate wraps the interesting I/O error as the source of its own; show both.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        message = format!("{message}: {err}");
        source = err.source();
    }
    message
}

/// The entry path as plain components; `..` is refused outright rather than skipped, since
/// no honest layer contains it.
fn relative(path: &Path) -> Result<Option<PathBuf>, String> {
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err("path escapes the layer".to_owned()),
        }
    }
    Ok((rel.components().next().is_some()).then_some(rel))
}

/// Returns the directory `rel` below `root`, creating missing directories, following
/// symlinks only while they stay inside `root`.
fn resolve_dir(root: &Path, rel: &Path) -> Result<PathBuf, String> {
    let mut dir = root.to_path_buf();
    for component in rel.components() {
        let next = dir.join(component);
        match next.symlink_metadata() {
            Err(_) => {
                fs::create_dir(&next).map_err(|e| format!("creating {}: {e}", next.display()))?;
                dir = next;
            }
            Ok(meta) if meta.is_dir() => dir = next,
            Ok(meta) if meta.file_type().is_symlink() => {
                let resolved =
                    next.canonicalize().map_err(|e| format!("resolving {}: {e}", next.display()))?;
                if !resolved.starts_with(root) || !resolved.is_dir() {
                    return Err(format!("symlink {} leads outside the layer", next.display()));
                }
                dir = resolved;
            }
            Ok(_) => return Err(format!("{} is not a directory", next.display())),
        }
    }
    Ok(dir)
}

/// Removes what an entry would replace: later entries override earlier ones, as in `tar -x`.
///
/// Directories merge with directories; anything else is replaced.
fn clear_for(target: &Path, entry_is_dir: bool) -> Result<(), String> {
    let Ok(meta) = target.symlink_metadata() else {
        return Ok(());
    };
    let result = if meta.is_dir() {
        if entry_is_dir {
            return Ok(());
        }
        fs::remove_dir_all(target)
    } else {
        fs::remove_file(target)
    };
    result.map_err(|e| format!("replacing {}: {e}", target.display()))
}
