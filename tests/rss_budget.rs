//! Peak memory as a regression check (not a timing): the release binary's
//! peak RSS on the benchmark shapes stays under DESIGN.md's 8 MiB, read from
//! `wait4`'s rusage, which the machine's load does not change (the kernel
//! counts this test process's own peak too: an upper bound).
//! `scripts/test.sh` builds the release binary before the tests run.

#[path = "../benches/support/shapes.rs"]
mod shapes;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const LIMIT_KIB: i64 = 8 * 1024;

fn release_binary() -> PathBuf {
    let rel = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-gnu/release/pct-passthrough");
    assert!(
        rel.exists(),
        "{} is missing: run `cargo build --release` first (scripts/test.sh does)",
        rel.display()
    );
    rel
}

/// Runs `bin 105 pre-start` on `root`; returns (exit code, peak RSS in KiB).
// The child is reaped by `wait4`, which also gives its rusage.
#[allow(clippy::zombie_processes)]
fn run_pre_start(bin: &Path, root: &Path) -> (i32, i64) {
    let child = Command::new(bin)
        .args([shapes::VMID, "pre-start"])
        .env("PCT_PASSTHROUGH_ROOT", root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own unreaped child; `status` and `ru` are valid
    // for writes for the duration of the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    assert!(libc::WIFEXITED(status), "killed: {status}");
    (libc::WEXITSTATUS(status), ru.ru_maxrss)
}

#[test]
fn peak_rss_stays_under_8_mib_on_every_shape() {
    let bin = release_binary();
    for (name, build) in [
        (
            "nothing",
            shapes::nothing as fn(&Path) -> std::io::Result<()>,
        ),
        ("nothing, large config", shapes::nothing_large),
        ("typical", shapes::typical),
        ("typical as dev0", shapes::typical_devn),
        ("large", shapes::large),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        build(&root).expect("build the shape (needs root)");
        // First start, then the second on what it left.
        for start in ["first", "second"] {
            let (code, kib) = run_pre_start(&bin, &root);
            assert_eq!(code, 0, "{name}, {start} start");
            eprintln!("{name}, {start} start: peak RSS {kib} KiB");
            assert!(
                kib < LIMIT_KIB,
                "{name}, {start} start: peak RSS {kib} KiB; the target is under {LIMIT_KIB} KiB"
            );
        }
    }
}
