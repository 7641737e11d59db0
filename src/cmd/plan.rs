//! `pct-passthrough plan <vmid>`: what the next pre-start would change, as a
//! unified diff per file with a reason per hunk. Uses pre-start's own
//! read-and-decide step, so the plan is exactly what a start would do.
//! Writes nothing.

use crate::model::diff;
use crate::model::event::Level;
use crate::paths::{Paths, Vmid};
use crate::phase::{pre_start, Ctx, Mode};
use crate::sys::log::Log;

pub fn run(paths: &Paths, vmid: Vmid) -> u8 {
    let mut log = Log::new(vmid, "plan");
    let mut ctx = Ctx {
        paths,
        vmid,
        mode: Mode::Manual { dry_run: true },
        log: &mut log,
    };
    let planned = match pre_start::plan(&mut ctx) {
        Ok(p) => p,
        Err(e) => {
            ctx.log.error("plan-failed", format!("{e:#}"));
            return 1;
        }
    };
    let Some((_facts, decision)) = planned else {
        println!("nothing to do: pre-start has nothing to act on for {vmid}");
        return 0;
    };
    for e in decision.events.iter().filter(|e| e.level >= Level::Warn) {
        ctx.log.emit(e);
    }
    if let Some(refusal) = &decision.refusal {
        ctx.log.error(
            "plan-refusal",
            format!("pre-start would refuse to start {vmid}: {refusal}"),
        );
        return 1;
    }
    let text = diff::render_changes(&paths.root().display().to_string(), &decision.changes);
    if text.is_empty() {
        println!("nothing to do: pre-start would change no file for {vmid}");
    } else {
        print!("{text}");
    }
    0
}
