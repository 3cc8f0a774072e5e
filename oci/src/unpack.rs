//! Applying OCI image layers onto a rootfs directory.
//!
//! A layer is a tar stream (uncompressed, gzip or zstd, see [`Compression`]) holding a changeset
//! in the OCI image-spec sense: regular files, directories, symlinks, hard links, device nodes
//! and FIFOs to create or replace, plus whiteouts (`dir/.wh.name` removes `dir/name` from the
//! layers below) and opaque markers (`dir/.wh..wh..opq` empties `dir` of what the layers below
//! put there). [`apply_layer`] streams one layer onto a rootfs, entry by entry, never holding
//! the layer in memory.
//!
//! # Safety rule
//!
//! Layers are untrusted input and unpacking runs as root, so this module is a security boundary:
//! **nothing is ever created, written, removed, chowned, chmodded or timestamped outside the
//! rootfs**. It is enforced without string games on resolved paths:
//!
//! - Entry paths (and hard link targets) are normalised lexically: empty and `.` components are
//!   dropped, a leading `/` is ignored (absolute paths are relative to the rootfs, as usual in
//!   layers), `..` pops a component, and a `..` that would climb above the rootfs, or a NUL byte,
//!   is refused with [`UnpackError::Unsafe`].
//! - The parent directory of every entry is opened by the kernel with `openat2(2)` and
//!   `RESOLVE_IN_ROOT` relative to a descriptor of the rootfs. Symlinks met on the way, whether
//!   planted by this layer or a lower one, absolute or relative, are therefore followed *confined*
//!   to the rootfs, exactly as if the rootfs were `/` (chroot semantics, like Docker and
//!   containerd): with `evil -> /`, the entry `evil/etc/passwd` writes `<rootfs>/etc/passwd`, never
//!   the host's. `..` is clamped at the rootfs and magic links (`/proc/self/...`) are refused.
//!   This needs Linux 5.6 or newer. A symlink whose target does not exist inside the rootfs
//!   (say `evil -> /home/someone` when the rootfs has no `/home/someone`) makes entries below it
//!   fail with a not-found [`UnpackError::Io`]: missing directories are created only for plain
//!   missing names, never through a symlink.
//! - The last component of an entry is never followed: files are created with
//!   `O_CREAT | O_EXCL | O_NOFOLLOW` after whatever was there has been unlinked, directories are
//!   reopened with `O_NOFOLLOW`, and symlinks, devices and hard links are made with `*at` calls
//!   relative to the parent descriptor. Ownership, modes and times are set through the new
//!   descriptor or with `AT_SYMLINK_NOFOLLOW`.
//! - Hard link targets are resolved the same way (parent confined, last component not followed,
//!   so a link to a symlink links the symlink itself).
//! - Whiteouts, opaque markers and type replacements remove trees with a walk that opens every
//!   directory `O_NOFOLLOW` relative to its parent, so it never leaves the tree it started in.
//!
//! # Extended attributes
//!
//! PAX `SCHILY.xattr.*` records are applied to regular files and directories when they are
//! `user.*` or `security.capability` (file capabilities, e.g. for `ping`). Other namespaces are
//! deliberately skipped (and logged at debug level): `trusted.*` includes overlayfs's own
//! `trusted.overlay.*` attributes, which an image must not be able to forge, `security.selinux`
//! and other LSM labels are a host policy decision, and ACLs are not part of the OCI changeset
//! format. Attributes on symlinks, devices and FIFOs are skipped as well (Linux refuses `user.*`
//! there and capabilities are meaningless on them).
//!
//! # Ownership
//!
//! Ownership is always applied (`uid`/`gid` from the tar header or PAX records, no id mapping),
//! so applying a layer that is not entirely owned by the caller needs `CAP_CHOWN`, and device
//! nodes need `CAP_MKNOD`: the agent unpacks as root.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{
    AtFlags, CWD, Dir, FileType, Gid, Mode, OFlags, ResolveFlags, Stat, Timespec, Timestamps, Uid,
    XattrFlags, chmodat, chownat, fchmod, fchown, fsetxattr, fstat, futimens, linkat, makedev,
    mkdirat, mknodat, openat, openat2, statat, symlinkat, unlinkat, utimensat,
};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

/// How a layer blob is compressed, from its OCI/Docker media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// A gzip-compressed tar stream (several concatenated gzip members are accepted).
    Gzip,
    /// A zstd-compressed tar stream.
    Zstd,
}

impl Compression {
    /// Maps a layer media type to its compression: the OCI
    /// `application/vnd.oci.image.layer.v1.tar(+gzip|+zstd)` types, their `nondistributable`
    /// variants, and Docker's `application/vnd.docker.image.rootfs.diff.tar.gzip` and
    /// `application/vnd.docker.image.rootfs.foreign.diff.tar.gzip` (plus their uncompressed
    /// `.tar` forms, which containerd accepts too). Anything else is [`UnpackError::MediaType`].
    pub fn from_media_type(media_type: &str) -> Result<Compression, UnpackError> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar" => Ok(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Ok(Compression::Zstd)
            }
            other => Err(UnpackError::MediaType(other.to_owned())),
        }
    }
}

/// What applying one layer did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {
    /// Regular files, device nodes and FIFOs created.
    pub files: u64,
    /// Directory entries applied (created or merged into an existing directory).
    pub dirs: u64,
    /// Symlinks and hard links created.
    pub links: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// Whiteouts and opaque markers processed.
    pub whiteouts: u64,
    /// The digest of the uncompressed tar stream (`sha256:…`): the layer's diff ID, which
    /// the image config's `rootfs.diff_ids` must list.
    pub diff_id: String,
}

/// Why a layer could not be applied. A layer that fails part-way leaves the entries before the
/// failing one applied: callers unpack into a fresh snapshot and discard it on error.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer's media type is not a tar layer this module knows.
    #[error("unsupported layer media type {0:?}")]
    MediaType(String),
    /// The entry would reach outside the rootfs (or is otherwise a traversal attempt).
    #[error("layer entry {path:?}: {reason}")]
    Unsafe { path: String, reason: String },
    /// The entry's tar type is not something a layer may contain.
    #[error("layer entry {path:?}: unsupported entry type {kind}")]
    Unsupported { path: String, kind: String },
    /// The entry's header is malformed (bad numbers, missing link target, ...).
    #[error("layer entry {path:?}: {reason}")]
    Invalid { path: String, reason: String },
    /// A filesystem operation for the entry failed; `op` says which.
    #[error("layer entry {path:?}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        source: io::Error,
    },
    /// The rootfs directory itself could not be opened.
    #[error("opening the rootfs {path:?}: {source}")]
    Root { path: String, source: io::Error },
    /// The layer stream could not be read: truncated or corrupt tar, gzip or zstd data.
    #[error("reading the layer: {0}")]
    Archive(#[source] io::Error),
}

/// Directories runc mounts over in every container (`/proc`, `/sys`, `/dev`) and `/etc`, in
/// which the agent bind-mounts per pod files (`/etc/hosts`, `/etc/hostname`,
/// `/etc/resolv.conf`).
const MOUNT_POINT_DIRS: &[&str] = &["proc", "sys", "dev", "etc"];
const MOUNT_POINT_FILES: &[&str] = &["hosts", "hostname", "resolv.conf"];

/// Adds the mount points every container needs to an unpacked rootfs that lacks them (Docker's
/// "init layer"), empty and root-owned. Otherwise runc creates them in each container's
/// writable layer, and on overlayfs every one of those is a copy-up at each container start.
/// Whatever the layers put there is kept, and nothing is followed: a symlinked `/etc` gets no
/// files. A caller may ignore the error: runc makes any mount point still missing.
pub fn add_mount_points(root: &Path) -> io::Result<()> {
    let root = open_dir_nofollow(CWD, root.as_os_str().as_encoded_bytes())?;
    for dir in MOUNT_POINT_DIRS {
        match mkdirat(&root, *dir, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let Ok(etc) = open_dir_nofollow(root.as_fd(), b"etc") else {
        return Ok(());
    };
    for file in MOUNT_POINT_FILES {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        match openat(
            &etc,
            *file,
            flags | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        ) {
            Ok(_) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Applies one layer onto `root` (an existing directory). Entries are applied in order, then
/// directory modification times are set (their contents changed them along the way). The whole
/// stream is consumed, including anything after the end-of-archive marker, so that the
/// decompressor checks its trailer and a digest computed while reading covers the whole blob.
pub fn apply_layer(
    root: &Path,
    layer: impl Read,
    compression: Compression,
) -> Result<Stats, UnpackError> {
    match compression {
        Compression::None => apply_tar(root, BufReader::with_capacity(COPY_BUF, layer)),
        Compression::Gzip => apply_tar(root, flate2::read::MultiGzDecoder::new(layer)),
        Compression::Zstd => apply_tar(
            root,
            zstd::stream::read::Decoder::new(layer).map_err(UnpackError::Archive)?,
        ),
    }
}

/// Size of the buffer file contents are copied through.
const COPY_BUF: usize = 64 * 1024;
/// The opaque-directory marker.
const OPAQUE: &[u8] = b".wh..wh..opq";
/// The whiteout prefix.
const WHITEOUT: &[u8] = b".wh.";
/// Names starting with this are aufs bookkeeping (`.wh..wh.plnk`, ...), not content.
const WHITEOUT_META: &[u8] = b".wh..wh.";

fn apply_tar<R: Read>(root: &Path, reader: R) -> Result<Stats, UnpackError> {
    let root_fd = openat(
        CWD,
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Root {
        path: root.display().to_string(),
        source: e.into(),
    })?;
    let mut layer = Layer {
        root: root_fd,
        ours: HashMap::new(),
        dir_times: Vec::new(),
        buf: vec![0; COPY_BUF],
        stats: Stats::default(),
    };
    let mut archive = tar::Archive::new(Hashing {
        inner: reader,
        hash: Sha256::new(),
    });
    for entry in archive.entries().map_err(UnpackError::Archive)? {
        let mut entry = entry.map_err(UnpackError::Archive)?;
        layer.apply_entry(&mut entry)?;
    }
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(UnpackError::Archive)?;
    layer.set_dir_times()?;
    layer.stats.diff_id = format!("sha256:{}", hex::encode(rest.hash.finalize()));
    Ok(layer.stats)
}

/// A reader that hashes what it reads (the decompressed layer, for its diff ID).
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// A filesystem object's identity: `(st_dev, st_ino)`.
type Id = (u64, u64);

fn id_of(st: &Stat) -> Id {
    (st.st_dev, st.st_ino)
}

/// The state of one layer being applied.
struct Layer {
    /// The rootfs, opened `O_PATH`: every path is resolved beneath it.
    root: OwnedFd,
    /// The directory entries this layer has created or claimed, as names per parent directory.
    /// Whiteouts and opaque markers only hide what *lower* layers put there, whatever the order
    /// of the entries in the tar, so these are kept. Keying by the parent's inode rather than by
    /// path keeps this right when entries were written through symlinked parents.
    ours: HashMap<Id, HashSet<Vec<u8>>>,
    /// Directory times to set once everything is in place.
    dir_times: Vec<DirTime>,
    /// The copy buffer for file contents.
    buf: Vec<u8>,
    stats: Stats,
}

/// A directory whose times are set at the end.
struct DirTime {
    /// Its normalised path, for the error message and to find it again.
    path: Vec<Vec<u8>>,
    /// The directory it was, so that a later entry replacing it is not touched.
    id: Id,
    times: Times,
}

/// Access and modification times of an entry.
#[derive(Clone, Copy)]
struct Times {
    atime: Timespec,
    mtime: Timespec,
}

impl Times {
    fn stamps(self) -> Timestamps {
        Timestamps {
            last_access: self.atime,
            last_modification: self.mtime,
        }
    }
}

/// The metadata of an entry, from its header and PAX records.
struct Meta {
    uid: u32,
    gid: u32,
    /// Permission bits, including setuid, setgid and sticky.
    mode: u32,
    times: Times,
    /// Extended attributes to apply (already filtered, see the module docs).
    xattrs: Vec<(CString, Vec<u8>)>,
}

impl Meta {
    fn owner(&self) -> (Option<Uid>, Option<Gid>) {
        (Some(Uid::from_raw(self.uid)), Some(Gid::from_raw(self.gid)))
    }
}

impl Layer {
    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let path = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            tracing::debug!(path, "layer: ignoring a pax global header");
            return Ok(());
        }
        let comps = normalise(&raw).map_err(|reason| UnpackError::Unsafe {
            path: path.clone(),
            reason: reason.to_owned(),
        })?;

        if let Some((&name, parent)) = comps.split_last() {
            if name == OPAQUE {
                return self.opaque(&path, parent);
            }
            if name.starts_with(WHITEOUT_META) {
                tracing::debug!(path, "layer: ignoring aufs metadata");
                return Ok(());
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT) {
                return self.whiteout(&path, parent, hidden);
            }
        }

        let meta = read_meta(entry, &path)?;
        use tar::EntryType as T;
        match kind {
            T::Directory => self.directory(&path, &comps, &meta),
            // Pre-POSIX tars mark directories with a trailing slash on a regular entry.
            T::Regular if raw.ends_with(b"/") => self.directory(&path, &comps, &meta),
            T::Regular | T::Continuous | T::GNUSparse => self.file(&path, &comps, &meta, entry),
            T::Symlink => {
                let target = link_name(entry, &path)?;
                self.symlink(&path, &comps, &meta, &target)
            }
            T::Link => {
                let target = link_name(entry, &path)?;
                self.hard_link(&path, &comps, &target)
            }
            T::Char | T::Block => {
                let header = entry.header();
                let number = |n: io::Result<Option<u32>>| {
                    n.ok().flatten().ok_or_else(|| UnpackError::Invalid {
                        path: path.clone(),
                        reason: "device entry without a valid device number".into(),
                    })
                };
                let major = number(header.device_major())?;
                let minor = number(header.device_minor())?;
                let file_type = if kind == T::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                self.special(&path, &comps, &meta, file_type, makedev(major, minor))
            }
            T::Fifo => self.special(&path, &comps, &meta, FileType::Fifo, 0),
            other => Err(UnpackError::Unsupported {
                path,
                kind: format!("{:?}", char::from(other.as_byte())),
            }),
        }
    }

    /// `dir/.wh.name`: removes `dir/name` as lower layers left it (keeping what this layer made).
    fn whiteout(&mut self, path: &str, parent: &[&[u8]], hidden: &[u8]) -> Result<(), UnpackError> {
        if hidden.is_empty() {
            return Err(invalid(path, "whiteout without a name"));
        }
        if hidden == b"." || hidden == b".." {
            return Err(UnpackError::Unsafe {
                path: path.to_owned(),
                reason: "whiteout of a directory's own or parent entry".into(),
            });
        }
        self.stats.whiteouts += 1;
        let dir = match self.open_in_root(parent, OFlags::PATH) {
            Ok(dir) => dir,
            // Nothing below to hide.
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(io_err(path, "resolving the parent directory", e)),
        };
        let ours = &self.ours;
        remove_tree(dir.as_fd(), hidden, &|dir, name| is_ours(ours, dir, name))
            .map_err(|e| io_err(path, "removing the whited-out entry", e))
    }

    /// `dir/.wh..wh..opq`: empties `dir` of what lower layers put there.
    fn opaque(&mut self, path: &str, dir: &[&[u8]]) -> Result<(), UnpackError> {
        self.stats.whiteouts += 1;
        let dir = match self.open_in_root(dir, OFlags::RDONLY) {
            Ok(dir) => dir,
            // Nothing below to hide: the directory comes later in this layer, or never.
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(io_err(path, "opening the opaque directory", e)),
        };
        let ours = &self.ours;
        let keep = |dir: Id, name: &[u8]| is_ours(ours, dir, name);
        let names = list_names(dir.as_fd()).map_err(|e| io_err(path, "listing", e))?;
        for name in names {
            remove_tree(dir.as_fd(), &name, &keep)
                .map_err(|e| io_err(path, "clearing the opaque directory", e))?;
        }
        Ok(())
    }

    fn directory(&mut self, path: &str, comps: &[&[u8]], meta: &Meta) -> Result<(), UnpackError> {
        let fd = match comps.split_last() {
            Some((&name, parent)) => {
                let dir = self.parent_dir(path, parent)?;
                let merge = make_room(dir.as_fd(), name, true)
                    .map_err(|e| io_err(path, "removing the existing entry", e))?;
                if !merge {
                    mkdirat(&dir, name, Mode::from_raw_mode(0o700))
                        .map_err(|e| io_err(path, "creating the directory", e))?;
                }
                let fd = open_dir_nofollow(dir.as_fd(), name)
                    .map_err(|e| io_err(path, "opening the directory", e))?;
                self.claim(path, dir.as_fd(), name)?;
                fd
            }
            // `./` itself: the rootfs's own metadata.
            None => self
                .open_in_root(&[], OFlags::RDONLY)
                .map_err(|e| io_err(path, "opening the rootfs", e))?,
        };
        set_fd_meta(fd.as_fd(), meta, path)?;
        let st = fstat(&fd).map_err(|e| io_err(path, "stat", e))?;
        self.dir_times.push(DirTime {
            path: comps.iter().map(|c| c.to_vec()).collect(),
            id: id_of(&st),
            times: meta.times,
        });
        self.stats.dirs += 1;
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        path: &str,
        comps: &[&[u8]],
        meta: &Meta,
        data: &mut R,
    ) -> Result<(), UnpackError> {
        let (name, parent) = split_entry(path, comps)?;
        let dir = self.parent_dir(path, parent)?;
        make_room(dir.as_fd(), name, false)
            .map_err(|e| io_err(path, "removing the existing entry", e))?;
        let fd = openat(
            &dir,
            name,
            OFlags::WRONLY
                | OFlags::CREATE
                | OFlags::EXCL
                | OFlags::NOFOLLOW
                | OFlags::NOCTTY
                | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io_err(path, "creating the file", e))?;
        let mut file = File::from(fd);
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(UnpackError::Archive(e)),
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| io_err(path, "writing the file", e))?;
            self.stats.bytes += n as u64;
        }
        // Ownership before mode (chown clears setuid/setgid), capabilities after both (chown
        // clears them too), times last.
        set_fd_meta(file.as_fd(), meta, path)?;
        futimens(&file, &meta.times.stamps()).map_err(|e| io_err(path, "setting times", e))?;
        self.claim(path, dir.as_fd(), name)?;
        self.stats.files += 1;
        Ok(())
    }

    fn symlink(
        &mut self,
        path: &str,
        comps: &[&[u8]],
        meta: &Meta,
        target: &[u8],
    ) -> Result<(), UnpackError> {
        let (name, parent) = split_entry(path, comps)?;
        let dir = self.parent_dir(path, parent)?;
        make_room(dir.as_fd(), name, false)
            .map_err(|e| io_err(path, "removing the existing entry", e))?;
        // The target is stored verbatim: it is only ever followed confined (see the module docs).
        symlinkat(target, &dir, name).map_err(|e| io_err(path, "creating the symlink", e))?;
        let (uid, gid) = meta.owner();
        chownat(&dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err(path, "changing ownership", e))?;
        utimensat(&dir, name, &meta.times.stamps(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err(path, "setting times", e))?;
        skip_xattrs(path, meta, "symlink");
        self.claim(path, dir.as_fd(), name)?;
        self.stats.links += 1;
        Ok(())
    }

    /// A hard link to `target`, an entry already in the rootfs (from this layer or a lower
    /// one). The header's metadata is not applied: it would change the shared inode.
    fn hard_link(&mut self, path: &str, comps: &[&[u8]], target: &[u8]) -> Result<(), UnpackError> {
        let shown = String::from_utf8_lossy(target);
        let unsafe_target = |reason: &str| UnpackError::Unsafe {
            path: path.to_owned(),
            reason: format!("hard link target {shown:?} {reason}"),
        };
        let target_comps = normalise(target)
            .map_err(|reason| unsafe_target(reason.strip_prefix("path ").unwrap_or(reason)))?;
        let Some((&target_name, target_parent)) = target_comps.split_last() else {
            return Err(unsafe_target("is the rootfs itself"));
        };
        let target_dir = self
            .open_in_root(target_parent, OFlags::PATH)
            .map_err(|e| io_err(path, "resolving the hard link target", e))?;
        let target_st = statat(&target_dir, target_name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err(path, "resolving the hard link target", e))?;
        if FileType::from_raw_mode(target_st.st_mode).is_dir() {
            return Err(invalid(path, "hard link to a directory"));
        }

        let (name, parent) = split_entry(path, comps)?;
        let dir = self.parent_dir(path, parent)?;
        let already = matches!(
            statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW),
            Ok(st) if id_of(&st) == id_of(&target_st)
        );
        if !already {
            make_room(dir.as_fd(), name, false)
                .map_err(|e| io_err(path, "removing the existing entry", e))?;
            // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink.
            linkat(&target_dir, target_name, &dir, name, AtFlags::empty())
                .map_err(|e| io_err(path, "creating the hard link", e))?;
        }
        self.claim(path, dir.as_fd(), name)?;
        self.stats.links += 1;
        Ok(())
    }

    /// Device nodes and FIFOs.
    fn special(
        &mut self,
        path: &str,
        comps: &[&[u8]],
        meta: &Meta,
        file_type: FileType,
        dev: u64,
    ) -> Result<(), UnpackError> {
        let (name, parent) = split_entry(path, comps)?;
        let dir = self.parent_dir(path, parent)?;
        make_room(dir.as_fd(), name, false)
            .map_err(|e| io_err(path, "removing the existing entry", e))?;
        mknodat(&dir, name, file_type, Mode::from_raw_mode(0o600), dev)
            .map_err(|e| io_err(path, "creating the node", e))?;
        let (uid, gid) = meta.owner();
        chownat(&dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err(path, "changing ownership", e))?;
        // fchmodat(2) follows a symlink in the last component and opening a device or FIFO to
        // fchmod it could block or have side effects, so check that `name` is still our node.
        let st =
            statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| io_err(path, "stat", e))?;
        if FileType::from_raw_mode(st.st_mode) != file_type {
            return Err(io_err(
                path,
                "changing the mode",
                io::Error::other("the node was replaced while unpacking"),
            ));
        }
        chmodat(&dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
            .map_err(|e| io_err(path, "changing the mode", e))?;
        utimensat(&dir, name, &meta.times.stamps(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err(path, "setting times", e))?;
        skip_xattrs(path, meta, "device node or fifo");
        self.claim(path, dir.as_fd(), name)?;
        self.stats.files += 1;
        Ok(())
    }

    /// Sets the times of the directories of this layer, now that their contents are in place.
    fn set_dir_times(&mut self) -> Result<(), UnpackError> {
        for dt in std::mem::take(&mut self.dir_times) {
            let comps: Vec<&[u8]> = dt.path.iter().map(Vec::as_slice).collect();
            let path = String::from_utf8_lossy(&comps.join(&b'/')).into_owned();
            let opened = match comps.split_last() {
                None => self.open_in_root(&[], OFlags::RDONLY),
                Some((&name, parent)) => self
                    .open_in_root(parent, OFlags::PATH)
                    .and_then(|dir| open_dir_nofollow(dir.as_fd(), name)),
            };
            let fd = match opened {
                Ok(fd) => fd,
                // Removed or replaced by a later entry of this layer: nothing to do.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => return Err(io_err(&path, "opening the directory", e)),
            };
            let st = fstat(&fd).map_err(|e| io_err(&path, "stat", e))?;
            if id_of(&st) == dt.id {
                futimens(&fd, &dt.times.stamps()).map_err(|e| io_err(&path, "setting times", e))?;
            }
        }
        Ok(())
    }

    /// Opens `comps` (a normalised path, empty for the rootfs) as a directory, resolving every
    /// symlink on the way confined to the rootfs.
    fn open_in_root(&self, comps: &[&[u8]], flags: OFlags) -> rustix::io::Result<OwnedFd> {
        let path = if comps.is_empty() {
            b".".to_vec()
        } else {
            comps.join(&b'/')
        };
        let flags = flags | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        let mut attempts = 0;
        loop {
            match openat2(&self.root, &path[..], flags, Mode::empty(), resolve) {
                // The kernel asks for a retry when a rename raced with the lookup.
                Err(Errno::AGAIN) if attempts < 16 => attempts += 1,
                result => return result,
            }
        }
    }

    /// Opens the parent directory of an entry (`O_PATH`), creating missing directories (mode
    /// 0755, owned by the caller) as `mkdir -p` would.
    fn parent_dir(&mut self, path: &str, parent: &[&[u8]]) -> Result<OwnedFd, UnpackError> {
        match self.open_in_root(parent, OFlags::PATH) {
            Ok(dir) => Ok(dir),
            Err(Errno::NOENT) => self.make_parents(path, parent),
            Err(e) => Err(io_err(path, "resolving the parent directory", e)),
        }
    }

    fn make_parents(&mut self, path: &str, parent: &[&[u8]]) -> Result<OwnedFd, UnpackError> {
        let fail = |e: Errno| io_err(path, "creating the parent directory", e);
        let mut dir = self.open_in_root(&[], OFlags::PATH).map_err(fail)?;
        for (i, &name) in parent.iter().enumerate() {
            let prefix = &parent[..=i];
            dir = match self.open_in_root(prefix, OFlags::PATH) {
                Ok(next) => next,
                Err(Errno::NOENT) => {
                    // `name` is missing from `dir`. If it exists after all, it is a symlink whose
                    // target is missing: fail with "not found" rather than create the target.
                    match mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) => {}
                        Err(Errno::EXIST) => return Err(fail(Errno::NOENT)),
                        Err(e) => return Err(fail(e)),
                    }
                    self.claim(path, dir.as_fd(), name)?;
                    self.open_in_root(prefix, OFlags::PATH).map_err(fail)?
                }
                Err(e) => return Err(fail(e)),
            };
        }
        Ok(dir)
    }

    /// Records `dir/name` as made by this layer.
    fn claim(&mut self, path: &str, dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), UnpackError> {
        let st = fstat(dir).map_err(|e| io_err(path, "stat", e))?;
        self.ours
            .entry(id_of(&st))
            .or_default()
            .insert(name.to_vec());
        Ok(())
    }
}

fn is_ours(ours: &HashMap<Id, HashSet<Vec<u8>>>, dir: Id, name: &[u8]) -> bool {
    ours.get(&dir).is_some_and(|names| names.contains(name))
}

/// Splits a layer path into components: empty and `.` components are dropped (so a leading `/`
/// is ignored) and `..` pops the previous component. Refuses NUL bytes and a `..` that would
/// climb above the rootfs.
fn normalise(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.contains(&0) {
        return Err("path contains a NUL byte");
    }
    let mut comps = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if comps.pop().is_none() {
                    return Err("path escapes the rootfs");
                }
            }
            _ => comps.push(comp),
        }
    }
    Ok(comps)
}

/// The last component and the parent of an entry that is not a directory (those cannot be the
/// rootfs itself).
fn split_entry<'a, 'b>(
    path: &str,
    comps: &'b [&'a [u8]],
) -> Result<(&'a [u8], &'b [&'a [u8]]), UnpackError> {
    match comps.split_last() {
        Some((&name, parent)) => Ok((name, parent)),
        None => Err(UnpackError::Unsafe {
            path: path.to_owned(),
            reason: "entry would replace the rootfs itself".into(),
        }),
    }
}

/// The link name of a symlink or hard link entry.
fn link_name<R: Read>(entry: &tar::Entry<'_, R>, path: &str) -> Result<Vec<u8>, UnpackError> {
    match entry.link_name_bytes() {
        Some(target) if target.contains(&0) => Err(UnpackError::Unsafe {
            path: path.to_owned(),
            reason: "link target contains a NUL byte".into(),
        }),
        Some(target) if !target.is_empty() => Ok(target.into_owned()),
        _ => Err(invalid(path, "link without a target")),
    }
}

/// Reads an entry's ownership, mode, times and extended attributes.
fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, path: &str) -> Result<Meta, UnpackError> {
    let header = entry.header();
    let bad = |what: &str| invalid(path, &format!("invalid {what} in the header"));
    let id = |n: io::Result<u64>, what: &str| {
        n.ok()
            .and_then(|n| u32::try_from(n).ok())
            // -1 means "leave unchanged" to chown(2).
            .filter(|&n| n != u32::MAX)
            .ok_or_else(|| bad(what))
    };
    let uid = id(header.uid(), "uid")?;
    let gid = id(header.gid(), "gid")?;
    let mode = header.mode().map_err(|_| bad("mode"))? & 0o7777;
    let mtime = header.mtime().map_err(|_| bad("mtime"))?;
    let mut mtime = Timespec {
        tv_sec: i64::try_from(mtime).map_err(|_| bad("mtime"))?,
        tv_nsec: 0,
    };
    let mut atime = None;
    let mut xattrs = Vec::new();
    if let Some(records) = entry.pax_extensions().map_err(UnpackError::Archive)? {
        for record in records {
            let record = record.map_err(UnpackError::Archive)?;
            let key = record.key_bytes();
            let value = record.value_bytes();
            if key == b"mtime" {
                mtime = parse_pax_time(value).ok_or_else(|| bad("pax mtime"))?;
            } else if key == b"atime" {
                atime = Some(parse_pax_time(value).ok_or_else(|| bad("pax atime"))?);
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if name.starts_with(b"user.") || name == b"security.capability" {
                    let name = CString::new(name).map_err(|_| bad("xattr name"))?;
                    xattrs.push((name, value.to_vec()));
                } else {
                    tracing::debug!(
                        path,
                        xattr = %String::from_utf8_lossy(name),
                        "layer: skipping an extended attribute outside user.* and security.capability"
                    );
                }
            }
        }
    }
    Ok(Meta {
        uid,
        gid,
        mode,
        times: Times {
            atime: atime.unwrap_or(mtime),
            mtime,
        },
        xattrs,
    })
}

/// Parses a PAX time, decimal seconds with an optional fraction (`1700000000.25`, `-1.5`).
fn parse_pax_time(value: &[u8]) -> Option<Timespec> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if secs.is_empty() || !digits(secs) || !digits(frac) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    // Nanoseconds: the first nine fraction digits, right-padded with zeros.
    let nanos = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    Some(match (negative, nanos) {
        (false, _) => Timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        },
        (true, 0) => Timespec {
            tv_sec: -secs,
            tv_nsec: 0,
        },
        (true, _) => Timespec {
            tv_sec: -secs - 1,
            tv_nsec: 1_000_000_000 - nanos,
        },
    })
}

/// Ownership, mode and extended attributes through a descriptor, in that order: chown(2)
/// clears setuid/setgid bits and file capabilities.
fn set_fd_meta(fd: BorrowedFd<'_>, meta: &Meta, path: &str) -> Result<(), UnpackError> {
    let (uid, gid) = meta.owner();
    fchown(fd, uid, gid).map_err(|e| io_err(path, "changing ownership", e))?;
    fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(|e| io_err(path, "changing the mode", e))?;
    for (name, value) in &meta.xattrs {
        match fsetxattr(fd, name.as_c_str(), value, XattrFlags::empty()) {
            Ok(()) => {}
            // A filesystem without user xattrs loses nothing the container needs to run.
            Err(Errno::OPNOTSUPP) if name.as_bytes().starts_with(b"user.") => {
                tracing::warn!(path, xattr = ?name, "layer: the filesystem does not support user xattrs");
            }
            Err(e) => return Err(io_err(path, "setting an extended attribute", e)),
        }
    }
    Ok(())
}

fn skip_xattrs(path: &str, meta: &Meta, what: &str) {
    if !meta.xattrs.is_empty() {
        tracing::debug!(path, what, "layer: skipping extended attributes");
    }
}

/// Makes room for a new entry `name` in `dir` by removing what is there, unless both are
/// directories (those merge). Returns whether an existing directory is kept.
fn make_room(dir: BorrowedFd<'_>, name: &[u8], new_is_dir: bool) -> io::Result<bool> {
    let st = match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(st.st_mode).is_dir() {
        if new_is_dir {
            return Ok(true);
        }
        remove_tree(dir, name, &|_, _| false)?;
    } else {
        unlinkat(dir, name, AtFlags::empty())?;
    }
    Ok(false)
}

fn open_dir_nofollow(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The names in a directory (opened for reading), without `.` and `..`.
fn list_names(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// Removes `dir/name` and, if it is a directory, everything below it, except the entries for
/// which `keep(parent directory, name)` holds (and the directories leading to them).
///
/// Symlinks are never followed: every directory is opened `O_NOFOLLOW` relative to its parent
/// and checked to be the inode that was stat'ed. The walk keeps one descriptor open whatever the
/// depth and climbs back through `..` (checked against the inode it came from), so hostile
/// deeply nested trees neither exhaust descriptors nor the stack.
fn remove_tree(
    dir: BorrowedFd<'_>,
    name: &[u8],
    keep: &dyn Fn(Id, &[u8]) -> bool,
) -> io::Result<()> {
    struct Frame {
        id: Id,
        /// The directory's name in its parent.
        name: Vec<u8>,
        kept: bool,
        /// Children still to visit.
        pending: Vec<Vec<u8>>,
    }
    let open_checked = |parent: BorrowedFd<'_>, name: &[u8], st: &Stat| -> io::Result<OwnedFd> {
        let fd = open_dir_nofollow(parent, name)?;
        if id_of(&fstat(&fd)?) != id_of(st) {
            return Err(io::Error::other("directory replaced while removing it"));
        }
        Ok(fd)
    };
    let rmdir =
        |parent: BorrowedFd<'_>, name: &[u8]| match unlinkat(parent, name, AtFlags::REMOVEDIR) {
            // Still holds entries that are kept.
            Ok(()) | Err(Errno::NOTEMPTY | Errno::EXIST) => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        };

    let dir_id = id_of(&fstat(dir)?);
    let st = match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let kept = keep(dir_id, name);
    if !FileType::from_raw_mode(st.st_mode).is_dir() {
        if !kept {
            unlinkat(dir, name, AtFlags::empty())?;
        }
        return Ok(());
    }

    let mut cur = open_checked(dir, name, &st)?;
    let mut stack = vec![Frame {
        id: id_of(&st),
        name: name.to_vec(),
        kept,
        pending: list_names(cur.as_fd())?,
    }];
    while let Some(top) = stack.last_mut() {
        if let Some(child) = top.pending.pop() {
            let parent_id = top.id;
            let st = match statat(&cur, &child[..], AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            let kept = keep(parent_id, &child);
            if FileType::from_raw_mode(st.st_mode).is_dir() {
                let next = open_checked(cur.as_fd(), &child, &st)?;
                let pending = list_names(next.as_fd())?;
                stack.push(Frame {
                    id: id_of(&st),
                    name: child,
                    kept,
                    pending,
                });
                cur = next;
            } else if !kept {
                unlinkat(&cur, &child[..], AtFlags::empty())?;
            }
            continue;
        }
        // `top` is done: go back to its parent and remove it unless it is kept.
        let done = stack.pop().expect("the stack is not empty");
        let Some(parent) = stack.last() else {
            if !done.kept {
                rmdir(dir, &done.name)?;
            }
            break;
        };
        let up = openat(
            &cur,
            "..",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        if id_of(&fstat(&up)?) != parent.id {
            return Err(io::Error::other("directory moved while removing it"));
        }
        cur = up;
        if !done.kept {
            rmdir(cur.as_fd(), &done.name)?;
        }
    }
    Ok(())
}

fn io_err(path: &str, op: &'static str, source: impl Into<io::Error>) -> UnpackError {
    UnpackError::Io {
        path: path.to_owned(),
        op,
        source: source.into(),
    }
}

fn invalid(path: &str, reason: &str) -> UnpackError {
    UnpackError::Invalid {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::PathBuf;

    use tar::EntryType;

    const MTIME: u64 = 1_500_000_000;

    /// Builds a layer in memory. Names and link names are written raw into the header, so that
    /// hostile paths, which `tar::Builder::append_data` refuses to write, can be built too.
    struct Tar {
        builder: tar::Builder<Vec<u8>>,
    }

    impl Tar {
        fn new() -> Self {
            Tar {
                builder: tar::Builder::new(Vec::new()),
            }
        }

        /// Appends an entry; `edit` can change the header (owner, times, device numbers...).
        fn entry_with(
            mut self,
            kind: EntryType,
            name: &str,
            link: &str,
            mode: u32,
            data: &[u8],
            edit: impl FnOnce(&mut tar::Header),
        ) -> Self {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            header.set_mode(mode);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(MTIME);
            header.set_size(data.len() as u64);
            edit(&mut header);
            header.set_cksum();
            self.builder.append(&header, data).unwrap();
            self
        }

        fn entry(self, kind: EntryType, name: &str, link: &str, mode: u32, data: &[u8]) -> Self {
            self.entry_with(kind, name, link, mode, data, |_| {})
        }

        fn file(self, name: &str, data: &str) -> Self {
            self.entry(EntryType::Regular, name, "", 0o644, data.as_bytes())
        }

        fn dir(self, name: &str) -> Self {
            self.entry(EntryType::Directory, name, "", 0o755, b"")
        }

        fn symlink(self, name: &str, target: &str) -> Self {
            self.entry(EntryType::Symlink, name, target, 0o777, b"")
        }

        fn hard_link(self, name: &str, target: &str) -> Self {
            self.entry(EntryType::Link, name, target, 0o644, b"")
        }

        /// A PAX extended header for the next entry.
        fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
            let mut data = Vec::new();
            for (key, value) in records {
                // "<len> <key>=<value>\n", where <len> counts itself.
                let rest = key.len() + value.len() + 3;
                let mut len = rest + 1;
                while len != rest + len.to_string().len() {
                    len = rest + len.to_string().len();
                }
                data.extend_from_slice(format!("{len} {key}=").as_bytes());
                data.extend_from_slice(value);
                data.push(b'\n');
            }
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(EntryType::XHeader);
            header.set_path("PaxHeaders/entry").unwrap();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            self.builder.append(&header, &data[..]).unwrap();
            self
        }

        fn bytes(self) -> Vec<u8> {
            self.builder.into_inner().unwrap()
        }
    }

    /// A rootfs inside a scratch directory, next to a canary directory that no layer may touch.
    struct Fixture {
        _scratch: tempfile::TempDir,
        outer: PathBuf,
        root: PathBuf,
        canary: PathBuf,
        canary_before: Vec<String>,
    }

    impl Fixture {
        fn new() -> Self {
            let scratch = tempfile::tempdir().unwrap();
            let outer = scratch.path().to_path_buf();
            let root = outer.join("rootfs");
            let canary = outer.join("canary");
            fs::create_dir(&root).unwrap();
            fs::create_dir(&canary).unwrap();
            fs::write(canary.join("secret"), "do not touch").unwrap();
            fs::create_dir(canary.join("sub")).unwrap();
            fs::write(canary.join("sub/file"), "nor this").unwrap();
            let mut fixture = Fixture {
                _scratch: scratch,
                outer,
                root,
                canary,
                canary_before: Vec::new(),
            };
            fixture.canary_before = fixture.outside_state();
            fixture
        }

        fn apply(&self, layer: Vec<u8>) -> Result<Stats, UnpackError> {
            apply_layer(&self.root, &layer[..], Compression::None)
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.root.join(rel)
        }

        fn read(&self, rel: &str) -> String {
            fs::read_to_string(self.path(rel)).unwrap()
        }

        fn exists(&self, rel: &str) -> bool {
            fs::symlink_metadata(self.path(rel)).is_ok()
        }

        /// Everything outside the rootfs that a layer could reach: the scratch directory's
        /// entries and the canary tree with contents, modes, owners, times and link counts.
        fn outside_state(&self) -> Vec<String> {
            let mut state: Vec<String> = fs::read_dir(&self.outer)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            let mut stack = vec![self.canary.clone()];
            while let Some(path) = stack.pop() {
                let meta = fs::symlink_metadata(&path).unwrap();
                let content = if meta.is_file() {
                    fs::read_to_string(&path).unwrap()
                } else {
                    String::new()
                };
                state.push(format!(
                    "{} mode={:o} uid={} gid={} nlink={} mtime={} {content}",
                    path.display(),
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    meta.nlink(),
                    meta.mtime()
                ));
                if meta.is_dir() {
                    for entry in fs::read_dir(&path).unwrap() {
                        stack.push(entry.unwrap().path());
                    }
                }
            }
            state.sort();
            state
        }

        fn assert_outside_untouched(&self) {
            assert_eq!(self.outside_state(), self.canary_before);
        }

        /// The canary's absolute path, as a symlink target.
        fn canary_str(&self) -> String {
            self.canary.to_str().unwrap().to_owned()
        }
    }

    fn assert_unsafe(result: Result<Stats, UnpackError>, reason: &str) -> String {
        match result {
            Err(e @ UnpackError::Unsafe { .. }) => {
                let message = e.to_string();
                assert!(message.contains(reason), "{message}");
                message
            }
            other => panic!("expected an Unsafe error, got {other:?}"),
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn media_types() {
        let cases = [
            ("application/vnd.oci.image.layer.v1.tar", Compression::None),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::Zstd,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar",
                Compression::None,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                Compression::Zstd,
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Compression::Gzip,
            ),
        ];
        for (media_type, expected) in cases {
            assert_eq!(
                Compression::from_media_type(media_type).unwrap(),
                expected,
                "{media_type}"
            );
        }
        for unknown in [
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+bzip2",
            "application/wasm",
            "",
        ] {
            let err = Compression::from_media_type(unknown).unwrap_err();
            assert!(
                matches!(&err, UnpackError::MediaType(m) if m == unknown),
                "{err:?}"
            );
        }
        assert_eq!(
            Compression::from_media_type("text/plain")
                .unwrap_err()
                .to_string(),
            r#"unsupported layer media type "text/plain""#
        );
    }

    #[test]
    fn files_dirs_modes_owners_and_times() {
        let fx = Fixture::new();
        let owned = |h: &mut tar::Header| {
            h.set_uid(1000);
            h.set_gid(1000);
        };
        let layer = Tar::new()
            .entry(EntryType::Directory, "./", "", 0o755, b"")
            .dir("etc/")
            .file("./etc/./hostname", "box\n")
            .entry_with(EntryType::Directory, "home/user/", "", 0o750, b"", |h| {
                owned(h);
                h.set_mtime(1_600_000_000);
            })
            .entry_with(
                EntryType::Regular,
                "home/user/notes",
                "",
                0o640,
                b"hello",
                |h| {
                    owned(h);
                    h.set_mtime(1_400_000_000);
                },
            )
            // No entries for usr/ and usr/bin/: created on the way. Absolute names are relative
            // to the rootfs.
            .entry(EntryType::Regular, "usr/bin/su", "", 0o4755, b"#!su")
            .entry(EntryType::Regular, "/usr/bin/wall", "", 0o2755, b"#!wall")
            .entry(EntryType::Directory, "tmp", "", 0o1777, b"")
            .bytes();
        let diff_id = format!("sha256:{}", crate::store::sha256_hex(&layer));
        let stats = fx.apply(layer).unwrap();
        assert_eq!(
            stats,
            Stats {
                files: 4,
                dirs: 4,
                links: 0,
                bytes: 4 + 5 + 4 + 6,
                whiteouts: 0,
                diff_id,
            }
        );

        assert_eq!(fx.read("etc/hostname"), "box\n");
        assert_eq!(fx.read("home/user/notes"), "hello");
        assert_eq!(fx.read("usr/bin/su"), "#!su");
        assert_eq!(fx.read("usr/bin/wall"), "#!wall");

        assert_eq!(mode(&fx.root), 0o755);
        assert_eq!(mode(&fx.path("home/user")), 0o750);
        assert_eq!(mode(&fx.path("home/user/notes")), 0o640);
        assert_eq!(mode(&fx.path("usr/bin/su")), 0o4755);
        assert_eq!(mode(&fx.path("usr/bin/wall")), 0o2755);
        assert_eq!(mode(&fx.path("tmp")), 0o1777);
        assert!(fx.path("usr/bin").is_dir());

        for owned in ["home/user", "home/user/notes"] {
            let meta = fs::metadata(fx.path(owned)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (1000, 1000), "{owned}");
        }
        assert_eq!(fs::metadata(fx.path("usr/bin/su")).unwrap().uid(), 0);

        // Directory times are set after their contents were written.
        let mtime = |rel: &str| fs::metadata(fx.path(rel)).unwrap().mtime();
        assert_eq!(mtime("home/user"), 1_600_000_000);
        assert_eq!(mtime("home/user/notes"), 1_400_000_000);
        assert_eq!(mtime("etc"), MTIME as i64);
        assert_eq!(mtime("etc/hostname"), MTIME as i64);
        assert_eq!(fs::metadata(&fx.root).unwrap().mtime(), MTIME as i64);
        fx.assert_outside_untouched();
    }

    #[test]
    fn symlinks_and_hard_links() {
        let fx = Fixture::new();
        let layer = Tar::new()
            .file("bin/busybox", "multicall")
            .entry_with(EntryType::Symlink, "bin/sh", "busybox", 0o777, b"", |h| {
                h.set_uid(1000);
                h.set_mtime(1_300_000_000);
            })
            .symlink("bin/abs", "/bin/busybox")
            .hard_link("bin/ls", "bin/busybox")
            .hard_link("/bin/cat", "/bin/busybox")
            .hard_link("bin/sh2", "./bin/sh")
            .bytes();
        let stats = fx.apply(layer).unwrap();
        assert_eq!(stats.links, 5);
        assert_eq!(stats.files, 1);

        assert_eq!(
            fs::read_link(fx.path("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(
            fs::read_link(fx.path("bin/abs")).unwrap(),
            Path::new("/bin/busybox")
        );
        let sh = fs::symlink_metadata(fx.path("bin/sh")).unwrap();
        assert_eq!(sh.uid(), 1000);
        assert_eq!(sh.mtime(), 1_300_000_000);
        // lchown, not chown: the target keeps its owner.
        assert_eq!(fs::metadata(fx.path("bin/busybox")).unwrap().uid(), 0);

        let busybox = fs::metadata(fx.path("bin/busybox")).unwrap();
        assert_eq!(busybox.nlink(), 3);
        for link in ["bin/ls", "bin/cat"] {
            assert_eq!(
                fs::metadata(fx.path(link)).unwrap().ino(),
                busybox.ino(),
                "{link}"
            );
            assert_eq!(fx.read(link), "multicall");
        }
        // A hard link to a symlink links the symlink itself.
        let sh2 = fs::symlink_metadata(fx.path("bin/sh2")).unwrap();
        assert!(sh2.file_type().is_symlink());
        assert_eq!(sh2.ino(), sh.ino());

        // A later layer may link to a file of a lower one, and re-linking is harmless.
        fx.apply(
            Tar::new()
                .hard_link("usr/bin/busybox", "bin/busybox")
                .hard_link("bin/ls", "bin/busybox")
                .bytes(),
        )
        .unwrap();
        assert_eq!(
            fs::metadata(fx.path("usr/bin/busybox")).unwrap().ino(),
            busybox.ino()
        );
        assert_eq!(fs::metadata(fx.path("bin/busybox")).unwrap().nlink(), 4);

        // Targets that do not exist, or are directories, are errors.
        let err = fx
            .apply(Tar::new().hard_link("x", "missing").bytes())
            .unwrap_err();
        assert!(matches!(err, UnpackError::Io { .. }), "{err:?}");
        let err = fx
            .apply(Tar::new().hard_link("x", "bin").bytes())
            .unwrap_err();
        assert!(matches!(err, UnpackError::Invalid { .. }), "{err:?}");
        fx.assert_outside_untouched();
    }

    #[test]
    fn fifo_and_device_nodes() {
        let fx = Fixture::new();
        let layer = Tar::new()
            .dir("dev/")
            .entry_with(EntryType::Char, "dev/null", "", 0o666, b"", |h| {
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
            })
            .entry_with(EntryType::Block, "dev/loop0", "", 0o660, b"", |h| {
                h.set_device_major(7).unwrap();
                h.set_device_minor(0).unwrap();
                h.set_gid(6);
            })
            .entry_with(EntryType::Fifo, "run/initctl", "", 0o4620, b"", |h| {
                h.set_uid(1000);
                h.set_mtime(1_200_000_000);
            })
            .bytes();
        let stats = fx.apply(layer).unwrap();
        assert_eq!(stats.files, 3);

        let null = fs::symlink_metadata(fx.path("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), makedev(1, 3));
        assert_eq!(null.mode() & 0o7777, 0o666);
        // It really is /dev/null.
        fs::write(fx.path("dev/null"), "discarded").unwrap();
        assert_eq!(fx.read("dev/null"), "");

        let loop0 = fs::symlink_metadata(fx.path("dev/loop0")).unwrap();
        assert!(loop0.file_type().is_block_device());
        assert_eq!(loop0.rdev(), makedev(7, 0));
        assert_eq!((loop0.mode() & 0o7777, loop0.gid()), (0o660, 6));

        let fifo = fs::symlink_metadata(fx.path("run/initctl")).unwrap();
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.mode() & 0o7777, 0o4620);
        assert_eq!(fifo.uid(), 1000);
        assert_eq!(fifo.mtime(), 1_200_000_000);
        fx.assert_outside_untouched();
    }

    #[test]
    fn gzip_and_zstd_layers() {
        let layer = Tar::new()
            .dir("app/")
            .file("app/main.sh", "echo hi")
            .symlink("app/run", "main.sh")
            .bytes();

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&layer).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&layer[..], 3).unwrap();

        for (compression, blob) in [(Compression::Gzip, &gz), (Compression::Zstd, &zst)] {
            let fx = Fixture::new();
            let stats = apply_layer(&fx.root, &blob[..], compression).unwrap();
            assert_eq!(
                stats,
                Stats {
                    files: 1,
                    dirs: 1,
                    links: 1,
                    bytes: 7,
                    whiteouts: 0,
                    // The uncompressed stream's digest, whatever the compression.
                    diff_id: format!("sha256:{}", crate::store::sha256_hex(&layer)),
                }
            );
            assert_eq!(fx.read("app/main.sh"), "echo hi");
            assert_eq!(fx.read("app/run"), "echo hi");

            // Truncated or mislabelled streams are refused.
            let fx = Fixture::new();
            let err = apply_layer(&fx.root, &blob[..blob.len() / 2], compression).unwrap_err();
            assert!(matches!(err, UnpackError::Archive(_)), "{err:?}");
            let err = apply_layer(&fx.root, &layer[..], compression).unwrap_err();
            assert!(matches!(err, UnpackError::Archive(_)), "{err:?}");
        }
    }

    #[test]
    fn long_names_pax_records_and_xattrs() {
        let fx = Fixture::new();
        let long_dir = "d".repeat(120);
        let gnu_long = format!("{long_dir}/{}", "f".repeat(130));
        let pax_long = format!("{long_dir}/{}", "p".repeat(140));
        // cap_net_raw+ep, as `setcap` writes it (VFS_CAP_REVISION_2).
        let mut cap = Vec::new();
        for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
            cap.extend_from_slice(&word.to_le_bytes());
        }

        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        header.set_size(4);
        builder
            .append_data(&mut header, &gnu_long, &b"long"[..])
            .unwrap();
        let layer = Tar { builder }
            .pax(&[
                ("path", pax_long.as_bytes()),
                ("mtime", b"1600000000.25"),
                ("uid", b"2000000"),
                ("SCHILY.xattr.user.origin", b"layer"),
                ("SCHILY.xattr.security.capability", &cap),
                ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ])
            .file("short-name-overridden-by-pax", "pax")
            .pax(&[("SCHILY.xattr.user.dir", b"yes")])
            .dir("xdir/")
            .bytes();
        fx.apply(layer).unwrap();

        assert_eq!(fx.read(&gnu_long), "long");
        assert_eq!(fx.read(&pax_long), "pax");
        assert!(!fx.exists("short-name-overridden-by-pax"));
        let meta = fs::metadata(fx.path(&pax_long)).unwrap();
        assert_eq!(meta.uid(), 2_000_000);
        assert_eq!(
            (meta.mtime(), meta.mtime_nsec()),
            (1_600_000_000, 250_000_000)
        );

        let xattr = |rel: &str, name: &str| {
            let mut buf = [0u8; 64];
            rustix::fs::lgetxattr(fx.path(rel), name, &mut buf[..]).map(|n| buf[..n].to_vec())
        };
        assert_eq!(xattr(&pax_long, "user.origin").unwrap(), b"layer");
        assert_eq!(xattr(&pax_long, "security.capability").unwrap(), cap);
        assert_eq!(
            xattr(&pax_long, "trusted.overlay.opaque"),
            Err(Errno::NODATA)
        );
        assert_eq!(xattr("xdir", "user.dir").unwrap(), b"yes");
    }

    #[test]
    fn pax_times() {
        let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec, t.tv_nsec));
        assert_eq!(t("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(t("1700000000.5"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(t("1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(t("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(t("-3"), Some((-3, 0)));
        assert_eq!(t(""), None);
        assert_eq!(t("1e9"), None);
        assert_eq!(t("-.5"), None);
    }

    #[test]
    fn whiteouts_remove_lower_files_and_trees() {
        let fx = Fixture::new();
        fx.apply(
            Tar::new()
                .file("etc/old.conf", "old")
                .file("etc/keep.conf", "keep")
                .file("var/cache/apt/archives/a.deb", "deb")
                .symlink("var/cache/apt/outside", &fx.canary_str())
                .file("var/cache/other", "other")
                .bytes(),
        )
        .unwrap();
        let stats = fx
            .apply(
                Tar::new()
                    .file("etc/.wh.old.conf", "")
                    .file("var/cache/.wh.apt", "")
                    .file("var/.wh.never-existed", "")
                    .file("nowhere/.wh.thing", "")
                    .bytes(),
            )
            .unwrap();
        assert_eq!(stats.whiteouts, 4);
        assert!(!fx.exists("etc/old.conf"));
        assert!(!fx.exists("etc/.wh.old.conf"));
        assert_eq!(fx.read("etc/keep.conf"), "keep");
        assert!(!fx.exists("var/cache/apt"));
        assert_eq!(fx.read("var/cache/other"), "other");
        // Whiteouts are never created, not even their directories.
        assert!(!fx.exists("nowhere"));
        fx.assert_outside_untouched();
    }

    #[test]
    fn whiteouts_keep_entries_of_the_same_layer() {
        let fx = Fixture::new();
        fx.apply(Tar::new().file("etc/motd", "lower").bytes())
            .unwrap();
        // The whiteout comes before (hides the lower file) or after (hides nothing of this
        // layer) the new file: either way the new file stays.
        fx.apply(
            Tar::new()
                .file("etc/motd", "upper")
                .file("etc/.wh.motd", "")
                .file("etc/.wh.issue", "")
                .file("etc/issue", "upper issue")
                .bytes(),
        )
        .unwrap();
        assert_eq!(fx.read("etc/motd"), "upper");
        assert_eq!(fx.read("etc/issue"), "upper issue");
    }

    #[test]
    fn opaque_directories() {
        let fx = Fixture::new();
        fx.apply(
            Tar::new()
                .file("opt/app/old", "old")
                .file("opt/app/sub/old2", "old2")
                .symlink("opt/app/link", &fx.canary_str())
                .file("opt/other/x", "x")
                .file("srv/stale", "stale")
                .bytes(),
        )
        .unwrap();
        let stats = fx
            .apply(
                Tar::new()
                    // The marker after this layer's own entries of the directory...
                    .dir("opt/app/")
                    .file("opt/app/new", "new")
                    .dir("opt/app/sub/")
                    .file("opt/app/sub/new2", "new2")
                    .file("opt/app/implicit/deep", "deep")
                    .file("opt/app/.wh..wh..opq", "")
                    // ...and before them.
                    .file("srv/.wh..wh..opq", "")
                    .file("srv/fresh", "fresh")
                    .bytes(),
            )
            .unwrap();
        assert_eq!(stats.whiteouts, 2);

        let names = |rel: &str| {
            let mut names: Vec<String> = fs::read_dir(fx.path(rel))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names("opt/app"), ["implicit", "new", "sub"]);
        assert_eq!(names("opt/app/sub"), ["new2"]);
        assert_eq!(fx.read("opt/app/implicit/deep"), "deep");
        assert_eq!(fx.read("opt/other/x"), "x");
        assert_eq!(names("srv"), ["fresh"]);
        assert!(!fx.exists("opt/app/.wh..wh..opq"));
        fx.assert_outside_untouched();
    }

    #[test]
    fn entries_replace_entries_of_another_type() {
        let fx = Fixture::new();
        fx.apply(
            Tar::new()
                .file("a/inner", "inner")
                .file("a/deeper/x", "x")
                .file("b", "file b")
                .file("c", "file c")
                .entry(EntryType::Directory, "d/", "", 0o700, b"")
                .file("d/lower", "lower")
                .file("e", "file e")
                .bytes(),
        )
        .unwrap();
        fx.apply(
            Tar::new()
                .file("a", "file over dir")
                .dir("b/")
                .file("b/inside", "dir over file")
                .symlink("c", "b/inside")
                .entry(EntryType::Directory, "d/", "", 0o751, b"")
                .file("d/upper", "upper")
                .entry(EntryType::Fifo, "e", "", 0o600, b"")
                .bytes(),
        )
        .unwrap();
        assert_eq!(fx.read("a"), "file over dir");
        assert!(fx.path("b").is_dir());
        assert_eq!(fx.read("b/inside"), "dir over file");
        assert_eq!(fs::read_link(fx.path("c")).unwrap(), Path::new("b/inside"));
        // Directories merge, taking the new metadata.
        assert_eq!(fx.read("d/lower"), "lower");
        assert_eq!(fx.read("d/upper"), "upper");
        assert_eq!(mode(&fx.path("d")), 0o751);
        assert!(
            fs::symlink_metadata(fx.path("e"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
    }

    #[test]
    fn traversal_by_dot_dot_is_refused() {
        let fx = Fixture::new();
        let message = assert_unsafe(
            fx.apply(Tar::new().file("../etc/passwd", "root::0:0").bytes()),
            "escapes",
        );
        assert_eq!(
            message,
            r#"layer entry "../etc/passwd": path escapes the rootfs"#
        );
        for name in [
            "../canary/secret",
            "a/../../canary/secret",
            "/../canary/secret",
            "./x/./../../y",
        ] {
            assert_unsafe(
                fx.apply(Tar::new().file(name, "pwned").bytes()),
                "path escapes the rootfs",
            );
            assert_unsafe(
                fx.apply(Tar::new().dir(name).bytes()),
                "path escapes the rootfs",
            );
            assert_unsafe(
                fx.apply(Tar::new().symlink(name, "/").bytes()),
                "path escapes the rootfs",
            );
            assert_unsafe(
                fx.apply(Tar::new().file(&format!("{name}/.wh.x"), "").bytes()),
                "path escapes the rootfs",
            );
        }
        // `..` that stays inside is fine.
        fx.apply(Tar::new().file("a/b/../c", "ok").bytes()).unwrap();
        assert_eq!(fx.read("a/c"), "ok");
        assert!(!fx.exists("a/b"));
        fx.assert_outside_untouched();
    }

    #[test]
    fn planted_symlinks_are_followed_confined_to_the_rootfs() {
        // Approach: confine (chroot semantics). A parent path through a planted symlink is
        // resolved as if the rootfs were `/`, so the write lands inside the rootfs.
        let fx = Fixture::new();
        let marker = "flotilla-unpack-test-pwned";
        fx.apply(
            Tar::new()
                .symlink("evil", "/")
                .symlink("up", "../../../../../../../../..")
                .bytes(),
        )
        .unwrap();
        fx.apply(
            Tar::new()
                .file(&format!("evil/{marker}"), "via absolute")
                .file(&format!("up/{marker}-2"), "via relative")
                .bytes(),
        )
        .unwrap();
        assert_eq!(fx.read(marker), "via absolute");
        assert_eq!(fx.read(&format!("{marker}-2")), "via relative");
        assert!(!Path::new("/").join(marker).exists());
        assert!(!fx.outer.join(format!("{marker}-2")).exists());
        fx.assert_outside_untouched();
    }

    #[test]
    fn symlinks_to_outside_directories_never_reach_them() {
        let fx = Fixture::new();
        let canary = fx.canary_str();
        fx.apply(
            Tar::new()
                .symlink("abs", &canary)
                .symlink("rel", "../canary")
                .symlink("hop1", "hop2/.")
                .symlink("hop2", "/hop3")
                .symlink("hop3", &canary)
                .bytes(),
        )
        .unwrap();
        // Inside the rootfs those targets do not exist: nothing is written anywhere, and the
        // missing directories are not created through the symlinks.
        for entry in [
            "abs/secret",
            "rel/secret",
            "hop1/secret",
            "abs/sub/file",
            "abs/new/file",
        ] {
            let err = fx
                .apply(Tar::new().file(entry, "pwned").bytes())
                .unwrap_err();
            assert!(
                matches!(&err, UnpackError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOENT)),
                "{entry}: {err:?}"
            );
        }
        fx.assert_outside_untouched();

        // Once the same path exists inside the rootfs, the write lands there.
        let inside = canary.trim_start_matches('/');
        fx.apply(
            Tar::new()
                .dir(&format!("{inside}/"))
                .file("abs/secret", "confined")
                .file("hop1/secret2", "confined too")
                .bytes(),
        )
        .unwrap();
        assert_eq!(fx.read(&format!("{inside}/secret")), "confined");
        assert_eq!(fx.read(&format!("{inside}/secret2")), "confined too");
        fx.assert_outside_untouched();
    }

    #[test]
    fn mount_points_are_added_without_following_anything() {
        // A plain image: the directories and /etc's files are made, empty.
        let fx = Fixture::new();
        fx.apply(Tar::new().file("etc/hosts", "127.0.0.1 mine").bytes())
            .unwrap();
        add_mount_points(&fx.root).unwrap();
        for dir in ["proc", "sys", "dev"] {
            assert!(fx.path(dir).is_dir(), "{dir}");
        }
        assert_eq!(
            fx.read("etc/hosts"),
            "127.0.0.1 mine",
            "the image's file is kept"
        );
        assert_eq!(fx.read("etc/hostname"), "");
        assert_eq!(fx.read("etc/resolv.conf"), "");
        add_mount_points(&fx.root).expect("a second time changes nothing");

        // /etc a symlink out of the rootfs, resolv.conf a dangling symlink: nothing is made
        // through either, and the symlinks stay.
        let fx = Fixture::new();
        let canary = fx.canary_str();
        fx.apply(
            Tar::new()
                .symlink("etc", &canary)
                .symlink("proc", &canary)
                .bytes(),
        )
        .unwrap();
        add_mount_points(&fx.root).unwrap();
        assert!(fx.path("etc").is_symlink() && fx.path("proc").is_symlink());
        fx.assert_outside_untouched();
        let fx = Fixture::new();
        fx.apply(
            Tar::new()
                .dir("etc/")
                .symlink("etc/resolv.conf", "../run/resolv.conf")
                .bytes(),
        )
        .unwrap();
        add_mount_points(&fx.root).unwrap();
        assert!(fx.path("etc/resolv.conf").is_symlink());
        assert!(!fx.exists("run/resolv.conf"));
        assert_eq!(fx.read("etc/hosts"), "");
    }

    #[test]
    fn hard_links_cannot_reach_outside() {
        let fx = Fixture::new();
        for target in [
            "../../outside",
            "../canary/secret",
            "/../canary/secret",
            "a/../../canary/secret",
        ] {
            let message = assert_unsafe(
                fx.apply(Tar::new().hard_link("x", target).bytes()),
                "escapes the rootfs",
            );
            assert!(
                message.contains(&format!("hard link target {target:?}")),
                "{message}"
            );
        }
        // Through planted symlinks the target is looked up inside the rootfs, where it does
        // not exist.
        let canary = fx.canary_str();
        fx.apply(
            Tar::new()
                .symlink("abs", &canary)
                .symlink("rel", "../canary")
                .symlink("chain", "rel/.")
                .symlink("secret-link", &format!("{canary}/secret"))
                .bytes(),
        )
        .unwrap();
        for target in ["abs/secret", "rel/secret", "chain/secret", "abs/sub/file"] {
            let err = fx
                .apply(Tar::new().hard_link("x", target).bytes())
                .unwrap_err();
            assert!(matches!(err, UnpackError::Io { .. }), "{target}: {err:?}");
            assert!(!fx.exists("x"));
        }
        // A link to a symlink to outside links the symlink, never the file outside.
        fx.apply(Tar::new().hard_link("x", "secret-link").bytes())
            .unwrap();
        assert!(
            fs::symlink_metadata(fx.path("x"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        fx.assert_outside_untouched();
    }

    #[test]
    fn existing_symlinks_are_replaced_not_followed() {
        let fx = Fixture::new();
        let canary = fx.canary_str();
        fx.apply(
            Tar::new()
                .symlink("etc/passwd", &format!("{canary}/secret"))
                .symlink("data", &canary)
                .symlink("sub", &format!("{canary}/sub"))
                .symlink("node", &format!("{canary}/secret"))
                .symlink("root-link", "/")
                .bytes(),
        )
        .unwrap();
        let owned = |h: &mut tar::Header| {
            h.set_uid(1000);
            h.set_mtime(1);
        };
        fx.apply(
            Tar::new()
                .entry_with(
                    EntryType::Regular,
                    "etc/passwd",
                    "",
                    0o777,
                    b"root:x:0:0",
                    owned,
                )
                .entry_with(EntryType::Directory, "data/", "", 0o777, b"", owned)
                .entry_with(EntryType::Symlink, "sub", "elsewhere", 0o777, b"", owned)
                .entry_with(EntryType::Fifo, "node", "", 0o777, b"", owned)
                .entry_with(EntryType::Directory, "root-link", "", 0o700, b"", owned)
                .bytes(),
        )
        .unwrap();
        assert_eq!(fx.read("etc/passwd"), "root:x:0:0");
        assert!(
            fs::symlink_metadata(fx.path("etc/passwd"))
                .unwrap()
                .is_file()
        );
        assert!(fs::symlink_metadata(fx.path("data")).unwrap().is_dir());
        assert_eq!(
            fs::read_link(fx.path("sub")).unwrap(),
            Path::new("elsewhere")
        );
        assert!(
            fs::symlink_metadata(fx.path("node"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert!(fs::symlink_metadata(fx.path("root-link")).unwrap().is_dir());
        // The rootfs itself was not chmodded through `root-link -> /`.
        assert_ne!(mode(&fx.root), 0o700);
        fx.assert_outside_untouched();
    }

    #[test]
    fn whiteouts_never_reach_outside() {
        let fx = Fixture::new();
        let canary = fx.canary_str();
        fx.apply(
            Tar::new()
                .symlink("abs", &canary)
                .symlink("rel", "../canary")
                .symlink("tree/link", &canary)
                .symlink("tree/sub/link", "../../../canary")
                .file("tree/sub/file", "f")
                .symlink("opaque/link", &canary)
                .bytes(),
        )
        .unwrap();
        fx.apply(
            Tar::new()
                .file("abs/.wh.secret", "")
                .file("rel/.wh.secret", "")
                .file("abs/.wh..wh..opq", "")
                .file("rel/sub/.wh..wh..opq", "")
                .file(".wh.abs", "")
                .file(".wh.tree", "")
                .file("opaque/.wh..wh..opq", "")
                .bytes(),
        )
        .unwrap();
        // The symlinks themselves are removed, never what they point to.
        assert!(!fx.exists("abs"));
        assert!(fx.exists("rel"));
        assert!(!fx.exists("tree"));
        assert!(!fx.exists("opaque/link"));
        fx.assert_outside_untouched();

        assert_unsafe(fx.apply(Tar::new().file("a/.wh..", "").bytes()), "whiteout");
        assert_unsafe(
            fx.apply(Tar::new().file("a/.wh...", "").bytes()),
            "whiteout",
        );
        fx.assert_outside_untouched();
    }

    #[test]
    fn malformed_entries_are_refused() {
        let fx = Fixture::new();
        assert_unsafe(
            fx.apply(Tar::new().pax(&[("path", b"a\0b")]).file("x", "").bytes()),
            "NUL",
        );
        assert_unsafe(
            fx.apply(
                Tar::new()
                    .pax(&[("linkpath", b"a\0b")])
                    .symlink("x", "y")
                    .bytes(),
            ),
            "NUL",
        );
        assert_unsafe(fx.apply(Tar::new().file(".", "").bytes()), "rootfs itself");
        assert_unsafe(
            fx.apply(Tar::new().symlink("/", "x").bytes()),
            "rootfs itself",
        );
        assert_unsafe(
            fx.apply(Tar::new().hard_link("x", "/").bytes()),
            "rootfs itself",
        );
        let err = fx
            .apply(
                Tar::new()
                    .entry(EntryType::new(b'V'), "volume", "", 0o644, b"")
                    .bytes(),
            )
            .unwrap_err();
        assert!(matches!(err, UnpackError::Unsupported { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            r#"layer entry "volume": unsupported entry type 'V'"#
        );
        let err = fx.apply(Tar::new().symlink("x", "").bytes()).unwrap_err();
        assert!(matches!(err, UnpackError::Invalid { .. }), "{err:?}");
        assert!(!fx.exists("x"));
        fx.assert_outside_untouched();
    }

    #[test]
    fn deep_trees_are_removed_without_recursion() {
        let fx = Fixture::new();
        // A lower tree 1500 levels deep, with a file and a symlink out at every level: the walk
        // climbs back through `..` with one descriptor, whatever the depth.
        let mut deep = fx.path("deep");
        for _ in 0..1500 {
            fs::create_dir(&deep).unwrap();
            fs::write(deep.join("f"), "x").unwrap();
            std::os::unix::fs::symlink(&fx.canary, deep.join("escape")).unwrap();
            deep = deep.join("d");
        }
        fx.apply(Tar::new().file(".wh.deep", "").bytes()).unwrap();
        assert!(!fx.exists("deep"));
        fx.assert_outside_untouched();
    }
}
