//! Host file access under `PCT_PASSTHROUGH_ROOT`: reads that never block
//! and take regular files only, lookups that never leave the root, and the
//! one atomic-replace helper every write of the tool goes through.
//!
//! Under the real root (`/`) paths are looked up as the kernel does. Under
//! any other root every lookup is `openat2(RESOLVE_IN_ROOT)` below a
//! descriptor of the root: symlinks are resolved as if the root were `/`
//! (an absolute link lands inside it, `..` stops at it), so nothing the
//! tool reads or writes can be outside it, and a path handed in that is not
//! under it is refused.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, readlinkat, renameat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::model::text::{self, Limits};
use crate::paths::Paths;

/// Set to `1` by tests: the writer kills itself with SIGKILL right before
/// the rename, to prove a crash leaves the old file intact.
pub const CRASH_BEFORE_RENAME_ENV: &str = "PCT_PASSTHROUGH_TEST_CRASH_BEFORE_RENAME";

/// How many symlinks a write target may go through, as the kernel's limit.
const MAX_LINKS: usize = 40;

/// What a crash may cost a replaced file. Each writer says which it needs:
/// every fsync is a disk round trip, and a start pays for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The file is flushed before the rename and its directory after it
    /// (where the filesystem has fsync; pmxcfs has none): a crash leaves
    /// the old file or the new one, complete, and keeps the new one. For
    /// what nothing regenerates: the state while the node file holds all of
    /// it (before `/etc/pve` takes its part).
    Flush,
    /// The file is flushed before the rename, its directory is not: as
    /// shadow writes `/etc/subuid` and `/etc/subgid`. A crash leaves the old
    /// file or the new one, complete, and may lose the rename: for a file
    /// every start checks and writes again when it falls short.
    FlushData,
    /// No fsync at all: a crash may lose the new file. Only for a file that
    /// is regenerated anyway, or one pmxcfs commits itself: Proxmox writes
    /// `/var/lib/lxc/<vmid>/config` afresh at every start and never flushes
    /// it either; the node state's reports come again with each post-start;
    /// the container config and the cluster state are on pmxcfs.
    Volatile,
}

/// The open flags of every read: a FIFO must not block the open, a tty
/// must not become the controlling terminal, no descriptor leaks to a child.
const READ_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_NOCTTY);

fn io_err(e: Errno) -> std::io::Error {
    std::io::Error::from(e)
}

/// `path` relative to the root, or `None` under the real root (plain
/// lookups). A path not under the root is refused.
fn in_root<'p>(paths: &Paths, path: &'p Path) -> Result<Option<&'p Path>> {
    if paths.is_real_root() {
        return Ok(None);
    }
    // The common case, `<root>/<rest>` as `Paths::host` builds it.
    let (p, r) = (
        path.as_os_str().as_bytes(),
        paths.root().as_os_str().as_bytes(),
    );
    if let Some(rest) = p.strip_prefix(r).and_then(|t| t.strip_prefix(b"/")) {
        if !rest.is_empty() && !rest.starts_with(b"/") {
            return Ok(Some(Path::new(OsStr::from_bytes(rest))));
        }
    }
    match path.strip_prefix(paths.root()) {
        Ok(rel) if rel.as_os_str().is_empty() => Ok(Some(Path::new("."))),
        Ok(rel) => Ok(Some(rel)),
        Err(_) => Err(anyhow!(
            "{}: outside PCT_PASSTHROUGH_ROOT {}; refused, every host path must be under the root",
            path.display(),
            paths.root().display()
        )),
    }
}

fn open_root(paths: &Paths) -> Result<OwnedFd> {
    openat(
        nix::fcntl::AT_FDCWD,
        paths.root(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err)
    .with_context(|| {
        format!(
            "PCT_PASSTHROUGH_ROOT {}: cannot open the directory",
            paths.root().display()
        )
    })
}

/// Bumped whenever this process closes descriptors it did not open itself
/// ([`crate::sys::ns::close_fds_except`] in a forked child): a cached root
/// descriptor from before may be closed, or its number reused.
static FD_EPOCH: AtomicU64 = AtomicU64::new(0);

/// Says that descriptors this process held may be gone: every cached root
/// descriptor is forgotten (never closed: its number may be another file's
/// now) and opened again on next use.
pub fn descriptors_closed() {
    FD_EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// The root's `O_PATH` descriptor for a [`Paths`] under a temp root, opened
/// on first use and kept: every lookup under the root starts from it. A
/// clone starts empty, so a clone made for a forked worker never shares a
/// descriptor its parent may close; and one the process's descriptors were
/// closed under ([`descriptors_closed`]) is opened again.
#[derive(Default)]
pub struct RootFd(Mutex<Option<(u64, OwnedFd)>>);

impl Clone for RootFd {
    fn clone(&self) -> RootFd {
        RootFd::default()
    }
}

impl std::fmt::Debug for RootFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootFd")
    }
}

/// Runs `f` with the root's descriptor, opening it first if needed. `Ok(None)`
/// when the root does not exist (it holds no files).
fn with_root<R>(paths: &Paths, f: impl FnOnce(BorrowedFd) -> R) -> Result<Option<R>> {
    let epoch = FD_EPOCH.load(Ordering::Relaxed);
    let mut slot = paths
        .root_fd()
        .0
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if slot.as_ref().is_some_and(|(then, _)| *then != epoch) {
        if let Some((_, stale)) = slot.take() {
            // Closed already, or its number is someone else's now.
            std::mem::forget(stale);
        }
    }
    if slot.is_none() {
        match open_root(paths) {
            Ok(fd) => *slot = Some((epoch, fd)),
            // A missing root holds no files: the same answer as a missing
            // file under it.
            Err(_) if !paths.root().exists() => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    let (_, fd) = slot.as_ref().expect("opened above");
    Ok(Some(f(fd.as_fd())))
}

/// Opens `path` (a full host path, root included) inside the root. The
/// error is the bare errno, for callers that branch on `ENOENT`.
fn open_raw(
    paths: &Paths,
    path: &Path,
    flags: OFlag,
    mode: Mode,
) -> Result<Result<OwnedFd, Errno>> {
    match in_root(paths, path)? {
        None => Ok(openat(nix::fcntl::AT_FDCWD, path, flags, mode)),
        Some(rel) => {
            let how = OpenHow::new()
                .flags(flags)
                .mode(mode)
                .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
            Ok(with_root(paths, |root| openat2_in_root(root, rel, how))?
                .unwrap_or(Err(Errno::ENOENT)))
        }
    }
}

/// How often a lookup inside a root is tried again when the kernel says
/// a rename elsewhere raced its `..` check.
const EAGAIN_TRIES: usize = 64;

/// Runs an `openat2` with `RESOLVE_IN_ROOT` until it does not say `EAGAIN`,
/// at most [`EAGAIN_TRIES`] times. `EAGAIN` means a rename anywhere on the
/// filesystem raced a `..` on the way (a udev by-id link is `../../ttyUSB0`,
/// and other starts rename files all the time): the man page's answer is to
/// try again. For the host's root here and a container's in `sys::ns`.
pub(crate) fn retry_raced_lookup<T>(
    mut open: impl FnMut() -> Result<T, Errno>,
) -> Result<T, Errno> {
    let mut tries = 1;
    loop {
        match open() {
            Err(Errno::EAGAIN) if tries < EAGAIN_TRIES => tries += 1,
            r => return r,
        }
    }
}

/// `openat2` below the root's descriptor, raced lookups tried again.
fn openat2_in_root(root: BorrowedFd, rel: &Path, how: OpenHow) -> Result<OwnedFd, Errno> {
    retry_raced_lookup(|| openat2(root, rel, how))
}

/// Opens `path` inside the root; `Ok(None)` if it does not exist.
pub fn open_host(paths: &Paths, path: &Path, flags: OFlag, mode: Mode) -> Result<Option<File>> {
    match open_raw(paths, path, flags, mode)? {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(Errno::ENOENT) => Ok(None),
        // A FIFO opened for writing with no reader, a socket, a device
        // without a driver: say which.
        Err(Errno::ENXIO) => {
            let st = open_raw(paths, path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())?
                .and_then(|fd| nix::sys::stat::fstat(&fd));
            let mode = st.map_or(SFlag::S_IFSOCK.bits(), |st| st.st_mode);
            require_regular(path, mode)?;
            Err(io_err(Errno::ENXIO)).with_context(|| format!("{}: cannot open", path.display()))
        }
        Err(e) => Err(io_err(e)).with_context(|| format!("{}: cannot open", path.display())),
    }
}

/// What a file that should be regular is instead, for messages.
fn kind_of(mode: u32) -> &'static str {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFIFO => "a FIFO (named pipe)",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFLNK => "a symbolic link",
        _ => "not a regular file",
    }
}

fn is_regular(mode: u32) -> bool {
    mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits()
}

/// Refuses anything but a regular file, naming what it is and the fix.
pub fn require_regular(path: &Path, mode: u32) -> Result<()> {
    if is_regular(mode) {
        return Ok(());
    }
    Err(anyhow!(
        "{}: {}, not a regular file; replace it with a regular file",
        path.display(),
        kind_of(mode)
    ))
}

/// Reads at most `limits.max_bytes + 1` bytes of `path`. `Ok(None)` if it
/// does not exist. Never blocks on a FIFO: the open does not wait for a
/// writer, and anything but a regular file is refused before the read.
pub fn read_bytes(paths: &Paths, path: &Path, limits: Limits) -> Result<Option<Vec<u8>>> {
    let Some(file) = open_host(paths, path, READ_FLAGS, Mode::empty())? else {
        return Ok(None);
    };
    let st = nix::sys::stat::fstat(&file)
        .map_err(io_err)
        .with_context(|| format!("{}: cannot stat", path.display()))?;
    require_regular(path, st.st_mode)?;
    let size = usize::try_from(st.st_size).unwrap_or(usize::MAX);
    let mut buf = Vec::with_capacity(size.min(limits.max_bytes) + 1);
    read_to_end_sized(&file, &mut buf, size, limits.max_bytes as u64 + 1)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    if buf.len() > limits.max_bytes {
        // The read stopped one byte past the limit: the size is fstat's.
        let size = u64::try_from(st.st_size)
            .ok()
            .filter(|&n| n > limits.max_bytes as u64);
        let error = text::TextError::TooLarge {
            size,
            max: limits.max_bytes,
        };
        let file = path.display().to_string();
        return Err(text::FileTextError { file, error }.into());
    }
    Ok(Some(buf))
}

/// Reads at most `max` bytes of a regular file whose size was `size` at
/// its `fstat`. A first read that returns exactly that size, short of the
/// room asked for, is the whole file: no second read just to see the end.
/// Otherwise (it grew, or a filesystem reports 0) it reads on to the end.
fn read_to_end_sized(file: &File, buf: &mut Vec<u8>, size: usize, max: u64) -> std::io::Result<()> {
    let mut limited = file.take(max);
    if size > 0 && (size as u64) < max {
        let room = buf.capacity().max(size + 1);
        buf.resize(room, 0);
        let n = loop {
            match limited.read(&mut buf[..room]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        let n = n.inspect_err(|_| buf.clear())?;
        buf.truncate(n);
        if n == size {
            return Ok(());
        }
    }
    limited.read_to_end(buf).map(drop)
}

/// Reads `path` as checked text. `Ok(None)` if it does not exist.
pub fn read_text(paths: &Paths, path: &Path, limits: Limits) -> Result<Option<String>> {
    let Some(bytes) = read_bytes(paths, path, limits)? else {
        return Ok(None);
    };
    text::decode(&path.display().to_string(), &bytes, limits)?;
    // decode() proved it is UTF-8.
    Ok(Some(
        String::from_utf8(bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?,
    ))
}

/// A name in a directory opened inside the root. Every call through it is
/// relative to the directory's descriptor: nothing is looked up twice.
#[derive(Debug)]
pub struct DirEntry {
    dir: File,
    name: OsString,
    /// The path, for messages.
    shown: PathBuf,
}

impl DirEntry {
    pub fn dir(&self) -> &File {
        &self.dir
    }

    pub fn name(&self) -> &OsStr {
        &self.name
    }

    /// The path, for messages.
    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// `<name><suffix>`, a sibling in the same directory.
    pub fn sibling(&self, suffix: &str) -> OsString {
        let mut s = self.name.clone();
        s.push(suffix);
        s
    }

    /// The path of a sibling, for messages.
    pub fn sibling_path(&self, name: &OsStr) -> PathBuf {
        self.shown.with_file_name(name)
    }

    /// `fstatat` of `name` in the directory, not following a symlink;
    /// `Ok(None)` if it does not exist.
    pub fn stat(&self, name: &OsStr) -> Result<Option<FileStat>> {
        match fstatat(&self.dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(io_err(e))
                .with_context(|| format!("{}: cannot stat", self.sibling_path(name).display())),
        }
    }

    /// Removes `name` from the directory; a missing one is no error.
    pub fn remove(&self, name: &OsStr) -> Result<()> {
        match unlinkat(&self.dir, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io_err(e))
                .with_context(|| format!("{}: cannot remove", self.sibling_path(name).display())),
        }
    }

    /// Renames `from` over `to`, both in the directory.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> Result<()> {
        renameat(&self.dir, from, &self.dir, to)
            .map_err(io_err)
            .with_context(|| {
                format!(
                    "{}: cannot rename into place",
                    self.sibling_path(to).display()
                )
            })
    }

    /// Creates `name`, which must not exist, for writing (`O_EXCL`, never
    /// through a symlink).
    pub fn create_new(&self, name: &OsStr, mode: u32) -> Result<File> {
        self.try_create_new(name, mode)
            .map_err(io_err)
            .with_context(|| format!("{}: cannot create", self.sibling_path(name).display()))
    }

    /// [`DirEntry::create_new`] with the bare errno (`EEXIST`).
    pub fn try_create_new(&self, name: &OsStr, mode: u32) -> Result<File, Errno> {
        openat(
            &self.dir,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .map(File::from)
    }

    /// Opens `name` for reading, never through a symlink and never
    /// blocking; `Ok(None)` if it does not exist.
    pub fn open_read(&self, name: &OsStr) -> Result<Option<File>> {
        match openat(
            &self.dir,
            name,
            READ_FLAGS | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(io_err(e))
                .with_context(|| format!("{}: cannot open", self.sibling_path(name).display())),
        }
    }
}

/// Opens the directory of `path` inside the root. `path` itself is not
/// followed: it may be missing, or a symlink.
pub fn open_parent(paths: &Paths, path: &Path) -> Result<DirEntry> {
    open_parent_or_make(paths, path, false).map(|(entry, _)| entry)
}

/// The directory of `path` (see [`open_parent`]), made first when it is
/// missing and `make` says so; true when it was made.
fn open_parent_or_make(paths: &Paths, path: &Path, make: bool) -> Result<(DirEntry, bool)> {
    let name = match path.components().next_back() {
        Some(Component::Normal(n)) => n.to_os_string(),
        _ => bail!("{}: not a file path", path.display()),
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let (mut made, mut tried) = (false, false);
    let dir = loop {
        match open_raw(paths, parent, flags, Mode::empty())? {
            Ok(fd) => break File::from(fd),
            Err(Errno::ENOENT) if make && !tried => {
                tried = true;
                made = create_missing_dir_all(paths, parent)?;
            }
            Err(Errno::ENOENT) => bail!(
                "{}: the directory {} does not exist{}; create it",
                path.display(),
                parent.display(),
                if paths.is_real_root() {
                    String::new()
                } else {
                    format!(" under PCT_PASSTHROUGH_ROOT {}", paths.root().display())
                }
            ),
            Err(e) => {
                return Err(io_err(e))
                    .with_context(|| format!("{}: cannot open the directory", parent.display()))
            }
        }
    };
    let entry = DirEntry {
        dir,
        name,
        shown: path.to_path_buf(),
    };
    Ok((entry, made))
}

/// The file a write to `path` must replace, as a directory and a name:
/// symlinks are followed (inside the root), so a write to
/// `/etc/pve/lxc/105.conf` lands in `/etc/pve/nodes/<node>/lxc`, and a
/// dangling link is written where it points.
pub fn resolve_write_target(paths: &Paths, path: &Path) -> Result<DirEntry> {
    Ok(resolve_write_target_stat(paths, path, &mut None)?.0)
}

/// [`resolve_write_target`] with the target's `lstat` (not a link), or
/// `None` when it does not exist yet: one lookup for both. With
/// `made: Some(_)`, a missing directory of `path` itself (not of a link's
/// target) is made first, and `made` says whether it was.
fn resolve_write_target_stat(
    paths: &Paths,
    path: &Path,
    made: &mut Option<bool>,
) -> Result<(DirEntry, Option<FileStat>)> {
    let mut current = path.to_path_buf();
    for hop in 0..=MAX_LINKS {
        let entry = match made {
            Some(m) if hop == 0 => {
                let (entry, was_made) = open_parent_or_make(paths, &current, true)?;
                *m = was_made;
                entry
            }
            _ => open_parent(paths, &current)?,
        };
        let st = entry.stat(&entry.name)?;
        let is_link = st
            .as_ref()
            .is_some_and(|st| st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFLNK.bits());
        if !is_link {
            return Ok((entry, st));
        }
        let target = PathBuf::from(
            readlinkat(&entry.dir, entry.name.as_os_str())
                .map_err(io_err)
                .with_context(|| format!("{}: cannot read the link", current.display()))?,
        );
        current = if target.is_absolute() {
            // As if the root were `/`.
            paths
                .root()
                .join(target.strip_prefix("/").unwrap_or(&target))
        } else {
            current.with_file_name("").join(target)
        };
    }
    bail!(
        "{}: more than {MAX_LINKS} symbolic links; point it at the file directly",
        path.display()
    )
}

/// `mkdir -p` inside the root; true when it made a directory. One lookup
/// when the directory is there; else only the missing tail is made, each
/// level with one `mkdirat` below its parent's descriptor.
pub fn create_dir_all(paths: &Paths, dir: &Path) -> Result<bool> {
    make_dirs(paths, dir, true)
}

/// [`create_dir_all`] for a directory a lookup just found missing: that
/// lookup is not made again.
pub fn create_missing_dir_all(paths: &Paths, dir: &Path) -> Result<bool> {
    make_dirs(paths, dir, false)
}

fn make_dirs(paths: &Paths, dir: &Path, look_first: bool) -> Result<bool> {
    let Some(rel) = in_root(paths, dir)? else {
        if dir.is_dir() {
            return Ok(false);
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        return Ok(true);
    };
    let missing_root = || {
        anyhow!(
            "{}: cannot create: PCT_PASSTHROUGH_ROOT {} does not exist",
            dir.display(),
            paths.root().display()
        )
    };
    let mut made = false;
    make_dir_in_root(paths, rel, &mut made, false, look_first)?
        .ok_or_else(missing_root)?
        .map(drop)
        .map_err(io_err)
        .with_context(|| format!("{}: not a directory", dir.display()))?;
    Ok(made)
}

/// Opens `rel` (relative to the root) as a directory, making it and any
/// missing parent first. `Ok(None)` when the root itself is missing. A
/// directory this call made is opened only when `open_made` (a parent).
/// Without `look_first`, `rel` is known missing and not looked up.
fn make_dir_in_root(
    paths: &Paths,
    rel: &Path,
    made: &mut bool,
    open_made: bool,
    look_first: bool,
) -> Result<Option<Result<Option<OwnedFd>, Errno>>> {
    let found = if look_first {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        match with_root(paths, |root| openat2_in_root(root, rel, how))? {
            Some(found) => found,
            None => return Ok(None),
        }
    } else {
        Err(Errno::ENOENT)
    };
    let name = match (found, rel.components().next_back()) {
        (Err(Errno::ENOENT), Some(Component::Normal(name))) => name,
        (r, _) => return Ok(Some(r.map(Some))),
    };
    let parent = match rel.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent_fd = match make_dir_in_root(paths, parent, made, true, true)? {
        Some(Ok(Some(fd))) => fd,
        other => return Ok(other),
    };
    match mkdirat(&parent_fd, name, Mode::from_bits_truncate(0o755)) {
        Ok(()) if !open_made => {
            *made = true;
            return Ok(Some(Ok(None)));
        }
        Ok(()) => *made = true,
        // Made by someone else since the lookup.
        Err(Errno::EEXIST) => {}
        Err(e) => {
            return Err(io_err(e))
                .with_context(|| format!("{}: cannot create", paths.root().join(rel).display()))
        }
    }
    Ok(Some(
        openat(
            &parent_fd,
            name,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map(Some),
    ))
}

/// True when the file system holding `path` (or its nearest existing
/// ancestor) is mounted read-only: `/etc/pve` of a read-only bind, or a
/// remount. Symlinks are followed.
pub fn is_read_only(path: &Path) -> Result<bool> {
    let mut at = path;
    loop {
        match nix::sys::statvfs::statvfs(at) {
            Ok(st) => return Ok(st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY)),
            Err(Errno::ENOENT) => match at.parent() {
                Some(p) => at = p,
                None => return Ok(false),
            },
            Err(e) => {
                return Err(io_err(e)).with_context(|| format!("{}: cannot statvfs", at.display()))
            }
        }
    }
}

/// Errors that mean "this filesystem does not do fsync" (pmxcfs and others).
fn fsync_unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EROFS
    )
}

fn sync_tolerant(fd: impl AsFd, what: &Path) -> Result<()> {
    match nix::unistd::fsync(fd) {
        Ok(()) => Ok(()),
        Err(e) if fsync_unsupported(e) => Ok(()),
        Err(e) => Err(io_err(e)).with_context(|| format!("{}: fsync failed", what.display())),
    }
}

/// The umask [`normalize_umask`] set, once it has: `u32::MAX` before.
static UMASK: AtomicU32 = AtomicU32::new(u32::MAX);

/// Sets the process umask to 022, as Proxmox runs hookscripts, and
/// remembers it: a file the tool makes can then get its final mode at
/// creation instead of through a later `fchmod`. Called once by `main`.
pub fn normalize_umask() {
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    UMASK.store(0o022, Ordering::Relaxed);
}

/// True when a file created with `mode` gets exactly `mode` under the
/// umask this process is known to have.
fn mode_survives_umask(mode: u32) -> bool {
    let umask = UMASK.load(Ordering::Relaxed);
    umask != u32::MAX && mode & !0o777 == 0 && mode & umask == 0
}

/// Atomically replaces `path` (inside the root) with `contents`: a temp
/// file `<name>.tmp.<pid>` created in the target's (real) directory, the
/// old mode and owner, a rename over the target, and the flushes that
/// `durability` asks for. A new file gets `new_mode`. Never truncates in
/// place; the temp file never survives a failure.
pub fn replace_file(
    paths: &Paths,
    path: &Path,
    contents: &[u8],
    new_mode: u32,
    durability: Durability,
) -> Result<()> {
    replace_file_with(paths, path, contents, new_mode, durability, |_, _| Ok(()))
}

/// [`replace_file`] into a directory made first (`mkdir -p`) when it is
/// missing: one lookup when it is there. A directory it made goes again
/// when the write fails.
pub fn replace_file_making_dir(
    paths: &Paths,
    path: &Path,
    contents: &[u8],
    new_mode: u32,
    durability: Durability,
) -> Result<()> {
    let mut made = Some(false);
    let written = replace_in(
        paths,
        path,
        contents,
        new_mode,
        durability,
        &mut made,
        |_, _| Ok(()),
    );
    if written.is_err() && made == Some(true) {
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
    written
}

/// [`replace_file`], calling `before_rename` with the target (and its stat
/// from before, if it was there) once the new
/// contents are complete (and flushed), right before the rename: the last
/// moment to keep the old file, as shadow's backup does. A failure there
/// leaves the target as it was, and no temp file.
pub fn replace_file_with(
    paths: &Paths,
    path: &Path,
    contents: &[u8],
    new_mode: u32,
    durability: Durability,
    before_rename: impl FnOnce(&DirEntry, Option<&FileStat>) -> Result<()>,
) -> Result<()> {
    replace_in(
        paths,
        path,
        contents,
        new_mode,
        durability,
        &mut None,
        before_rename,
    )
}

/// [`replace_file_with`]; `made` as [`resolve_write_target_stat`] takes it.
fn replace_in(
    paths: &Paths,
    path: &Path,
    contents: &[u8],
    new_mode: u32,
    durability: Durability,
    made: &mut Option<bool>,
    before_rename: impl FnOnce(&DirEntry, Option<&FileStat>) -> Result<()>,
) -> Result<()> {
    let (target, old) = resolve_write_target_stat(paths, path, made)?;
    if let Some(st) = &old {
        require_regular(target.path(), st.st_mode)?;
    }
    let mode = old.as_ref().map_or(new_mode, |st| st.st_mode & 0o7777);
    // Made with its final mode when the umask cannot narrow it (no fchmod).
    let create_mode = if mode_survives_umask(mode) {
        mode
    } else {
        0o600
    };
    let tmp = target.sibling(&format!(".tmp.{}", std::process::id()));
    let file = match target.try_create_new(&tmp, create_mode) {
        // A leftover from a crashed run with our pid.
        Err(Errno::EEXIST) => {
            target.remove(&tmp)?;
            target.create_new(&tmp, create_mode)?
        }
        r => r
            .map_err(io_err)
            .with_context(|| format!("{}: cannot create", target.sibling_path(&tmp).display()))?,
    };
    let result = write_temp_and_rename(
        &target,
        file,
        &tmp,
        contents,
        (mode != create_mode).then_some(mode),
        old.as_ref(),
        durability,
        before_rename,
    );
    if result.is_err() {
        let _ = target.remove(&tmp);
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn write_temp_and_rename(
    target: &DirEntry,
    mut file: File,
    tmp: &OsStr,
    contents: &[u8],
    chmod: Option<u32>,
    old: Option<&FileStat>,
    durability: Durability,
    before_rename: impl FnOnce(&DirEntry, Option<&FileStat>) -> Result<()>,
) -> Result<()> {
    let tmp_path = target.sibling_path(tmp);
    file.write_all(contents)
        .with_context(|| format!("{}: write failed", tmp_path.display()))?;
    if let Some(st) = old {
        let now = nix::sys::stat::fstat(&file)
            .map_err(io_err)
            .with_context(|| format!("{}: cannot stat", tmp_path.display()))?;
        if now.st_uid != st.st_uid || now.st_gid != st.st_gid {
            fchown(
                &file,
                Some(Uid::from_raw(st.st_uid)),
                Some(Gid::from_raw(st.st_gid)),
            )
            .map_err(io_err)
            .with_context(|| {
                format!(
                    "{}: cannot keep owner {}:{}",
                    tmp_path.display(),
                    st.st_uid,
                    st.st_gid
                )
            })?;
        }
    }
    if let Some(mode) = chmod {
        fchmod(&file, Mode::from_bits_truncate(mode))
            .map_err(io_err)
            .with_context(|| format!("{}: cannot set mode {mode:o}", tmp_path.display()))?;
    }
    if durability != Durability::Volatile {
        sync_tolerant(&file, &tmp_path)?;
    }
    drop(file);
    if std::env::var_os(CRASH_BEFORE_RENAME_ENV).is_some_and(|v| v == "1") {
        // Test hook: die as a crash would.
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    before_rename(target, old)?;
    target.rename(tmp, target.name())?;
    if durability == Durability::Flush {
        sync_tolerant(
            &target.dir,
            target.path().parent().unwrap_or(Path::new("/")),
        )?;
    }
    Ok(())
}

/// True when `name` is `<base>.<digits>`, the shape of shadow's link-lock
/// temp files: for tests and checks that none survive.
pub fn is_pid_suffixed(name: &OsStr, base: &str) -> bool {
    let b = name.as_bytes();
    b.strip_prefix(base.as_bytes())
        .and_then(|r| r.strip_prefix(b"."))
        .is_some_and(|d| !d.is_empty() && d.iter().all(u8::is_ascii_digit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn real() -> Paths {
        Paths::with_root("/")
    }

    #[test]
    fn replaces_and_keeps_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        replace_file(&real(), &p, b"new", 0o644, Durability::Flush).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn a_leftover_temp_file_with_our_pid_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let tmp = d.path().join(format!("f.tmp.{}", std::process::id()));
        fs::write(&tmp, "from a crashed run").unwrap();
        replace_file(&real(), &p, b"new", 0o644, Durability::Volatile).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert!(!tmp.exists());
    }

    #[test]
    fn new_file_gets_new_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("n");
        replace_file(&real(), &p, b"x", 0o644, Durability::Volatile).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o644);
    }

    #[test]
    fn writes_through_a_symlinked_directory_and_file() {
        for paths in [real(), Paths::with_root("/tmp")] {
            let d = tempfile::tempdir_in("/tmp").unwrap();
            let real = d.path().join("nodes/pve1/lxc");
            fs::create_dir_all(&real).unwrap();
            symlink("nodes/pve1/lxc", d.path().join("lxc")).unwrap();
            fs::write(real.join("105.conf"), "a").unwrap();
            replace_file(
                &paths,
                &d.path().join("lxc/105.conf"),
                b"b",
                0o640,
                Durability::Flush,
            )
            .unwrap();
            assert_eq!(fs::read(real.join("105.conf")).unwrap(), b"b");
            assert!(fs::symlink_metadata(d.path().join("lxc"))
                .unwrap()
                .file_type()
                .is_symlink());

            symlink("lxc/105.conf", d.path().join("link.conf")).unwrap();
            replace_file(
                &paths,
                &d.path().join("link.conf"),
                b"c",
                0o640,
                Durability::Flush,
            )
            .unwrap();
            assert_eq!(fs::read(real.join("105.conf")).unwrap(), b"c");
            assert!(fs::symlink_metadata(d.path().join("link.conf"))
                .unwrap()
                .file_type()
                .is_symlink());
        }
    }

    #[test]
    fn a_dangling_link_is_written_where_it_points() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::with_root(d.path());
        fs::create_dir_all(d.path().join("etc")).unwrap();
        // Absolute, as if the root were `/`.
        symlink("/etc/real", d.path().join("etc/link")).unwrap();
        replace_file(
            &paths,
            &d.path().join("etc/link"),
            b"x",
            0o644,
            Durability::Flush,
        )
        .unwrap();
        assert_eq!(fs::read(d.path().join("etc/real")).unwrap(), b"x");
    }

    #[test]
    fn a_link_loop_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::with_root(d.path());
        symlink("b", d.path().join("a")).unwrap();
        symlink("a", d.path().join("b")).unwrap();
        let e = replace_file(&paths, &d.path().join("a"), b"x", 0o644, Durability::Flush)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 40 symbolic links"), "{e}");
    }

    #[test]
    fn a_path_outside_the_root_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let paths = Paths::with_root(d.path());
        let p = other.path().join("f");
        let e = replace_file(&paths, &p, b"x", 0o644, Durability::Flush)
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside PCT_PASSTHROUGH_ROOT"), "{e}");
        let e = read_text(&paths, &p, Limits::HOST_FILE)
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside PCT_PASSTHROUGH_ROOT"), "{e}");
        assert!(!p.exists());
    }

    #[test]
    fn replace_making_dir_makes_only_what_is_missing_and_undoes_it_on_failure() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::with_root(d.path());
        let file = d.path().join("var/lib/tool/105.json");
        replace_file_making_dir(&paths, &file, b"one", 0o644, Durability::Volatile).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"one");
        replace_file_making_dir(&paths, &file, b"two", 0o644, Durability::Volatile).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"two");
        // The temp file's name is too long: the write fails after the
        // directory was made, and the directory goes again.
        let long = d.path().join("var/lib/other").join("n".repeat(250));
        let e = replace_file_making_dir(&paths, &long, b"x", 0o644, Durability::Volatile)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot create"), "{e}");
        assert!(!d.path().join("var/lib/other").exists());
        assert!(d.path().join("var/lib/tool").is_dir());
        // A directory that was there stays, written or not.
        let long = d.path().join("var/lib/tool").join("n".repeat(250));
        assert!(replace_file_making_dir(&paths, &long, b"x", 0o644, Durability::Volatile).is_err());
        assert_eq!(fs::read(&file).unwrap(), b"two");
    }

    #[test]
    fn read_text_limits_and_missing() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::with_root(d.path());
        assert!(read_text(&paths, &d.path().join("none"), Limits::HOST_FILE)
            .unwrap()
            .is_none());
        let p = d.path().join("big");
        fs::write(&p, vec![b'a'; 2 << 20]).unwrap();
        let e = read_text(&paths, &p, Limits::PVE_CONFIG)
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than"), "{e}");
        let e = read_text(&paths, d.path(), Limits::PVE_CONFIG)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a directory, not a regular file"), "{e}");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fifo");
        nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600)).unwrap();
        for paths in [real(), Paths::with_root(d.path())] {
            let e = read_text(&paths, &p, Limits::HOST_FILE)
                .unwrap_err()
                .to_string();
            assert_eq!(
                e,
                format!(
                    "{}: a FIFO (named pipe), not a regular file; replace it with a regular file",
                    p.display()
                )
            );
            let e = replace_file(&paths, &p, b"x", 0o644, Durability::Flush)
                .unwrap_err()
                .to_string();
            assert!(e.contains("a FIFO (named pipe), not a regular file"), "{e}");
        }
    }

    #[test]
    fn create_dir_all_stays_in_the_root() {
        let d = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let paths = Paths::with_root(d.path());
        fs::create_dir_all(d.path().join("var")).unwrap();
        symlink(out.path(), d.path().join("var/lib")).unwrap();
        let want = d.path().join("var/lib/pct-passthrough");
        // The link points to a directory missing under the root.
        let e = create_dir_all(&paths, &want).unwrap_err().to_string();
        assert!(e.contains("var/lib"), "{e}");
        assert_eq!(
            fs::read_dir(out.path()).unwrap().count(),
            0,
            "nothing outside"
        );
        let inside = d.path().join(out.path().strip_prefix("/").unwrap());
        fs::create_dir_all(&inside).unwrap();
        create_dir_all(&paths, &want).unwrap();
        assert!(inside.join("pct-passthrough").is_dir());
        assert_eq!(
            fs::read_dir(out.path()).unwrap().count(),
            0,
            "nothing outside"
        );
    }

    fn cached_root_fd(paths: &Paths) -> Option<i32> {
        use std::os::fd::AsRawFd;
        let slot = paths.root_fd().0.lock().unwrap();
        slot.as_ref().map(|(_, fd)| fd.as_raw_fd())
    }

    #[test]
    fn the_root_is_opened_once_and_a_clone_opens_its_own() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), "x").unwrap();
        let paths = Paths::with_root(d.path());
        assert_eq!(cached_root_fd(&paths), None);
        read_text(&paths, &d.path().join("f"), Limits::HOST_FILE).unwrap();
        let fd = cached_root_fd(&paths).expect("cached");
        read_text(&paths, &d.path().join("f"), Limits::HOST_FILE).unwrap();
        assert_eq!(cached_root_fd(&paths), Some(fd), "kept, not reopened");
        let clone = paths.clone();
        assert_eq!(cached_root_fd(&clone), None, "a clone shares no descriptor");
        assert_eq!(clone, paths);
    }

    /// As in a forked worker after `close_fds_except`: the cached number is
    /// closed and reused by another file, which the tool must neither use
    /// as the root nor close.
    #[test]
    fn a_root_fd_closed_under_the_cache_is_forgotten_not_reused() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), "root's file").unwrap();
        let paths = Paths::with_root(d.path());
        read_text(&paths, &d.path().join("f"), Limits::HOST_FILE).unwrap();
        let fd = cached_root_fd(&paths).expect("cached");
        // SAFETY: closes the cache's own descriptor, as close_fds_except
        // would; the cache never closes it again (it is forgotten below).
        assert_eq!(unsafe { libc::close(fd) }, 0);
        let other = tempfile::tempdir().unwrap();
        // Likely the same number, now another directory.
        let taken = File::open(other.path()).unwrap();
        // What close_fds_except says after closing (it would close this
        // test harness's own descriptors too).
        descriptors_closed();
        let text = read_text(&paths, &d.path().join("f"), Limits::HOST_FILE).unwrap();
        assert_eq!(text.as_deref(), Some("root's file"));
        assert!(
            nix::sys::stat::fstat(&taken).is_ok(),
            "the other file's descriptor is still open"
        );
    }

    #[test]
    fn create_dir_all_in_a_missing_root_names_it() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::with_root(d.path().join("gone"));
        let e = create_dir_all(&paths, &d.path().join("gone/var/lib"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn pid_suffixed_names() {
        assert!(is_pid_suffixed(OsStr::new("subgid.123"), "subgid"));
        assert!(!is_pid_suffixed(OsStr::new("subgid.lock"), "subgid"));
        assert!(!is_pid_suffixed(OsStr::new("subgid."), "subgid"));
        assert!(!is_pid_suffixed(OsStr::new("subgid-"), "subgid"));
    }
}
