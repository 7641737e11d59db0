//! The first-boot step: group setup before init when the service user is
//! already known (see `model::firstboot` for the hook's format).

use super::{Draft, Facts, Refusal};
use crate::model::event::Event;
use crate::model::firstboot;
use crate::model::lxcconf::LxcConfig;

/// First boot: when the service user is already known, an
/// `lxc.hook.mount` line in the generated config (this start only) applies
/// the Group rules to the rootfs before init runs. See `model::firstboot`.
/// Never refuses: without it, post-start still fixes groups after the start.
pub fn plan_first_boot(facts: &Facts, d: &mut Draft) -> Result<(), Refusal> {
    let Some(plan) = firstboot::plan(&d.conf, facts.state.as_ref()) else {
        return Ok(());
    };
    let exe = match &facts.mount_hook_exe {
        Ok(e) => e,
        Err(why) => {
            d.events.push(Event::info(
                "first-boot-skipped",
                format!("no group setup before init ({why}); post-start does it after the start"),
            ));
            return Ok(());
        }
    };
    let value = match firstboot::hook_value(exe, &plan) {
        Ok(v) => v,
        Err(why) => {
            d.events.push(Event::info(
                "first-boot-skipped",
                format!("no group setup before init: {why}; post-start does it after the start"),
            ));
            return Ok(());
        }
    };
    let Some(text) = d.lxc_text(facts).map(str::to_string) else {
        return Ok(());
    };
    if LxcConfig::parse(&text)
        .values(firstboot::KEY)
        .any(|v| v == value)
    {
        return Ok(());
    }
    let mut new = text;
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(&format!("{} = {value}\n", firstboot::KEY));
    d.lxc = Some(new);
    let groups: Vec<String> = plan
        .groups
        .iter()
        .map(|(g, n)| format!("{n} ({g})"))
        .collect();
    d.lxc_reasons.push(format!(
        "this start puts uid {} ({}) in {} before init runs",
        plan.uid,
        plan.source,
        groups.join(", ")
    ));
    Ok(())
}
