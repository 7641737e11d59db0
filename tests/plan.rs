//! `plan <vmid>` against fixture hosts under a temp root: golden diffs
//! (re-bless with PCT_PASSTHROUGH_BLESS=1), every file byte-identical
//! afterwards, "nothing to do" once pre-start has run, refusals exit 1.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_pct-passthrough");
const BY_ID: &str = "/dev/serial/by-id/usb-ITead_Sonoff_Zigbee_3.0_USB_Dongle_Plus_4c004e9c53c9ec118f6c5b3d-if00-port0";
const GENERATED: &str = "lxc.arch = amd64\nlxc.include = /usr/share/lxc/config/common.conf\nlxc.include = /usr/share/lxc/config/userns.conf\nlxc.apparmor.profile = generated\nlxc.mount.auto = sys:mixed\nlxc.monitor.unshare = 1\nlxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\nlxc.cgroup2.devices.allow = a\nlxc.rootfs.path = /var/lib/lxc/105/rootfs\nlxc.uts.name = ct105\n";

struct Host {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Host {
    fn new(conf: &str, policy: Option<&str>) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let h = Host { _dir: dir, root };
        h.write("etc/pve/lxc/105.conf", conf);
        if let Some(p) = policy {
            h.write("etc/pve/pct-passthrough/105.toml", p);
        }
        h.write("etc/subuid", "root:100000:65536\n");
        h.write("etc/subgid", "root:100000:65536\n");
        h.write("var/lib/lxc/105/config", GENERATED);
        common::device_node(&h.root.join("dev/ttyUSB0"), false, 188, 0, 20);
        fs::create_dir_all(h.root.join("dev/serial/by-id")).unwrap();
        symlink("../../ttyUSB0", h.root.join(&BY_ID[1..])).unwrap();
        h
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("PCT_PASSTHROUGH_ROOT", &self.root)
            .output()
            .unwrap()
    }

    /// Every path under the root with its bytes (links as their target).
    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            let mut es: Vec<_> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            es.sort();
            for p in es {
                let m = fs::symlink_metadata(&p).unwrap();
                if m.file_type().is_symlink() {
                    out.push((
                        p.clone(),
                        fs::read_link(&p)
                            .unwrap()
                            .into_os_string()
                            .into_encoded_bytes(),
                    ));
                } else if m.is_dir() {
                    out.push((p.clone(), Vec::new()));
                    walk(&p, out);
                } else if m.is_file() {
                    out.push((p.clone(), fs::read(&p).unwrap()));
                } else {
                    out.push((p.clone(), Vec::new())); // device nodes
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }

    /// Runs `plan 105`, checks that no byte under the root changed, and
    /// returns stdout.
    fn plan(&self) -> (i32, String, String) {
        let before = self.snapshot();
        let o = self.run(&["plan", "105"]);
        assert_eq!(self.snapshot(), before, "plan wrote something");
        (
            o.status.code().unwrap(),
            // Messages name host files under the temp root; goldens hold
            // the paths as on a real host.
            // and the shift hook's binary as installed.
            String::from_utf8(o.stdout)
                .unwrap()
                .replace(&self.root.display().to_string(), "")
                .replace(
                    env!("CARGO_BIN_EXE_pct-passthrough"),
                    "/usr/bin/pct-passthrough",
                ),
            String::from_utf8(o.stderr).unwrap(),
        )
    }
}

/// Compares with `tests/golden/plan/<name>.diff`; PCT_PASSTHROUGH_BLESS=1
/// writes it instead.
fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/plan/{name}.diff"));
    if std::env::var_os("PCT_PASSTHROUGH_BLESS").is_some_and(|v| v == "1") {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, actual).unwrap();
        return;
    }
    let want = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with PCT_PASSTHROUGH_BLESS=1 to create it",
            path.display()
        )
    });
    assert_eq!(actual, want, "{name}: plan differs from {}", path.display());
}

const BIND_CONF: &str = "arch: amd64\nhookscript: local:snippets/pct-passthrough\nhostname: z2m\nunprivileged: 1\nlxc.mount.entry: /dev/serial/by-id/usb-ITead_Sonoff_Zigbee_3.0_USB_Dongle_Plus_4c004e9c53c9ec118f6c5b3d-if00-port0 dev/ttyUSB0 none bind,optional,create=file\n";

#[test]
fn serial_bind_plans_map_subgid_and_generated_config_then_nothing() {
    let h = Host::new(BIND_CONF, None);
    // A directory rootfs with one file of container gid 20 (host 100020).
    let spool = h.root.join("var/lib/lxc/105/rootfs/var/spool");
    fs::create_dir_all(&spool).unwrap();
    fs::write(spool.join("x"), "x").unwrap();
    std::os::unix::fs::chown(spool.join("x"), Some(100_000), Some(100_020)).unwrap();
    let (code, out, err) = h.plan();
    assert_eq!(code, 0, "{err}");
    golden("serial-bind", &out);
    // What the plan showed is what a start does.
    let o = h.run(&["105", "pre-start"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Until LXC ran the shift hook, the re-owning is still to do.
    let (code, out, _) = h.plan();
    assert_eq!(code, 0);
    assert!(
        out.starts_with("re-own: the map moves container gid 20: host 100020 -> 20\n"),
        "{out}"
    );
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pct-passthrough"))
        .args(["lxc-shift-hook", "105", "lxc", "pre-start"])
        .env("PCT_PASSTHROUGH_ROOT", &h.root)
        .env("LXC_NAME", "105")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        fs::metadata(spool.join("x")).unwrap().gid(),
        20,
        "the hook did what the plan said"
    );
    let (code, out, _) = h.plan();
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "nothing to do: pre-start would change no file for 105\n"
    );
}

#[test]
fn media_dir_policy_plans_uid_and_gid_passthrough() {
    let h = Host::new(
        "arch: amd64\nhostname: media\nmp0: /tank/media,mp=/media\nunprivileged: 1\n",
        Some("idmap = [\"both 1000 1000\"]\n"),
    );
    let (code, out, err) = h.plan();
    assert_eq!(code, 0, "{err}");
    golden("media-dir", &out);
}

#[test]
fn nothing_to_act_on() {
    let h = Host::new("arch: amd64\nunprivileged: 1\n", None);
    let (code, out, _) = h.plan();
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "nothing to do: pre-start has nothing to act on for 105\n"
    );
}

#[test]
fn a_refusal_exits_1_and_says_why() {
    // A person's map that maps gid 20 elsewhere: pre-start never changes it.
    let conf = format!("{BIND_CONF}lxc.idmap: u 0 100000 65536\nlxc.idmap: g 0 100000 1000\nlxc.idmap: g 1000 101000 64536\n");
    let h = Host::new(&conf, None);
    let (code, out, err) = h.plan();
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("pct-passthrough 105 plan: error: pre-start would refuse to start 105:"),
        "{err}"
    );
}

#[test]
fn missing_config_is_an_error() {
    let h = Host::new("", None);
    fs::remove_file(h.root.join("etc/pve/lxc/105.conf")).unwrap();
    let (code, _, err) = h.plan();
    assert_eq!(code, 1);
    assert!(err.contains("105.conf: not found"), "{err}");
}
