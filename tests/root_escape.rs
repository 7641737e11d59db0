//! Issue 12 item 11: with `etc/subgid` a symlink to a file outside
//! `PCT_PASSTHROUGH_ROOT`, pre-start wrote `root:20:1` into that outside
//! file. Every host path is now resolved inside the root (symlinks as if
//! the root were `/`), so a link that points out of it can neither be read
//! nor written through. Needs root (the sample host has a device node).

#[path = "../benches/support/shapes.rs"]
mod shapes;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_pct-passthrough");

/// Every file under `dir` with its bytes, and every directory.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().to_path_buf();
            if m.is_dir() {
                out.insert(rel, None);
                walk(base, &p, out);
            } else {
                out.insert(rel, Some(fs::read(&p).unwrap()));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

fn run(root: &Path, args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(BIN)
        .args(args)
        .env("PCT_PASSTHROUGH_ROOT", root)
        .output()
        .expect("run pct-passthrough");
    (
        o.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// A link at `at` (under the root) to `to`, replacing what was there; the
/// outside target gets the root's old contents.
fn link_out(root: &Path, at: &str, outside: &Path, to: &str, absolute: bool) {
    let here = root.join(at);
    let there = outside.join(to);
    fs::create_dir_all(there.parent().unwrap()).unwrap();
    if here.exists() {
        shapes::copy_tree(&here, &there).unwrap();
        if here.is_dir() {
            fs::remove_dir_all(&here).unwrap();
        } else {
            fs::remove_file(&here).unwrap();
        }
    } else {
        fs::create_dir_all(&there).unwrap();
    }
    fs::create_dir_all(here.parent().unwrap()).unwrap();
    let target = if absolute {
        there
    } else {
        // Enough `..` to climb out of the root, then into `outside`.
        let depth = Path::new(at).components().count();
        let mut rel = PathBuf::new();
        for _ in 0..depth + 3 {
            rel.push("..");
        }
        rel.join(there.strip_prefix("/").unwrap())
    };
    symlink(&target, &here).unwrap();
}

#[test]
fn nothing_outside_the_root_is_read_or_written() {
    for (at, absolute) in [
        ("etc/subgid", true),
        ("etc/subgid", false),
        ("etc/subuid", true),
        ("etc", true),
        ("var/lib/pct-passthrough", true),
        ("var/lib/lxc/105/config", true),
        ("var/lib/lxc", false),
        ("run/lock", true),
        ("etc/pve/lxc/105.conf", true),
    ] {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("r");
        let outside = d.path().join("outside");
        shapes::typical(&root).expect("build the shape (needs root)");
        link_out(&root, at, &outside, at, absolute);
        let before = tree(&outside);
        let what = format!(
            "{at} -> outside ({})",
            if absolute { "absolute" } else { "relative" }
        );
        for args in [
            &["105", "pre-start"][..],
            &["plan", "105"],
            &["status", "105"],
            &["doctor", "105"],
            &["105", "post-stop"],
        ] {
            let (_code, out) = run(&root, args);
            assert!(!out.contains("panicked"), "{what}: {args:?}: {out}");
            assert_eq!(
                tree(&outside),
                before,
                "{what}: {args:?} changed the outside: {out}"
            );
            // Nothing the tool reads out there reaches its output.
            if at == "etc/pve/lxc/105.conf" {
                assert!(
                    !out.contains("zigbee2mqtt"),
                    "{what}: {args:?} read it: {out}"
                );
            }
        }
    }
}

/// The issue's reproduction: the start is refused with a clear error, and
/// the outside file keeps its bytes.
#[test]
fn a_subgid_link_out_of_the_root_refuses_the_start() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("r");
    let outside = d.path().join("outside");
    shapes::typical(&root).expect("build the shape (needs root)");
    link_out(&root, "etc/subgid", &outside, "subgid", true);
    let old = fs::read(outside.join("subgid")).unwrap();
    let (code, out) = run(&root, &["105", "pre-start"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("does not exist under PCT_PASSTHROUGH_ROOT"),
        "{out}"
    );
    assert_eq!(fs::read(outside.join("subgid")).unwrap(), old);
}

/// Links that stay inside the root still work, absolute ones read as if
/// the root were `/` (as Proxmox's `/etc/pve/lxc -> nodes/<node>/lxc`).
#[test]
fn links_inside_the_root_are_followed() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("r");
    shapes::typical(&root).expect("build the shape (needs root)");
    let nodes = root.join("etc/pve/nodes/pve1");
    fs::create_dir_all(&nodes).unwrap();
    fs::rename(root.join("etc/pve/lxc"), nodes.join("lxc")).unwrap();
    symlink("nodes/pve1/lxc", root.join("etc/pve/lxc")).unwrap();
    fs::create_dir_all(root.join("srv")).unwrap();
    fs::rename(root.join("etc/subgid"), root.join("srv/subgid")).unwrap();
    symlink("/srv/subgid", root.join("etc/subgid")).unwrap();
    let (code, out) = run(&root, &["105", "pre-start"]);
    assert_eq!(code, Some(0), "{out}");
    let subgid = fs::read_to_string(root.join("srv/subgid")).unwrap();
    assert!(subgid.ends_with("root:20:1\n"), "{subgid}");
    let conf = fs::read_to_string(nodes.join("lxc/105.conf")).unwrap();
    assert!(conf.contains("lxc.idmap"), "{conf}");
    assert!(fs::symlink_metadata(root.join("etc/subgid"))
        .unwrap()
        .file_type()
        .is_symlink());
}
