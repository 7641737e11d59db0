//! Host-side process facts: finding a container's init (LXC's command
//! socket through `lxc-info`, then the top of its payload cgroup), pinning
//! it with a pidfd, and listing
//! the processes of its PID namespace. Reads `/proc` only; parsing is in
//! `model::runtime`.

use std::fs::{self, File};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::model::escape::escape;
use crate::model::runtime::{parse_status, IdMap, ProcStatus};
use crate::paths::Vmid;

/// Reads at most 64 KiB of a `/proc` file.
fn read_small(path: &Path) -> Option<String> {
    let mut s = String::new();
    File::open(path)
        .ok()?
        .take(64 << 10)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

pub fn read_status(pid: u32) -> Option<ProcStatus> {
    parse_status(&read_small(Path::new(&format!("/proc/{pid}/status")))?)
}

/// Start time in clock ticks (field 22 of `/proc/<pid>/stat`).
pub fn read_start(pid: u32) -> Option<u64> {
    let s = read_small(Path::new(&format!("/proc/{pid}/stat")))?;
    // comm may hold spaces and parentheses: fields follow the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// `/proc/<pid>/ns/<kind>` as a string like `pid:[4026531836]`.
pub fn ns_id(pid: &str, kind: &str) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

pub fn read_id_maps(pid: u32) -> Result<(IdMap, IdMap)> {
    let one = |kind: &str| -> Result<IdMap> {
        let p = format!("/proc/{pid}/{kind}");
        let t = read_small(Path::new(&p)).ok_or_else(|| anyhow!("{p}: cannot read"))?;
        IdMap::parse(&t).ok_or_else(|| anyhow!("{p}: cannot parse {t:?}"))
    };
    Ok((one("uid_map")?, one("gid_map")?))
}

/// `pidfd_open(2)`.
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// True while the process behind `pidfd` has not exited.
pub fn pidfd_alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: signal 0 only checks; a null siginfo and zero flags are valid.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

/// Proof that this process has one thread, which [`fork`] requires: after a
/// fork only the calling thread exists in the child, so a lock another
/// thread held (malloc's, stdio's, std's) stays locked there forever.
#[derive(Debug)]
pub struct SingleThreaded(());

impl SingleThreaded {
    /// Checks `/proc/self/status` (`Threads: 1`) at run time.
    pub fn check() -> Result<SingleThreaded, String> {
        let s = read_small(Path::new("/proc/self/status"))
            .ok_or("/proc/self/status: cannot read it to count this process's threads")?;
        match threads_of(&s) {
            Some(1) => Ok(SingleThreaded(())),
            Some(n) => Err(format!(
                "this process has {n} threads (/proc/self/status); forking it is only safe with one; this is a bug in pct-passthrough"
            )),
            None => Err("/proc/self/status: no Threads: line".into()),
        }
    }

    /// For a caller that knows better than the thread count, such as a
    /// test under the multi-threaded test harness.
    ///
    /// # Safety
    ///
    /// Until the child `_exit`s or `exec`s, it must not need a lock that
    /// another thread of this process may hold at the fork: no stdio through
    /// std's locked handles; allocation is fine (glibc resets malloc's locks
    /// in the child).
    pub unsafe fn assume() -> SingleThreaded {
        SingleThreaded(())
    }
}

/// The `Threads:` count of a `/proc/<pid>/status` text.
fn threads_of(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `fork(2)` for a process proven single-threaded.
pub fn fork(_proof: &SingleThreaded) -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: with one thread (checked by `SingleThreaded::check`, or
    // vouched for by the caller of `SingleThreaded::assume`) no lock can be
    // held by a thread that does not exist in the child.
    unsafe { nix::unistd::fork() }
}

/// The container's init, pinned.
#[derive(Debug)]
pub struct Pinned {
    pub pid: u32,
    pub pidfd: OwnedFd,
    /// The container has its own user namespace (unprivileged).
    pub own_userns: bool,
    /// `pid:[…]` of the container's PID namespace.
    pub pidns: String,
    /// How it was found, for the log.
    pub found_by: &'static str,
}

/// The unified cgroup hierarchy's mount point.
fn unified_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists())
}

/// cgroup directory names LXC and PVE use for a container: PVE's
/// `lxc/<vmid>` (payload in its `ns` child, `lxc.cgroup.dir.container.inner`)
/// and LXC's default `lxc.payload.<name>`.
fn cgroup_names(vmid: Vmid) -> [String; 3] {
    [
        format!("lxc/{vmid}"),
        format!("lxc.payload.{vmid}"),
        format!("lxc.payload/{vmid}"),
    ]
}

/// Where a container's init sits: the top of its payload cgroup, or the
/// `init.scope` systemd moves PID 1 into (cgroup paths under the unified
/// root, without the leading `/`).
fn init_cgroups(vmid: Vmid) -> Vec<String> {
    let tops = [
        format!("lxc/{vmid}/ns"),
        format!("lxc/{vmid}"),
        format!("lxc.payload.{vmid}"),
        format!("lxc.payload/{vmid}"),
    ];
    tops.iter()
        .flat_map(|t| [t.clone(), format!("{t}/init.scope")])
        .collect()
}

/// Does `cgroup_path` (as in `/proc/<pid>/cgroup`) belong to `vmid`?
pub fn cgroup_is_container(cgroup_path: &str, vmid: Vmid) -> bool {
    cgroup_names(vmid).iter().any(|n| {
        let n = format!("/{n}");
        cgroup_path == n || cgroup_path.starts_with(&format!("{n}/"))
    })
}

fn unified_cgroup_of(pid: u32) -> Option<String> {
    read_small(Path::new(&format!("/proc/{pid}/cgroup")))?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// Is this the init of a container's PID namespace, seen from the host's?
/// Exactly two levels (host, container) ending in 1: the init of a PID
/// namespace nested inside the container (three levels or more) is a
/// process the container made up, not its init.
fn is_ns_init(st: &ProcStatus) -> bool {
    st.nspid.len() == 2 && st.nspid[1] == 1
}

/// Why a process is not a container's init, for the log.
fn not_init_reason(pid: u32, st: &ProcStatus) -> String {
    let levels: Vec<String> = st.nspid.iter().map(u32::to_string).collect();
    let what = match st.nspid.len() {
        0 | 1 => "it is in the host's PID namespace",
        2 => "it is not PID 1 of its PID namespace",
        _ => "it is PID 1 of a PID namespace nested inside the container (a decoy, not the container's init)",
    };
    format!(
        "pid {pid} ({}) has NSpid {}: {what}",
        escape(&st.name),
        levels.join(" ")
    )
}

/// Looks for the container's init at the top of its payload cgroup (or its
/// `init.scope`) only, never deeper: the container may make sub-cgroups and
/// put anything in them. Errors say what was seen and refused.
pub fn init_from_cgroup(vmid: Vmid) -> Result<u32, String> {
    let root = unified_root().ok_or("no unified cgroup hierarchy found")?;
    let mut refused = Vec::new();
    let mut looked = 0;
    for cg in init_cgroups(vmid) {
        let Some(procs) = read_small(&root.join(&cg).join("cgroup.procs")) else {
            continue;
        };
        looked += 1;
        for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            let Some(st) = read_status(pid) else { continue };
            if is_ns_init(&st) {
                return Ok(pid);
            }
            if st.nspid.last() == Some(&1) {
                refused.push(not_init_reason(pid, &st));
            }
        }
    }
    if looked == 0 {
        return Err(format!(
            "no cgroup of container {vmid} under {} (is it running?)",
            root.display()
        ));
    }
    if refused.is_empty() {
        Err(format!(
            "no init of container {vmid} at the top of its payload cgroup"
        ))
    } else {
        Err(format!(
            "no init of container {vmid} at the top of its payload cgroup; refused {}",
            refused.join("; ")
        ))
    }
}

/// Asks LXC's command socket through `lxc-info -n <vmid> -p -H`, bounded.
fn init_from_lxc_info(vmid: Vmid, bound: Duration) -> Result<u32> {
    let mut child = Command::new("lxc-info")
        .args(["-n", &vmid.to_string(), "-p", "-H"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run lxc-info")?;
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            bail!("lxc-info -n {vmid} -p did not answer within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut out = String::new();
    if let Some(o) = child.stdout.take() {
        o.take(4096).read_to_string(&mut out)?;
    }
    out.trim().parse().map_err(|_| {
        anyhow!(
            "lxc-info -n {vmid} -p printed {:?}, not a PID; is the container running?",
            out.trim()
        )
    })
}

/// Finds the container's init and pins it with a pidfd. LXC's own answer
/// first (`lxc-info -p`: the PID its monitor cloned as init); only if LXC
/// does not answer, the top of the container's payload cgroup. Either way
/// [`pin`] refuses a PID that is not the init of a PID namespace one level
/// below ours, in the container's cgroup.
pub fn find_and_pin(vmid: Vmid) -> Result<Pinned> {
    let lxc = match init_from_lxc_info(vmid, Duration::from_secs(3)) {
        Ok(pid) => return pin(pid, vmid, "lxc-info"),
        Err(e) => e,
    };
    match init_from_cgroup(vmid) {
        Ok(pid) => pin(pid, vmid, "cgroup"),
        Err(e) => bail!("{lxc:#}; and by cgroup: {e}"),
    }
}

/// Pins `pid` and checks it is `vmid`'s init. The checks run after the
/// pidfd is open and the pidfd is still alive after them, so they were about
/// the pinned process and not a recycled PID.
pub fn pin(pid: u32, vmid: Vmid, found_by: &'static str) -> Result<Pinned> {
    let pidfd = pidfd_open(pid).with_context(|| format!("pid {pid}: cannot open a pidfd"))?;
    let st = read_status(pid).ok_or_else(|| anyhow!("pid {pid}: gone"))?;
    if !is_ns_init(&st) {
        bail!(
            "{}; not the init of a container PID namespace, refusing it",
            not_init_reason(pid, &st)
        );
    }
    let cg = unified_cgroup_of(pid).unwrap_or_default();
    if !cgroup_is_container(&cg, vmid) {
        bail!("pid {pid} is in cgroup {cg:?}, not container {vmid}'s; refusing it");
    }
    let pidns =
        ns_id(&pid.to_string(), "pid").ok_or_else(|| anyhow!("pid {pid}: no pid namespace"))?;
    if Some(&pidns) == ns_id("self", "pid").as_ref() {
        bail!("pid {pid} shares our PID namespace; refusing it");
    }
    let own_userns = ns_id(&pid.to_string(), "user") != ns_id("self", "user");
    if !pidfd_alive(&pidfd) {
        bail!("pid {pid} exited while it was being checked");
    }
    Ok(Pinned {
        pid,
        pidfd,
        own_userns,
        pidns,
        found_by,
    })
}

/// A process of the container, read from the host.
#[derive(Debug, Clone)]
pub struct Seen {
    pub pid: u32,
    pub status: ProcStatus,
    pub start: u64,
}

/// Every process in the PID namespace `pidns` (the container's), at most
/// `max` of them.
pub fn scan_pidns(pidns: &str, max: usize) -> Vec<Seen> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        if ns_id(name, "pid").as_deref() != Some(pidns) {
            continue;
        }
        let (Some(status), Some(start)) = (read_status(pid), read_start(pid)) else {
            continue;
        };
        out.push(Seen { pid, status, start });
        if out.len() >= max {
            break;
        }
    }
    out
}

/// This binary's path, if an `lxc.hook.mount` can run it: in an
/// unprivileged container the hook runs as the container's root, which is
/// "other" to host files, so every directory needs o+x and the file o+rx.
pub fn exe_for_mount_hook(unprivileged: bool) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let s = exe
        .to_str()
        .ok_or_else(|| format!("{}: not UTF-8", exe.display()))?
        .to_string();
    if !unprivileged {
        return Ok(s);
    }
    let mode = |p: &Path| fs::metadata(p).map(|m| m.permissions().mode()).unwrap_or(0);
    if mode(&exe) & 0o005 != 0o005 {
        return Err(format!("{s} is not readable and executable by others"));
    }
    for dir in exe.ancestors().skip(1) {
        if mode(dir) & 0o001 == 0 {
            return Err(format!(
                "{} is not searchable by others, so the container's root cannot run {s}",
                dir.display()
            ));
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_belong_exactly() {
        let v = Vmid::new(105).unwrap();
        assert!(cgroup_is_container("/lxc/105/ns", v));
        assert!(cgroup_is_container("/lxc/105", v));
        assert!(cgroup_is_container("/lxc.payload.105/init.scope", v));
        assert!(!cgroup_is_container("/lxc/1050/ns", v));
        assert!(!cgroup_is_container("/lxc.payload.1051", v));
        assert!(!cgroup_is_container("/", v));
    }

    fn status(name: &str, nspid: &[u32]) -> ProcStatus {
        ProcStatus {
            name: name.into(),
            ppid: 0,
            uid: [0; 4],
            gid: [0; 4],
            groups: Vec::new(),
            nspid: nspid.to_vec(),
        }
    }

    #[test]
    fn only_a_two_level_pid_1_is_a_container_init() {
        assert!(is_ns_init(&status("init", &[3310, 1])));
        // The decoy: PID 1 of a namespace nested inside the container.
        let decoy = status("init", &[3332, 50, 1]);
        assert!(!is_ns_init(&decoy));
        let why = not_init_reason(3332, &decoy);
        assert!(
            why.contains("NSpid 3332 50 1") && why.contains("nested"),
            "{why}"
        );
        assert!(!is_ns_init(&status("sh", &[3340, 7])));
        assert!(!is_ns_init(&status("systemd", &[1])));
        // A comm set with prctl is escaped in the reason.
        let why = not_init_reason(9, &status("x\x1b[2J\x07", &[9, 5, 1]));
        assert!(why.contains("x\\x1b[2J\\x07"), "{why}");
    }

    #[test]
    fn init_is_looked_for_at_the_top_of_the_payload_cgroup_only() {
        let v = Vmid::new(105).unwrap();
        let c = init_cgroups(v);
        for want in [
            "lxc/105/ns",
            "lxc/105/ns/init.scope",
            "lxc.payload.105",
            "lxc.payload.105/init.scope",
        ] {
            assert!(c.iter().any(|x| x == want), "{want}: {c:?}");
        }
        assert!(c.iter().all(|x| x.matches('/').count() <= 3), "{c:?}");
        assert!(!c.iter().any(|x| x.contains("decoy")));
    }

    #[test]
    fn fork_refuses_a_multi_threaded_process() {
        assert_eq!(threads_of("Name:\tx\nThreads:\t1\nVmRSS: 1\n"), Some(1));
        assert_eq!(threads_of("Threads:\t17\n"), Some(17));
        assert_eq!(threads_of("Name:\tx\n"), None);
        // The test harness runs this on a thread of its own: two at least.
        let _other = std::thread::spawn(|| std::thread::sleep(Duration::from_secs(2)));
        let e = SingleThreaded::check().unwrap_err();
        assert!(
            e.contains("threads") && e.contains("only safe with one"),
            "{e}"
        );
        // A single-threaded child passes the check.
        // SAFETY: the child only reads /proc and `_exit`s.
        let proof = unsafe { SingleThreaded::assume() };
        match fork(&proof).unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = SingleThreaded::check().is_ok();
                // SAFETY: leave without running the harness's code.
                unsafe { libc::_exit(i32::from(!ok)) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn own_process_is_readable_and_refused_as_init() {
        let me = std::process::id();
        assert!(read_status(me).is_some());
        assert!(read_start(me).is_some());
        let fd = pidfd_open(me).unwrap();
        assert!(pidfd_alive(&fd));
        let e = pin(me, Vmid::new(105).unwrap(), "test")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not the init"), "{e}");
    }
}
