//! Runtime-user detection, pure: `/proc/<pid>/status` and `uid_map` parsing,
//! mapping host IDs back into the container, the documented choice rule over
//! a recorded process table, and the "stable for a while" tracker.

use std::collections::BTreeSet;
use std::time::Duration;

/// The parts of `/proc/<pid>/status` the tool uses. IDs are as the reader
/// sees them (host view when read from the host).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcStatus {
    pub name: String,
    pub ppid: u32,
    /// Real, effective, saved, filesystem.
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    /// PIDs from the outermost to the innermost PID namespace.
    pub nspid: Vec<u32>,
}

fn ids<const N: usize>(v: &str) -> Option<[u32; N]> {
    let mut out = [0u32; N];
    let mut it = v.split_ascii_whitespace();
    for slot in &mut out {
        *slot = it.next()?.parse().ok()?;
    }
    Some(out)
}

/// Parses status text; `None` when a required field is missing or bad.
pub fn parse_status(text: &str) -> Option<ProcStatus> {
    let mut s = ProcStatus::default();
    let (mut have_uid, mut have_gid) = (false, false);
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k {
            "Name" => s.name = v.trim().to_string(),
            "PPid" => s.ppid = v.trim().parse().ok()?,
            "Uid" => {
                s.uid = ids::<4>(v)?;
                have_uid = true;
            }
            "Gid" => {
                s.gid = ids::<4>(v)?;
                have_gid = true;
            }
            "Groups" => {
                s.groups = v
                    .split_ascii_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?
            }
            "NSpid" => {
                s.nspid = v
                    .split_ascii_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?
            }
            _ => {}
        }
    }
    (have_uid && have_gid).then_some(s)
}

/// One `uid_map`/`gid_map` line: `inside outside count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// A process's `uid_map` or `gid_map`, as read from the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap(pub Vec<MapRange>);

impl IdMap {
    /// The identity map of the initial namespace (privileged containers).
    pub fn identity() -> IdMap {
        IdMap(vec![MapRange {
            inside: 0,
            outside: 0,
            count: u32::MAX,
        }])
    }

    pub fn parse(text: &str) -> Option<IdMap> {
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let [inside, outside, count] = ids::<3>(line)?;
            out.push(MapRange {
                inside,
                outside,
                count,
            });
        }
        Some(IdMap(out))
    }

    /// Host ID → container ID; `None` when the host ID is not mapped.
    pub fn to_inside(&self, host: u32) -> Option<u32> {
        self.0.iter().find_map(|r| {
            let off = u64::from(host).checked_sub(u64::from(r.outside))?;
            (off < u64::from(r.count)).then(|| u32::try_from(u64::from(r.inside) + off).ok())?
        })
    }

    /// Container ID → host ID.
    pub fn to_host(&self, inside: u32) -> Option<u32> {
        self.0.iter().find_map(|r| {
            let off = u64::from(inside).checked_sub(u64::from(r.inside))?;
            (off < u64::from(r.count)).then(|| u32::try_from(u64::from(r.outside) + off).ok())?
        })
    }
}

/// One process of the container, IDs already mapped into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcEntry {
    /// Host PID.
    pub pid: u32,
    /// PID inside the container's PID namespace.
    pub ct_pid: u32,
    pub comm: String,
    /// Effective UID and GID inside the container.
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start: u64,
}

/// Maps a host-view status into the container. `None` when a credential is
/// not mapped (it cannot be the container's own service user).
pub fn to_entry(
    pid: u32,
    st: &ProcStatus,
    start: u64,
    uid_map: &IdMap,
    gid_map: &IdMap,
) -> Option<ProcEntry> {
    Some(ProcEntry {
        pid,
        ct_pid: st.nspid.last().copied().unwrap_or(pid),
        comm: st.name.clone(),
        uid: uid_map.to_inside(st.uid[1])?,
        gid: gid_map.to_inside(st.gid[1])?,
        groups: st
            .groups
            .iter()
            .filter_map(|g| gid_map.to_inside(*g))
            .collect(),
        start,
    })
}

/// Root wrappers and supervisors: never the service, whatever their user.
pub const WRAPPERS: &[&str] = &[
    "tini",
    "dumb-init",
    "catatonit",
    "runsv",
    "runsvdir",
    "sh",
    "bash",
    "ash",
    "dash",
    "busybox",
    "su-exec",
    "gosu",
    "setpriv",
    "s6-svscan",
    "s6-supervise",
    "s6-log",
    "s6-linux-init",
    "s6-rc",
    "init",
    "systemd",
    "pct-passthrough",
];

/// True for a wrapper or supervisor name (`s6-*` included).
pub fn is_wrapper(comm: &str) -> bool {
    WRAPPERS.contains(&comm) || comm.starts_with("s6-")
}

/// The "nobody" user, a last resort.
pub const NOBODY: u32 = 65534;

/// What the table says about the service user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// A non-root service user, and the process it was found on.
    User(ProcEntry),
    /// Every (non-wrapper) process runs as root.
    AllRoot(Option<ProcEntry>),
    /// No process at all (the container is gone).
    Empty,
}

/// Preference class of a UID: lower is better.
fn class(uid: u32) -> u8 {
    match uid {
        1000..=59999 => 0,
        NOBODY => 2,
        _ => 1,
    }
}

/// The choice rule (README, "detection rule"):
/// 1. skip wrappers (see [`WRAPPERS`]), the tool's own PIDs, and root;
/// 2. if `wanted` (policy `runtime_user` as a UID) runs, pick it;
/// 3. prefer regular UIDs (1000-59999), then system UIDs, then `nobody`;
/// 4. within a class, the UID of the earliest-started process (then the
///    lowest PID), which is the service the entrypoint dropped to first.
///
/// When only wrappers or root remain, the result is [`Choice::AllRoot`] with
/// the earliest non-wrapper root process, if any.
pub fn choose(table: &[ProcEntry], own_pids: &[u32], wanted: Option<u32>) -> Choice {
    let live: Vec<&ProcEntry> = table
        .iter()
        .filter(|p| !own_pids.contains(&p.pid) && p.comm != "pct-passthrough")
        .collect();
    if live.is_empty() {
        return Choice::Empty;
    }
    let candidates: Vec<&ProcEntry> = live
        .iter()
        .copied()
        .filter(|p| p.uid != 0 && !is_wrapper(&p.comm))
        .collect();
    if let Some(w) = wanted {
        if let Some(p) = candidates
            .iter()
            .filter(|p| p.uid == w)
            .min_by_key(|p| (p.start, p.ct_pid))
        {
            return Choice::User((*p).clone());
        }
    }
    if let Some(p) = candidates
        .iter()
        .min_by_key(|p| (class(p.uid), p.start, p.ct_pid))
    {
        return Choice::User((*p).clone());
    }
    // A non-root wrapper (`sh` run as the user) still tells who the user is.
    if let Some(p) = live
        .iter()
        .filter(|p| p.uid != 0)
        .min_by_key(|p| (class(p.uid), p.start, p.ct_pid))
    {
        return Choice::User((*p).clone());
    }
    Choice::AllRoot(
        live.iter()
            .filter(|p| !is_wrapper(&p.comm))
            .min_by_key(|p| (p.start, p.ct_pid))
            .map(|p| (*p).clone()),
    )
}

/// The set of non-root credentials in a table: what must stay the same for
/// the answer to count as stable.
pub fn signature(table: &[ProcEntry]) -> BTreeSet<(u32, u32, Vec<u32>)> {
    table
        .iter()
        .filter(|p| p.uid != 0)
        .map(|p| (p.uid, p.gid, p.groups.clone()))
        .collect()
}

/// Tracks how long a signature has stayed the same.
#[derive(Debug, Clone, Default)]
pub struct Stability {
    last: Option<BTreeSet<(u32, u32, Vec<u32>)>>,
    since: Duration,
}

impl Stability {
    /// Feeds the signature seen at `now` (time since the worker started);
    /// returns how long it has been unchanged.
    pub fn feed(&mut self, sig: BTreeSet<(u32, u32, Vec<u32>)>, now: Duration) -> Duration {
        if self.last.as_ref() != Some(&sig) {
            self.last = Some(sig);
            self.since = now;
        }
        now.saturating_sub(self.since)
    }
}

/// Whether the service keeps supplementary groups, judged from what the
/// container's files say it should have and what the process carries.
/// `member_of`: GIDs whose `/etc/group` entry lists the user (before the edit).
/// `None` when it cannot be told yet.
pub fn keeps_supplementary_groups(
    has_passwd_entry: bool,
    member_of: &[u32],
    p: &ProcEntry,
) -> Option<bool> {
    if !has_passwd_entry {
        // A numeric uid with no passwd entry gets no supplementary groups.
        return Some(false);
    }
    let expected: Vec<u32> = member_of.iter().copied().filter(|g| *g != p.gid).collect();
    if expected.is_empty() {
        return None;
    }
    Some(expected.iter().all(|g| p.groups.contains(g)))
}

/// The container side of a policy `idmap` line that names the runtime user:
/// `"uid 1005 runtime"`, `"gid 1005 runtime"`, `"both 1005 runtime"`.
pub const RUNTIME_TOKEN: &str = "runtime";

/// A parsed runtime-user idmap line: which kinds, and the host ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeIdmap {
    pub uid: bool,
    pub gid: bool,
    pub host: u32,
}

/// True when `line` is a runtime-user line (its last word is `runtime`).
pub fn is_runtime_idmap(line: &str) -> bool {
    line.split_ascii_whitespace().nth(2) == Some(RUNTIME_TOKEN)
}

/// Parses `KIND HOST runtime`. HOST is one ID (the service user is one
/// user), not 0 (host root never goes into a container).
pub fn parse_runtime_idmap(line: &str) -> Result<RuntimeIdmap, String> {
    let f: Vec<&str> = line.split_ascii_whitespace().collect();
    let [kind, host, RUNTIME_TOKEN] = f.as_slice() else {
        return Err(format!(
            "'{line}' is not a runtime-user line; the form is 'uid|gid|both HOST runtime', like \"uid 1005 runtime\""
        ));
    };
    let (uid, gid) = match *kind {
        "uid" => (true, false),
        "gid" => (false, true),
        "both" => (true, true),
        other => return Err(format!("'{line}': '{other}' is not uid, gid or both")),
    };
    let host: u32 = match host.parse() {
        Ok(h) if host.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => {
            return Err(format!(
            "'{line}': '{host}' is not one host ID; the runtime user maps to exactly one host ID"
        ))
        }
    };
    if host == 0 {
        return Err(format!(
            "'{line}': host ID 0 (host root) is never mapped into a container"
        ));
    }
    Ok(RuntimeIdmap { uid, gid, host })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const STATUS: &str = "Name:\tnode\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t4200\nTracerPid:\t0\nUid:\t101000\t101000\t101000\t101000\nGid:\t101000\t101000\t101000\t101000\nFDSize:\t64\nGroups:\t100020 101000 \nNStgid:\t4242\t7\nNSpid:\t4242\t7\n";

    #[test]
    fn parses_status() {
        let s = parse_status(STATUS).unwrap();
        assert_eq!(s.name, "node");
        assert_eq!(s.ppid, 4200);
        assert_eq!(s.uid, [101000; 4]);
        assert_eq!(s.groups, vec![100020, 101000]);
        assert_eq!(s.nspid, vec![4242, 7]);
        assert!(parse_status("Name:\tx\n").is_none());
        assert!(parse_status("Uid:\t1 2 3\nGid:\t1 1 1 1\n").is_none());
        let empty_groups = parse_status("Uid:\t0 0 0 0\nGid:\t0 0 0 0\nGroups:\t\n").unwrap();
        assert!(empty_groups.groups.is_empty());
    }

    #[rstest]
    #[case(100000, Some(0))]
    #[case(165535, Some(65535))]
    #[case(165536, None)]
    #[case(99999, None)]
    #[case(20, Some(20))]
    #[case(21, None)]
    fn maps_back_exactly(#[case] host: u32, #[case] inside: Option<u32>) {
        let m = IdMap::parse("         0     100000         20\n        20         20          1\n        21     100021      65515\n").unwrap();
        assert_eq!(m.to_inside(host), inside);
        if let Some(i) = inside {
            assert_eq!(m.to_host(i), Some(host));
        }
    }

    #[test]
    fn identity_map_edges() {
        let m = IdMap::identity();
        assert_eq!(m.to_inside(0), Some(0));
        assert_eq!(m.to_inside(u32::MAX - 1), Some(u32::MAX - 1));
        assert!(IdMap::parse("0 x 1\n").is_none());
    }

    fn p(ct_pid: u32, comm: &str, uid: u32, start: u64) -> ProcEntry {
        ProcEntry {
            pid: 5000 + ct_pid,
            ct_pid,
            comm: comm.into(),
            uid,
            gid: uid,
            groups: vec![],
            start,
        }
    }

    fn chosen(c: Choice) -> Option<(u32, String)> {
        match c {
            Choice::User(p) => Some((p.uid, p.comm)),
            _ => None,
        }
    }

    #[test]
    fn gosu_and_su_exec() {
        // tini -> gosu (exec'd into the service as 1000).
        let t = vec![p(1, "tini", 0, 10), p(7, "node", 1000, 20)];
        assert_eq!(chosen(choose(&t, &[], None)), Some((1000, "node".into())));
        // su-exec execs in place: PID 1 itself becomes the service.
        let t = vec![p(1, "mosquitto", 1883, 10)];
        assert_eq!(
            chosen(choose(&t, &[], None)),
            Some((1883, "mosquitto".into()))
        );
    }

    #[test]
    fn s6_with_several_services() {
        let t = vec![
            p(1, "s6-svscan", 0, 1),
            p(20, "s6-supervise", 0, 2),
            p(21, "s6-supervise", 0, 2),
            p(22, "s6-log", 65534, 3),
            p(30, "nginx", 0, 4),
            p(31, "nginx", 33, 5),
            p(32, "nginx", 33, 5),
            p(40, "node", 1000, 6),
            p(41, "sh", 1001, 1),
        ];
        // Regular UIDs first; the wrapper `sh` as 1001 does not count.
        assert_eq!(chosen(choose(&t, &[], None)), Some((1000, "node".into())));
        // The policy can name another one.
        assert_eq!(
            chosen(choose(&t, &[], Some(33))),
            Some((33, "nginx".into()))
        );
        // Wanted but not running: the rule decides.
        assert_eq!(
            chosen(choose(&t, &[], Some(7))),
            Some((1000, "node".into()))
        );
    }

    #[test]
    fn all_root_records_root() {
        let t = vec![p(1, "tini", 0, 1), p(2, "zigbee2mqtt", 0, 2)];
        match choose(&t, &[], None) {
            Choice::AllRoot(Some(e)) => assert_eq!(e.comm, "zigbee2mqtt"),
            c => panic!("{c:?}"),
        }
        assert_eq!(choose(&[], &[], None), Choice::Empty);
    }

    #[test]
    fn own_processes_are_skipped() {
        let t = vec![
            p(1, "init", 0, 1),
            p(9, "pct-passthrough", 1000, 2),
            p(10, "x", 1002, 3),
        ];
        assert_eq!(chosen(choose(&t, &[5010], None)), None);
        assert_eq!(chosen(choose(&t, &[], None)), Some((1002, "x".into())));
    }

    #[test]
    fn numeric_uid_without_passwd_and_wrapper_only_user() {
        let t = vec![p(1, "sh", 0, 1), p(2, "sh", 4242, 2)];
        assert_eq!(chosen(choose(&t, &[], None)), Some((4242, "sh".into())));
        let e = p(2, "app", 4242, 2);
        assert_eq!(keeps_supplementary_groups(false, &[], &e), Some(false));
    }

    #[test]
    fn dropped_groups_are_detected() {
        let mut e = p(2, "app", 1000, 2);
        assert_eq!(keeps_supplementary_groups(true, &[], &e), None);
        assert_eq!(keeps_supplementary_groups(true, &[1000], &e), None);
        assert_eq!(keeps_supplementary_groups(true, &[20], &e), Some(false));
        e.groups = vec![20, 1000];
        assert_eq!(keeps_supplementary_groups(true, &[20], &e), Some(true));
    }

    #[rstest]
    #[case("uid 1005 runtime", Ok(RuntimeIdmap { uid: true, gid: false, host: 1005 }))]
    #[case("gid 44 runtime", Ok(RuntimeIdmap { uid: false, gid: true, host: 44 }))]
    #[case("both 2000 runtime", Ok(RuntimeIdmap { uid: true, gid: true, host: 2000 }))]
    fn runtime_idmap_lines(#[case] line: &str, #[case] want: Result<RuntimeIdmap, String>) {
        assert!(is_runtime_idmap(line));
        assert_eq!(parse_runtime_idmap(line), want);
    }

    #[rstest]
    #[case("uid 0 runtime", "host root")]
    #[case("uid 1005-1009 runtime", "not one host ID")]
    #[case("uid +5 runtime", "not one host ID")]
    #[case("uid 4294967296 runtime", "not one host ID")]
    #[case("user 1005 runtime", "not uid, gid or both")]
    #[case("uid runtime", "not a runtime-user line")]
    fn bad_runtime_idmap_lines(#[case] line: &str, #[case] why: &str) {
        let e = parse_runtime_idmap(line).unwrap_err();
        assert!(e.contains(why), "{e}");
    }

    #[test]
    fn stability_resets_on_change() {
        let mut s = Stability::default();
        let a = signature(&[p(2, "x", 1000, 1)]);
        let ms = Duration::from_millis;
        assert_eq!(s.feed(a.clone(), ms(0)), ms(0));
        assert_eq!(s.feed(a.clone(), ms(100)), ms(100));
        assert_eq!(s.feed(signature(&[]), ms(150)), ms(0));
        assert_eq!(s.feed(a, ms(200)), ms(0));
    }
}
