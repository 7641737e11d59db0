//! Shared helpers for integration tests: a temp host root and the real binary.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod joined;

pub const BIN: &str = env!("CARGO_BIN_EXE_pct-passthrough");

/// A temporary `PCT_PASSTHROUGH_ROOT`.
pub struct TempRoot {
    pub dir: tempfile::TempDir,
}

impl TempRoot {
    pub fn new() -> TempRoot {
        TempRoot {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `abs` (like `/etc/subuid`) under this root.
    pub fn at(&self, abs: &str) -> PathBuf {
        self.dir.path().join(abs.trim_start_matches('/'))
    }

    pub fn write(&self, abs: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.at(abs);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, contents).unwrap();
        p
    }

    pub fn read(&self, abs: &str) -> Vec<u8> {
        fs::read(self.at(abs)).unwrap()
    }

    /// Runs the binary with this root.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("PCT_PASSTHROUGH_ROOT", self.path())
            .output()
            .expect("run pct-passthrough")
    }

    /// Every regular file under the root with its bytes and mtime.
    pub fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>, std::time::SystemTime)> {
        let mut out = Vec::new();
        walk(self.path(), &mut out);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>, std::time::SystemTime)>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = fs::symlink_metadata(e.path()).unwrap();
        if m.is_dir() {
            walk(&e.path(), out);
        } else if m.is_file() {
            out.push((e.path(), fs::read(e.path()).unwrap(), m.modified().unwrap()));
        }
    }
}

/// stderr with each task-log message on one line (see [`joined`]).
pub fn stderr(o: &Output) -> String {
    joined(&String::from_utf8_lossy(&o.stderr))
}

/// stderr exactly as written.
pub fn stderr_raw(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
pub use joined::joined;

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The repository's copy of the shared PVE config fixtures.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pve-conf")
}

pub fn fixture(name: &str) -> String {
    fs::read_to_string(fixture_dir().join(name)).unwrap()
}

/// A device node `major:minor` (char, or block), `root:<gid>` 0660, as udev
/// makes a stick's node (needs root, as every test run here has).
pub fn device_node(path: &Path, block: bool, major: u64, minor: u64, gid: u32) {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let kind = if block {
        SFlag::S_IFBLK
    } else {
        SFlag::S_IFCHR
    };
    mknod(
        path,
        kind,
        Mode::from_bits_truncate(0o660),
        makedev(major, minor),
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e} (the tests need root)", path.display()));
    std::os::unix::fs::chown(path, Some(0), Some(gid)).unwrap();
}
