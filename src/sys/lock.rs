//! flock-based locks as RAII guards, with a timeout and a "busy" error that
//! names the holder. Lock order is documented in the README:
//! PVE config lock (by-hand runs only) → tool lock → shadow's locks.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::Context;

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

/// Takes an exclusive flock on `path` (created if needed), polling until
/// `timeout`.
pub fn flock_exclusive(path: &Path, timeout: Duration) -> Result<FlockGuard, LockError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create lock directory", dir.display()))
            .map_err(LockError::Io)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("{}: cannot open lock file", path.display()))
        .map_err(LockError::Io)?;
    let start = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => {
                return Ok(FlockGuard {
                    _file: file,
                    path: path.to_path_buf(),
                })
            }
            Err(fs::TryLockError::WouldBlock) => {}
            Err(fs::TryLockError::Error(e)) => {
                return Err(LockError::Io(
                    anyhow::Error::new(e).context(format!("{}: flock failed", path.display())),
                ))
            }
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
        let p = d.path().join("sub/x.lock");
        let g = flock_exclusive(&p, Duration::from_secs(1)).unwrap();
        let e = flock_exclusive(&p, Duration::from_millis(50)).unwrap_err();
        match &e {
            LockError::Busy { holder, .. } => {
                let h = holder.as_deref().unwrap_or("");
                assert!(h.contains(&std::process::id().to_string()), "{h}");
            }
            LockError::Io(e) => panic!("unexpected {e}"),
        }
        assert!(e.to_string().contains("can't lock file"));
        drop(g);
        flock_exclusive(&p, Duration::from_millis(50)).unwrap();
    }
}
