//! pre-start's ID-map work, run as the real binary against a temp root:
//! inject, same-boot patch, subordinate IDs, idempotence (same bytes and
//! mtimes), the fast path, dry runs, refusals, and 32 concurrent writers.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::SystemTime;

const BIN: &str = env!("CARGO_BIN_EXE_pct-passthrough");

const SERIAL_CONF: &str = "arch: amd64\nhostname: z2m\nmemory: 512\nunprivileged: 1\nlxc.mount.entry: /dev/serial/by-id/usb-ITead_Sonoff_Zigbee_3.0-if00-port0 dev/ttyUSB0 none bind,optional,create=file\n";

fn generated(vmid: u32) -> String {
    format!("lxc.arch = amd64\nlxc.include = /usr/share/lxc/config/debian.common.conf\nlxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\nlxc.rootfs.path = /var/lib/lxc/{vmid}/rootfs\n")
}

struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().unwrap();
        let r = Root { dir };
        r.write("etc/subuid", "root:100000:65536\n");
        r.write("etc/subgid", "root:100000:65536\n");
        r
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap()
    }

    fn container(&self, vmid: u32, conf: &str) {
        self.write(&format!("etc/pve/lxc/{vmid}.conf"), conf);
        self.write(&format!("var/lib/lxc/{vmid}/config"), &generated(vmid));
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("PCT_PASSTHROUGH_ROOT", self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Every file under the root with its bytes and mtime.
    fn snapshot(&self) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, (Vec<u8>, SystemTime)>) {
            for e in fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    walk(&e.path(), out);
                } else {
                    out.insert(
                        e.path(),
                        (fs::read(e.path()).unwrap(), m.modified().unwrap()),
                    );
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.dir.path(), &mut out);
        // Lock files are created empty by flock; they carry no data.
        out.retain(|p, _| !p.starts_with(self.path("run/lock")));
        out
    }
}

/// stderr with each task-log message on one line.
fn stderr(o: &Output) -> String {
    common::joined(&String::from_utf8_lossy(&o.stderr))
}

#[test]
fn serial_bind_first_boot_then_nothing_to_do() {
    let r = Root::new();
    r.container(105, SERIAL_CONF);
    let o = r.run(&["105", "pre-start"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        r.read("etc/pve/lxc/105.conf"),
        format!("{SERIAL_CONF}lxc.idmap: u 0 100000 65536\nlxc.idmap: g 0 100000 20\nlxc.idmap: g 20 20 1\nlxc.idmap: g 21 100021 65515\n")
    );
    assert_eq!(r.read("etc/subgid"), "root:100000:65536\nroot:20:1\n");
    assert_eq!(r.read("etc/subgid-"), "root:100000:65536\n");
    assert_eq!(r.read("etc/subuid"), "root:100000:65536\n");
    // The map moves container gid 20: LXC re-owns its files before init.
    assert_eq!(
        r.read("var/lib/lxc/105/config"),
        format!("lxc.arch = amd64\nlxc.include = /usr/share/lxc/config/debian.common.conf\nlxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 20\nlxc.idmap = g 20 20 1\nlxc.idmap = g 21 100021 65515\nlxc.rootfs.path = /var/lib/lxc/105/rootfs\nlxc.hook.pre-start = {BIN} lxc-shift-hook\n")
    );
    let state: serde_json::Value =
        serde_json::from_str(&r.read("etc/pve/pct-passthrough/105.state.json")).unwrap();
    assert_eq!(
        state["owned"]["conf_lines"],
        serde_json::json!([
            "lxc.idmap: u 0 100000 65536",
            "lxc.idmap: g 0 100000 20",
            "lxc.idmap: g 20 20 1",
            "lxc.idmap: g 21 100021 65515"
        ])
    );
    let log = stderr(&o);
    assert!(log.contains("added root:20:1"), "{log}");
    assert!(log.contains("105.conf lxc.idmap u 0 100000 65536, g 0 100000 20, g 20 20 1, g 21 100021 65515 for container gid 20 -> host gid 20"), "{log}");

    // The second start with the same inputs writes nothing.
    let before = r.snapshot();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let o = r.run(&["105", "pre-start"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(r.snapshot(), before);
}

#[test]
fn removing_the_device_removes_the_tools_lines_next_start() {
    let r = Root::new();
    r.container(106, SERIAL_CONF);
    assert!(r.run(&["106", "pre-start"]).status.success());
    let conf = r.read("etc/pve/lxc/106.conf");
    let without = conf.replace(
        "lxc.mount.entry: /dev/serial/by-id/usb-ITead_Sonoff_Zigbee_3.0-if00-port0 dev/ttyUSB0 none bind,optional,create=file\n",
        "",
    );
    r.write("etc/pve/lxc/106.conf", &without);
    let o = r.run(&["106", "pre-start"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        r.read("etc/pve/lxc/106.conf"),
        "arch: amd64\nhostname: z2m\nmemory: 512\nunprivileged: 1\n"
    );
    // Back to the default map (the first run's shift hook line stays: this
    // test does not regenerate the file as Proxmox does at every start).
    assert_eq!(
        r.read("var/lib/lxc/106/config"),
        format!(
            "{}lxc.hook.pre-start = {BIN} lxc-shift-hook\n",
            generated(106)
        )
    );
    // Subordinate IDs are only ever added.
    assert_eq!(r.read("etc/subgid"), "root:100000:65536\nroot:20:1\n");
}

#[test]
fn fast_path_writes_nothing() {
    let r = Root::new();
    r.container(
        107,
        "arch: amd64\nunprivileged: 1\nrootfs: local:107/x.raw\n",
    );
    let before = r.snapshot();
    let o = r.run(&["107", "pre-start"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    assert_eq!(r.snapshot(), before);
    assert!(!r.path("var/lib/pct-passthrough").exists());
}

#[test]
fn dry_run_reports_and_writes_nothing() {
    let r = Root::new();
    r.container(108, SERIAL_CONF);
    let before = r.snapshot();
    let o = r.run(&["--phase", "pre-start", "108", "--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stderr(&o);
    assert!(log.contains("dry run: would write"), "{log}");
    assert!(
        log.contains("etc/subgid root needs subordinate gids 20"),
        "{log}"
    );
    assert!(log.contains("etc/pve/lxc/108.conf lxc.idmap u 0 100000 65536, g 0 100000 20, g 20 20 1, g 21 100021 65515 for container gid 20 -> host gid 20 (serial device bound: /dev/serial/by-id/usb-ITead_Sonoff_Zigbee_3.0-if00-port0)"), "{log}");
    assert_eq!(r.snapshot(), before);
}

#[test]
fn hand_written_map_gets_its_subgid_line_and_nothing_else() {
    let r = Root::new();
    let conf = "arch: amd64\nunprivileged: 1\nlxc.idmap: u 0 100000 65536\nlxc.idmap: g 0 100000 20\nlxc.idmap: g 20 20 1\nlxc.idmap: g 21 100021 65515\n";
    r.write("etc/pve/lxc/109.conf", conf);
    let lxc = "lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 20\nlxc.idmap = g 20 20 1\nlxc.idmap = g 21 100021 65515\n";
    r.write("var/lib/lxc/109/config", lxc);
    let o = r.run(&["109", "pre-start"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(r.read("etc/subgid"), "root:100000:65536\nroot:20:1\n");
    assert_eq!(r.read("etc/pve/lxc/109.conf"), conf);
    assert_eq!(r.read("var/lib/lxc/109/config"), lxc);
    assert!(!r.path("var/lib/pct-passthrough/109.json").exists());
}

#[test]
fn a_hand_written_copy_of_the_default_map_is_adopted() {
    let r = Root::new();
    let conf = format!("{SERIAL_CONF}lxc.idmap: u 0 100000 65536\nlxc.idmap: g 0 100000 65536\n");
    r.container(110, &conf);
    let o = r.run(&["110", "pre-start"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let after = r.read("etc/pve/lxc/110.conf");
    assert!(after.contains("lxc.idmap: g 20 20 1\n"), "{after}");
    assert!(!after.contains("lxc.idmap: g 0 100000 65536\n"), "{after}");
    assert!(
        stderr(&o).contains("copy of Proxmox's default map"),
        "{}",
        stderr(&o)
    );
    // A second start with the same inputs writes nothing.
    let before = r.snapshot();
    let o = r.run(&["110", "pre-start"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(r.snapshot(), before);
}

#[test]
fn conflicting_hand_written_map_is_refused() {
    let r = Root::new();
    let conf = format!("{SERIAL_CONF}lxc.idmap: u 0 100000 1000\nlxc.idmap: u 1000 1000 1\nlxc.idmap: u 1001 101001 64535\nlxc.idmap: g 0 100000 65536\n");
    r.container(110, &conf);
    let before = r.snapshot();
    let o = r.run(&["110", "pre-start"]);
    assert_eq!(o.status.code(), Some(1));
    let log = stderr(&o);
    assert!(
        log.contains("pct-passthrough 110 pre-start: error: "),
        "{log}"
    );
    assert!(
        log.contains("'g 0 100000 65536' maps container gid 20 to host gid 100020, not 20"),
        "{log}"
    );
    assert!(
        log.contains("replace them with: lxc.idmap: u 0 100000 1000, lxc.idmap: u 1000 1000 1"),
        "{log}"
    );
    // Only the refusal is recorded; no other file changed.
    let mut after = r.snapshot();
    after.retain(|p, _| !p.to_string_lossy().contains("pct-passthrough/110.json"));
    assert_eq!(after, before);
    let state = r.read("var/lib/pct-passthrough/110.json");
    assert!(state.contains("\"outcome\": \"refused\""), "{state}");
}

#[test]
fn policy_idmap_lines_apply_and_bad_ones_refuse() {
    let r = Root::new();
    r.container(111, "arch: amd64\nunprivileged: 1\n");
    r.write(
        "etc/pve/pct-passthrough/111.toml",
        "idmap = [\"both 1000 1000\", \"gid 44 44\"]\n",
    );
    let o = r.run(&["111", "pre-start"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let conf = r.read("etc/pve/lxc/111.conf");
    assert!(conf.contains("lxc.idmap: u 1000 1000 1\n"), "{conf}");
    assert!(conf.contains("lxc.idmap: g 44 44 1\n"), "{conf}");
    assert_eq!(r.read("etc/subuid"), "root:100000:65536\nroot:1000:1\n");
    assert_eq!(
        r.read("etc/subgid"),
        "root:100000:65536\nroot:44:1\nroot:1000:1\n"
    );

    r.write(
        "etc/pve/pct-passthrough/111.toml",
        "idmap = [\n\"gid 44 44\",\n\"uid 0 0\",\n]\n",
    );
    let o = r.run(&["111", "pre-start"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("host uid 0"), "{}", stderr(&o));
}

#[test]
fn privileged_container_gets_no_map() {
    let r = Root::new();
    r.container(112, &SERIAL_CONF.replace("unprivileged: 1\n", ""));
    let before = r.snapshot();
    let o = r.run(&["112", "pre-start"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o).matches("privileged container").count(), 1);
    assert_eq!(r.snapshot(), before);
}

#[test]
fn bad_subgid_file_is_a_clear_error() {
    let r = Root::new();
    r.container(113, SERIAL_CONF);
    fs::write(r.path("etc/subgid"), b"root:100000:65536\n\xff\xfe\n").unwrap();
    let o = r.run(&["113", "pre-start"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("etc/subgid line 2: not valid UTF-8"),
        "{}",
        stderr(&o)
    );
    assert_eq!(r.read("etc/pve/lxc/113.conf"), SERIAL_CONF);
}

/// 32 processes at once, each adding its own range to both files: no line
/// lost, none doubled, no partial file, no lock or temp file left.
#[test]
fn thirty_two_concurrent_writers_lose_nothing() {
    let r = Root::new();
    r.write(
        "etc/subuid",
        "# keep me\nroot:100000:65536\nlxd:1000000:65536",
    );
    r.write("etc/subgid", "root:100000:65536\n\n#x\n");
    let vmids: Vec<u32> = (200..232).collect();
    for &v in &vmids {
        r.container(v, "arch: amd64\nunprivileged: 1\n");
        r.write(
            &format!("etc/pve/pct-passthrough/{v}.toml"),
            &format!("idmap = [\"both {} {}\"]\n", v * 10, v * 10),
        );
    }
    let children: Vec<_> = vmids
        .iter()
        .map(|v| {
            Command::new(BIN)
                .args([&v.to_string(), "pre-start"])
                .env("PCT_PASSTHROUGH_ROOT", r.dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    for (file, head) in [
        (
            "etc/subuid",
            "# keep me\nroot:100000:65536\nlxd:1000000:65536\n",
        ),
        ("etc/subgid", "root:100000:65536\n\n#x\n"),
    ] {
        let text = r.read(file);
        assert!(text.starts_with(head), "{file}: {text}");
        assert!(text.ends_with('\n'));
        for &v in &vmids {
            let line = format!("root:{}:1\n", v * 10);
            assert_eq!(text.matches(&line).count(), 1, "{file}: {line} in {text}");
        }
        assert_eq!(
            text.lines().count(),
            head.lines().count() + vmids.len(),
            "{text}"
        );
    }
    let leftovers: Vec<String> = fs::read_dir(r.path("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.contains(".lock") && n != ".pwd.lock"
                || n.contains(".tmp.")
                || n.chars().last().is_some_and(|c| c.is_ascii_digit()) && n.contains('.')
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// shadow's own `usermod --add-subgids` racing the tool under a temp root
/// (`--prefix` uses the same link() locks): no line lost.
#[test]
fn racing_shadow_usermod_loses_nothing() {
    let usermod = Path::new("/usr/sbin/usermod");
    // CI is root and Debian has shadow's usermod: never skip silently.
    assert!(
        usermod.exists() && nix::unistd::geteuid().is_root(),
        "this test needs root and /usr/sbin/usermod (passwd package)"
    );
    let r = Root::new();
    r.write("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
    r.write("etc/group", "root:x:0:\n");
    let vmids: Vec<u32> = (300..312).collect();
    for &v in &vmids {
        r.container(v, "arch: amd64\nunprivileged: 1\n");
        r.write(
            &format!("etc/pve/pct-passthrough/{v}.toml"),
            &format!("idmap = [\"gid {} {}\"]\n", v * 10, v * 10),
        );
    }
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for (i, &v) in vmids.iter().enumerate() {
        ours.push(
            Command::new(BIN)
                .args([&v.to_string(), "pre-start"])
                .env("PCT_PASSTHROUGH_ROOT", r.dir.path())
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let start = 500_000 + i * 100;
        theirs.push(
            Command::new(usermod)
                .args(["--prefix", r.dir.path().to_str().unwrap()])
                .args(["--add-subgids", &format!("{start}-{}", start + 9), "root"])
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    for c in ours {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    for c in theirs {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "usermod: {}", stderr(&o));
    }
    let text = r.read("etc/subgid");
    for &v in &vmids {
        assert_eq!(
            text.matches(&format!("root:{}:1\n", v * 10)).count(),
            1,
            "{text}"
        );
    }
    for i in 0..vmids.len() {
        let line = format!("root:{}:10\n", 500_000 + i * 100);
        assert_eq!(text.matches(&line).count(), 1, "{line} in {text}");
    }
    assert!(!r.path("etc/subgid.lock").exists());
}
