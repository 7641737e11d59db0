//! The syscalls of re-owning a tree: an fd-relative walk that never follows
//! a symlink and never crosses a mount point (`statx` mount IDs, so a bind
//! mount from the same file system is not entered either), and per inode
//! `fchownat(AT_SYMLINK_NOFOLLOW)`, POSIX ACL and `security.capability`
//! xattrs read and written through an `O_PATH` descriptor (special files
//! are never opened for reading or writing).

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use nix::dir::Dir;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;

use crate::model::shift::{InodeChange, InodeFacts};

pub const XATTR_ACL_ACCESS: &str = "system.posix_acl_access";
pub const XATTR_ACL_DEFAULT: &str = "system.posix_acl_default";
pub const XATTR_CAPS: &str = "security.capability";

/// Deeper trees are refused (each level holds a directory descriptor).
pub const MAX_DEPTH: usize = 400;

/// What `statx` says of one directory entry.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub uid: u32,
    pub gid: u32,
    /// Type and permission bits.
    pub mode: u32,
    pub ino: u64,
    pub nlink: u32,
    pub dev: (u32, u32),
    pub mnt_id: u64,
}

impl Stat {
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
    pub fn is_regular(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
}

/// One inode met by the walk: its directory, its name there (empty for
/// the walk's root, addressed through its own descriptor), and its path
/// below the root.
pub struct Entry<'a> {
    pub dir: BorrowedFd<'a>,
    pub name: &'a CStr,
    pub rel: &'a [u8],
    pub stat: Stat,
}

impl Entry<'_> {
    /// The path as the container sees it under `root` (`/` or `/data`).
    pub fn display(&self, root: &str) -> String {
        let rel = crate::model::shift::escape_path(self.rel);
        if rel.is_empty() {
            root.to_string()
        } else if root.ends_with('/') {
            format!("{root}{rel}")
        } else {
            format!("{root}/{rel}")
        }
    }

    fn chown_flags(&self) -> libc::c_int {
        let empty = if self.name.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            0
        };
        libc::AT_SYMLINK_NOFOLLOW | empty
    }
}

fn statx_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> nix::Result<Stat> {
    // SAFETY: statx is plain zeroable data.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated, `stx` is a valid out-buffer, `dir`
    // is a live descriptor for the duration of the call.
    let rc = unsafe {
        libc::statx(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags,
            libc::STATX_BASIC_STATS | libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    if rc != 0 {
        return Err(nix::errno::Errno::last());
    }
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(nix::errno::Errno::ENOTSUP);
    }
    Ok(Stat {
        uid: stx.stx_uid,
        gid: stx.stx_gid,
        mode: u32::from(stx.stx_mode),
        ino: stx.stx_ino,
        nlink: stx.stx_nlink,
        dev: (stx.stx_dev_major, stx.stx_dev_minor),
        mnt_id: stx.stx_mnt_id,
    })
}

/// Walks `root` depth-first, directories before their entries, calling
/// `visit` for every inode on the root's mount (the root included).
/// Returns the paths below the root that are mount points and were not
/// entered.
pub fn walk(root: &Path, visit: &mut dyn FnMut(&Entry<'_>) -> Result<()>) -> Result<Vec<Vec<u8>>> {
    let fd: OwnedFd = nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("{}: cannot open the directory to re-own", root.display()))?;
    walk_fd(fd, root, visit)
}

/// [`walk`] from an open directory (`root` names it in messages).
pub fn walk_fd(
    fd: OwnedFd,
    root: &Path,
    visit: &mut dyn FnMut(&Entry<'_>) -> Result<()>,
) -> Result<Vec<Vec<u8>>> {
    let stat = statx_at(fd.as_fd(), c"", libc::AT_EMPTY_PATH)
        .with_context(|| format!("{}: statx", root.display()))?;
    let mut skipped = Vec::new();
    visit(&Entry {
        dir: fd.as_fd(),
        name: c"",
        rel: b"",
        stat,
    })?;
    walk_dir(fd, b"", stat.mnt_id, 0, visit, &mut skipped)
        .with_context(|| format!("re-owning {}", root.display()))?;
    Ok(skipped)
}

fn walk_dir(
    fd: OwnedFd,
    rel: &[u8],
    mnt_id: u64,
    depth: usize,
    visit: &mut dyn FnMut(&Entry<'_>) -> Result<()>,
    skipped: &mut Vec<Vec<u8>>,
) -> Result<()> {
    if depth >= MAX_DEPTH {
        bail!(
            "{}: directories nested deeper than {MAX_DEPTH} levels",
            String::from_utf8_lossy(rel)
        );
    }
    let names: Vec<CString> = {
        let dup = nix::unistd::dup(&fd)?;
        let mut dir = Dir::from_fd(dup).map_err(|e| anyhow!("{}: {e}", show(rel)))?;
        dir.iter()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect()
    };
    for name in names {
        let child_rel = join(rel, name.as_bytes());
        let stat = match statx_at(
            fd.as_fd(),
            &name,
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
        ) {
            Ok(s) => s,
            // Gone since the listing: nothing to re-own.
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => bail!("{}: statx: {e}", show(&child_rel)),
        };
        if stat.mnt_id != mnt_id {
            skipped.push(child_rel);
            continue;
        }
        visit(&Entry {
            dir: fd.as_fd(),
            name: &name,
            rel: &child_rel,
            stat,
        })
        .with_context(|| show(&child_rel))?;
        if stat.is_dir() {
            let sub = openat(
                fd.as_fd(),
                name.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| anyhow!("{}: open: {e}", show(&child_rel)))?;
            walk_dir(sub, &child_rel, mnt_id, depth + 1, visit, skipped)?;
        }
    }
    Ok(())
}

fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = rel.to_vec();
    if !v.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

fn show(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}

/// An `O_PATH` descriptor of the entry itself (never following a symlink)
/// and its `/proc/self/fd/N` path, for the xattr and chmod calls that have
/// no fd-relative form on older kernels.
struct PathFd {
    fd: OwnedFd,
    proc: CString,
}

fn path_fd(e: &Entry<'_>) -> Result<PathFd> {
    let fd: OwnedFd = if e.name.is_empty() {
        nix::unistd::dup(e.dir)?
    } else {
        openat(
            e.dir,
            e.name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?
    };
    let st = statx_at(fd.as_fd(), c"", libc::AT_EMPTY_PATH)?;
    if st.ino != e.stat.ino || st.dev != e.stat.dev {
        bail!("changed while it was re-owned");
    }
    let proc = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    Ok(PathFd { fd, proc })
}

fn get_xattr(p: &PathFd, name: &str) -> Result<Option<Vec<u8>>> {
    let cname = CString::new(name)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: both strings are NUL-terminated; `buf` is writable for
        // its length.
        let n = unsafe {
            libc::getxattr(
                p.proc.as_ptr(),
                cname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(usize::try_from(n).unwrap_or(0));
            return Ok(Some(buf));
        }
        match nix::errno::Errno::last() {
            nix::errno::Errno::ENODATA | nix::errno::Errno::EOPNOTSUPP => return Ok(None),
            nix::errno::Errno::ERANGE if buf.len() < 65536 => buf.resize(buf.len() * 4, 0),
            e => bail!("getxattr {name}: {e}"),
        }
    }
}

fn set_xattr(p: &PathFd, name: &str, value: &[u8]) -> Result<()> {
    let cname = CString::new(name)?;
    // SAFETY: both strings are NUL-terminated; `value` is readable for its
    // length.
    let rc = unsafe {
        libc::setxattr(
            p.proc.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        bail!("setxattr {name}: {}", nix::errno::Errno::last());
    }
    Ok(())
}

/// Reads what the decision needs of one inode.
pub fn read_inode(e: &Entry<'_>) -> Result<InodeFacts> {
    let mut f = InodeFacts {
        uid: e.stat.uid,
        gid: e.stat.gid,
        mode: e.stat.mode,
        is_dir: e.stat.is_dir(),
        is_symlink: e.stat.is_symlink(),
        ..InodeFacts::default()
    };
    if f.is_symlink {
        return Ok(f);
    }
    let p = path_fd(e)?;
    f.acl_access = get_xattr(&p, XATTR_ACL_ACCESS)?;
    if f.is_dir {
        f.acl_default = get_xattr(&p, XATTR_ACL_DEFAULT)?;
    }
    if e.stat.is_regular() {
        f.cap = get_xattr(&p, XATTR_CAPS)?;
    }
    Ok(f)
}

/// Applies one inode's change: chown without following a symlink, then
/// what the chown cleared (set-ID bits, the capability), then the ACLs.
pub fn apply_inode(e: &Entry<'_>, c: &InodeChange) -> Result<()> {
    if let Some((uid, gid)) = c.owner {
        // SAFETY: `name` is NUL-terminated and `dir` is live; the flags
        // keep a symlink from being followed.
        let rc = unsafe {
            libc::fchownat(
                e.dir.as_raw_fd(),
                e.name.as_ptr(),
                uid,
                gid,
                e.chown_flags(),
            )
        };
        if rc != 0 {
            bail!("chown to {uid}:{gid}: {}", nix::errno::Errno::last());
        }
    }
    if c.mode.is_none() && c.cap.is_none() && c.acl_access.is_none() && c.acl_default.is_none() {
        return Ok(());
    }
    let p = path_fd(e)?;
    if let Some(mode) = c.mode {
        // SAFETY: the path is NUL-terminated; it names the O_PATH
        // descriptor held in `p`, so exactly this inode.
        let rc = unsafe { libc::chmod(p.proc.as_ptr(), mode) };
        if rc != 0 {
            bail!("chmod {mode:o}: {}", nix::errno::Errno::last());
        }
    }
    if let Some(cap) = &c.cap {
        set_xattr(&p, XATTR_CAPS, cap)?;
    }
    if let Some(a) = &c.acl_access {
        set_xattr(&p, XATTR_ACL_ACCESS, a)?;
    }
    if let Some(a) = &c.acl_default {
        set_xattr(&p, XATTR_ACL_DEFAULT, a)?;
    }
    drop(p.fd);
    Ok(())
}

/// The directory `rel` below `root`, reached one component at a time
/// without following a symlink, and whether it is a mount point of its own
/// (another mount than `root`'s); `None` when it is not there.
pub fn open_below(root: &Path, rel: &str) -> Result<Option<(OwnedFd, bool)>> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir: OwnedFd = nix::fcntl::open(root, flags, Mode::empty())
        .with_context(|| format!("{}: open", root.display()))?;
    let mnt = statx_at(dir.as_fd(), c"", libc::AT_EMPTY_PATH)?.mnt_id;
    for part in rel.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Ok(None);
        }
        let name = CString::new(part)?;
        dir = match openat(dir.as_fd(), name.as_c_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(
                nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR | nix::errno::Errno::ELOOP,
            ) => return Ok(None),
            Err(e) => bail!("{}/{rel}: {e}", root.display()),
        };
    }
    let own = statx_at(dir.as_fd(), c"", libc::AT_EMPTY_PATH)?.mnt_id != mnt;
    Ok(Some((dir, own)))
}

/// The directory holding `rel` below `root`, reached one component at a
/// time without following a symlink or leaving the root's mount, and the
/// entry's name and stat; `None` when it is gone. For resuming an inode in
/// flight.
pub fn reopen(root: &Path, rel: &[u8]) -> Result<Option<(OwnedFd, CString, Stat)>> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir: OwnedFd = nix::fcntl::open(root, flags, Mode::empty())
        .with_context(|| format!("{}: open", root.display()))?;
    let mnt = statx_at(dir.as_fd(), c"", libc::AT_EMPTY_PATH)?.mnt_id;
    let parts: Vec<&[u8]> = rel
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty())
        .collect();
    let Some((last, parents)) = parts.split_last() else {
        return Ok(None);
    };
    for part in parents {
        let name = CString::new(*part)?;
        dir = match openat(dir.as_fd(), name.as_c_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(
                nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR | nix::errno::Errno::ELOOP,
            ) => return Ok(None),
            Err(e) => bail!("{}: {e}", show(rel)),
        };
        if statx_at(dir.as_fd(), c"", libc::AT_EMPTY_PATH)?.mnt_id != mnt {
            return Ok(None);
        }
    }
    let name = CString::new(*last)?;
    match statx_at(
        dir.as_fd(),
        &name,
        libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
    ) {
        Ok(st) if st.mnt_id == mnt => Ok(Some((dir, name, st))),
        Ok(_) | Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => bail!("{}: {e}", show(rel)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn walks_everything_once_without_following_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::write(r.join("a/b/f"), "x").unwrap();
        std::fs::hard_link(r.join("a/b/f"), r.join("a/h")).unwrap();
        symlink("/etc", r.join("a/l")).unwrap();
        std::fs::set_permissions(r.join("a/b/f"), std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut seen = Vec::new();
        let skipped = walk(r, &mut |e| {
            seen.push((
                String::from_utf8_lossy(e.rel).into_owned(),
                e.stat.is_symlink(),
            ));
            Ok(())
        })
        .unwrap();
        seen.sort();
        assert_eq!(
            seen,
            [
                (String::new(), false),
                ("a".into(), false),
                ("a/b".into(), false),
                ("a/b/f".into(), false),
                ("a/h".into(), false),
                ("a/l".into(), true),
            ]
        );
        assert!(skipped.is_empty());
    }

    #[test]
    fn reads_no_xattrs_of_a_symlink_and_sees_none_on_a_plain_file() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), "x").unwrap();
        symlink("/nonexistent", t.path().join("l")).unwrap();
        let mut facts = Vec::new();
        walk(t.path(), &mut |e| {
            facts.push(read_inode(e)?);
            Ok(())
        })
        .unwrap();
        assert_eq!(facts.len(), 3);
        assert!(facts
            .iter()
            .all(|f| f.cap.is_none() && f.acl_default.is_none()));
    }
}
