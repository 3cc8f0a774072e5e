//! Whole-file writes that a reader never sees half done.

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// How the names of files on their way in begin.
const TEMPORARY: &str = ".tmp-";

/// Whether `path` is a [`write_atomic`] file on its way in.
pub fn is_temporary(path: &Path) -> bool {
    (path.file_name().and_then(|n| n.to_str())).is_some_and(|n| n.starts_with(TEMPORARY))
}

/// Writes `parts` one after another to `path`: into a uniquely named file beside it, synced,
/// then renamed over `path`. A reader sees the old file or the whole new one, even if the
/// agent dies mid-write; two writers that race both succeed and the last rename wins.
pub fn write_atomic(path: &Path, parts: &[&[u8]], mode: u32) -> io::Result<()> {
    write(path, parts, mode, true)
}

/// [`write_atomic`] without the sync: the whole file or none survives the agent dying, but
/// not the machine losing power. For files about kernel state (network namespaces, veths)
/// that a reboot takes away too, where an fsync would only slow every pod start.
pub fn write_atomic_unsynced(path: &Path, parts: &[&[u8]], mode: u32) -> io::Result<()> {
    write(path, parts, mode, false)
}

fn write(path: &Path, parts: &[&[u8]], mode: u32, sync: bool) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::Builder::new()
        .prefix(TEMPORARY)
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    // Exactly `mode`, whatever the umask.
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    for part in parts {
        file.write_all(part)?;
    }
    if sync {
        file.as_file().sync_all()?;
    }
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Removes the [`write_atomic`] temporaries a crash left in `dir` (not below it): only for
/// a directory nothing writes to yet. Returns how many went.
pub fn remove_temporaries(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for path in entries.flatten().map(|e| e.path()) {
        if is_temporary(&path) && path.is_file() && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn racing_writers_all_succeed_and_leave_one_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/blob");
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let path = &path;
                s.spawn(move || write_atomic(path, &[&[i; 4096], &[i; 4096]], 0o644).unwrap());
            }
        });
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 8192);
        assert!(bytes.iter().all(|b| *b == bytes[0]), "one writer's bytes");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["blob"], "no temporary files left");
    }

    #[test]
    fn what_a_crash_left_half_written_goes_and_the_rest_stays() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(&dir.path().join("whole"), &[b"ok"], 0o600).unwrap();
        // A writer killed before its rename leaves its temporary.
        let left = tempfile::Builder::new()
            .prefix(TEMPORARY)
            .tempfile_in(dir.path())
            .unwrap();
        left.keep().unwrap();
        std::fs::create_dir(dir.path().join(".tmp-dir")).unwrap();
        assert_eq!(remove_temporaries(dir.path()), 1);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [".tmp-dir", "whole"]);
        assert_eq!(remove_temporaries(&dir.path().join("absent")), 0);
    }
}
