//! Replug without restart: which running containers and devices a udev
//! event concerns, and what to do for each (cgroup rules to add or take
//! away, the node to put at the container's path or remove, its owner and
//! mode), then the state change. Pure; `phase::udev` gathers and applies.

use crate::model::access::{judge, Creds, NodeStat};
use crate::model::device::{
    check, check_container_path, classify, container_gid, Declared, DeviceSource, Node, NodeKind,
};
use crate::model::event::Event;
use crate::model::policy::DeviceMethod;
use crate::model::pveconf::{DevEntry, PveConfig};
use crate::model::runtime::IdMap;
use crate::model::state::{DeviceVerdict, HotplugAction, HotplugRecord, Outcome, State, Verdict};

/// A udev event as `pct-passthrough udev <action> <devnode>` received it,
/// with what udev puts in the environment of a RUN program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdevEvent {
    pub action: HotplugAction,
    /// `/dev/ttyUSB1`.
    pub devnode: String,
    /// `MAJOR`/`MINOR`, when udev gave them.
    pub numbers: Option<(u32, u32)>,
    /// `DEVLINKS`: the device's links (by-id, by-path); on `remove` the
    /// links are already gone from `/dev`, so this is how a by-id path is
    /// recognised.
    pub devlinks: Vec<String>,
}

impl UdevEvent {
    /// From the command's arguments and udev's environment values.
    pub fn new(
        action: HotplugAction,
        devnode: &str,
        major: Option<&str>,
        minor: Option<&str>,
        devlinks: Option<&str>,
    ) -> UdevEvent {
        let num = |s: Option<&str>| s.and_then(|s| s.trim().parse::<u32>().ok());
        UdevEvent {
            action,
            devnode: devnode.to_string(),
            numbers: num(major).zip(num(minor)),
            devlinks: devlinks
                .unwrap_or_default()
                .split_ascii_whitespace()
                .map(str::to_string)
                .collect(),
        }
    }
}

/// One declared device of a running container and the node its path
/// resolves to now (`None`: missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNow {
    pub declared: Declared,
    pub node: Option<Node>,
}

/// `c 188:1` from numbers.
fn rule_id(major: u32, minor: u32) -> String {
    format!("c {major}:{minor}")
}

/// Does `ev` concern `d`? An `add` concerns a device whose path resolves
/// now to the event's node (by name, or by char numbers); a `remove` one
/// whose path no longer resolves and that named the node: the path is the
/// node or one of its links, or the last hotplug put exactly this node (or
/// its numbers) there.
pub fn concerns(ev: &UdevEvent, d: &DeviceNow, last: Option<&HotplugRecord>) -> bool {
    match ev.action {
        HotplugAction::Add => d.node.as_ref().is_some_and(|n| {
            n.resolved == ev.devnode
                || (n.kind == NodeKind::Char && ev.numbers == Some((n.major, n.minor)))
        }),
        HotplugAction::Remove => {
            d.node.is_none()
                && (d.declared.path == ev.devnode
                    || ev.devlinks.contains(&d.declared.path)
                    || last.is_some_and(|r| {
                        r.action == HotplugAction::Add
                            && (r.node == ev.devnode
                                || ev
                                    .numbers
                                    .is_some_and(|(a, b)| r.rule_id == Some(rule_id(a, b))))
                    }))
        }
    }
}

/// What a running container is, for the plan.
#[derive(Debug, Clone)]
pub struct CtFacts<'a> {
    pub conf: &'a PveConfig,
    /// The container's device cgroup allows every device (Proxmox's
    /// user-namespaced containers: `devices.allow = a`): no rule to change.
    pub allows_all: bool,
    /// init's `uid_map` and `gid_map`.
    pub uid_map: &'a IdMap,
    pub gid_map: &'a IdMap,
    pub state: Option<&'a State>,
}

/// Where the node put at the container's path comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A bind of the host node (`lxc.mount.entry` form): its owner and mode
    /// are the host node's, as at start.
    Bind {
        host_node: String,
        major: u32,
        minor: u32,
    },
    /// A private node (`devN` form), made in a detached tmpfs with the
    /// owner (host IDs) and mode Proxmox's start gives it.
    Private {
        major: u32,
        minor: u32,
        uid: u32,
        gid: u32,
        mode: u32,
    },
}

/// One thing to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `lxc-cgroup -n <vmid> devices.allow <rule>`.
    Allow(String),
    /// `lxc-cgroup -n <vmid> devices.deny <rule>`.
    Deny(String),
    /// Detach whatever is mounted at `ct_path` and mount the source there.
    Place { ct_path: String, source: Source },
    /// Detach whatever is mounted at `ct_path` and unlink the leaf.
    Remove { ct_path: String },
}

/// The plan for one device of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    pub path: String,
    pub ct_path: String,
    pub action: HotplugAction,
    pub node: String,
    pub rule_id: Option<String>,
    pub steps: Vec<Step>,
    /// Why nothing is done (a failed check); the record says so.
    pub refusal: Option<String>,
    /// Owner, group and mode the node has inside after the steps.
    pub inside: Option<NodeStat>,
}

/// Plans what `ev` means for the device `d` of a container.
pub fn plan(ev: &UdevEvent, d: &DeviceNow, f: &CtFacts) -> DevicePlan {
    let decl = &d.declared;
    let last = f
        .state
        .and_then(|s| s.hotplug_for(&decl.path, &decl.ct_path));
    let mut p = DevicePlan {
        path: decl.path.clone(),
        ct_path: decl.ct_path.clone(),
        action: ev.action,
        node: ev.devnode.clone(),
        rule_id: None,
        steps: Vec::new(),
        refusal: None,
        inside: None,
    };
    if let Err(e) = check_container_path(&decl.ct_path) {
        p.refusal = Some(e);
        return p;
    }
    match (ev.action, d.node.as_ref()) {
        (HotplugAction::Add, Some(n)) => plan_add(&mut p, decl, n, last, f),
        (HotplugAction::Add, None) => {
            p.refusal = Some(format!("{} does not resolve to a node", decl.path));
        }
        (HotplugAction::Remove, _) => plan_remove(&mut p, ev, last, f),
    }
    p
}

fn plan_add(
    p: &mut DevicePlan,
    decl: &Declared,
    n: &Node,
    last: Option<&HotplugRecord>,
    f: &CtFacts,
) {
    if let Err(e) = check(&decl.path, n, decl.allow_dangerous) {
        p.refusal = Some(e);
        return;
    }
    if n.kind != NodeKind::Char {
        p.refusal = Some(format!(
            "{} is not a char device; hotplug handles tty and DRM nodes",
            n.resolved
        ));
        return;
    }
    let id = n.rule_id();
    p.node = n.resolved.clone();
    p.rule_id = Some(id.clone());
    let source = match decl.method {
        DeviceMethod::Bind => Source::Bind {
            host_node: n.resolved.clone(),
            major: n.major,
            minor: n.minor,
        },
        DeviceMethod::Dev => private_source(decl, n, f),
    };
    if !f.allows_all {
        // A replug whose remove event never came: take the old rule away.
        if let Some(old) = last
            .filter(|r| r.action == HotplugAction::Add)
            .and_then(|r| r.rule_id.as_ref())
            .filter(|old| **old != id)
        {
            p.steps.push(Step::Deny(format!("{old} rwm")));
        }
        let access = match &source {
            Source::Bind { .. } => "rwm",
            Source::Private { .. } => "rw",
        };
        p.steps.push(Step::Allow(format!("{id} {access}")));
        if dev_entry(decl, f).is_some_and(|e| e.deny_write) {
            p.steps.push(Step::Deny(format!("{id} w")));
        }
    }
    p.inside = Some(inside_stat(&source, n, f));
    p.steps.push(Step::Place {
        ct_path: decl.ct_path.clone(),
        source,
    });
}

fn plan_remove(p: &mut DevicePlan, ev: &UdevEvent, last: Option<&HotplugRecord>, f: &CtFacts) {
    let numbers = ev
        .numbers
        .map(|(a, b)| rule_id(a, b))
        .or_else(|| last.and_then(|r| r.rule_id.clone()));
    p.rule_id = numbers.clone();
    if !f.allows_all {
        if let Some(id) = numbers {
            p.steps.push(Step::Deny(format!("{id} rwm")));
        }
    }
    p.steps.push(Step::Remove {
        ct_path: p.ct_path.clone(),
    });
}

/// The `devN` entry behind a device, if it is one.
fn dev_entry(decl: &Declared, f: &CtFacts) -> Option<DevEntry> {
    match decl.source {
        DeviceSource::Dev(i) => f.conf.dev_entries().into_iter().find(|e| e.index == i),
        _ => None,
    }
}

/// Proxmox's private node: `uid`/`gid` of the `devN` (container IDs,
/// default 0; a policy device gets its class's group, as pre-start gives
/// it) mapped to the host, an ID outside the map used unchanged; `mode`
/// default 0660.
fn private_source(decl: &Declared, n: &Node, f: &CtFacts) -> Source {
    let entry = dev_entry(decl, f);
    let (uid, gid, mode) = match &entry {
        Some(e) => (
            e.uid.unwrap_or(0),
            e.gid.unwrap_or(0),
            e.mode
                .as_deref()
                .and_then(|m| u32::from_str_radix(m, 8).ok())
                .unwrap_or(0o660),
        ),
        None => {
            let groups = f.state.map(|s| &s.container_groups);
            let gid = container_gid(classify(&decl.path, Some(n)), |name| {
                groups.and_then(|g| g.get(name).copied())
            });
            (0, gid.unwrap_or(0), 0o660)
        }
    };
    Source::Private {
        major: n.major,
        minor: n.minor,
        uid: f.uid_map.to_host(uid).unwrap_or(uid),
        gid: f.gid_map.to_host(gid).unwrap_or(gid),
        mode,
    }
}

/// The kernel's overflow ID: what an unmapped host ID shows as inside.
const OVERFLOW: u32 = 65534;

fn inside_stat(source: &Source, n: &Node, f: &CtFacts) -> NodeStat {
    let (uid, gid, mode) = match source {
        Source::Bind { .. } => (n.uid, n.gid, n.mode),
        Source::Private { uid, gid, mode, .. } => (*uid, *gid, *mode),
    };
    NodeStat {
        uid: f.uid_map.to_inside(uid).unwrap_or(OVERFLOW),
        gid: f.gid_map.to_inside(gid).unwrap_or(OVERFLOW),
        mode: 0o020_000 | (mode & 0o7777),
        is_char_device: true,
    }
}

/// The verdict after the plan ran: `missing` once removed; after an add,
/// whether the recorded service user can open the node as placed.
pub fn verdict_after(p: &DevicePlan, state: Option<&State>, ok: bool) -> DeviceVerdict {
    let (verdict, detail) = match (p.action, ok, &p.inside) {
        (HotplugAction::Remove, true, _) => (
            Verdict::Missing,
            format!("unplugged: {} removed inside", p.ct_path),
        ),
        (HotplugAction::Add, true, Some(n)) => match state.and_then(|s| s.runtime_user.as_ref()) {
            Some(u) => {
                let c = Creds {
                    uid: u.uid,
                    gid: u.gid,
                    groups: u.groups.clone(),
                };
                let keeps = Some(u.keeps_supplementary_groups);
                let j = judge(Some(n), &c, c.groups.contains(&n.gid), keeps);
                (j.verdict, format!("replugged: {}", j.detail))
            }
            None => (
                Verdict::Unknown,
                "replugged; no service user recorded yet".into(),
            ),
        },
        _ => (Verdict::Unknown, "hotplug did not complete".into()),
    };
    DeviceVerdict {
        path: p.path.clone(),
        container_path: Some(p.ct_path.clone()),
        verdict,
        detail,
    }
}

/// The state change: the device's last hotplug record and its verdict.
pub fn record(state: &mut State, p: &DevicePlan, outcome: Outcome, detail: &str, at: u64) {
    let v = verdict_after(p, Some(state), outcome != Outcome::Failed);
    state.record_hotplug(HotplugRecord {
        path: p.path.clone(),
        container_path: p.ct_path.clone(),
        action: p.action,
        node: p.node.clone(),
        rule_id: p.rule_id.clone(),
        outcome,
        detail: detail.to_string(),
        at,
    });
    if outcome == Outcome::Failed {
        return;
    }
    match state.devices.iter_mut().find(|d| d.path == v.path) {
        Some(d) => *d = v,
        None => state.devices.push(v),
    }
}

/// The line a plan's result gets in syslog.
pub fn event_for(vmid: u32, p: &DevicePlan, result: &Result<(), String>) -> Event {
    let what = match (p.action, &p.rule_id) {
        (HotplugAction::Add, Some(id)) => format!("{} ({id}) put at {}", p.node, p.ct_path),
        (HotplugAction::Add, None) => format!("{} put at {}", p.node, p.ct_path),
        (HotplugAction::Remove, _) => format!("{} removed from {}", p.node, p.ct_path),
    };
    match (result, &p.refusal) {
        (_, Some(why)) => Event::warn(
            "hotplug-refused",
            format!("container {vmid}: {} {}: not done: {why}", p.action, p.path),
        ),
        (Ok(()), None) => Event::info("hotplug", format!("container {vmid}: {}: {what}", p.path)),
        (Err(e), None) => Event::warn(
            "hotplug-failed",
            format!("container {vmid}: {} {}: {e}", p.action, p.path),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::device::declared;
    use crate::model::state::RuntimeUser;

    fn node(resolved: &str, major: u32, minor: u32) -> Node {
        Node {
            resolved: resolved.into(),
            kind: NodeKind::Char,
            major,
            minor,
            uid: 0,
            gid: 20,
            mode: 0o660,
        }
    }

    const BYID: &str = "/dev/serial/by-id/usb-ITead-if00-port0";

    fn devices(conf: &PveConfig, n: Option<Node>) -> Vec<DeviceNow> {
        declared(conf, None)
            .into_iter()
            .map(|declared| DeviceNow {
                declared,
                node: n.clone(),
            })
            .collect()
    }

    fn ev(action: &str, devnode: &str, mm: Option<(&str, &str)>, links: &str) -> UdevEvent {
        UdevEvent::new(
            HotplugAction::parse(action).unwrap(),
            devnode,
            mm.map(|m| m.0),
            mm.map(|m| m.1),
            Some(links),
        )
    }

    fn unpriv_map() -> IdMap {
        IdMap::parse("0 100000 20\n20 20 1\n21 100021 65515\n").unwrap()
    }

    #[test]
    fn an_add_concerns_the_device_whose_path_resolves_to_the_node() {
        let conf = PveConfig::parse(&format!(
            "lxc.mount.entry: {BYID} dev/ttyUSB0 none bind,optional,create=file\n"
        ));
        let d = &devices(&conf, Some(node("/dev/ttyUSB1", 188, 1)))[0];
        assert!(concerns(&ev("add", "/dev/ttyUSB1", None, ""), d, None));
        assert!(concerns(
            &ev("add", "/dev/other", Some(("188", "1")), ""),
            d,
            None
        ));
        assert!(!concerns(
            &ev("add", "/dev/ttyUSB2", Some(("188", "2")), ""),
            d,
            None
        ));
        // Another device's event, or a remove while the path resolves.
        assert!(!concerns(
            &ev("remove", "/dev/ttyUSB1", None, BYID),
            d,
            None
        ));
    }

    #[test]
    fn a_remove_concerns_a_missing_device_by_node_link_or_last_record() {
        let conf = PveConfig::parse(&format!("dev0: {BYID}\n"));
        let d = &devices(&conf, None)[0];
        assert!(concerns(
            &ev(
                "remove",
                "/dev/ttyUSB0",
                None,
                &format!("/dev/serial/by-path/x {BYID}")
            ),
            d,
            None
        ));
        assert!(!concerns(&ev("remove", "/dev/ttyUSB0", None, ""), d, None));
        let rec = HotplugRecord {
            path: BYID.into(),
            container_path: BYID.into(),
            action: HotplugAction::Add,
            node: "/dev/ttyUSB1".into(),
            rule_id: Some("c 188:1".into()),
            outcome: Outcome::Ok,
            detail: String::new(),
            at: 1,
        };
        assert!(concerns(
            &ev("remove", "/dev/ttyUSB1", None, ""),
            d,
            Some(&rec)
        ));
        assert!(concerns(
            &ev("remove", "/dev/x", Some(("188", "1")), ""),
            d,
            Some(&rec)
        ));
        assert!(!concerns(
            &ev("remove", "/dev/ttyUSB2", Some(("188", "2")), ""),
            d,
            Some(&rec)
        ));
        // The kernel name itself as the declared path.
        let conf = PveConfig::parse("dev0: /dev/ttyUSB0\n");
        assert!(concerns(
            &ev("remove", "/dev/ttyUSB0", None, ""),
            &devices(&conf, None)[0],
            None
        ));
    }

    fn facts<'a>(
        conf: &'a PveConfig,
        map: &'a IdMap,
        all: bool,
        st: Option<&'a State>,
    ) -> CtFacts<'a> {
        CtFacts {
            conf,
            allows_all: all,
            uid_map: map,
            gid_map: map,
            state: st,
        }
    }

    #[test]
    fn bind_add_on_a_deny_list_container_allows_the_new_rule_and_binds_the_host_node() {
        let conf = PveConfig::parse(&format!(
            "lxc.mount.entry: {BYID} dev/ttyUSB0 none bind,optional,create=file\n"
        ));
        let id = IdMap::identity();
        let d = &devices(&conf, Some(node("/dev/ttyUSB1", 188, 1)))[0];
        let p = plan(
            &ev("add", "/dev/ttyUSB1", None, ""),
            d,
            &facts(&conf, &id, false, None),
        );
        assert_eq!(p.refusal, None);
        assert_eq!(
            p.steps,
            vec![
                Step::Allow("c 188:1 rwm".into()),
                Step::Place {
                    ct_path: "/dev/ttyUSB0".into(),
                    source: Source::Bind {
                        host_node: "/dev/ttyUSB1".into(),
                        major: 188,
                        minor: 1
                    }
                }
            ]
        );
        assert_eq!(p.rule_id.as_deref(), Some("c 188:1"));
        // An add after an add with other numbers (the remove was missed).
        let mut st = State::new(105);
        st.record_hotplug(HotplugRecord {
            path: BYID.into(),
            container_path: "/dev/ttyUSB0".into(),
            action: HotplugAction::Add,
            node: "/dev/ttyUSB0".into(),
            rule_id: Some("c 188:0".into()),
            outcome: Outcome::Ok,
            detail: String::new(),
            at: 1,
        });
        let p = plan(
            &ev("add", "/dev/ttyUSB1", None, ""),
            d,
            &facts(&conf, &id, false, Some(&st)),
        );
        assert_eq!(p.steps[0], Step::Deny("c 188:0 rwm".into()));
        assert_eq!(p.steps[1], Step::Allow("c 188:1 rwm".into()));
    }

    #[test]
    fn devn_add_makes_a_private_node_with_the_mapped_owner_and_mode() {
        let conf = PveConfig::parse(&format!("unprivileged: 1\ndev0: {BYID},gid=20,mode=0640\n"));
        let map = unpriv_map();
        let d = &devices(&conf, Some(node("/dev/ttyUSB1", 188, 1)))[0];
        let p = plan(
            &ev("add", "/dev/ttyUSB1", None, ""),
            d,
            &facts(&conf, &map, true, None),
        );
        // Allows all devices: no rule.
        assert_eq!(
            p.steps,
            vec![Step::Place {
                ct_path: BYID.into(),
                source: Source::Private {
                    major: 188,
                    minor: 1,
                    uid: 100000,
                    gid: 20,
                    mode: 0o640
                }
            }]
        );
        let inside = p.inside.unwrap();
        assert_eq!(
            (inside.uid, inside.gid, inside.mode & 0o777),
            (0, 20, 0o640)
        );
        // deny-write on a deny-list container: allow rw, deny w.
        let conf = PveConfig::parse(&format!("dev0: {BYID},deny-write=1\n"));
        let id = IdMap::identity();
        let p = plan(
            &ev("add", "/dev/ttyUSB1", None, ""),
            &devices(&conf, Some(node("/dev/ttyUSB1", 188, 1)))[0],
            &facts(&conf, &id, false, None),
        );
        assert_eq!(p.steps[0], Step::Allow("c 188:1 rw".into()));
        assert_eq!(p.steps[1], Step::Deny("c 188:1 w".into()));
        assert!(matches!(
            p.steps[2],
            Step::Place {
                source: Source::Private {
                    uid: 0,
                    gid: 0,
                    mode: 0o660,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn remove_takes_the_rule_away_and_removes_the_node_inside() {
        let conf = PveConfig::parse(&format!("dev0: {BYID}\n"));
        let id = IdMap::identity();
        let d = &devices(&conf, None)[0];
        let p = plan(
            &ev("remove", "/dev/ttyUSB0", Some(("188", "0")), BYID),
            d,
            &facts(&conf, &id, false, None),
        );
        assert_eq!(
            p.steps,
            vec![
                Step::Deny("c 188:0 rwm".into()),
                Step::Remove {
                    ct_path: BYID.into()
                }
            ]
        );
        let p = plan(
            &ev("remove", "/dev/ttyUSB0", None, BYID),
            d,
            &facts(&conf, &id, true, None),
        );
        assert_eq!(
            p.steps,
            vec![Step::Remove {
                ct_path: BYID.into()
            }]
        );
        let mut st = State::new(105);
        record(&mut st, &p, Outcome::Changed, "removed", 7);
        assert_eq!(st.devices[0].verdict, Verdict::Missing);
        assert_eq!(st.hotplug.len(), 1);
        assert_eq!(st.hotplug[0].action, HotplugAction::Remove);
    }

    #[test]
    fn dangerous_or_odd_nodes_are_refused() {
        let conf = PveConfig::parse("dev0: /dev/mem\n");
        let id = IdMap::identity();
        let p = plan(
            &ev("add", "/dev/mem", None, ""),
            &devices(&conf, Some(node("/dev/mem", 1, 1)))[0],
            &facts(&conf, &id, false, None),
        );
        assert!(
            p.refusal.as_deref().unwrap().contains("host's memory"),
            "{p:?}"
        );
        assert!(p.steps.is_empty());
        let e = event_for(105, &p, &Ok(()));
        assert_eq!(e.name, "hotplug-refused");
    }

    #[test]
    fn an_add_gives_the_verdict_for_the_recorded_user_and_keeps_one_record_per_device() {
        let conf = PveConfig::parse(&format!(
            "unprivileged: 1\nlxc.mount.entry: {BYID} dev/ttyUSB0 none bind,optional,create=file\n"
        ));
        let map = unpriv_map();
        let mut st = State::new(105);
        st.runtime_user = Some(RuntimeUser {
            uid: 1000,
            gid: 1000,
            groups: vec![20],
            keeps_supplementary_groups: true,
            ..RuntimeUser::default()
        });
        let d = &devices(&conf, Some(node("/dev/ttyUSB1", 188, 1)))[0];
        let p = plan(
            &ev("add", "/dev/ttyUSB1", None, ""),
            d,
            &facts(&conf, &map, true, Some(&st)),
        );
        record(&mut st, &p, Outcome::Changed, "placed", 8);
        record(&mut st, &p, Outcome::Changed, "placed again", 9);
        assert_eq!(st.hotplug.len(), 1);
        assert_eq!(st.hotplug[0].detail, "placed again");
        assert_eq!(st.devices[0].verdict, Verdict::Ok, "{:?}", st.devices);
        // A failed hotplug keeps the last verdict.
        st.devices[0].verdict = Verdict::NeedsRestart;
        record(&mut st, &p, Outcome::Failed, "boom", 10);
        assert_eq!(st.devices[0].verdict, Verdict::NeedsRestart);
        assert_eq!(st.hotplug[0].outcome, Outcome::Failed);
    }
}
