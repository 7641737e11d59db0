//! post-start: find and pin the container's init, hand control back to
//! Proxmox at once, and in a detached worker detect the runtime user, apply
//! the Group rules inside the container, verify device access, record state.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use caps::Capability;
use serde::{Deserialize, Serialize};

use super::pre_start::{read_conf_main, read_policy};
use super::Ctx;
use crate::model::access::{self, Creds, NodeStat, OVERFLOW_ID};
use crate::model::escape::name_refusal;
use crate::model::group::{self, GroupOutcome, GroupWant};
use crate::model::passwd;
use crate::model::prestart;
use crate::model::pveconf::PveConfig;
use crate::model::runtime::{self, Choice, IdMap, ProcEntry, Stability};
use crate::model::state::{DevFallback, DeviceVerdict, LastRun, RuntimeUser, State};
use crate::model::text::Limits;
use crate::paths::{Paths, Vmid};
use crate::sys::fs::{read_text, replace_file};
use crate::sys::lock::{flock_exclusive, LockError};
use crate::sys::log::Log;
use crate::sys::ns::{self, read_untrusted, Resolve, Target};
use crate::sys::proc::{self, Pinned};
use crate::sys::worker;

/// Default time bound of the worker (policy `detect_timeout`).
pub const DEFAULT_BOUND_SECS: u32 = 60;
/// Poll interval of the process scan while a drop is likely (the first
/// [`FAST_PHASE`]), then [`POLL_SLOW`] until the bound.
pub const POLL: Duration = Duration::from_millis(25);
pub const POLL_SLOW: Duration = Duration::from_millis(100);
pub const FAST_PHASE: Duration = Duration::from_secs(10);
/// A non-root answer must hold this long before it counts.
pub const STABLE: Duration = Duration::from_millis(150);
/// An all-root container is recorded as root after this long; the worker
/// keeps watching for a later privilege drop until its bound.
pub const ROOT_SETTLE: Duration = Duration::from_secs(3);
/// Bound of one container child (enter, read, edit, stat).
pub const CHILD_BOUND: Duration = Duration::from_secs(10);
/// At most this many processes are read per scan.
pub const MAX_PROCS: usize = 10_000;
/// Host device groups whose container GIDs are recorded for device setup.
pub const DEVICE_GROUPS: &[&str] = &["dialout", "render", "video"];

/// A device the container was given: its host path and where it shows inside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTarget {
    pub path: String,
    pub ct_path: String,
}

/// Devices from `devN` entries, `lxc.mount.entry` binds of `/dev/...` and
/// the policy's `[[device]]` tables, deduplicated by container path.
pub fn devices_of(
    conf: &PveConfig,
    policy_devices: &[(String, Option<String>)],
) -> Vec<DeviceTarget> {
    let mut out: Vec<DeviceTarget> = Vec::new();
    let mut push = |path: String, ct_path: String| {
        if !out.iter().any(|d| d.ct_path == ct_path) {
            out.push(DeviceTarget { path, ct_path });
        }
    };
    for d in conf.dev_entries() {
        push(d.path.clone(), d.path);
    }
    for m in conf.mount_entries() {
        if m.source.starts_with("/dev/") && m.is_bind() {
            let t = m.target.trim_start_matches('/');
            push(m.source.clone(), format!("/{t}"));
        }
    }
    for (path, ct) in policy_devices {
        push(path.clone(), ct.clone().unwrap_or_else(|| path.clone()));
    }
    out
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Everything the worker needs, prepared before the fork.
struct Job {
    paths: Paths,
    vmid: Vmid,
    pinned: Pinned,
    devices: Vec<DeviceTarget>,
    bound: Duration,
    wanted_uid: Option<u32>,
}

pub fn run(ctx: &mut Ctx) -> Result<()> {
    // Only main-section accessors are used here.
    let conf = read_conf_main(ctx)?;
    let policy = read_policy(ctx)?;
    let state_exists = ctx.paths.state(ctx.vmid).exists();
    if policy.is_none() && !state_exists && !prestart::config_has_work(&conf) {
        // Same gate as pre-start: nothing the tool acts on, so nothing to learn.
        return Ok(());
    }
    let policy = policy.unwrap_or_default();
    if !policy.enabled {
        ctx.log.info(
            "disabled",
            "disabled by policy (enabled = false); nothing done",
        );
        return Ok(());
    }
    let pdev: Vec<(String, Option<String>)> = policy
        .devices
        .iter()
        .map(|d| (d.path.get_ref().clone(), d.container_path.clone()))
        .collect();
    let devices = devices_of(&conf, &pdev);
    let pinned = match proc::find_and_pin(ctx.vmid) {
        Ok(p) => p,
        Err(e) => {
            // Not fatal for the start: the container may have exited already.
            ctx.log.warn(
                "no-init",
                format!("cannot pin container {}'s init: {e:#}; runtime-user detection skipped for this start", ctx.vmid),
            );
            return Ok(());
        }
    };
    let bound = Duration::from_secs(u64::from(
        policy.detect_timeout.unwrap_or(DEFAULT_BOUND_SECS),
    ));
    if ctx.mode.dry_run() {
        ctx.log.info(
            "dry-run",
            format!(
                "dry run: init pid {} ({}); a worker would detect the runtime user within {}s and check {} device(s)",
                pinned.pid,
                pinned.found_by,
                bound.as_secs(),
                devices.len()
            ),
        );
        return Ok(());
    }
    let (pid, found_by, ndev) = (pinned.pid, pinned.found_by, devices.len());
    let keep = [pinned.pidfd.as_raw_fd()];
    let job = Job {
        paths: ctx.paths.clone(),
        vmid: ctx.vmid,
        pinned,
        devices,
        bound,
        wanted_uid: policy.runtime_uid,
    };
    let wpid = worker::detach(&keep, bound + Duration::from_secs(15), move || {
        worker_main(job)
    })
    .context("cannot start the post-start worker")?;
    ctx.log.info(
        "worker",
        format!(
            "init pid {pid} pinned ({found_by}); worker {wpid} detects the runtime user and checks {ndev} device(s) within {}s, results in syslog and `pct-passthrough status {}`",
            bound.as_secs(),
            ctx.vmid
        ),
    );
    Ok(())
}

/// The detached worker. Never returns an error: everything goes to syslog
/// and the state.
fn worker_main(job: Job) {
    let mut log = Log::new(job.vmid, "post-start");
    let _guard = match flock_exclusive(&job.paths.worker_lock(job.vmid), Duration::from_secs(5)) {
        Ok(g) => g,
        Err(LockError::Busy { .. }) => {
            log.warn(
                "worker-busy",
                "another post-start worker for this container is still running; this one gives up",
            );
            return;
        }
        Err(e) => {
            log.error("worker-lock", e.to_string());
            return;
        }
    };
    if let Err(e) = detect_and_apply(&job, &mut log) {
        log.error("worker-failed", format!("{e:#}"));
        let _ = update_state(&job.paths, job.vmid, |s| {
            s.last_run = Some(LastRun {
                phase: "post-start".into(),
                outcome: "failed".into(),
                message: format!("{e:#}"),
                at: now_secs(),
            });
        });
    }
}

fn table(job: &Job, uid_map: &IdMap, gid_map: &IdMap) -> Vec<ProcEntry> {
    proc::scan_pidns(&job.pinned.pidns, MAX_PROCS)
        .into_iter()
        .filter_map(|s| runtime::to_entry(s.pid, &s.status, s.start, uid_map, gid_map))
        .collect()
}

fn detect_and_apply(job: &Job, log: &mut Log) -> Result<()> {
    let started = Instant::now();
    let (uid_map, gid_map) = if job.pinned.own_userns {
        proc::read_id_maps(job.pinned.pid)?
    } else {
        (IdMap::identity(), IdMap::identity())
    };
    let own = [std::process::id()];
    let mut stab = Stability::default();
    let mut applied: Option<u32> = None;
    loop {
        if !proc::pidfd_alive(&job.pinned.pidfd) {
            log.info("stopped", "the container stopped before detection finished");
            return Ok(());
        }
        let t = table(job, &uid_map, &gid_map);
        let stable_for = stab.feed(runtime::signature(&t), started.elapsed());
        let timed_out = started.elapsed() >= job.bound;
        match runtime::choose(&t, &own, job.wanted_uid) {
            Choice::User(p) if stable_for >= STABLE || timed_out => {
                if applied != Some(p.uid) {
                    apply(job, log, &uid_map, &gid_map, &p, started)?;
                }
                return Ok(());
            }
            Choice::AllRoot(p) if applied.is_none() && (stable_for >= ROOT_SETTLE || timed_out) => {
                let p = p.unwrap_or(ProcEntry {
                    pid: job.pinned.pid,
                    ct_pid: 1,
                    comm: String::new(),
                    uid: 0,
                    gid: 0,
                    groups: Vec::new(),
                    start: 0,
                });
                apply(job, log, &uid_map, &gid_map, &p, started)?;
                applied = Some(0);
            }
            _ => {}
        }
        if timed_out {
            if applied.is_none() {
                log.warn(
                    "no-user",
                    "no container process found before the time bound",
                );
            }
            return Ok(());
        }
        std::thread::sleep(if started.elapsed() < FAST_PHASE {
            POLL
        } else {
            POLL_SLOW
        });
    }
}

/// What the container child is asked to do.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct CtRequest {
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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct CtReport {
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

/// Runs inside the container (see `sys::ns`): reads passwd and group files
/// defensively, applies the Group rules, stats the device nodes.
pub(crate) fn ct_job(req: &CtRequest) -> Result<CtReport, String> {
    let max = group::LIMITS.max_bytes;
    let mut r = CtReport::default();
    match read_untrusted(None, "/etc/passwd", Resolve::NoSymlinks, max) {
        Ok(Some(b)) => match group::check_text("/etc/passwd", &b) {
            Ok(t) => {
                r.name = passwd::by_uid(&passwd::parse(t), req.uid).map(|e| e.name.clone());
                if let Some(why) = r.name.as_deref().and_then(|n| name_refusal("user", n)) {
                    r.problems.push(format!("/etc/passwd: {why}"));
                    r.name = None;
                }
            }
            Err(e) => r.problems.push(e),
        },
        Ok(None) => r.problems.push("/etc/passwd: not found".into()),
        Err(e) => r.problems.push(e),
    }
    for p in &req.ct_paths {
        let st = ns::stat_untrusted(p).unwrap_or_else(|e| {
            r.problems.push(e);
            None
        });
        r.nodes.push(st.map(|st| NodeStat {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode,
            is_char_device: st.st_mode & libc::S_IFMT == libc::S_IFCHR,
        }));
    }
    let mut wants: Vec<GroupWant> = Vec::new();
    let node_gids = r.nodes.iter().flatten().map(|n| n.gid);
    for gid in req.want_gids.iter().copied().chain(node_gids) {
        if gid == 0 || gid == OVERFLOW_ID || wants.iter().any(|w| w.gid == gid) {
            continue;
        }
        let name = req
            .names
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| format!("pctdev{gid}"));
        wants.push(GroupWant { gid, name });
    }
    // Every read and write below is relative to this one checked directory.
    let etc = match ns::CheckedDir::open("/etc") {
        Ok(Some(d)) => d,
        Ok(None) => {
            r.problems.push("/etc: not found".into());
            return Ok(r);
        }
        Err(e) => {
            r.problems.push(format!("gave up editing groups: {e}"));
            return Ok(r);
        }
    };
    let read = |name: &str| -> Result<Option<String>, String> {
        match etc.read(name, max)? {
            None => Ok(None),
            Some(b) => Ok(Some(
                group::check_text(&format!("/etc/{name}"), &b)?.to_string(),
            )),
        }
    };
    let group_text = match read("group") {
        Ok(Some(t)) => t,
        Ok(None) => {
            r.problems
                .push("/etc/group: not found; not creating one".into());
            return Ok(r);
        }
        Err(e) => {
            r.problems.push(format!("gave up editing groups: {e}"));
            return Ok(r);
        }
    };
    let gshadow = match read("gshadow") {
        Ok(t) => t,
        Err(e) => {
            r.problems.push(format!("gave up editing groups: {e}"));
            return Ok(r);
        }
    };
    let ix = group::index(&group_text);
    if let Some(n) = &r.name {
        r.member_of_before = ix.member_of.get(n).cloned().unwrap_or_default();
    }
    let member = if req.uid == 0 {
        None
    } else {
        r.name.as_deref()
    };
    let edit = match group::ensure_groups(&group_text, gshadow.as_deref(), &wants, member) {
        Ok(e) => e,
        Err(e) => {
            r.problems.push(format!("gave up editing groups: {e}"));
            return Ok(r);
        }
    };
    r.outcomes = edit.outcomes;
    // gshadow first: a group line without its gshadow line is what shadow's
    // tools tolerate; the reverse is not.
    let mut written = group_text.as_str();
    let mut gshadow_failed = false;
    if let Some(t) = &edit.gshadow {
        match etc.replace("gshadow", t.as_bytes(), 0o640) {
            Ok(()) => r.wrote.push("/etc/gshadow".into()),
            Err(e) => {
                r.problems.push(format!("gave up editing groups: {e}"));
                r.outcomes.clear();
                gshadow_failed = true;
            }
        }
    }
    if let (Some(t), false) = (&edit.group, gshadow_failed) {
        match etc.replace("group", t.as_bytes(), 0o644) {
            Ok(()) => {
                r.wrote.push("/etc/group".into());
                written = t.as_str();
            }
            Err(e) => {
                r.problems.push(format!("gave up editing groups: {e}"));
                r.outcomes.clear();
            }
        }
    }
    let after = group::index(written);
    if let Some(n) = &r.name {
        r.member_of_after = after.member_of.get(n).cloned().unwrap_or_default();
    }
    for n in DEVICE_GROUPS {
        if let Some(g) = after.by_name.get(*n) {
            r.groups_by_name.insert((*n).to_string(), *g);
        }
    }
    for g in &req.lookup_gids {
        if let Some(n) = after.by_gid.get(g) {
            match name_refusal("group", n) {
                None => {
                    r.names_by_gid.insert(*g, n.clone());
                }
                Some(why) => r.problems.push(format!("/etc/group: {why}")),
            }
        }
    }
    Ok(r)
}

/// Host-side facts for the request: host group names of device GIDs.
fn host_groups(paths: &Paths) -> group::GroupIndex {
    match read_text(&paths.host("/etc/group"), Limits::HOST_FILE) {
        Ok(Some(t)) => group::index(&t),
        _ => group::GroupIndex::default(),
    }
}

fn host_node_gid(paths: &Paths, path: &str) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(paths.host(path)).ok().map(|m| m.gid())
}

fn apply(
    job: &Job,
    log: &mut Log,
    uid_map: &IdMap,
    gid_map: &IdMap,
    p: &ProcEntry,
    started: Instant,
) -> Result<()> {
    let detected_ms = started.elapsed().as_millis();
    let host = host_groups(&job.paths);
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    let mut want_gids = Vec::new();
    for d in &job.devices {
        let Some(h) = host_node_gid(&job.paths, &d.path) else {
            continue;
        };
        let Some(inside) = gid_map.to_inside(h) else {
            continue;
        };
        if inside == h {
            // A 1:1 passthrough: the group must exist inside.
            want_gids.push(inside);
        }
        let name = if h == 20 {
            Some("dialout".to_string())
        } else {
            host.by_gid.get(&h).cloned()
        };
        if let Some(n) = name.filter(|n| group::valid_name(n)) {
            names.entry(inside).or_insert(n);
        }
    }
    names.entry(20).or_insert_with(|| "dialout".into());
    let lookup_gids: Vec<u32> = DEVICE_GROUPS
        .iter()
        .filter_map(|n| host.by_name.get(*n).copied())
        .collect();
    let req = CtRequest {
        uid: p.uid,
        ct_paths: job.devices.iter().map(|d| d.ct_path.clone()).collect(),
        names,
        want_gids,
        lookup_gids,
    };
    let target = Target::Running {
        pidfd: &job.pinned.pidfd,
        userns: job.pinned.own_userns,
    };
    let report = ns::run_in_container(&target, &[Capability::CAP_CHOWN], CHILD_BOUND, || {
        ct_job(&req)
    })
    .context("inside the container")?;
    for pr in &report.problems {
        log.warn("container-files", pr.clone());
    }
    for o in &report.outcomes {
        let what = match (o.created, o.member_added) {
            (true, _) => format!("created group {} (gid {})", o.name, o.gid),
            (false, true) => format!("group {} (gid {}) kept", o.name, o.gid),
            (false, false) => format!("group {} (gid {}) already fine", o.name, o.gid),
        };
        let member = if o.member_added {
            format!(", added {}", report.name.as_deref().unwrap_or("?"))
        } else {
            String::new()
        };
        let renamed = o
            .renamed_from
            .as_ref()
            .map(|r| format!(" ({r} exists with another gid)"))
            .unwrap_or_default();
        log.info("group", format!("{what}{member}{renamed}"));
    }

    // Verify: the service's groups now, and each node.
    let now = proc::read_status(p.pid)
        .and_then(|s| runtime::to_entry(p.pid, &s, p.start, uid_map, gid_map))
        .unwrap_or_else(|| p.clone());
    let has_passwd = report.name.is_some();
    let keeps = if p.uid == 0 {
        Some(true)
    } else {
        runtime::keeps_supplementary_groups(has_passwd, &report.member_of_before, &now)
    };
    let creds = Creds {
        uid: now.uid,
        gid: now.gid,
        groups: now.groups.clone(),
    };
    let mut verdicts = Vec::new();
    let mut fallback = Vec::new();
    for (d, node) in job.devices.iter().zip(&report.nodes) {
        let member_now = node.is_some_and(|n| report.member_of_after.contains(&n.gid));
        let v = access::judge(node.as_ref(), &creds, member_now, keeps);
        log.info(
            "device",
            format!(
                "{} for uid {}: {} ({})",
                d.ct_path, creds.uid, v.verdict, v.detail
            ),
        );
        if v.needs_dev_fallback {
            fallback.push(DevFallback {
                path: d.path.clone(),
                uid: creds.uid,
                gid: creds.gid,
                reason: v.detail.clone(),
            });
        }
        verdicts.push(DeviceVerdict {
            path: d.path.clone(),
            container_path: Some(d.ct_path.clone()),
            verdict: v.verdict.to_string(),
            detail: v.detail,
        });
    }
    let collisions = group::collisions(&host, &report.names_by_gid, DEVICE_GROUPS);
    for c in &collisions {
        log.warn(
            "group-collision",
            format!(
                "host {} gid {} is {} inside the container; use the container's own {} gid for devN gid=",
                c.host_name, c.gid, c.container_name, c.host_name
            ),
        );
    }
    let user = RuntimeUser {
        uid: now.uid,
        gid: now.gid,
        groups: now.groups.clone(),
        name: report.name.clone(),
        pid: Some(now.ct_pid),
        comm: Some(now.comm.clone()),
        keeps_supplementary_groups: keeps.unwrap_or(true),
        detected_at: now_secs(),
    };
    let who = format!(
        "uid {} ({}) gid {} groups {:?}, found on pid {} ({}) after {} ms",
        user.uid,
        user.name.as_deref().unwrap_or("no passwd entry"),
        user.gid,
        user.groups,
        now.ct_pid,
        now.comm,
        detected_ms
    );
    log.info("runtime-user", format!("runtime user {who}"));
    if keeps == Some(false) {
        log.warn(
            "groups-dropped",
            "the service runs without supplementary groups; group membership cannot help, the next start gives the devices its uid/gid through devN",
        );
    }
    let mut changes: Vec<String> = report
        .outcomes
        .iter()
        .filter(|o| o.created || o.member_added)
        .map(|o| {
            let mut s = if o.created {
                format!("created group {} gid {}", o.name, o.gid)
            } else {
                format!("group {} gid {}", o.name, o.gid)
            };
            if o.member_added {
                s.push_str(&format!(
                    ": added {}",
                    report.name.as_deref().unwrap_or("?")
                ));
            }
            s
        })
        .collect();
    changes.extend(report.problems.iter().cloned());
    let outcome = if report.wrote.is_empty() {
        "ok"
    } else {
        "changed"
    };
    // Groups fixed after the service started: next time, before init.
    let fixed_late = p.uid != 0 && report.outcomes.iter().any(|o| o.created || o.member_added);
    update_state(&job.paths, job.vmid, |s| {
        s.runtime_user = Some(user.clone());
        s.container_groups = report.groups_by_name.clone();
        s.group_collisions = collisions.clone();
        s.changes = changes.clone();
        s.devices = verdicts.clone();
        s.dev_fallback = fallback.clone();
        s.first_boot_groups |= fixed_late;
        s.last_run = Some(LastRun {
            phase: "post-start".into(),
            outcome: outcome.into(),
            message: format!("runtime user {who}"),
            at: now_secs(),
        });
    })
}

/// Read-modify-write of the state under the tool's own lock. A corrupt or
/// unknown-version state is replaced.
pub fn update_state(paths: &Paths, vmid: Vmid, f: impl FnOnce(&mut State)) -> Result<()> {
    let _g = flock_exclusive(&paths.own_lock(vmid), Duration::from_secs(5))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = paths.state(vmid);
    let mut state = match read_text(&path, Limits::HOST_FILE) {
        Ok(Some(t)) => State::parse(&t).unwrap_or_else(|_| State::new(vmid.get())),
        _ => State::new(vmid.get()),
    };
    f(&mut state);
    std::fs::create_dir_all(paths.state_dir())
        .with_context(|| format!("{}: cannot create", paths.state_dir().display()))?;
    replace_file(&path, state.render().as_bytes(), 0o644)
}
