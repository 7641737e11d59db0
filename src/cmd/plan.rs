//! `pct-passthrough plan <vmid>`: what the next pre-start would change, as a
//! unified diff per file with a reason per hunk. Reports pre-start's own
//! decision (`phase::next_start::plan`, chain check included), so the plan is
//! exactly what a start would do. Writes nothing.

use crate::model::diff;
use crate::model::event::Level;
use crate::model::shift::{parse_map, Moves};
use crate::paths::{Paths, Vmid};
use crate::phase::next_start::{self, Planned};
use crate::sys::log::Log;

pub fn run(paths: &Paths, vmid: Vmid) -> u8 {
    let mut log = Log::new(vmid, "plan");
    let mut notes = next_start::StateNotes::default();
    let planned = next_start::plan(paths, vmid, &mut notes);
    if let Some(p) = notes.problem {
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
    let (conf, decision) = match planned {
        Planned::Idle => {
            println!("nothing to do: pre-start has nothing to act on for {vmid}");
            return 0;
        }
        Planned::Disabled => {
            println!("nothing to do: pct-passthrough is disabled for {vmid} (enabled = false)");
            return 0;
        }
        Planned::Decided(b) => (b.0.conf, b.1),
        Planned::Refused(_) => return 1,
    };
    let text = diff::render_changes(&paths.root().display().to_string(), &decision.changes);
    if text.is_empty() && decision.shift.is_empty() {
        println!("nothing to do: pre-start would change no file for {vmid}");
    } else {
        print!("{text}");
    }
    print_shift(paths, vmid, &conf, &decision.shift, &mut log);
    0
}

/// What the start's shift hook would re-own, counted where the rootfs is
/// reachable now.
fn print_shift(
    paths: &Paths,
    vmid: Vmid,
    conf: &crate::model::pveconf::PveConfig,
    steps: &[crate::model::shift::ShiftStep],
    log: &mut Log,
) {
    if steps.is_empty() {
        return;
    }
    for step in steps {
        let (Ok(from), Ok(to)) = (parse_map(&step.from), parse_map(&step.to)) else {
            continue;
        };
        if let Ok(moves) = Moves::between(&from, &to) {
            for m in &moves.moves {
                println!("re-own: the map moves {m}");
            }
        }
    }
    match crate::phase::shift::preview(paths, vmid, conf, steps) {
        Ok(Some(r)) => println!("re-own at the next start: {}", r.summary()),
        Ok(None) => println!(
            "re-own at the next start: {} is not mounted now, so the count is not known (pct mount {vmid} mounts it; pct unmount {vmid} after)",
            crate::phase::shift::rootfs_dir(paths, vmid).display()
        ),
        Err(e) => log.warn("shift-preview", format!("cannot count what the shift would re-own: {e:#}")),
    }
}
