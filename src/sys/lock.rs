//! flock-based locks as RAII guards, with a timeout and a "busy" error that
//! names the holder. Lock order is documented in the README:
//! PVE config lock (by-hand runs only) → tool lock → shadow's locks.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::paths::Paths;
use crate::sys::fs::{open_host, require_regular};

/// Set to `1`: every lock taken prints how long it was waited for on
/// stderr (`pct-passthrough: lock-wait <µs> us <path>`), for the benchmark
/// of many starts at once (README, Benchmarks). Off by default: the task
/// log never shows it.
pub const LOCK_TIMING_ENV: &str = "PCT_PASSTHROUGH_LOCK_TIMING";

/// Reports a lock's wait when [`LOCK_TIMING_ENV`] asks for it.
pub fn report_wait(path: &Path, since: Instant) {
    if std::env::var_os(LOCK_TIMING_ENV).is_some_and(|v| v == "1") {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr().lock(),
            "pct-passthrough: lock-wait {} us {}",
            since.elapsed().as_micros(),
            path.display()
        );
    }
}

/// Why a lock was not taken. Callers branch on `Busy`.
#[derive(Debug)]
pub enum LockError {
    Busy {
        path: PathBuf,
        waited: Duration,
        holder: Option<String>,
    },
    Io(anyhow::Error),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Busy {
                path,
                waited,
                holder,
            } => {
                write!(
                    f,
                    "busy: can't lock file '{}' - got timeout after {:.0?}",
                    path.display(),
                    waited
                )?;
                if let Some(h) = holder {
                    write!(f, " (held by {h})")?;
                }
                write!(f, "; wait for the other task to finish, then retry")
            }
            LockError::Io(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for LockError {}

/// An exclusive flock, released on drop.
#[derive(Debug)]
pub struct FlockGuard {
    _file: File,
    path: PathBuf,
}

impl FlockGuard {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens (creating it and its directory if needed) a lock file inside the
/// root: never blocking, never a controlling tty, and only a regular file.
pub fn open_lock_file(
    paths: &Paths,
    path: &Path,
    access: OFlag,
    mode: u32,
) -> anyhow::Result<File> {
    let flags = access | OFlag::O_CREAT | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let open = || open_host(paths, path, flags, Mode::from_bits_truncate(mode));
    // The directory is there but after a reboot (`/run`): it is made only
    // when the open says it is missing.
    let file = match open()? {
        Some(f) => Some(f),
        None => match path.parent() {
            Some(dir) => {
                crate::sys::fs::create_missing_dir_all(paths, dir).with_context(|| {
                    format!("{}: cannot create the lock directory", dir.display())
                })?;
                open()?
            }
            None => None,
        },
    }
    .ok_or_else(|| anyhow::anyhow!("{}: cannot create the lock file", path.display()))?;
    let st = nix::sys::stat::fstat(&file)
        .map_err(std::io::Error::from)
        .with_context(|| format!("{}: cannot stat", path.display()))?;
    require_regular(path, st.st_mode)?;
    Ok(file)
}

/// Takes an exclusive flock on `path` (inside the root; created if needed),
/// polling until `timeout`.
pub fn flock_exclusive(
    paths: &Paths,
    path: &Path,
    timeout: Duration,
) -> Result<FlockGuard, LockError> {
    Ok(flock_exclusive_unless(paths, path, timeout, || false)?
        .expect("never moot: the lock is taken or an error returned"))
}

/// [`flock_exclusive`], giving up without the lock (`Ok(None)`) once
/// `moot()`, asked after every try that finds the lock busy, says the work
/// it guards was done meanwhile by its holder.
pub fn flock_exclusive_unless(
    paths: &Paths,
    path: &Path,
    timeout: Duration,
    mut moot: impl FnMut() -> bool,
) -> Result<Option<FlockGuard>, LockError> {
    let file = open_lock_file(paths, path, OFlag::O_RDWR, 0o644).map_err(LockError::Io)?;
    let start = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => {
                report_wait(path, start);
                return Ok(Some(FlockGuard {
                    _file: file,
                    path: path.to_path_buf(),
                }));
            }
            Err(fs::TryLockError::WouldBlock) => {}
            Err(fs::TryLockError::Error(e)) => {
                return Err(LockError::Io(
                    anyhow::Error::new(e).context(format!("{}: flock failed", path.display())),
                ))
            }
        }
        if moot() {
            report_wait(path, start);
            return Ok(None);
        }
        if start.elapsed() >= timeout {
            return Err(LockError::Busy {
                path: path.to_path_buf(),
                waited: start.elapsed(),
                holder: flock_holder(&file),
            });
        }
        sleep(Duration::from_millis(10));
    }
}

/// Finds who holds a lock on `file` through `/proc/locks`: "pid N (comm)".
fn flock_holder(file: &File) -> Option<String> {
    let meta = file.metadata().ok()?;
    let ino = meta.ino();
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let locks = fs::read_to_string("/proc/locks").ok()?;
    for line in locks.lines() {
        // "1: FLOCK  ADVISORY  WRITE 1234 00:2d:5678 0 EOF"
        let f: Vec<&str> = line.split_whitespace().collect();
        let (pid, id) = match f.as_slice() {
            [_, _, _, _, pid, id, ..] if !f[1].starts_with("->") => (*pid, *id),
            _ => continue,
        };
        let mut parts = id.split(':');
        let (Some(ma), Some(mi), Some(i)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let same = u32::from_str_radix(ma, 16).ok() == Some(major)
            && u32::from_str_radix(mi, 16).ok() == Some(minor)
            && i.parse::<u64>().ok() == Some(ino);
        if same {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            return Some(format!("pid {pid} ({})", comm.trim()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_busy_and_names_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::with_root(d.path());
        let p = d.path().join("sub/x.lock");
        let g = flock_exclusive(&paths, &p, Duration::from_secs(1)).unwrap();
        let e = flock_exclusive(&paths, &p, Duration::from_millis(50)).unwrap_err();
        match &e {
            LockError::Busy { holder, .. } => {
                let h = holder.as_deref().unwrap_or("");
                assert!(h.contains(&std::process::id().to_string()), "{h}");
            }
            LockError::Io(e) => panic!("unexpected {e}"),
        }
        assert!(e.to_string().contains("can't lock file"));
        drop(g);
        flock_exclusive(&paths, &p, Duration::from_millis(50)).unwrap();
    }

    #[test]
    fn a_fifo_lock_file_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::with_root(d.path());
        let p = d.path().join("x.lock");
        nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600)).unwrap();
        let e = flock_exclusive(&paths, &p, Duration::from_millis(50))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a FIFO (named pipe), not a regular file"), "{e}");
    }
}
