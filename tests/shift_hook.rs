//! The shift hook as LXC runs it (`lxc-shift-hook <vmid> lxc pre-start`),
//! against a temp root: an inode whose chown happened before a crash gets
//! back what chown cleared (set-user-ID bit, capability) before the rest is
//! re-owned; one whose inode changed since is left alone; a failure exits 1
//! (LXC then stops the start) with the journal kept.

mod common;

use std::fs;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_pct-passthrough");
const DEFAULT: &str = r#"["u 0 100000 65536", "g 0 100000 65536"]"#;
const PUNCHED: &str =
    r#"["u 0 100000 1000", "u 1000 1000 1", "u 1001 101001 64535", "g 0 100000 65536"]"#;

fn cap_v3(root: u32) -> Vec<u8> {
    let mut v = 0x0300_0001u32.to_le_bytes().to_vec();
    v.extend(0x400u32.to_le_bytes());
    v.extend([0u8; 12]);
    v.extend(root.to_le_bytes());
    v
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings, a writable buffer of its length.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| {
        buf.truncate(r as usize);
        buf
    })
}

fn setup(ino_delta: u64) -> (tempfile::TempDir, u64) {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    fs::create_dir_all(r.join("etc/pve/lxc")).unwrap();
    fs::write(
        r.join("etc/pve/lxc/105.conf"),
        "arch: amd64\nunprivileged: 1\n",
    )
    .unwrap();
    let app = r.join("var/lib/lxc/105/rootfs/app");
    fs::create_dir_all(&app).unwrap();
    // Chowned before the crash: set-user-ID bit and capability gone.
    fs::write(app.join("cap"), "bin").unwrap();
    chown(app.join("cap"), Some(1000), Some(101_000)).unwrap();
    fs::set_permissions(app.join("cap"), fs::Permissions::from_mode(0o755)).unwrap();
    // Not reached yet.
    fs::write(app.join("later"), "x").unwrap();
    chown(app.join("later"), Some(101_000), Some(101_000)).unwrap();
    let ino = fs::metadata(app.join("cap")).unwrap().ino();
    let cap: Vec<String> = cap_v3(100_000).iter().map(u8::to_string).collect();
    fs::create_dir_all(r.join("var/lib/pct-passthrough")).unwrap();
    fs::write(
        r.join("var/lib/pct-passthrough/105.json"),
        format!(
            r#"{{"version": 1, "vmid": 105, "files_idmap": {DEFAULT}, "shift": {{"steps": [{{"from": {DEFAULT}, "to": {PUNCHED}}}], "inflight": {{"root": "/", "rel": [97,112,112,47,99,97,112], "ino": {}, "mode": 2541, "cap": [{}]}}}}}}"#,
            ino + ino_delta,
            cap.join(",")
        ),
    )
    .unwrap();
    (t, ino)
}

fn hook(root: &Path) -> Output {
    Command::new(BIN)
        .args(["lxc-shift-hook", "105", "lxc", "pre-start"])
        .env("PCT_PASSTHROUGH_ROOT", root)
        .env("LXC_NAME", "105")
        .output()
        .unwrap()
}

/// Runs the hook and requires it to succeed, showing its task log if not.
fn hook_succeeds(root: &Path) {
    let o = hook(root);
    assert!(
        o.status.success(),
        "{}",
        common::joined(&String::from_utf8_lossy(&o.stderr))
    );
}

#[test]
fn the_inode_in_flight_is_finished_first() {
    let (t, _) = setup(0);
    let app = t.path().join("var/lib/lxc/105/rootfs/app");
    hook_succeeds(t.path());
    let m = fs::metadata(app.join("cap")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o4755, "set-user-ID bit back");
    assert_eq!((m.uid(), m.gid()), (1000, 101_000));
    assert_eq!(
        xattr(&app.join("cap"), "security.capability"),
        Some(cap_v3(100_000))
    );
    assert_eq!(fs::metadata(app.join("later")).unwrap().uid(), 1000);
    // The journal and the files' map follow the container: the cluster file.
    let st: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(t.path().join("etc/pve/pct-passthrough/105.state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(st["shift"], serde_json::Value::Null, "{st}");
    assert_eq!(st["files_idmap"].to_string(), PUNCHED.replace(", ", ","));
}

#[test]
fn another_inode_at_that_path_is_left_alone() {
    let (t, _) = setup(1);
    let app = t.path().join("var/lib/lxc/105/rootfs/app");
    hook_succeeds(t.path());
    assert_eq!(
        fs::metadata(app.join("cap")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(xattr(&app.join("cap"), "security.capability"), None);
}

#[test]
fn a_failure_exits_1_and_keeps_the_journal() {
    let (t, _) = setup(0);
    fs::remove_dir_all(t.path().join("var/lib/lxc/105/rootfs")).unwrap();
    let o = hook(t.path());
    let err = common::joined(&String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the next start resumes where this one stopped"),
        "{err}"
    );
    let st = fs::read_to_string(t.path().join("var/lib/pct-passthrough/105.json")).unwrap();
    assert!(st.contains("\"steps\""), "{st}");
}
