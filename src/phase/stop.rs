//! pre-stop (log only) and post-stop (record the stop; never fails, never
//! edits the config, because the config lock is not always held there).

use anyhow::Result;

use super::next_start::{plan, Planned, StateNotes};
use super::{io, Ctx};
use crate::model::event::Event;
use crate::model::prestart::FileTarget;
use crate::model::state::{Outcome, PhaseName};

pub fn pre_stop(ctx: &mut Ctx) -> Result<()> {
    ctx.log
        .audit(&Event::info("pre-stop", "container stopping"));
    Ok(())
}

/// What the next pre-start would change in the container config, as
/// `+ line` / `- line` for added and removed lines, or its refusal.
fn next_start_changes(planned: &Planned) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(r) = planned.refusal() {
        out.push(format!("the next start will be refused: {r}"));
    }
    let Planned::Decided(b) = planned else {
        return out;
    };
    if let Some(c) = b.1.change(FileTarget::PveConf) {
        let text = c.old.as_deref().unwrap_or("");
        let old: Vec<&str> = text.lines().collect();
        let new_lines: Vec<&str> = c.new.lines().collect();
        out.extend(
            new_lines
                .iter()
                .filter(|l| !old.contains(l))
                .map(|l| format!("+ {l}")),
        );
        out.extend(
            old.iter()
                .filter(|l| !new_lines.contains(l))
                .map(|l| format!("- {l}")),
        );
    }
    out
}

pub fn post_stop(ctx: &mut Ctx) -> Result<()> {
    let reboot = std::env::var("LXC_TARGET").is_ok_and(|t| t == "reboot");
    let mut notes = StateNotes::default();
    let planned = plan(ctx.paths, ctx.vmid, &mut notes);
    if let Some(p) = notes.problem {
        ctx.log.audit(&Event::warn("state-ignored", p));
    }
    let state = io::load_state(ctx.paths, ctx.vmid);
    for fb in state.state.iter().flat_map(|s| &s.dev_fallback) {
        ctx.log.info(
            "next-start",
            format!(
                "next start: {} for uid {} gid {} ({})",
                fb.path, fb.uid, fb.gid, fb.reason
            ),
        );
    }
    for c in next_start_changes(&planned) {
        ctx.log
            .info("next-start", format!("next start changes the config: {c}"));
    }
    if reboot {
        ctx.log.info(
            "reboot",
            "in-guest reboot: Proxmox runs no hookscript phase for the restart; runtime-user detection runs again at the next full start",
        );
    }
    if state.state.is_none() {
        // Nothing usable recorded for this container: start no state here.
        return Ok(());
    }
    let message = if reboot { "reboot" } else { "stopped" };
    if let Err(e) = io::record_last_run(
        ctx.paths,
        ctx.vmid,
        PhaseName::PostStop,
        Outcome::Ok,
        message,
    ) {
        ctx.log.audit(&Event::warn(
            "state",
            format!("could not record the stop: {e:#}"),
        ));
    }
    Ok(())
}
