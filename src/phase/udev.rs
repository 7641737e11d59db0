//! `pct-passthrough udev <add|remove> <devnode>`, run by the package's udev
//! rule: finds the running containers that want the node (reads only; for a
//! node nobody wants it exits here, having written nothing and started no
//! process), then hands the work to a detached worker and returns, since
//! udev kills slow RUN programs. The worker, under one lock, decides again
//! (events for the old and the new node may race) and applies
//! `model::hotplug`'s plan: cgroup rules, the node inside, state, syslog.

use std::time::Duration;

use crate::model::device::declared;
use crate::model::hotplug::{self, CtFacts, DeviceNow, DevicePlan, Step, UdevEvent};
use crate::model::lxcconf::LxcConfig;
use crate::model::runtime::IdMap;
use crate::model::state::{HotplugAction, Outcome, State};
use crate::model::text::Limits;
use crate::paths::{Paths, Vmid};
use crate::phase::io;
use crate::sys::log::Log;
use crate::sys::{devnode, hotplug as hp, proc, worker};

/// How long the worker may take in all (it is killed then).
const WORKER_BOUND: Duration = Duration::from_secs(30);

/// A running container and the devices of it an event concerns.
struct Wanted {
    vmid: Vmid,
    devices: Vec<DeviceNow>,
}

/// Runs the udev entry; returns the exit code (udev only logs it).
pub fn run(paths: &Paths, action: &str, devnode: &str) -> u8 {
    let Some(action) = HotplugAction::parse(action) else {
        // change, bind, move...: nothing to do.
        return 0;
    };
    let env = |k: &str| std::env::var(k).ok();
    let ev = UdevEvent::new(
        action,
        devnode,
        env("MAJOR").as_deref(),
        env("MINOR").as_deref(),
        env("DEVLINKS").as_deref(),
    );
    if gather(paths, &ev).is_empty() {
        return 0;
    }
    let p = paths.clone();
    match worker::detach(&[], WORKER_BOUND, move || work(&p, &ev)) {
        Ok(_) => 0,
        Err(e) => {
            let mut log = Log::new("-", "udev");
            log.error("hotplug-failed", format!("{action} {devnode}: {e:#}"));
            1
        }
    }
}

/// Containers on this node, in VMID order.
fn vmids(paths: &Paths) -> Vec<Vmid> {
    let Ok(rd) = std::fs::read_dir(paths.host("/etc/pve/lxc")) else {
        return Vec::new();
    };
    let mut out: Vec<Vmid> = rd
        .filter_map(Result::ok)
        .filter_map(|e| Vmid::parse(e.file_name().to_str()?.strip_suffix(".conf")?))
        .collect();
    out.sort();
    out
}

/// The running containers using the hook (its hookscript, or a policy)
/// whose devices `ev` concerns, each path resolved now. Reads only.
fn gather(paths: &Paths, ev: &UdevEvent) -> Vec<Wanted> {
    let mut out = Vec::new();
    for vmid in vmids(paths) {
        if !hp::running(vmid) {
            continue;
        }
        let Ok(conf) = io::read_conf_main(paths, vmid) else {
            continue;
        };
        let Ok(policy) = io::read_policy(paths, vmid) else {
            continue;
        };
        let ours = conf
            .hookscript()
            .is_some_and(|h| h.ends_with("pct-passthrough"));
        if !(ours || policy.is_some()) || policy.as_ref().is_some_and(|p| !p.enabled) {
            continue;
        }
        let mut state: Option<Option<State>> = None;
        let mut devices = Vec::new();
        for d in declared(&conf, policy.as_ref()) {
            let node = devnode::node(paths, &d.path).ok().flatten();
            let now = DeviceNow { declared: d, node };
            let last = if ev.action == HotplugAction::Remove && now.node.is_none() {
                state
                    .get_or_insert_with(|| io::load_state(paths, vmid).state)
                    .as_ref()
                    .and_then(|s| s.hotplug_for(&now.declared.path, &now.declared.ct_path))
                    .cloned()
            } else {
                None
            };
            if hotplug::concerns(ev, &now, last.as_ref()) {
                devices.push(now);
            }
        }
        if !devices.is_empty() {
            out.push(Wanted { vmid, devices });
        }
    }
    out
}

/// The detached worker: one at a time on the node, deciding again under the
/// lock, then acting per container.
fn work(paths: &Paths, ev: &UdevEvent) {
    let lock = paths.lock_dir().join("hotplug.lock");
    // The lock's directory is made with it.
    let _g = match crate::sys::lock::flock_exclusive(paths, &lock, Duration::from_secs(20))
        .map_err(|e| e.to_string())
    {
        Ok(g) => g,
        Err(e) => {
            Log::new("-", "udev").warn("hotplug-failed", e);
            return;
        }
    };
    for w in gather(paths, ev) {
        apply_container(paths, ev, &w);
    }
}

fn apply_container(paths: &Paths, ev: &UdevEvent, w: &Wanted) {
    let mut log = Log::new(w.vmid, "udev");
    let pinned = match proc::find_and_pin(w.vmid) {
        Ok(p) => p,
        Err(e) => {
            log.warn(
                "hotplug-failed",
                format!(
                    "{} {}: container not reachable: {e:#}",
                    ev.action, ev.devnode
                ),
            );
            return;
        }
    };
    let (uid_map, gid_map) = if pinned.own_userns {
        match proc::read_id_maps(pinned.pid) {
            Ok(m) => m,
            Err(e) => {
                log.warn("hotplug-failed", format!("{e:#}"));
                return;
            }
        }
    } else {
        (IdMap::identity(), IdMap::identity())
    };
    let Ok(conf) = io::read_conf_main(paths, w.vmid) else {
        return;
    };
    let lxc = crate::sys::fs::read_text(paths, &paths.lxc_config(w.vmid), Limits::HOST_FILE)
        .ok()
        .flatten()
        .unwrap_or_default();
    let lxc = LxcConfig::parse(&lxc);
    let allows_all = conf.userns()
        || ["lxc.cgroup2.devices.allow", "lxc.cgroup.devices.allow"]
            .iter()
            .any(|k| lxc.values(k).any(|v| v.trim() == "a"));
    let state = io::load_state(paths, w.vmid).state;
    let facts = CtFacts {
        conf: &conf,
        allows_all,
        uid_map: &uid_map,
        gid_map: &gid_map,
        state: state.as_ref(),
    };
    let mut done: Vec<(DevicePlan, Outcome, String)> = Vec::new();
    for d in &w.devices {
        let p = hotplug::plan(ev, d, &facts);
        let result = if p.refusal.is_some() {
            Ok(())
        } else {
            let root_ids = (
                uid_map.to_host(0).unwrap_or(0),
                gid_map.to_host(0).unwrap_or(0),
            );
            apply(w.vmid, paths, &pinned.pidfd, root_ids, &p)
        };
        log.audit(&hotplug::event_for(w.vmid.get(), &p, &result));
        let (outcome, detail) = match (&p.refusal, &result) {
            (Some(why), _) => (Outcome::Refused, why.clone()),
            (None, Ok(())) => (Outcome::Changed, describe(&p)),
            (None, Err(e)) => (Outcome::Failed, e.clone()),
        };
        done.push((p, outcome, detail));
    }
    let at = io::now_secs();
    if let Err(e) = io::update_state(paths, w.vmid, |s| {
        for (p, outcome, detail) in &done {
            hotplug::record(s, p, *outcome, detail, at);
        }
    }) {
        log.warn("state-write-failed", format!("{e:#}"));
    }
}

/// The steps in words, for the state.
fn describe(p: &DevicePlan) -> String {
    let words: Vec<String> = p
        .steps
        .iter()
        .map(|s| match s {
            Step::Allow(r) => format!("allowed {r}"),
            Step::Deny(r) => format!("denied {r}"),
            Step::Place { ct_path, .. } => format!("put the node at {ct_path}"),
            Step::Remove { ct_path } => format!("removed {ct_path}"),
        })
        .collect();
    words.join(", ")
}

/// Runs a plan's steps in order; the first failure stops it.
fn apply(
    vmid: Vmid,
    paths: &Paths,
    pidfd: &std::os::fd::OwnedFd,
    root_ids: (u32, u32),
    p: &DevicePlan,
) -> Result<(), String> {
    for step in &p.steps {
        let r = match step {
            Step::Allow(rule) => hp::lxc_cgroup(vmid, "devices.allow", rule),
            Step::Deny(rule) => hp::lxc_cgroup(vmid, "devices.deny", rule),
            Step::Place { ct_path, source } => hp::source_mount(paths, source)
                .and_then(|fd| hp::place(pidfd, root_ids, ct_path, &fd)),
            Step::Remove { ct_path } => hp::remove(pidfd, root_ids, ct_path),
        };
        r.map_err(|e| format!("{e:#}"))?;
    }
    Ok(())
}
