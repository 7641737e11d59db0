//! Issue 12 item 7: a FIFO anywhere in the read path hung every command,
//! post-stop included. Each command runs on a temp root with a FIFO in
//! each place it may read, under a timeout: a hang fails the test. Needs
//! root (the sample host has a device node).

mod common;

#[path = "../benches/support/shapes.rs"]
mod shapes;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pct-passthrough");

/// Far above a run's cost (milliseconds), far below "hung".
const TIMEOUT: Duration = Duration::from_secs(15);

const FIFO_MSG: &str = "a FIFO (named pipe), not a regular file; replace it with a regular file";

/// Every host file a command may read, as `/etc/...` under the root.
const PLACES: &[&str] = &[
    "/etc/subgid",
    "/etc/subuid",
    "/etc/pve/lxc/105.conf",
    "/etc/pve/pct-passthrough/105.toml",
    "/var/lib/pct-passthrough/105.json",
    "/var/lib/lxc/105/config",
    "/etc/nsswitch.conf",
    "/etc/pve/storage.cfg",
    "/etc/.pwd.lock",
];

const COMMANDS: &[&[&str]] = &[
    &["105", "pre-start"],
    &["plan", "105"],
    &["status", "105"],
    &["doctor", "105"],
    &["105", "post-stop"],
];

struct Ran {
    code: Option<i32>,
    out: String,
}

/// Runs the binary; panics if it is still running after `TIMEOUT`.
fn run_bounded(root: &Path, args: &[&str], what: &str) -> Ran {
    let mut child = Command::new(BIN)
        .args(args)
        .env("PCT_PASSTHROUGH_ROOT", root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pct-passthrough");
    let start = Instant::now();
    loop {
        if let Some(_status) = child.try_wait().expect("wait") {
            let o = child.wait_with_output().expect("output");
            return Ran {
                code: o.status.code(),
                // Each task-log message on one line (its indented parts
                // joined), so a test can look for a whole message.
                out: common::joined(&format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )),
            };
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: {args:?} hung for {TIMEOUT:?} (killed)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn typical_root() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().expect("temp dir");
    let root = d.path().join("r");
    shapes::typical(&root).expect("build the shape (needs root)");
    // A policy and a state, so that both are read.
    std::fs::create_dir_all(root.join("etc/pve/pct-passthrough")).unwrap();
    std::fs::write(
        root.join("etc/pve/pct-passthrough/105.toml"),
        "enabled = true\n",
    )
    .unwrap();
    (d, root)
}

fn put_fifo(root: &Path, abs: &str) -> PathBuf {
    let p = root.join(abs.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&p);
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    p
}

#[test]
fn no_command_hangs_on_a_fifo_and_post_stop_still_exits_0() {
    // What each command answers on this root without a FIFO (doctor fails
    // here for reasons of its own: no uidmap package, no snippet).
    let baseline: Vec<Option<i32>> = {
        let (_d, root) = typical_root();
        let first = run_bounded(&root, &["105", "pre-start"], "setup");
        assert_eq!(first.code, Some(0), "setup: {}", first.out);
        COMMANDS
            .iter()
            .map(|args| run_bounded(&root, args, "baseline").code)
            .collect()
    };
    for place in PLACES {
        let (_d, root) = typical_root();
        // A first start, so that the state and the tool's lines exist.
        let first = run_bounded(&root, &["105", "pre-start"], "setup");
        assert_eq!(first.code, Some(0), "setup: {}", first.out);
        let fifo = put_fifo(&root, place);
        for (args, base) in COMMANDS.iter().zip(&baseline) {
            let what = format!("FIFO at {place}");
            let r = run_bounded(&root, args, &what);
            assert!(!r.out.contains("panicked"), "{what}: {args:?}: {}", r.out);
            if args[1] == "post-stop" {
                assert_eq!(
                    r.code,
                    Some(0),
                    "{what}: post-stop always exits 0: {}",
                    r.out
                );
            }
            // A command the FIFO made fail says why.
            if r.code != *base {
                assert!(
                    r.out.contains(FIFO_MSG) && r.out.contains(&fifo.display().to_string()),
                    "{what}: {args:?} exit {:?} (without the FIFO {base:?}) without naming it: {}",
                    r.code,
                    r.out
                );
            }
            assert!(
                std::fs::symlink_metadata(&fifo)
                    .map(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()))
                    .unwrap_or(false),
                "{what}: {args:?} replaced the FIFO"
            );
        }
    }
}

/// The files pre-start cannot do without: a FIFO there refuses the start
/// with the message, naming the file.
#[test]
fn pre_start_refuses_a_fifo_it_needs_naming_it() {
    for place in [
        "/etc/subgid",
        "/etc/subuid",
        "/etc/pve/lxc/105.conf",
        "/etc/pve/pct-passthrough/105.toml",
        "/var/lib/lxc/105/config",
        "/etc/.pwd.lock",
    ] {
        let (_d, root) = typical_root();
        let fifo = put_fifo(&root, place);
        let r = run_bounded(&root, &["105", "pre-start"], place);
        assert_eq!(r.code, Some(1), "{place}: {}", r.out);
        assert!(
            r.out.contains(&format!("{}: {FIFO_MSG}", fifo.display())),
            "{place}: {}",
            r.out
        );
    }
}
