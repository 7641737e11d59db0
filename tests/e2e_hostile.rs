//! A hostile container's tricks against post-start (issue 12 items 2 to 5),
//! on real LXC: a symlink swapped in while the group file is written, a
//! nested PID namespace posing as init, control characters in names, and a
//! FUSE mount over `/etc` that answers INIT and then nothing. Plus the
//! container child's bounded wait, against a real stalled FUSE mount.

mod e2e;

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use e2e::ct::{exec_hookscript, sh_quote};
use e2e::*;
use pct_passthrough::paths::Vmid;
use pct_passthrough::sys::ns::{self, CheckedDir, Resolve, Target, TimedOut};
use pct_passthrough::sys::proc::{find_and_pin, init_from_cgroup, SingleThreaded};

/// Waits until someone has read `/etc/group` (inotify: closed without
/// writing), then at once swaps it with `/etc/swap`, a symlink: the window
/// between the tool's read and its write.
const SWAPPER: &str = r#"#define _GNU_SOURCE
#include <fcntl.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    static char buf[1 << 16];
    int in = inotify_init1(0);
    if (in < 0 || inotify_add_watch(in, "/etc", IN_CLOSE_NOWRITE) < 0) return 3;
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n <= 0) return 4;
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *e = (void *)p;
            if (e->len && !strcmp(e->name, "group")) {
                syscall(SYS_renameat2, AT_FDCWD, "/etc/group", AT_FDCWD, "/etc/swap", 2 /* RENAME_EXCHANGE */);
                return 0;
            }
            p += sizeof *e + e->len;
        }
    }
}
"#;

/// Sets its own comm to terminal controls, drops to 1000:1000, sleeps.
const EVILCOMM: &str = r#"#include <grp.h>
#include <sys/prctl.h>
#include <unistd.h>
int main(void) {
    prctl(PR_SET_NAME, "ev\x1b]0;pwn\x07\r", 0, 0, 0);
    if (setgroups(0, NULL) || setgid(1000) || setuid(1000)) return 3;
    for (;;) pause();
}
"#;

/// Mounts a FUSE filesystem at argv[1] that answers INIT and then reads
/// every request without ever answering it: whoever touches it waits in
/// the kernel, past SIGKILL once the request was read.
const STALLFUSE: &str = r#"#include <fcntl.h>
#include <linux/fuse.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>
static char buf[1 << 20];
int main(int c, char **v) {
    if (c < 2) return 2;
    int fd = open("/dev/fuse", O_RDWR);
    if (fd < 0) { perror("open /dev/fuse"); return 3; }
    char opts[128];
    snprintf(opts, sizeof opts, "fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other", fd);
    if (mount("stall", v[1], "fuse.stall", MS_NOSUID | MS_NODEV, opts)) { perror("mount"); return 4; }
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0) return 0;
        struct fuse_in_header *in = (void *)buf;
        if (in->opcode != FUSE_INIT) continue;
        struct fuse_init_in *ii = (void *)(in + 1);
        struct { struct fuse_out_header h; struct fuse_init_out o; } r;
        memset(&r, 0, sizeof r);
        r.h.len = sizeof r;
        r.h.unique = in->unique;
        r.o.major = FUSE_KERNEL_VERSION;
        r.o.minor = ii->minor < FUSE_KERNEL_MINOR_VERSION ? ii->minor : FUSE_KERNEL_MINOR_VERSION;
        r.o.max_write = 4096;
        r.o.max_readahead = ii->max_readahead;
        if (write(fd, &r, sizeof r) < 0) { perror("write init"); return 5; }
    }
}
"#;

fn host_files() -> Vec<(String, Vec<u8>)> {
    ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"]
        .iter()
        .map(|p| (p.to_string(), fs::read(p).unwrap_or_default()))
        .collect()
}

/// Host processes of this binary that sit in uninterruptible sleep.
fn stuck_tool_processes() -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let st = fs::read_to_string(format!("/proc/{name}/status")).unwrap_or_default();
        let comm = st.lines().next().unwrap_or_default();
        let state = st
            .lines()
            .find(|l| l.starts_with("State:"))
            .unwrap_or_default();
        if comm.contains("pct-passthroug") && state.contains("D (") {
            out.push(format!("{name}: {comm} {state}"));
        }
    }
    out
}

/// Item 2: the container swaps `/etc/group` with a symlink to another of
/// its files right after post-start read it, before it writes. The link's
/// target must never receive the group text, and the write must fail and
/// say why rather than report success.
#[test]
fn symlink_swapped_in_after_the_read_is_never_written_through() {
    let bed = Bed::new();
    let before = host_files();
    let swapper = static_c("swapper", SWAPPER);
    let dropto = static_c("dropto", DROPTO);
    let target_text = "not a group file\n";
    let mut outcomes = Vec::new();
    let mut hit = 0;
    // The race is the container's: under load it may take a few tries to
    // land between the read and the write; stop at the first that does.
    for vmid in 990_170..990_178 {
        let pty = bed.pty_serial();
        let mut ct = bed
            .container(vmid)
            .service_user()
            .file("/bin/dropto", &dropto, 0o755)
            .file("/bin/swapper", &swapper, 0o755)
            .file("/etc/target", target_text, 0o644)
            .conf(&pty.bind_entry())
            .init(
                "ln -s target /etc/swap\n/bin/swapper &\n/bin/dropto 1000 1000 /bin/sleep 1000 &\nwhile :; do sleep 3600; done\n",
            )
            .hook(Hook::Binary)
            .create();
        // The group file lacks dialout: post-start has something to write.
        fs::write(ct.rootfs().join("etc/group"), "root:x:0:\nsvc:x:1000:\n").unwrap();
        ct.start().expect_started();
        let (v, _) = ct.wait_recorded(Duration::from_secs(20), |v| {
            v["last_run"]["phase"] == "post-start"
        });
        let target = fs::read_to_string(ct.rootfs().join("etc/target")).unwrap();
        let changes = v["changes"].to_string();
        outcomes.push(format!("{vmid}: {} {changes}", v["last_run"]["outcome"]));
        assert_eq!(
            target, target_text,
            "{vmid}: post-start wrote through the swapped-in symlink: {v:#}"
        );
        if changes.contains("not a regular file") || changes.contains("took its place") {
            hit += 1;
            assert!(!changes.contains("created group"), "{vmid}: {v:#}");
        }
        let temps: Vec<String> = fs::read_dir(ct.rootfs().join("etc"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("pct-passthrough"))
            .collect();
        assert!(temps.is_empty(), "{vmid}: temp files left: {temps:?}");
        ct.stop();
        if hit > 0 && outcomes.len() >= 2 {
            break;
        }
    }
    eprintln!("{}", outcomes.join("\n"));
    assert!(
        hit > 0,
        "the swap never landed between read and write: {outcomes:#?}"
    );
    assert_eq!(host_files(), before, "a host file changed");
}

/// The unified cgroup root of this host.
fn unified() -> PathBuf {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists())
        .unwrap()
}

fn nspid(pid: i32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn ppid(pid: i32) -> i32 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Item 3: the container makes a nested PID namespace whose PID 1 runs as a
/// fake user 4242 over a tmpfs `/etc`, and moves its real init into a
/// sub-cgroup so the decoy is the only "PID 1" at the top. post-start must
/// still pin the real init (LXC's answer) and record the real user.
#[test]
fn nested_pid_namespace_decoy_is_not_taken_for_init() {
    let bed = Bed::new();
    let vmid = 990_176;
    let pty = bed.pty_serial();
    let decoy = "mount -t tmpfs t /etc && \
        echo 'decoy:x:4242:4242::/:/bin/sh' > /etc/passwd && \
        echo 'dialout:x:20:decoy' > /etc/group && \
        exec /bin/dropto 4242 4242 /bin/sleep 1000";
    let mut ct = bed
        .container(vmid)
        .service_user()
        .file("/bin/dropto", static_c("dropto", DROPTO), 0o755)
        .conf(&pty.bind_entry())
        .init(&format!(
            "/bin/dropto 1000 1000 /bin/sleep 1000 &\nunshare -m -p -f sh -c {} &\nwhile :; do sleep 3600; done\n",
            sh_quote(decoy)
        ))
        .hook(Hook::Binary)
        .create();
    ct.start().expect_started();
    ct.wait_recorded(Duration::from_secs(20), |v| {
        v["runtime_user"]["uid"].as_u64().is_some()
    });
    let init = ct.init_pid().unwrap();
    // The decoy: PID 1 of a namespace nested in the container's, a child
    // of the container's `unshare`.
    let mut decoy_pid = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            let parents: Vec<i32> = ct.processes().iter().map(|p| p.pid).collect();
            decoy_pid = fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .find(|&p| {
                    let ns = nspid(p);
                    ns.len() == 3 && ns[2] == 1 && parents.contains(&ppid(p))
                });
            decoy_pid.is_some()
        }),
        "the decoy did not start: {:?}",
        ct.processes()
    );
    let decoy_pid = decoy_pid.unwrap();
    // Move the real init below the top of the payload cgroup: the decoy is
    // the only PID 1 left at the top.
    let cg = fs::read_to_string(format!("/proc/{init}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .unwrap();
    let top = unified().join(cg.trim_start_matches('/'));
    let sub = top.join("moved-init");
    fs::create_dir_all(&sub).unwrap();
    fs::write(sub.join("cgroup.procs"), init.to_string()).unwrap();
    fs::write(top.join("cgroup.procs"), decoy_pid.to_string()).unwrap();

    let v = Vmid::new(vmid).unwrap();
    let p = find_and_pin(v).unwrap();
    assert_eq!(
        (p.pid, p.found_by),
        (u32::try_from(init).unwrap(), "lxc-info")
    );
    // Without LXC's answer the cgroup search refuses the decoy and says why.
    let e = init_from_cgroup(v).unwrap_err();
    assert!(
        e.contains(&format!("pid {decoy_pid}")) && e.contains("nested"),
        "{e}"
    );

    // post-start again, from a clean slate: the real user, never 4242.
    ct.remove_state();
    let run = exec_hookscript(&Bed::hook_binary(), vmid, "post-start");
    assert!(run.success(), "{run}");
    assert!(run.stderr.contains("(lxc-info)"), "{}", run.stderr);
    let (st, _) = ct.wait_recorded(Duration::from_secs(20), |v| {
        v["runtime_user"]["uid"].as_u64().is_some()
    });
    assert_eq!(st["runtime_user"]["uid"], 1000, "{st:#}");
    assert_eq!(st["runtime_user"]["name"], "svc", "{st:#}");

    fs::write(top.join("cgroup.procs"), init.to_string()).unwrap();
    fs::remove_dir(&sub).unwrap();
    ct.stop();
}

/// Item 4: a passwd name and a `comm` full of terminal controls reach
/// neither the task log nor syslog raw, and the name is skipped as one
/// shadow would refuse.
#[test]
fn control_characters_in_names_never_reach_a_log_raw() {
    let bed = Bed::new();
    let vmid = 990_177;
    let pty = bed.pty_serial();
    let mut ct = bed
        .container(vmid)
        .etc_passwd("root:x:0:0::/root:/bin/sh\nev\x1b[31mil\x07\r:x:1000:1000::/:/bin/sh\n")
        // gid 44 is the host's video: its container name is looked up.
        .etc_group("root:x:0:\ndialout:x:20:\nvi\x1b[8mdeo:x:44:\n")
        .file("/bin/evilcomm", static_c("evilcomm", EVILCOMM), 0o755)
        .conf(&pty.bind_entry())
        .init("/bin/evilcomm &\nwhile :; do sleep 3600; done\n")
        .hook(Hook::Binary)
        .create();
    let rep = ct.start();
    rep.expect_started();
    let (v, _) = ct.wait_recorded(Duration::from_secs(20), |v| {
        v["runtime_user"]["uid"] == 1000
    });
    assert!(v["runtime_user"]["name"].is_null(), "{v:#}");
    let changes = v["changes"].to_string();
    assert!(changes.contains("would refuse"), "{v:#}");
    // The comm, as prctl set it, is in the runtime-user line, escaped.
    let escaped_comm = "(ev\\x1b]0;pwn\\x07)";
    assert!(
        wait_until(Duration::from_secs(5), || bed
            .syslog_for(vmid)
            .iter()
            .any(|l| l.contains(escaped_comm))),
        "comm not logged escaped: {}",
        bed.syslog_for(vmid).join("\n")
    );
    let log = bed.syslog_for(vmid);
    let all = log.join("\n");
    assert!(all.contains("would refuse"), "{all}");
    assert!(
        changes.contains("group name \\\"vi\\\\x1b[8mdeo\\\" is one shadow"),
        "{v:#}"
    );
    assert!(!v.to_string().contains("vi\\u001b"), "{v:#}");
    for l in &log {
        assert!(
            !l.chars().any(char::is_control),
            "raw control in syslog: {l:?}"
        );
    }
    for run in [&rep.pre_start, &rep.post_start].into_iter().flatten() {
        for l in run.stderr.lines() {
            assert!(
                !l.chars().any(char::is_control),
                "raw control in the task log: {l:?}"
            );
        }
    }
    ct.stop();
}

/// Item 5: a FUSE filesystem over the container's `/etc` that answers INIT
/// and then nothing. post-start refuses it without touching it, finishes,
/// and records why; no process of the tool is left stuck.
#[test]
fn fuse_over_etc_is_refused_and_the_worker_finishes() {
    let bed = Bed::new();
    let vmid = 990_178;
    let pty = bed.pty_serial();
    let mut ct = bed
        .container(vmid)
        .service_user()
        .file("/bin/dropto", static_c("dropto", DROPTO), 0o755)
        .file("/bin/stallfuse", static_c("stallfuse", STALLFUSE), 0o755)
        .conf(&pty.bind_entry())
        .conf("dev0: /dev/fuse,mode=0666")
        .init("/bin/stallfuse /etc &\nsleep 1\n/bin/dropto 1000 1000 /bin/sleep 1000 &\nwhile :; do sleep 3600; done\n")
        .hook(Hook::Binary)
        .create();
    let started = Instant::now();
    ct.start().expect_started();
    let init = ct.init_pid().unwrap();
    let (v, _) = ct.wait_recorded(Duration::from_secs(30), |v| {
        v["last_run"]["phase"] == "post-start"
    });
    eprintln!("state after {:?}: {v:#}", started.elapsed());
    let mounts = fs::read_to_string(format!("/proc/{init}/mountinfo")).unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(" /etc ") && l.contains("fuse.stall")),
        "the FUSE mount is not in place, the test proves nothing: {mounts}"
    );
    let changes = v["changes"].to_string();
    assert!(changes.contains("FUSE"), "{v:#}");
    let log = bed.syslog_for(vmid).join("\n");
    assert!(log.contains("FUSE"), "syslog does not say why: {log}");
    let stuck = stuck_tool_processes();
    assert!(stuck.is_empty(), "stuck: {stuck:?}");
    ct.stop();
}

/// A stalled FUSE mount on the host, unmounted and its daemon killed on drop.
struct Stall {
    dir: tempfile::TempDir,
    daemon: Child,
}

impl Stall {
    fn new() -> Stall {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("stallfuse");
        fs::write(&bin, static_c("stallfuse", STALLFUSE)).unwrap();
        fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mnt = dir.path().join("root/mnt");
        fs::create_dir_all(&mnt).unwrap();
        let daemon = Command::new(&bin).arg(&mnt).spawn().unwrap();
        let want = format!(" {} ", mnt.display());
        assert!(
            wait_until(Duration::from_secs(5), || {
                fs::read_to_string("/proc/self/mountinfo")
                    .unwrap()
                    .lines()
                    .any(|l| l.contains(&want) && l.contains("fuse.stall"))
            }),
            "stallfuse did not mount"
        );
        Stall { dir, daemon }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        // Killing the daemon aborts the connection: every waiter wakes.
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = nix::mount::umount2(&self.root().join("mnt"), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The checks refuse a FUSE directory or file without waiting on it.
#[test]
fn fuse_paths_are_refused_without_blocking() {
    let s = Stall::new();
    let mnt = s.root().join("mnt");
    let t = Instant::now();
    let e = CheckedDir::open(mnt.to_str().unwrap()).unwrap_err();
    assert!(e.contains("FUSE") && e.contains("fuse.stall"), "{e}");
    let e = ns::read_untrusted(
        None,
        mnt.join("group").to_str().unwrap(),
        Resolve::NoSymlinks,
        100,
    )
    .unwrap_err();
    assert!(e.contains("FUSE"), "{e}");
    let e = ns::stat_untrusted(mnt.join("ttyUSB0").to_str().unwrap()).unwrap_err();
    assert!(e.contains("FUSE"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

/// A container child stuck in the kernel (an unprotected `stat` on the
/// stalled FUSE mount: SIGKILL cannot end it) is given up on at its bound
/// plus the kill grace, with a `TimedOut` error that says so.
#[test]
fn a_child_stuck_in_the_kernel_is_given_up_on_at_the_bound() {
    let s = Stall::new();
    let root = s.root();
    let target = Target::Rootfs(&root);
    // SAFETY: the job only calls stat; it prints nothing through std's stdio.
    let proof = unsafe { SingleThreaded::assume() };
    let t = Instant::now();
    let e = ns::run_in_container_as(&proof, &target, &[], Duration::from_secs(1), || {
        // What the tool never does: ask the FUSE filesystem directly.
        let _ = fs::metadata("/mnt/x");
        Ok(())
    })
    .unwrap_err();
    let took = t.elapsed();
    let to = e
        .downcast_ref::<TimedOut>()
        .unwrap_or_else(|| panic!("not a TimedOut: {e:#}"));
    assert_eq!(to.secs, 1);
    assert!(to.child.contains("still there"), "{to}");
    assert!(e.to_string().starts_with("timed out after 1 s"), "{e}");
    assert!(took < Duration::from_secs(4), "{took:?}");
}
