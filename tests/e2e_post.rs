//! End-to-end scenarios for post-start (issue 6) on real LXC: privilege drop
//! detection, the group fix with and without supplementary groups, hostile
//! containers, and eight containers at once.

mod e2e;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::Value;

/// The bed's default map: container ID + 100000.
const BASE: u32 = 100_000;

fn has_runtime_uid(v: &Value, uid: u64) -> bool {
    v["runtime_user"]["uid"].as_u64() == Some(uid)
}

/// When a process with host uid `host_uid` first shows in `init`'s PID namespace.
fn wait_host_uid(init: i32, host_uid: u32, within: Duration) -> Instant {
    let ns = fs::read_link(format!("/proc/{init}/ns/pid")).unwrap();
    let start = Instant::now();
    loop {
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if fs::read_link(format!("/proc/{pid}/ns/pid")).ok().as_ref() != Some(&ns) {
                continue;
            }
            let st = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let uid = st
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            if uid == Some(host_uid) {
                return Instant::now();
            }
        }
        assert!(
            start.elapsed() < within,
            "no process with host uid {host_uid}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The map with GID 20 passed through, as the idmap work will write it.
const GID20_MAP: [&str; 4] = [
    "lxc.idmap: u 0 100000 65536",
    "lxc.idmap: g 0 100000 20",
    "lxc.idmap: g 20 20 1",
    "lxc.idmap: g 21 100021 65515",
];

#[test]
fn privilege_drop_is_detected_within_a_second_and_recorded() {
    let bed = Bed::new();
    let pty = bed.pty_serial();
    let mut ct = bed
        .container(990_150)
        .service_user()
        .conf(&pty.bind_entry())
        .init("sleep 2\nsu -s /bin/sh svc -c 'exec sleep 1000' &\nwhile :; do sleep 3600; done\n")
        .hook(Hook::Binary)
        .create();
    let rep = ct.start();
    rep.expect_started();
    let post = rep.post_start.as_ref().expect("post-start ran");
    assert!(post.success(), "{post}");
    let closed = post.closed_after.expect("stdout/stderr closed");
    eprintln!("post-start handed back after {closed:?}");
    assert!(closed < Duration::from_millis(500), "{post}");
    assert!(post.stderr.contains("pinned"), "{post}");
    let init = ct.init_pid().unwrap();
    let dropped = wait_host_uid(init, BASE + 1000, Duration::from_secs(10));
    let (v, at) = ct.wait_recorded(Duration::from_secs(10), |v| has_runtime_uid(v, 1000));
    let lag = at.saturating_duration_since(dropped);
    eprintln!("recorded {lag:?} after the drop");
    assert!(lag < Duration::from_secs(1), "{lag:?}");
    let u = &v["runtime_user"];
    assert_eq!(u["name"], "svc");
    assert_eq!(u["gid"], 1000);
    assert_eq!(u["comm"], "sleep");
    // `status --json` shows it as DESIGN.md says: IDs inside the container.
    let st = bed.cli(&["status", "990150", "--json"]);
    let st: Value = serde_json::from_str(st.ok()).unwrap();
    assert_eq!(st["runtime_user"]["uid"], 1000, "{st:#}");
    assert_eq!(st["runtime_user"]["gid"], 1000);
    assert_eq!(st["runtime_user"]["name"], "svc");
    assert_eq!(st["runtime_user"]["groups"], serde_json::json!([20, 1000]));
    // pre-start passed GID 20 through and svc is in dialout: it works now.
    assert_eq!(v["devices"][0]["verdict"], "ok", "{v:#}");
    assert_eq!(u["groups"], serde_json::json!([20, 1000]));
    ct.stop();
}

#[test]
fn group_fix_creates_dialout_and_the_service_gets_it_after_a_restart() {
    let bed = Bed::new();
    bed.add_subgid("root:20:1");
    let pty = bed.pty_serial();
    let mut b = bed
        .container(990_151)
        .etc_group("root:x:0:\nsvc:x:1000:\n")
        .user("svc", 1000, 1000, &[])
        .conf(&pty.bind_entry())
        .init("su -s /bin/sh svc -c 'exec sleep 1000' &\nwhile :; do sleep 3600; done\n")
        .hook(Hook::Binary);
    for l in GID20_MAP {
        b = b.conf(l);
    }
    let mut ct = b.create();
    ct.start().expect_started();
    let (v, _) = ct.wait_recorded(Duration::from_secs(10), |v| has_runtime_uid(v, 1000));
    let group = fs::read_to_string(ct.rootfs().join("etc/group")).unwrap();
    assert_eq!(group, "root:x:0:\nsvc:x:1000:\ndialout:x:20:svc\n");
    let meta = fs::metadata(ct.rootfs().join("etc/group")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (BASE, BASE, 0o644)
    );
    // Groups are fixed at exec: this boot needs a restart of the service.
    assert_eq!(v["devices"][0]["verdict"], "needs-restart", "{v:#}");
    assert_eq!(v["container_groups"]["dialout"], 20);
    assert!(v["changes"][0]
        .as_str()
        .unwrap()
        .contains("created group dialout (gid 20)"));
    ct.stop();

    // Next boot: the service starts with the group and can open the node.
    ct.remove_state();
    ct.start().expect_started();
    let (v, _) = ct.wait_recorded(Duration::from_secs(10), |v| has_runtime_uid(v, 1000));
    assert_eq!(v["devices"][0]["verdict"], "ok", "{v:#}");
    assert_eq!(v["runtime_user"]["groups"], serde_json::json!([20, 1000]));
    assert_eq!(v["runtime_user"]["keeps_supplementary_groups"], true);
    let w = ct.exec_as("svc", "printf 'via group\\n' > /dev/ttyUSB0");
    assert!(w.success(), "{w}");
    assert_eq!(
        pty.read_until(b"via group\n", Duration::from_secs(5)),
        b"via group\n"
    );
    // Nothing left to do: the file is untouched the second time.
    assert_eq!(
        fs::read_to_string(ct.rootfs().join("etc/group")).unwrap(),
        "root:x:0:\nsvc:x:1000:\ndialout:x:20:svc\n"
    );
    ct.stop();
}

#[test]
fn dropped_supplementary_groups_are_recorded_with_the_devn_fallback() {
    let bed = Bed::new();
    bed.add_subgid("root:20:1");
    let pty = bed.pty_serial();
    let mut b = bed
        .container(990_152)
        .service_user()
        .file("/bin/dropto", static_c("dropto", DROPTO), 0o755)
        .conf(&pty.bind_entry())
        .init("/bin/dropto 1000 1000 /bin/sleep 1000 &\nwhile :; do sleep 3600; done\n")
        .hook(Hook::Binary);
    for l in GID20_MAP {
        b = b.conf(l);
    }
    let mut ct = b.create();
    ct.start().expect_started();
    let (v, _) = ct.wait_recorded(Duration::from_secs(10), |v| has_runtime_uid(v, 1000));
    let u = &v["runtime_user"];
    assert_eq!(u["groups"], serde_json::json!([]), "{v:#}");
    assert_eq!(u["keeps_supplementary_groups"], false, "{v:#}");
    assert_eq!(v["devices"][0]["verdict"], "no-access", "{v:#}");
    assert!(v["devices"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("dropped"));
    assert_eq!(v["dev_fallback"][0]["uid"], 1000, "{v:#}");
    assert_eq!(v["dev_fallback"][0]["gid"], 1000);
    // Membership was already there: /etc/group is unchanged.
    assert_eq!(
        fs::read_to_string(ct.rootfs().join("etc/group")).unwrap(),
        "root:x:0:\ndialout:x:20:svc\nsvc:x:1000:\n"
    );
    let stop = ct.stop();
    let post = stop.post_stop.expect("post-stop ran");
    assert_eq!(post.code, 0);
    assert!(post.stderr.contains("next start"), "{post:?}");
    // The next pre-start binds a private node owned by the service in
    // place of the host node: no hand edit, and it works.
    let rep = ct.start();
    rep.expect_started();
    let pre = rep.pre_start.as_ref().unwrap();
    assert!(
        pre.stderr.contains("a private node 1000:1000 mode 0660")
            && pre.stderr.contains("runs without supplementary groups")
            && !pre.stderr.contains("pct set"),
        "{pre}"
    );
    let (v, _) = ct.wait_recorded(Duration::from_secs(10), |v| {
        v["devices"][0]["verdict"] == "ok"
    });
    assert_eq!(v["devices"][0]["inside"]["uid"], 1000, "{v:#}");
    ct.stop();
}

fn host_files() -> Vec<(String, Vec<u8>)> {
    ["/etc/shadow", "/etc/passwd", "/etc/group", "/etc/gshadow"]
        .iter()
        .map(|p| (p.to_string(), fs::read(p).unwrap_or_default()))
        .collect()
}

fn lchown(p: &Path, id: u32) {
    std::os::unix::fs::lchown(p, Some(id), Some(id)).unwrap();
}

#[test]
fn hostile_containers_never_touch_the_host_and_say_why() {
    let bed = Bed::new();
    let before = host_files();
    type Setup = fn(&Path);
    let cases: [(&str, Setup, &str); 5] = [
        (
            "absolute symlink",
            |r| {
                fs::remove_file(r.join("etc/group")).unwrap();
                symlink("/etc/shadow", r.join("etc/group")).unwrap();
                lchown(&r.join("etc/group"), BASE);
            },
            "symbolic link",
        ),
        (
            "relative escape",
            |r| {
                fs::remove_file(r.join("etc/group")).unwrap();
                symlink("../../../../etc/passwd", r.join("etc/group")).unwrap();
                lchown(&r.join("etc/group"), BASE);
            },
            "symbolic link",
        ),
        (
            "etc is a symlink",
            |r| {
                fs::rename(r.join("etc"), r.join("etc.real")).unwrap();
                symlink("../../../../../etc", r.join("etc")).unwrap();
                lchown(&r.join("etc"), BASE);
            },
            "symbolic link",
        ),
        (
            "fifo",
            |r| {
                fs::remove_file(r.join("etc/group")).unwrap();
                nix::unistd::mkfifo(
                    &r.join("etc/group"),
                    nix::sys::stat::Mode::from_bits_truncate(0o644),
                )
                .unwrap();
                lchown(&r.join("etc/group"), BASE);
            },
            "FIFO",
        ),
        (
            "200 MiB",
            |r| {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(r.join("etc/group"))
                    .unwrap();
                f.set_len(200 << 20).unwrap();
            },
            "larger than",
        ),
    ];
    for (i, (what, setup, why)) in cases.iter().enumerate() {
        let vmid = 990_160 + u32::try_from(i).unwrap();
        let pty = bed.pty_serial();
        let mut ct = bed
            .container(vmid)
            .service_user()
            .file("/bin/dropto", static_c("dropto", DROPTO), 0o755)
            .conf(&pty.bind_entry())
            .init("/bin/dropto 1000 1000 /bin/sleep 1000 &\nwhile :; do sleep 3600; done\n")
            .hook(Hook::Binary)
            .create();
        setup(&ct.rootfs());
        let rep = ct.start();
        rep.expect_started();
        let post = rep.post_start.as_ref().unwrap();
        assert!(
            post.success() && post.closed_after.is_some(),
            "{what}: {post}"
        );
        let (v, _) = ct.wait_recorded(Duration::from_secs(15), |v| {
            v["last_run"]["phase"] == "post-start"
        });
        let changes = v["changes"].to_string();
        eprintln!("{what}: {changes}");
        assert!(changes.contains(why), "{what}: {v:#}");
        assert!(
            changes.contains("gave up") || changes.contains("/etc/passwd"),
            "{what}: {v:#}"
        );
        assert_eq!(host_files(), before, "{what}: a host file changed");
        let log = bed.syslog_for(vmid).join("\n");
        assert!(log.contains(why), "{what}: syslog does not say why: {log}");
        ct.stop();
    }
}

#[test]
fn eight_containers_at_once_each_get_their_own_state() {
    let bed = Bed::new();
    let mut cts: Vec<Ct> = (0..8u32)
        .map(|i| {
            let uid = 2000 + i;
            bed.container(990_170 + i)
                .group("dialout", 20)
                .user(&format!("u{i}"), uid, uid, &[])
                .conf("dev0: /dev/null,gid=20,mode=0660")
                .init(&format!(
                    "su -s /bin/sh u{i} -c 'exec sleep 1000' &\nwhile :; do sleep 3600; done\n"
                ))
                .hook(Hook::Binary)
                .create()
        })
        .collect();
    std::thread::scope(|s| {
        for ct in cts.iter_mut() {
            s.spawn(move || ct.start().expect_started().post_start.clone());
        }
    });
    for (i, ct) in cts.iter().enumerate() {
        let uid = 2000 + u64::try_from(i).unwrap();
        let (v, _) = ct.wait_recorded(Duration::from_secs(20), |v| has_runtime_uid(v, uid));
        assert_eq!(v["vmid"], 990_170 + u64::try_from(i).unwrap());
        assert_eq!(v["runtime_user"]["name"], format!("u{i}"));
        // dev0 gid=20: the group exists, u<i> is added; the running service needs a restart.
        let g = fs::read_to_string(ct.rootfs().join("etc/group")).unwrap();
        assert!(g.contains(&format!("dialout:x:20:u{i}\n")), "{g}");
        assert_eq!(v["devices"][0]["verdict"], "needs-restart", "{v:#}");
    }
    for ct in cts.iter_mut() {
        ct.stop();
    }
}

#[test]
fn first_boot_mount_hook_puts_the_recorded_user_in_dialout_before_init() {
    let bed = Bed::new();
    let pty = bed.pty_serial();
    const BARE: &str = "root:x:0:\nsvc:x:1000:\n";
    let mut ct = bed
        .container(990_153)
        .etc_group(BARE)
        .user("svc", 1000, 1000, &[])
        .conf(&pty.bind_entry())
        .init("su -s /bin/sh svc -c 'exec sleep 1000' &\nwhile :; do sleep 3600; done\n")
        .hook(Hook::Binary)
        .create();
    // Boot 1: nothing known before the start; post-start fixes the group.
    let rep = ct.start();
    rep.expect_started();
    assert!(
        !ct.lxc_config().contains("lxc.hook.mount"),
        "{}",
        ct.lxc_config()
    );
    let (v, _) = ct.wait_recorded(Duration::from_secs(10), |v| has_runtime_uid(v, 1000));
    assert_eq!(v["devices"][0]["verdict"], "needs-restart", "{v:#}");
    ct.stop();

    // The rootfs is rebuilt (an image update): the group is gone again.
    fs::write(ct.rootfs().join("etc/group"), BARE).unwrap();
    let mut st: Value =
        serde_json::from_str(&fs::read_to_string(ct.cluster_state_path()).unwrap()).unwrap();
    st["runtime_user"]["detected_at"] = serde_json::json!(0);
    // Boot 1 could not tell whether the service keeps its groups (it was in
    // none), so it recorded the owner fallback too; this test is about the
    // group route: drop the fallback, as after a boot that saw it keep them.
    st["dev_fallback"] = serde_json::json!([]);
    fs::write(ct.cluster_state_path(), st.to_string()).unwrap();

    // Boot 2: the user is known, so the mount hook edits before init.
    let rep = ct.start();
    rep.expect_started();
    let lxc = ct.lxc_config();
    let line = format!(
        "lxc.hook.mount = {} lxc-mount-hook --uid 1000 --group 20:dialout",
        fs::canonicalize(Bed::hook_binary()).unwrap().display()
    );
    assert!(lxc.lines().any(|l| l == line), "{lxc}");
    let pre = rep.pre_start.as_ref().unwrap();
    assert!(pre.stderr.contains("before init runs"), "{pre}");
    let (v, _) = ct.wait_recorded(Duration::from_secs(10), |v| {
        v["runtime_user"]["detected_at"].as_u64() > Some(0)
    });
    // The service started with the group: it works on this boot.
    assert_eq!(
        v["runtime_user"]["groups"],
        serde_json::json!([20, 1000]),
        "{v:#}"
    );
    assert_eq!(v["devices"][0]["verdict"], "ok", "{v:#}");
    assert_eq!(
        v["changes"],
        serde_json::json!([]),
        "the hook did it: {v:#}"
    );
    assert_eq!(
        fs::read_to_string(ct.rootfs().join("etc/group")).unwrap(),
        "root:x:0:\nsvc:x:1000:\ndialout:x:20:svc\n"
    );
    let meta = fs::metadata(ct.rootfs().join("etc/group")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (BASE, BASE));
    let w = ct.exec_as("svc", "printf 'first boot\\n' > /dev/ttyUSB0");
    assert!(w.success(), "{w}");
    ct.stop();
}

#[test]
fn first_boot_mount_hook_is_safe_against_a_hostile_rootfs() {
    let bed = Bed::new();
    let before = host_files();
    let mut ct = bed
        .container(990_154)
        .service_user()
        .conf("lxc.init.uid: 1000")
        .conf("dev0: /dev/null,gid=20,mode=0660")
        .hook(Hook::Binary)
        .create();
    let r = ct.rootfs();
    fs::remove_file(r.join("etc/group")).unwrap();
    symlink("../../../../../../etc/group", r.join("etc/group")).unwrap();
    lchown(&r.join("etc/group"), BASE);
    let rep = ct.start();
    rep.expect_started();
    assert!(ct
        .lxc_config()
        .contains("lxc-mount-hook --uid 1000 --group 20:dialout"));
    let log = bed.syslog_for(990_154).join("\n");
    assert!(
        log.contains("phase=mount-hook") && log.contains("/etc/group: a symbolic link"),
        "{log}"
    );
    assert_eq!(host_files(), before, "a host file changed");
    assert!(fs::symlink_metadata(r.join("etc/group"))
        .unwrap()
        .file_type()
        .is_symlink());
    ct.stop();
}

#[test]
fn init_is_pinned_and_a_pid_of_another_container_is_refused() {
    use pct_passthrough::paths::Vmid;
    use pct_passthrough::sys::proc::{find_and_pin, pin};
    let bed = Bed::new();
    let mut a = bed.container(990_155).create();
    let mut b = bed.container(990_156).create();
    a.start().expect_started();
    b.start().expect_started();
    let (va, vb) = (Vmid::new(990_155).unwrap(), Vmid::new(990_156).unwrap());
    let ia = u32::try_from(a.init_pid().unwrap()).unwrap();
    let ib = u32::try_from(b.init_pid().unwrap()).unwrap();
    let p = find_and_pin(va).unwrap();
    assert_eq!((p.pid, p.found_by), (ia, "lxc-info"));
    assert!(p.own_userns);
    assert_eq!(find_and_pin(vb).unwrap().pid, ib);
    let e = pin(ia, vb, "test").unwrap_err().to_string();
    assert!(e.contains("not container 990156's"), "{e}");
    let e = pin(1, va, "test").unwrap_err().to_string();
    assert!(e.contains("refusing"), "{e}");
    // A stopped container has no init to pin.
    b.stop();
    assert!(find_and_pin(vb).is_err());
    a.stop();
}

#[test]
fn privileged_container_gets_the_group_fix_without_a_user_namespace() {
    let bed = Bed::new();
    let pty = bed.pty_serial();
    let mut ct = bed
        .container(990_157)
        .privileged()
        .etc_group("root:x:0:\nsvc:x:1000:\n")
        .user("svc", 1000, 1000, &[])
        .conf(&pty.bind_entry())
        .init("sleep 1\nsu -s /bin/sh svc -c 'exec sleep 1000' &\nwhile :; do sleep 3600; done\n")
        .hook(Hook::Binary)
        .create();
    let rep = ct.start();
    rep.expect_started();
    let init = ct.init_pid().unwrap();
    let dropped = wait_host_uid(init, 1000, Duration::from_secs(10));
    let (v, at) = ct.wait_recorded(Duration::from_secs(10), |v| has_runtime_uid(v, 1000));
    eprintln!(
        "privileged: recorded {:?} after the drop",
        at.saturating_duration_since(dropped)
    );
    assert_eq!(v["runtime_user"]["name"], "svc");
    assert_eq!(
        fs::read_to_string(ct.rootfs().join("etc/group")).unwrap(),
        "root:x:0:\nsvc:x:1000:\ndialout:x:20:svc\n"
    );
    let meta = fs::metadata(ct.rootfs().join("etc/group")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(v["devices"][0]["verdict"], "needs-restart", "{v:#}");
    ct.stop();
}

#[test]
fn all_root_container_records_root_and_the_devn_fallback() {
    let bed = Bed::new();
    let pty = bed.pty_serial();
    let mut ct = bed
        .container(990_158)
        .service_user()
        .conf(&pty.bind_entry())
        .init("sleep 1000 &\nwhile :; do sleep 3600; done\n")
        .hook(Hook::Binary)
        .create();
    ct.start().expect_started();
    let (v, _) = ct.wait_recorded(Duration::from_secs(10), |v| {
        v["runtime_user"]["uid"].as_u64() == Some(0)
    });
    assert_eq!(v["runtime_user"]["name"], "root");
    assert_eq!(v["runtime_user"]["comm"], "sleep");
    // Host root owns the node and is unmapped: container root cannot
    // override, and is not in dialout. A devN node would be its own.
    assert_eq!(v["devices"][0]["verdict"], "no-access", "{v:#}");
    assert_eq!(v["dev_fallback"][0]["uid"], 0, "{v:#}");
    // dialout exists (GID 20 passed through) and root was not added to it.
    assert!(fs::read_to_string(ct.rootfs().join("etc/group"))
        .unwrap()
        .contains("dialout:x:20:svc\n"));
    ct.stop();
}
