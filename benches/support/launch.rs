//! Many processes released at once: each is forked and waits on a shared
//! pipe, and closing its write end lets all of them exec together, as a
//! host booting with many `onboot` containers starts their pre-starts.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Instant;

/// One process's end.
#[derive(Debug)]
pub struct Ended {
    /// Index into the commands given.
    pub index: usize,
    /// Release to reap.
    pub wall_s: f64,
    /// The exit code, or 128 + the signal.
    pub code: i32,
    /// Peak RSS from `wait4`'s rusage, in bytes.
    pub maxrss_bytes: u64,
    pub stderr: String,
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Runs every `argv` (the program first, by path) with exactly `env`,
/// stdin and stdout on `/dev/null`, stderr kept; all released at once.
/// Reaps with `wait4(-1)`: the caller must have no other children.
pub fn at_once(argvs: &[Vec<Vec<u8>>], env: &[(&str, &[u8])]) -> io::Result<Vec<Ended>> {
    let envp: Vec<CString> = env
        .iter()
        .map(|(k, v)| cstring(&[k.as_bytes(), b"=", v].concat()))
        .collect::<io::Result<_>>()?;
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    let argv: Vec<Vec<CString>> = argvs
        .iter()
        .map(|a| a.iter().map(|s| cstring(s)).collect::<io::Result<Vec<_>>>())
        .collect::<io::Result<_>>()?;
    let argv_ptrs: Vec<Vec<*const libc::c_char>> = argv
        .iter()
        .map(|a| {
            let mut p: Vec<_> = a.iter().map(|c| c.as_ptr()).collect();
            p.push(std::ptr::null());
            p
        })
        .collect();
    let null = File::open("/dev/null")?;
    let stderrs: Vec<File> = argvs
        .iter()
        .map(|_| tempfile::tempfile())
        .collect::<io::Result<_>>()?;
    let (gate_r, gate_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let mut pids = Vec::new();
    for (i, argv) in argv_ptrs.iter().enumerate() {
        // SAFETY: the child only calls async-signal-safe functions (close,
        // read, dup2, execve, _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: as above; every pointer was made before the fork and
            // outlives the exec.
            unsafe {
                libc::close(gate_w.as_raw_fd());
                let mut b = 0u8;
                while libc::read(gate_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1) > 0 {}
                libc::dup2(null.as_raw_fd(), 0);
                libc::dup2(null.as_raw_fd(), 1);
                libc::dup2(stderrs[i].as_raw_fd(), 2);
                libc::execve(argv[0], argv.as_ptr(), envp_ptrs.as_ptr());
                libc::_exit(127);
            }
        }
        pids.push(pid);
    }
    drop(gate_r);
    let t0 = Instant::now();
    drop(gate_w);
    let mut ended = Vec::new();
    while ended.len() < pids.len() {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value of this plain C struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `ru` are valid for writes; -1 waits for any
        // child.
        let pid = unsafe { libc::wait4(-1, &mut status, 0, &mut ru) };
        let wall_s = t0.elapsed().as_secs_f64();
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        let Some(index) = pids.iter().position(|&p| p == pid) else {
            continue;
        };
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        ended.push(Ended {
            index,
            wall_s,
            code,
            maxrss_bytes: u64::try_from(ru.ru_maxrss).unwrap_or(0) * 1024,
            stderr: String::new(),
        });
    }
    for e in &mut ended {
        let mut f = &stderrs[e.index];
        f.rewind()?;
        f.read_to_string(&mut e.stderr)?;
    }
    ended.sort_by_key(|e| e.index);
    Ok(ended)
}

/// `[bin, vmid, "pre-start"]` as bytes.
pub fn pre_start_argv(bin: &Path, vmid: u32) -> Vec<Vec<u8>> {
    vec![
        bin.as_os_str().as_bytes().to_vec(),
        vmid.to_string().into_bytes(),
        b"pre-start".to_vec(),
    ]
}

/// Lock waits a run printed with `PCT_PASSTHROUGH_LOCK_TIMING=1`: (lock
/// file name, seconds).
pub fn lock_waits(stderr: &str) -> Vec<(String, f64)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("pct-passthrough: lock-wait ")?;
            let (us, path) = rest.split_once(" us ")?;
            let name = Path::new(path).file_name()?.to_string_lossy().into_owned();
            Some((name, us.parse::<f64>().ok()? / 1e6))
        })
        .collect()
}
