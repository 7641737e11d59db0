//! The syscalls of replug without restart: is a container running, LXC's
//! interface for its device cgroup (`lxc-cgroup`: the v1 `devices`
//! controller, or the BPF program LXC keeps on cgroup v2 through its command
//! socket), a detached mount of the new node (a bind of the host node, or a
//! private node made in a detached tmpfs), and a child that enters only the
//! container's mount namespace, as host root, to move it into place or take
//! it away. Never through `/proc/<pid>/root`.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::CloneFlags;
use nix::sys::wait::waitpid;
use nix::unistd::ForkResult;

use crate::model::hotplug::Source;
use crate::paths::{Paths, Vmid};
use crate::sys::ns::close_fds_except;
use crate::sys::proc::{fork, SingleThreaded};

/// True while LXC has a cgroup for the container (it exists from the start
/// until the container stopped): a `stat`, nothing opened.
pub fn running(vmid: Vmid) -> bool {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .any(|root| {
            [
                format!("lxc/{vmid}"),
                format!("lxc.payload.{vmid}"),
                format!("lxc.payload/{vmid}"),
            ]
            .iter()
            .any(|n| Path::new(root).join(n).is_dir())
        })
}

/// Where `lxc-cgroup` is: Proxmox's and Debian's path, else `PATH`.
fn lxc_cgroup_bin() -> PathBuf {
    let p = PathBuf::from("/usr/bin/lxc-cgroup");
    if p.exists() {
        p
    } else {
        PathBuf::from("lxc-cgroup")
    }
}

/// `lxc-cgroup -n <vmid> <key> <rule>` (`devices.allow` or `devices.deny`),
/// bounded to 5 s. LXC writes the v1 `devices` controller's file, or on
/// cgroup v2 asks the container's monitor to update its BPF device program
/// (`LXC_CMD_ADD_BPF_DEVICE_CGROUP`), as Proxmox's `devN` hotplug does.
pub fn lxc_cgroup(vmid: Vmid, key: &str, rule: &str) -> Result<()> {
    let mut child = Command::new(lxc_cgroup_bin())
        .args(["-n", &vmid.to_string(), key, rule])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run lxc-cgroup (is lxc installed?)")?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("lxc-cgroup -n {vmid} {key} '{rule}' did not finish within 5 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if !status.success() {
        let mut err = String::new();
        if let Some(e) = child.stderr.take() {
            let _ = e.take(4096).read_to_string(&mut err);
        }
        bail!(
            "lxc-cgroup -n {vmid} {key} '{rule}' failed ({status}): {}",
            err.trim()
        );
    }
    Ok(())
}

const OPEN_TREE_CLONE: u32 = 1;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
const FSOPEN_CLOEXEC: u32 = 1;
const FSCONFIG_CMD_CREATE: u32 = 6;
const FSMOUNT_CLOEXEC: u32 = 1;

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| anyhow!("{s:?} holds a NUL byte"))
}

/// A new fd from a syscall's return value.
fn fd_from(r: libc::c_long, what: &str) -> Result<OwnedFd> {
    if r < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| what.to_string());
    }
    let fd = RawFd::try_from(r).map_err(|_| anyhow!("{what}: fd out of range"))?;
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `open_tree(dirfd, name, OPEN_TREE_CLONE)`: a detached bind of one node.
fn open_tree(dirfd: RawFd, name: &str) -> Result<OwnedFd> {
    let c = cstr(name)?;
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as u32 | libc::AT_SYMLINK_NOFOLLOW as u32;
    // SAFETY: a valid dirfd (or AT_FDCWD), a NUL-terminated path and flags.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, dirfd, c.as_ptr(), flags) };
    fd_from(r, &format!("open_tree {name}"))
}

/// Checks that a detached mount is the char device `major:minor`.
fn expect_char(fd: &OwnedFd, major: u32, minor: u32, what: &str) -> Result<()> {
    let st = nix::sys::stat::fstat(fd.as_fd()).with_context(|| format!("fstat {what}"))?;
    let is_chr = st.st_mode & libc::S_IFMT == libc::S_IFCHR;
    if !is_chr || st.st_rdev != libc::makedev(major, minor) {
        bail!("{what} is no longer char device {major}:{minor} (it changed since it was resolved)");
    }
    Ok(())
}

/// A detached mount of the node to put in the container: a bind of the
/// host node, or a private node in a detached tmpfs (mknod, chown, chmod:
/// Proxmox's `devN` node, without a file on the host).
pub fn source_mount(paths: &Paths, source: &Source) -> Result<OwnedFd> {
    match source {
        Source::Bind {
            host_node,
            major,
            minor,
        } => {
            let host = paths.host(host_node);
            let host = host
                .to_str()
                .ok_or_else(|| anyhow!("{} is not UTF-8", host.display()))?;
            let fd = open_tree(libc::AT_FDCWD, host)?;
            expect_char(&fd, *major, *minor, host_node)?;
            Ok(fd)
        }
        Source::Private {
            major,
            minor,
            uid,
            gid,
            mode,
        } => {
            let tmpfs = cstr("tmpfs")?;
            // SAFETY: a NUL-terminated filesystem name and flags.
            let r = unsafe { libc::syscall(libc::SYS_fsopen, tmpfs.as_ptr(), FSOPEN_CLOEXEC) };
            let fs = fd_from(r, "fsopen tmpfs")?;
            // SAFETY: FSCONFIG_CMD_CREATE takes no key or value.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_fsconfig,
                    fs.as_raw_fd(),
                    FSCONFIG_CMD_CREATE,
                    std::ptr::null::<libc::c_char>(),
                    std::ptr::null::<libc::c_void>(),
                    0,
                )
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error()).context("fsconfig tmpfs create");
            }
            // SAFETY: an fs context fd, flags, no mount attributes.
            let r = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
            let mnt = fd_from(r, "fsmount tmpfs")?;
            let name = cstr("node")?;
            let dev = libc::makedev(*major, *minor);
            // SAFETY: a valid dirfd, a NUL-terminated name, a char-device mode.
            let r = unsafe {
                libc::mknodat(mnt.as_raw_fd(), name.as_ptr(), libc::S_IFCHR | 0o600, dev)
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error()).context("mknod in a detached tmpfs");
            }
            // SAFETY: as above; the node was just made and is not a link.
            let r = unsafe {
                libc::fchownat(
                    mnt.as_raw_fd(),
                    name.as_ptr(),
                    *uid,
                    *gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error()).context("chown the private node");
            }
            // SAFETY: as above.
            let r = unsafe { libc::fchmodat(mnt.as_raw_fd(), name.as_ptr(), *mode & 0o7777, 0) };
            if r != 0 {
                return Err(std::io::Error::last_os_error()).context("chmod the private node");
            }
            let fd = open_tree(mnt.as_raw_fd(), "node")?;
            expect_char(&fd, *major, *minor, "the private node")?;
            Ok(fd)
        }
    }
}

/// Puts `src` (from [`source_mount`]) at `ct_path` in the container whose
/// init `pidfd` pins: whatever is mounted there is detached first, a
/// missing mount point is made (an empty file, parents 0755, owned by
/// `root_ids`: the host IDs of the container's root).
pub fn place(pidfd: &OwnedFd, root_ids: (u32, u32), ct_path: &str, src: &OwnedFd) -> Result<()> {
    let src = src.as_raw_fd();
    in_mount_ns(
        pidfd,
        root_ids,
        &[src],
        ct_path,
        true,
        move |parent, leaf| {
            detach_all(ct_path)?;
            ensure_leaf(parent, leaf)?;
            let to = CString::new(leaf).map_err(|_| "NUL in the path".to_string())?;
            let empty = CString::default();
            // SAFETY: a detached mount fd with an empty path, and a checked
            // directory fd with a plain name in it.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_move_mount,
                    src,
                    empty.as_ptr(),
                    parent.as_raw_fd(),
                    to.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                )
            };
            if r != 0 {
                return Err(format!(
                    "move_mount onto {ct_path}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(())
        },
    )
}

/// Detaches whatever is mounted at `ct_path` in the container and unlinks
/// the leaf when it is a file or a device node: nothing stays that could
/// open a device by the old numbers.
pub fn remove(pidfd: &OwnedFd, root_ids: (u32, u32), ct_path: &str) -> Result<()> {
    in_mount_ns(pidfd, root_ids, &[], ct_path, false, move |parent, leaf| {
        detach_all(ct_path)?;
        let name = CString::new(leaf).map_err(|_| "NUL in the path".to_string())?;
        match nix::sys::stat::fstatat(
            parent.as_fd(),
            leaf,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(format!("stat {ct_path}: {e}")),
            Ok(st) => {
                let t = st.st_mode & libc::S_IFMT;
                if t == libc::S_IFREG || t == libc::S_IFCHR || t == libc::S_IFBLK {
                    // SAFETY: a checked directory fd and a plain name.
                    if unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), 0) } != 0 {
                        return Err(format!(
                            "unlink {ct_path}: {}",
                            std::io::Error::last_os_error()
                        ));
                    }
                }
                Ok(())
            }
        }
    })
}

/// Unmounts every mount stacked at `path` (lazily, never following a
/// final symlink).
fn detach_all(path: &str) -> Result<(), String> {
    for _ in 0..32 {
        match nix::mount::umount2(
            path,
            nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
        ) {
            Ok(()) => {}
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(format!("umount {path}: {e}")),
        }
    }
    Err(format!("{path}: more than 32 mounts stacked"))
}

/// Makes sure `leaf` exists under `parent` as a file or device to mount on.
fn ensure_leaf(parent: &OwnedFd, leaf: &str) -> Result<(), String> {
    match nix::sys::stat::fstatat(
        parent.as_fd(),
        leaf,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => {
            let t = st.st_mode & libc::S_IFMT;
            if t == libc::S_IFREG || t == libc::S_IFCHR {
                Ok(())
            } else {
                Err(format!(
                    "{leaf} exists and is neither a file nor a char device; not mounting over it"
                ))
            }
        }
        Err(nix::errno::Errno::ENOENT) => nix::fcntl::openat(
            parent.as_fd(),
            leaf,
            nix::fcntl::OFlag::O_CREAT
                | nix::fcntl::OFlag::O_EXCL
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_WRONLY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map(drop)
        .map_err(|e| format!("create the mount point {leaf}: {e}")),
        Err(e) => Err(format!("stat {leaf}: {e}")),
    }
}

/// Opens the parent directory of `ct_path` from `/` one component at a
/// time, never following a symlink, making missing directories (0755)
/// when `make_dirs`, else `None` when one is missing.
fn open_parent(ct_path: &str, make_dirs: bool) -> Result<Option<(OwnedFd, String)>, String> {
    let rest = ct_path
        .strip_prefix('/')
        .ok_or_else(|| format!("{ct_path} is not absolute"))?;
    let mut parts: Vec<&str> = rest.split('/').collect();
    let leaf = parts.pop().filter(|l| !l.is_empty()).ok_or("no leaf")?;
    let dir_flags = nix::fcntl::OFlag::O_PATH
        | nix::fcntl::OFlag::O_DIRECTORY
        | nix::fcntl::OFlag::O_NOFOLLOW
        | nix::fcntl::OFlag::O_CLOEXEC;
    let mut dir = nix::fcntl::open("/", dir_flags, nix::sys::stat::Mode::empty())
        .map_err(|e| format!("open /: {e}"))?;
    for p in parts {
        if p.is_empty() || p == "." || p == ".." {
            return Err(format!("{ct_path} has '.', '..' or empty parts"));
        }
        if make_dirs {
            match nix::sys::stat::mkdirat(
                dir.as_fd(),
                p,
                nix::sys::stat::Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(format!("mkdir {p} in {ct_path}: {e}")),
            }
        }
        dir = match nix::fcntl::openat(dir.as_fd(), p, dir_flags, nix::sys::stat::Mode::empty()) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENOENT) if !make_dirs => return Ok(None),
            Err(e) => return Err(format!("{ct_path}: {p} is not a plain directory ({e})")),
        };
    }
    Ok(Some((dir, leaf.to_string())))
}

/// Forks a child that enters the container's mount namespace only (it
/// stays host root: the mounts it moves are the host's), takes the
/// container root's host IDs as its filesystem IDs (a file made in an
/// unprivileged container's `/dev` must be owned by a mapped ID), opens the
/// parent of `ct_path` without following symlinks, and runs `job`. The
/// child is killed at 5 s.
fn in_mount_ns<F>(
    pidfd: &OwnedFd,
    root_ids: (u32, u32),
    keep: &[RawFd],
    ct_path: &str,
    make_dirs: bool,
    job: F,
) -> Result<()>
where
    F: FnOnce(&OwnedFd, &str) -> Result<(), String>,
{
    let proof = SingleThreaded::check().map_err(|e| anyhow!(e))?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe2")?;
    // The child runs only our own code and leaves with `_exit`.
    match fork(&proof).context("fork")? {
        ForkResult::Child => {
            drop(rd);
            let mut k = keep.to_vec();
            k.extend([wr.as_raw_fd(), pidfd.as_raw_fd()]);
            close_fds_except(&k);
            // SAFETY: alarm only arms a timer; SIGALRM's default ends us.
            unsafe { libc::alarm(5) };
            let result = (|| {
                // SAFETY: PR_SET_DUMPABLE takes a plain integer.
                unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
                nix::sched::setns(pidfd.as_fd(), CloneFlags::CLONE_NEWNS)
                    .map_err(|e| format!("setns into the container's mount namespace: {e}"))?;
                nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
                // SAFETY: setfsgid/setfsuid only change this process's
                // filesystem IDs; they cannot fail in a way that matters
                // here (a wrong ID shows as EOVERFLOW on create).
                unsafe {
                    libc::setfsgid(root_ids.1);
                    libc::setfsuid(root_ids.0);
                }
                match open_parent(ct_path, make_dirs)? {
                    Some((parent, leaf)) => job(&parent, &leaf),
                    // Removing from a directory that is not there: done.
                    None => Ok(()),
                }
            })();
            let mut pipe = File::from(wr);
            let code = match result {
                Ok(()) => 0,
                Err(e) => {
                    let _ = pipe.write_all(e.as_bytes());
                    1
                }
            };
            drop(pipe);
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut msg = String::new();
            let _ = File::from(rd).take(4096).read_to_string(&mut msg);
            let status = waitpid(child, None).context("waitpid")?;
            match status {
                nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
                _ if !msg.is_empty() => Err(anyhow!(msg)),
                other => Err(anyhow!("the mount child ended with {other:?}")),
            }
        }
    }
}
