//! The task-log style (issue 18): Proxmox shows the hook's stderr in a
//! narrow panel, one line per entry. Every line of the typical first start,
//! the second start and each refusal, and of `plan`, `status` and `doctor`
//! for them, is at most 160 characters, except a `fix:` line (a command
//! meant to be copied) and the diff's own content lines; paths are counted
//! as they read on a real host (the temp root taken out). Needs root for
//! the device node, as every test run here has.

mod common;

use std::os::unix::fs::symlink;

use common::{stdout, TempRoot};
use pct_passthrough::model::tasklog::WIDTH;

/// A by-id name as long as real ones get.
const BY_ID: &str = "/dev/serial/by-id/usb-ITead_Sonoff_Zigbee_3.0_USB_Dongle_Plus_4c004e9c53c9ec118f6c5b3d-if00-port0";

fn host(extra_conf: &str, policy: Option<&str>) -> TempRoot {
    let root = TempRoot::new();
    root.write(
        "/etc/pve/lxc/105.conf",
        format!(
            "arch: amd64\nhookscript: local:snippets/pct-passthrough\nhostname: z2m\nunprivileged: 1\nlxc.mount.entry: {BY_ID} dev/ttyUSB0 none bind,optional,create=file\n{extra_conf}"
        ),
    );
    if let Some(p) = policy {
        root.write("/etc/pve/pct-passthrough/105.toml", p);
    }
    root.write("/etc/subuid", "root:100000:65536\n");
    root.write("/etc/subgid", "root:100000:65536\n");
    root.write(
        "/var/lib/lxc/105/config",
        "lxc.arch = amd64\nlxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\nlxc.cgroup2.devices.allow = a\n",
    );
    common::device_node(&root.at("/dev/ttyUSB0"), false, 188, 0, 20);
    std::fs::create_dir_all(root.at("/dev/serial/by-id")).unwrap();
    symlink("../../ttyUSB0", root.at(BY_ID)).unwrap();
    root
}

/// Lines wider than the task log allows, with what produced them.
fn too_wide(root: &TempRoot, what: &str, text: &str, diff: bool) -> Vec<String> {
    let real = text.replace(&root.path().display().to_string(), "");
    real.lines()
        .filter(|l| !l.trim_start().starts_with("fix: "))
        // A diff's content and file headers are the files' own lines.
        .filter(|l| !(diff && (l.starts_with([' ', '+', '-']))))
        .filter(|l| l.chars().count() > WIDTH)
        .map(|l| format!("{what} ({} chars): {l}", l.chars().count()))
        .collect()
}

fn check_all(root: &TempRoot, label: &str, bad: &mut Vec<String>) {
    let start = root.run(&["105", "pre-start"]);
    bad.extend(too_wide(
        root,
        &format!("{label}: pre-start"),
        &common::stderr_raw(&start),
        false,
    ));
    for (cmd, diff) in [
        (&["plan", "105"][..], true),
        (&["status", "105"][..], false),
        (&["doctor", "105"][..], false),
    ] {
        let o = root.run(cmd);
        let name = format!("{label}: {}", cmd[0]);
        bad.extend(too_wide(root, &name, &stdout(&o), diff));
        bad.extend(too_wide(root, &name, &common::stderr_raw(&o), diff));
    }
}

#[test]
fn every_line_fits_the_task_log() {
    let mut bad = Vec::new();
    // The typical first start, and the second (run by check_all twice).
    let typical = host("", None);
    let plan = typical.run(&["plan", "105"]);
    bad.extend(too_wide(&typical, "first: plan", &stdout(&plan), true));
    check_all(&typical, "first start", &mut bad);
    check_all(&typical, "second start", &mut bad);
    // Refusals: a person's map that cannot give GID 20, a required device
    // missing, a dangerous policy device, a chain that does not resolve.
    let refusals: [(&str, &str, Option<&str>); 4] = [
        (
            "person's map",
            "lxc.idmap: u 0 100000 65536\nlxc.idmap: g 0 100000 1000\nlxc.idmap: g 1000 101000 64536\n",
            None,
        ),
        (
            "required device",
            "",
            Some("[[device]]\npath = \"/dev/serial/by-id/usb-Silicon_Labs_CP2102N_USB_to_UART_Bridge_Controller_0123456789abcdef0123456789abcdef-if00-port0\"\nrequired = true\n"),
        ),
        ("dangerous", "", Some("[[device]]\npath = \"/dev/ttyUSB0 \"\n")),
        ("chain", "", Some("chain = \"local:snippets/old-hook-that-is-gone.pl\"\n")),
    ];
    for (label, conf, policy) in refusals {
        let root = host(conf, policy);
        let o = root.run(&["105", "pre-start"]);
        assert_eq!(o.status.code(), Some(1), "{label}: {}", common::stderr(&o));
        check_all(&root, label, &mut bad);
    }
    assert!(
        bad.is_empty(),
        "lines wider than {WIDTH}:\n{}",
        bad.join("\n")
    );
}

/// Each reason is stated once: two sources wanting the same mapping (the
/// serial bind and the node's host group) say it once.
#[test]
fn a_reason_is_stated_once() {
    let root = host("", None);
    let o = root.run(&["105", "pre-start"]);
    let log = common::stderr_raw(&o);
    assert_eq!(
        log.matches("container gid 20 -> host gid 20").count(),
        1,
        "{log}"
    );
}
