//! By hand, each phase takes Proxmox's config lock only if it does what
//! needs it: pre-start (and post-start) do; pre-stop (log only) and
//! post-stop (reads the config, writes our state file) do not, so they run
//! at once while a `pct set` or a start holds the lock.

mod common;

use std::fs::File;
use std::time::{Duration, Instant};

use common::{stderr, TempRoot};
use nix::fcntl::{Flock, FlockArg};

const CONF: &str = "arch: amd64\nhostname: z2m\nmemory: 512\nunprivileged: 1\nlxc.mount.entry: /dev/serial/by-id/usb-ITead_Sonoff_Zigbee_3.0-if00-port0 dev/ttyUSB0 none bind,optional,create=file\n";
const GENERATED: &str =
    "lxc.arch = amd64\nlxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n";

/// How long a phase that takes no lock may need at most on a busy machine;
/// well below the 10 s a locked phase waits.
const PROMPT: Duration = Duration::from_secs(5);

fn last_run_phase(root: &TempRoot) -> String {
    let state: serde_json::Value =
        serde_json::from_slice(&root.read("/var/lib/pct-passthrough/105.json")).unwrap();
    state["last_run"]["phase"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn stop_phases_by_hand_skip_the_config_lock_that_pre_start_waits_for() {
    let root = TempRoot::new();
    root.write("/etc/subuid", "root:100000:65536\n");
    root.write("/etc/subgid", "root:100000:65536\n");
    root.write("/etc/pve/lxc/105.conf", CONF);
    root.write("/var/lib/lxc/105/config", GENERATED);
    // A first start with the lock free records state for post-stop to update.
    let out = root.run(&["--phase", "pre-start", "105"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(last_run_phase(&root), "pre-start");
    let conf = root.read("/etc/pve/lxc/105.conf");

    // Hold PVE's lock as `pct set` would (flock on its own open file).
    let lock = File::create(root.at("/run/lock/lxc/pve-config-105.lock")).unwrap();
    let _held = Flock::lock(lock, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();

    for phase in ["post-stop", "pre-stop"] {
        let start = Instant::now();
        let out = root.run(&["--phase", phase, "105"]);
        let took = start.elapsed();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{phase}: {err}");
        assert!(!err.contains("busy"), "{phase}: {err}");
        assert!(
            took < PROMPT,
            "{phase} took {took:?}: it waited for the lock"
        );
    }
    assert_eq!(last_run_phase(&root), "post-stop", "post-stop did its work");
    assert_eq!(root.read("/etc/pve/lxc/105.conf"), conf, "config untouched");

    let start = Instant::now();
    let out = root.run(&["--phase", "pre-start", "105"]);
    let took = start.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("busy: can't lock file"), "{err}");
    assert!(err.contains("pve-config-105.lock"), "{err}");
    assert!(took >= Duration::from_secs(10), "waited {took:?}");
}

#[test]
fn help_says_which_phases_take_the_config_lock() {
    let root = TempRoot::new();
    let out = root.run(&["--help"]);
    let help = common::stdout(&out);
    assert!(
        help.contains("--phase pre-start and post-start take Proxmox's config lock"),
        "{help}"
    );
    assert!(help.contains("pre-stop and post-stop do not"), "{help}");
}
