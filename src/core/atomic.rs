//! Atomic file writes.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `bytes` to a temporary file beside `path`, then renames it into place, so that an
/// interrupted run never leaves a half-written output. A device or a pipe (`/dev/null`,
/// `/dev/stdout`, a FIFO) is written in place instead: renaming over it would replace it with a
/// regular file (run as root, the system's own `/dev/null`). A symbolic link stays one: the file
/// it points to is replaced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if is_device_or_pipe(path) {
        return std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|e| Error::io(path, e));
    }
    let target = link_target(path);
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("output");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, &target));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Whether `path` exists as something other than a regular file or a folder (after following
/// links): a device, a pipe or a socket, which an output must be written into, not renamed over.
pub fn is_device_or_pipe(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// The file a symbolic link at `path` points to (the path itself otherwise, or when the link
/// dangles).
fn link_target(path: &Path) -> PathBuf {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match is_link.then(|| path.canonicalize()) {
        Some(Ok(target)) => target,
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_replaced_and_links_keep_pointing_at_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.json");
        write_atomically(&file, b"one").unwrap();
        write_atomically(&file, b"two").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"two");
        #[cfg(unix)]
        {
            let link = dir.path().join("link.json");
            std::os::unix::fs::symlink(&file, &link).unwrap();
            write_atomically(&link, b"three").unwrap();
            assert!(std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink());
            assert_eq!(std::fs::read(&file).unwrap(), b"three");
        }
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, if cfg!(unix) { 2 } else { 1 });
    }

    /// A FIFO is written into, and stays a FIFO (the same path as `/dev/null`, which a test
    /// must not risk replacing).
    #[cfg(unix)]
    #[test]
    fn a_pipe_is_written_in_place_not_replaced() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipped: no mkfifo");
            return;
        }
        assert!(is_device_or_pipe(&fifo) && !is_device_or_pipe(dir.path()));
        let (sent, received) = std::sync::mpsc::channel();
        let reader = fifo.clone();
        std::thread::spawn(move || sent.send(std::fs::read(reader).unwrap()));
        write_atomically(&fifo, b"boxes").unwrap();
        let read = received.recv_timeout(std::time::Duration::from_secs(20));
        assert_eq!(read.expect("the reader got nothing"), b"boxes");
        let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(kind.is_fifo(), "{kind:?}");
    }
}
