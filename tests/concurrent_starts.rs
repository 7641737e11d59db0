//! Many first starts at once on one host (a host booting with `onboot`
//! containers): 32 pre-starts released together against one temp root, each
//! container with its own stick (`shapes::many`: GID 20 shared, own GIDs,
//! an already covered GID, GID 27 shared, some policy uids). Every start
//! succeeds, configures its own container, and `/etc/subuid` and
//! `/etc/subgid` end well-formed with every needed range exactly once. The
//! starts race for real: some wait for the subid lock. Needs root (device
//! nodes). `at_once` reaps with `wait4(-1)`: no other test here starts a
//! process.

#[path = "../benches/support/launch.rs"]
mod launch;
#[path = "../benches/support/shapes.rs"]
mod shapes;

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_pct-passthrough");
const STARTS: usize = 32;

#[test]
fn many_first_starts_at_once_keep_every_subid_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let cts = shapes::many(&root, STARTS).expect("build the shape (needs root)");
    let argvs: Vec<Vec<Vec<u8>>> = cts
        .iter()
        .map(|ct| launch::pre_start_argv(Path::new(BIN), ct.vmid))
        .collect();
    let root_b = root.as_os_str().as_bytes();
    let env: [(&str, &[u8]); 4] = [
        ("PATH", b"/sbin:/bin:/usr/sbin:/usr/bin"),
        ("LC_ALL", b"C"),
        ("PCT_PASSTHROUGH_ROOT", root_b),
        ("PCT_PASSTHROUGH_LOCK_TIMING", b"1"),
    ];
    let ended = launch::at_once(&argvs, &env).unwrap();
    for e in &ended {
        assert_eq!(e.code, 0, "{}: {}", cts[e.index].vmid, e.stderr);
        // DESIGN.md's peak RSS, for this debug build too (the release
        // build uses less): the holder reads every waiting start's want.
        assert!(
            e.maxrss_bytes < 8 << 20,
            "{}: peak RSS {} bytes",
            cts[e.index].vmid,
            e.maxrss_bytes
        );
    }
    for ct in &cts {
        let conf =
            std::fs::read_to_string(root.join(format!("etc/pve/lxc/{}.conf", ct.vmid))).unwrap();
        let want = format!("g {0} {0} 1", ct.gid);
        assert!(
            conf.lines()
                .any(|l| l.starts_with("lxc.idmap") && l.contains(&want)),
            "{}: {want} not mapped:\n{conf}",
            ct.vmid
        );
    }
    shapes::check_many_subids(&root, &cts).unwrap();
    // They raced: some start found the tool's subid lock held by another.
    let waited = ended
        .iter()
        .flat_map(|e| launch::lock_waits(&e.stderr))
        .filter(|(name, s)| name == "subid.lock" && *s >= 0.005)
        .count();
    assert!(
        waited > 0,
        "no start waited for subid.lock: they did not race"
    );
    // Nothing left behind: no lock, temp or want file.
    let etc: Vec<String> = std::fs::read_dir(root.join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with("sub")
                && !["subuid", "subgid", "subuid-", "subgid-"].contains(&n.as_str())
        })
        .collect();
    assert_eq!(etc, Vec::<String>::new());
    let wants = root.join("run/lock/pct-passthrough/subid-wants");
    if wants.exists() {
        assert_eq!(std::fs::read_dir(&wants).unwrap().count(), 0);
    }
}

/// The check itself fails on what a lost update or a torn write leaves.
#[test]
fn the_subid_check_finds_lost_and_doubled_lines() {
    let before = "root:100000:65536\n";
    let ok = "root:100000:65536\nroot:20:1\nroot:27:1\n";
    shapes::check_subid_text("f", ok, before, &[20, 27]).unwrap();
    for (bad, why) in [
        ("root:100000:65536\nroot:20:1\n", "27 is given to root by 0"),
        (
            "root:100000:65536\nroot:20:1\nroot:27:1\nroot:20:1\n",
            "twice",
        ),
        (
            "root:100000:65536\nroot:20:1\nroot:20:2\nroot:27:1\n",
            "20 is given to root by 2",
        ),
        ("root:100000:65536\nroot:20:1\nroot:27", "no newline"),
        (
            "root:100000:65536\nroot:20:1\nroot:27:1\nroot:2\n",
            "not name:start:count",
        ),
        ("root:20:1\nroot:27:1\n", "not kept"),
    ] {
        let e = shapes::check_subid_text("f", bad, before, &[20, 27]).unwrap_err();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}
