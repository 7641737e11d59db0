//! `pct-passthrough plan <vmid>`: what the next pre-start would change, as a
//! unified diff per file with a reason per hunk. Reports pre-start's own
//! decision (`phase::next_start::plan`, chain check included), so the plan is
//! exactly what a start would do. Writes nothing.

use crate::model::diff;
use crate::model::event::Level;
use crate::paths::{Paths, Vmid};
use crate::phase::next_start::{self, Planned};
use crate::sys::log::Log;

pub fn run(paths: &Paths, vmid: Vmid) -> u8 {
    let mut log = Log::new(vmid, "plan");
    let mut state_problem = None;
    let planned = next_start::plan(paths, vmid, &mut state_problem);
    if let Some(p) = state_problem {
        log.warn("state-ignored", p);
    }
    if let Planned::Decided(b) = &planned {
        for e in b.1.events.iter().filter(|e| e.level >= Level::Warn) {
            log.emit(e);
        }
    }
    if let Some(r) = planned.refusal() {
        log.error(
            "plan-refusal",
            format!("pre-start would refuse to start {vmid}: {r}"),
        );
        return 1;
    }
    let decision = match planned {
        Planned::Idle => {
            println!("nothing to do: pre-start has nothing to act on for {vmid}");
            return 0;
        }
        Planned::Disabled => {
            println!("nothing to do: pct-passthrough is disabled for {vmid} (enabled = false)");
            return 0;
        }
        Planned::Decided(b) => b.1,
        Planned::Refused(_) => return 1,
    };
    let text = diff::render_changes(&paths.root().display().to_string(), &decision.changes);
    if text.is_empty() {
        println!("nothing to do: pre-start would change no file for {vmid}");
    } else {
        print!("{text}");
    }
    0
}
