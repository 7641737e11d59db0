//! Restores and copies: a config restored from a backup or cloned to a new
//! VMID carries the tool's lines but no state that owns them. When nothing
//! is owned, the lines equal to what the tool would write for the
//! container's current needs are recognised as its own; every other line
//! stays a person's.

use super::{Draft, Facts, Refusal, STEPS};
use crate::model::event::Event;
use crate::model::idmap::IdmapEntry;
use crate::model::pveconf::LineKind;
use crate::model::state::{Owned, OwnedLine};

/// Raw keys the tool writes for a container's needs: left out of the
/// config the tool plans against, to see what it would write there.
const TOOL_RAW_KEYS: &[&str] = &[
    "lxc.idmap",
    "lxc.cgroup2.devices.allow",
    "lxc.cgroup.devices.allow",
];

/// The adopt step (first of [`STEPS`]): with nothing owned, plans the
/// container as if the tool's kinds of lines were absent, and owns the
/// lines of that plan the config already holds, as they are. The ID map
/// is owned whole or not at all: the config's `lxc.idmap` lines must be
/// exactly the tool's.
pub fn plan_adopt(facts: &Facts, d: &mut Draft) -> Result<(), Refusal> {
    if !d.state.owned.is_empty() || !has_candidates(facts) {
        return Ok(());
    }
    let Some(would) = would_own(facts, d) else {
        return Ok(());
    };
    let found = present(facts, &would);
    if found.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = found
        .conf_lines
        .iter()
        .chain(&found.dev_entries)
        .map(ToString::to_string)
        .collect();
    d.events.push(Event::info(
        "adopt-lines",
        format!(
            "{}: recognised as the tool's (equal to what it writes for this container; \
             a restore or copy carries them without state): {}",
            facts.conf_path,
            lines.join("; ")
        ),
    ));
    d.state.owned = found;
    Ok(())
}

/// A `devN` entry or a raw line of a kind the tool writes.
fn has_candidates(facts: &Facts) -> bool {
    TOOL_RAW_KEYS
        .iter()
        .any(|k| facts.conf.raw_values(k).next().is_some())
        || !facts.conf.dev_entries().is_empty()
}

/// What the later steps would own for this container, planned on its
/// config without the tool's kinds of raw lines; `None` if that plan
/// refuses.
fn would_own(facts: &Facts, d: &Draft) -> Option<Owned> {
    let mut bare = facts.clone();
    bare.conf.remove_main_where(
        |l| matches!(&l.kind, LineKind::Raw { key, .. } if TOOL_RAW_KEYS.contains(&key.as_str())),
    );
    let mut draft = Draft::new(&bare);
    draft.state = d.state.clone();
    for step in &STEPS[1..] {
        step(&bare, &mut draft).ok()?;
    }
    Some(draft.state.owned)
}

/// The lines of `would` the config holds as they are.
fn present(facts: &Facts, would: &Owned) -> Owned {
    let mut found = Owned::default();
    let tool_map: Vec<&OwnedLine> = would.lines_of("lxc.idmap").collect();
    if !tool_map.is_empty() && same_map(&facts.conf.idmap_lines(), &tool_map) {
        found.conf_lines.extend(tool_map.into_iter().cloned());
    }
    for line in would.conf_lines.iter().filter(|l| l.key != "lxc.idmap") {
        if facts.conf.raw_values(&line.key).any(|v| v == line.value) {
            found.conf_lines.push(line.clone());
        }
    }
    for line in &would.dev_entries {
        if facts.conf.get(&line.key) == Some(line.value.as_str()) {
            found.dev_entries.push(line.clone());
        }
    }
    found
}

/// The same entries, in any order and spacing.
fn same_map(conf: &[&str], tool: &[&OwnedLine]) -> bool {
    let parse = |v: &str| IdmapEntry::parse(v).ok();
    let mut a: Vec<Option<IdmapEntry>> = conf.iter().map(|v| parse(v)).collect();
    let mut b: Vec<Option<IdmapEntry>> = tool.iter().map(|l| parse(&l.value)).collect();
    if a.iter().chain(&b).any(Option::is_none) {
        return false;
    }
    a.sort_by_key(|e| e.map(|e| e.to_string()));
    b.sort_by_key(|e| e.map(|e| e.to_string()));
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::prestart::tests::apply;
    use crate::model::prestart::{decide, FileTarget, HostFile};
    use crate::model::pveconf::PveConfig;

    const BIND: &str =
        "lxc.mount.entry: /dev/serial/by-id/usb-x dev/ttyUSB0 none bind,optional,create=file\n";

    fn facts(conf: &str) -> Facts {
        let mut f = Facts::minimal(106, "/etc/pve/lxc/106.conf", PveConfig::parse(conf));
        f.subuid = HostFile::new("/etc/subuid", Some("root:100000:65536\n".into()));
        f.subgid = HostFile::new("/etc/subgid", Some("root:100000:65536\nroot:20:1\n".into()));
        f
    }

    /// The config a first start wrote, without the state that owns it.
    fn restored(conf: &str) -> Facts {
        let f = facts(conf);
        let d = decide(&f);
        assert_eq!(d.refusal, None);
        let mut g = apply(&f, &d);
        g.state = None;
        g
    }

    #[test]
    fn a_restored_map_is_recognised_and_goes_with_the_device() {
        let base = format!("arch: amd64\nunprivileged: 1\n{BIND}");
        let f = restored(&base);
        assert!(f.conf.render().contains("lxc.idmap: g 20 20 1"));
        let d = decide(&f);
        assert_eq!(d.refusal, None);
        assert!(
            d.events.iter().any(|e| e.name == "adopt-lines"),
            "{:?}",
            d.events
        );
        // The config is already right; only the state is recorded.
        assert!(d.change(FileTarget::PveConf).is_none());
        let f2 = apply(&f, &d);
        let owned = &f2.state.as_ref().unwrap().owned;
        assert_eq!(owned.lines_of("lxc.idmap").count(), 4, "{owned:?}");
        // The device goes: exactly the tool's lines go with it.
        let person = "lxc.cgroup2.devices.allow: c 1:3 rwm\n";
        let mut f3 = f2.clone();
        f3.conf = PveConfig::parse(&f2.conf.render().replace(BIND, person));
        let d3 = decide(&f3);
        assert_eq!(d3.refusal, None);
        let conf = &d3.change(FileTarget::PveConf).unwrap().new;
        assert_eq!(conf, &format!("arch: amd64\nunprivileged: 1\n{person}"));
    }

    #[test]
    fn lines_other_than_the_tools_stay_a_persons() {
        // A map that differs from the tool's by one line is kept whole.
        let conf = format!(
            "unprivileged: 1\n{BIND}lxc.idmap: u 0 100000 65536\nlxc.idmap: g 0 100000 20\nlxc.idmap: g 20 20 1\nlxc.idmap: g 21 100021 65000\n"
        );
        let f = facts(&conf);
        let mut draft = Draft::new(&f);
        plan_adopt(&f, &mut draft).unwrap();
        assert!(draft.state.owned.is_empty(), "{:?}", draft.state.owned);
        // Something already owned: the step does nothing.
        let f = restored(&format!("unprivileged: 1\n{BIND}"));
        let mut draft = Draft::new(&f);
        draft
            .state
            .owned
            .conf_lines
            .push(OwnedLine::new("lxc.idmap", "g 20 20 1"));
        plan_adopt(&f, &mut draft).unwrap();
        assert_eq!(draft.state.owned.conf_lines.len(), 1);
        assert!(draft.events.is_empty());
    }
}
