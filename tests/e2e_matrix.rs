//! Issue 14's matrix on real LXC, started as Proxmox starts containers:
//! service patterns {gosu-like (groups kept), su-exec `uid:gid` (groups
//! dropped), s6-setuidgid-like (uid and gid only, in no group yet),
//! numeric `lxc.init.uid`} × device forms {bind of a by-id link or node,
//! `devN`, optional policy `[[device]]`} × devices {serial stick, host GID
//! 20; render node, host GID 993, `render` 107 inside}.
//!
//! One container per pattern carries all six cells, restarted rather than
//! recreated. Per cell: the boot on which the service first opens the
//! device (1 where the facts are known ahead, else 2), the verdict recorded
//! at each boot, host nodes never changed, unplugging the optional devices
//! (binds and policy devices) between boots never blocks a start, and a
//! device added once the service is known opens on the start that adds it.
//!
//! "Opens" is what the kernel decides before the driver: the service's own
//! process (a probe loop running with the service's exact credentials)
//! passes the DAC and device-cgroup checks. The stand-ins' drivers may then
//! refuse: a pty slave through a node outside devpts gives EIO, a render
//! node without a DRM driver ENXIO; `Permission denied` (EACCES) and
//! `Operation not permitted` (EPERM) are what "no access" means.

mod e2e;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::ct::DEFAULT_INIT;
use e2e::*;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// `gosu svc`: supplementary groups from `/etc/group` (svc in dialout
    /// and render).
    Gosu,
    /// `su-exec 1000:1000`: no supplementary groups; svc listed in dialout
    /// and render, so post-start sees them dropped.
    SuExec,
    /// `s6-setuidgid`-like: uid and gid only, svc in no group of the image.
    S6,
    /// `lxc.init.uid: 1000` / `lxc.init.gid: 1000`: init itself runs as the
    /// service, without supplementary groups.
    InitUid,
}

/// The cells of one container: (name, path inside).
const CELLS: [(&str, &str); 6] = [
    ("stick bind", "/dev/ttyUSB0"),
    ("stick devN", ""),
    ("stick policy", ""),
    ("render bind", "/dev/dri/renderD128"),
    ("render devN", ""),
    ("render policy", ""),
];

/// The probe: started as the service, it starts a long-lived service
/// process, then tries to open every device in `/probe.list` five times a
/// second and writes one line per device to `/tmp/probe`.
const PROBE: &str = r#"sleep 100000 &
while :; do
  r=""
  for d in $(cat /probe.list); do
    if [ ! -e "$d" ]; then r="$r$d missing
"; continue; fi
    if e=$( (exec 3<>"$d") 2>&1 ); then r="$r$d ok
"; else r="$r$d $e
"; fi
  done
  printf '%s' "$r" > /tmp/probe.new && mv /tmp/probe.new /tmp/probe
  sleep 0.2
done
"#;

struct Rig<'b> {
    pattern: Pattern,
    ct: Ct<'b>,
    sticks: Vec<PtySerial>,
    renders: Vec<CharNode>,
    /// Host path of each cell, in [`CELLS`] order, then the two added later.
    hosts: Vec<PathBuf>,
    /// Path inside of each cell.
    inside: Vec<String>,
}

fn svc_groups(p: Pattern) -> &'static [u32] {
    match p {
        Pattern::S6 => &[],
        _ => &[20, 107],
    }
}

fn make<'b>(bed: &'b Bed, vmid: u32, pattern: Pattern) -> Rig<'b> {
    let sticks: Vec<PtySerial> = (0..4).map(|_| bed.pty_serial()).collect();
    let renders: Vec<CharNode> = (0..3)
        .map(|i| {
            let minor = 128 + (vmid - 990_120) * 8 + i;
            bed.char_node(&format!("m{vmid}/renderD{minor}"), 226, minor, 993, 0o660)
        })
        .collect();
    let by = |i: usize| sticks[i].by_id.display().to_string();
    let node = |i: usize| renders[i].path.display().to_string();
    let hosts: Vec<PathBuf> = vec![
        sticks[0].by_id.clone(),
        sticks[1].by_id.clone(),
        sticks[2].by_id.clone(),
        renders[0].path.clone(),
        renders[1].path.clone(),
        renders[2].path.clone(),
        sticks[3].by_id.clone(),
    ];
    let mut inside: Vec<String> = CELLS
        .iter()
        .zip(&hosts)
        .map(|((_, ct), h)| {
            if ct.is_empty() {
                h.display().to_string()
            } else {
                ct.to_string()
            }
        })
        .collect();
    inside.push(by(3));
    inside.push("/dev/dri/renderD129".into());
    let init = match pattern {
        Pattern::Gosu => drop_implicit("svc", "/bin/sh /probe.sh"),
        Pattern::SuExec | Pattern::S6 => drop_explicit(1000, 1000, "/bin/sh /probe.sh"),
        Pattern::InitUid => "/bin/sh /probe.sh &\n".to_string(),
    };
    let mut b = bed
        .container(vmid)
        .group("dialout", 20)
        .group("render", 107)
        .user("svc", 1000, 1000, svc_groups(pattern))
        .file("/probe.sh", PROBE, 0o755)
        .file("/probe.list", format!("{}\n", inside.join("\n")), 0o644)
        .init(&format!("{init}{DEFAULT_INIT}"))
        .conf(&format!(
            "lxc.mount.entry: {} dev/ttyUSB0 none bind,optional,create=file",
            by(0)
        ))
        .conf(&format!("dev0: {}", by(1)))
        .conf(&format!(
            "lxc.mount.entry: {} dev/dri/renderD128 none bind,optional,create=file",
            node(0)
        ))
        .conf(&format!("dev1: {}", node(1)))
        .policy(&format!(
            "[[device]]\npath = \"{}\"\nrequired = false\n\n[[device]]\npath = \"{}\"\nrequired = false\n",
            by(2),
            node(2)
        ))
        .hook(Hook::Binary);
    if pattern == Pattern::InitUid {
        b = b.conf("lxc.init.uid: 1000").conf("lxc.init.gid: 1000");
    }
    // The fourth render node is added at boot 4 (see `add_devices`).
    let ct = b.create();
    Rig {
        pattern,
        ct,
        sticks,
        renders,
        hosts,
        inside,
    }
}

/// A host node as stat shows it: owner, group, mode, device numbers.
fn host_stat(p: &Path) -> (u32, u32, u32, u64) {
    let m = fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid(), m.mode(), m.rdev())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// What one boot showed: per device inside, the verdict post-start
/// recorded and whether the service's probe got past the permission checks.
#[derive(Debug)]
struct Boot {
    verdicts: BTreeMap<String, String>,
    opened: BTreeMap<String, bool>,
    state: Value,
}

/// Whether this start binds a private node for a cell: an optional policy
/// device always; a bind once the service needs another owner or group
/// than the host node's (never the stick for a service keeping its groups:
/// dialout is 20 on both sides).
fn private_expected(p: Pattern, cell: usize, n: usize) -> bool {
    match cell {
        2 | 5 => true,
        0 | 3 => n >= first_open(p, cell) && !(p == Pattern::Gosu && cell == 0),
        _ => false,
    }
}

/// The container IDs a cell's private node has on boot `n`: once the facts
/// are known, the service's uid/gid when it runs without groups, else the
/// container's group for the device; before, the group known ahead (dialout
/// 20 for a stick) or root's.
fn private_owner(p: Pattern, cell: usize, n: usize) -> (u32, u32) {
    let stick = cell < 3;
    match (p, n >= first_open(p, cell)) {
        (Pattern::Gosu, true) if stick => (0, 20),
        (Pattern::Gosu, true) => (0, 107),
        (_, true) => (1000, 1000),
        (_, false) if stick => (0, 20),
        (_, false) => (0, 0),
    }
}

/// This start's LXC config binds exactly the expected private nodes, with
/// the expected owner (container ID + 100000, the map's base, except the
/// 1:1 GID 20); the container config names none.
fn check_private_nodes(b: &Rig, n: usize) {
    let lxc = b.ct.lxc_config();
    let dir = format!("/var/lib/lxc/{}/pct-passthrough/", b.ct.vmid);
    for (cell, (name, _)) in CELLS.iter().enumerate() {
        let target = b.inside[cell].trim_start_matches('/');
        let line = lxc
            .lines()
            .find(|l| l.starts_with("lxc.mount.entry") && l.contains(&format!(" {target} ")));
        let private = line.and_then(|l| {
            l.split_whitespace()
                .nth(2)
                .filter(|src| src.starts_with(&dir))
        });
        let want = private_expected(b.pattern, cell, n);
        assert_eq!(
            private.is_some(),
            want,
            "{:?} {name} boot {n}: private node {private:?}\n{lxc}",
            b.pattern
        );
        if let Some(src) = private {
            let (uid, gid) = private_owner(b.pattern, cell, n);
            let host = |id: u32| if id == 20 { 20 } else { 100_000 + id };
            let st = host_stat(Path::new(src));
            assert_eq!(
                (st.0, st.1, st.2 & 0o7777),
                (host(uid), host(gid), 0o660),
                "{:?} {name} boot {n}: {src}",
                b.pattern
            );
        }
    }
}

fn start_all(boxes: &mut [Rig], n: usize) -> u64 {
    let t0 = now_secs();
    for b in boxes.iter_mut() {
        let _ = fs::remove_file(b.ct.rootfs().join("tmp/probe"));
        let rep = b.ct.start();
        assert!(
            rep.started,
            "{:?} boot {n}: the start was refused:\n{rep}",
            b.pattern
        );
        let log = &rep.task_log;
        assert!(!log.contains("--devN"), "{:?} boot {n}: {log}", b.pattern);
    }
    t0
}

fn observe(b: &Rig, n: usize, t0: u64, wanted: usize) -> Boot {
    let mut state = Value::Null;
    let done = wait_until(Duration::from_secs(15), || {
        // Both state files, merged (the runtime user follows the container).
        state = b.ct.state().unwrap_or(Value::Null);
        state["last_run"]["phase"] == "post-start"
            && state["last_run"]["at"].as_u64().is_some_and(|a| a >= t0)
            && state["runtime_user"]["uid"] == 1000
            && state["devices"]
                .as_array()
                .is_some_and(|d| d.len() >= wanted)
    });
    assert!(
        done,
        "{:?} boot {n}: post-start did not record:\n{state:#}",
        b.pattern
    );
    let mut verdicts = BTreeMap::new();
    for d in state["devices"].as_array().unwrap() {
        verdicts.insert(
            d["container_path"].as_str().unwrap_or_default().to_string(),
            d["verdict"].as_str().unwrap_or_default().to_string(),
        );
    }
    let probe = b.ct.rootfs().join("tmp/probe");
    let mut text = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            text = fs::read_to_string(&probe).unwrap_or_default();
            text.lines().count() == b.inside.len()
        }),
        "{:?} boot {n}: no probe: {text}",
        b.pattern
    );
    let mut opened = BTreeMap::new();
    for line in text.lines() {
        let (dev, rest) = line.split_once(' ').expect("probe line");
        let ok = if rest == "ok"
            || rest.contains("No such device")
            || rest.contains("Input/output error")
        {
            true
        } else if rest == "missing"
            || rest.contains("Permission denied")
            || rest.contains("not permitted")
        {
            false
        } else {
            panic!("{:?} boot {n}: unexpected probe result {line:?}", b.pattern)
        };
        opened.insert(dev.to_string(), ok);
    }
    Boot {
        verdicts,
        opened,
        state,
    }
}

fn stop_all(boxes: &mut [Rig]) {
    for b in boxes.iter_mut() {
        b.ct.stop();
    }
}

/// The boot on which each cell first opens, per pattern (1: the facts are
/// known ahead; 2: post-start learns them on boot 1).
fn first_open(p: Pattern, cell: usize) -> usize {
    let render = cell >= 3;
    match p {
        Pattern::InitUid => 1,
        // dialout is GID 20 on both sides: known ahead. The container's
        // render GID is learnt on boot 1.
        Pattern::Gosu if !render => 1,
        _ => 2,
    }
}

/// The verdict post-start records on boot 1 for a cell that opens only on
/// boot 2.
fn boot1_verdict(p: Pattern, cell: usize) -> &'static str {
    match (p, cell) {
        // Host GID 993 shows inside: svc is put in a group for it, which a
        // running process cannot gain.
        (Pattern::Gosu, 3) | (Pattern::S6, 0..=3) => "needs-restart",
        _ => "no-access",
    }
}

#[test]
fn every_service_pattern_opens_its_device_by_the_second_start() {
    let bed = Bed::new();
    let patterns = [
        (990_121, Pattern::Gosu),
        (990_122, Pattern::SuExec),
        (990_123, Pattern::S6),
        (990_124, Pattern::InitUid),
    ];
    let mut boxes: Vec<Rig> = patterns
        .iter()
        .map(|(vmid, p)| make(&bed, *vmid, *p))
        .collect();
    let hosts_before: Vec<Vec<(u32, u32, u32, u64)>> = boxes
        .iter()
        .map(|b| b.hosts.iter().map(|h| host_stat(h)).collect())
        .collect();
    let check_hosts = |boxes: &[Rig], n: usize| {
        for (b, before) in boxes.iter().zip(&hosts_before) {
            for (h, was) in b.hosts.iter().zip(before) {
                if h.exists() {
                    assert_eq!(&host_stat(h), was, "boot {n}: {} changed", h.display());
                }
            }
        }
    };
    let mut boots: Vec<Vec<Boot>> = Vec::new();
    // Boots 1 and 2: the six cells.
    for n in 1..=2 {
        let t0 = start_all(&mut boxes, n);
        boots.push(boxes.iter().map(|b| observe(b, n, t0, 6)).collect());
        for b in &boxes {
            check_private_nodes(b, n);
            let v = b.ct.vmid.to_string();
            let doctor = bed.cli(&["doctor", &v]);
            let status = bed.cli(&["status", &v]);
            assert_eq!(status.code, Some(0), "{status}");
            if n == 2 {
                // Everything works: doctor agrees, and nothing is left to do.
                assert!(
                    doctor.code == Some(0) && doctor.stdout.contains(" 0 warn, 0 fail"),
                    "{:?} boot 2: {doctor}",
                    b.pattern
                );
                assert!(status.stdout.contains("next start: unchanged"), "{status}");
                // devN: the container's group for a service keeping its
                // groups (render 107, not the uid fallback), else the owner.
                let conf = b.ct.pve_conf();
                let want = match b.pattern {
                    Pattern::Gosu => [",gid=20\n", ",gid=107\n"],
                    _ => [",gid=1000,uid=1000\n"; 2],
                };
                for (i, w) in want.iter().enumerate() {
                    let line = format!(
                        "dev{i}: {}{w}",
                        b.hosts[if i == 0 { 1 } else { 4 }].display()
                    );
                    assert!(conf.contains(&line), "{:?}: {line} in\n{conf}", b.pattern);
                }
            }
        }
        check_hosts(&boxes, n);
        for b in &boxes {
            let conf = b.ct.pve_conf();
            assert!(
                !conf.contains("pct-passthrough/") && !conf.contains("dev2:"),
                "{:?} boot {n}: the container config names a private node or a policy devN:\n{conf}",
                b.pattern
            );
        }
        stop_all(&mut boxes);
    }
    for (k, b) in boxes.iter().enumerate() {
        let per_boot: Vec<&Boot> = boots.iter().map(|v| &v[k]).collect();
        for (cell, (name, _)) in CELLS.iter().enumerate() {
            let inside = &b.inside[cell];
            let first = first_open(b.pattern, cell);
            for (i, boot) in per_boot.iter().enumerate() {
                let n = i + 1;
                let opened = boot.opened[inside];
                let verdict = boot.verdicts.get(inside).map(String::as_str);
                assert_eq!(
                    opened,
                    n >= first,
                    "{:?} {name} ({inside}) boot {n}: opened={opened}, expected from boot {first}; verdicts {:?}\n{:#}",
                    b.pattern,
                    boot.verdicts,
                    boot.state
                );
                let want = if n >= first {
                    "ok"
                } else {
                    boot1_verdict(b.pattern, cell)
                };
                assert_eq!(
                    verdict,
                    Some(want),
                    "{:?} {name} ({inside}) boot {n}\n{:#}",
                    b.pattern,
                    boot.state
                );
            }
        }
    }

    // Boot 3: the optional devices (binds and policy devices) unplugged.
    let optional = [0usize, 2, 3, 5];
    for b in &boxes {
        b.sticks[0].unplug();
        b.sticks[2].unplug();
        b.renders[0].unplug();
        b.renders[2].unplug();
    }
    let t0 = start_all(&mut boxes, 3);
    for b in &boxes {
        let boot = observe(b, 3, t0, 6);
        for (cell, (name, _)) in CELLS.iter().enumerate() {
            let inside = &b.inside[cell];
            let unplugged = optional.contains(&cell);
            assert_eq!(
                boot.opened[inside], !unplugged,
                "{:?} {name} boot 3 (unplugged: {unplugged})\n{:#}",
                b.pattern, boot.state
            );
            let want = if unplugged { "missing" } else { "ok" };
            assert_eq!(
                boot.verdicts.get(inside).map(String::as_str),
                Some(want),
                "{:?} {name} boot 3\n{:#}",
                b.pattern,
                boot.state
            );
        }
        let private = Path::new(&format!("/var/lib/lxc/{}/pct-passthrough", b.ct.vmid))
            .read_dir()
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(private, 0, "{:?}: stale private nodes", b.pattern);
    }
    check_hosts(&boxes, 3);
    stop_all(&mut boxes);

    // Boot 4: plugged back in, and two devices added (a stick as devN, a
    // render node as a bind): the service is known, so they open on the
    // start that adds them.
    for b in &boxes {
        b.sticks[0].replug();
        b.sticks[2].replug();
        b.renders[0].replug();
        b.renders[2].replug();
    }
    let added: Vec<CharNode> = boxes
        .iter()
        .map(|b| {
            let minor = 128 + (b.ct.vmid - 990_120) * 8 + 3;
            bed.char_node(
                &format!("m{}/renderD{minor}", b.ct.vmid),
                226,
                minor,
                993,
                0o660,
            )
        })
        .collect();
    for (b, r) in boxes.iter().zip(&added) {
        let conf = format!(
            "{}dev2: {}\nlxc.mount.entry: {} dev/dri/renderD129 none bind,optional,create=file\n",
            b.ct.pve_conf(),
            b.sticks[3].by_id.display(),
            r.path.display()
        );
        b.ct.set_pve_conf(&conf);
    }
    let t0 = start_all(&mut boxes, 4);
    for b in &boxes {
        let boot = observe(b, 4, t0, 8);
        for inside in &b.inside {
            assert!(
                boot.opened[inside],
                "{:?} {inside} boot 4\n{:#}",
                b.pattern, boot.state
            );
            assert_eq!(
                boot.verdicts.get(inside).map(String::as_str),
                Some("ok"),
                "{:?} {inside} boot 4\n{:#}",
                b.pattern,
                boot.state
            );
        }
    }
    check_hosts(&boxes, 4);
    stop_all(&mut boxes);
}
