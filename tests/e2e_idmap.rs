//! End-to-end ID-map scenarios on real LXC (issue 4): a bound serial node
//! works on the first boot with the hook, a hand-written map without its
//! subgid line starts with the hook, a second start writes nothing, and
//! removing the device removes exactly the tool's lines.

mod e2e;

use std::fs;
use std::time::Duration;

use e2e::*;

/// The exact cgroup rule the tool adds for a bound pty.
fn rule(pty: &PtySerial) -> String {
    format!(
        "lxc.cgroup2.devices.allow: c {}:{} rwm\n",
        pty.major, pty.minor
    )
}

const TOOL_LINES: &str = "lxc.idmap: u 0 100000 65536\nlxc.idmap: g 0 100000 20\nlxc.idmap: g 20 20 1\nlxc.idmap: g 21 100021 65515\n";

#[test]
fn serial_bind_works_on_the_first_boot_with_the_hook() {
    let bed = Bed::new();
    assert!(!bed.subgid().lines().any(|l| l == "root:20:1"));
    let pty = bed.pty_serial();

    // Without the hook: the service user gets EACCES.
    let mut plain = bed
        .container(990_130)
        .service_user()
        .conf(&pty.bind_entry())
        .create();
    plain.start().expect_started();
    let w = plain.exec_as("svc", "echo denied > /dev/ttyUSB0");
    assert!(!w.success(), "{w}");
    assert!(w.stderr.contains("Permission denied"), "{w}");
    plain.stop();

    // With the hook, first boot: it works, and the host reads the bytes.
    let mut ct = bed
        .container(990_131)
        .service_user()
        .conf(&pty.bind_entry())
        .hook(Hook::Binary)
        .create();
    let rep = ct.start();
    rep.expect_started();
    assert!(rep.task_log.contains("added root:20:1"), "{}", rep.task_log);
    let started = rep.started_config.clone().unwrap_or_default();
    assert!(
        started.contains("lxc.idmap = g 20 20 1\n"),
        "the same boot used the new map:\n{started}"
    );
    // The map, then the exact cgroup rule for the bound node (the devices step).
    assert!(
        ct.pve_conf()
            .ends_with(&format!("{TOOL_LINES}{}", rule(&pty))),
        "{}",
        ct.pve_conf()
    );
    assert!(
        bed.subgid().lines().any(|l| l == "root:20:1"),
        "{}",
        bed.subgid()
    );
    let st = ct.exec("stat -c '%u %g %a' /dev/ttyUSB0").ok().to_string();
    assert_eq!(st.trim(), "65534 20 660");
    let w = ct.exec_as("svc", "printf 'zigbee\\n' > /dev/ttyUSB0");
    assert!(w.success(), "{w}");
    assert_eq!(
        pty.read_until(b"zigbee\n", Duration::from_secs(5)),
        b"zigbee\n"
    );
    let state = ct.state().expect("state recorded");
    assert_eq!(
        state["owned"]["conf_lines"].as_array().map(Vec::len),
        Some(5),
        "{state}"
    );
}

#[test]
fn hand_written_map_without_subgid_line_starts_with_the_hook() {
    let bed = Bed::new();
    assert!(!bed.subgid().lines().any(|l| l == "root:20:1"));
    let map = [
        "lxc.idmap: u 0 100000 65536",
        "lxc.idmap: g 0 100000 20",
        "lxc.idmap: g 20 20 1",
        "lxc.idmap: g 21 100021 65515",
    ];

    // Without the hook: LXC's newgidmap refuses the range.
    let mut b = bed.container(990_132).service_user();
    for l in map {
        b = b.conf(l);
    }
    let mut plain = b.create();
    let rep = plain.start();
    assert!(!rep.started, "{rep}");
    let why = format!("{rep}\n{}", plain.lxc_log());
    assert!(
        why.contains("newgidmap") && why.contains("not allowed"),
        "{why}"
    );

    // With the hook: the subgid line is added and it starts; the person's
    // lines stay as they are.
    let mut b = bed.container(990_133).service_user().hook(Hook::Binary);
    for l in map {
        b = b.conf(l);
    }
    let mut ct = b.create();
    let conf_before = ct.pve_conf();
    let rep = ct.start();
    rep.expect_started();
    assert!(
        bed.subgid().lines().any(|l| l == "root:20:1"),
        "{}",
        bed.subgid()
    );
    assert_eq!(ct.pve_conf(), conf_before);
    assert!(ct
        .state()
        .is_none_or(|s| !s.to_string().contains("lxc.idmap")));
}

#[test]
fn second_start_writes_nothing_and_removing_the_device_removes_the_lines() {
    let bed = Bed::new();
    let pty = bed.pty_serial();
    let mut ct = bed
        .container(990_134)
        .service_user()
        .conf(&pty.bind_entry())
        .hook(Hook::Binary)
        .create();
    ct.start().expect_started();
    ct.stop();
    let conf_meta = fs::metadata(ct.pve_conf_path())
        .unwrap()
        .modified()
        .unwrap();
    let conf = ct.pve_conf();
    let subgid = bed.subgid();
    let subgid_meta = fs::metadata("/etc/subgid").unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(20));

    // Same inputs: nothing written.
    let rep = ct.start();
    rep.expect_started();
    assert_eq!(ct.pve_conf(), conf);
    assert_eq!(
        fs::metadata(ct.pve_conf_path())
            .unwrap()
            .modified()
            .unwrap(),
        conf_meta
    );
    assert_eq!(bed.subgid(), subgid);
    assert_eq!(
        fs::metadata("/etc/subgid").unwrap().modified().unwrap(),
        subgid_meta
    );
    ct.stop();

    // The device goes away: the tool's lines go too, at the next start.
    let without_device = conf.replace(&format!("{}\n", pty.bind_entry()), "");
    ct.set_pve_conf(&without_device);
    let rep = ct.start();
    rep.expect_started();
    assert_eq!(
        ct.pve_conf(),
        without_device
            .replace(TOOL_LINES, "")
            .replace(&rule(&pty), "")
    );
    let started = rep.started_config.unwrap_or_default();
    assert!(
        started.contains("lxc.idmap = g 0 100000 65536\n") && !started.contains("g 20 20 1"),
        "{started}"
    );
    let state = ct.state().expect("state recorded").to_string();
    assert!(!state.contains("lxc.idmap"), "{state}");
}

/// shadow's real `usermod --add-subgids` (taking `lckpwdf()` and the link
/// lock on the real `/etc`) racing eight pre-starts: no line lost, none
/// doubled, no lock left. The bed restores the files afterwards.
#[test]
fn real_usermod_racing_pre_starts_on_the_real_files() {
    let bed = Bed::new();
    let vmids: Vec<u32> = (990_135..990_143).collect();
    let mut cts = Vec::new();
    for (i, &v) in vmids.iter().enumerate() {
        let gid = 30_001 + i * 10;
        cts.push(
            bed.container(v)
                .policy(&format!("idmap = [\"gid {gid} {gid}\"]\n"))
                .create(),
        );
    }
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for (i, &v) in vmids.iter().enumerate() {
        ours.push(
            std::process::Command::new(Bed::hook_binary())
                .args([&v.to_string(), "pre-start"])
                .env_remove("PCT_PASSTHROUGH_ROOT")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let start = 700_000 + i * 100;
        theirs.push(
            std::process::Command::new("/usr/sbin/usermod")
                .args(["--add-subgids", &format!("{start}-{}", start + 9), "root"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    for c in ours.into_iter().chain(theirs) {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let text = bed.subgid();
    for i in 0..vmids.len() {
        let ours = format!("root:{}:1", 30_001 + i * 10);
        let theirs = format!("root:{}:10", 700_000 + i * 100);
        for line in [ours, theirs] {
            assert_eq!(
                text.lines().filter(|l| *l == line).count(),
                1,
                "{line} in\n{text}"
            );
        }
    }
    assert!(!std::path::Path::new("/etc/subgid.lock").exists());
    drop(cts);
}

/// A hand-written map without container gid 0 makes lxc-start fail with an
/// obscure cgroup error; with the hook the start is refused up front with
/// the lines and the fix.
#[test]
fn map_without_container_root_is_refused_with_the_fix() {
    let bed = Bed::new();
    let mut ct = bed
        .container(990_144)
        .conf("lxc.idmap: u 0 100000 65536")
        .conf("lxc.idmap: g 1 100001 65535")
        .hook(Hook::Binary)
        .create();
    let rep = ct.start();
    assert!(!rep.started, "{rep}");
    let err = rep.error.clone().unwrap_or_default();
    assert!(
        err.contains("hookscript error for 990144 on pre-start"),
        "{rep}"
    );
    let log = joined(&rep.task_log);
    assert!(
        log.contains("map no container uid 0 or no container gid 0")
            && log.contains("'lxc.idmap: g 0 100000 65536'"),
        "{rep}"
    );
}
