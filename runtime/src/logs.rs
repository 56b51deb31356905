//! Container log files: size-based rotation that the writing container never notices,
//! and reading the tail.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Rotates `path` when it holds at least `max_bytes`: `path.N-1` becomes `path.N` (the
/// oldest beyond `keep` is deleted), a copy goes to `path.1`, and `path` is truncated.
/// Returns whether it rotated.
///
/// Copy-and-truncate keeps the container's O_APPEND file descriptor valid, so the
/// container and an agent restart never notice; lines written between the copy and
/// the truncation are lost. With `keep == 0` the file is only truncated.
pub fn rotate_if_needed(path: &Path, max_bytes: u64, keep: usize) -> io::Result<bool> {
    let len = match fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len < max_bytes {
        return Ok(false);
    }
    if keep > 0 {
        remove_if_exists(&numbered(path, keep))?;
        for n in (1..keep).rev() {
            match fs::rename(numbered(path, n), numbered(path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::copy(path, numbered(path, 1))?;
    }
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// The last `max_bytes` of `path`. When that cuts a line, the partial first line is
/// dropped (unless the whole tail is one line).
pub fn tail(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max_bytes);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.take(max_bytes).read_to_end(&mut buf)?;
    if start > 0 {
        if let Some(newline) = buf.iter().position(|&b| b == b'\n') {
            if newline + 1 < buf.len() {
                buf.drain(..=newline);
            }
        }
    }
    Ok(buf)
}

fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("peer-logs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn rotation_shifts_copies_and_keeps_appending() {
        let dir = temp_dir("rotate");
        let log = dir.join("c.log");
        let mut writer = OpenOptions::new().append(true).create(true).open(&log).expect("open");
        assert!(!rotate_if_needed(&log, 10, 2).expect("rotate"));
        for round in 1..=3 {
            writeln!(writer, "round {round} line").expect("write");
            assert!(rotate_if_needed(&log, 10, 2).expect("rotate"));
        }
        writeln!(writer, "after").expect("write");
        assert_eq!(fs::read_to_string(&log).expect("read"), "after\n");
        assert_eq!(fs::read_to_string(numbered(&log, 1)).expect("read"), "round 3 line\n");
        assert_eq!(fs::read_to_string(numbered(&log, 2)).expect("read"), "round 2 line\n");
        assert!(!numbered(&log, 3).exists());
        assert!(!rotate_if_needed(&dir.join("missing.log"), 10, 2).expect("missing is fine"));
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn tail_drops_the_cut_line() {
        let dir = temp_dir("tail");
        let log = dir.join("c.log");
        fs::write(&log, "first line\nsecond\nthird\n").expect("write");
        assert_eq!(tail(&log, 100).expect("tail"), b"first line\nsecond\nthird\n");
        assert_eq!(tail(&log, 10).expect("tail"), b"third\n");
        assert_eq!(tail(&log, 4).expect("tail"), b"ird\n");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
