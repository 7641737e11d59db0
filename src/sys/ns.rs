//! The one place the tool enters a container: fork a single-threaded child,
//! setns (user, then mount) through the init's pidfd, become the container's
//! root with only the capabilities the job needs, run the job, send its
//! result to the parent through a pipe, `_exit`. Also the hardened opens the
//! job uses on the container's (or a rootfs's) files.
//!
//! What the child protects against: a container's symlinks, `..`, FIFOs,
//! devices and huge files in the paths it reads; files swapped while it
//! writes (every write is relative to one checked directory fd and verified
//! after the rename); directories or files on FUSE or network filesystems
//! (refused before anything inside them is looked up, by a check that never
//! asks the filesystem itself, see [`check_fs`]); files mounted over the
//! ones it edits (refused). What it does not protect against: a local
//! filesystem on a block device that a process serves (NBD, ublk, a loop
//! device over a FUSE file), or any other way a kernel task can block for
//! good; for those the parent bounds every wait, kills the child at the
//! bound and gives up on one SIGKILL cannot end ([`TimedOut`]), so the
//! worker always finishes and records the failure.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use caps::{CapSet, Capability, CapsHashSet};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Gid, Pid, Uid};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::sys::proc::{fork, pidfd_open, SingleThreaded};

/// Largest result a job may send back.
const MAX_RESULT: usize = 4 << 20;

/// Which container to enter.
pub enum Target<'a> {
    /// A running container, through its init's pidfd.
    Running {
        pidfd: &'a OwnedFd,
        /// Enter the user namespace too (unprivileged containers).
        userns: bool,
    },
    /// A rootfs mounted at this path in our own mount namespace, before the
    /// container's init runs (the `lxc.hook.mount` case: we already are in
    /// the container's namespaces): `chroot` into it.
    Rootfs(&'a Path),
}

/// Closes `[first, last]`; falls back to one `close` per fd up to the
/// fd limit on kernels without `close_range` (before 5.9).
fn close_span(first: u32, last: u32) {
    // SAFETY: close_range only closes fds; callers exclude the ones in use.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if r == 0 {
        return;
    }
    // SAFETY: sysconf has no preconditions.
    let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    let max = u32::try_from(max)
        .unwrap_or(1 << 20)
        .min(last.saturating_add(1));
    for fd in first..max {
        if let Ok(fd) = i32::try_from(fd) {
            // SAFETY: closing an fd nobody else in this process uses; EBADF is fine.
            unsafe { libc::close(fd) };
        }
    }
}

/// Closes every fd from 3 up except `keep`.
pub fn close_fds_except(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep.iter().filter_map(|&f| u32::try_from(f).ok()).collect();
    keep.sort_unstable();
    let mut first = 3u32;
    for k in keep.into_iter().filter(|&k| k >= 3) {
        if k > first {
            close_span(first, k - 1);
        }
        first = k + 1;
    }
    close_span(first, u32::MAX);
    crate::sys::fs::descriptors_closed();
}

/// Keeps `keep` in the effective and permitted sets and drops every other
/// capability, the bounding set included.
fn drop_caps_except(keep: &[Capability]) -> Result<(), String> {
    let keep_set: CapsHashSet = keep.iter().copied().collect();
    for cap in caps::all() {
        if keep_set.contains(&cap) {
            continue;
        }
        if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| format!("cannot drop {cap} from the bounding set: {e}"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("cannot clear ambient caps: {e}"))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| format!("cannot clear inheritable caps: {e}"))?;
    caps::set(None, CapSet::Effective, &keep_set)
        .map_err(|e| format!("cannot set effective caps: {e}"))?;
    caps::set(None, CapSet::Permitted, &keep_set)
        .map_err(|e| format!("cannot set permitted caps: {e}"))?;
    Ok(())
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> Result<(), String> {
    // SAFETY: PR_SET_DUMPABLE / PR_SET_NO_NEW_PRIVS take a plain integer.
    let r = unsafe { libc::prctl(option, arg, 0, 0, 0) };
    if r != 0 {
        return Err(format!(
            "prctl({option}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Everything between fork and the job, in the child.
fn enter(target: &Target, keep_caps: &[Capability]) -> Result<(), String> {
    prctl(libc::PR_SET_DUMPABLE, 0)?;
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;
    match target {
        Target::Running { pidfd, userns } => {
            // Shed the host's supplementary groups while we still may.
            nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups([]) on the host: {e}"))?;
            let flags = if *userns {
                CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS
            } else {
                CloneFlags::CLONE_NEWNS
            };
            // setns with a pidfd enters all namespaces in one step, user first.
            nix::sched::setns(pidfd.as_fd(), flags)
                .map_err(|e| format!("setns into the container: {e}"))?;
        }
        Target::Rootfs(path) => {
            // No fd to the outside stays open (closed above), and
            // CAP_SYS_CHROOT goes with the other capabilities below, so the
            // chroot cannot be left.
            nix::unistd::chdir(*path).map_err(|e| format!("chdir {}: {e}", path.display()))?;
            nix::unistd::chroot(".").map_err(|e| format!("chroot {}: {e}", path.display()))?;
        }
    }
    nix::unistd::chdir("/").map_err(|e| format!("chdir / in the container: {e}"))?;
    match nix::unistd::setgroups(&[]) {
        // `setgroups` is "deny" in this user namespace: ours are already empty.
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(e) => return Err(format!("setgroups([]) in the container: {e}")),
    }
    let (g, u) = (Gid::from_raw(0), Uid::from_raw(0));
    nix::unistd::setresgid(g, g, g).map_err(|e| format!("setresgid(0): {e}"))?;
    nix::unistd::setresuid(u, u, u).map_err(|e| format!("setresuid(0): {e}"))?;
    drop_caps_except(keep_caps)
}

/// A container child that did not finish within its bound: killed, or
/// left behind if even SIGKILL could not end it (a task blocked in the
/// kernel, on a stalled FUSE or network filesystem for example).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    pub secs: u64,
    /// What happened to the child.
    pub child: String,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "timed out after {} s; the container child {}",
            self.secs, self.child
        )
    }
}

impl std::error::Error for TimedOut {}

/// Runs `job` inside the container as its root, holding only `keep_caps`,
/// and returns its result. The child is killed at `bound`; then the error
/// is a [`TimedOut`] (`downcast_ref` tells it apart). Refuses to fork a
/// process with more than one thread.
pub fn run_in_container<T, F>(
    target: &Target,
    keep_caps: &[Capability],
    bound: Duration,
    job: F,
) -> Result<T>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T, String>,
{
    let proof = SingleThreaded::check().map_err(|e| anyhow!(e))?;
    run_in_container_as(&proof, target, keep_caps, bound, job)
}

/// [`run_in_container`] for a caller that proves it is single-threaded.
pub fn run_in_container_as<T, F>(
    proof: &SingleThreaded,
    target: &Target,
    keep_caps: &[Capability],
    bound: Duration,
    job: F,
) -> Result<T>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T, String>,
{
    let mountinfo = open_mountinfo(target);
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe2")?;
    match fork(proof).context("fork")? {
        ForkResult::Child => {
            drop(rd);
            let mut keep = vec![wr.as_raw_fd()];
            if let Target::Running { pidfd, .. } = target {
                keep.push(pidfd.as_raw_fd());
            }
            if let Some(m) = &mountinfo {
                keep.push(m.as_raw_fd());
                MOUNTINFO.store(m.as_raw_fd(), Ordering::Relaxed);
            }
            close_fds_except(&keep);
            let result: Result<T, String> = match enter(target, keep_caps) {
                Ok(()) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
                    Ok(r) => r,
                    Err(_) => Err("the job panicked".into()),
                },
                Err(e) => Err(e),
            };
            let code = i32::from(result.is_err());
            let bytes = serde_json::to_vec(&result).unwrap_or_default();
            let mut pipe = File::from(wr);
            let _ = pipe.write_all(&bytes);
            drop(pipe);
            // SAFETY: _exit ends the child without running the parent's
            // destructors or flushing buffers it shares with the parent.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            drop(mountinfo);
            let deadline = Instant::now() + bound;
            let bytes = read_bounded(rd, deadline);
            let end = reap(child, deadline);
            let bytes = match (bytes, &end) {
                (Ok(b), ChildEnd::Exited(_)) => b,
                (Err(ReadEnd::TimedOut), _) | (_, ChildEnd::Killed(_)) => {
                    return Err(anyhow::Error::new(TimedOut {
                        secs: bound.as_secs() + u64::from(bound.subsec_nanos() > 0),
                        child: end.to_string(),
                    }))
                }
                (Err(ReadEnd::Failed(e)), _) => bail!("{e}; the child {end}"),
            };
            let result: Result<T, String> = serde_json::from_slice(&bytes).map_err(|e| {
                anyhow!("the container child sent no readable result ({e}); the child {end}")
            })?;
            result.map_err(|e| anyhow!(e))
        }
    }
}

/// Why reading the child's result stopped.
enum ReadEnd {
    TimedOut,
    Failed(String),
}

/// Reads the pipe until EOF, at most [`MAX_RESULT`] bytes, until `deadline`.
fn read_bounded(rd: OwnedFd, deadline: Instant) -> Result<Vec<u8>, ReadEnd> {
    let mut f = File::from(rd);
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadEnd::TimedOut);
        }
        let ms = u16::try_from(left.as_millis().clamp(1, 10_000)).unwrap_or(10_000);
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(ReadEnd::Failed(format!("poll: {e}"))),
        }
        let n = f
            .read(&mut buf)
            .map_err(|e| ReadEnd::Failed(format!("reading the container child's result: {e}")))?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > MAX_RESULT {
            return Err(ReadEnd::Failed(format!(
                "the container child sent more than {MAX_RESULT} bytes"
            )));
        }
    }
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ChildEnd {
    /// It exited on its own: how.
    Exited(String),
    /// It was killed at the bound, or left behind: what happened.
    Killed(String),
}

impl std::fmt::Display for ChildEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChildEnd::Exited(s) | ChildEnd::Killed(s) => f.write_str(s),
        }
    }
}

/// How long a killed child gets to die before it is given up on.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// Waits for `child` until `deadline` (polling its pidfd), then sends it
/// SIGKILL and waits [`KILL_GRACE`] more. A child still there after that
/// is stuck in the kernel: it is left to be reaped by whoever inherits it,
/// never waited for without a bound.
fn reap(child: Pid, deadline: Instant) -> ChildEnd {
    let pid = u32::try_from(child.as_raw()).unwrap_or(0);
    // Our own unreaped child: its PID cannot be reused, so the pidfd is its.
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            // Not watchable: end it now rather than leave it unbounded.
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            return ChildEnd::Killed(format!(
                "could not be watched (pidfd_open: {e}); sent SIGKILL and not waited for"
            ));
        }
    };
    if wait_exit(&pidfd, deadline) {
        return ChildEnd::Exited(exit_status(child));
    }
    // SAFETY: pidfd_send_signal with a valid pidfd, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    let sent = if r == 0 {
        "sent SIGKILL"
    } else {
        "could not be sent SIGKILL"
    };
    if wait_exit(&pidfd, Instant::now() + KILL_GRACE) {
        let _ = exit_status(child);
        return ChildEnd::Killed(format!("was killed ({sent})"));
    }
    ChildEnd::Killed(format!(
        "{sent} but is still there after {} s (blocked in the kernel, on a stalled FUSE or network filesystem for example); given up on, not waited for",
        KILL_GRACE.as_secs()
    ))
}

/// Polls `pidfd` until the process exits (true) or `deadline` (false).
fn wait_exit(pidfd: &OwnedFd, deadline: Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis().min(10_000)).unwrap_or(10_000);
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) if n > 0 => return true,
            Ok(_) if left.is_zero() => return false,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}

/// Reaps an exited child and says how it ended.
fn exit_status(child: Pid) -> String {
    match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, c)) => format!("exited with {c}"),
        Ok(WaitStatus::Signaled(_, s, _)) => format!("was killed by {s}"),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("waitpid: {e}"),
    }
}

/// The container's mount table (`/proc/<init>/mountinfo`, opened on the
/// host before the fork), in the child only; -1 elsewhere. A global
/// because the job's file helpers take no context; set once, after the
/// fork, in a single-threaded process.
static MOUNTINFO: AtomicI32 = AtomicI32::new(-1);

/// The mount table the child checks filesystems against: the container
/// init's, through the host's `/proc` (which the container cannot fake),
/// or ours for a rootfs (the mount hook already runs in the container's
/// mount namespace). `None` if it cannot be opened: then [`check_fs`] uses
/// `fstatfs`.
fn open_mountinfo(target: &Target) -> Option<OwnedFd> {
    let path = match target {
        Target::Running { pidfd, .. } => {
            let fdinfo =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
            let pid = fdinfo
                .lines()
                .find_map(|l| l.strip_prefix("Pid:"))?
                .trim()
                .parse::<u32>()
                .ok()?;
            format!("/proc/{pid}/mountinfo")
        }
        Target::Rootfs(_) => "/proc/self/mountinfo".to_string(),
    };
    File::open(path).ok().map(OwnedFd::from)
}

/// Why a filesystem type (as `/proc/*/mountinfo` names it) is refused:
/// its answers come from a process or a network peer, which can stall an
/// access for as long as it likes, with the accessing task unkillable.
pub fn refused_fs_type(fstype: &str) -> Option<&'static str> {
    let base = fstype.split('.').next().unwrap_or(fstype);
    match base {
        "fuse" | "fuseblk" | "virtiofs" => {
            Some("a FUSE filesystem, whose daemon can stall every access")
        }
        "nfs" | "nfs4" | "cifs" | "smb3" | "smbfs" | "9p" | "ceph" | "afs" | "coda" | "ncpfs"
        | "ocfs2" | "gfs2" | "lustre" | "orangefs" | "pvfs2" => {
            Some("a network filesystem, whose server can stall every access")
        }
        _ => None,
    }
}

/// [`refused_fs_type`] for an `fstatfs` `f_type`.
pub fn refused_fs_magic(magic: i64) -> Option<&'static str> {
    match magic {
        0x6573_5546 => refused_fs_type("fuse"),
        0x6969 | 0x517b | 0xfe53_4d42 | 0xff53_4d42 | 0x7375_7245 | 0x5346_414f | 0x6b41_4653
        | 0x0102_1997 | 0x00c3_6400 | 0x7461_636f | 0x0116_1970 | 0x2003_0528 => {
            refused_fs_type("nfs")
        }
        _ => None,
    }
}

/// The filesystem type of mount `id` in a mountinfo text: the field after
/// the ` - ` separator.
fn mount_fstype(mountinfo: &str, id: u64) -> Option<&str> {
    mountinfo.lines().find_map(|l| {
        let mut f = l.split(' ');
        if f.next()?.parse::<u64>().ok()? != id {
            return None;
        }
        f.skip(5).skip_while(|t| *t != "-").nth(1)
    })
}

/// The mount ID of `fd`, without asking its filesystem anything
/// (`AT_STATX_DONT_SYNC`: a FUSE daemon never sees the call).
fn mount_id(fd: RawFd) -> Result<u64, String> {
    // SAFETY: statx is a plain C struct; zeroed is valid.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx on an fd with an empty path writes into `sx` only.
    let r = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
            libc::STATX_MNT_ID,
            &mut sx,
        )
    };
    if r != 0 {
        return Err(format!("statx: {}", std::io::Error::last_os_error()));
    }
    if sx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err("this kernel does not report mount IDs (statx STATX_MNT_ID, Linux 5.8)".into());
    }
    Ok(sx.stx_mnt_id)
}

/// Refuses `fd` (shown as `what`) if it is on a FUSE or network
/// filesystem. The mount's type comes from a mount table found by the fd's
/// mount ID: in a container child the host's view of the container's table
/// (the container cannot fake it), elsewhere our own. Neither step reaches
/// the filesystem, so a stalled FUSE daemon cannot block the check itself.
/// A mount missing from the table (mounted after it was read, or detached)
/// is refused too. Only without a readable table: `fstatfs`, which a FUSE
/// daemon does answer (or not).
pub fn check_fs(fd: RawFd, what: &str) -> Result<(), String> {
    let mi = MOUNTINFO.load(Ordering::Relaxed);
    let table = if mi >= 0 {
        Some(read_mountinfo(mi)?)
    } else {
        File::open("/proc/self/mountinfo")
            .ok()
            .and_then(|f| read_mountinfo(f.as_raw_fd()).ok())
    };
    if let Some(table) = table {
        let id = mount_id(fd).map_err(|e| format!("{what}: cannot tell its filesystem: {e}"))?;
        let Some(t) = mount_fstype(&table, id) else {
            return Err(format!(
                "{what}: its mount (ID {id}) is not in the container's mount table; refused"
            ));
        };
        return match refused_fs_type(t) {
            Some(why) => Err(format!(
                "{what}: is on {}, {why}; refused, the tool only uses the container's own disk",
                crate::model::escape::escape(t)
            )),
            None => Ok(()),
        };
    }
    // SAFETY: statfs is a plain C struct; zeroed is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs on an fd writes into `st` only.
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
        return Err(format!(
            "{what}: cannot tell its filesystem: {}",
            std::io::Error::last_os_error()
        ));
    }
    match refused_fs_magic(st.f_type) {
        Some(why) => Err(format!(
            "{what}: is on {why} (f_type {:#x}); refused, the tool only uses the container's own disk",
            st.f_type
        )),
        None => Ok(()),
    }
}

/// Reads the whole mount table from `fd` (rewound: a fresh snapshot).
fn read_mountinfo(fd: RawFd) -> Result<String, String> {
    // SAFETY: the caller keeps `fd` open for the call (the child's table
    // for its whole life, kept by `close_fds_except`); ManuallyDrop never
    // closes it.
    let mut f = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    f.rewind()
        .map_err(|e| format!("the container's mount table: cannot rewind: {e}"))?;
    let mut s = String::new();
    (&*f)
        .take(8 << 20)
        .read_to_string(&mut s)
        .map_err(|e| format!("the container's mount table: cannot read: {e}"))?;
    Ok(s)
}

/// `openat2(2)`.
fn openat2(dirfd: RawFd, path: &str, flags: i32, resolve: u64) -> std::io::Result<OwnedFd> {
    let cpath = std::ffi::CString::new(path)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is a plain C struct; zeroed is a valid starting value.
    let mut oh: libc::open_how = unsafe { std::mem::zeroed() };
    oh.flags = u64::try_from(flags | libc::O_CLOEXEC).unwrap_or(0);
    oh.resolve = resolve;
    let fd = crate::sys::fs::retry_raced_lookup(|| {
        // SAFETY: openat2 reads the path and the open_how we pass with its size.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                cpath.as_ptr(),
                &oh as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            Err(nix::errno::Errno::last())
        } else {
            Ok(fd)
        }
    })
    .map_err(std::io::Error::from)?;
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: openat2 just returned this fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const NO_LINKS: u64 = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

/// The message for an open that failed on a container path.
fn open_error(path: &str, e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) => format!(
            "{path}: a symbolic link in the path (the file or a directory above it); refused, the tool does not follow links in a container"
        ),
        Some(libc::EXDEV) => format!(
            "{path}: something is mounted over it, or the path leaves the container's root; refused"
        ),
        Some(libc::ENOTDIR) => format!("{path}: a component of the path is not a directory"),
        _ => format!("{path}: cannot open: {e}"),
    }
}

/// A directory of the container opened for reading and writing its files:
/// reached one component at a time without symlinks, `..` or magic links,
/// each directory's filesystem checked ([`check_fs`]) before anything in
/// it is looked up. Every file operation is relative to this one fd and
/// never crosses a mount point, so what is read and what is written are in
/// the directory that was checked, whatever the container renames.
#[derive(Debug)]
pub struct CheckedDir {
    fd: OwnedFd,
    path: String,
}

impl CheckedDir {
    /// Opens the absolute `path`. `Ok(None)` if a component is missing.
    pub fn open(path: &str) -> Result<Option<CheckedDir>, String> {
        Self::open_at(libc::AT_FDCWD, path)
    }

    /// Opens `path`, relative to `dirfd` unless absolute.
    fn open_at(dirfd: RawFd, path: &str) -> Result<Option<CheckedDir>, String> {
        // `shown` is the path so far, for messages: "" stands for "/".
        let (start, mut shown) = if path.starts_with('/') {
            ("/", String::new())
        } else {
            (".", String::from("."))
        };
        let Some(mut dir) = step(dirfd, start, start)? else {
            return Ok(None);
        };
        for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if comp == ".." {
                return Err(format!("{path}: \"..\" in the path; refused"));
            }
            shown = format!("{shown}/{comp}");
            let Some(next) = step(dir.as_raw_fd(), comp, &shown)? else {
                return Ok(None);
            };
            dir = next;
        }
        if shown.is_empty() {
            shown.push('/');
        }
        Ok(Some(CheckedDir {
            fd: dir,
            path: shown,
        }))
    }

    /// The path shown in messages for `name` in this directory.
    fn shown(&self, name: &str) -> String {
        if self.path.ends_with('/') {
            format!("{}{name}", self.path)
        } else {
            format!("{}/{name}", self.path)
        }
    }

    /// Opens the regular file `name` for reading: not a link, not a FIFO or
    /// device, not mounted over, at most `max` bytes. `Ok(None)` if absent.
    pub fn open_file(&self, name: &str, max: usize) -> Result<Option<(File, libc::stat)>, String> {
        let shown = self.shown(name);
        check_name(name, &shown)?;
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
        let fd = match openat2(
            self.fd.as_raw_fd(),
            name,
            flags,
            NO_LINKS | libc::RESOLVE_NO_XDEV,
        ) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(open_error(&shown, &e)),
        };
        check_fs(fd.as_raw_fd(), &shown)?;
        let file = File::from(fd);
        let st = regular_file(&file, &shown, max)?;
        Ok(Some((file, st)))
    }

    /// Reads the regular file `name` whole, at most `max` bytes.
    pub fn read(&self, name: &str, max: usize) -> Result<Option<Vec<u8>>, String> {
        let Some((file, _)) = self.open_file(name, max)? else {
            return Ok(None);
        };
        read_at_most(file, &self.shown(name), max).map(Some)
    }

    /// Replaces `name` with `contents`, all relative to this directory: a
    /// new temp file (`O_CREAT|O_EXCL|O_NOFOLLOW`), the old file's mode and
    /// owner (`new_mode` for a new file), write, fsync, `renameat`, fsync of
    /// the directory. Then the file now at `name` must be the one written
    /// (same device and inode, not followed if a link): else the container
    /// swapped it, and this fails. The temp file never outlives a failure.
    pub fn replace(&self, name: &str, contents: &[u8], new_mode: u32) -> Result<(), String> {
        let shown = self.shown(name);
        check_name(name, &shown)?;
        let old = self
            .lstat(name)
            .map_err(|e| format!("{shown}: cannot stat: {e}"))?;
        if let Some(o) = &old {
            if o.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(format!("{shown}: not a regular file; refused"));
            }
        }
        let tmp = format!(".{name}.pct-passthrough.{}", std::process::id());
        let r = self.write_and_rename(&tmp, name, &shown, contents, new_mode, old.as_ref());
        if r.is_err() {
            let _ = self.unlink(&tmp);
        }
        r
    }

    fn write_and_rename(
        &self,
        tmp: &str,
        name: &str,
        shown: &str,
        contents: &[u8],
        new_mode: u32,
        old: Option<&libc::stat>,
    ) -> Result<(), String> {
        let ctmp = std::ffi::CString::new(tmp).map_err(|_| format!("{shown}: bad name"))?;
        // A leftover of a killed run with our pid.
        let _ = self.unlink(tmp);
        // SAFETY: openat with a valid dir fd and a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                ctmp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(format!(
                "{shown}: cannot create a temp file next to it: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: openat just returned this fd; nobody else owns it.
        let mut file = unsafe { File::from_raw_fd(fd) };
        file.write_all(contents)
            .map_err(|e| format!("{shown}: write failed: {e}"))?;
        let mode = old.map_or(new_mode, |o| o.st_mode & 0o7777);
        if let Some(o) = old {
            std::os::unix::fs::fchown(&file, Some(o.st_uid), Some(o.st_gid)).map_err(|e| {
                format!(
                    "{shown}: cannot keep its owner {}:{}: {e}",
                    o.st_uid, o.st_gid
                )
            })?;
        }
        nix::sys::stat::fchmod(file.as_fd(), nix::sys::stat::Mode::from_bits_truncate(mode))
            .map_err(|e| format!("{shown}: cannot set mode {mode:o}: {e}"))?;
        file.sync_all()
            .map_err(|e| format!("{shown}: fsync failed: {e}"))?;
        let written = fstat(&file).map_err(|e| format!("{shown}: cannot stat: {e}"))?;
        nix::fcntl::renameat(&self.fd, tmp, &self.fd, name)
            .map_err(|e| format!("{shown}: cannot rename into place: {e}"))?;
        // SAFETY: fsync on our own directory fd.
        if unsafe { libc::fsync(self.fd.as_raw_fd()) } != 0 {
            return Err(format!(
                "{}: fsync failed: {}",
                self.path,
                std::io::Error::last_os_error()
            ));
        }
        match self.lstat(name) {
            Ok(Some(now)) if now.st_dev == written.st_dev && now.st_ino == written.st_ino => Ok(()),
            Ok(_) => Err(format!(
                "{shown}: another file took its place right after the write (the container renamed it concurrently); the write is not in effect"
            )),
            Err(e) => Err(format!("{shown}: cannot check it after the write: {e}")),
        }
    }

    /// `fstatat(AT_SYMLINK_NOFOLLOW)`; `Ok(None)` if absent.
    fn lstat(&self, name: &str) -> nix::Result<Option<libc::stat>> {
        match nix::sys::stat::fstatat(&self.fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn unlink(&self, name: &str) -> nix::Result<()> {
        nix::unistd::unlinkat(&self.fd, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
    }
}

/// One step down: `name` in `dirfd` as an `O_PATH` fd (no filesystem
/// call), its filesystem checked, then reopened (`.`) as a real directory.
fn step(dirfd: RawFd, name: &str, shown: &str) -> Result<Option<OwnedFd>, String> {
    let p = match openat2(dirfd, name, libc::O_PATH | libc::O_DIRECTORY, NO_LINKS) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(open_error(shown, &e)),
    };
    check_fs(p.as_raw_fd(), shown)?;
    let d = openat2(
        p.as_raw_fd(),
        ".",
        libc::O_RDONLY | libc::O_DIRECTORY,
        NO_LINKS | libc::RESOLVE_NO_XDEV,
    )
    .map_err(|e| open_error(shown, &e))?;
    Ok(Some(d))
}

/// A file name inside a directory: one component.
fn check_name(name: &str, shown: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(format!("{shown}: not a file name; refused"));
    }
    Ok(())
}

fn fstat(file: &File) -> std::io::Result<libc::stat> {
    // SAFETY: fstat fills the zeroed struct for a valid fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `file` is open and `st` is writable.
    if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// Checks `file` is a regular file of at most `max` bytes.
fn regular_file(file: &File, path: &str, max: usize) -> Result<libc::stat, String> {
    let st = fstat(file).map_err(|e| format!("{path}: cannot stat: {e}"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFIFO => "a FIFO",
            libc::S_IFDIR => "a directory",
            libc::S_IFCHR => "a character device",
            libc::S_IFBLK => "a block device",
            libc::S_IFSOCK => "a socket",
            _ => "not a regular file",
        };
        return Err(format!("{path}: is {kind}, not a regular file; refused"));
    }
    let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
    if size > max as u64 {
        return Err(format!(
            "{path}: {size} bytes is larger than the {max} bytes allowed; refused"
        ));
    }
    Ok(st)
}

fn read_at_most(file: File, path: &str, max: usize) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{path}: cannot read: {e}"))?;
    if buf.len() > max {
        return Err(format!(
            "{path}: grew past {max} bytes while being read; refused"
        ));
    }
    Ok(buf)
}

/// Splits a path into its directory and its last component.
fn split_last(path: &str) -> Result<(&str, &str), String> {
    let t = path.trim_end_matches('/');
    match t.rfind('/') {
        Some(0) => Ok(("/", &t[1..])),
        Some(i) => Ok((&t[..i], &t[i + 1..])),
        None if !t.is_empty() => Ok((".", t)),
        None => Err(format!("{path}: not a file path")),
    }
}

/// How [`open_untrusted`] resolves a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// Inside the container's mount namespace: no symlink anywhere in the
    /// path, each directory checked ([`CheckedDir`]).
    NoSymlinks,
    /// Under a rootfs directory fd seen from outside: symlinks resolve as if
    /// the directory were `/` and can never leave it; no magic links.
    InRoot,
}

/// Opens `path` relative to `dirfd` (or the cwd/root for `None`) for reading
/// without following symlinks out, without blocking on a FIFO, not on a
/// FUSE or network filesystem, and only if it is a regular file of at most
/// `max` bytes. `Ok(None)` if it does not exist.
pub fn open_untrusted(
    dirfd: Option<&OwnedFd>,
    path: &str,
    how: Resolve,
    max: usize,
) -> Result<Option<(File, libc::stat)>, String> {
    let dfd = dirfd.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    match how {
        Resolve::NoSymlinks => {
            let (dir, name) = split_last(path)?;
            match CheckedDir::open_at(dfd, dir)? {
                Some(d) => d.open_file(name, max).map_err(|e| {
                    // Messages name the path as the caller gave it.
                    e.replacen(&d.shown(name), path, 1)
                }),
                None => Ok(None),
            }
        }
        Resolve::InRoot => {
            let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
            let resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
            let fd = match openat2(dfd, path, flags, resolve) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                Err(e) => return Err(open_error(path, &e)),
            };
            check_fs(fd.as_raw_fd(), path)?;
            let file = File::from(fd);
            let st = regular_file(&file, path, max)?;
            Ok(Some((file, st)))
        }
    }
}

/// Reads an untrusted file whole, at most `max` bytes.
pub fn read_untrusted(
    dirfd: Option<&OwnedFd>,
    path: &str,
    how: Resolve,
    max: usize,
) -> Result<Option<Vec<u8>>, String> {
    let Some((file, _)) = open_untrusted(dirfd, path, how, max)? else {
        return Ok(None);
    };
    read_at_most(file, path, max).map(Some)
}

/// `stat` of a device node in the container, safely: each directory
/// checked on the way ([`CheckedDir`]), the node itself opened `O_PATH`
/// (it may be a bind mount, so the last step may cross a mount) and its
/// filesystem checked before anything asks it for attributes. `Ok(None)`
/// if it does not exist.
pub fn stat_untrusted(path: &str) -> Result<Option<libc::stat>, String> {
    let (dir, name) = split_last(path)?;
    check_name(name, path)?;
    let Some(d) = CheckedDir::open(dir)? else {
        return Ok(None);
    };
    let fd = match openat2(
        d.fd.as_raw_fd(),
        name,
        libc::O_PATH | libc::O_NOFOLLOW,
        NO_LINKS,
    ) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(open_error(path, &e)),
    };
    check_fs(fd.as_raw_fd(), path)?;
    let st = fstat(&File::from(fd)).map_err(|e| format!("{path}: cannot stat: {e}"))?;
    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(open_error(
            path,
            &std::io::Error::from_raw_os_error(libc::ELOOP),
        ));
    }
    Ok(Some(st))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// The harness runs tests on threads of their own; these children only
    /// run our code and `_exit`, and glibc resets malloc's locks after fork.
    fn proof() -> SingleThreaded {
        // SAFETY: see above; the jobs print nothing through std's stdio.
        unsafe { SingleThreaded::assume() }
    }

    fn need_root() {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test needs root (chroot, setns): run it as root, as CI does"
        );
    }

    #[test]
    fn rootfs_child_is_chrooted_capability_dropped_and_bounded() {
        need_root();
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/group"), "inside:x:1:\n").unwrap();
        let target = Target::Rootfs(d.path());
        // The job sees the rootfs as `/`, with only CAP_CHOWN left.
        let (text, caps) = run_in_container_as(
            &proof(),
            &target,
            &[Capability::CAP_CHOWN],
            Duration::from_secs(10),
            || {
                let t = read_untrusted(None, "/etc/group", Resolve::NoSymlinks, 100)?
                    .ok_or("missing")?;
                let c: Vec<String> = caps::read(None, CapSet::Effective)
                    .map_err(|e| e.to_string())?
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                Ok((String::from_utf8_lossy(&t).into_owned(), c))
            },
        )
        .unwrap();
        assert_eq!(text, "inside:x:1:\n");
        assert_eq!(caps, vec!["CAP_CHOWN".to_string()]);
        // A job that hangs is killed at the bound, with an error that says so.
        let start = Instant::now();
        let e = run_in_container_as(&proof(), &target, &[], Duration::from_millis(300), || {
            std::thread::sleep(Duration::from_secs(30));
            Ok(())
        })
        .unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        let t = e.downcast_ref::<TimedOut>().expect("a TimedOut error");
        assert_eq!(t.secs, 1);
        assert_eq!(t.child, "was killed (sent SIGKILL)");
        assert!(
            e.to_string()
                .starts_with("timed out after 1 s; the container child was killed"),
            "{e}"
        );
        // A job's error comes back as the error.
        let e = run_in_container_as(&proof(), &target, &[], Duration::from_secs(5), || {
            Err::<(), String>("gave up: because".into())
        })
        .unwrap_err()
        .to_string();
        assert_eq!(e, "gave up: because");
    }

    #[test]
    fn run_in_container_refuses_a_multi_threaded_caller() {
        let _other = std::thread::spawn(|| std::thread::sleep(Duration::from_secs(2)));
        let d = tempfile::tempdir().unwrap();
        let e = run_in_container(
            &Target::Rootfs(d.path()),
            &[],
            Duration::from_secs(1),
            || Ok(()),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("threads"), "{e}");
    }

    #[test]
    fn filesystem_types_refused() {
        for t in [
            "fuse",
            "fuse.sshfs",
            "fuseblk",
            "fuse.stall",
            "nfs",
            "nfs4",
            "cifs",
            "9p",
            "ceph",
            "virtiofs",
        ] {
            assert!(refused_fs_type(t).is_some(), "{t}");
        }
        for t in [
            "ext4", "xfs", "zfs", "btrfs", "tmpfs", "overlay", "devtmpfs", "proc", "squashfs",
        ] {
            assert!(refused_fs_type(t).is_none(), "{t}");
        }
        assert!(refused_fs_magic(0x6573_5546).unwrap().contains("FUSE"));
        assert!(refused_fs_magic(0x6969).unwrap().contains("network"));
        assert!(refused_fs_magic(0xef53).is_none()); // ext4
        assert!(refused_fs_magic(0x0102_1994).is_none()); // tmpfs
        let table = "22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n\
                     42 27 0:39 / /etc rw,nosuid,nodev master:3 - fuse.stall stall rw,user_id=0\n\
                     43 27 0:40 / /a\\040b rw - ext4 /dev/sda1 rw\n";
        assert_eq!(mount_fstype(table, 42), Some("fuse.stall"));
        assert_eq!(mount_fstype(table, 43), Some("ext4"));
        assert_eq!(mount_fstype(table, 22), Some("proc"));
        assert_eq!(mount_fstype(table, 4), None);
        // Our own tree is not refused.
        let root = File::open("/").unwrap();
        check_fs(root.as_raw_fd(), "/").unwrap();
    }

    #[test]
    fn replace_is_relative_to_the_checked_dir_and_keeps_mode_and_owner() {
        let d = tempfile::tempdir().unwrap();
        let etc = d.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("group"), "old\n").unwrap();
        std::fs::set_permissions(
            etc.join("group"),
            std::os::unix::fs::PermissionsExt::from_mode(0o640),
        )
        .unwrap();
        let dir = CheckedDir::open(etc.to_str().unwrap()).unwrap().unwrap();
        dir.replace("group", b"new\n", 0o644).unwrap();
        assert_eq!(dir.read("group", 100).unwrap().unwrap(), b"new\n");
        let m = std::fs::metadata(etc.join("group")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777,
            0o640
        );
        dir.replace("gshadow", b"g\n", 0o640).unwrap();
        assert_eq!(std::fs::read(etc.join("gshadow")).unwrap(), b"g\n");
        // No temp file is left.
        let mut names: Vec<String> = std::fs::read_dir(&etc)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["group", "gshadow"]);
        // A symlink in place of the file is refused, its target untouched.
        std::fs::write(d.path().join("target"), "host\n").unwrap();
        std::fs::remove_file(etc.join("group")).unwrap();
        symlink(d.path().join("target"), etc.join("group")).unwrap();
        let e = dir.replace("group", b"evil\n", 0o644).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        assert_eq!(std::fs::read(d.path().join("target")).unwrap(), b"host\n");
        // So is a name that is not one component.
        assert!(dir
            .replace("../x", b"", 0o644)
            .unwrap_err()
            .contains("not a file name"));
        // The directory was renamed away after the check: the write still
        // lands in the directory that was checked, not the new one at the path.
        std::fs::rename(&etc, d.path().join("etc.old")).unwrap();
        std::fs::create_dir(&etc).unwrap();
        dir.replace("gshadow", b"g2\n", 0o640).unwrap();
        assert_eq!(
            std::fs::read(d.path().join("etc.old/gshadow")).unwrap(),
            b"g2\n"
        );
        assert!(!etc.join("gshadow").exists());
        assert!(std::fs::read_dir(&etc).unwrap().next().is_none());
    }

    #[test]
    fn replace_under_a_symlink_swap_race_never_writes_the_link_target() {
        // The container's attack: swap the file with a symlink in a loop
        // (renameat2 RENAME_EXCHANGE) while the tool writes it.
        let d = tempfile::tempdir().unwrap();
        let etc = d.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("group"), "real\n").unwrap();
        std::fs::write(d.path().join("target"), "host\n").unwrap();
        symlink(d.path().join("target"), etc.join("swap")).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let racer = {
            let (stop, etc) = (stop.clone(), etc.clone());
            std::thread::spawn(move || {
                let dirfd = File::open(&etc).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let _ = nix::fcntl::renameat2(
                        &dirfd,
                        "group",
                        &dirfd,
                        "swap",
                        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                    );
                }
            })
        };
        let dir = CheckedDir::open(etc.to_str().unwrap()).unwrap().unwrap();
        let (mut ok, mut refused) = (0, 0);
        for i in 0..400 {
            match dir.replace("group", format!("new {i}\n").as_bytes(), 0o644) {
                Ok(()) => ok += 1,
                Err(e) => {
                    assert!(
                        e.contains("took its place")
                            || e.contains("not a regular file")
                            || e.contains("cannot rename"),
                        "{e}"
                    );
                    refused += 1;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        racer.join().unwrap();
        assert_eq!(std::fs::read(d.path().join("target")).unwrap(), b"host\n");
        eprintln!("{ok} writes in effect, {refused} refused");
        assert!(refused > 0, "the race never hit: the test proves nothing");
        let left: Vec<_> = std::fs::read_dir(&etc)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains("pct-passthrough"))
            .collect();
        assert!(left.is_empty(), "temp files left: {left:?}");
    }

    #[test]
    fn stat_untrusted_refuses_links_and_dotdot() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("dev")).unwrap();
        symlink("/dev/null", d.path().join("dev/null")).unwrap();
        let p = |n: &str| d.path().join(n).to_str().unwrap().to_string();
        let e = stat_untrusted(&p("dev/null")).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(stat_untrusted(&p("dev/none")).unwrap().is_none());
        assert!(stat_untrusted(&p("nodir/x")).unwrap().is_none());
        let e = stat_untrusted(&format!("{}/dev/../dev/x", d.path().display())).unwrap_err();
        assert!(e.contains(".."), "{e}");
        let st = stat_untrusted("/dev/null").unwrap().unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFCHR);
    }

    #[test]
    fn close_fds_keeps_only_what_is_named() {
        // In a child: the test harness's own fds must survive in the parent.
        // The child only closes fds, checks and `_exit`s.
        match fork(&proof()).unwrap() {
            ForkResult::Child => {
                let a = File::open("/dev/null").unwrap();
                let b = File::open("/dev/null").unwrap();
                close_fds_except(&[b.as_raw_fd()]);
                // SAFETY: fcntl F_GETFD only queries the fd.
                let a_open = unsafe { libc::fcntl(a.as_raw_fd(), libc::F_GETFD) } != -1;
                // SAFETY: as above.
                let b_open = unsafe { libc::fcntl(b.as_raw_fd(), libc::F_GETFD) } != -1;
                // SAFETY: leave the child without running the harness's code.
                unsafe { libc::_exit(if !a_open && b_open { 0 } else { 1 }) }
            }
            ForkResult::Parent { child } => {
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn untrusted_opens_refuse_links_fifos_and_size() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n).to_str().unwrap().to_string();
        std::fs::write(d.path().join("f"), "x:x:1:\n").unwrap();
        assert_eq!(
            read_untrusted(None, &p("f"), Resolve::NoSymlinks, 100)
                .unwrap()
                .unwrap(),
            b"x:x:1:\n"
        );
        assert!(read_untrusted(None, &p("none"), Resolve::NoSymlinks, 100)
            .unwrap()
            .is_none());
        symlink("/etc/passwd", d.path().join("l")).unwrap();
        let e = read_untrusted(None, &p("l"), Resolve::NoSymlinks, 100).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        nix::unistd::mkfifo(
            &d.path().join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let e = read_untrusted(None, &p("fifo"), Resolve::NoSymlinks, 100).unwrap_err();
        assert!(e.contains("FIFO"), "{e}");
        let e = read_untrusted(None, &p("f"), Resolve::NoSymlinks, 3).unwrap_err();
        assert!(e.contains("larger than"), "{e}");
    }

    #[test]
    fn in_root_keeps_links_inside() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/real"), "inside").unwrap();
        symlink("/etc", d.path().join("etcl")).unwrap();
        symlink("../../../../../../etc", d.path().join("etc/up")).unwrap();
        symlink("/etc/passwd", d.path().join("etc/abs")).unwrap();
        let root: OwnedFd = File::open(d.path()).unwrap().into();
        // An absolute directory link resolves against the rootfs, not the host.
        let got = read_untrusted(Some(&root), "etcl/real", Resolve::InRoot, 100).unwrap();
        assert_eq!(got.unwrap(), b"inside");
        // `..` stops at the root: <root>/etc/passwd, which is absent.
        assert!(
            read_untrusted(Some(&root), "etc/up/passwd", Resolve::InRoot, 100)
                .unwrap()
                .is_none()
        );
        // The file itself is never a link.
        let e = read_untrusted(Some(&root), "etc/abs", Resolve::InRoot, 100).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
    }
}
