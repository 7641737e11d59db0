//! Replug without restart (issue 16), on real LXC: a service writes to its
//! stick in a loop that reopens the path on every write; the stick is
//! unplugged (host node gone, by-id link gone, `udev remove` called as udev
//! calls it) and comes back under other numbers (`udev add`). Bind form on a
//! privileged container (exact cgroup rules), `devN` form on an unprivileged
//! one (a private node with the start's owner and mode); containers that do
//! not want the node see nothing, and an unknown node costs one process
//! start and no write.

mod e2e;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::*;

/// The service: writes `<tag>-<n>` to `path` every 100 ms, opening it anew
/// each time (so it recovers once the path works again), and logs each
/// attempt to /tmp/svc.log.
fn service(path: &str, tag: &str) -> String {
    format!(
        "#!/bin/sh\ni=0\nwhile :; do\n  i=$((i+1))\n  if printf '{tag}-%s\\n' \"$i\" > {path}; then echo \"ok $i\" >> /tmp/svc.log; else echo \"err $i\" >> /tmp/svc.log; fi\n  sleep 0.1\ndone\n"
    )
}

/// Runs the udev entry exactly as udev's RUN does: argv, and the device's
/// properties in the environment.
fn udev(action: &str, devnode: &str, numbers: (u32, u32), links: &str) -> Run {
    run(
        Command::new(Bed::hook_binary())
            .args(["udev", action, devnode])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("ACTION", action)
            .env("DEVNAME", devnode)
            .env("SUBSYSTEM", "tty")
            .env("MAJOR", numbers.0.to_string())
            .env("MINOR", numbers.1.to_string())
            .env("DEVLINKS", links),
        Duration::from_secs(10),
    )
}

fn run(cmd: &mut Command, d: Duration) -> Run {
    e2e::run::run(cmd, d)
}

/// The container's v1 device cgroup rules (`devices.list`).
fn device_rules(vmid: u32) -> String {
    for p in [
        format!("/sys/fs/cgroup/devices/lxc.payload.{vmid}/devices.list"),
        format!("/sys/fs/cgroup/devices/lxc/{vmid}/devices.list"),
    ] {
        if let Ok(s) = std::fs::read_to_string(&p) {
            return s;
        }
    }
    panic!("no devices cgroup for {vmid}");
}

fn hotplug_of(status: &serde_json::Value) -> serde_json::Value {
    status["devices"][0]["hotplug"].clone()
}

fn status(bed: &Bed, vmid: u32) -> serde_json::Value {
    let s = bed.cli(&["status", &vmid.to_string(), "--json"]);
    serde_json::from_str(s.ok()).unwrap()
}

/// `status --json` once the worker recorded a hotplug `action` (it records
/// after acting).
#[track_caller]
fn status_after(bed: &Bed, vmid: u32, action: &str) -> serde_json::Value {
    let mut st = serde_json::Value::Null;
    let done = wait_until(Duration::from_secs(5), || {
        st = status(bed, vmid);
        hotplug_of(&st)["action"] == action
    });
    assert!(done, "no hotplug {action} recorded: {st}");
    st
}

#[test]
fn bind_form_replug_under_another_minor_works_again_without_a_restart() {
    let bed = Bed::new();
    let old = bed.pty_serial();
    let by_id = old.by_id.clone();
    let link = by_id.display().to_string();
    let mut ct = bed
        .container(990_124)
        .privileged()
        .service_user()
        .conf(&format!(
            "lxc.mount.entry: {link} dev/ttyUSB0 none bind,optional,create=file"
        ))
        .file("/usr/local/bin/svc", service("/dev/ttyUSB0", "tick"), 0o755)
        .init(&format!(
            "{}trap 'exit 0' TERM\nwhile :; do sleep 3600 & wait $!; done\n",
            drop_implicit("svc", "/usr/local/bin/svc")
        ))
        .hook(Hook::Binary)
        .create();
    // A bystander that does not want the stick.
    let mut other = bed
        .container(990_125)
        .service_user()
        .hook(Hook::Binary)
        .create();
    ct.start().expect_started();
    other.start().expect_started();
    let other_state = std::fs::read(other.state_path()).ok();
    assert!(
        !old.read_until(b"tick-", Duration::from_secs(10)).is_empty(),
        "the service writes to the stick before the replug"
    );
    // post-start's worker has recorded the service (under load it may come
    // after the first writes): the replug's verdict is judged for it.
    assert!(
        wait_until(Duration::from_secs(20), || ct
            .state()
            .is_some_and(|v| v["runtime_user"]["uid"] == 1000)),
        "post-start recorded the service user: {:?}",
        ct.state()
    );
    let old_rule = format!("c {}:{} rwm", old.major, old.minor);
    assert!(
        device_rules(990_124).contains(&old_rule),
        "{}",
        device_rules(990_124)
    );

    // The new stick's node exists before the old one goes, so its minor
    // differs, as for a stick that comes back while the old node is open.
    let new = bed.pty_serial();
    // Unplug: the kernel's node and udev's link go, then udev runs us.
    let (old_node, old_numbers) = (old.slave.display().to_string(), (old.major, old.minor));
    drop(old);
    assert!(!Path::new(&old_node).exists());
    let r = udev("remove", &old_node, old_numbers, &link);
    assert!(r.success(), "{r}");
    assert!(r.exited_after < Duration::from_millis(500), "{r}");
    assert!(
        wait_until(Duration::from_secs(5), || !ct
            .exec("test -e /dev/ttyUSB0")
            .success()),
        "the node is gone inside"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !device_rules(990_124)
            .contains(&old_rule)),
        "the old exact rule is gone: {}",
        device_rules(990_124)
    );
    assert!(ct.is_running());
    let st = status_after(&bed, 990_124, "remove");
    assert_eq!(st["devices"][0]["verdict"], "missing", "{st}");
    let text = bed.cli(&["status", "990124"]);
    assert!(
        text.ok().contains("last hotplug: remove"),
        "{}",
        text.stdout
    );

    // Replug: a new node under another minor, the same by-id link.
    assert_ne!(new.minor, old_numbers.1);
    std::fs::remove_file(&by_id).ok();
    let name = new
        .slave
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    symlink(format!("../../pts/{name}"), &by_id).unwrap();
    let new_node = new.slave.display().to_string();
    let t0 = Instant::now();
    let r = udev("add", &new_node, (new.major, new.minor), &link);
    assert!(r.success(), "{r}");
    assert!(r.exited_after < Duration::from_millis(500), "{r}");
    let got = new.read_until(b"tick-", Duration::from_secs(10));
    let took = t0.elapsed();
    assert!(
        !got.is_empty(),
        "the service writes again through /dev/ttyUSB0"
    );
    eprintln!("replug: udev add to the next successful write: {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let new_rule = format!("c {}:{} rwm", new.major, new.minor);
    assert!(
        device_rules(990_124).contains(&new_rule),
        "{}",
        device_rules(990_124)
    );
    let st = status_after(&bed, 990_124, "add");
    assert_eq!(
        hotplug_of(&st)["rule_id"],
        format!("c {}:{}", new.major, new.minor)
    );
    assert_eq!(st["devices"][0]["verdict"], "ok", "{st}");
    let log = bed.syslog_for(990_124);
    assert!(
        log.iter()
            .any(|l| l.contains("event=hotplug ") && l.contains(&new_node)),
        "{log:#?}"
    );

    // An event for a node nobody wants: one process, no fork, no write.
    let stranger = bed.char_node("ttyUSB-stranger", 1, 5, DIALOUT, 0o660);
    let path = stranger.path.display().to_string();
    let trace = std::env::temp_dir().join(format!("replug-strace-{}", std::process::id()));
    let r = run(
        Command::new("strace")
            .args(["-f", "-qq", "-o"])
            .arg(&trace)
            .args([
                "-e",
                "trace=%process,openat,open,creat,rename,renameat,renameat2,unlink,unlinkat,mkdir,mkdirat,truncate,ftruncate,write",
            ])
            .arg(Bed::hook_binary())
            .args(["udev", "add", &path])
            .env_clear()
            .env("MAJOR", "1")
            .env("MINOR", "5"),
        Duration::from_secs(20),
    );
    assert!(r.success(), "{r}");
    let t = std::fs::read_to_string(&trace).unwrap();
    let _ = std::fs::remove_file(&trace);
    let calls: Vec<&str> = t.lines().collect();
    assert_eq!(
        calls.iter().filter(|l| l.contains("execve(")).count(),
        1,
        "{t}"
    );
    for l in &calls {
        assert!(
            !(l.contains("clone") || l.contains("fork(")),
            "no process started: {l}"
        );
        assert!(
            !(l.contains("O_WRONLY") || l.contains("O_RDWR") || l.contains("O_CREAT")),
            "nothing opened for writing: {l}"
        );
        assert!(
            !(l.contains("rename")
                || l.contains("unlink")
                || l.contains("mkdir")
                || l.starts_with("write(")),
            "no file changed: {l}"
        );
    }
    // The bystander was never touched.
    assert_eq!(std::fs::read(other.state_path()).ok(), other_state);
    assert!(bed
        .syslog_for(990_125)
        .iter()
        .all(|l| !l.contains("hotplug")));

    ct.stop();
    other.stop();
    std::fs::remove_file(&by_id).ok();
}

#[test]
fn devn_form_unplug_keeps_the_container_running_and_replug_gives_the_starts_owner_and_mode() {
    let bed = Bed::new();
    // The stick before: a 1:3 stand-in (writes succeed, go nowhere); after:
    // 1:11, the kernel log, so the host reads what the service writes.
    let before = bed.char_node("ttyUSB-replug-a", 1, 3, DIALOUT, 0o660);
    let by_id = Path::new("/dev/serial/by-id").join(format!(
        "usb-pct-passthrough-e2e_replug_{}-if00-port0",
        std::process::id()
    ));
    std::fs::create_dir_all("/dev/serial/by-id").unwrap();
    let _ = std::fs::remove_file(&by_id);
    symlink("../../pct-passthrough-e2e/ttyUSB-replug-a", &by_id).unwrap();
    let link = by_id.display().to_string();
    let token = format!("replug-devn-{}", std::process::id());
    let mut ct = bed
        .container(990_126)
        .service_user()
        .conf(&format!("dev0: {link}"))
        .file("/usr/local/bin/svc", service(&link, &token), 0o755)
        .init(&format!(
            "{}trap 'exit 0' TERM\nwhile :; do sleep 3600 & wait $!; done\n",
            drop_implicit("svc", "/usr/local/bin/svc")
        ))
        .hook(Hook::Binary)
        .create();
    ct.start().expect_started();
    let at_start = ct
        .exec(&format!("stat -c '%u %g %a %t:%T' {link}"))
        .ok()
        .to_string();
    assert_eq!(at_start.trim(), "0 20 660 1:3", "the start's node");
    assert!(wait_until(Duration::from_secs(5), || ct
        .rootfs_file("/tmp/svc.log")
        .contains("ok ")));

    // Unplug without replug.
    drop(before);
    std::fs::remove_file(&by_id).unwrap();
    let r = udev(
        "remove",
        "/dev/pct-passthrough-e2e/ttyUSB-replug-a",
        (1, 3),
        &link,
    );
    assert!(r.success(), "{r}");
    assert!(
        wait_until(Duration::from_secs(5), || !ct
            .exec(&format!("test -e {link}"))
            .success()),
        "no stale node with the old numbers stays inside"
    );
    assert!(ct.is_running());
    let st = status_after(&bed, 990_126, "remove");
    assert_eq!(st["devices"][0]["verdict"], "missing", "{st}");
    assert!(wait_until(Duration::from_secs(5), || ct
        .rootfs_file("/tmp/svc.log")
        .lines()
        .last()
        .is_some_and(|l| l.starts_with("err"))));

    // Replug under other numbers.
    let after = bed.char_node("ttyUSB-replug-b", 1, 11, DIALOUT, 0o660);
    symlink("../../pct-passthrough-e2e/ttyUSB-replug-b", &by_id).unwrap();
    let t0 = Instant::now();
    let r = udev("add", &after.path.display().to_string(), (1, 11), &link);
    assert!(r.success(), "{r}");
    let dmesg_has = || {
        let out = Command::new("dmesg").output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&token)
    };
    assert!(
        wait_until(Duration::from_secs(10), dmesg_has),
        "the host reads what the service writes through the same path: {}\n{:#?}\n{}",
        status(&bed, 990_126),
        bed.syslog_for(990_126),
        ct.exec(&format!("ls -l {link}; tail -3 /tmp/svc.log"))
    );
    eprintln!(
        "replug devN: udev add to the write seen in the kernel log: {:?}",
        t0.elapsed()
    );
    let now = ct
        .exec(&format!("stat -c '%u %g %a %t:%T' {link}"))
        .ok()
        .to_string();
    assert_eq!(
        now.trim(),
        "0 20 660 1:b",
        "the start's owner and mode, new numbers"
    );
    let st = status_after(&bed, 990_126, "add");
    assert_eq!(hotplug_of(&st)["outcome"], "changed", "{st}");
    ct.stop();
    let _ = std::fs::remove_file(&by_id);
}
