//! pre-start: read the container config, policy, state and host files;
//! decide what the container needs (pure, in `model::prestart`); apply it:
//! subordinate IDs under shadow's locks, then state, config, the generated
//! LXC config for this start, and the final state.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};

use super::Ctx;
use crate::model::devplan::{self, DeviceFact};
use crate::model::idmap::IdKind;
use crate::model::policy::Policy;
use crate::model::prestart::{self, Decision, Facts, HostFile, SubidNeed, Target};
use crate::model::pveconf::{self, main_section, PveConfig};
use crate::model::state::{LastRun, State};
use crate::model::text::{check_size, Limits};
use crate::phase::post_start::{now_secs, update_state};
use crate::sys::devnode;
use crate::sys::fs::{read_bytes, read_text, replace_file};
use crate::sys::shadow::{append_coverage, SHADOW_LOCK_TIMEOUT};

/// Reads the container config's main section only (snapshots and pending
/// changes unparsed): for phases that use only its accessors.
pub fn read_conf_main(ctx: &Ctx) -> Result<PveConfig> {
    Ok(PveConfig::parse(main_section(&read_conf_text(ctx)?)))
}

/// Reads the container config's text; a missing config is an error.
fn read_conf_text(ctx: &Ctx) -> Result<String> {
    let path = ctx.paths.pve_conf(ctx.vmid);
    read_pve_conf(&path)?.ok_or_else(|| {
        anyhow!(
            "{}: not found; is {} a container on this node?",
            path.display(),
            ctx.vmid
        )
    })
}

/// Reads a container config as bytes, as Proxmox does: any encoding and
/// line length; only its size is checked. Returns its text form
/// ([`pveconf::bytes_to_text`]), which [`PveConfig::parse`] reads and
/// [`pveconf::text_to_bytes`] turns back into the same bytes.
pub fn read_pve_conf(path: &std::path::Path) -> Result<Option<String>> {
    let Some(bytes) = read_bytes(path, Limits::PVE_CONFIG)? else {
        return Ok(None);
    };
    check_size(&path.display().to_string(), &bytes, Limits::PVE_CONFIG)?;
    Ok(Some(pveconf::bytes_to_text(&bytes).into_owned()))
}

/// Reads the optional policy, strictly, with its text (for line numbers).
pub fn read_policy_with_text(ctx: &Ctx) -> Result<Option<(String, Policy)>> {
    let path = ctx.paths.policy(ctx.vmid);
    let Some(text) = read_text(&path, Limits::HOST_FILE)? else {
        return Ok(None);
    };
    let policy = Policy::parse(&path.display().to_string(), &text).map_err(|e| anyhow!(e))?;
    Ok(Some((text, policy)))
}

/// Reads the optional policy, strictly.
pub fn read_policy(ctx: &Ctx) -> Result<Option<Policy>> {
    Ok(read_policy_with_text(ctx)?.map(|(_, p)| p))
}

/// Reads the state; a corrupt or unknown-version file is reported and
/// treated as none.
pub fn read_state(ctx: &mut Ctx) -> Option<State> {
    let path = ctx.paths.state(ctx.vmid);
    let text = match read_text(&path, Limits::HOST_FILE) {
        Ok(Some(t)) => t,
        Ok(None) => return None,
        Err(e) => {
            ctx.log.warn("state-ignored", format!("{e:#}; ignored"));
            return None;
        }
    };
    match State::parse(&text) {
        Ok(s) => Some(s),
        Err(p) => {
            ctx.log
                .warn("state-ignored", format!("{}: {p}", path.display()));
            None
        }
    }
}

/// Reads a host file the plan depends on; unreadable input is an error
/// that names the file.
fn host_file(path: PathBuf) -> Result<HostFile> {
    let text = read_text(&path, Limits::HOST_FILE)?;
    Ok(HostFile::new(path.display().to_string(), text))
}

/// Everything pre-start decides from. Reads only.
pub fn gather(ctx: &mut Ctx, conf: PveConfig, policy: Option<(String, Policy)>) -> Result<Facts> {
    let state = read_state(ctx);
    let paths = ctx.paths;
    let vmid = ctx.vmid;
    let (policy_file, policy) = match policy {
        Some((text, p)) => (
            HostFile::new(paths.policy(vmid).display().to_string(), Some(text)),
            Some(p),
        ),
        None => (
            HostFile::new(paths.policy(vmid).display().to_string(), None),
            None,
        ),
    };
    // The mount hook runs as the container's root when it is user-namespaced.
    let unprivileged = conf.userns();
    let devices = devplan::declared_paths(&conf, policy.as_ref())
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
        subuid: host_file(paths.subuid())?,
        subgid: host_file(paths.subgid())?,
        // Only matters when there is a map to cover.
        nsswitch: if unprivileged {
            read_text(&paths.nsswitch(), Limits::HOST_FILE)
                .ok()
                .flatten()
        } else {
            None
        },
        lxc_config: host_file(paths.lxc_config(vmid))?,
        mount_hook_exe: crate::sys::proc::exe_for_mount_hook(unprivileged),
        devices,
    })
}

/// Reads everything and decides, writing nothing: what pre-start would do
/// now. `None` when pre-start would return at once (disabled by policy, or
/// nothing to act on). `plan`, `--dry-run` and post-stop use this.
pub fn plan(ctx: &mut Ctx) -> Result<Option<(Facts, Decision)>> {
    let conf_text = read_conf_text(ctx)?;
    let policy = read_policy_with_text(ctx)?;
    if policy.as_ref().is_some_and(|(_, p)| !p.enabled) {
        ctx.log.info(
            "disabled",
            "disabled by policy (enabled = false); nothing done",
        );
        return Ok(None);
    }
    let state_exists = ctx.paths.state(ctx.vmid).exists();
    // Whether there is anything to do shows in the main section: a container
    // the tool leaves alone does not get its snapshots parsed.
    let main = PveConfig::parse(main_section(&conf_text));
    // Proxmox fails the start on a devN it cannot parse; the tool skips it.
    let conf_path = ctx.paths.pve_conf(ctx.vmid).display().to_string();
    for e in main.dev_errors() {
        ctx.log.warn("dev-parse", e.message(&conf_path));
    }
    if policy.is_none() && !state_exists && !prestart::config_has_work(&main) {
        return Ok(None);
    }
    let conf = PveConfig::parse(&conf_text);
    let facts = gather(ctx, conf, policy)?;
    let decision = prestart::decide(&facts);
    Ok(Some((facts, decision)))
}

pub fn run(ctx: &mut Ctx) -> Result<()> {
    let Some((_facts, decision)) = plan(ctx)? else {
        return Ok(());
    };
    ctx.log.emit_all(&decision.events);
    if let Some(refusal) = &decision.refusal {
        bail!("{refusal}");
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

/// Writes what the decision says, in its order. Makes no decisions.
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

pub fn apply(ctx: &mut Ctx, decision: &Decision) -> Result<()> {
    let paths = ctx.paths;
    let vmid = ctx.vmid;
    let mut subid_done = false;
    for c in &decision.changes {
        match c.target {
            Target::Subuid | Target::Subgid => {
                if subid_done {
                    continue;
                }
                subid_done = true;
                // The planner found these files short of their ranges.
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
                let written = append_coverage(paths, &short, SHADOW_LOCK_TIMEOUT)
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
            }
            Target::StateInterim | Target::State => {
                // Only `owned` is pre-start's; the rest may have been
                // updated by a post-start worker since it was read.
                let decided = State::parse(&c.new).map_err(|e| anyhow!("{}: {e}", c.path))?;
                let last = (c.target == Target::State).then(|| LastRun {
                    phase: "pre-start".into(),
                    outcome: "changed".into(),
                    message: changed_files(decision),
                    at: now_secs(),
                });
                update_state(paths, vmid, |s| {
                    s.owned = decided.owned;
                    if last.is_some() {
                        s.last_run = last;
                    }
                })
                .context("writing the state")?;
            }
            Target::PveConf => {
                replace_file(
                    &paths.pve_conf(vmid),
                    &pveconf::text_to_bytes(&c.new),
                    0o640,
                )
                .context("writing the container config")?;
                ctx.log.info(
                    "conf-write",
                    format!("{}: {}", c.path, c.reasons.join("; ")),
                );
            }
            Target::LxcConfig => {
                replace_file(&paths.lxc_config(vmid), c.new.as_bytes(), 0o644)
                    .context("patching the LXC config for this start")?;
                ctx.log
                    .info("lxc-write", format!("{}: {}", c.path, c.reasons.join("; ")));
            }
        }
    }
    Ok(())
}
