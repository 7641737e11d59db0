//! pre-stop (log only) and post-stop (record the stop; never fails, never
//! edits the config, because the config lock is not always held there).

use anyhow::Result;

use super::pre_start::plan;
use super::Ctx;
use crate::model::event::Event;
use crate::model::prestart::Target;
use crate::model::state::{LastRun, State};
use crate::model::text::Limits;
use crate::phase::post_start::update_state;
use crate::sys::fs::read_text;

pub fn pre_stop(ctx: &mut Ctx) -> Result<()> {
    ctx.log
        .audit(&Event::info("pre-stop", "container stopping"));
    Ok(())
}

fn read_state_quiet(ctx: &Ctx) -> Option<State> {
    let t = read_text(ctx.paths, &ctx.paths.state(ctx.vmid), Limits::HOST_FILE).ok()??;
    State::parse(&t).ok()
}

/// What the next pre-start would change in the container config, as
/// `+ line` / `- line` for added and removed lines. Pure over what it reads.
fn next_start_changes(ctx: &mut Ctx) -> Vec<String> {
    let Ok(Some((_, d))) = plan(ctx) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(r) = &d.refusal {
        out.push(format!("the next start will be refused: {r}"));
    }
    if let Some(c) = d.change(Target::PveConf) {
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
    let changes = next_start_changes(ctx);
    let state = read_state_quiet(ctx);
    if let Some(f) = state
        .as_ref()
        .map(|s| &s.dev_fallback)
        .filter(|f| !f.is_empty())
    {
        for fb in f {
            ctx.log.info(
                "next-start",
                format!(
                    "next start: {} for uid {} gid {} ({})",
                    fb.path, fb.uid, fb.gid, fb.reason
                ),
            );
        }
    }
    for c in &changes {
        ctx.log
            .info("next-start", format!("next start changes the config: {c}"));
    }
    if reboot {
        ctx.log.info(
            "reboot",
            "in-guest reboot: Proxmox runs no hookscript phase for the restart; runtime-user detection runs again at the next full start",
        );
    }
    let message = if reboot { "reboot" } else { "stopped" };
    if state.is_none() {
        // Nothing recorded for this container: do not start a state file here.
        return Ok(());
    }
    if let Err(e) = update_state(ctx.paths, ctx.vmid, |s| {
        s.last_run = Some(LastRun {
            phase: "post-stop".into(),
            outcome: "ok".into(),
            message: message.into(),
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        });
    }) {
        ctx.log.audit(&Event::warn(
            "state",
            format!("could not record the stop: {e:#}"),
        ));
    }
    Ok(())
}
