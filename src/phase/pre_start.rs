//! pre-start: read the container config, policy, state and host files;
//! decide what the container needs (pure, in `model::prestart`); apply it:
//! the state that owns every line first, then subordinate IDs under
//! shadow's locks, the config, and the generated LXC config for this start.

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};

use super::{chain, io, Ctx};
use crate::model::device;
use crate::model::idmap::IdKind;
use crate::model::policy::Policy;
use crate::model::prestart::{self, Decision, DeviceFact, Facts, HostFile, Refusal, Target};
use crate::model::pveconf::{self, main_section, PveConfig};
use crate::model::state::{Outcome, PhaseName, State};
use crate::model::subid::SubidNeed;
use crate::model::text::Limits;
use crate::paths::{Paths, Vmid};
use crate::sys::devnode;
use crate::sys::fs::{read_text, replace_file, Durability};
use crate::sys::shadow::{append_coverage, SHADOW_LOCK_TIMEOUT};

/// What the next pre-start would do, decided without writing anything:
/// what `pre-start`, `plan`, `status`, `doctor` and post-stop all report.
#[derive(Debug)]
pub enum Planned {
    /// Nothing in the config, policy or state to act on: returns at once.
    Idle,
    /// `enabled = false` in the policy.
    Disabled,
    /// The planner's decision (which may be a refusal).
    Decided(Box<(Facts, Decision)>),
    /// An input cannot be read or parsed, or the chained hookscript cannot
    /// run: pre-start refuses the start with this.
    Refused(Refusal),
}

impl Planned {
    /// The refusal, from the inputs or from the planner.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Planned::Refused(r) => Some(r),
            Planned::Decided(b) => b.1.refusal.as_ref(),
            _ => None,
        }
    }
}

/// Reads a host file the plan depends on; unreadable input is an error
/// that names the file.
fn host_file(paths: &Paths, path: PathBuf) -> Result<HostFile> {
    let text = read_text(paths, &path, Limits::HOST_FILE)?;
    Ok(HostFile::new(path.display().to_string(), text))
}

/// Everything pre-start decides from. Reads only.
fn gather(
    paths: &Paths,
    vmid: Vmid,
    conf: PveConfig,
    policy: Option<(String, Policy)>,
    state: Option<State>,
) -> Result<Facts> {
    let policy_path = paths.policy(vmid).display().to_string();
    // dpkg-query costs a process: asked only for per-mount-point maps.
    let pve_container = if policy.as_ref().is_some_and(|(_, p)| !p.mounts.is_empty()) {
        io::pve_container_version(paths)
    } else {
        None
    };
    let (policy_file, policy) = match policy {
        Some((text, p)) => (HostFile::new(policy_path, Some(text)), Some(p)),
        None => (HostFile::new(policy_path, None), None),
    };
    // The mount hook runs as the container's root when it is user-namespaced.
    let unprivileged = conf.userns();
    let declared = device::declared(&conf, policy.as_ref());
    let devices = device::declared_paths(&declared)
        .into_iter()
        .map(|path| DeviceFact {
            node: devnode::node(paths, &path).map_err(|e| e.to_string()),
            path,
        })
        .collect();
    Ok(Facts {
        vmid: vmid.get(),
        conf_path: paths.pve_conf(vmid).display().to_string(),
        conf,
        policy,
        policy_file,
        state,
        state_path: paths.state(vmid).display().to_string(),
        subuid: host_file(paths, paths.subuid())?,
        subgid: host_file(paths, paths.subgid())?,
        // Only matters when there is a map to cover.
        nsswitch: if unprivileged {
            read_text(paths, &paths.nsswitch(), Limits::HOST_FILE)
                .ok()
                .flatten()
        } else {
            None
        },
        lxc_config: host_file(paths, paths.lxc_config(vmid))?,
        mount_hook_exe: crate::sys::proc::exe_for_mount_hook(unprivileged),
        devices,
        pve_container,
        shift_exe: crate::sys::proc::exe_for_mount_hook(false),
    })
}

/// A read error as the refusal pre-start gives for it.
fn input_refusal(e: anyhow::Error) -> Refusal {
    Refusal::new(
        format!("{e:#}"),
        "fix the file named; pre-start refuses every start until then",
    )
}

/// Reads everything and decides, writing nothing: what pre-start would do
/// now. `state_problem` receives why a state file was ignored.
pub fn plan(paths: &Paths, vmid: Vmid, state_problem: &mut Option<String>) -> Planned {
    let conf_text = match io::read_conf_text(paths, vmid) {
        Ok(t) => t,
        Err(e) => return Planned::Refused(input_refusal(e)),
    };
    let policy = match io::read_policy_with_text(paths, vmid) {
        Ok(p) => p,
        Err(e) => return Planned::Refused(input_refusal(e)),
    };
    if policy.as_ref().is_some_and(|(_, p)| !p.enabled) {
        return Planned::Disabled;
    }
    // Whether there is anything to do shows in the main section: a container
    // the tool leaves alone does not get its snapshots parsed, nor its state
    // opened.
    if policy.is_none()
        && !paths.state(vmid).exists()
        && !prestart::config_has_work(&PveConfig::parse(main_section(&conf_text)))
    {
        return Planned::Idle;
    }
    if let Err(e) = chain::find(paths, vmid) {
        return Planned::Refused(Refusal::new(
            format!("{e:#}"),
            "pre-start runs the chained hookscript first and refuses the start while it cannot",
        ));
    }
    let state = io::load_state(paths, vmid);
    *state_problem = state.problem.clone();
    let conf = PveConfig::parse(&conf_text);
    match gather(paths, vmid, conf, policy, state.state) {
        Ok(facts) => {
            let decision = prestart::decide(&facts);
            Planned::Decided(Box::new((facts, decision)))
        }
        Err(e) => Planned::Refused(input_refusal(e)),
    }
}

pub fn run(ctx: &mut Ctx) -> Result<()> {
    // A policy that does not parse refuses before anything runs.
    if let Err(e) = io::read_policy(ctx.paths, ctx.vmid) {
        return Err(refuse(ctx, &input_refusal(e)));
    }
    // A chained hookscript runs first, and its failure aborts the start as
    // it would without us.
    if let Err(e) = chain::run(
        ctx.paths,
        ctx.vmid,
        "pre-start",
        ctx.log,
        ctx.mode.dry_run(),
    ) {
        return Err(refuse(
            ctx,
            &Refusal::new(
                format!("{e:#}"),
                "pre-start runs the chained hookscript first and refuses the start while it fails",
            ),
        ));
    }
    let mut state_problem = None;
    let planned = plan(ctx.paths, ctx.vmid, &mut state_problem);
    if let Some(p) = state_problem {
        ctx.log.warn("state-ignored", p);
    }
    let decision = match planned {
        Planned::Idle => return Ok(()),
        Planned::Disabled => {
            ctx.log.info(
                "disabled",
                "disabled by policy (enabled = false); nothing done",
            );
            return Ok(());
        }
        Planned::Refused(r) => return Err(refuse(ctx, &r)),
        Planned::Decided(b) => b.1,
    };
    ctx.log.emit_all(&decision.events);
    if let Some(r) = &decision.refusal {
        return Err(refuse(ctx, r));
    }
    if ctx.mode.dry_run() {
        for c in &decision.changes {
            ctx.log.info(
                "dry-run",
                format!("dry run: would write {}: {}", c.path, c.reasons.join("; ")),
            );
        }
        if decision.changes.is_empty() {
            ctx.log.info("dry-run", "dry run: nothing to change");
        }
        return Ok(());
    }
    apply(ctx, &decision)
}

/// Records a refusal in the state's `last_run` (where the state directory
/// is writable) and returns it as the phase's error.
fn refuse(ctx: &mut Ctx, r: &Refusal) -> anyhow::Error {
    if !ctx.mode.dry_run() {
        if let Err(e) = io::record_last_run(
            ctx.paths,
            ctx.vmid,
            PhaseName::PreStart,
            Outcome::Refused,
            r.to_string(),
        ) {
            ctx.log.audit(&crate::model::event::Event::warn(
                "state",
                format!("could not record the refusal: {e:#}"),
            ));
        }
    }
    anyhow!("{r}")
}

/// "changed <file>, <file>": the files a decision writes, for `last_run`.
fn changed_files(decision: &Decision) -> String {
    let mut names: Vec<&str> = Vec::new();
    for c in &decision.changes {
        if !matches!(c.target, Target::State | Target::StateInterim)
            && !names.contains(&c.path.as_str())
        {
            names.push(&c.path);
        }
    }
    format!("changed {}", names.join(", "))
}

/// Writes what the decision says, in its order. Makes no decisions.
pub fn apply(ctx: &mut Ctx, decision: &Decision) -> Result<()> {
    let mut subid_done = false;
    for c in &decision.changes {
        match c.target {
            Target::Subuid | Target::Subgid if !subid_done => {
                subid_done = true;
                apply_subids(ctx, decision)?;
            }
            Target::Subuid | Target::Subgid => {}
            Target::StateInterim | Target::State => apply_state(ctx, decision, c)?,
            Target::PveConf => {
                replace_file(
                    ctx.paths,
                    &ctx.paths.pve_conf(ctx.vmid),
                    &pveconf::text_to_bytes(&c.new),
                    0o640,
                    Durability::Flush,
                )
                .context("writing the container config")?;
                ctx.log.info(
                    "conf-write",
                    format!("{}: {}", c.path, c.reasons.join("; ")),
                );
            }
            Target::LxcConfig => {
                replace_file(
                    ctx.paths,
                    &ctx.paths.lxc_config(ctx.vmid),
                    c.new.as_bytes(),
                    0o644,
                    Durability::Volatile,
                )
                .context("patching the LXC config for this start")?;
                ctx.log
                    .info("lxc-write", format!("{}: {}", c.path, c.reasons.join("; ")));
            }
        }
    }
    Ok(())
}

/// Root's subordinate IDs, for the files the planner found short, under
/// shadow's locks (the file is re-read and re-planned there).
fn apply_subids(ctx: &mut Ctx, decision: &Decision) -> Result<()> {
    let short: Vec<&SubidNeed> = decision
        .subid
        .iter()
        .filter(|n| {
            let t = match n.kind {
                IdKind::Uid => Target::Subuid,
                IdKind::Gid => Target::Subgid,
            };
            decision.change(t).is_some()
        })
        .collect();
    let written = append_coverage(ctx.paths, &short, SHADOW_LOCK_TIMEOUT)
        .context("adding subordinate IDs for root")?;
    for w in written {
        let added: Vec<String> = w
            .added
            .iter()
            .map(|r| format!("root:{}:{}", r.start, r.len()))
            .collect();
        ctx.log.info(
            "subid-add",
            format!("{}: added {}", w.path.display(), added.join(", ")),
        );
    }
    Ok(())
}

/// The state: only `owned`, `files_idmap` and the shift steps are
/// pre-start's; the rest may have been updated by a post-start worker since
/// it was read.
fn apply_state(ctx: &mut Ctx, decision: &Decision, c: &prestart::FileChange) -> Result<()> {
    let decided = State::parse(&c.new).map_err(|e| anyhow!("{}: {e}", c.path))?;
    let last = (c.target == Target::State).then(|| crate::model::state::LastRun {
        phase: PhaseName::PreStart,
        outcome: Outcome::Changed,
        message: changed_files(decision),
        at: io::now_secs(),
    });
    let note = io::update_state(ctx.paths, ctx.vmid, |s| {
        s.owned = decided.owned;
        s.files_idmap = decided.files_idmap;
        // The steps are pre-start's; an inode in flight is the shift hook's.
        s.shift.steps = decided.shift.steps;
        if last.is_some() {
            s.last_run = last;
        }
    })
    .context("writing the state")?;
    if let Some(n) = note {
        ctx.log.warn("state-replaced", n);
    }
    Ok(())
}
