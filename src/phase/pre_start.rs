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
use crate::model::prestart::{self, Decision, DeviceFact, Facts, FileTarget, HostFile, Refusal};
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
    let inputs = match Inputs::read(paths, vmid) {
        Ok(i) => i,
        Err(r) => return Planned::Refused(r),
    };
    if let Err(r) = inputs.chain(paths, vmid) {
        return Planned::Refused(r);
    }
    plan_from(paths, vmid, inputs, state_problem)
}

/// What pre-start reads first, once: the policy and the config's text.
pub struct Inputs {
    policy: Option<(String, Policy)>,
    conf_text: String,
}

impl Inputs {
    /// The policy first: a policy that does not parse is the first refusal.
    fn read(paths: &Paths, vmid: Vmid) -> Result<Inputs, Refusal> {
        let policy = io::read_policy_with_text(paths, vmid).map_err(input_refusal)?;
        let conf_text = io::read_conf_text(paths, vmid).map_err(input_refusal)?;
        Ok(Inputs { policy, conf_text })
    }

    /// The policy's chained hookscript, resolved; a refusal when it cannot
    /// run.
    fn chain(&self, paths: &Paths, vmid: Vmid) -> Result<Option<chain::Chain>, Refusal> {
        let Some((_, policy)) = self.policy.as_ref().filter(|(_, p)| p.chain.is_some()) else {
            return Ok(None);
        };
        let main = PveConfig::parse(main_section(&self.conf_text));
        chain::resolve(paths, vmid, policy, main.hookscript()).map_err(|e| {
            Refusal::new(
                format!("{e:#}"),
                "pre-start runs the chained hookscript first and refuses the start while it cannot",
            )
        })
    }
}

/// [`plan`] on inputs already read (and a chain already checked).
fn plan_from(
    paths: &Paths,
    vmid: Vmid,
    inputs: Inputs,
    state_problem: &mut Option<String>,
) -> Planned {
    let Inputs { policy, conf_text } = inputs;
    if policy.as_ref().is_some_and(|(_, p)| !p.enabled) {
        return Planned::Disabled;
    }
    // Whether there is anything to do shows in the main section and the
    // state (lines the tool owns must go): a container the tool leaves
    // alone does not get its snapshots parsed, and its state is one failed
    // lookup, read once when it exists.
    let work =
        policy.is_some() || prestart::config_has_work(&PveConfig::parse(main_section(&conf_text)));
    let state = io::load_state(paths, vmid);
    if !work && !state.exists {
        return Planned::Idle;
    }
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
    let mut inputs = match Inputs::read(ctx.paths, ctx.vmid) {
        Ok(i) => i,
        Err(r) => return Err(refuse(ctx, &r)),
    };
    // A chained hookscript runs first, and its failure aborts the start as
    // it would without us; it may edit the config, so that is read again.
    match inputs.chain(ctx.paths, ctx.vmid) {
        Err(r) => return Err(refuse(ctx, &r)),
        Ok(None) => {}
        Ok(Some(c)) => {
            let dry = ctx.mode.dry_run();
            if let Err(e) = chain::run_resolved(ctx.vmid, &c, "pre-start", ctx.log, dry) {
                let fix = format!(
                    "fix it, or remove 'chain' from {}",
                    ctx.paths.policy(ctx.vmid).display()
                );
                return Err(refuse(ctx, &Refusal::new(format!("{e:#}"), fix)));
            }
            match Inputs::read(ctx.paths, ctx.vmid) {
                Ok(i) => inputs = i,
                Err(r) => return Err(refuse(ctx, &r)),
            }
        }
    }
    let mut state_problem = None;
    let planned = plan_from(ctx.paths, ctx.vmid, inputs, &mut state_problem);
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
                format!("dry run: would write {}\n{}", c.path, c.reasons.join("\n")),
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
        if !matches!(c.target, FileTarget::State | FileTarget::StateInterim)
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
            FileTarget::Subuid | FileTarget::Subgid if !subid_done => {
                subid_done = true;
                apply_subids(ctx, decision)?;
            }
            FileTarget::Subuid | FileTarget::Subgid => {}
            FileTarget::StateInterim | FileTarget::State => apply_state(ctx, decision, c)?,
            FileTarget::PveConf => {
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
                    format!("changed {}\n{}", c.path, c.reasons.join("\n")),
                );
            }
            FileTarget::LxcConfig => {
                replace_file(
                    ctx.paths,
                    &ctx.paths.lxc_config(ctx.vmid),
                    c.new.as_bytes(),
                    0o644,
                    Durability::Volatile,
                )
                .context("patching the LXC config for this start")?;
                ctx.log.info(
                    "lxc-write",
                    format!("changed {}\n{}", c.path, c.reasons.join("\n")),
                );
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
                IdKind::Uid => FileTarget::Subuid,
                IdKind::Gid => FileTarget::Subgid,
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

/// The state: only `owned` is pre-start's; the rest may have been updated
/// by a post-start worker since it was read.
fn apply_state(ctx: &mut Ctx, decision: &Decision, c: &prestart::FileChange) -> Result<()> {
    let decided = State::parse(&c.new).map_err(|e| anyhow!("{}: {e}", c.path))?;
    let last = (c.target == FileTarget::State).then(|| crate::model::state::LastRun {
        phase: PhaseName::PreStart,
        outcome: Outcome::Changed,
        message: changed_files(decision),
        at: io::now_secs(),
    });
    let note = io::update_state(ctx.paths, ctx.vmid, |s| {
        s.owned = decided.owned;
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
