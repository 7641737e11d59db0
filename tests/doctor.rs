//! `doctor` against a healthy host fixture under a temp root, then one
//! broken fixture per check: the expected verdict line, its fix, and the
//! exit code (1 only when something fails).

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;

use rstest::rstest;

const BIN: &str = env!("CARGO_BIN_EXE_pct-passthrough");
const MAP: &str = "lxc.idmap: u 0 100000 65536\nlxc.idmap: g 0 100000 20\nlxc.idmap: g 20 20 1\nlxc.idmap: g 21 100021 65515\n";
const BY_ID: &str = "/dev/serial/by-id/usb-ITead_Sonoff_Zigbee_3.0-if00-port0";

struct Host {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Host {
    /// A host where every check passes.
    fn healthy() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let h = Host { _dir: dir, root };
        for tool in ["usr/bin/newuidmap", "usr/bin/newgidmap"] {
            h.write(tool, "");
            h.chmod(tool, 0o755);
        }
        h.write("etc/subuid", "root:100000:65536\n");
        h.write("etc/subgid", "root:100000:65536\nroot:20:1\n");
        h.write("etc/nsswitch.conf", "passwd: files\ngroup: files\n");
        h.write(
            "etc/pve/storage.cfg",
            "dir: local\n\tpath /var/lib/vz\n\tcontent iso,snippets\n",
        );
        fs::create_dir_all(h.root.join("var/lib/vz/snippets")).unwrap();
        symlink(BIN, h.root.join("var/lib/vz/snippets/pct-passthrough")).unwrap();
        common::device_node(&h.root.join("dev/ttyUSB0"), false, 188, 0, 20);
        fs::create_dir_all(h.root.join("dev/serial/by-id")).unwrap();
        symlink("../../ttyUSB0", h.root.join(&BY_ID[1..])).unwrap();
        h.write(
            "etc/pve/lxc/105.conf",
            &format!("arch: amd64\ndev0: {BY_ID}\nhookscript: local:snippets/pct-passthrough\nunprivileged: 1\n{MAP}"),
        );
        h
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let _ = fs::remove_file(&p);
        fs::write(p, text).unwrap();
    }

    fn chmod(&self, rel: &str, mode: u32) {
        fs::set_permissions(self.root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
    }

    fn edit_conf(&self, from: &str, to: &str) {
        let p = self.root.join("etc/pve/lxc/105.conf");
        let t = fs::read_to_string(&p).unwrap();
        assert!(t.contains(from), "{from}");
        fs::write(p, t.replace(from, to)).unwrap();
    }

    fn doctor(&self, args: &[&str]) -> (i32, String) {
        let o = Command::new(BIN)
            .arg("doctor")
            .args(args)
            .env("PCT_PASSTHROUGH_ROOT", &self.root)
            .output()
            .unwrap();
        assert!(
            o.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        (
            o.status.code().unwrap(),
            String::from_utf8(o.stdout).unwrap(),
        )
    }
}

#[test]
fn healthy_host_passes() {
    let h = Host::healthy();
    let (code, out) = h.doctor(&["105"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("warn ") && !out.contains("fail "), "{out}");
    assert!(
        out.contains("ok    105: hookscript local:snippets/pct-passthrough is this binary"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "ok    105: dev0 {BY_ID} is present (/dev/ttyUSB0)"
        )),
        "{out}"
    );
    // Without a vmid: the host, and every container that uses the hook.
    let (code, all) = h.doctor(&[]);
    assert_eq!(code, 0);
    assert!(all.contains("105: hookscript"), "{all}");
}

fn no_newgidmap(h: &Host) {
    fs::remove_file(h.root.join("usr/bin/newgidmap")).unwrap();
}
fn subgid_no_newline(h: &Host) {
    h.write("etc/subgid", "root:100000:65536\nroot:20:1");
}
fn subgid_missing(h: &Host) {
    fs::remove_file(h.root.join("etc/subgid")).unwrap();
}
fn subuid_junk(h: &Host) {
    h.write("etc/subuid", "root:100000:65536\nroot:100000\n");
}
fn nsswitch_subid(h: &Host) {
    h.write("etc/nsswitch.conf", "passwd: files\nsubid: sss\n");
}
fn hook_missing(h: &Host) {
    fs::remove_file(h.root.join("var/lib/vz/snippets/pct-passthrough")).unwrap();
}
fn hook_not_executable(h: &Host) {
    fs::remove_file(h.root.join("var/lib/vz/snippets/pct-passthrough")).unwrap();
    h.write("var/lib/vz/snippets/pct-passthrough", "x");
    h.chmod("var/lib/vz/snippets/pct-passthrough", 0o644);
}
fn hook_other_version(h: &Host) {
    fs::remove_file(h.root.join("var/lib/vz/snippets/pct-passthrough")).unwrap();
    h.write("var/lib/vz/snippets/pct-passthrough", "#!/bin/sh\n");
    h.chmod("var/lib/vz/snippets/pct-passthrough", 0o755);
}
fn hook_unregistered(h: &Host) {
    h.edit_conf("hookscript: local:snippets/pct-passthrough\n", "");
}
fn hook_bad_storage(h: &Host) {
    h.edit_conf(
        "local:snippets/pct-passthrough",
        "nas:snippets/pct-passthrough",
    );
}
fn device_missing(h: &Host) {
    fs::remove_file(h.root.join("dev/ttyUSB0")).unwrap();
}
fn device_kernel_name(h: &Host) {
    h.edit_conf(BY_ID, "/dev/ttyUSB0");
}
fn device_kernel_name_no_link(h: &Host) {
    h.edit_conf(BY_ID, "/dev/ttyUSB0");
    fs::remove_file(h.root.join(&BY_ID[1..])).unwrap();
}
fn render_collision(h: &Host) {
    common::device_node(&h.root.join("dev/dri/renderD128"), false, 226, 128, 104);
    h.edit_conf(
        "hookscript:",
        "dev1: /dev/dri/renderD128,gid=104\nhookscript:",
    );
    h.write(
        "var/lib/pct-passthrough/105.json",
        r#"{"version": 1, "vmid": 105, "container_groups": {"_ssh": 104, "render": 107}}"#,
    );
}
fn recorded_collision(h: &Host) {
    h.write(
        "var/lib/pct-passthrough/105.json",
        r#"{"version": 1, "vmid": 105, "container_groups": {"render": 107}, "group_collisions": [{"gid": 104, "host_name": "render", "container_name": "_ssh"}]}"#,
    );
}
fn dropped_groups(h: &Host) {
    h.write(
        "var/lib/pct-passthrough/105.json",
        r#"{"version": 1, "vmid": 105, "runtime_user": {"uid": 1000, "gid": 1000, "groups": [], "name": "node", "keeps_supplementary_groups": false}}"#,
    );
}
fn bad_policy(h: &Host) {
    h.write("etc/pve/pct-passthrough/105.toml", "idmaps = []\n");
}
fn map_not_covered(h: &Host) {
    h.write("etc/subgid", "root:100000:65536\n");
}
fn map_not_covered_without_hook(h: &Host) {
    map_not_covered(h);
    h.edit_conf("hookscript: local:snippets/pct-passthrough\n", "");
}
fn map_invalid(h: &Host) {
    h.edit_conf(
        "lxc.idmap: g 20 20 1\n",
        "lxc.idmap: g 20 20 1\nlxc.idmap: g 20 100020 1\n",
    );
}
fn map_unparsable(h: &Host) {
    h.edit_conf("lxc.idmap: g 20 20 1\n", "lxc.idmap: g 20 20\n");
}
fn root_overlap(h: &Host) {
    h.write("etc/subuid", "root:100000:65536\nbackup:165000:1000\n");
}
fn root_stale(h: &Host) {
    h.write("etc/subgid", "root:100000:65536\nroot:20:1\nroot:44:1\n");
}
fn chain_missing(h: &Host) {
    h.write(
        "etc/pve/pct-passthrough/105.toml",
        "chain = \"local:snippets/old-hook.pl\"\n",
    );
}
fn no_container(h: &Host) {
    fs::remove_file(h.root.join("etc/pve/lxc/105.conf")).unwrap();
}

#[rstest]
#[case::no_newgidmap(
    no_newgidmap,
    "fail  host: newgidmap not found in /usr/bin",
    "fix: apt-get install uidmap"
)]
#[case::subgid_no_newline(
    subgid_no_newline,
    "fail  host: /etc/subgid: the last line has no newline",
    "fix: echo >> /etc/subgid"
)]
#[case::subgid_missing(
    subgid_missing,
    "fail  host: /etc/subgid does not exist",
    "fix: echo 'root:100000:65536' > /etc/subgid"
)]
#[case::subuid_junk(
    subuid_junk,
    "warn  host: /etc/subuid: line 2 is not owner:start:count",
    "fix: fix or delete that line in /etc/subuid"
)]
#[case::nsswitch_subid(
    nsswitch_subid,
    "warn  host: /etc/nsswitch.conf has a subid: line",
    "fix: remove the subid: line from /etc/nsswitch.conf"
)]
#[case::hook_missing(hook_missing, "fail  105: hookscript local:snippets/pct-passthrough (/var/lib/vz/snippets/pct-passthrough) does not exist on this node", "fix: run install.sh on this node")]
#[case::hook_not_executable(hook_not_executable, "fail  105: hookscript local:snippets/pct-passthrough (/var/lib/vz/snippets/pct-passthrough) is not executable", "fix: chmod 755 /var/lib/vz/snippets/pct-passthrough")]
#[case::hook_other_version(hook_other_version, "warn  105: hookscript local:snippets/pct-passthrough (/var/lib/vz/snippets/pct-passthrough) differs from this binary", "fix: re-run install.sh")]
#[case::hook_unregistered(
    hook_unregistered,
    "warn  105: no hookscript is registered",
    "fix: /usr/share/pct-passthrough/install/install.sh 105"
)]
#[case::hook_bad_storage(hook_bad_storage, "fail  105: hookscript nas:snippets/pct-passthrough: 'nas:snippets/pct-passthrough': storage 'nas' is not defined", "fix: fix the storage")]
#[case::device_missing(device_missing, &format!("fail  105: dev0 {BY_ID} does not exist; the start fails"), "fix: plug the device in, or fix the path in dev0")]
#[case::device_kernel_name(device_kernel_name, "warn  105: dev0 /dev/ttyUSB0: the kernel name can change", &format!("fix: name it by its stable link: {BY_ID}"))]
#[case::device_kernel_name_no_link(device_kernel_name_no_link, "warn  105: dev0 /dev/ttyUSB0: the kernel name can change", "add a udev rule to /etc/udev/rules.d/99-serial-stable.rules: SUBSYSTEM==\"tty\", ATTRS{idVendor}==")]
#[case::render_collision(render_collision, "warn  105: /dev/dri/renderD128 has GID 104 inside the container, which is the group '_ssh' there, not render", "fix: give the node the container's render GID: set gid=107 on its devN entry")]
#[case::recorded_collision(
    recorded_collision,
    "warn  105: host group render (GID 104) is the group '_ssh' inside the container",
    "fix: give the device the container's own render GID: set gid=107"
)]
#[case::dropped_groups(
    dropped_groups,
    "warn  105: service user node (uid 1000) runs without supplementary groups",
    "fix: let pct-passthrough give access by owner"
)]
#[case::bad_policy(
    bad_policy,
    "fail  105: the next start is refused: {root}/etc/pve/pct-passthrough/105.toml line 1: unknown field `idmaps`",
    "fix: fix the file named; pre-start refuses every start until then"
)]
#[case::map_not_covered(map_not_covered, "warn  105: the map needs root:20:1 in /etc/subgid, which is missing; pre-start adds it at the next start", "usermod --add-subgids 20-20 root")]
#[case::map_not_covered_without_hook(
    map_not_covered_without_hook,
    "fail  105: the map needs root:20:1 in /etc/subgid, which is missing; the start fails",
    "fix: usermod --add-subgids 20-20 root, or register pct-passthrough (install.sh 105)"
)]
#[case::map_invalid(
    map_invalid,
    "fail  105: the ID map is invalid: ",
    "fix: fix those lxc.idmap lines"
)]
#[case::map_unparsable(
    map_unparsable,
    "fail  105: lxc.idmap 'g 20 20' is not an idmap entry",
    "fix: fix or delete that lxc.idmap line"
)]
#[case::root_overlap(
    root_overlap,
    "warn  host: /etc/subuid: root's range on line 1 overlaps 'backup' on line 2",
    "fix: give 'backup' a range of its own"
)]
#[case::root_stale(
    root_stale,
    "warn  host: /etc/subgid line 3: root:44:1 is used by no container map on this node (stale?)",
    "delete line 3 of /etc/subgid"
)]
#[case::chain_missing(chain_missing, "fail  105: the next start is refused: 'chain' in {root}/etc/pve/pct-passthrough/105.toml: 'local:snippets/old-hook.pl' ({root}/var/lib/vz/snippets/old-hook.pl) does not exist", "fix: pre-start runs the chained hookscript first and refuses the start while it cannot")]
#[case::no_container(
    no_container,
    "fail  105: {root}/etc/pve/lxc/105.conf: not found; is 105 a container on this node? (pct list)",
    "fix: run doctor on the node the container is on"
)]
fn each_broken_fixture_names_its_problem_and_fix(
    #[case] breakage: fn(&Host),
    #[case] line: &str,
    #[case] fix: &str,
) {
    let h = Host::healthy();
    breakage(&h);
    let (code, out) = h.doctor(&["105"]);
    // Messages from the hook's own code name host paths under the root.
    let line = &line.replace("{root}", &h.root.display().to_string());
    let fix = &fix.replace("{root}", &h.root.display().to_string());
    // Each check as one logical line (its wrapped parts joined) and its fix.
    let checks = checks_of(&out);
    let (_, check_fix) = checks
        .iter()
        .find(|(msg, _)| msg.contains(line.as_str()))
        .unwrap_or_else(|| panic!("no '{line}' in:\n{out}"));
    assert!(
        check_fix
            .as_deref()
            .is_some_and(|f| f.contains(fix.trim_start_matches("fix: "))),
        "fix {check_fix:?} lacks '{fix}':\n{out}"
    );
    let fails = out.lines().filter(|l| l.starts_with("fail ")).count();
    assert_eq!(code, i32::from(fails > 0), "{out}");
    assert_eq!(code, i32::from(line.starts_with("fail")), "{out}");
    assert!(out.ends_with(&format!("{fails} fail\n")), "{out}");
}

#[test]
fn person_written_device_entries_that_cannot_work_are_warned_about() {
    let h = Host::healthy();
    let node = h.root.join("dev/ttyACM0");
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o660),
        libc::makedev(166, 0),
    )
    .unwrap();
    h.edit_conf(
        "unprivileged: 1\n",
        "unprivileged: 1\nlxc.cgroup2.devices.allow: c 166:1 rwm\nlxc.mount.entry: /dev/ttyACM0 dev/ttyACM0 none bind\n",
    );
    let (code, out) = h.doctor(&["105"]);
    assert_eq!(code, 0, "warnings only: {out}");
    assert!(
        out.contains("warn  105: lxc.cgroup2.devices.allow c 166:1 does not match /dev/ttyACM0, which is now c 166:0 (replugged?)"),
        "{out}"
    );
    assert!(out.contains("remove the old rule"), "{out}");
    assert!(
        out.contains("lxc.mount.entry of /dev/ttyACM0 lacks optional,create=file"),
        "{out}"
    );
}

/// doctor's report as (message, fix) per check: a check starts with its
/// verdict; its indented lines continue it, the `fix:` one is its fix.
fn checks_of(out: &str) -> Vec<(String, Option<String>)> {
    let mut checks: Vec<(String, Option<String>)> = Vec::new();
    for l in out.lines() {
        let t = l.trim_start();
        if !l.starts_with(' ') {
            checks.push((l.to_string(), None));
        } else if let Some(c) = checks.last_mut() {
            match (t.strip_prefix("fix: "), &mut c.1) {
                (Some(f), None) => c.1 = Some(f.to_string()),
                (_, Some(f)) => {
                    f.push(' ');
                    f.push_str(t);
                }
                (None, None) => {
                    c.0.push(' ');
                    c.0.push_str(t);
                }
            }
        }
    }
    checks
}

/// In a cluster, a hookscript on per-node storage must be on every node:
/// doctor warns about the nodes install.sh --all-nodes did not reach, and
/// says nothing when the storage is shared.
#[test]
fn cluster_node_without_the_hookscript_is_warned_about() {
    let h = Host::healthy();
    h.write(
        "etc/pve/.members",
        "{\n\"nodename\": \"pve1\",\n\"version\": 5,\n\"cluster\": { \"name\": \"lab\", \"version\": 2, \"nodes\": 2, \"quorate\": 1 },\n\"nodelist\": {\n  \"pve1\": { \"id\": 1, \"online\": 1, \"ip\": \"10.0.0.1\"},\n  \"pve2\": { \"id\": 2, \"online\": 1, \"ip\": \"10.0.0.2\"}\n  }\n}\n",
    );
    let (code, out) = h.doctor(&["105"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warn  105: hookscript local:snippets/pct-passthrough is on per-node storage, and node pve2 is not known to have it"),
        "{out}"
    );
    assert!(
        out.contains("fix: /usr/share/pct-passthrough/install/install.sh --all-nodes"),
        "{out}"
    );
    // install.sh --all-nodes recorded its copy on pve2.
    h.write(
        "var/lib/pct-passthrough/install/manifest",
        "binary\tcreated\t/var/lib/vz/snippets/pct-passthrough\nremote-binary\tpve2\t10.0.0.2\t/var/lib/vz/snippets/pct-passthrough\t-\n",
    );
    let (_, out) = h.doctor(&["105"]);
    assert!(out.contains("ok    105: hookscript local:snippets/pct-passthrough: install.sh --all-nodes put it on every other node"), "{out}");
    // A shared storage is seen by every node.
    h.write(
        "etc/pve/storage.cfg",
        "dir: local\n\tpath /var/lib/vz\n\tcontent iso,snippets\n\tshared 1\n",
    );
    let (_, out) = h.doctor(&["105"]);
    assert!(
        !out.contains("per-node") && !out.contains("other node"),
        "{out}"
    );
}
