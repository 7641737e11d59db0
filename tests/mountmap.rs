//! Per-mount-point maps through the real binary on a temp root: with
//! pve-container 6.1.6 or later installed (dpkg's database under the root,
//! read through `dpkg-query --root`), a policy `[[mount]]` becomes `idmap=`
//! on that `mpN` and nothing else changes; with an older one, or none, the
//! container-wide passthrough and the shift hook, said in the task log;
//! `doctor` suggests the mount-point form for a container-wide passthrough
//! that owns a bind-mounted host directory.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_pct-passthrough");
const CONF: &str = "arch: amd64\nhostname: media\nmp0: /tank/media,mp=/media\nunprivileged: 1\n";
const POLICY: &str = "[[mount]]\nmp = \"mp0\"\nidmap = [\"both 1000 1000\"]\n";
const GENERATED: &str = "lxc.arch = amd64\nlxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\nlxc.rootfs.path = /var/lib/lxc/105/rootfs\n";

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn host(version: Option<&str>, policy: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    write(r, "etc/subuid", "root:100000:65536\n");
    write(r, "etc/subgid", "root:100000:65536\n");
    write(r, "etc/pve/lxc/105.conf", CONF);
    write(r, "etc/pve/pct-passthrough/105.toml", policy);
    write(r, "var/lib/lxc/105/config", GENERATED);
    let status = match version {
        Some(v) => format!("Package: pve-container\nStatus: install ok installed\nPriority: optional\nSection: admin\nMaintainer: Proxmox Support Team <support@proxmox.com>\nArchitecture: all\nVersion: {v}\nDescription: Proxmox VE Container management tool\n"),
        None => String::new(),
    };
    write(r, "var/lib/dpkg/status", &status);
    t
}

fn run(root: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("PCT_PASSTHROUGH_ROOT", root)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel)).unwrap()
}

#[test]
fn new_proxmox_gets_idmap_on_the_mount_point_and_nothing_else() {
    let t = host(Some("6.1.10"), POLICY);
    let r = t.path();
    let o = run(r, &["105", "pre-start"]);
    assert!(
        o.status.success(),
        "{}",
        common::joined(&String::from_utf8_lossy(&o.stderr))
    );
    assert_eq!(
        read(r, "etc/pve/lxc/105.conf"),
        CONF.replace("mp=/media", "mp=/media,idmap=u:1000:1000:1;g:1000:1000:1")
    );
    assert_eq!(
        read(r, "var/lib/lxc/105/config"),
        GENERATED,
        "no map, no shift hook"
    );
    assert_eq!(read(r, "etc/subuid"), "root:100000:65536\n");
    assert_eq!(read(r, "etc/subgid"), "root:100000:65536\n");
    // A second start writes nothing; removing the table removes the option.
    let before = read(r, "var/lib/pct-passthrough/105.json");
    assert!(run(r, &["105", "pre-start"]).status.success());
    assert_eq!(read(r, "var/lib/pct-passthrough/105.json"), before);
    write(r, "etc/pve/pct-passthrough/105.toml", "");
    assert!(run(r, &["105", "pre-start"]).status.success());
    assert_eq!(read(r, "etc/pve/lxc/105.conf"), CONF);
}

#[test]
fn old_or_no_proxmox_falls_back_and_says_so() {
    for (version, says) in [
        (
            Some("6.1.5"),
            "pve-container 6.1.5 has no per-mount-point idmap, which came with 6.1.6",
        ),
        (
            None,
            "pve-container's version is unknown; per-mount-point idmap needs 6.1.6",
        ),
    ] {
        let t = host(version, POLICY);
        let r = t.path();
        let o = run(r, &["105", "pre-start"]);
        let log = common::joined(&String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{log}");
        assert!(log.contains(says), "{log}");
        let conf = read(r, "etc/pve/lxc/105.conf");
        assert!(conf.contains("lxc.idmap: u 1000 1000 1\n"), "{conf}");
        assert!(conf.contains("mp0: /tank/media,mp=/media\n"), "{conf}");
        assert!(
            read(r, "var/lib/lxc/105/config").contains(" lxc-shift-hook\n"),
            "the rootfs follows the map"
        );
    }
}

#[test]
fn a_bad_mount_table_is_refused_with_its_line() {
    let t = host(
        Some("6.1.10"),
        "[[mount]]\nmp = \"mp0\"\nidmap = [\"uid 1-10 1-10\", \"uid 5 50\"]\n",
    );
    let o = run(t.path(), &["105", "pre-start"]);
    let log = common::joined(&String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(1), "{log}");
    assert!(
        log.contains("[[mount]] mp0: invalid map entry 'u 50 5 1': host uid 5 is also mapped by entry 'u 1 1 10'"),
        "{log}"
    );
    assert_eq!(
        read(t.path(), "etc/pve/lxc/105.conf"),
        CONF,
        "nothing written"
    );
}

#[test]
fn doctor_suggests_the_mount_point_form() {
    let t = host(Some("6.1.10"), "idmap = [\"both 1000 1000\"]\n");
    let r = t.path();
    fs::create_dir_all(r.join("tank/media")).unwrap();
    std::os::unix::fs::chown(r.join("tank/media"), Some(1000), Some(1000)).unwrap();
    let o = run(r, &["doctor", "105"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("mp0 is a bind mount of /tank/media owned by 1000:1000"),
        "{out}"
    );
    assert!(
        out.contains("[[mount]] mp = \"mp0\" idmap = [\"both 1000 1000\"]"),
        "{out}"
    );
}
