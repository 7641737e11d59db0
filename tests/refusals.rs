//! Every refusal the pre-start planner can give is reported the same way by
//! every command: `plan` exits 1 naming it, `doctor` fails on it (exit 1),
//! `status` shows "next start: refused", and the refused pre-start is
//! recorded in the state. The real binary on a temp root (needs root for
//! device nodes, as every test run here has).

mod common;

use std::os::unix::fs::symlink;

use common::{stderr, stdout, TempRoot};
use rstest::rstest;

const BY_ID: &str = "/dev/serial/by-id/usb-ITead_Sonoff_Zigbee_3.0-if00-port0";
const HOOK: &str = "hookscript: local:snippets/pct-passthrough\n";
const BIND: &str = "lxc.mount.entry: /dev/serial/by-id/usb-ITead_Sonoff_Zigbee_3.0-if00-port0 dev/ttyUSB0 none bind,optional,create=file\n";

fn node(root: &TempRoot, abs: &str, block: bool, major: u64, minor: u64, gid: u32) {
    common::device_node(&root.at(abs), block, major, minor, gid);
}

/// A node with the hook registered, a stick plugged in, subids for root.
fn host(conf: &str, policy: Option<&str>) -> TempRoot {
    let root = TempRoot::new();
    root.write("/etc/pve/lxc/105.conf", conf);
    if let Some(p) = policy {
        root.write("/etc/pve/pct-passthrough/105.toml", p);
    }
    root.write("/etc/subuid", "root:100000:65536\n");
    root.write("/etc/subgid", "root:100000:65536\n");
    root.write(
        "/var/lib/lxc/105/config",
        "lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n",
    );
    root.write(
        "/etc/pve/storage.cfg",
        "dir: local\n\tpath /var/lib/vz\n\tcontent snippets,vztmpl\n",
    );
    for tool in ["/usr/bin/newuidmap", "/usr/bin/newgidmap"] {
        let p = root.write(tool, "#!/bin/sh\n");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let hook = root.at("/var/lib/vz/snippets/pct-passthrough");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    symlink(common::BIN, &hook).unwrap();
    node(&root, "/dev/ttyUSB0", false, 188, 0, 20);
    std::fs::create_dir_all(root.at("/dev/serial/by-id")).unwrap();
    symlink("../../ttyUSB0", root.at(BY_ID)).unwrap();
    root
}

fn unpriv(extra: &str) -> String {
    format!("arch: amd64\n{HOOK}unprivileged: 1\n{extra}")
}

#[rstest]
#[case::policy_does_not_parse(unpriv(""), Some("idmaps = []\n"), "unknown field `idmaps`")]
#[case::chain_missing(
    unpriv(""),
    Some("chain = \"local:snippets/nope.sh\"\n"),
    "does not exist"
)]
#[case::chain_is_our_own_hookscript(
    unpriv(""),
    Some("chain = \"local:snippets/pct-passthrough\"\n"),
    "this container's own hookscript"
)]
#[case::persons_map_lacks_the_passthrough(
    unpriv(&format!("{BIND}lxc.idmap: u 0 100000 65536\nlxc.idmap: g 0 100000 1000\nlxc.idmap: g 1000 101000 64536\n")),
    None,
    "do not give what is needed"
)]
#[case::persons_map_without_root(
    unpriv("lxc.idmap: u 1000 101000 100\nlxc.idmap: g 1000 101000 100\n"),
    None,
    "map no container uid 0"
)]
#[case::malformed_idmap_line(unpriv("lxc.idmap: u 0 100000\n"), None, "failed to parse idmap")]
#[case::policy_gid_collides_with_the_serial_group(
    unpriv(BIND),
    Some("idmap = [\"gid 44 20\"]\n"),
    "not possible"
)]
#[case::policy_maps_host_root(unpriv(""), Some("idmap = [\"uid 0 1000\"]\n"), "host uid 0")]
#[case::required_device_missing(
    unpriv(""),
    Some("[[device]]\npath = \"/dev/serial/by-id/usb-gone-if00\"\nrequired = true\n"),
    "required device /dev/serial/by-id/usb-gone-if00 is missing"
)]
#[case::policy_device_mem(unpriv(""), Some("[[device]]\npath = \"/dev/mem\"\n"), "host's memory")]
#[case::policy_device_block(unpriv(""), Some("[[device]]\npath = \"/dev/sda\"\n"), "block device")]
#[case::policy_device_regular_file(
    unpriv(""),
    Some("[[device]]\npath = \"/dev/notadevice\"\n"),
    "not a device node"
)]
#[case::policy_path_with_a_space(
    unpriv(""),
    Some("[[device]]\npath = \"/dev/ttyUSB0 \"\n"),
    "cannot hold whitespace"
)]
#[case::policy_bind_target_with_a_space(
    unpriv(""),
    Some("[[device]]\npath = \"/dev/ttyUSB0\"\nmethod = \"bind\"\ncontainer_path = \"/dev/my zigbee\"\n"),
    "cannot express"
)]
fn every_command_reports_the_refusal(
    #[case] conf: String,
    #[case] policy: Option<&str>,
    #[case] needle: &str,
) {
    let root = host(&conf, policy);
    node(&root, "/dev/mem", false, 1, 1, 15);
    node(&root, "/dev/sda", true, 8, 0, 6);
    root.write("/dev/notadevice", "");

    let plan = root.run(&["plan", "105"]);
    assert_eq!(plan.status.code(), Some(1), "plan: {}", stderr(&plan));
    assert!(
        stderr(&plan).contains("pre-start would refuse"),
        "{}",
        stderr(&plan)
    );
    assert!(stderr(&plan).contains(needle), "plan: {}", stderr(&plan));

    let doctor = root.run(&["doctor", "105"]);
    let out = common::joined(&stdout(&doctor));
    assert_eq!(doctor.status.code(), Some(1), "doctor: {out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("fail  105: the next start is refused: "))
        .unwrap_or_else(|| panic!("no refusal line in:\n{out}"));
    assert!(line.contains(needle), "doctor: {out}");

    let status = root.run(&["status", "105"]);
    let text = common::joined(&stdout(&status));
    assert!(text.contains("next start: refused: "), "status: {text}");
    assert!(text.contains(needle), "status: {text}");
    let json = root.run(&["status", "105", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(v["next_start"]["outcome"], "refused", "{v}");

    // The start itself: refused, recorded, nothing else written.
    let before = root.snapshot();
    let start = root.run(&["105", "pre-start"]);
    assert_eq!(start.status.code(), Some(1), "{}", stderr(&start));
    assert!(stderr(&start).contains(needle), "{}", stderr(&start));
    let mut after = root.snapshot();
    // The state records the refusal; the tool's own lock file stays.
    after.retain(|(p, ..)| {
        !p.ends_with("var/lib/pct-passthrough/105.json") && !p.starts_with(root.at("/run/lock"))
    });
    let names = |s: &[(std::path::PathBuf, Vec<u8>, std::time::SystemTime)]| {
        s.iter()
            .map(|(p, ..)| p.display().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&after), names(&before));
    assert!(
        after == before,
        "a refused start changes no file but the state"
    );
    let status = stdout(&root.run(&["status", "105"]));
    assert!(status.contains("last run: pre-start refused"), "{status}");
}

/// Entries a person wrote for dangerous nodes get no rule from the tool,
/// and doctor fails on them (issue: allow_dangerous was hard-coded).
#[rstest]
#[case::mem_bind(
    "lxc.mount.entry: /dev/mem dev/mem none bind,optional,create=file\n",
    "c 1:1"
)]
#[case::disk_bind(
    "lxc.mount.entry: /dev/sda dev/sda none bind,optional,create=file\n",
    "b 8:0"
)]
#[case::mem_dev("dev0: /dev/mem\n", "c 1:1")]
fn a_persons_dangerous_entry_gets_no_rule_and_fails_doctor(
    #[case] entry: &str,
    #[case] rule: &str,
) {
    let conf = format!("arch: amd64\n{HOOK}{entry}");
    let root = host(&conf, None);
    node(&root, "/dev/mem", false, 1, 1, 15);
    node(&root, "/dev/sda", true, 8, 0, 6);
    let start = root.run(&["105", "pre-start"]);
    assert_eq!(start.status.code(), Some(0), "{}", stderr(&start));
    assert!(stderr(&start).contains("warning"), "{}", stderr(&start));
    let conf_after = String::from_utf8(root.read("/etc/pve/lxc/105.conf")).unwrap();
    assert!(!conf_after.contains(rule), "{conf_after}");
    let lxc = String::from_utf8(root.read("/var/lib/lxc/105/config")).unwrap();
    assert!(!lxc.contains(rule), "{lxc}");
    let doctor = root.run(&["doctor", "105"]);
    assert_eq!(doctor.status.code(), Some(1), "{}", stdout(&doctor));
    assert!(
        common::joined(&stdout(&doctor))
            .lines()
            .any(|l| l.starts_with("fail  105:") && l.contains("adds no rule")),
        "{}",
        stdout(&doctor)
    );
}

/// A container pre-start would start: doctor says so, plan exits 0.
#[test]
fn a_good_start_is_ok_everywhere() {
    let root = host(&unpriv(BIND), None);
    let plan = root.run(&["plan", "105"]);
    assert_eq!(plan.status.code(), Some(0), "{}", stderr(&plan));
    let doctor = root.run(&["doctor", "105"]);
    assert_eq!(doctor.status.code(), Some(0), "{}", stdout(&doctor));
    assert!(stdout(&doctor).contains("ok    105: pre-start would start it"));
    let status = stdout(&root.run(&["status", "105"]));
    assert!(status.contains("next start: changes: writes"), "{status}");
}
