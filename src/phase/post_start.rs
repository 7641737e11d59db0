//! post-start: find and pin the container's init, hand control back to
//! Proxmox at once, and in a detached worker detect the runtime user, apply
//! the Group rules inside the container, verify device access, record state.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use caps::Capability;

use super::ct_job::ct_job;
use super::{io, Ctx};
use crate::model::device;
use crate::model::group;
use crate::model::poststart::{self, DeviceTarget, Seen};
use crate::model::prestart;
use crate::model::runtime::{self, Choice, IdMap, ProcEntry, Stability};
use crate::model::state::{Outcome, PhaseName};
use crate::model::text::Limits;
use crate::paths::{Paths, Vmid};
use crate::sys::fs::read_text;
use crate::sys::lock::{flock_exclusive, LockError};
use crate::sys::log::Log;
use crate::sys::ns::{self, Target};
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
/// Puts what the shift hook re-owned before init in the task log, once
/// (LXC's hooks write only to LXC's own log).
fn report_shift(ctx: &mut Ctx) {
    let Some(rec) = io::load_state(ctx.paths, ctx.vmid)
        .state
        .and_then(|s| s.last_shift)
        .filter(|r| !r.reported)
    else {
        return;
    };
    ctx.log.info(
        "shift-report",
        format!(
            "before init, the files of the container's storage were re-owned for its new ID map: {}",
            rec.summary
        ),
    );
    if let Err(e) = io::update_state(ctx.paths, ctx.vmid, |s| {
        if let Some(r) = s.last_shift.as_mut() {
            r.reported = true;
        }
    }) {
        ctx.log
            .warn("state", format!("could not record the shift report: {e:#}"));
    }
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
    let conf = io::read_conf_main(ctx.paths, ctx.vmid)?;
    let policy = io::read_policy(ctx.paths, ctx.vmid)?;
    let state_exists = io::state_exists(ctx.paths, ctx.vmid);
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
    report_shift(ctx);
    let mut devices = DeviceTarget::of(&device::declared(&conf, Some(&policy)));
    for t in &mut devices {
        let node = crate::sys::devnode::node(ctx.paths, &t.path).ok().flatten();
        t.group = device::classify(&t.path, node.as_ref())
            .container_group()
            .map(str::to_string);
    }
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
    let _guard = match flock_exclusive(
        &job.paths,
        &job.paths.worker_lock(job.vmid),
        Duration::from_secs(5),
    ) {
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
        let _ = io::record_last_run(
            &job.paths,
            job.vmid,
            PhaseName::PostStart,
            Outcome::Failed,
            format!("{e:#}"),
        );
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
                    fix_groups_and_judge(job, log, &uid_map, &gid_map, &p, started)?;
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
                fix_groups_and_judge(job, log, &uid_map, &gid_map, &p, started)?;
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

/// Host-side facts for the request: host group names of device GIDs.
fn host_groups(paths: &Paths) -> group::GroupIndex {
    match read_text(paths, &paths.host("/etc/group"), Limits::HOST_FILE) {
        Ok(Some(t)) => group::index(&t),
        _ => group::GroupIndex::default(),
    }
}

fn host_node_gid(paths: &Paths, path: &str) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(paths.host(path)).ok().map(|m| m.gid())
}

/// Gathers (host groups, node groups), asks the model for the container
/// child's request, runs it inside, re-reads the service's groups, asks the
/// model for the verdicts, and logs and records them.
fn fix_groups_and_judge(
    job: &Job,
    log: &mut Log,
    uid_map: &IdMap,
    gid_map: &IdMap,
    p: &ProcEntry,
    started: Instant,
) -> Result<()> {
    let detected_ms = started.elapsed().as_millis();
    let host = host_groups(&job.paths);
    let node_gids: Vec<Option<u32>> = job
        .devices
        .iter()
        .map(|d| host_node_gid(&job.paths, &d.path))
        .collect();
    let req = poststart::request(p.uid, &job.devices, &node_gids, &host, gid_map);
    let target = Target::Running {
        pidfd: &job.pinned.pidfd,
        userns: job.pinned.own_userns,
    };
    let report = ns::run_in_container(&target, &[Capability::CAP_CHOWN], CHILD_BOUND, || {
        ct_job(&req)
    })
    .context("inside the container")?;
    let now = proc::read_status(p.pid)
        .and_then(|s| runtime::to_entry(p.pid, &s, p.start, uid_map, gid_map))
        .unwrap_or_else(|| p.clone());
    let decision = poststart::decide(&Seen {
        detected: p,
        now: &now,
        devices: &job.devices,
        report: &report,
        host: &host,
        detected_ms,
        at: io::now_secs(),
    });
    log.emit_all(&decision.events);
    if let Some(note) = io::update_state(&job.paths, job.vmid, |s| decision.record(s))? {
        log.warn("state-replaced", note);
    }
    Ok(())
}
