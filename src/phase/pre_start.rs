//! pre-start: read the container config, policy and state; decide what the
//! container needs (pure, in `model::prestart`); apply it.

use anyhow::{anyhow, bail, Context, Result};

use super::Ctx;
use crate::model::policy::Policy;
use crate::model::prestart::{self, Facts};
use crate::model::pveconf::PveConfig;
use crate::model::state::State;
use crate::model::text::Limits;
use crate::sys::fs::{read_text, replace_file};

/// Reads the container config; a missing config is an error.
pub fn read_conf(ctx: &Ctx) -> Result<(String, PveConfig)> {
    let path = ctx.paths.pve_conf(ctx.vmid);
    let text = read_text(&path, Limits::PVE_CONFIG)?.ok_or_else(|| {
        anyhow!(
            "{}: not found; is {} a container on this node?",
            path.display(),
            ctx.vmid
        )
    })?;
    let conf = PveConfig::parse(&text);
    Ok((text, conf))
}

/// Reads the optional policy, strictly.
pub fn read_policy(ctx: &Ctx) -> Result<Option<Policy>> {
    let path = ctx.paths.policy(ctx.vmid);
    let Some(text) = read_text(&path, Limits::HOST_FILE)? else {
        return Ok(None);
    };
    Policy::parse(&path.display().to_string(), &text)
        .map(Some)
        .map_err(|e| anyhow!(e))
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

pub fn run(ctx: &mut Ctx) -> Result<()> {
    let (conf_text, conf) = read_conf(ctx)?;
    let policy = read_policy(ctx)?;
    if policy.as_ref().is_some_and(|p| !p.enabled) {
        ctx.log.info(
            "disabled",
            "disabled by policy (enabled = false); nothing done",
        );
        return Ok(());
    }
    let state_exists = ctx.paths.state(ctx.vmid).exists();
    if policy.is_none() && !state_exists && !prestart::config_has_work(&conf) {
        return Ok(());
    }
    let state = read_state(ctx);
    let facts = Facts {
        vmid: ctx.vmid.get(),
        conf_path: ctx.paths.pve_conf(ctx.vmid).display().to_string(),
        conf,
        policy,
        state,
    };
    let decision = prestart::decide(&facts);
    ctx.log.emit_all(&decision.events);
    if let Some(refusal) = decision.refusal {
        bail!(refusal);
    }
    if ctx.mode.dry_run() {
        if decision.conf.as_deref().is_some_and(|c| c != conf_text) {
            ctx.log.info(
                "dry-run",
                "dry run: the container config would change; nothing written",
            );
        }
        return Ok(());
    }
    if let Some(new_conf) = decision.conf.filter(|c| *c != conf_text) {
        replace_file(&ctx.paths.pve_conf(ctx.vmid), new_conf.as_bytes(), 0o640)
            .context("writing the container config")?;
    }
    Ok(())
}
