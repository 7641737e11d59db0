//! Test containers: the builder (rootfs, users, groups, PVE config lines,
//! hookscript), and the Proxmox start and stop sequences around the hook.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pct_passthrough::sys::lock::{flock_exclusive, FlockGuard};

use super::bed::{destroy_vmid, wait_monitor_gone, write_replace, Bed, SNIPPETS};
use super::genconf::{self, DevNode, DevSpec, HookPaths, PveConf};
use super::hooks;
use super::run::{run, Run};

/// PVE's `lock_config` timeout.
pub const PVE_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the bed lets one hookscript phase run (PVE has no limit).
pub const HOOK_DEADLINE: Duration = Duration::from_secs(60);
/// The PATH PVE gives the hookscript.
pub const PVE_PATH: &str = "/sbin:/bin:/usr/sbin:/usr/bin";
/// Base of PVE's default map: container ID n is host 100000 + n.
pub const BASE: u32 = 100_000;

/// Which hookscript the container config registers.
#[derive(Debug, Clone)]
pub enum Hook {
    /// No `hookscript:` line.
    None,
    /// The `pct-passthrough` binary under test.
    Binary,
    /// A shell script body (without the `#!` line) installed as the snippet.
    Script(String),
    /// A shell script that appends one line per call to
    /// `/var/lib/lxc/<vmid>/hook-calls.log` (see [`Ct::hook_calls`]), and
    /// fails the given phase with the given exit code and stderr message.
    Recorder { fail: Option<(String, i32, String)> },
}

impl Hook {
    pub fn recorder() -> Hook {
        Hook::Recorder { fail: None }
    }

    pub fn recorder_failing(phase: &str, code: i32, message: &str) -> Hook {
        Hook::Recorder {
            fail: Some((phase.to_string(), code, message.to_string())),
        }
    }
}

#[derive(Debug, Clone)]
struct User {
    name: String,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

/// Describes a container; [`CtBuilder::create`] writes everything.
pub struct CtBuilder<'b> {
    bed: &'b Bed,
    vmid: u32,
    unprivileged: bool,
    groups: Vec<(String, u32)>,
    users: Vec<User>,
    passwd: Option<String>,
    group: Option<String>,
    files: Vec<(String, Vec<u8>, u32)>,
    conf_lines: Vec<String>,
    hook: Hook,
    policy: Option<String>,
    init: String,
}

/// The default `/sbin/init`: stays up until `lxc-stop --kill`, or exits on
/// SIGTERM (sent from inside: an in-guest poweroff, see [`Ct::poweroff_inside`]).
pub const DEFAULT_INIT: &str = "trap 'exit 0' TERM\nwhile :; do sleep 3600 & wait $!; done\n";

/// A shell line for [`CtBuilder::init`]: start `cmd` in the background as
/// `user`, like `gosu user` (implicit form): supplementary groups come from
/// the container's `/etc/group`.
pub fn drop_implicit(user: &str, cmd: &str) -> String {
    format!(
        "su -s /bin/sh {} -c {} &\n",
        sh_quote(user),
        sh_quote(&format!("exec {cmd}"))
    )
}

/// A shell line for [`CtBuilder::init`]: start `cmd` in the background as
/// `uid:gid` with **no** supplementary groups, like `su-exec user:group` or
/// a numeric uid without a passwd entry (busybox `nsenter -S -G` calls
/// `setgroups(0)`; `-F` execs without forking).
pub fn drop_explicit(uid: u32, gid: u32, cmd: &str) -> String {
    format!("nsenter -F -S {uid} -G {gid} -- {cmd} &\n")
}

impl<'b> CtBuilder<'b> {
    pub(crate) fn new(bed: &'b Bed, vmid: u32) -> CtBuilder<'b> {
        CtBuilder {
            bed,
            vmid,
            unprivileged: true,
            groups: vec![("root".into(), 0)],
            users: Vec::new(),
            passwd: None,
            group: None,
            files: Vec::new(),
            conf_lines: Vec::new(),
            hook: Hook::None,
            policy: None,
            init: DEFAULT_INIT.to_string(),
        }
    }

    /// `unprivileged: 0` (the default is an unprivileged container).
    pub fn privileged(mut self) -> Self {
        self.unprivileged = false;
        self
    }

    /// A group in the rootfs `/etc/group`.
    pub fn group(mut self, name: &str, gid: u32) -> Self {
        self.groups.push((name.to_string(), gid));
        self
    }

    /// A user with primary group `gid` and supplementary `groups` (GIDs of
    /// groups declared with [`Self::group`]; the member lists are written).
    /// A primary group not declared gets a group named after the user.
    pub fn user(mut self, name: &str, uid: u32, gid: u32, groups: &[u32]) -> Self {
        self.users.push(User {
            name: name.to_string(),
            uid,
            gid,
            groups: groups.to_vec(),
        });
        self
    }

    /// The usual service: `dialout:20` and `svc` (1000:1000) in it.
    pub fn service_user(self) -> Self {
        self.group("dialout", 20).user("svc", 1000, 1000, &[20])
    }

    /// Replaces the generated `/etc/passwd` verbatim.
    pub fn etc_passwd(mut self, text: &str) -> Self {
        self.passwd = Some(text.to_string());
        self
    }

    /// Replaces the generated `/etc/group` verbatim.
    pub fn etc_group(mut self, text: &str) -> Self {
        self.group = Some(text.to_string());
        self
    }

    /// Any other rootfs file (absolute path inside), owned by container root.
    pub fn file(mut self, path: &str, contents: impl AsRef<[u8]>, mode: u32) -> Self {
        self.files
            .push((path.to_string(), contents.as_ref().to_vec(), mode));
        self
    }

    /// The body of `/sbin/init` (a busybox sh script; `#!/bin/sh` is added).
    /// It runs as container root, like an OCI entrypoint that drops
    /// privileges itself, e.g. `su -s /bin/sh svc -c 'exec sleep 1000' &`.
    pub fn init(mut self, body: &str) -> Self {
        self.init = body.to_string();
        self
    }

    /// A line for `/etc/pve/lxc/<vmid>.conf`'s main section, PVE syntax:
    /// `dev0: /dev/ttyUSB0,gid=20` or `lxc.mount.entry: ...`.
    pub fn conf(mut self, line: &str) -> Self {
        self.conf_lines.push(line.to_string());
        self
    }

    pub fn hook(mut self, hook: Hook) -> Self {
        self.hook = hook;
        self
    }

    /// `/etc/pve/pct-passthrough/<vmid>.toml`.
    pub fn policy(mut self, toml: &str) -> Self {
        self.policy = Some(toml.to_string());
        self
    }

    /// Writes the rootfs, the container config, the snippet and the policy.
    pub fn create(self) -> Ct<'b> {
        let vmid = self.vmid;
        destroy_vmid(vmid);
        let dir = PathBuf::from(format!("/var/lib/lxc/{vmid}"));
        mkdirs(&dir, 0o755);
        self.write_rootfs(&dir.join("rootfs"));
        let hooks_dir = dir.join("hooks");
        mkdirs(&hooks_dir, 0o755);
        for (name, body) in [
            ("pre-start", hooks::PRE_START),
            ("autodev", hooks::AUTODEV),
            ("post-stop", hooks::POST_STOP),
        ] {
            write_replace(hooks_dir.join(name), body.as_bytes(), 0o755);
        }
        let snippet = self.write_snippet();
        let conf = self.pve_conf_text(snippet.as_deref());
        write_replace(format!("/etc/pve/lxc/{vmid}.conf"), conf.as_bytes(), 0o640);
        if let Some(p) = &self.policy {
            write_replace(
                format!("/etc/pve/pct-passthrough/{vmid}.toml"),
                p.as_bytes(),
                0o640,
            );
        }
        Ct {
            _bed: self.bed,
            vmid,
            dir,
            running: false,
        }
    }

    fn pve_conf_text(&self, snippet: Option<&str>) -> String {
        let vmid = self.vmid;
        let mut normal: Vec<String> = vec![
            "arch: amd64".into(),
            format!("hostname: e2e{vmid}"),
            "memory: 512".into(),
            "ostype: unmanaged".into(),
            format!("rootfs: local:{vmid}/vm-{vmid}-disk-0.raw,size=1G"),
            "swap: 0".into(),
        ];
        if self.unprivileged {
            normal.push("unprivileged: 1".into());
        }
        if let Some(s) = snippet {
            normal.push(format!("hookscript: local:snippets/{s}"));
        }
        let mut raw = Vec::new();
        for l in &self.conf_lines {
            if l.starts_with("lxc.") {
                raw.push(l.clone());
            } else {
                normal.push(l.clone());
            }
        }
        // PVE writes normal keys sorted, then the raw lxc.* keys in order.
        normal.sort_by(|a, b| key_of(a).cmp(key_of(b)));
        let mut text = String::new();
        for l in normal.iter().chain(raw.iter()) {
            text.push_str(l);
            text.push('\n');
        }
        text
    }

    fn write_snippet(&self) -> Option<String> {
        let vmid = self.vmid;
        let (name, body) = match &self.hook {
            Hook::None => return None,
            Hook::Binary => {
                let name = format!("e2e-{vmid}-pct-passthrough");
                let path = Path::new(SNIPPETS).join(&name);
                let _ = fs::remove_file(&path);
                symlink(Bed::hook_binary(), &path)
                    .unwrap_or_else(|e| panic!("e2e: symlink {}: {e}", path.display()));
                return Some(name);
            }
            Hook::Script(body) => (format!("e2e-{vmid}-script"), body.clone()),
            Hook::Recorder { fail } => (format!("e2e-{vmid}-recorder"), recorder_body(fail)),
        };
        let path = Path::new(SNIPPETS).join(&name);
        write_replace(&path, format!("#!/bin/sh\n{body}").as_bytes(), 0o755);
        Some(name)
    }

    fn write_rootfs(&self, root: &Path) {
        mkdirs(root, 0o755);
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "tmp", "root",
            "home", "run", "var", "var/log",
        ] {
            mkdirs(&root.join(d), 0o755);
        }
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))
            .expect("chmod tmp");
        fs::copy("/bin/busybox", root.join("bin/busybox"))
            .unwrap_or_else(|e| panic!("e2e: copy busybox: {e}"));
        for applet in self.bed.applets() {
            let p = root.join(applet);
            if p.exists() || applet == "sbin/init" {
                continue;
            }
            if let Some(parent) = p.parent() {
                mkdirs(parent, 0o755);
            }
            symlink("/bin/busybox", &p).unwrap_or_else(|e| panic!("e2e: {}: {e}", p.display()));
        }
        let init = format!("#!/bin/sh\n{}", self.init);
        write_replace(root.join("sbin/init"), init.as_bytes(), 0o755);

        let passwd = self.passwd.clone().unwrap_or_else(|| {
            let mut s = String::from("root:x:0:0:root:/root:/bin/sh\n");
            for u in &self.users {
                s.push_str(&format!(
                    "{}:x:{}:{}::/home/{}:/bin/sh\n",
                    u.name, u.uid, u.gid, u.name
                ));
            }
            s
        });
        let group = self.group.clone().unwrap_or_else(|| self.group_text());
        write_replace(root.join("etc/passwd"), passwd.as_bytes(), 0o644);
        write_replace(root.join("etc/group"), group.as_bytes(), 0o644);
        write_replace(
            root.join("etc/hostname"),
            format!("e2e{}\n", self.vmid).as_bytes(),
            0o644,
        );
        for (path, bytes, mode) in &self.files {
            let p = root.join(path.trim_start_matches('/'));
            if let Some(parent) = p.parent() {
                mkdirs(parent, 0o755);
            }
            write_replace(&p, bytes, *mode);
        }
        let base = if self.unprivileged { BASE } else { 0 };
        chown_tree(root, base, base);
        for u in &self.users {
            let home = root.join("home").join(&u.name);
            mkdirs(&home, 0o755);
            chown_tree(&home, base + u.uid, base + u.gid);
        }
    }

    fn group_text(&self) -> String {
        let mut groups: BTreeMap<u32, (String, Vec<String>)> = BTreeMap::new();
        let mut order: Vec<u32> = Vec::new();
        for (name, gid) in &self.groups {
            if !groups.contains_key(gid) {
                order.push(*gid);
            }
            groups.insert(*gid, (name.clone(), Vec::new()));
        }
        for u in &self.users {
            if let std::collections::btree_map::Entry::Vacant(e) = groups.entry(u.gid) {
                order.push(u.gid);
                e.insert((u.name.clone(), Vec::new()));
            }
            for g in &u.groups {
                let entry = groups.get_mut(g).unwrap_or_else(|| {
                    panic!(
                        "e2e: user {} is in group {g}, which is not declared",
                        u.name
                    )
                });
                entry.1.push(u.name.clone());
            }
        }
        let mut s = String::new();
        for gid in order {
            let (name, members) = &groups[&gid];
            s.push_str(&format!("{name}:x:{gid}:{}\n", members.join(",")));
        }
        s
    }
}

fn key_of(line: &str) -> &str {
    line.split(':').next().unwrap_or(line)
}

/// The recorder script: one line per call with argv, the config-lock state,
/// the environment PVE or LXC gave it, and whether stdin was at EOF.
fn recorder_body(fail: &Option<(String, i32, String)>) -> String {
    let mut s = String::from(
        r#"lock=free
flock -n -E 99 "/run/lock/lxc/pve-config-$1.lock" true || { [ $? -eq 99 ] && lock=held; }
if read -r _line; then stdin=data; else stdin=eof; fi
echo "argc=$# vmid=$1 phase=$2 lock=$lock stdin=$stdin path=$PATH lc_all=${LC_ALL-} lxc_name=${LXC_NAME-} lxc_target=${LXC_TARGET-}" >> "/var/lib/lxc/$1/hook-calls.log"
echo "recorder: $2 for $1"
"#,
    );
    if let Some((phase, code, msg)) = fail {
        s.push_str(&format!(
            "if [ \"$2\" = {} ]; then echo {} >&2; exit {code}; fi\n",
            sh_quote(phase),
            sh_quote(msg)
        ));
    }
    s.push_str("exit 0\n");
    s
}

/// Single-quotes `s` for sh.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn mkdirs(p: &Path, mode: u32) {
    fs::create_dir_all(p).unwrap_or_else(|e| panic!("e2e: mkdir {}: {e}", p.display()));
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("e2e: chmod {}: {e}", p.display()));
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    lchown(p, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("e2e: chown {}: {e}", p.display()));
    let meta = fs::symlink_metadata(p).expect("stat");
    if meta.is_dir() {
        for e in fs::read_dir(p).expect("read_dir").flatten() {
            chown_tree(&e.path(), uid, gid);
        }
    }
}

/// What the post-stop hookscript did (read from the bed's LXC hook).
#[derive(Debug, Clone)]
pub struct PostStop {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The task of `pct start`.
#[derive(Debug, Clone, Default)]
pub struct StartReport {
    pub vmid: u32,
    /// `/var/lib/lxc/<vmid>/config` as generated before pre-start.
    pub generated_config: Option<String>,
    /// The same file as LXC read it (after the hook's edits).
    pub started_config: Option<String>,
    pub pre_start: Option<Run>,
    pub lxc_start: Option<Run>,
    pub post_start: Option<Run>,
    /// Set when lxc-start failed after the monitor ran the post-stop hook.
    pub post_stop: Option<PostStop>,
    pub started: bool,
    /// The task's error, worded as PVE does.
    pub error: Option<String>,
    /// Warnings, worded as PVE does (`hookscript error for ... on post-start`).
    pub warnings: Vec<String>,
    /// Hook output and PVE's messages, in order.
    pub task_log: String,
    /// How long the config lock was held.
    pub lock_held: Duration,
}

impl StartReport {
    /// Panics with the task log unless the container started.
    #[track_caller]
    pub fn expect_started(&self) -> &Self {
        assert!(self.started, "e2e: CT {} did not start:\n{self}", self.vmid);
        self
    }
}

impl std::fmt::Display for StartReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "started={} error={:?} warnings={:?}",
            self.started, self.error, self.warnings
        )?;
        writeln!(f, "--- task log ---\n{}", self.task_log)?;
        if let Some(r) = &self.lxc_start {
            if !r.success() {
                writeln!(f, "--- lxc-start ---\n{r}")?;
            }
        }
        Ok(())
    }
}

/// The task of `pct stop`.
#[derive(Debug, Clone)]
pub struct StopReport {
    pub pre_stop: Option<Run>,
    pub lxc_stop: Run,
    pub post_stop: Option<PostStop>,
    pub warnings: Vec<String>,
    pub task_log: String,
}

/// A container process seen from the host: host PID and host IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProc {
    pub pid: i32,
    pub comm: String,
    /// Real uid and gid on the host.
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups on the host.
    pub groups: Vec<u32>,
}

/// Output of a command run inside the container.
pub type Exec = Run;

/// A created test container. Destroyed (hard stop, files removed) on drop.
pub struct Ct<'b> {
    _bed: &'b Bed,
    pub vmid: u32,
    dir: PathBuf,
    running: bool,
}

impl Ct<'_> {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    pub fn pve_conf_path(&self) -> PathBuf {
        PathBuf::from(format!("/etc/pve/lxc/{}.conf", self.vmid))
    }

    pub fn pve_conf(&self) -> String {
        fs::read_to_string(self.pve_conf_path()).unwrap_or_default()
    }

    /// Replaces `/etc/pve/lxc/<vmid>.conf` (mode 0640, as on pmxcfs).
    pub fn set_pve_conf(&self, text: &str) {
        write_replace(self.pve_conf_path(), text.as_bytes(), 0o640);
    }

    /// `/var/lib/lxc/<vmid>/config` as it is now.
    pub fn lxc_config(&self) -> String {
        fs::read_to_string(self.dir.join("config")).unwrap_or_default()
    }

    /// LXC's log of the last start (DEBUG level).
    pub fn lxc_log(&self) -> String {
        fs::read_to_string(self.dir.join("lxc.log")).unwrap_or_default()
    }

    /// pmxcfs takes only modes 0640 and 0600: the files the hook writes on
    /// `/etc/pve` (the config, the state that follows the container) must
    /// have one of them after each start.
    pub fn assert_pmxcfs_modes(&self) {
        for f in [self.pve_conf_path(), self.cluster_state_path()] {
            if let Ok(m) = fs::metadata(&f) {
                let mode = std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777;
                assert!(
                    mode == 0o640 || mode == 0o600,
                    "e2e: {} has mode {mode:o}; pmxcfs takes only 0640 and 0600",
                    f.display()
                );
            }
        }
    }

    /// The node-local part of the state.
    pub fn state_path(&self) -> PathBuf {
        PathBuf::from(format!("/var/lib/pct-passthrough/{}.json", self.vmid))
    }

    /// The part of the state that follows the container (on `/etc/pve`).
    pub fn cluster_state_path(&self) -> PathBuf {
        PathBuf::from(format!("/etc/pve/pct-passthrough/{}.state.json", self.vmid))
    }

    /// Both state files, removed: the container forgets what it learned.
    pub fn remove_state(&self) {
        for p in [self.state_path(), self.cluster_state_path()] {
            let _ = fs::remove_file(p);
        }
    }

    /// The state once it satisfies `ok`, and when it was seen so; panics
    /// after `within`.
    pub fn wait_recorded(
        &self,
        within: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> (serde_json::Value, Instant) {
        let start = Instant::now();
        loop {
            if let Some(v) = self.state() {
                if ok(&v) {
                    return (v, Instant::now());
                }
            }
            assert!(
                start.elapsed() < within,
                "state of {} did not reach the expected shape within {within:?}: {:?}",
                self.vmid,
                self.state()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The state as the tool sees it: both files' fields in one object
    /// (`None` if neither exists), read under the tool's own state lock so
    /// that a write between the two files is never seen half done.
    pub fn state(&self) -> Option<serde_json::Value> {
        let _lock = fs::File::open(format!("/run/lock/pct-passthrough/{}.lock", self.vmid))
            .ok()
            .and_then(|f| nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockShared).ok());
        let mut merged = serde_json::Map::new();
        let mut any = false;
        for path in [self.state_path(), self.cluster_state_path()] {
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            any = true;
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("e2e: {}: not JSON: {e}\n{text}", path.display()));
            if let serde_json::Value::Object(m) = v {
                merged.extend(m);
            }
        }
        any.then_some(serde_json::Value::Object(merged))
    }

    /// A file of the rootfs, read from the host (test inspection only).
    pub fn rootfs_file(&self, path: &str) -> String {
        fs::read_to_string(self.rootfs().join(path.trim_start_matches('/'))).unwrap_or_default()
    }

    /// Lines the [`Hook::Recorder`] wrote, one per call.
    pub fn hook_calls(&self) -> Vec<String> {
        fs::read_to_string(self.dir.join("hook-calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The start sequence of `pct start` (pve-facts §2), under the config lock.
    pub fn start(&mut self) -> StartReport {
        let vmid = self.vmid;
        let mut rep = StartReport {
            vmid,
            ..StartReport::default()
        };
        let lock = take_config_lock(vmid);
        let locked_at = Instant::now();
        self.start_locked(&mut rep);
        rep.lock_held = locked_at.elapsed();
        drop(lock);
        self.assert_pmxcfs_modes();
        if let Some(e) = &rep.error {
            rep.task_log.push_str(&format!("TASK ERROR: {e}\n"));
        }
        rep
    }

    fn start_locked(&mut self, rep: &mut StartReport) {
        let vmid = self.vmid;
        if self.is_running() {
            rep.error = Some(format!("CT {vmid} already running"));
            return;
        }
        for f in [
            "post-stop.stdout",
            "post-stop.stderr",
            "post-stop.rc",
            "devices.spec",
            "prestart.error",
        ] {
            let _ = fs::remove_file(self.dir.join(f));
        }
        // 1-2. Load the config; update_lxc_config.
        let conf = PveConf::parse(&self.pve_conf());
        let config = match generate(vmid, &conf) {
            Ok(c) => c,
            Err(e) => {
                rep.error = Some(e);
                return;
            }
        };
        write_replace(self.dir.join("config"), config.as_bytes(), 0o644);
        rep.generated_config = Some(config);
        // 5. pre-start hookscript: a failure aborts the start.
        if let Some(vol) = conf.hookscript() {
            let r = match check_hookscript(vol) {
                Ok(path) => exec_hookscript(&path, vmid, "pre-start"),
                Err(e) => {
                    rep.error = Some(format!("hookscript error for {vmid} on pre-start: {e}"));
                    return;
                }
            };
            log_run(&mut rep.task_log, &r);
            let failure = r.pve_failure();
            rep.pre_start = Some(r);
            if let Some(e) = failure {
                rep.error = Some(format!("hookscript error for {vmid} on pre-start: {e}"));
                return;
            }
        }
        // 6. lxc-start. LXC's pre-start hook re-reads the PVE config for
        // devN: the bed prepares that list here, from the re-read config.
        let conf = PveConf::parse(&self.pve_conf());
        if let Err(e) = write_device_spec(&self.dir, &conf) {
            rep.error = Some(e);
            return;
        }
        // Mount points, as PVE's LXC pre-start hook inserts them (after a
        // recursive unmount of what a previous start left).
        let rootfs = self.dir.join("rootfs");
        super::bed::unmount_under(&rootfs);
        if let Err(e) = super::mounts::insert_all(&rootfs, &conf) {
            rep.error = Some(format!("startup for container '{vmid}' failed: {e}"));
            return;
        }
        rep.started_config = Some(self.lxc_config());
        let _ = fs::remove_file(self.dir.join("lxc.log"));
        let r = run(
            Command::new("lxc-start")
                .args(["-n", &vmid.to_string(), "-d"])
                .arg("-o")
                .arg(self.dir.join("lxc.log"))
                .args(["-l", "DEBUG"])
                .env_clear()
                .env("PATH", PVE_PATH)
                .env("LC_ALL", "C"),
            Duration::from_secs(60),
        );
        let ok = r.success();
        rep.lxc_start = Some(r);
        if !ok || !self.wait_state("RUNNING", Duration::from_secs(10)) {
            rep.post_stop = self.wait_post_stop(Duration::from_secs(5));
            wait_monitor_gone(vmid, Duration::from_secs(15));
            rep.error = Some(format!(
                "startup for container '{vmid}' failed\n--- lxc log (errors) ---\n{}",
                self.lxc_log()
                    .lines()
                    .filter(|l| l.contains("ERROR"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
            return;
        }
        self.running = true;
        rep.started = true;
        // 7. post-start hookscript: a failure is only a warning.
        if let Some(vol) = conf.hookscript() {
            match check_hookscript(vol) {
                Ok(path) => {
                    let r = exec_hookscript(&path, vmid, "post-start");
                    log_run(&mut rep.task_log, &r);
                    if let Some(e) = r.pve_failure() {
                        warn(
                            rep,
                            format!("hookscript error for {vmid} on post-start: {e}"),
                        );
                    }
                    rep.post_start = Some(r);
                }
                Err(e) => warn(
                    rep,
                    format!("hookscript error for {vmid} on post-start: {e}"),
                ),
            }
        }
    }

    /// The stop sequence of `pct stop`: pre-stop, `lxc-stop --kill`, and the
    /// post-stop hookscript from LXC's post-stop hook.
    pub fn stop(&mut self) -> StopReport {
        let vmid = self.vmid;
        let mut warnings = Vec::new();
        let mut task_log = String::new();
        let lock = take_config_lock(vmid);
        let conf = PveConf::parse(&self.pve_conf());
        let mut pre_stop = None;
        if let Some(vol) = conf.hookscript() {
            match check_hookscript(vol) {
                Ok(path) => {
                    let r = exec_hookscript(&path, vmid, "pre-stop");
                    log_run(&mut task_log, &r);
                    if let Some(e) = r.pve_failure() {
                        let w = format!("hookscript error for {vmid} on pre-stop: {e}");
                        task_log.push_str(&format!("WARN: {w}\n"));
                        warnings.push(w);
                    }
                    pre_stop = Some(r);
                }
                Err(e) => warnings.push(format!("hookscript error for {vmid} on pre-stop: {e}")),
            }
        }
        let lxc_stop = run(
            Command::new("lxc-stop")
                .args(["-n", &vmid.to_string(), "--kill"])
                .env_clear()
                .env("PATH", PVE_PATH),
            Duration::from_secs(60),
        );
        assert!(
            lxc_stop.success() && self.wait_state("STOPPED", Duration::from_secs(10)),
            "e2e: CT {vmid} did not stop: {lxc_stop}"
        );
        self.running = false;
        drop(lock);
        let post_stop = if conf.hookscript().is_some() {
            self.wait_post_stop(Duration::from_secs(10))
        } else {
            None
        };
        assert!(
            wait_monitor_gone(vmid, Duration::from_secs(15)),
            "e2e: CT {vmid}: the LXC monitor (post-stop hooks) did not exit"
        );
        if let Some(p) = &post_stop {
            if p.code != 0 {
                warnings.push(format!(
                    "hookscript error for {vmid} on post-stop: exit code {}",
                    p.code
                ));
            }
        }
        StopReport {
            pre_stop,
            lxc_stop,
            post_stop,
            warnings,
            task_log,
        }
    }

    fn wait_post_stop(&self, timeout: Duration) -> Option<PostStop> {
        let rc = self.dir.join("post-stop.rc");
        let start = Instant::now();
        while !rc.exists() {
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let read = |n: &str| fs::read_to_string(self.dir.join(n)).unwrap_or_default();
        Some(PostStop {
            code: read("post-stop.rc").trim().parse().unwrap_or(-1),
            stdout: read("post-stop.stdout"),
            stderr: read("post-stop.stderr"),
        })
    }

    fn wait_state(&self, state: &str, timeout: Duration) -> bool {
        let r = run(
            Command::new("lxc-wait").args([
                "-n",
                &self.vmid.to_string(),
                "-s",
                state,
                "-t",
                &timeout.as_secs().to_string(),
            ]),
            timeout + Duration::from_secs(5),
        );
        r.success()
    }

    pub fn is_running(&self) -> bool {
        let r = run(
            Command::new("lxc-info").args(["-n", &self.vmid.to_string(), "-s", "-H"]),
            Duration::from_secs(10),
        );
        r.stdout.trim() == "RUNNING"
    }

    /// The host PID of the container's init (`lxc-info -p`).
    pub fn init_pid(&self) -> Option<i32> {
        let r = run(
            Command::new("lxc-info").args(["-n", &self.vmid.to_string(), "-p", "-H"]),
            Duration::from_secs(10),
        );
        r.stdout.trim().parse().ok()
    }

    /// The container's processes as the host sees them (same pid namespace
    /// as init), with host IDs from `/proc/<pid>/status`.
    pub fn processes(&self) -> Vec<HostProc> {
        let Some(init) = self.init_pid() else {
            return Vec::new();
        };
        let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
        let Some(want) = ns(&init.to_string()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(pid) = name.parse::<i32>() else {
                continue;
            };
            if ns(&name).as_ref() != Some(&want) {
                continue;
            }
            let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue;
            };
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or("")
                    .split_whitespace()
                    .filter_map(|v| v.parse::<u32>().ok())
                    .collect::<Vec<u32>>()
            };
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push(HostProc {
                pid,
                comm: comm.trim().to_string(),
                uid: field("Uid:").first().copied().unwrap_or(u32::MAX),
                gid: field("Gid:").first().copied().unwrap_or(u32::MAX),
                groups: field("Groups:"),
            });
        }
        out.sort_by_key(|p| p.pid);
        out
    }

    /// Runs `cmd` with `/bin/sh -c` as container root (`lxc-attach`).
    pub fn exec(&self, cmd: &str) -> Exec {
        self.attach(&["/bin/sh", "-c", cmd])
    }

    /// Runs `cmd` as `user` through busybox `su`, which sets the
    /// supplementary groups from the container's `/etc/group`.
    pub fn exec_as(&self, user: &str, cmd: &str) -> Exec {
        self.attach(&["/bin/busybox", "su", "-s", "/bin/sh", user, "-c", cmd])
    }

    /// Runs `cmd` as `uid:gid` without supplementary groups (the explicit
    /// form, see [`drop_explicit`]).
    pub fn exec_ids(&self, uid: u32, gid: u32, cmd: &str) -> Exec {
        let (u, g) = (uid.to_string(), gid.to_string());
        self.attach(&[
            "/bin/busybox",
            "nsenter",
            "-F",
            "-S",
            &u,
            "-G",
            &g,
            "--",
            "/bin/sh",
            "-c",
            cmd,
        ])
    }

    /// An in-guest poweroff: init exits, LXC stops the container and runs
    /// post-stop (`LXC_TARGET=stop`); Proxmox calls no pre-stop. Returns the
    /// post-stop hookscript's record, if a hookscript is registered.
    pub fn poweroff_inside(&mut self) -> Option<PostStop> {
        let _ = fs::remove_file(self.dir.join("post-stop.rc"));
        let _ = self.exec("kill -TERM 1");
        assert!(
            self.wait_state("STOPPED", Duration::from_secs(20)),
            "e2e: CT {} did not stop after an in-guest poweroff",
            self.vmid
        );
        self.running = false;
        let conf = PveConf::parse(&self.pve_conf());
        let post = conf
            .hookscript()
            .and_then(|_| self.wait_post_stop(Duration::from_secs(10)));
        assert!(
            wait_monitor_gone(self.vmid, Duration::from_secs(15)),
            "e2e: CT {}: the LXC monitor (post-stop hooks) did not exit",
            self.vmid
        );
        post
    }

    /// An in-guest `reboot -f`: LXC restarts the container itself; the
    /// post-stop hook sees `LXC_TARGET=reboot` and, like PVE's, skips the
    /// hookscript. No hookscript phase runs. Waits until it runs again
    /// with a new init.
    pub fn reboot_inside(&mut self) {
        let old = self.init_pid();
        let _ = self.exec("reboot -f");
        let start = Instant::now();
        loop {
            let now = self.init_pid();
            if now.is_some() && now != old && self.is_running() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "e2e: CT {} did not come back after an in-guest reboot",
                self.vmid
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn attach(&self, argv: &[&str]) -> Exec {
        assert!(self.running, "e2e: CT {} is not running", self.vmid);
        run(
            Command::new("lxc-attach")
                .args(["-n", &self.vmid.to_string(), "--clear-env"])
                .args(["-v", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
                .arg("--")
                .args(argv),
            Duration::from_secs(30),
        )
    }
}

impl Drop for Ct<'_> {
    fn drop(&mut self) {
        destroy_vmid(self.vmid);
    }
}

fn take_config_lock(vmid: u32) -> FlockGuard {
    let path = PathBuf::from(format!("/run/lock/lxc/pve-config-{vmid}.lock"));
    flock_exclusive(
        &pct_passthrough::paths::Paths::with_root("/"),
        &path,
        PVE_LOCK_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("e2e: {e}"))
}

fn warn(rep: &mut StartReport, w: String) {
    rep.task_log.push_str(&format!("WARN: {w}\n"));
    rep.warnings.push(w);
}

fn log_run(log: &mut String, r: &Run) {
    log.push_str(&r.stdout);
    if !r.stdout.is_empty() && !r.stdout.ends_with('\n') {
        log.push('\n');
    }
    log.push_str(&r.stderr);
    if !r.stderr.is_empty() && !r.stderr.ends_with('\n') {
        log.push('\n');
    }
}

/// `check_hookscript`: a `local:snippets/<file>` volume whose file exists
/// and is executable.
pub fn check_hookscript(vol: &str) -> Result<PathBuf, String> {
    let Some(name) = vol.strip_prefix("local:snippets/") else {
        return Err(format!("'{vol}' is not in the snippets directory"));
    };
    if name.is_empty() || name.contains('/') {
        return Err(format!("'{vol}' is not in the snippets directory"));
    }
    let path = Path::new(SNIPPETS).join(name);
    let meta = fs::metadata(&path).map_err(|_| format!("script '{vol}' does not exist"))?;
    if !meta.is_file() {
        return Err(format!("script '{vol}' does not exist"));
    }
    if meta.mode() & 0o111 == 0 {
        return Err(format!("script '{vol}' is not executable"));
    }
    Ok(path)
}

/// `run_command([$path, $vmid, $phase])`: no shell, PVE's PATH plus
/// `LC_ALL=C`, stdin at EOF, both pipes read until closed.
pub fn exec_hookscript(path: &Path, vmid: u32, phase: &str) -> Run {
    run(
        Command::new(path)
            .arg(vmid.to_string())
            .arg(phase)
            .env_clear()
            .env("PATH", PVE_PATH)
            .env("LC_ALL", "C")
            .current_dir("/"),
        HOOK_DEADLINE,
    )
}

/// `update_lxc_config`: stats every devN path (a missing one fails the
/// start) and renders the config.
fn generate(vmid: u32, conf: &PveConf) -> Result<String, String> {
    let devs = stat_devs(conf)?;
    genconf::lxc_config(
        vmid,
        conf,
        &devs,
        &HookPaths {
            pre_start: format!("/var/lib/lxc/{vmid}/hooks/pre-start"),
            autodev: format!("/var/lib/lxc/{vmid}/hooks/autodev"),
            post_stop: format!("/var/lib/lxc/{vmid}/hooks/post-stop"),
        },
    )
}

fn stat_devs(conf: &PveConf) -> Result<Vec<(DevSpec, DevNode)>, String> {
    let mut out = Vec::new();
    for (_key, spec) in conf.devs()? {
        let meta = match fs::metadata(&spec.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("Device {} does not exist", spec.path))
            }
            Err(_) => return Err(format!("Error accessing device {}", spec.path)),
        };
        use std::os::unix::fs::FileTypeExt;
        let kind = if meta.file_type().is_char_device() {
            'c'
        } else if meta.file_type().is_block_device() {
            'b'
        } else {
            return Err(format!("{} is not a device", spec.path));
        };
        let rdev = meta.rdev();
        out.push((
            spec,
            DevNode {
                kind,
                major: libc::major(rdev),
                minor: libc::minor(rdev),
            },
        ));
    }
    Ok(out)
}

/// The devN list for the bed's LXC pre-start and autodev hooks, with
/// owners mapped through the container's idmap. A malformed `lxc.idmap`
/// fails PVE's LXC pre-start hook (`parse_id_maps` dies): the bed leaves
/// the message for its own hook, which then fails the start in LXC.
fn write_device_spec(dir: &Path, conf: &PveConf) -> Result<(), String> {
    let devs = stat_devs(conf)?;
    let map = match conf.effective_idmap() {
        Ok(map) => map,
        Err(e) => {
            write_replace(dir.join("prestart.error"), e.as_bytes(), 0o644);
            return Ok(());
        }
    };
    let text: String = devs
        .iter()
        .map(|(s, n)| genconf::device_spec_line(s, n, &map))
        .collect();
    write_replace(dir.join("devices.spec"), text.as_bytes(), 0o644);
    Ok(())
}
