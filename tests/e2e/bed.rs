//! The bed itself: prerequisites, the cross-process e2e lock, the backup and
//! restore of `/etc/subuid` and `/etc/subgid`, and cleanup of the reserved
//! VMID range. Containers ([`super::ct`]) and device stand-ins
//! ([`super::devices`]) hang off a [`Bed`].

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use pct_passthrough::sys::lock::{flock_exclusive, FlockGuard};

use super::ct::CtBuilder;
use super::devices::{self, CharNode, PtySerial};
use super::run::{run, Run};
use super::syslog::SyslogCapture;

/// Test VMIDs. Nothing real uses numbers this high on a test machine.
pub const VMIDS: std::ops::RangeInclusive<u32> = 990_100..=990_199;

/// Serializes every e2e test on this machine: across test binaries,
/// worktrees and threads (flock conflicts between open files of one process).
pub const E2E_LOCK: &str = "/run/lock/pct-passthrough-e2e.lock";
/// How long a test waits for another e2e run to finish.
pub const E2E_LOCK_WAIT: Duration = Duration::from_secs(20 * 60);

/// The bed's own host state: the subid backups and its markers.
pub const BED_DIR: &str = "/var/lib/pct-passthrough-e2e";
/// `local:snippets/` on a Proxmox host.
pub const SNIPPETS: &str = "/var/lib/vz/snippets";

/// PVE's storage definitions; the bed writes [`LOCAL_STORAGE`] there when
/// the file is absent (and removes it again), so `local:snippets/...`
/// resolves as on a Proxmox host with snippets enabled.
pub const STORAGE_CFG: &str = "/etc/pve/storage.cfg";
pub const LOCAL_STORAGE: &str =
    "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,snippets\n";

const SUBID_FILES: [&str; 4] = ["/etc/subuid", "/etc/subgid", "/etc/subuid-", "/etc/subgid-"];
/// What lxc-pve's postinst gives root; newuidmap needs it for the default map.
pub const PVE_ROOT_SUBID: &str = "root:100000:65536";

/// The test bed. Holds the global e2e lock for its lifetime; on drop
/// (panics included) destroys leftover test containers and restores
/// `/etc/subuid`, `/etc/subgid` and their `-` backups byte for byte.
pub struct Bed {
    applets: Vec<String>,
    tags: AtomicU32,
    syslog: Option<SyslogCapture>,
    // Last: fields drop in order, and the lock must outlive everything.
    _lock: FlockGuard,
}

impl Bed {
    /// Checks prerequisites (panics with the reason if missing), takes the
    /// e2e lock, cleans leftovers of a crashed run, backs up the subid
    /// files and gives root `100000:65536` in them as Proxmox's lxc-pve
    /// package does.
    pub fn new() -> Bed {
        check_prerequisites();
        let lock = flock_exclusive(
            &pct_passthrough::paths::Paths::with_root("/"),
            Path::new(E2E_LOCK),
            E2E_LOCK_WAIT,
        )
        .unwrap_or_else(|e| panic!("e2e: cannot take the e2e lock: {e}"));
        let _ = fs::write(
            E2E_LOCK,
            format!(
                "pid {} {}\n",
                std::process::id(),
                std::env::args().next().unwrap_or_default()
            ),
        );
        fs::create_dir_all(BED_DIR).unwrap_or_else(|e| panic!("e2e: {BED_DIR}: {e}"));
        restore_subids_if_backed_up();
        clean_all();
        backup_subids();
        for f in ["/etc/subuid", "/etc/subgid"] {
            add_line_if_missing(f, PVE_ROOT_SUBID);
        }
        for d in [
            "/etc/pve/lxc",
            "/etc/pve/pct-passthrough",
            SNIPPETS,
            "/run/lock/lxc",
        ] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("e2e: {d}: {e}"));
        }
        if !Path::new(STORAGE_CFG).exists() {
            write_replace(STORAGE_CFG, LOCAL_STORAGE.as_bytes(), 0o640);
            write_replace(Path::new(BED_DIR).join("storage.cfg.ours"), b"", 0o600);
        }
        Bed {
            applets: busybox_applets(),
            tags: AtomicU32::new(0),
            syslog: SyslogCapture::start(),
            _lock: lock,
        }
    }

    /// Starts describing container `vmid` (from [`VMIDS`]).
    pub fn container(&self, vmid: u32) -> CtBuilder<'_> {
        assert!(
            VMIDS.contains(&vmid),
            "e2e: VMID {vmid} is outside the reserved range {VMIDS:?}"
        );
        CtBuilder::new(self, vmid)
    }

    /// A pty standing in for a USB serial adapter: slave `root:dialout
    /// 0660`, with a by-id link under `/dev/serial/by-id/`.
    pub fn pty_serial(&self) -> PtySerial {
        let n = self.tags.fetch_add(1, Ordering::Relaxed);
        PtySerial::create(&format!("Serial_{}_{n}", std::process::id()))
    }

    /// A char node `/dev/pct-passthrough-e2e/<name>` with `major:minor`,
    /// owner `root:<gid>` and `mode`. Pick numbers of a harmless device
    /// (1:3 null, 1:5 zero, 1:7 full).
    pub fn char_node(&self, name: &str, major: u32, minor: u32, gid: u32, mode: u32) -> CharNode {
        CharNode::create(name, major, minor, gid, mode)
    }

    /// The hook binary under test.
    pub fn hook_binary() -> PathBuf {
        PathBuf::from(env!("CARGO_BIN_EXE_pct-passthrough"))
    }

    pub fn subuid(&self) -> String {
        read_or_empty("/etc/subuid")
    }

    pub fn subgid(&self) -> String {
        read_or_empty("/etc/subgid")
    }

    /// Replaces `/etc/subuid` for this test (restored on drop).
    pub fn set_subuid(&self, text: &str) {
        write_replace("/etc/subuid", text.as_bytes(), 0o644);
    }

    /// Replaces `/etc/subgid` for this test (restored on drop).
    pub fn set_subgid(&self, text: &str) {
        write_replace("/etc/subgid", text.as_bytes(), 0o644);
    }

    /// Appends `line` (e.g. `root:20:1`) to `/etc/subgid` unless present.
    pub fn add_subgid(&self, line: &str) {
        add_line_if_missing("/etc/subgid", line);
    }

    /// Appends `line` to `/etc/subuid` unless present.
    pub fn add_subuid(&self, line: &str) {
        add_line_if_missing("/etc/subuid", line);
    }

    /// Every syslog message received on `/dev/log` since `Bed::new()`.
    /// Panics when this host runs its own syslog daemon (then read its log).
    pub fn syslog(&self) -> Vec<String> {
        self.syslog
            .as_ref()
            .expect("e2e: /dev/log belongs to this host's syslog daemon; the bed cannot capture it")
            .lines()
    }

    /// The syslog messages that carry `vmid=<vmid>`.
    pub fn syslog_for(&self, vmid: u32) -> Vec<String> {
        let tag = format!("vmid={vmid}");
        self.syslog()
            .into_iter()
            .filter(|l| l.split_whitespace().any(|w| w == tag))
            .collect()
    }

    /// Runs the binary under test by hand (`PCT_PASSTHROUGH_ROOT` unset, so
    /// `/`), e.g. `bed.cli(&["status", "990101", "--json"])`.
    pub fn cli(&self, args: &[&str]) -> Run {
        run(
            Command::new(Bed::hook_binary())
                .args(args)
                .env_clear()
                .env("PATH", super::ct::PVE_PATH)
                .env("LC_ALL", "C"),
            Duration::from_secs(60),
        )
    }

    pub(crate) fn applets(&self) -> &[String] {
        &self.applets
    }
}

impl Default for Bed {
    fn default() -> Self {
        Bed::new()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        clean_all();
        restore_subids_if_backed_up();
    }
}

/// Panics, naming what is missing, unless this machine can run the e2e tests.
fn check_prerequisites() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "e2e: the end-to-end tests need root (euid is {euid}); run ./scripts/test.sh as root. \
         They never skip."
    );
    for tool in [
        "lxc-start",
        "lxc-stop",
        "lxc-attach",
        "lxc-info",
        "lxc-wait",
        "newuidmap",
        "newgidmap",
        "flock",
        "mount",
        "mknod",
    ] {
        let found = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists());
        assert!(
            found,
            "e2e: `{tool}` is missing; install lxc, uidmap and busybox-static (see .ci/run)"
        );
    }
    let bb = fs::read("/bin/busybox")
        .unwrap_or_else(|e| panic!("e2e: /bin/busybox: {e}; install busybox-static (see .ci/run)"));
    assert!(
        !elf_has_interp(&bb),
        "e2e: /bin/busybox is dynamically linked; install busybox-static (see .ci/run)"
    );
    let cg = Path::new("/sys/fs/cgroup/devices/devices.allow").exists()
        || Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    assert!(cg, "e2e: no devices cgroup found under /sys/fs/cgroup");
}

/// True when an ELF64 file has a PT_INTERP header (a dynamic executable).
fn elf_has_interp(b: &[u8]) -> bool {
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
    };
    if b.get(..4) != Some(b"\x7fELF") || b.get(4) != Some(&2) {
        return true;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return true;
    };
    (0..usize::from(phnum)).any(|i| {
        let o = usize::try_from(phoff).unwrap_or(usize::MAX) + i * usize::from(phentsize);
        b.get(o..o + 4) == Some(&3u32.to_le_bytes()[..])
    })
}

fn busybox_applets() -> Vec<String> {
    let r = run(
        Command::new("/bin/busybox").arg("--list-full"),
        Duration::from_secs(10),
    );
    r.ok()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "bin/busybox")
        .map(str::to_string)
        .collect()
}

fn backup_path(f: &str) -> PathBuf {
    Path::new(BED_DIR)
        .join("subid-backup")
        .join(f.trim_start_matches("/etc/"))
}

fn backup_subids() {
    let dir = Path::new(BED_DIR).join("subid-backup");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("e2e: {}: {e}", dir.display()));
    for f in SUBID_FILES {
        let b = backup_path(f);
        let absent = b.with_extension("absent");
        // The backup keeps the original's mode, for the restore.
        match fs::read(f) {
            Ok(bytes) => {
                let mode = fs::metadata(f).map_or(0o644, |m| m.permissions().mode() & 0o7777);
                write_replace(&b, &bytes, mode)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_replace(&absent, b"", 0o600)
            }
            Err(e) => panic!("e2e: cannot back up {f}: {e}"),
        }
    }
    write_replace(dir.join("complete"), b"", 0o600);
}

/// Restores the subid files from a complete backup (ours, or one a crashed
/// run left), then removes the backup.
fn restore_subids_if_backed_up() {
    let dir = Path::new(BED_DIR).join("subid-backup");
    if !dir.join("complete").exists() {
        let _ = fs::remove_dir_all(&dir);
        return;
    }
    for f in SUBID_FILES {
        let b = backup_path(f);
        if b.with_extension("absent").exists() {
            let _ = fs::remove_file(f);
        } else if let Ok(bytes) = fs::read(&b) {
            let mode = fs::metadata(&b).map_or(0o644, |m| m.permissions().mode() & 0o7777);
            write_replace(Path::new(f), &bytes, mode);
        }
    }
    let _ = fs::remove_dir_all(&dir);
}

/// Test-setup write: temp file in the same directory, then rename.
pub(crate) fn write_replace(path: impl AsRef<Path>, bytes: &[u8], mode: u32) {
    let path = path.as_ref();
    let tmp = path.with_file_name(format!(
        ".{}.e2e-tmp.{}",
        path.file_name().expect("file name").to_string_lossy(),
        std::process::id()
    ));
    fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("e2e: write {}: {e}", tmp.display()));
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("e2e: chmod {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("e2e: rename to {}: {e}", path.display()));
}

fn read_or_empty(path: &str) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

fn add_line_if_missing(path: &str, line: &str) {
    let mut text = read_or_empty(path);
    if text.lines().any(|l| l.trim() == line) {
        return;
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    write_replace(path, text.as_bytes(), 0o644);
}

/// Destroys every container and file of the reserved range, and the
/// device stand-ins. Best effort: never panics (it runs in `Drop`).
pub(crate) fn clean_all() {
    for vmid in VMIDS {
        destroy_vmid(vmid);
    }
    devices::clean_leftovers();
    let ours = Path::new(BED_DIR).join("storage.cfg.ours");
    if ours.exists() {
        if fs::read_to_string(STORAGE_CFG).is_ok_and(|t| t == LOCAL_STORAGE) {
            let _ = fs::remove_file(STORAGE_CFG);
        }
        let _ = fs::remove_file(ours);
    }
}

/// Stops (hard) and removes container `vmid` and its files everywhere.
pub(crate) fn destroy_vmid(vmid: u32) {
    let dir = PathBuf::from(format!("/var/lib/lxc/{vmid}"));
    if dir.exists() {
        let _ = Command::new("lxc-stop")
            .args(["-n", &vmid.to_string(), "-k"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        // lxc-stop 5.0.2 returns after the post-stop hooks; waiting for the
        // monitor too keeps a late post-stop from writing after the cleanup
        // on LXC versions that report STOPPED first.
        if !wait_monitor_gone(vmid, Duration::from_secs(15)) {
            for pid in monitor_pids(vmid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            wait_monitor_gone(vmid, Duration::from_secs(5));
        }
        unmount_under(&dir);
        let _ = fs::remove_dir_all(&dir);
    }
    let _ = fs::remove_file(format!("/etc/pve/lxc/{vmid}.conf"));
    let _ = fs::remove_file(format!("/etc/pve/pct-passthrough/{vmid}.toml"));
    let _ = fs::remove_file(format!("/run/lock/lxc/pve-config-{vmid}.lock"));
    remove_prefixed("/etc/pve/lxc", &format!("{vmid}.conf."));
    remove_prefixed("/etc/pve/pct-passthrough", &format!("{vmid}.toml."));
    remove_prefixed("/etc/pve/pct-passthrough", &format!("{vmid}.state."));
    remove_prefixed("/var/lib/pct-passthrough", &format!("{vmid}."));
    remove_prefixed(SNIPPETS, &format!("e2e-{vmid}-"));
}

fn remove_prefixed(dir: &str, prefix: &str) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Lazily unmounts anything mounted under `dir` in our mount namespace.
pub(crate) fn unmount_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = format!("{}/", dir.display());
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Host PIDs of the `lxc-start` monitor of container `vmid`.
pub fn monitor_pids(vmid: u32) -> Vec<i32> {
    let want = format!("[lxc monitor] /var/lib/lxc {vmid}");
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.trim_end_matches('\0').trim_end() == want {
            out.push(pid);
        }
    }
    out
}

/// Waits until container `vmid` has no monitor left; false on timeout.
pub fn wait_monitor_gone(vmid: u32, timeout: Duration) -> bool {
    super::run::wait_until(timeout, || monitor_pids(vmid).is_empty())
}
