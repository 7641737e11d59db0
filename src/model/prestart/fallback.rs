//! The fallback step: devices post-start found the service cannot reach
//! through groups (it drops supplementary groups). A `devN` the tool wrote,
//! or one a person wrote without an owner, gets the service's uid/gid in the
//! devices step, a bind or an optional policy device a private node of
//! this start; this step says what to do where the tool may not change the
//! entry: a person's own `uid=`/`gid=`.

use super::{Draft, Facts, Refusal};
use crate::model::event::Event;

pub fn plan_dev_fallback(facts: &Facts, d: &mut Draft) -> Result<(), Refusal> {
    let Some(state) = &facts.state else {
        return Ok(());
    };
    let vmid = facts.vmid;
    let entries = d.conf.dev_entries();
    for fb in &state.dev_fallback {
        let (uid, gid) = (fb.uid, fb.gid);
        let why = format!(
            "{}: the service (uid {} gid {}) runs without supplementary groups, so group access cannot help",
            fb.path, fb.uid, fb.gid
        );
        match entries.iter().find(|e| e.path == fb.path) {
            Some(e) if e.uid == Some(uid) && e.gid == Some(gid) => {}
            Some(e) => {
                let mut fixed = e.clone();
                fixed.uid = Some(uid);
                fixed.gid = Some(gid);
                d.events.push(
                    Event::warn(
                        "dev-fallback",
                        format!("{why}; dev{} sets its own owner", e.index),
                    )
                    .with_fix(format!(
                        "pct set {vmid} --dev{} {}",
                        e.index,
                        fixed.render()
                    )),
                );
            }
            // A bind or an optional policy device: the devices step binds
            // a private node owned by the service; nothing to ask for.
            None => {}
        }
    }
    Ok(())
}
