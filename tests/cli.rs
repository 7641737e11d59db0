//! The real binary against a temp root: usage errors, unknown phases,
//! dry runs that write nothing, and the PVE config lock.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rstest::rstest;

mod common;
use common::{stderr, stdout, TempRoot};

#[rstest]
#[case(&[], "missing arguments")]
#[case(&["105"], "missing <phase>")]
#[case(&["42", "pre-start"], "invalid vmid '42': expected a number from 100 to 999999999")]
#[case(&["1000000000", "pre-start"], "invalid vmid")]
#[case(&["0105", "pre-start"], "invalid vmid '0105': expected a number from 100 to 999999999 without a leading zero")]
#[case(&["plan", "0105"], "invalid vmid '0105'")]
#[case(&["--phase", "pre-start"], "missing <vmid>")]
#[case(&["--phase", "bogus", "105"], "unknown phase 'bogus'")]
#[case(&["105", "pre-start", "extra"], "too many arguments")]
fn usage_errors_exit_2_with_one_line(#[case] args: &[&str], #[case] expect: &str) {
    let root = TempRoot::new();
    let out = root.run(args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(expect), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(root.snapshot().is_empty(), "nothing written");
}

#[test]
fn help_and_version() {
    let root = TempRoot::new();
    let out = root.run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("pct-passthrough <vmid> <phase>"));
    let out = root.run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out).trim(),
        format!("pct-passthrough {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unknown_phase_in_hook_mode_is_logged_and_exits_0() {
    let root = TempRoot::new();
    let out = root.run(&["105", "pre-migrate"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("unknown phase 'pre-migrate'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_config_fails_pre_start_naming_the_file() {
    let root = TempRoot::new();
    let out = root.run(&["105", "pre-start"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("pct-passthrough 105 pre-start: error: ")
            && err.contains("etc/pve/lxc/105.conf: not found"),
        "{err}"
    );
}

#[rstest]
#[case("pre-start")]
#[case("post-start")]
#[case("pre-stop")]
#[case("post-stop")]
fn nothing_to_act_on_writes_nothing_in_every_phase(#[case] phase: &str) {
    let root = TempRoot::new();
    root.write(
        "/etc/pve/lxc/105.conf",
        common::fixture("debian-basic.conf"),
    );
    let before = root.snapshot();
    let out = root.run(&["105", phase]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(root.snapshot(), before, "no file written or touched");
    assert_eq!(stderr(&out), "", "silent when there is nothing to do");
}

#[test]
fn dry_run_writes_nothing() {
    let root = TempRoot::new();
    root.write(
        "/etc/pve/lxc/105.conf",
        common::fixture("snapshots-pending.conf"),
    );
    root.write("/etc/subuid", "root:100000:65536\n");
    root.write("/etc/subgid", "root:100000:65536\n");
    let before = root.snapshot();
    std::thread::sleep(Duration::from_millis(20));
    for phase in ["pre-start", "post-start", "pre-stop", "post-stop"] {
        let out = root.run(&["--phase", phase, "105", "--dry-run"]);
        assert_ne!(out.status.code(), Some(2), "{}", stderr(&out));
    }
    assert_eq!(root.snapshot(), before, "bytes and mtimes unchanged");
    assert!(
        !root.at("/run/lock/lxc").exists(),
        "a dry run takes no lock"
    );
}

#[test]
fn by_hand_run_waits_for_the_config_lock_then_reports_busy() {
    let root = TempRoot::new();
    root.write(
        "/etc/pve/lxc/105.conf",
        common::fixture("debian-basic.conf"),
    );
    let lock = root.at("/run/lock/lxc/pve-config-105.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    // Another process holds PVE's lock, as a running `pct set` would.
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "30"])
        .stdout(Stdio::null())
        .spawn()
        .expect("flock from util-linux");
    wait_until_locked(&lock);
    let start = Instant::now();
    let out = root.run(&["--phase", "pre-start", "105"]);
    let waited = start.elapsed();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("busy: can't lock file"), "{err}");
    assert!(err.contains("pve-config-105.lock"), "{err}");
    assert!(err.contains("held by pid"), "names the holder: {err}");
    assert!(waited >= Duration::from_secs(10), "waited {waited:?}");

    // Hook mode never takes it: PVE holds it for us.
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    wait_until_locked(&lock);
    let out = root.run(&["105", "pre-start"]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Waits until another process holds an flock on `path`.
fn wait_until_locked(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(f) = std::fs::File::open(path) {
            if matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the flock holder never took the lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_pre_start_that_changes_files_records_itself_as_the_last_run() {
    let root = TempRoot::new();
    root.write("/etc/pve/lxc/105.conf", "arch: amd64\nunprivileged: 1\nlxc.mount.entry: /dev/ttyUSB0 dev/ttyUSB0 none bind,optional,create=file\n");
    root.write("/etc/subuid", "root:100000:65536\n");
    root.write("/etc/subgid", "root:100000:65536\n");
    let out = root.run(&["105", "pre-start"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let state: serde_json::Value =
        serde_json::from_slice(&root.read("/var/lib/pct-passthrough/105.json")).unwrap();
    assert_eq!(state["last_run"]["phase"], "pre-start", "{state}");
    assert_eq!(state["last_run"]["outcome"], "changed");
    let msg = state["last_run"]["message"].as_str().unwrap();
    assert!(msg.contains("105.conf") && msg.contains("subgid"), "{msg}");
    // Nothing to change: nothing written, the record stays.
    let before = root.snapshot();
    let out = root.run(&["105", "pre-start"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(root.snapshot(), before);
}
