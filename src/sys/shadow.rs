//! Writes to `/etc/subuid` and `/etc/subgid` that honour shadow's own
//! protocol (commonio.c), so a concurrent `usermod -v`/`-w` loses no line.
//!
//! Lock order, always the same, released in reverse:
//! 1. the tool's flock `run/lock/pct-passthrough/subid.lock` (our processes);
//! 2. `lckpwdf()`: an fcntl write lock on `/etc/.pwd.lock`;
//! 3. shadow's `link()` lock `/etc/subuid.lock`, then `/etc/subgid.lock`.
//!
//! Under the locks each file is re-read, the append re-planned, the old
//! text kept as `<file>-`, and the new text put in place atomically.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{fcntl, AtFlags, FcntlArg, OFlag};
use nix::sys::signal::kill;
use nix::unistd::{linkat, Pid};

use crate::model::idmap::{IdKind, IdRange, ID_LIMIT};
use crate::model::subid::SubidFile;
use crate::model::subid::SubidNeed;
use crate::model::text::Limits;
use crate::paths::Paths;
use crate::sys::fs::{
    open_parent, read_text, replace_file, replace_file_with, DirEntry, Durability,
};
use crate::sys::lock::{
    flock_exclusive_unless, open_lock_file, report_wait, FlockGuard, LockError,
};

/// How long each lock is waited for; shadow's `lckpwdf()` waits 15 s.
pub const SHADOW_LOCK_TIMEOUT: Duration = Duration::from_secs(15);

const POLL: Duration = Duration::from_millis(10);

fn comm_of(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| format!("pid {pid} ({})", s.trim()))
        .unwrap_or_else(|_| format!("pid {pid}"))
}

/// `lckpwdf()`: an fcntl write lock on `/etc/.pwd.lock`, released when the
/// file is closed (on drop). The process must not open that file elsewhere:
/// closing any descriptor of it drops an fcntl lock.
#[derive(Debug)]
pub struct PwdLock {
    _file: File,
}

fn whole_file_lock(kind: libc::c_short) -> libc::flock {
    libc::flock {
        l_type: kind,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// Takes `lckpwdf()`'s lock on `path` (inside the root), polling until
/// `timeout`.
pub fn lckpwdf(paths: &Paths, path: &Path, timeout: Duration) -> Result<PwdLock, LockError> {
    let file = open_lock_file(paths, path, OFlag::O_WRONLY, 0o600).map_err(LockError::Io)?;
    let start = Instant::now();
    loop {
        match fcntl(
            &file,
            FcntlArg::F_SETLK(&whole_file_lock(libc::F_WRLCK as _)),
        ) {
            Ok(_) => {
                report_wait(path, start);
                return Ok(PwdLock { _file: file });
            }
            Err(Errno::EAGAIN) | Err(Errno::EACCES) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(LockError::Io(
                    anyhow::Error::new(e).context(format!("{}: fcntl lock failed", path.display())),
                ))
            }
        }
        if start.elapsed() >= timeout {
            let mut probe = whole_file_lock(libc::F_WRLCK as _);
            let holder = fcntl(&file, FcntlArg::F_GETLK(&mut probe))
                .ok()
                .filter(|_| probe.l_type != libc::F_UNLCK as libc::c_short)
                .map(|_| comm_of(probe.l_pid));
            return Err(LockError::Busy {
                path: path.to_path_buf(),
                waited: start.elapsed(),
                holder,
            });
        }
        sleep(POLL);
    }
}

/// shadow's `link()` lock on a file: `<file>.lock` holding the owner's PID.
/// Removed on drop, through the directory it was made in.
#[derive(Debug)]
pub struct LinkLock {
    dir: DirEntry,
    lock: OsString,
}

impl Drop for LinkLock {
    fn drop(&mut self) {
        let _ = self.dir.remove(&self.lock);
    }
}

/// Keeps the current file of `entry` as `<file>-`, as shadow does (same
/// bytes, mode, owner and times). A regular file is hard-linked there
/// through a temp name and a rename: its bytes are already on disk, so
/// there is nothing to write or flush (a lost rename leaves the old backup,
/// as shadow's own may). Anything else (a
/// symlink, a filesystem without hard links) gets a copy `old` through the
/// atomic replace. No temp name survives a failure. `st` is the name's own
/// (unfollowed) stat.
fn backup(
    paths: &Paths,
    entry: &DirEntry,
    old: &[u8],
    st: &nix::sys::stat::FileStat,
) -> Result<()> {
    let dst = entry.sibling("-");
    if st.st_mode & libc::S_IFMT == libc::S_IFREG {
        let tmp = entry.sibling(&format!("-.tmp.{}", std::process::id()));
        let link = || {
            linkat(
                entry.dir(),
                entry.name(),
                entry.dir(),
                tmp.as_os_str(),
                AtFlags::empty(),
            )
        };
        let linked = match link() {
            // A leftover from a crashed run with our pid.
            Err(Errno::EEXIST) => {
                entry.remove(&tmp)?;
                link()
            }
            r => r,
        };
        if linked.is_ok() {
            return entry.rename(&tmp, &dst).inspect_err(|_| {
                let _ = entry.remove(&tmp);
            });
        }
    }
    let mode = st.st_mode & 0o7777;
    replace_file(
        paths,
        &entry.sibling_path(&dst),
        old,
        mode,
        Durability::FlushData,
    )
}

/// One attempt, as shadow's `do_lock_file`: write our PID to `<file>.<pid>`,
/// link it to `<file>.lock`, require a link count of 2. A lock whose PID is
/// dead is removed once and the link retried. `Ok(Err(pid))`: held by
/// `pid`. `<file>.<pid>` is removed whatever happens, a full disk included.
fn try_link_lock(paths: &Paths, file: &Path) -> Result<std::result::Result<LinkLock, Option<i32>>> {
    let pid = std::process::id();
    let dir = open_parent(paths, file)?;
    let tmp = dir.sibling(&format!(".{pid}"));
    let lock = dir.sibling(".lock");
    let mut f = match dir.try_create_new(&tmp, 0o600) {
        // A leftover from a crashed run with our pid.
        Err(Errno::EEXIST) => {
            dir.remove(&tmp)?;
            dir.create_new(&tmp, 0o600)?
        }
        r => r
            .map_err(anyhow::Error::new)
            .with_context(|| format!("{}: cannot create", dir.sibling_path(&tmp).display()))?,
    };
    let result = (|| -> Result<std::result::Result<(), Option<i32>>> {
        f.write_all(pid.to_string().as_bytes())
            .with_context(|| format!("{}: cannot write", dir.sibling_path(&tmp).display()))?;
        let linked = || -> Result<bool> {
            match linkat(
                dir.dir(),
                tmp.as_os_str(),
                dir.dir(),
                lock.as_os_str(),
                AtFlags::empty(),
            ) {
                Ok(()) => Ok(dir
                    .stat(&tmp)?
                    .with_context(|| format!("{}: vanished", dir.sibling_path(&tmp).display()))?
                    .st_nlink
                    == 2),
                Err(Errno::EEXIST) => Ok(false),
                Err(e) => Err(anyhow::Error::new(e))
                    .with_context(|| format!("{}: cannot link", dir.sibling_path(&lock).display())),
            }
        };
        if linked()? {
            return Ok(Ok(()));
        }
        let holder = match dir.open_read(&lock) {
            Ok(Some(mut l)) => {
                let mut s = String::new();
                let _ = (&mut l).take(64).read_to_string(&mut s);
                s.trim().parse::<i32>().ok().filter(|p| *p > 0)
            }
            Ok(None) => return Ok(Err(None)),
            Err(_) => None,
        };
        let Some(holder) = holder else {
            // shadow refuses a lock it cannot read, and so do we.
            return Ok(Err(None));
        };
        if kill(Pid::from_raw(holder), None) == Err(Errno::ESRCH) {
            // Stale: its owner is gone. Remove it once and retry.
            let _ = dir.remove(&lock);
            if linked()? {
                return Ok(Ok(()));
            }
        }
        Ok(Err(Some(holder)))
    })();
    drop(f);
    let removed = dir.remove(&tmp);
    match result? {
        Ok(()) => {
            let guard = LinkLock { dir, lock };
            removed?;
            Ok(Ok(guard))
        }
        Err(holder) => {
            removed?;
            Ok(Err(holder))
        }
    }
}

/// Takes shadow's `link()` lock on `file` (inside the root), polling until
/// `timeout`.
pub fn link_lock(paths: &Paths, file: &Path, timeout: Duration) -> Result<LinkLock, LockError> {
    let start = Instant::now();
    loop {
        let holder = match try_link_lock(paths, file).map_err(LockError::Io)? {
            Ok(guard) => {
                report_wait(&with_suffix(file, ".lock"), start);
                return Ok(guard);
            }
            Err(holder) => holder,
        };
        if start.elapsed() >= timeout {
            return Err(LockError::Busy {
                path: with_suffix(file, ".lock"),
                waited: start.elapsed(),
                holder: Some(holder.map_or_else(
                    || "an unreadable lock file; remove it if no shadow tool is running".into(),
                    comm_of,
                )),
            });
        }
        sleep(POLL);
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Every lock a subordinate-ID write needs, in the documented order.
/// Fields drop in declaration order: shadow's locks first, ours last.
#[derive(Debug)]
pub struct SubidLocks {
    _files: Vec<LinkLock>,
    _pwd: PwdLock,
    _tool: FlockGuard,
}

/// Takes the tool lock, `lckpwdf()`, then the link locks of `files`.
pub fn lock_subid_files(
    paths: &Paths,
    files: &[PathBuf],
    timeout: Duration,
) -> Result<SubidLocks, LockError> {
    Ok(lock_subid_files_unless(paths, files, timeout, || false)?
        .expect("never moot: the locks are taken or an error returned"))
}

/// [`lock_subid_files`], giving up without any lock (`Ok(None)`) when
/// `moot()`, asked while the tool lock is busy, says another writer did
/// the work meanwhile: many starts at once then do not queue up only to
/// find their ranges there.
pub fn lock_subid_files_unless(
    paths: &Paths,
    files: &[PathBuf],
    timeout: Duration,
    moot: impl FnMut() -> bool,
) -> Result<Option<SubidLocks>, LockError> {
    let Some(tool) = flock_exclusive_unless(paths, &paths.subid_lock(), timeout, moot)? else {
        return Ok(None);
    };
    let pwd = lckpwdf(paths, &paths.pwd_lock(), timeout)?;
    let mut links = Vec::new();
    for f in files {
        links.push(link_lock(paths, f, timeout)?);
    }
    // Release in reverse: the link locks were taken last.
    links.reverse();
    Ok(Some(SubidLocks {
        _files: links,
        _pwd: pwd,
        _tool: tool,
    }))
}

/// What one file got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubidWrite {
    pub path: PathBuf,
    pub added: Vec<IdRange>,
}

fn subid_path(paths: &Paths, kind: IdKind) -> PathBuf {
    match kind {
        IdKind::Uid => paths.subuid(),
        IdKind::Gid => paths.subgid(),
    }
}

/// Makes root cover every range of `needs`: under the locks, re-reads each
/// file, appends only what is still missing, keeps the old text as
/// `<file>-`, and replaces the file atomically. Takes no lock when every
/// file already covers its ranges.
pub fn ensure_coverage(
    paths: &Paths,
    needs: &[SubidNeed],
    timeout: Duration,
) -> Result<Vec<SubidWrite>> {
    let read = |kind: IdKind| -> Result<String> {
        let path = subid_path(paths, kind);
        Ok(read_text(paths, &path, Limits::HOST_FILE)?.unwrap_or_default())
    };
    let mut pending: Vec<&SubidNeed> = Vec::new();
    for need in needs {
        if !SubidFile::parse(&read(need.kind)?)
            .missing(&need.ranges)
            .is_empty()
        {
            pending.push(need);
        }
    }
    append_coverage(paths, &pending, timeout)
}

/// What a start waiting for the tool's subid lock needs, left in
/// `run/lock/pct-passthrough/subid-wants/<pid>.want` (one `u|g start end`
/// line per range) for the holder, which appends it with its own ranges:
/// many starts at once then make a few writes, not one each. Removed on
/// drop; one left by a crashed start only gets its ranges added (as that
/// start would have), then removed once its process is gone.
struct Want {
    entry: DirEntry,
}

impl Want {
    fn dir(paths: &Paths) -> PathBuf {
        paths.lock_dir().join("subid-wants")
    }

    fn post(paths: &Paths, needs: &[&SubidNeed]) -> Result<Want> {
        let dir = Want::dir(paths);
        crate::sys::fs::create_dir_all(paths, &dir)?;
        let entry = open_parent(paths, &dir.join(format!("{}.want", std::process::id())))?;
        entry.remove(entry.name())?;
        let mut text = String::new();
        for need in needs {
            let kind = match need.kind {
                IdKind::Uid => 'u',
                IdKind::Gid => 'g',
            };
            for r in &need.ranges {
                text.push_str(&format!("{kind} {} {}\n", r.start, r.end));
            }
        }
        // No flush: a lost want only means waiting for the lock.
        entry
            .create_new(entry.name(), 0o600)?
            .write_all(text.as_bytes())?;
        Ok(Want { entry })
    }

    /// Every range of `kind` the waiting starts want (never host ID 0, nor
    /// past the last ID); unreadable files and lines are skipped.
    fn read_all(paths: &Paths, kind: IdKind) -> Vec<IdRange> {
        let dir = Want::dir(paths);
        let Ok(names) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let Ok(entry) = open_parent(paths, &dir.join("x")) else {
            return Vec::new();
        };
        let tag = match kind {
            IdKind::Uid => "u",
            IdKind::Gid => "g",
        };
        let mut out = Vec::new();
        for name in names.flatten().map(|e| e.file_name()) {
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".want"))
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let mut text = String::new();
            let Ok(Some(mut f)) = entry.open_read(&name) else {
                continue;
            };
            if Read::by_ref(&mut f)
                .take(64 * 1024)
                .read_to_string(&mut text)
                .is_err()
            {
                continue;
            }
            // Only whole lines: one may be read while it is written.
            out.extend(text.split_inclusive('\n').filter_map(|l| {
                let mut f = l.strip_suffix('\n')?.split(' ');
                let (Some(k), Some(a), Some(b), None) = (f.next(), f.next(), f.next(), f.next())
                else {
                    return None;
                };
                let (start, end) = (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?);
                (k == tag && 0 < start && start < end && end <= ID_LIMIT)
                    .then_some(IdRange { start, end })
            }));
            if kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
                let _ = entry.remove(&name);
            }
        }
        out
    }
}

impl Drop for Want {
    fn drop(&mut self) {
        let _ = self.entry.remove(self.entry.name());
    }
}

/// The locked part of [`ensure_coverage`], for a caller that has just
/// planned the appends (pre-start): no read before the locks. Each file is
/// still re-read and re-planned under them, so a range another writer added
/// meanwhile is not added twice; with nothing missing, it writes nothing
/// (but takes the locks).
pub fn append_coverage(
    paths: &Paths,
    needs: &[&SubidNeed],
    timeout: Duration,
) -> Result<Vec<SubidWrite>> {
    let read = |kind: IdKind| -> Result<String> {
        let path = subid_path(paths, kind);
        Ok(read_text(paths, &path, Limits::HOST_FILE)?.unwrap_or_default())
    };
    if needs.is_empty() {
        return Ok(Vec::new());
    }
    let mut pending = needs.to_vec();
    pending.sort_by_key(|n| n.kind);
    let files: Vec<PathBuf> = pending.iter().map(|n| subid_path(paths, n.kind)).collect();
    // While the lock is busy (a host starting many containers), this start
    // leaves its ranges for the holder to append with its own, and stops
    // waiting once they are there.
    let mut want: Option<Want> = None;
    let covered = || {
        if want.is_none() {
            want = Want::post(paths, &pending).ok();
        }
        pending.iter().all(|need| {
            read(need.kind)
                .is_ok_and(|text| SubidFile::parse(&text).missing(&need.ranges).is_empty())
        })
    };
    let Some(_locks) =
        lock_subid_files_unless(paths, &files, timeout, covered).map_err(anyhow::Error::new)?
    else {
        return Ok(Vec::new());
    };
    let mut written = Vec::new();
    for (need, path) in pending.iter().zip(&files) {
        let old = read(need.kind)?;
        let mut wanted = need.ranges.clone();
        wanted.extend(Want::read_all(paths, need.kind));
        let Some((new, added)) = SubidFile::parse(&old).plan(&wanted) else {
            continue;
        };
        // Flushed as shadow flushes them: a crash leaves the old file or
        // the new one, never a torn one, and a lost rename costs nothing
        // (the next start finds the line missing and adds it again). The
        // backup is made once the new text is safely in its temp file, so
        // a write that fails (a full disk) changes nothing at all.
        replace_file_with(
            paths,
            path,
            new.as_bytes(),
            0o644,
            Durability::FlushData,
            |target, target_stat| {
                // The backup is of the name (`/etc/subgid-`), even where
                // that is a link to the file written.
                let named;
                let (entry, st) = if target.path() == path.as_path() {
                    (target, target_stat.copied())
                } else {
                    named = open_parent(paths, path)?;
                    let st = named.stat(named.name())?;
                    (&named, st)
                };
                // Not there before: nothing to keep.
                let Some(st) = st else {
                    return Ok(());
                };
                backup(paths, entry, old.as_bytes(), &st)
                    .with_context(|| format!("{}: cannot write the backup", path.display()))
            },
        )
        .with_context(|| format!("{}: cannot write", path.display()))?;
        written.push(SubidWrite {
            path: path.clone(),
            added,
        });
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn root() -> (tempfile::TempDir, Paths) {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        let p = Paths::with_root(d.path());
        (d, p)
    }

    #[test]
    fn link_lock_is_exclusive_and_released() {
        let (_d, p) = root();
        let f = p.subgid();
        let g = link_lock(&p, &f, Duration::from_secs(1)).unwrap();
        let lock = with_suffix(&f, ".lock");
        assert_eq!(
            fs::read_to_string(&lock).unwrap(),
            std::process::id().to_string()
        );
        // Our own live PID holds it: busy, naming us.
        let e = link_lock(&p, &f, Duration::from_millis(30)).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(g);
        assert!(!lock.exists());
        // No `<file>.<pid>` left behind.
        assert_eq!(fs::read_dir(p.host("/etc")).unwrap().count(), 0);
    }

    #[test]
    fn stale_link_lock_is_taken_over() {
        let (_d, p) = root();
        let f = p.subuid();
        // A PID that cannot be alive.
        fs::write(with_suffix(&f, ".lock"), "2147483646").unwrap();
        let g = link_lock(&p, &f, Duration::from_millis(200)).unwrap();
        drop(g);
        // An unreadable lock is refused, as shadow does.
        fs::write(with_suffix(&f, ".lock"), "garbage").unwrap();
        let e = link_lock(&p, &f, Duration::from_millis(30)).unwrap_err();
        assert!(e.to_string().contains("unreadable lock file"), "{e}");
    }

    /// In a forked child (fcntl locks are per process): 0 if `path` is
    /// write-locked by someone else, 1 if the child could lock it.
    fn child_sees_locked(path: &Path) -> i32 {
        // Opened in the child only: closing a descriptor of the file in
        // this process would drop this process's own lock.
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: the child only calls open, fcntl and _exit, all
        // async-signal-safe.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let Ok(file) = nix::fcntl::open(
                    c_path.as_c_str(),
                    nix::fcntl::OFlag::O_WRONLY,
                    nix::sys::stat::Mode::empty(),
                ) else {
                    // SAFETY: as below.
                    unsafe { libc::_exit(2) }
                };
                let got = fcntl(
                    &file,
                    FcntlArg::F_SETLK(&whole_file_lock(libc::F_WRLCK as _)),
                );
                // SAFETY: _exit ends the child at once, without running the
                // parent's destructors or atexit handlers.
                unsafe { libc::_exit(i32::from(got.is_ok())) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).unwrap() {
                    nix::sys::wait::WaitStatus::Exited(_, code) => code,
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn pwd_lock_holds_against_other_processes() {
        let (_d, p) = root();
        let g = lckpwdf(&p, &p.pwd_lock(), Duration::from_millis(100)).unwrap();
        assert_eq!(child_sees_locked(&p.pwd_lock()), 0);
        drop(g);
        assert_eq!(child_sees_locked(&p.pwd_lock()), 1);
    }

    #[test]
    fn appends_backs_up_and_is_idempotent() {
        let (_d, p) = root();
        fs::write(p.subgid(), "# keep\nroot:100000:65536").unwrap();
        let need = [SubidNeed {
            kind: IdKind::Gid,
            ranges: vec![IdRange::new(20, 1), IdRange::new(100000, 65536)],
        }];
        let w = ensure_coverage(&p, &need, Duration::from_secs(1)).unwrap();
        assert_eq!(w[0].added, vec![IdRange::new(20, 1)]);
        assert_eq!(
            fs::read_to_string(p.subgid()).unwrap(),
            "# keep\nroot:100000:65536\nroot:20:1\n"
        );
        assert_eq!(
            fs::read_to_string(p.host("/etc/subgid-")).unwrap(),
            "# keep\nroot:100000:65536"
        );
        let before = fs::metadata(p.subgid()).unwrap().modified().unwrap();
        assert!(ensure_coverage(&p, &need, Duration::from_secs(1))
            .unwrap()
            .is_empty());
        assert_eq!(
            fs::metadata(p.subgid()).unwrap().modified().unwrap(),
            before
        );
        // No locks or temp files left.
        let mut names: Vec<String> = fs::read_dir(p.host("/etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".pwd.lock", "subgid", "subgid-"]);
    }

    /// A start waiting for the lock leaves its ranges; the holder appends
    /// them with its own in one write. A want whose process is gone is
    /// honoured once, then removed; a torn last line and host ID 0 are not.
    #[test]
    fn the_holder_appends_what_waiting_starts_want() {
        let (_d, p) = root();
        fs::write(p.subgid(), "root:100000:65536\n").unwrap();
        let waiting = SubidNeed {
            kind: IdKind::Gid,
            ranges: vec![IdRange::new(5001, 1)],
        };
        let uid = SubidNeed {
            kind: IdKind::Uid,
            ranges: vec![IdRange::new(6000, 1)],
        };
        let want = Want::post(&p, &[&waiting, &uid]).unwrap();
        let dir = Want::dir(&p);
        fs::write(dir.join("2147483646.want"), "g 7000 7002\ng 0 1\ng 8000 80").unwrap();
        let own = SubidNeed {
            kind: IdKind::Gid,
            ranges: vec![IdRange::new(20, 1)],
        };
        let w = append_coverage(&p, &[&own], Duration::from_secs(1)).unwrap();
        assert_eq!(
            w[0].added,
            vec![
                IdRange::new(20, 1),
                IdRange::new(5001, 1),
                IdRange::new(7000, 2)
            ]
        );
        assert_eq!(
            fs::read_to_string(p.subgid()).unwrap(),
            "root:100000:65536\nroot:20:1\nroot:5001:1\nroot:7000:2\n"
        );
        assert!(!p.subuid().exists(), "only the kinds the holder locked");
        assert!(
            !dir.join("2147483646.want").exists(),
            "gone with its process"
        );
        assert!(dir.join(format!("{}.want", std::process::id())).exists());
        drop(want);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn backup_is_the_old_file_with_its_mode_and_times_and_replaces_the_last() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, p) = root();
        fs::write(p.host("/etc/subgid-"), "an older backup\n").unwrap();
        fs::write(p.subgid(), "root:100000:65536\n").unwrap();
        fs::set_permissions(p.subgid(), fs::Permissions::from_mode(0o640)).unwrap();
        let old = fs::metadata(p.subgid()).unwrap();
        let need = [SubidNeed {
            kind: IdKind::Gid,
            ranges: vec![IdRange::new(20, 1)],
        }];
        ensure_coverage(&p, &need, Duration::from_secs(1)).unwrap();
        let b = fs::metadata(p.host("/etc/subgid-")).unwrap();
        assert_eq!(
            fs::read_to_string(p.host("/etc/subgid-")).unwrap(),
            "root:100000:65536\n"
        );
        assert_eq!((b.ino(), b.nlink()), (old.ino(), 1), "the old file itself");
        assert_eq!(b.mode() & 0o7777, 0o640);
        assert_eq!(b.modified().unwrap(), old.modified().unwrap());
        let new = fs::metadata(p.subgid()).unwrap();
        assert_ne!(new.ino(), old.ino());
        assert_eq!(new.mode() & 0o7777, 0o640);
        assert_eq!(
            fs::read_to_string(p.subgid()).unwrap(),
            "root:100000:65536\nroot:20:1\n"
        );
    }

    #[test]
    fn a_symlinked_file_is_backed_up_by_copy() {
        let (d, p) = root();
        let real = d.path().join("real-subgid");
        fs::write(&real, "root:100000:65536\n").unwrap();
        // Absolute, as if the root were `/`.
        std::os::unix::fs::symlink("/real-subgid", p.subgid()).unwrap();
        let need = [SubidNeed {
            kind: IdKind::Gid,
            ranges: vec![IdRange::new(20, 1)],
        }];
        ensure_coverage(&p, &need, Duration::from_secs(1)).unwrap();
        let b = fs::symlink_metadata(p.host("/etc/subgid-")).unwrap();
        assert!(b.file_type().is_file());
        assert_eq!(
            fs::read_to_string(p.host("/etc/subgid-")).unwrap(),
            "root:100000:65536\n"
        );
        assert_eq!(
            fs::read_to_string(&real).unwrap(),
            "root:100000:65536\nroot:20:1\n"
        );
    }

    #[test]
    fn append_coverage_replans_under_the_lock() {
        let (_d, p) = root();
        // Planned when root:20:1 was missing; another writer added it since.
        fs::write(p.subgid(), "root:100000:65536\nroot:20:1\n").unwrap();
        let need = SubidNeed {
            kind: IdKind::Gid,
            ranges: vec![IdRange::new(20, 1)],
        };
        assert!(append_coverage(&p, &[&need], Duration::from_secs(1))
            .unwrap()
            .is_empty());
        assert!(!p.host("/etc/subgid-").exists(), "nothing written");
        fs::write(p.subgid(), "root:100000:65536\n").unwrap();
        let w = append_coverage(&p, &[&need], Duration::from_secs(1)).unwrap();
        assert_eq!(w[0].added, vec![IdRange::new(20, 1)]);
        assert!(append_coverage(&p, &[], Duration::from_secs(1))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_symlink_out_of_the_root_is_followed_inside_it() {
        let (d, p) = root();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("subgid");
        fs::write(&target, "root:100000:65536\n").unwrap();
        std::os::unix::fs::symlink(&target, p.subgid()).unwrap();
        let need = [SubidNeed {
            kind: IdKind::Gid,
            ranges: vec![IdRange::new(20, 1)],
        }];
        // The link resolves under the root, where its directory is missing.
        let e = format!(
            "{:#}",
            ensure_coverage(&p, &need, Duration::from_secs(1)).unwrap_err()
        );
        assert!(
            e.contains("does not exist under PCT_PASSTHROUGH_ROOT"),
            "{e}"
        );
        assert_eq!(fs::read_to_string(&target).unwrap(), "root:100000:65536\n");
        // With that directory in the root, the write lands there.
        let inside = d.path().join(target.strip_prefix("/").unwrap());
        fs::create_dir_all(inside.parent().unwrap()).unwrap();
        ensure_coverage(&p, &need, Duration::from_secs(1)).unwrap();
        assert_eq!(fs::read_to_string(&inside).unwrap(), "root:20:1\n");
        assert_eq!(fs::read_to_string(&target).unwrap(), "root:100000:65536\n");
    }

    #[test]
    fn busy_link_lock_fails_with_a_busy_error() {
        let (_d, p) = root();
        fs::write(p.subgid(), "").unwrap();
        let _held = link_lock(&p, &p.subgid(), Duration::from_secs(1)).unwrap();
        let need = [SubidNeed {
            kind: IdKind::Gid,
            ranges: vec![IdRange::new(20, 1)],
        }];
        let e = ensure_coverage(&p, &need, Duration::from_millis(50)).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.starts_with("busy: can't lock file"), "{msg}");
        assert!(msg.contains("subgid.lock"), "{msg}");
        assert_eq!(fs::read_to_string(p.subgid()).unwrap(), "");
    }
}
