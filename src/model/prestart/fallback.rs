//! The fallback step: devices post-start found the service cannot reach
//! through groups.

use super::{Draft, Facts};
use crate::model::event::Event;

/// Devices post-start found the service cannot reach through groups (it
/// drops supplementary groups): the fix is the node owned by the service's
/// uid/gid through `devN`. A line a person wrote is never changed; the task
/// log says what to set. (A devices step that owns `devN` lines applies
/// [`State::dev_fallback_for`] itself.)
pub fn plan_dev_fallback(facts: &Facts, d: &mut Draft) -> Result<(), String> {
    let Some(state) = &facts.state else {
        return Ok(());
    };
    let vmid = facts.vmid;
    for fb in &state.dev_fallback {
        let dev = d.conf.dev_entries().into_iter().find(|e| e.path == fb.path);
        let want = (fb.uid.to_string(), fb.gid.to_string());
        match dev {
            Some(e) if e.uid.as_deref() == Some(want.0.as_str())
                && e.gid.as_deref() == Some(want.1.as_str()) => {}
            Some(e) => {
                let owned = format!("dev{}: {}", e.index, e.value);
                if state.owned.dev_entries.contains(&owned) {
                    continue;
                }
                let mut fixed = e.clone();
                fixed.uid = Some(want.0.clone());
                fixed.gid = Some(want.1.clone());
                d.events.push(Event::warn(
                    "dev-fallback",
                    format!(
                        "{}: the service (uid {} gid {}) runs without supplementary groups, so group access cannot help; give it the node: pct set {vmid} --dev{} {}",
                        fb.path, fb.uid, fb.gid, e.index, fixed.render()
                    ),
                ));
            }
            None => d.events.push(Event::warn(
                "dev-fallback",
                format!(
                    "{}: the service (uid {} gid {}) runs without supplementary groups, so group access cannot help; pass the device as devN with its uid/gid instead: pct set {vmid} --devN {},uid={},gid={}",
                    fb.path, fb.uid, fb.gid, fb.path, fb.uid, fb.gid
                ),
            )),
        }
    }
    Ok(())
}
