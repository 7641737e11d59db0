//! End-to-end device scenarios on real LXC (issue 5): a serial stick by-id
//! through `devN` and through a policy bind, a render-node stand-in, a
//! missing optional and a missing required device. The host's nodes keep
//! their owner and mode throughout.

mod e2e;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use e2e::*;

/// Owner, group and mode of a host node.
fn owner_mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

#[test]
fn serial_through_devn_works_on_the_first_boot() {
    let bed = Bed::new();
    // A pty slave cannot be reopened through a private node (devpts ties it
    // to its own instance: EIO), so the serial stand-in for devN is a
    // root:dialout 0660 char node whose writes the host can read back:
    // 1:11, the kernel log.
    let node = bed.char_node("ttyUSB-kmsg", 1, 11, DIALOUT, 0o660);
    let before = owner_mode(&node.path);
    let path = node.path.display().to_string();
    let mut ct = bed
        .container(990_180)
        .service_user()
        .conf(&format!("dev0: {path}"))
        .hook(Hook::Binary)
        .create();
    let rep = ct.start();
    rep.expect_started();
    assert!(
        ct.pve_conf().contains(&format!("dev0: {path},gid=20\n")),
        "{}",
        ct.pve_conf()
    );
    assert!(
        rep.task_log.contains("gid=20 so the service can open it"),
        "{}",
        rep.task_log
    );
    // PVE's LXC hook re-read the config after the hookscript: the private
    // node is root:dialout inside on this very boot.
    let st = ct
        .exec(&format!("stat -c '%u %g %a' {path}"))
        .ok()
        .to_string();
    assert_eq!(st.trim(), "0 20 660");
    let token = format!("pct-passthrough-e2e-devn-{}", std::process::id());
    let w = ct.exec_as("svc", &format!("printf '{token}\\n' > {path}"));
    assert!(w.success(), "{w}");
    let dmesg = std::process::Command::new("dmesg").output().unwrap();
    assert!(
        String::from_utf8_lossy(&dmesg.stdout).contains(&token),
        "the host reads the bytes back"
    );
    assert_eq!(owner_mode(&node.path), before, "the host node is untouched");
    // A second start changes nothing in the config.
    ct.stop();
    let conf = ct.pve_conf();
    ct.start().expect_started();
    assert_eq!(ct.pve_conf(), conf);
}

#[test]
fn policy_bind_of_a_render_node_gives_the_render_group_on_the_first_boot() {
    let bed = Bed::new();
    // A harmless stand-in (1:5, zero) owned by host group 104, like render.
    let node = bed.char_node("dri/renderD128", 1, 5, 104, 0o660);
    let before = owner_mode(&node.path);
    let path = node.path.display().to_string();
    let mut ct = bed
        .container(990_181)
        .group("render", 104)
        .user("svc", 1000, 1000, &[104])
        .policy(&format!(
            "[[device]]\npath = \"{path}\"\nmethod = \"bind\"\ncontainer_path = \"/dev/dri/renderD128\"\n"
        ))
        .hook(Hook::Binary)
        .create();
    let rep = ct.start();
    rep.expect_started();
    let conf = ct.pve_conf();
    assert!(
        conf.contains(&format!(
            "lxc.mount.entry: {path} dev/dri/renderD128 none bind,optional,create=file\n"
        )),
        "{conf}"
    );
    assert!(
        conf.contains("lxc.cgroup2.devices.allow: c 1:5 rwm\n"),
        "{conf}"
    );
    assert!(conf.contains("lxc.idmap: g 104 104 1\n"), "{conf}");
    assert!(
        bed.subgid().lines().any(|l| l == "root:104:1"),
        "{}",
        bed.subgid()
    );
    let st = ct
        .exec("stat -c '%g %a' /dev/dri/renderD128")
        .ok()
        .to_string();
    assert_eq!(st.trim(), "104 660");
    let r = ct.exec_as("svc", "head -c 4 /dev/dri/renderD128 | wc -c");
    assert!(r.success(), "{r}");
    assert_eq!(r.stdout.trim(), "4");
    assert_eq!(owner_mode(&node.path), before);
}

#[test]
fn a_missing_optional_device_warns_and_the_container_starts() {
    let bed = Bed::new();
    let mut ct = bed
        .container(990_182)
        .service_user()
        .policy(
            "[[device]]\npath = \"/dev/serial/by-id/usb-pct-passthrough-e2e_absent-if00-port0\"\n",
        )
        .hook(Hook::Binary)
        .create();
    let rep = ct.start();
    rep.expect_started();
    assert!(rep.task_log.contains("is missing"), "{}", rep.task_log);
    assert!(
        !ct.pve_conf().contains("dev0:"),
        "no devN for a missing node: {}",
        ct.pve_conf()
    );
}

#[test]
fn a_missing_required_device_refuses_the_start() {
    let bed = Bed::new();
    let mut ct = bed
        .container(990_183)
        .service_user()
        .policy("[[device]]\npath = \"/dev/serial/by-id/usb-pct-passthrough-e2e_absent-if00-port0\"\nrequired = true\n")
        .hook(Hook::Binary)
        .create();
    let rep = ct.start();
    assert!(!rep.started, "{rep}");
    let err = rep.error.clone().unwrap_or_default();
    assert!(err.contains("hookscript error"), "{rep}");
    assert!(joined(&rep.task_log).contains("required device /dev/serial/by-id/usb-pct-passthrough-e2e_absent-if00-port0 is missing"), "{rep}");
    assert!(rep.task_log.contains("ls -l /dev/serial/by-id"), "{rep}");
}
