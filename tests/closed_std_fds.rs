//! The binary skips the Rust runtime's start-up (`src/main.rs`), so it puts
//! a closed stdin, stdout or stderr on `/dev/null` itself: otherwise the
//! files a start opens would get fds 0 to 2, and a task-log line could land
//! in one. Needs root (the sample host has a device node).

#[path = "../benches/support/shapes.rs"]
mod shapes;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pct-passthrough");

/// A start with fds 0 to 2 closed, caught while it waits for the state's
/// lock (held here): its fds 0 to 2 are `/dev/null`, and once the lock is
/// free it ends as a start with them open does.
#[test]
fn a_start_with_closed_std_fds_has_them_on_dev_null() {
    let d = tempfile::tempdir().expect("temp dir");
    let root = d.path().join("r");
    shapes::typical(&root).expect("build the shape (needs root)");
    let lock_dir = root.join("run/lock/pct-passthrough");
    std::fs::create_dir_all(&lock_dir).unwrap();
    let lock = std::fs::File::create(lock_dir.join("105.lock")).unwrap();
    lock.lock().unwrap();

    let mut cmd = Command::new(BIN);
    cmd.args(["105", "pre-start"])
        .env("PCT_PASSTHROUGH_ROOT", &root);
    // SAFETY: only async-signal-safe close(2) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            for fd in 0..3 {
                libc::close(fd);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("run pct-passthrough");
    let fd_dir = format!("/proc/{}/fd", child.id());
    // It holds the lock file open once it waits for the lock.
    let deadline = Instant::now() + Duration::from_secs(4);
    let targets = loop {
        let targets: Vec<String> = std::fs::read_dir(&fd_dir)
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| std::fs::read_link(e.path()).ok())
                    .map(|t| t.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        if targets.iter().any(|t| t.ends_with("/105.lock")) || Instant::now() > deadline {
            break targets;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let std_fds: Vec<String> = (0..3)
        .map(|fd| {
            std::fs::read_link(format!("{fd_dir}/{fd}"))
                .map_or_else(|e| format!("closed ({e})"), |t| t.display().to_string())
        })
        .collect();
    drop(lock);
    let status = child.wait().unwrap();
    assert!(
        targets.iter().any(|t| t.ends_with("/105.lock")),
        "never saw the start wait for its lock: {targets:?}"
    );
    assert_eq!(std_fds, ["/dev/null"; 3], "fds 0 to 2 while it waited");
    assert!(status.success(), "{status}");
    let conf = std::fs::read_to_string(root.join("etc/pve/lxc/105.conf")).unwrap();
    assert!(conf.contains("lxc.idmap: g 20 20 1"), "{conf}");
}
