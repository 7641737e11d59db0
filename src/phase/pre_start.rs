//! pre-start: run a chained hookscript, read and decide (`next_start`, the
//! pure planner in `model::prestart`), and apply the decision:
//! the state that owns every line first, then subordinate IDs under
//! shadow's locks, the config, and the generated LXC config for this start.

use anyhow::{anyhow, Context, Result};

use super::next_start::{plan_from, Inputs, Planned, StateNotes};
use super::{chain, io, Ctx};
use crate::model::idmap::IdKind;
use crate::model::prestart::{self, Decision, FileTarget, Refusal};
use crate::model::pveconf;
use crate::model::state::{Outcome, PhaseName};
use crate::model::subid::SubidNeed;
use crate::paths::Paths;
use crate::sys::devnode;
use crate::sys::fs::{replace_file, Durability};
use crate::sys::shadow::{append_coverage, SHADOW_LOCK_TIMEOUT};

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
    let mut notes = StateNotes::default();
    let planned = plan_from(ctx.paths, ctx.vmid, inputs, &mut notes);
    if notes.migrates && !ctx.mode.dry_run() {
        match io::migrate_state(ctx.paths, ctx.vmid) {
            Ok(Some(note)) => ctx.log.info("state-migrated", note),
            Ok(None) => {}
            Err(e) => ctx.log.warn("state-migrated", format!("{e:#}")),
        }
    }
    if let Some(p) = notes.problem {
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
    if let Some(why) = cluster_blocked(ctx.paths, &decision) {
        return no_quorum(ctx, &decision, &why);
    }
    apply(ctx, &decision)
}

/// Why the decision cannot be applied now: it writes on `/etc/pve` (the
/// config, or the state that owns the tool's lines) and that is read-only.
fn cluster_blocked(paths: &Paths, decision: &Decision) -> Option<String> {
    let on_pve = decision.changes.iter().any(|c| {
        matches!(
            c.target,
            FileTarget::PveConf | FileTarget::State | FileTarget::StateInterim
        )
    });
    on_pve.then(|| io::cluster_read_only(paths)).flatten()
}

/// Without quorum: change nothing (a line the tool cannot record would
/// become a person's), say why, record it node-locally, let the start go on.
fn no_quorum(ctx: &mut Ctx, decision: &Decision, why: &str) -> Result<()> {
    let mut files: Vec<&str> = decision.changes.iter().map(|c| c.path.as_str()).collect();
    files.dedup();
    let msg = format!(
        "{why}: nothing changed (pre-start would write {}); the container starts with its config as it is, and the next start with quorum applies it",
        files.join(", ")
    );
    ctx.log.warn("no-quorum", msg.clone());
    if let Err(e) = io::record_last_run(
        ctx.paths,
        ctx.vmid,
        PhaseName::PreStart,
        Outcome::Failed,
        msg,
    ) {
        ctx.log.audit(&crate::model::event::Event::warn(
            "state",
            format!("could not record the skipped start: {e:#}"),
        ));
    }
    Ok(())
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
    let mut nodes_done = false;
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
                    // pmxcfs has no fsync: it commits each write itself.
                    Durability::Volatile,
                )
                .context("writing the container config")?;
                ctx.log.info(
                    "conf-write",
                    format!("changed {}\n{}", c.path, c.reasons.join("\n")),
                );
            }
            FileTarget::LxcConfig => {
                // The nodes first: the config never names a node not there.
                apply_nodes(ctx, decision)?;
                nodes_done = true;
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
    if !nodes_done {
        // Stale nodes of an earlier start go (a device unplugged since).
        apply_nodes(ctx, decision)?;
    }
    Ok(())
}

/// Makes the private nodes of this start, and removes stale ones.
fn apply_nodes(ctx: &mut Ctx, decision: &Decision) -> Result<()> {
    let specs: Vec<devnode::NodeSpec> = decision
        .nodes
        .iter()
        .map(|n| devnode::NodeSpec {
            name: &n.name,
            major: n.major,
            minor: n.minor,
            uid: n.host_uid,
            gid: n.host_gid,
            mode: n.mode,
        })
        .collect();
    let dir = prestart::private_node_dir(ctx.vmid.get());
    for line in devnode::sync_private_nodes(ctx.paths, &dir, &specs)
        .context("making the private device nodes for this start")?
    {
        ctx.log.info("private-node", line);
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

/// The state: only `owned`, `files_idmap` and the shift steps are
/// pre-start's; the rest may have been updated by a post-start worker since
/// it was read.
fn apply_state(ctx: &mut Ctx, decision: &Decision, c: &prestart::FileChange) -> Result<()> {
    let decided = c
        .state
        .as_deref()
        .ok_or_else(|| anyhow!("{}: the decision holds no state to write", c.path))?
        .clone();
    let last = (c.target == FileTarget::State).then(|| crate::model::state::LastRun {
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
