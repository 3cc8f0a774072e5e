//! Container logs: bounded append-only files per container, with tail and follow.
//!
//! Each container writes to one file; when appending would push it past `max_bytes`
//! the file is renamed to `<path>.1` (replacing any older one) and a fresh file
//! is started. Every run of the container starts afresh (`new_run`), keeping the
//! run before it as `<stem>.previous.log` for `fleet logs --previous`, so a
//! container never uses more than `4 * max_bytes` of disk. Guest stdout and
//! stderr are interleaved as-is, like `kubectl logs` without timestamps.
use bytes::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;
use tracing::warn;

/// How many appended chunks a follower may fall behind before it starts
/// missing data (it then sees `RecvError::Lagged` and can resubscribe).
const FOLLOW_CAPACITY: usize = 64;

/// Which guest stream a chunk came from. Both go to the same file; the
/// distinction is kept for diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// A bounded, rotating log for one pod. Cloning is cheap and all clones share
/// the same file.
#[derive(Clone)]
pub struct PodLog {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// `<path>.1`: the older half of the current run's output.
    rotated: PathBuf,
    /// The previous run's files (`--previous`): `<stem>.previous.log` and its `.1`.
    last_run: PathBuf,
    last_run_rotated: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    followers: broadcast::Sender<Bytes>,
}

struct State {
    /// `None` after `remove`, or while a reopen after rotation keeps failing.
    file: Option<File>,
    size: u64,
    /// Whether the last byte written was a newline, so agent notes always start
    /// on their own line even after partial guest output.
    at_line_start: bool,
    /// Set once the pod is removed; later appends are ignored instead of
    /// recreating the files.
    removed: bool,
    /// Set while writes are failing so a full disk produces one warning rather
    /// than one per guest write.
    failing: bool,
}

impl std::fmt::Debug for PodLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodLog")
            .field("path", &self.inner.path)
            .field("max_bytes", &self.inner.max_bytes)
            .finish_non_exhaustive()
    }
}

impl PodLog {
    /// Opens (creating parent dirs) the log at `path`; rotation keeps one
    /// older file `path.1`, so one run uses <= 2*max_bytes.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<PodLog> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        let at_line_start = size == 0 || last_byte_is_newline(path, size);
        let (followers, _) = broadcast::channel(FOLLOW_CAPACITY);
        Ok(PodLog {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                rotated: rotated_path(path),
                last_run: last_run_path(path),
                last_run_rotated: rotated_path(&last_run_path(path)),
                // A zero budget would rotate on every write; one byte keeps the
                // arithmetic simple and the bound still holds.
                max_bytes: max_bytes.max(1),
                state: Mutex::new(State {
                    file: Some(file),
                    size,
                    at_line_start,
                    removed: false,
                    failing: false,
                }),
                followers,
            }),
        })
    }

    /// The path of the current log file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Appends raw bytes (guest output, not necessarily whole lines). Never
    /// panics; I/O errors are logged with tracing and dropped. Sends the bytes
    /// to followers.
    pub fn append(&self, stream: LogStream, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut state = self.lock();
        self.write_locked(&mut state, stream, bytes);
    }

    /// Appends a line written by the agent itself (e.g. "restarting after exit
    /// code 3"); adds the trailing newline.
    pub fn note(&self, line: &str) {
        let mut state = self.lock();
        let mut text = Vec::with_capacity(line.len() + 2);
        // A guest that printed a partial line must not have the note glued
        // onto it.
        if !state.at_line_start {
            text.push(b'\n');
        }
        text.extend_from_slice(line.trim_end_matches('\n').as_bytes());
        text.push(b'\n');
        self.write_locked(&mut state, LogStream::Stderr, &text);
    }

    /// The last `lines` lines of the current run, across `path.1` + `path` (all if None).
    pub fn tail(&self, lines: Option<usize>) -> io::Result<Vec<u8>> {
        self.tail_of(&self.inner.rotated, &self.inner.path, lines)
    }

    /// The last `lines` lines of the run before the current one; `None` when there was none.
    pub fn tail_previous(&self, lines: Option<usize>) -> io::Result<Option<Vec<u8>>> {
        if !self.inner.last_run.exists() {
            return Ok(None);
        }
        self.tail_of(&self.inner.last_run_rotated, &self.inner.last_run, lines)
            .map(Some)
    }

    fn tail_of(&self, older: &Path, newer: &Path, lines: Option<usize>) -> io::Result<Vec<u8>> {
        // Holding the lock keeps a concurrent rotation from moving bytes
        // between the two files while they are being read.
        let state = self.lock();
        if state.removed {
            return Ok(Vec::new());
        }
        let mut all = read_if_exists(older)?;
        all.extend_from_slice(&read_if_exists(newer)?);
        drop(state);
        match lines {
            None => Ok(all),
            Some(n) => {
                let start = all.len() - last_lines(&all, n).len();
                all.drain(..start);
                Ok(all)
            }
        }
    }

    /// Starts a new run of the container: the current files become the previous run's
    /// (replacing the run before), and output goes to a fresh file. Followers keep following.
    /// An empty log was no run (the agent notes every run's end), so it is kept.
    pub fn new_run(&self) {
        let mut state = self.lock();
        if state.removed || (state.size == 0 && !self.inner.rotated.exists()) {
            return;
        }
        state.file = None;
        let moves = [
            (&self.inner.path, &self.inner.last_run),
            (&self.inner.rotated, &self.inner.last_run_rotated),
        ];
        for (from, to) in moves {
            let moved = match fs::rename(from, to) {
                Ok(()) => Ok(()),
                // A run without a rotated half must not inherit the older run's.
                Err(e) if e.kind() == ErrorKind::NotFound => match fs::remove_file(to) {
                    Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                },
                Err(e) => Err(e),
            };
            if let Err(e) = moved {
                warn!(path = %from.display(), error = %e, "failed to keep the previous run's log");
            }
        }
        state.size = 0;
        state.at_line_start = true;
        match open_append(&self.inner.path) {
            Ok(file) => state.file = Some(file),
            Err(e) => {
                warn!(path = %self.inner.path.display(), error = %e, "failed to open a new log")
            }
        }
    }

    /// Live bytes appended from now on (for `fleet logs -f`).
    pub fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.inner.followers.subscribe()
    }

    /// Deletes the files (pod removed).
    pub fn remove(&self) {
        let mut state = self.lock();
        state.removed = true;
        state.file = None;
        state.size = 0;
        let inner = &self.inner;
        for path in [
            &inner.path,
            &inner.rotated,
            &inner.last_run,
            &inner.last_run_rotated,
        ] {
            if let Err(e) = fs::remove_file(path)
                && e.kind() != ErrorKind::NotFound
            {
                warn!(path = %path.display(), error = %e, "failed to delete pod log");
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state inconsistent
        // in a way that matters for a log, so poisoning is ignored.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_locked(&self, state: &mut State, stream: LogStream, bytes: &[u8]) {
        if state.removed {
            return;
        }
        let max = self.inner.max_bytes;
        // A single chunk larger than the whole budget keeps only its tail: the
        // newest output is the most useful and the disk bound must hold.
        let bytes = match usize::try_from(max) {
            Ok(max) if bytes.len() > max => &bytes[bytes.len() - max..],
            _ => bytes,
        };
        let len = bytes.len() as u64;
        if state.size > 0 && state.size.saturating_add(len) > max {
            self.rotate(state);
        }
        if state.file.is_none() {
            match open_append(&self.inner.path) {
                Ok(file) => {
                    state.size = file.metadata().map(|m| m.len()).unwrap_or(0);
                    state.file = Some(file);
                }
                Err(e) => return self.write_failed(state, stream, &e),
            }
        }
        let Some(file) = state.file.as_mut() else {
            return;
        };
        match file.write_all(bytes) {
            Ok(()) => {
                state.size = state.size.saturating_add(len);
                state.at_line_start = bytes.last() == Some(&b'\n');
                state.failing = false;
            }
            Err(e) => {
                // The file may now hold part of the chunk; re-reading the size
                // on the next append keeps the bound honest.
                state.file = None;
                self.write_failed(state, stream, &e);
            }
        }
        // Followers get exactly what reached (or was meant to reach) the file.
        // An error only means nobody is following right now.
        let _ = self.inner.followers.send(Bytes::copy_from_slice(bytes));
    }

    fn rotate(&self, state: &mut State) {
        // Closing first means the rename never races with buffered writes.
        state.file = None;
        if let Err(e) = fs::rename(&self.inner.path, &self.inner.rotated)
            && e.kind() != ErrorKind::NotFound
        {
            // The truncating open below then discards the old content, which
            // keeps the disk bound even when rename fails.
            warn!(path = %self.inner.path.display(), error = %e, "failed to rotate pod log");
        }
        state.size = 0;
        match OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.inner.path)
        {
            Ok(file) => state.file = Some(file),
            Err(e) => {
                warn!(path = %self.inner.path.display(), error = %e, "failed to reopen pod log")
            }
        }
    }

    fn write_failed(&self, state: &mut State, stream: LogStream, e: &io::Error) {
        if !state.failing {
            warn!(path = %self.inner.path.display(), stream = ?stream, error = %e, "dropping pod log output");
        }
        state.failing = true;
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `<dir>/<stem>.log` → `<dir>/<stem>.previous.log`.
fn last_run_path(path: &Path) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!("{stem}.previous.log"))
}

fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

fn read_if_exists(path: &Path) -> io::Result<Vec<u8>> {
    match File::open(path) {
        Ok(mut file) => {
            let mut buf = Vec::new();
            file.read_to_end(&mut buf)?;
            Ok(buf)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn last_byte_is_newline(path: &Path, size: u64) -> bool {
    use std::io::{Seek, SeekFrom};
    let mut byte = [0u8; 1];
    File::open(path)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(size - 1))?;
            f.read_exact(&mut byte)
        })
        .map(|()| byte[0] == b'\n')
        .unwrap_or(true)
}

/// The suffix of `buf` holding its last `n` lines. A trailing newline ends the
/// last line rather than starting an empty one; a final line without a newline
/// still counts as a line.
fn last_lines(buf: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let search_end = if buf.ends_with(b"\n") {
        buf.len() - 1
    } else {
        buf.len()
    };
    let mut seen = 0;
    for (i, b) in buf[..search_end].iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &buf[i + 1..];
            }
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk_usage(log: &PodLog) -> u64 {
        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        size(&log.inner.path) + size(&log.inner.rotated)
    }

    #[test]
    fn rotation_keeps_disk_use_within_twice_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let log = PodLog::open(&dir.path().join("ns/pod/log"), 100).unwrap();
        for i in 0..500 {
            log.append(LogStream::Stdout, format!("line {i}\n").as_bytes());
            assert!(
                disk_usage(&log) <= 200,
                "disk use {} after {i}",
                disk_usage(&log)
            );
        }
        // One oversized chunk keeps only its newest bytes.
        log.append(LogStream::Stderr, &[b'x'; 1000]);
        assert!(disk_usage(&log) <= 200);
        assert!(fs::metadata(&log.inner.path).unwrap().len() <= 100);
        assert!(log.inner.rotated.exists());
    }

    #[test]
    fn tail_spans_the_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = PodLog::open(&dir.path().join("log"), 20).unwrap();
        for i in 0..10 {
            log.append(LogStream::Stdout, format!("l{i}\n").as_bytes());
        }
        // Ten 3-byte lines against a 20-byte budget: "l0".."l5" were rotated
        // into `log.1` and "l6".."l9" are in `log`.
        assert_eq!(
            fs::read(&log.inner.rotated).unwrap(),
            b"l0\nl1\nl2\nl3\nl4\nl5\n"
        );
        assert_eq!(log.tail(Some(5)).unwrap(), b"l5\nl6\nl7\nl8\nl9\n");
        assert_eq!(log.tail(Some(1)).unwrap(), b"l9\n");
        assert_eq!(log.tail(Some(0)).unwrap(), b"");
        let all = log.tail(None).unwrap();
        assert_eq!(all.len(), 30);
        assert!(all.starts_with(b"l0\n"));
        assert_eq!(log.tail(Some(1000)).unwrap(), all);
    }

    #[test]
    fn tail_counts_a_partial_last_line() {
        assert_eq!(last_lines(b"a\nb\nc", 1), b"c");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\nc\n", 1), b"c\n");
        assert_eq!(last_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(last_lines(b"", 3), b"");
    }

    #[test]
    fn notes_start_on_a_fresh_line_and_followers_see_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = PodLog::open(&dir.path().join("log"), 1 << 20).unwrap();
        let mut follower = log.subscribe();
        log.append(LogStream::Stdout, b"partial");
        log.note("restarting after exit code 3");
        assert_eq!(
            log.tail(None).unwrap(),
            b"partial\nrestarting after exit code 3\n"
        );
        assert_eq!(follower.try_recv().unwrap(), Bytes::from_static(b"partial"));
        assert_eq!(
            follower.try_recv().unwrap(),
            Bytes::from_static(b"\nrestarting after exit code 3\n")
        );
    }

    #[test]
    fn reopening_appends_and_remove_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        PodLog::open(&path, 1 << 20)
            .unwrap()
            .append(LogStream::Stdout, b"one\n");
        let log = PodLog::open(&path, 1 << 20).unwrap();
        log.append(LogStream::Stdout, b"two\n");
        assert_eq!(log.tail(None).unwrap(), b"one\ntwo\n");
        log.remove();
        assert!(!path.exists());
        log.append(LogStream::Stdout, b"after removal\n");
        assert!(!path.exists());
        assert!(log.tail(None).unwrap().is_empty());
    }

    #[test]
    fn a_new_run_keeps_only_the_run_before() {
        let dir = tempfile::tempdir().unwrap();
        let log = PodLog::open(&dir.path().join("web.log"), 10).unwrap();
        log.new_run();
        assert_eq!(
            log.tail_previous(None).unwrap(),
            None,
            "an empty log is no run"
        );
        // The first run rotates once, so both of its halves must move.
        log.append(LogStream::Stdout, b"first 1\n");
        log.append(LogStream::Stdout, b"first 2\n");
        let mut live = log.subscribe();
        log.new_run();
        assert_eq!(log.tail(None).unwrap(), b"");
        assert_eq!(
            log.tail_previous(None).unwrap().unwrap(),
            b"first 1\nfirst 2\n"
        );
        // A short second run must not inherit the first run's rotated half.
        log.append(LogStream::Stdout, b"second\n");
        log.new_run();
        log.append(LogStream::Stdout, b"third\n");
        assert_eq!(log.tail_previous(None).unwrap().unwrap(), b"second\n");
        assert_eq!(log.tail(None).unwrap(), b"third\n");
        assert_eq!(live.try_recv().unwrap(), &b"second\n"[..]);
        log.remove();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
