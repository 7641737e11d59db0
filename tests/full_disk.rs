//! Issue 12 item 8: a full disk left temp files (`/etc/subgid.<pid>`, shadow's
//! link-lock temp) behind. Here each directory pre-start writes to lives, in
//! turn, on a small tmpfs filled to the last page, so that its writes fail
//! for real (ENOSPC); after each failed pre-start that filesystem's listing
//! must be exactly what it was, and no temp or lock file exists anywhere
//! under the root. Needs root (mount, mknod).

mod common;

#[path = "../benches/support/shapes.rs"]
mod shapes;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

const BIN: &str = env!("CARGO_BIN_EXE_pct-passthrough");

/// A tmpfs mounted for the test, detached on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::MS_NOSUID,
            Some("size=256k,mode=0755"),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e} (needs root)", at.display()));
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
    }
}

/// Fills the filesystem of `dir` until a write fails with ENOSPC.
fn fill(dir: &Path) {
    let mut f = fs::File::create(dir.join(".filler")).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    // The last partial page too.
    while f.write(&[0u8]).is_ok_and(|n| n == 1) {}
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}

/// Every entry under `dir`: relative path -> (kind, size, inode).
fn listing(dir: &Path) -> BTreeMap<PathBuf, (String, u64, u64)> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (String, u64, u64)>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            let kind = format!("{:?}", m.file_type());
            out.insert(
                e.path().strip_prefix(base).unwrap().to_path_buf(),
                (kind, m.len(), m.ino()),
            );
            if m.is_dir() {
                walk(base, &e.path(), out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// Names a failed write must never leave: `<name>.tmp.<pid>`, shadow's
/// `<file>.<pid>` and `<file>.lock`.
fn leftovers(root: &Path) -> Vec<PathBuf> {
    listing(root)
        .into_keys()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.contains(".tmp.")
                || n == "subgid.lock"
                || n == "subuid.lock"
                || ["subgid", "subuid"]
                    .iter()
                    .any(|b| pct_passthrough::sys::fs::is_pid_suffixed(p.file_name().unwrap(), b))
        })
        .collect()
}

/// The typical first start (GID 20 for a serial stick: a subgid append, the
/// container config, this start's LXC config, the state), with the files a
/// host already has: shadow's lock file, the tool's lock files and state
/// directory (made by a first start or the package).
fn template(root: &Path) {
    shapes::typical(root).expect("build the shape (needs root)");
    for (abs, text) in [
        ("etc/.pwd.lock", ""),
        ("run/lock/pct-passthrough/subid.lock", ""),
        ("run/lock/pct-passthrough/105.lock", ""),
    ] {
        let p = root.join(abs);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    fs::create_dir_all(root.join("var/lib/pct-passthrough")).unwrap();
}

/// Moves `rel` (a directory under `root`) onto a fresh full tmpfs.
fn onto_full_tmpfs(root: &Path, rel: &str, side: &Path) -> Tmpfs {
    let dir = root.join(rel);
    let saved = side.join("saved");
    if dir.exists() {
        shapes::copy_tree(&dir, &saved).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
    let t = Tmpfs::mount(&dir);
    if saved.exists() {
        for e in fs::read_dir(&saved).unwrap() {
            let e = e.unwrap();
            shapes::copy_tree(&e.path(), &dir.join(e.file_name())).unwrap();
        }
    }
    fill(&dir);
    t
}

fn pre_start(root: &Path) -> (Option<i32>, String) {
    let o = Command::new(BIN)
        .args(["105", "pre-start"])
        .env("PCT_PASSTHROUGH_ROOT", root)
        .output()
        .expect("run pct-passthrough");
    // Each task-log message on one line (its indented parts joined).
    let joined = common::joined(&String::from_utf8_lossy(&o.stderr));
    (o.status.code(), joined)
}

#[test]
fn a_failed_write_on_a_full_filesystem_leaves_nothing_behind() {
    // Where the full filesystem is, and which file's write it breaks.
    for (full, breaks) in [
        // The state that owns the lines (on /etc/pve, it follows the
        // container) is written first.
        ("", "105.state.json"),
        ("etc/pve/pct-passthrough", "105.state.json"),
        ("etc", "105.state.json"),
        ("etc/pve", "105.state.json"),
        ("etc/pve/lxc", "105.conf"),
        ("var/lib/lxc/105", "config"),
        ("var/lib/pct-passthrough", "105.json"),
    ] {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("r");
        let side = d.path().join("side");
        fs::create_dir_all(&root).unwrap();
        let _t = if full.is_empty() {
            let template_dir = side.join("template");
            template(&template_dir);
            let t = Tmpfs::mount(&root);
            for e in fs::read_dir(&template_dir).unwrap() {
                let e = e.unwrap();
                shapes::copy_tree(&e.path(), &root.join(e.file_name())).unwrap();
            }
            fill(&root);
            t
        } else {
            template(&root);
            onto_full_tmpfs(&root, full, &side)
        };
        let full_dir = root.join(full);
        let before = listing(&full_dir);
        for run in 1..=3 {
            let (code, err) = pre_start(&root);
            let what = format!("full {}, run {run}", full_dir.display());
            assert_eq!(listing(&full_dir), before, "{what}: {err}");
            assert_eq!(leftovers(&root), Vec::<PathBuf>::new(), "{what}: {err}");
            if full == "var/lib/pct-passthrough" && run > 1 {
                // Only the node-local bookkeeping fails; what the tool owns
                // is on /etc/pve, so later starts go on.
                continue;
            }
            // The state is written before the lines it owns: a failed state
            // write refuses every start, never a later one that takes the
            // tool's lines for a person's.
            assert_eq!(code, Some(1), "{what}: the start is refused: {err}");
            assert!(err.contains("No space left on device"), "{what}: {err}");
            assert!(err.contains(breaks), "{what}: names the file: {err}");
        }
        // Every tool line in the config is owned by the recorded state.
        let conf = fs::read_to_string(root.join("etc/pve/lxc/105.conf")).unwrap();
        let owned = fs::read_to_string(root.join("etc/pve/pct-passthrough/105.state.json"))
            .unwrap_or_default();
        for line in conf.lines().filter(|l| l.starts_with("lxc.idmap")) {
            assert!(
                owned.contains(line),
                "full {full}: '{line}' not owned: {owned}"
            );
        }
    }
}
