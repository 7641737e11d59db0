//! End-to-end: the container's files follow its ID map (issue 15). On real
//! LXC through the bed: files keep their owner and group inside when a
//! passthrough is added and again when it is removed, and the service can
//! still write them; ACLs, a v3 file capability, set-ID bits, a hardlink,
//! a FIFO and a symlink pointing outside are re-owned right and nothing
//! outside the rootfs (nor a bind mount inside it) changes; a shift killed
//! in the middle is finished by the next start; a per-mount-point map
//! (an idmapped bind mount as Proxmox makes it) lets the container's uid
//! 1000 write a host directory owned by 1000 with the container's map
//! unchanged, and where pve-container lacks it the policy falls back to the
//! container-wide map and says so.

mod e2e;

use std::fs;
use std::os::unix::fs::{chown, lchown, symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::genconf::IdMap;
use e2e::*;

fn set_policy(vmid: u32, toml: Option<&str>) {
    let p = format!("/etc/pve/pct-passthrough/{vmid}.toml");
    match toml {
        Some(t) => fs::write(&p, t).unwrap(),
        None => {
            let _ = fs::remove_file(&p);
        }
    }
}

fn owner(p: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid())
}

/// `stat -c %u:%g` inside the container.
fn inside(ct: &Ct<'_>, paths: &str) -> String {
    let r = ct.exec(&format!("stat -c %u:%g {paths}"));
    assert!(r.success(), "{r}");
    r.stdout.trim().to_string()
}

fn state(ct: &Ct<'_>) -> serde_json::Value {
    ct.state().expect("state")
}

#[test]
fn files_keep_their_owners_when_a_punch_is_added_and_removed() {
    let bed = Bed::new();
    let vmid = 990_121;
    let mut ct = bed
        .container(vmid)
        .service_user()
        .file("/var/lib/app/data", "d\n", 0o660)
        .file("/var/spool/x", "x\n", 0o660)
        .hook(Hook::Binary)
        .create();
    let root = ct.rootfs();
    // As in the issue: data is 1000:20, x is 0:20 with mode 0660.
    chown(root.join("var/lib/app/data"), Some(101_000), Some(100_020)).unwrap();
    chown(root.join("var/spool/x"), Some(100_000), Some(100_020)).unwrap();
    let files = "/var/lib/app/data /var/spool/x";
    let write = "echo more >> /var/lib/app/data && echo more >> /var/spool/x";

    // Before: the default map; the service writes both.
    ct.start().expect_started();
    assert_eq!(inside(&ct, files), "1000:20\n0:20");
    let w = ct.exec_as("svc", write);
    assert!(w.success(), "{w}");
    ct.stop();

    // A GID 20 punch and a uid/gid 1000 passthrough: the same owners inside.
    set_policy(vmid, Some("idmap = [\"gid 20 20\", \"both 1000 1000\"]\n"));
    let rep = ct.start();
    rep.expect_started();
    let started = rep.started_config.clone().unwrap_or_default();
    assert!(started.contains("lxc.idmap = g 20 20 1\n"), "{started}");
    assert!(
        started.contains("lxc.hook.pre-start = ") && started.contains(" lxc-shift-hook\n"),
        "{started}"
    );
    assert!(
        rep.task_log
            .contains("the map moves container gid 20: host 100020 -> 20"),
        "{}",
        rep.task_log
    );
    assert!(
        rep.task_log
            .contains("re-owned for its new ID map: gid 100020 -> 20: 2"),
        "the task log says what was re-owned:\n{}",
        rep.task_log
    );
    assert_eq!(inside(&ct, files), "1000:20\n0:20");
    let w = ct.exec_as("svc", write);
    assert!(w.success(), "{w}");
    assert_eq!(owner(&root.join("var/lib/app/data")), (1000, 20));
    assert_eq!(owner(&root.join("var/spool/x")), (100_000, 20));
    assert_eq!(owner(&root.join("home/svc")), (1000, 1000));
    let st = state(&ct);
    assert_eq!(st["shift"], serde_json::Value::Null, "journal done: {st}");
    assert!(st["files_idmap"].to_string().contains("g 20 20 1"), "{st}");
    ct.stop();

    // The passthrough goes: the map and the files go back.
    set_policy(vmid, None);
    let rep = ct.start();
    rep.expect_started();
    assert!(
        rep.task_log
            .contains("the map moves container gid 20: host 20 -> 100020"),
        "{}",
        rep.task_log
    );
    assert_eq!(inside(&ct, files), "1000:20\n0:20");
    let w = ct.exec_as("svc", write);
    assert!(w.success(), "{w}");
    assert_eq!(owner(&root.join("var/lib/app/data")), (101_000, 100_020));
    assert_eq!(owner(&root.join("var/spool/x")), (100_000, 100_020));
    assert_eq!(owner(&root.join("home/svc")), (101_000, 101_000));
    ct.stop();

    // Same inputs again: no shift hook, nothing re-owned.
    let rep = ct.start();
    rep.expect_started();
    let started = rep.started_config.clone().unwrap_or_default();
    assert!(!started.contains("lxc-shift-hook"), "{started}");
    ct.stop();
}

fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

const NONE: u32 = u32::MAX;

fn acl_with(user: u32, group: u32) -> Vec<u8> {
    acl(&[
        (0x01, 6, NONE),
        (0x02, 6, user),
        (0x02, 4, 101_001),
        (0x04, 4, NONE),
        (0x08, 6, group),
        (0x10, 6, NONE),
        (0x20, 0, NONE),
    ])
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 1024];
    // SAFETY: NUL-terminated strings, a writable buffer of its length.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| {
        buf.truncate(r as usize);
        buf
    })
}

fn set_xattr(p: &Path, name: &str, v: &[u8]) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: NUL-terminated strings, a readable buffer of its length.
    let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(r, 0, "{}: {}", p.display(), std::io::Error::last_os_error());
}

/// A path, its owner, group, mode and access ACL.
type Seen = (String, u32, u32, u32, Option<Vec<u8>>);

/// Every path under `dir` with its owner, mode and access ACL.
fn tree(dir: &Path) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let m = fs::symlink_metadata(&d).unwrap();
        out.push((
            d.display().to_string(),
            m.uid(),
            m.gid(),
            m.mode(),
            xattr(&d, "system.posix_acl_access"),
        ));
        if m.is_dir() {
            for e in fs::read_dir(&d).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn acls_capabilities_links_and_special_files_are_reowned_and_nothing_outside() {
    let bed = Bed::new();
    let vmid = 990_122;
    // Outside the rootfs: a directory a symlink inside points to, and one
    // bind-mounted into it (same file system as the rootfs).
    let outside = tempfile::tempdir_in("/var/tmp").unwrap();
    let target = outside.path().join("target");
    let bound = outside.path().join("bound");
    for d in [&target, &bound] {
        fs::create_dir(d).unwrap();
        fs::write(d.join("f"), "o").unwrap();
        chown(d, Some(101_000), Some(101_000)).unwrap();
        chown(d.join("f"), Some(101_000), Some(101_000)).unwrap();
        set_xattr(
            &d.join("f"),
            "system.posix_acl_access",
            &acl_with(101_000, 101_000),
        );
    }
    let mut ct = bed
        .container(vmid)
        .service_user()
        .conf(&format!("mp0: {},mp=/mnt/host", bound.display()))
        .file("/srv/app/f", "f\n", 0o660)
        .policy("idmap = [\"both 1000 1000\"]\n")
        .hook(Hook::Binary)
        .create();
    let root = ct.rootfs();
    let app = root.join("srv/app");
    fs::copy("/bin/busybox", app.join("cap")).unwrap();
    fs::copy("/bin/busybox", app.join("suid")).unwrap();
    fs::hard_link(app.join("f"), app.join("hl")).unwrap();
    symlink(&target, app.join("out")).unwrap();
    nix::unistd::mkfifo(
        &app.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    for p in ["", "f", "cap", "suid", "fifo"] {
        chown(app.join(p), Some(101_000), Some(101_000)).unwrap();
    }
    lchown(app.join("out"), Some(101_000), Some(101_000)).unwrap();
    fs::set_permissions(app.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    set_xattr(
        &app.join("f"),
        "system.posix_acl_access",
        &acl_with(101_000, 101_000),
    );
    set_xattr(
        &app,
        "system.posix_acl_default",
        &acl_with(101_000, 101_000),
    );
    // A v3 capability for the container's root (host 100000).
    let setcap = Command::new("setcap")
        .args(["-n", "100000", "cap_net_bind_service+ep"])
        .arg(app.join("cap"))
        .output()
        .unwrap();
    assert!(setcap.status.success(), "{setcap:?}");
    let cap_before = xattr(&app.join("cap"), "security.capability").unwrap();
    assert_eq!(cap_before.len(), 24, "a v3 capability");
    let outside_before = tree(outside.path());

    let rep = ct.start();
    rep.expect_started();
    assert!(
        joined(&rep.task_log).contains("ACLs of 2 inodes"),
        "{}",
        rep.task_log
    );
    // Owners, the hardlink once (same inode), the symlink itself.
    for p in ["", "f", "hl", "cap", "suid", "fifo", "out"] {
        assert_eq!(owner(&app.join(p)), (1000, 1000), "{p}");
    }
    assert_eq!(
        inside(&ct, "/srv/app /srv/app/f /srv/app/out /srv/app/fifo"),
        "1000:1000\n1000:1000\n1000:1000\n1000:1000"
    );
    // ACL entries of the moved IDs moved; 101001 did not.
    assert_eq!(
        xattr(&app.join("f"), "system.posix_acl_access"),
        Some(acl_with(1000, 1000))
    );
    assert_eq!(
        xattr(&app, "system.posix_acl_default"),
        Some(acl_with(1000, 1000))
    );
    // chown clears set-ID bits and capabilities: both restored.
    assert_eq!(
        fs::metadata(app.join("suid")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        xattr(&app.join("cap"), "security.capability"),
        Some(cap_before)
    );
    // The service can use its file through the ACL.
    let w = ct.exec_as("svc", "echo more >> /srv/app/f");
    assert!(w.success(), "{w}");
    // Nothing outside the rootfs changed: not the symlink's target, not the
    // bind mount of a host directory inside it.
    assert_eq!(tree(outside.path()), outside_before);
    assert!(
        state(&ct)["last_shift"]["summary"]
            .as_str()
            .is_some_and(|s| !s.contains("/mnt/host")),
        "{}",
        state(&ct)
    );
    ct.stop();
    drop(ct);
}

#[test]
fn a_killed_shift_is_finished_by_the_next_start() {
    let bed = Bed::new();
    let vmid = 990_123;
    let mut ct = bed
        .container(vmid)
        .service_user()
        .policy("idmap = [\"both 1000 1000\"]\n")
        .hook(Hook::Binary)
        .create();
    let data = ct.rootfs().join("data");
    let mut all = vec![data.clone()];
    for d in 0..40 {
        let dir = data.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        all.push(dir.clone());
        for f in 0..500 {
            let p = dir.join(format!("f{f}"));
            fs::write(&p, "").unwrap();
            all.push(p);
        }
    }
    for p in &all {
        chown(p, Some(101_000), Some(101_000)).unwrap();
    }
    // pre-start by hand records the journal; then the hook, as LXC would
    // run it, is killed once it has started.
    let r = bed.cli(&["--phase", "pre-start", &vmid.to_string()]);
    assert!(r.success(), "{r}");
    assert_eq!(
        state(&ct)["shift"]["steps"].as_array().map(Vec::len),
        Some(1)
    );
    let mut hook = Command::new(Bed::hook_binary())
        .args(["lxc-shift-hook", &vmid.to_string(), "lxc", "pre-start"])
        .env("LXC_NAME", vmid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while owner(&data).0 != 1000 {
        assert!(
            Instant::now() < deadline,
            "the hook never started re-owning"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    hook.kill().unwrap();
    hook.wait().unwrap();
    let moved = all.iter().filter(|p| owner(p).0 == 1000).count();
    assert!(
        moved >= 1 && moved < all.len(),
        "killed mid-shift: {moved} of {}",
        all.len()
    );
    assert_eq!(
        state(&ct)["shift"]["steps"].as_array().map(Vec::len),
        Some(1),
        "journal kept"
    );

    // The next start finishes it.
    let rep = ct.start();
    rep.expect_started();
    let started = rep.started_config.clone().unwrap_or_default();
    assert!(started.contains("lxc-shift-hook"), "{started}");
    let left: Vec<_> = all.iter().filter(|p| owner(p) != (1000, 1000)).collect();
    assert!(
        left.is_empty(),
        "{} not re-owned, first {:?}",
        left.len(),
        left.first()
    );
    assert_eq!(
        inside(&ct, "/data/d0/f0 /data/d39/f499"),
        "1000:1000\n1000:1000"
    );
    let st = state(&ct);
    assert_eq!(st["shift"], serde_json::Value::Null, "{st}");
    let at = st["last_shift"]["at"].clone();
    ct.stop();

    // A second start changes nothing.
    let rep = ct.start();
    rep.expect_started();
    assert!(!rep
        .started_config
        .unwrap_or_default()
        .contains("lxc-shift-hook"));
    assert_eq!(state(&ct)["last_shift"]["at"], at);
    ct.stop();
}

#[test]
fn bed_resolves_mount_maps_as_proxmox_does() {
    let m = |kind, ct, host, len| IdMap {
        kind,
        ct,
        host,
        len,
    };
    let ct = [m('u', 0, 100_000, 65_536), m('g', 0, 100_000, 65_536)];
    let got = mounts::resolve(
        &ct,
        &Some(vec![m('u', 1000, 1000, 1), m('g', 1000, 1000, 1)]),
    );
    assert_eq!(
        got,
        [
            ('u', 100_000, 100_000, 1000),
            ('u', 1000, 101_000, 1),
            ('u', 101_001, 101_001, 64_535),
            ('g', 100_000, 100_000, 1000),
            ('g', 1000, 101_000, 1),
            ('g', 101_001, 101_001, 64_535),
        ]
    );
    assert_eq!(
        mounts::resolve(&ct, &None),
        [('u', 0, 100_000, 65_536), ('g', 0, 100_000, 65_536)]
    );
}

#[test]
fn a_per_mount_point_map_serves_a_host_directory_without_a_map_change() {
    let bed = Bed::new();
    let vmid = 990_124;
    let host = tempfile::tempdir_in("/var/tmp").unwrap();
    let dir = host.path().join("media");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("existing"), "e\n").unwrap();
    chown(&dir, Some(1000), Some(1000)).unwrap();
    chown(dir.join("existing"), Some(1000), Some(1000)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(dir.join("existing"), fs::Permissions::from_mode(0o644)).unwrap();
    let mp = |opts: &str| format!("{},mp=/data{opts}", dir.display());
    let mut ct = bed
        .container(vmid)
        .service_user()
        .conf(&format!(
            "mp0: {}",
            mp(",idmap=u:1000:1000:1;g:1000:1000:1")
        ))
        .hook(Hook::Binary)
        .create();
    let write = "echo more >> /data/existing && touch /data/new";

    // Proxmox >= 6.1.6's form, as the tool writes it there.
    let rep = ct.start();
    rep.expect_started();
    let started = rep.started_config.clone().unwrap_or_default();
    assert!(
        started.contains("lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n"),
        "{started}"
    );
    assert!(!started.contains("lxc-shift-hook"), "{started}");
    let pid = ct.init_pid().unwrap();
    let uid_map = fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", "100000", "65536"],
        "the container's map is unchanged"
    );
    assert_eq!(inside(&ct, "/data/existing"), "1000:1000");
    let w = ct.exec_as("svc", write);
    assert!(w.success(), "{w}");
    assert_eq!(
        owner(&dir.join("new")),
        (1000, 1000),
        "on disk: the host's 1000"
    );
    assert_eq!(
        owner(&ct.rootfs().join("home/svc")),
        (101_000, 101_000),
        "rootfs untouched"
    );
    ct.stop();

    // Without the mount's map the same bind is nobody's: EACCES.
    fs::remove_file(dir.join("new")).unwrap();
    let conf = ct
        .pve_conf()
        .replace(&mp(",idmap=u:1000:1000:1;g:1000:1000:1"), &mp(""));
    ct.set_pve_conf(&conf);
    ct.start().expect_started();
    let w = ct.exec_as("svc", write);
    assert!(!w.success(), "{w}");
    assert!(w.stderr.contains("Permission denied"), "{w}");
    ct.stop();

    // The policy's [[mount]] on this host, which has no pve-container: the
    // container-wide passthrough instead, said so, and the rootfs follows.
    set_policy(
        vmid,
        Some("[[mount]]\nmp = \"mp0\"\nidmap = [\"both 1000 1000\"]\n"),
    );
    let rep = ct.start();
    rep.expect_started();
    assert!(
        rep.task_log
            .contains("pve-container's version is unknown; per-mount-point idmap needs 6.1.6"),
        "{}",
        rep.task_log
    );
    assert!(!ct.pve_conf().contains("idmap=u:"), "{}", ct.pve_conf());
    let w = ct.exec_as("svc", write);
    assert!(w.success(), "{w}");
    assert_eq!(owner(&ct.rootfs().join("home/svc")), (1000, 1000));
    ct.stop();
}
