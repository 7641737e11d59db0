//! The one place the tool enters a container: fork a single-threaded child,
//! setns (user, then mount) through the init's pidfd, become the container's
//! root with only the capabilities the job needs, run the job, send its
//! result to the parent through a pipe, `_exit`. Also the hardened opens the
//! job uses on the container's (or a rootfs's) files.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use caps::{CapSet, Capability, CapsHashSet};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};
use serde::de::DeserializeOwned;
use serde::Serialize;

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

/// Runs `job` inside the container as its root, holding only `keep_caps`,
/// and returns its result. The child is killed at `bound`.
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
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe2")?;
    // SAFETY: the child only runs our own code on a copy of this
    // single-threaded worker (setns refuses a multi-threaded caller anyway),
    // and ends with `_exit` so no parent destructor or atexit handler runs.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(rd);
            let mut keep = vec![wr.as_raw_fd()];
            if let Target::Running { pidfd, .. } = target {
                keep.push(pidfd.as_raw_fd());
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
            let deadline = Instant::now() + bound;
            let bytes = read_bounded(rd, deadline);
            let status = reap(child, deadline);
            let bytes = match bytes {
                Ok(b) => b,
                Err(e) => bail!("{e}; status {status}"),
            };
            let result: Result<T, String> = serde_json::from_slice(&bytes).map_err(|e| {
                anyhow!("the container child sent no readable result ({e}); status {status}")
            })?;
            result.map_err(|e| anyhow!(e))
        }
    }
}

/// Reads the pipe until EOF, at most [`MAX_RESULT`] bytes, until `deadline`.
fn read_bounded(rd: OwnedFd, deadline: Instant) -> Result<Vec<u8>> {
    let mut f = File::from(rd);
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("the container child did not finish within its time bound; killed");
        }
        let ms = u16::try_from(left.as_millis().min(10_000)).unwrap_or(10_000);
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("poll: {e}"),
        }
        let n = f
            .read(&mut buf)
            .context("reading the container child's result")?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > MAX_RESULT {
            bail!("the container child sent more than {MAX_RESULT} bytes");
        }
    }
}

/// Waits for `child` until `deadline`, then kills it.
fn reap(child: Pid, deadline: Instant) -> String {
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(WaitStatus::Exited(_, c)) => return format!("exit {c}"),
            Ok(WaitStatus::Signaled(_, s, _)) => return format!("killed by {s}"),
            Ok(other) => return format!("{other:?}"),
            Err(e) => return format!("waitpid: {e}"),
        }
        if Instant::now() >= deadline {
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            return "killed at the time bound".into();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// How [`open_untrusted`] resolves a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// Inside the container's mount namespace: no symlink anywhere in the path.
    NoSymlinks,
    /// Under a rootfs directory fd seen from outside: symlinks resolve as if
    /// the directory were `/` and can never leave it; no magic links.
    InRoot,
}

/// Opens `path` relative to `dirfd` (or the cwd/root for `None`) for reading
/// without following symlinks out, without blocking on a FIFO, and only if it
/// is a regular file of at most `max` bytes. `Ok(None)` if it does not exist.
pub fn open_untrusted(
    dirfd: Option<&OwnedFd>,
    path: &str,
    how: Resolve,
    max: usize,
) -> Result<Option<(File, libc::stat)>, String> {
    let cpath = std::ffi::CString::new(path).map_err(|_| format!("{path}: NUL in path"))?;
    // SAFETY: open_how is a plain C struct; zeroed is a valid starting value.
    let mut oh: libc::open_how = unsafe { std::mem::zeroed() };
    let flags =
        libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
    oh.flags = u64::try_from(flags).unwrap_or(0);
    oh.resolve = match how {
        Resolve::NoSymlinks => libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
        Resolve::InRoot => libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    let dfd = dirfd.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: openat2 reads the path and the open_how we pass with its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dfd,
            cpath.as_ptr(),
            &oh as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            Some(libc::ELOOP) => Err(format!(
                "{path}: a symbolic link in the path (the file or a directory above it); refused, the tool does not follow links in a container"
            )),
            Some(libc::EXDEV) => Err(format!("{path}: the path leaves the container's root; refused")),
            _ => Err(format!("{path}: cannot open: {e}")),
        };
    }
    let fd = i32::try_from(fd).map_err(|_| format!("{path}: bad fd"))?;
    // SAFETY: openat2 just returned this fd; nobody else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    // SAFETY: fstat fills the zeroed struct for a valid fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `file` is open and `st` is writable.
    if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } != 0 {
        return Err(format!(
            "{path}: cannot stat: {}",
            std::io::Error::last_os_error()
        ));
    }
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
    Ok(Some((file, st)))
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
    let mut buf = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{path}: cannot read: {e}"))?;
    if buf.len() > max {
        return Err(format!(
            "{path}: grew past {max} bytes while being read; refused"
        ));
    }
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn rootfs_child_is_chrooted_capability_dropped_and_bounded() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root for chroot");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/group"), "inside:x:1:\n").unwrap();
        let target = Target::Rootfs(d.path());
        // The job sees the rootfs as `/`, with only CAP_CHOWN left.
        let (text, caps) = run_in_container(
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
        // A job that hangs is killed at the bound.
        let start = Instant::now();
        let e = run_in_container(&target, &[], Duration::from_millis(300), || {
            std::thread::sleep(Duration::from_secs(30));
            Ok(())
        })
        .unwrap_err()
        .to_string();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(e.contains("time bound"), "{e}");
        // A job's error comes back as the error.
        let e = run_in_container(&target, &[], Duration::from_secs(5), || {
            Err::<(), String>("gave up: because".into())
        })
        .unwrap_err()
        .to_string();
        assert_eq!(e, "gave up: because");
    }

    #[test]
    fn close_fds_keeps_only_what_is_named() {
        // In a child: the test harness's own fds must survive in the parent.
        // SAFETY: the child only closes fds, checks and `_exit`s.
        match unsafe { fork() }.unwrap() {
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
