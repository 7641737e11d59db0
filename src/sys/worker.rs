//! Detaching post-start's worker from Proxmox: double fork, `setsid`, stdio
//! on `/dev/null`, no inherited fds but the ones named, a hard time bound
//! (SIGALRM). Proxmox waits for stdout/stderr to close, so the worker must
//! hold neither.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use nix::sys::wait::waitpid;
use nix::unistd::ForkResult;

use crate::sys::ns::close_fds_except;
use crate::sys::proc::{fork, SingleThreaded};

/// Runs `work` in a detached grandchild and returns its PID at once. The
/// grandchild keeps only `keep` (plus 0-2 on `/dev/null`) and is killed by
/// SIGALRM after `hard_bound`. Refuses to fork a multi-threaded process.
pub fn detach<F: FnOnce()>(keep: &[RawFd], hard_bound: Duration, work: F) -> Result<u32> {
    let proof = SingleThreaded::check().map_err(|e| anyhow!(e))?;
    detach_as(&proof, keep, hard_bound, work)
}

/// [`detach`] for a caller that proves it is single-threaded.
pub fn detach_as<F: FnOnce()>(
    proof: &SingleThreaded,
    keep: &[RawFd],
    hard_bound: Duration,
    work: F,
) -> Result<u32> {
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe2")?;
    // The child only forks again, reports a PID and leaves with `_exit`.
    match fork(proof).context("fork")? {
        ForkResult::Parent { child } => {
            drop(wr);
            let mut s = String::new();
            let _ = File::from(rd).take(32).read_to_string(&mut s);
            let _ = waitpid(child, None);
            s.trim()
                .parse()
                .map_err(|_| anyhow!("the worker did not start (got {s:?})"))
        }
        ForkResult::Child => {
            drop(rd);
            let _ = nix::unistd::setsid();
            // A forked child has one thread, so the proof still holds.
            match fork(proof) {
                Ok(ForkResult::Parent { child }) => {
                    let mut w = File::from(wr);
                    let _ = write!(w, "{child}");
                    // SAFETY: leave without running anything of the parent's.
                    unsafe { libc::_exit(0) }
                }
                Ok(ForkResult::Child) => {
                    drop(wr);
                    grandchild(keep, hard_bound, work);
                    // SAFETY: as above.
                    unsafe { libc::_exit(0) }
                }
                // SAFETY: as above.
                Err(_) => unsafe { libc::_exit(1) },
            }
        }
    }
}

fn grandchild<F: FnOnce()>(keep: &[RawFd], hard_bound: Duration, work: F) {
    match OpenOptions::new().read(true).write(true).open("/dev/null") {
        Ok(null) => {
            for fd in 0..3 {
                // SAFETY: dup2 onto 0-2 replaces stdio with /dev/null; both fds are valid.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
        Err(_) => {
            for fd in 0..3 {
                // SAFETY: without /dev/null, close stdio: Proxmox must not wait for us.
                unsafe { libc::close(fd) };
            }
        }
    }
    close_fds_except(keep);
    let _ = nix::unistd::chdir("/");
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let secs = u32::try_from(hard_bound.as_secs().max(1)).unwrap_or(u32::MAX);
    // SAFETY: alarm only arms a timer; SIGALRM's default action ends us.
    unsafe { libc::alarm(secs) };
    work();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn returns_at_once_and_the_worker_runs_detached() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let o2 = out.clone();
        let t = Instant::now();
        // SAFETY: the worker only sleeps, reads /proc and writes a file;
        // it prints nothing through std's stdio.
        let proof = unsafe { SingleThreaded::assume() };
        let pid = detach_as(&proof, &[], Duration::from_secs(5), move || {
            std::thread::sleep(Duration::from_millis(300));
            let sid = nix::unistd::getsid(None).unwrap();
            let fd1 = std::fs::read_link("/proc/self/fd/1").unwrap();
            std::fs::write(
                &o2,
                format!("{} {}", sid == nix::unistd::getpid(), fd1.display()),
            )
            .unwrap();
        })
        .unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        assert!(pid > 1);
        let start = Instant::now();
        while !out.exists() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        // Not a session leader (second fork), stdout on /dev/null.
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "false /dev/null");
    }

    #[test]
    fn detach_refuses_a_multi_threaded_caller() {
        let _other = std::thread::spawn(|| std::thread::sleep(Duration::from_secs(2)));
        let e = detach(&[], Duration::from_secs(5), || {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("threads"), "{e}");
    }
}
