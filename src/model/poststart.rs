//! post-start's decisions, pure: what to ask the container child (the
//! groups to ensure and the nodes to stat), and from what the worker then
//! saw (the service's credentials, the container's passwd and group files,
//! the nodes inside) the verdicts, the fallbacks, the log lines and the
//! state change. `phase::post_start` gathers and applies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::access::{self, Creds, NodeStat, OVERFLOW_ID};
use crate::model::device::{Declared, DIALOUT_GID};
use crate::model::event::Event;
use crate::model::group::{self, GroupIndex, GroupOutcome};
use crate::model::runtime::{self, IdMap, ProcEntry};
use crate::model::state::{
    DevFallback, DeviceVerdict, GroupCollision, LastRun, Outcome, PhaseName, RuntimeUser, State,
};

/// Host device groups whose container GIDs are recorded for device setup.
pub const DEVICE_GROUPS: &[&str] = &["dialout", "render", "video"];

/// A device the container was given: its host path and where it shows inside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTarget {
    pub path: String,
    pub ct_path: String,
}

impl DeviceTarget {
    /// The targets of the container's declared devices, one per path inside.
    pub fn of(declared: &[Declared]) -> Vec<DeviceTarget> {
        let mut out: Vec<DeviceTarget> = Vec::new();
        for d in declared {
            if !out.iter().any(|o| o.ct_path == d.ct_path) {
                out.push(DeviceTarget {
                    path: d.path.clone(),
                    ct_path: d.ct_path.clone(),
                });
            }
        }
        out
    }
}

/// What the container child is asked to do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtRequest {
    pub uid: u32,
    pub ct_paths: Vec<String>,
    /// Preferred names for container GIDs (from the host's group names).
    pub names: BTreeMap<u32, String>,
    /// GIDs wanted whatever the nodes show (the 1:1 passthroughs).
    pub want_gids: Vec<u32>,
    /// GIDs whose container names are recorded (host device-group GIDs).
    pub lookup_gids: Vec<u32>,
}

/// What the container child reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtReport {
    pub name: Option<String>,
    pub member_of_before: Vec<u32>,
    pub member_of_after: Vec<u32>,
    pub nodes: Vec<Option<NodeStat>>,
    pub outcomes: Vec<GroupOutcome>,
    pub wrote: Vec<String>,
    /// Device-group names → GIDs inside.
    pub groups_by_name: BTreeMap<String, u32>,
    pub names_by_gid: BTreeMap<u32, String>,
    /// Why a step gave up.
    pub problems: Vec<String>,
}

/// The request for the service `uid`: each device's host group, mapped
/// inside, is wanted when it passes through 1:1 and named after the host's
/// group (GID 20 is `dialout`).
pub fn request(
    uid: u32,
    devices: &[DeviceTarget],
    host_node_gids: &[Option<u32>],
    host: &GroupIndex,
    gid_map: &IdMap,
) -> CtRequest {
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    let mut want_gids = Vec::new();
    for h in host_node_gids.iter().flatten().copied() {
        let Some(inside) = gid_map.to_inside(h) else {
            continue;
        };
        if inside == h && !want_gids.contains(&inside) {
            want_gids.push(inside);
        }
        let name = if h == DIALOUT_GID {
            Some("dialout".to_string())
        } else {
            host.by_gid.get(&h).cloned()
        };
        if let Some(n) = name.filter(|n| group::valid_name(n)) {
            names.entry(inside).or_insert(n);
        }
    }
    names.entry(DIALOUT_GID).or_insert_with(|| "dialout".into());
    CtRequest {
        uid,
        ct_paths: devices.iter().map(|d| d.ct_path.clone()).collect(),
        names,
        want_gids,
        lookup_gids: DEVICE_GROUPS
            .iter()
            .filter_map(|n| host.by_name.get(*n).copied())
            .collect(),
    }
}

/// Everything the worker saw, for [`decide`].
#[derive(Debug, Clone)]
pub struct Seen<'a> {
    /// The service as detected.
    pub detected: &'a ProcEntry,
    /// The same process re-read after the group edit (its groups now).
    pub now: &'a ProcEntry,
    pub devices: &'a [DeviceTarget],
    pub report: &'a CtReport,
    /// The host's `/etc/group`.
    pub host: &'a GroupIndex,
    /// Milliseconds from the worker's start to the detection.
    pub detected_ms: u128,
    /// Seconds since the epoch, now.
    pub at: u64,
}

/// post-start's decision: what to log and what to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub events: Vec<Event>,
    pub user: RuntimeUser,
    pub verdicts: Vec<DeviceVerdict>,
    pub fallback: Vec<DevFallback>,
    pub collisions: Vec<GroupCollision>,
    /// What changed inside, in words, for the state.
    pub changes: Vec<String>,
    /// Groups were fixed after the service started: next time, before init.
    pub fixed_late: bool,
    pub last_run: LastRun,
    pub container_groups: BTreeMap<String, u32>,
}

impl Decision {
    /// The state after this post-start.
    pub fn record(&self, s: &mut State) {
        s.runtime_user = Some(self.user.clone());
        s.container_groups = self.container_groups.clone();
        s.group_collisions = self.collisions.clone();
        s.changes = self.changes.clone();
        s.devices = self.verdicts.clone();
        s.dev_fallback = self.fallback.clone();
        s.first_boot_groups |= self.fixed_late;
        s.last_run = Some(self.last_run.clone());
    }
}

/// One line per wanted group: created, kept, or fine.
pub fn group_line(o: &GroupOutcome, user: Option<&str>) -> String {
    let what = match (o.created, o.member_added) {
        (true, _) => format!("created group {} (gid {})", o.name, o.gid),
        (false, true) => format!("group {} (gid {}) kept", o.name, o.gid),
        (false, false) => format!("group {} (gid {}) already fine", o.name, o.gid),
    };
    let member = if o.member_added {
        format!(", added {}", user.unwrap_or("?"))
    } else {
        String::new()
    };
    let renamed = o
        .renamed_from
        .as_ref()
        .map(|r| format!(" ({r} exists with another gid)"))
        .unwrap_or_default();
    format!("{what}{member}{renamed}")
}

/// Decides verdicts, fallbacks, log lines and the state change.
pub fn decide(seen: &Seen) -> Decision {
    let r = seen.report;
    let p = seen.detected;
    let now = seen.now;
    let mut events: Vec<Event> = r
        .problems
        .iter()
        .map(|pr| Event::warn("container-files", pr.clone()))
        .collect();
    events.extend(
        r.outcomes
            .iter()
            .map(|o| Event::info("group", group_line(o, r.name.as_deref()))),
    );
    let keeps = if p.uid == 0 {
        Some(true)
    } else {
        runtime::keeps_supplementary_groups(r.name.is_some(), &r.member_of_before, now)
    };
    let creds = Creds {
        uid: now.uid,
        gid: now.gid,
        groups: now.groups.clone(),
    };
    let mut verdicts = Vec::new();
    let mut fallback = Vec::new();
    for (d, node) in seen.devices.iter().zip(&r.nodes) {
        let member_now = node.is_some_and(|n| r.member_of_after.contains(&n.gid));
        let j = access::judge(node.as_ref(), &creds, member_now, keeps);
        events.push(Event::info(
            "device",
            format!(
                "{} for uid {}: {} ({})",
                d.ct_path, creds.uid, j.verdict, j.detail
            ),
        ));
        if j.needs_dev_fallback {
            fallback.push(DevFallback {
                path: d.path.clone(),
                uid: creds.uid,
                gid: creds.gid,
                reason: j.detail.clone(),
            });
        }
        verdicts.push(DeviceVerdict {
            path: d.path.clone(),
            container_path: Some(d.ct_path.clone()),
            verdict: j.verdict,
            detail: j.detail,
        });
    }
    let collisions = group::collisions(seen.host, &r.names_by_gid, DEVICE_GROUPS);
    events.extend(collisions.iter().map(|c| {
        Event::warn(
            "group-collision",
            format!(
                "host {} gid {} is {} inside the container",
                c.host_name, c.gid, c.container_name
            ),
        )
        .with_fix(format!(
            "use the container's own {} gid for devN gid=",
            c.host_name
        ))
    }));
    let user = RuntimeUser {
        uid: now.uid,
        gid: now.gid,
        groups: now.groups.clone(),
        name: r.name.clone(),
        pid: Some(now.ct_pid),
        comm: Some(now.comm.clone()),
        keeps_supplementary_groups: keeps.unwrap_or(true),
        detected_at: seen.at,
    };
    let who = format!(
        "uid {} ({}) gid {} groups {:?}, found on pid {} ({}) after {} ms",
        user.uid,
        user.name.as_deref().unwrap_or("no passwd entry"),
        user.gid,
        user.groups,
        now.ct_pid,
        now.comm,
        seen.detected_ms
    );
    events.push(Event::info("runtime-user", format!("runtime user {who}")));
    if keeps == Some(false) && !fallback.is_empty() {
        events.push(Event::warn(
            "groups-dropped",
            "the service runs without supplementary groups; group membership cannot help, the next start gives the devices its uid/gid through devN",
        ));
    }
    let mut changes: Vec<String> = r
        .outcomes
        .iter()
        .filter(|o| o.created || o.member_added)
        .map(|o| group_line(o, r.name.as_deref()))
        .collect();
    changes.extend(r.problems.iter().cloned());
    Decision {
        events,
        fixed_late: p.uid != 0 && r.outcomes.iter().any(|o| o.created || o.member_added),
        last_run: LastRun {
            phase: PhaseName::PostStart,
            outcome: if r.wrote.is_empty() {
                Outcome::Ok
            } else {
                Outcome::Changed
            },
            message: format!("runtime user {who}"),
            at: seen.at,
        },
        container_groups: r.groups_by_name.clone(),
        user,
        verdicts,
        fallback,
        collisions,
        changes,
    }
}

/// The node's group inside when it is mapped; the overflow ID otherwise.
pub fn shows_as(gid_map: &IdMap, host_gid: u32) -> u32 {
    gid_map.to_inside(host_gid).unwrap_or(OVERFLOW_ID)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::Verdict;
    use rstest::rstest;

    fn proc_entry(uid: u32, gid: u32, groups: &[u32]) -> ProcEntry {
        ProcEntry {
            pid: 4242,
            ct_pid: 7,
            comm: "node".into(),
            uid,
            gid,
            groups: groups.to_vec(),
            start: 1,
        }
    }

    fn node(uid: u32, gid: u32, mode: u32) -> NodeStat {
        NodeStat {
            uid,
            gid,
            mode: 0o020000 | mode,
            is_char_device: true,
        }
    }

    fn outcome(gid: u32, name: &str, created: bool, member_added: bool) -> GroupOutcome {
        GroupOutcome {
            gid,
            name: name.into(),
            created,
            member_added,
            renamed_from: None,
        }
    }

    fn serial() -> Vec<DeviceTarget> {
        vec![DeviceTarget {
            path: "/dev/serial/by-id/usb-x".into(),
            ct_path: "/dev/ttyUSB0".into(),
        }]
    }

    struct Case {
        /// The service's credentials now.
        now: ProcEntry,
        name: Option<&'static str>,
        member_before: Vec<u32>,
        member_after: Vec<u32>,
        node: NodeStat,
        outcomes: Vec<GroupOutcome>,
    }

    fn decide_case(c: &Case, devices: &[DeviceTarget]) -> Decision {
        let report = CtReport {
            name: c.name.map(str::to_string),
            member_of_before: c.member_before.clone(),
            member_of_after: c.member_after.clone(),
            nodes: vec![Some(c.node)],
            outcomes: c.outcomes.clone(),
            wrote: if c.outcomes.iter().any(|o| o.created || o.member_added) {
                vec!["/etc/group".into()]
            } else {
                Vec::new()
            },
            ..CtReport::default()
        };
        let host = GroupIndex::default();
        decide(&Seen {
            detected: &c.now,
            now: &c.now,
            devices,
            report: &report,
            host: &host,
            detected_ms: 180,
            at: 1_700_000_000,
        })
    }

    /// The service patterns of the mission, on a serial node `65534:20 0660`
    /// (GID 20 passed through), at the first boot (groups fixed late) and at
    /// the second (membership known).
    #[rstest]
    // gosu user: groups from /etc/group; first boot: added too late.
    #[case::gosu_first_boot(Case { now: proc_entry(1000, 1000, &[]), name: Some("node"), member_before: vec![], member_after: vec![20], node: node(65534, 20, 0o660), outcomes: vec![outcome(20, "dialout", true, true)] }, Verdict::NeedsRestart, true, Outcome::Changed)]
    // gosu user, second boot: it has the group.
    #[case::gosu_second_boot(Case { now: proc_entry(1000, 1000, &[20]), name: Some("node"), member_before: vec![20], member_after: vec![20], node: node(65534, 20, 0o660), outcomes: vec![outcome(20, "dialout", false, false)] }, Verdict::Ok, false, Outcome::Ok)]
    // su-exec 1000:1000, second boot: a member, but no supplementary groups.
    #[case::su_exec_dropped(Case { now: proc_entry(1000, 1000, &[]), name: Some("node"), member_before: vec![20], member_after: vec![20], node: node(65534, 20, 0o660), outcomes: vec![outcome(20, "dialout", false, false)] }, Verdict::NoAccess, true, Outcome::Ok)]
    // s6-setuidgid-like numeric uid without a passwd entry: never groups.
    #[case::numeric_without_passwd(Case { now: proc_entry(1005, 1005, &[]), name: None, member_before: vec![], member_after: vec![], node: node(65534, 20, 0o660), outcomes: vec![outcome(20, "dialout", false, false)] }, Verdict::NoAccess, true, Outcome::Ok)]
    // the node owned by the service through devN uid=/gid=: works.
    #[case::owner_fallback_applied(Case { now: proc_entry(1000, 1000, &[]), name: Some("node"), member_before: vec![20], member_after: vec![20], node: node(1000, 1000, 0o660), outcomes: vec![] }, Verdict::Ok, false, Outcome::Ok)]
    // all-root container: root opens a node with mapped owner and group.
    #[case::all_root(Case { now: proc_entry(0, 0, &[]), name: Some("root"), member_before: vec![], member_after: vec![], node: node(0, 20, 0o660), outcomes: vec![] }, Verdict::Ok, false, Outcome::Ok)]
    // the node's group unmapped (no passthrough): no access, fallback.
    #[case::group_unmapped(Case { now: proc_entry(1000, 1000, &[20]), name: Some("node"), member_before: vec![20], member_after: vec![20], node: node(65534, 65534, 0o660), outcomes: vec![] }, Verdict::NoAccess, true, Outcome::Ok)]
    fn service_patterns(
        #[case] c: Case,
        #[case] verdict: Verdict,
        #[case] fallback: bool,
        #[case] outcome: Outcome,
    ) {
        let d = decide_case(&c, &serial());
        assert_eq!(d.verdicts[0].verdict, verdict, "{:?}", d.verdicts[0]);
        assert_eq!(!d.fallback.is_empty(), fallback, "{:?}", d.fallback);
        if fallback {
            assert_eq!(
                (d.fallback[0].uid, d.fallback[0].gid),
                (c.now.uid, c.now.gid)
            );
        }
        assert_eq!(d.last_run.outcome, outcome);
        assert_eq!(d.user.uid, c.now.uid);
        let mut s = State::new(105);
        d.record(&mut s);
        assert_eq!(s.devices, d.verdicts);
        assert_eq!(s.dev_fallback, d.fallback);
    }

    #[test]
    fn su_exec_never_reads_needs_restart() {
        let c = Case {
            now: proc_entry(1000, 1000, &[]),
            name: Some("node"),
            member_before: vec![20],
            member_after: vec![20],
            node: node(65534, 20, 0o660),
            outcomes: vec![],
        };
        let d = decide_case(&c, &serial());
        assert_ne!(d.verdicts[0].verdict, Verdict::NeedsRestart);
        assert!(!d.user.keeps_supplementary_groups);
        assert!(d.events.iter().any(|e| e.name == "groups-dropped"));
    }

    #[test]
    fn late_group_fix_asks_for_the_first_boot_hook() {
        let c = Case {
            now: proc_entry(1000, 1000, &[]),
            name: Some("node"),
            member_before: vec![],
            member_after: vec![20],
            node: node(65534, 20, 0o660),
            outcomes: vec![outcome(20, "dialout", true, true)],
        };
        let d = decide_case(&c, &serial());
        assert!(d.fixed_late);
        assert_eq!(
            d.changes,
            vec!["created group dialout (gid 20), added node"]
        );
        let root = Case {
            now: proc_entry(0, 0, &[]),
            ..c
        };
        assert!(!decide_case(&root, &serial()).fixed_late);
    }

    /// s6 with several services: one device verdict per device, each
    /// judged on the one detected service.
    #[test]
    fn several_devices_each_get_a_verdict() {
        let devices = vec![
            serial()[0].clone(),
            DeviceTarget {
                path: "/dev/dri/renderD128".into(),
                ct_path: "/dev/dri/renderD128".into(),
            },
        ];
        let report = CtReport {
            name: Some("app".into()),
            member_of_before: vec![20, 107],
            member_of_after: vec![20, 107],
            nodes: vec![Some(node(65534, 20, 0o660)), Some(node(65534, 107, 0o660))],
            ..CtReport::default()
        };
        let p = proc_entry(1000, 1000, &[20]);
        let host = GroupIndex::default();
        let d = decide(&Seen {
            detected: &p,
            now: &p,
            devices: &devices,
            report: &report,
            host: &host,
            detected_ms: 1,
            at: 1,
        });
        assert_eq!(d.verdicts.len(), 2);
        assert_eq!(d.verdicts[0].verdict, Verdict::Ok);
        // in render (107) by /etc/group but the process lacks it: it keeps
        // groups partly, which counts as dropped.
        assert_eq!(d.verdicts[1].verdict, Verdict::NoAccess);
    }

    /// Host render 993 is `render` 107 inside: the request names GIDs by
    /// the host's group only for 1:1 passthroughs; a collision is reported.
    #[test]
    fn render_gid_collision_is_reported() {
        let mut host = GroupIndex::default();
        host.by_name.insert("render".into(), 993);
        host.by_gid.insert(993, "render".into());
        let map = IdMap::identity();
        let req = request(1000, &serial(), &[Some(20), Some(993)], &host, &map);
        assert_eq!(req.want_gids, vec![20, 993]);
        assert_eq!(req.names.get(&993).map(String::as_str), Some("render"));
        assert_eq!(req.lookup_gids, vec![993]);
        let report = CtReport {
            name: Some("app".into()),
            names_by_gid: BTreeMap::from([(993, "_ssh".to_string())]),
            ..CtReport::default()
        };
        let p = proc_entry(1000, 1000, &[]);
        let d = decide(&Seen {
            detected: &p,
            now: &p,
            devices: &[],
            report: &report,
            host: &host,
            detected_ms: 1,
            at: 1,
        });
        assert_eq!(d.collisions.len(), 1);
        assert!(d.events.iter().any(|e| e.name == "group-collision"));
    }
}
