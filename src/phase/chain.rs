//! Hookscript chaining: Proxmox allows one hookscript per guest, so the
//! policy's `chain = "<storage>:snippets/<file>"` names the one that was there
//! before, and it runs with the same arguments: before our work in
//! pre-start (its failure aborts the start), after it in the other phases.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};

use super::io;
use crate::model::policy::Policy;
use crate::model::storage;
use crate::model::text::Limits;
use crate::paths::{Paths, Vmid};
use crate::sys::fs::read_text;
use crate::sys::hook;
use crate::sys::log::Log;

/// A chained hookscript, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub volume: String,
    /// The host path, under the root.
    pub path: PathBuf,
}

/// Reads the policy's `chain` and resolves it. `Ok(None)` without a policy
/// or without `chain`; an error for a bad volume, a chain to ourselves, or a
/// file that PVE itself would refuse to run.
pub fn find(paths: &Paths, vmid: Vmid) -> Result<Option<Chain>> {
    let Some(policy) = io::read_policy(paths, vmid)? else {
        return Ok(None);
    };
    if policy.chain.is_none() {
        return Ok(None);
    }
    let own = io::read_conf_main(paths, vmid)
        .ok()
        .and_then(|c| c.hookscript().map(str::to_string));
    resolve(paths, vmid, &policy, own.as_deref())
}

/// Resolves the `chain` of a policy already read; `own` is the container's
/// registered hookscript.
pub fn resolve(
    paths: &Paths,
    vmid: Vmid,
    policy: &Policy,
    own: Option<&str>,
) -> Result<Option<Chain>> {
    let Some(volume) = policy.chain.clone() else {
        return Ok(None);
    };
    let policy_path = paths.policy(vmid);
    let in_policy = || format!("'chain' in {}", policy_path.display());
    if own == Some(volume.as_str()) {
        bail!(
            "{}: '{volume}' is this container's own hookscript (pct-passthrough); chaining it would run it forever; set chain to the hookscript the container had before, or remove it",
            in_policy()
        );
    }
    let defs = read_text(paths, &paths.storage_cfg(), Limits::HOST_FILE)?
        .map(|t| storage::parse(&t))
        .unwrap_or_default();
    let host_path =
        storage::snippet_path(&volume, &defs).map_err(|e| anyhow!("{}: {e}", in_policy()))?;
    let path = paths.host(&host_path);
    if !path.exists() {
        bail!(
            "{}: '{volume}' ({}) does not exist; copy the hookscript there on this node, or remove 'chain'",
            in_policy(),
            path.display()
        );
    }
    if hook::is_this_binary(&path) {
        bail!(
            "{}: '{volume}' is pct-passthrough itself; chaining it would run it forever; remove 'chain'",
            in_policy()
        );
    }
    hook::check_runnable(&path).map_err(|e| anyhow!("{}: {e:#}", in_policy()))?;
    Ok(Some(Chain { volume, path }))
}

/// Finds and runs the chained hookscript for `phase`. An error when it is
/// misconfigured or exits non-zero; the caller decides whether that blocks.
pub fn run(paths: &Paths, vmid: Vmid, phase: &str, log: &mut Log, dry_run: bool) -> Result<()> {
    let Some(chain) = find(paths, vmid)? else {
        return Ok(());
    };
    run_resolved(vmid, &chain, phase, log, dry_run)
}

/// Runs a resolved chained hookscript for `phase`.
pub fn run_resolved(
    vmid: Vmid,
    chain: &Chain,
    phase: &str,
    log: &mut Log,
    dry_run: bool,
) -> Result<()> {
    if dry_run {
        log.info(
            "chain-dry-run",
            format!("dry run: would run chained hookscript {}", chain.volume),
        );
        return Ok(());
    }
    log.audit(&crate::model::event::Event::info(
        "chain-run",
        format!("running chained hookscript {}", chain.volume),
    ));
    let status = hook::run_hook(&chain.path, &vmid.to_string(), phase)?;
    if !status.success() {
        let how = match status.code() {
            Some(c) => format!("exit code {c}"),
            None => format!("{status}"),
        };
        bail!("chained hookscript {} failed ({how})", chain.volume);
    }
    Ok(())
}
