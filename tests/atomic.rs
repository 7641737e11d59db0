//! The atomic-replace helper: owner and mode kept, symlinked directories
//! written through, and a crash before the rename leaves the old file.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use pct_passthrough::paths::Paths;
use pct_passthrough::sys::fs::{replace_file, Durability, CRASH_BEFORE_RENAME_ENV};

const CHILD_ENV: &str = "ATOMIC_TEST_CHILD_TARGET";

#[test]
fn keeps_owner_and_mode() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("subgid");
    fs::write(&p, "root:100000:65536\n").unwrap();
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    replace_file(
        &Paths::with_root(d.path()),
        &p,
        b"root:100000:65536\nroot:20:1\n",
        0o644,
        Durability::Flush,
    )
    .unwrap();
    let m = fs::metadata(&p).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 5678, 0o600));
    assert_eq!(fs::read(&p).unwrap(), b"root:100000:65536\nroot:20:1\n");
}

#[test]
fn writes_in_the_real_directory_behind_a_symlink() {
    // /etc/pve/lxc -> /etc/pve/nodes/<node>/lxc
    let d = tempfile::tempdir().unwrap();
    let real = d.path().join("etc/pve/nodes/pve1/lxc");
    fs::create_dir_all(&real).unwrap();
    symlink("nodes/pve1/lxc", d.path().join("etc/pve/lxc")).unwrap();
    fs::write(real.join("105.conf"), "arch: amd64\n").unwrap();
    fs::set_permissions(real.join("105.conf"), fs::Permissions::from_mode(0o640)).unwrap();
    replace_file(
        &Paths::with_root(d.path()),
        &d.path().join("etc/pve/lxc/105.conf"),
        b"arch: arm64\n",
        0o640,
        Durability::Flush,
    )
    .unwrap();
    assert_eq!(fs::read(real.join("105.conf")).unwrap(), b"arch: arm64\n");
    let names: Vec<_> = fs::read_dir(&real)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec!["105.conf"],
        "the temp file lived next to the target"
    );
    assert!(fs::symlink_metadata(d.path().join("etc/pve/lxc"))
        .unwrap()
        .file_type()
        .is_symlink());
}

/// Not a test of its own: the child process of the test below. It replaces
/// the file named by CHILD_ENV with the crash hook armed.
#[test]
#[ignore = "child process of a_crash_before_the_rename_leaves_the_old_file"]
fn crash_child() {
    let target =
        std::env::var_os(CHILD_ENV).expect("run by a_crash_before_the_rename_leaves_the_old_file");
    let _ = replace_file(
        &Paths::with_root("/"),
        Path::new(&target),
        b"NEW CONTENTS\n",
        0o644,
        Durability::Flush,
    );
    unreachable!("the crash hook kills the process before the rename");
}

#[test]
fn a_crash_before_the_rename_leaves_the_old_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("subuid");
    fs::write(&p, "root:100000:65536\n").unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD_ENV, &p)
        .env(CRASH_BEFORE_RENAME_ENV, "1")
        .status()
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "the child died by SIGKILL: {status:?}"
    );
    assert_eq!(
        fs::read(&p).unwrap(),
        b"root:100000:65536\n",
        "old file intact"
    );
    let temps: Vec<_> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("subuid.tmp."))
        .collect();
    assert_eq!(
        temps.len(),
        1,
        "the complete temp file is what the crash left"
    );
    assert_eq!(
        fs::read(d.path().join(&temps[0])).unwrap(),
        b"NEW CONTENTS\n"
    );
}
