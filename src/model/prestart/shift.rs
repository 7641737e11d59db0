//! The shift step: when this start's map moves container IDs to other host
//! IDs than the map the files are owned under, record the change in the
//! state's journal and have LXC re-own the files before init, from an
//! `lxc.hook.pre-start` line in this start's generated config. LXC runs it
//! in the monitor's mount namespace after Proxmox's own pre-start hook has
//! mounted the rootfs and the mount points, whatever the storage (see the
//! README's "ID maps": rootfs ownership).

use super::{Draft, Facts, Refusal};
use crate::model::event::Event;
use crate::model::idmap::{pve_default, render_values, IdmapEntry};
use crate::model::lxcconf::LxcConfig;
use crate::model::mountmap;
use crate::model::shift::{parse_map, Moves, ShiftStep};

/// The generated config's key for the shift hook.
pub const HOOK_KEY: &str = "lxc.hook.pre-start";
/// The subcommand LXC runs.
pub const SUBCOMMAND: &str = "lxc-shift-hook";

/// The map the config gives before this pre-start (what the container last
/// ran with, when the state does not know better).
fn config_map(facts: &Facts) -> Vec<String> {
    let lines = facts.conf.idmap_lines();
    if lines.is_empty() && facts.conf.unprivileged() {
        return render_values(&pve_default());
    }
    lines.iter().map(|l| l.trim().to_string()).collect()
}

/// The hook line's value: LXC runs it through `sh -c`.
pub fn hook_value(exe: &str) -> Result<String, String> {
    if !exe.starts_with('/')
        || !exe
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'+'))
    {
        return Err(format!(
            "the binary's path {exe:?} has characters LXC's hook runner would interpret"
        ));
    }
    Ok(format!("{exe} {SUBCOMMAND}"))
}

/// The pending map changes after this start's: the journal's steps the hook
/// has started, then the one from the map the files are under to `new`, if
/// it moves anything. Steps never started moved nothing: they are replaced.
pub fn pending_steps(facts: &Facts, new: &[IdmapEntry]) -> Result<Vec<ShiftStep>, Refusal> {
    let state = facts.state.as_ref();
    let mut steps = state.map(|s| s.shift.steps.clone()).unwrap_or_default();
    let base = match steps.iter().position(|s| !s.started) {
        Some(i) => {
            let from = steps[i].from.clone();
            steps.truncate(i);
            from
        }
        None => steps
            .last()
            .map(|s| s.to.clone())
            .or_else(|| state.and_then(|s| s.files_idmap.clone()))
            .unwrap_or_else(|| config_map(facts)),
    };
    let base_map = parse_map(&base).map_err(|e| {
        Refusal::new(
            format!("{}: the recorded ID map of the container's files: {e}", facts.state_path),
            "remove files_idmap from the state file; the config's map is then taken as the files' map",
        )
    })?;
    let moves = Moves::between(&base_map, new).map_err(|e| {
        Refusal::new(
            format!("the container's files cannot follow this map change safely: {e}"),
            "make the change in two starts: first remove the old passthrough and start once, then add the new one",
        )
    })?;
    if !moves.is_empty() {
        steps.push(ShiftStep::new(base, render_values(new)));
    }
    Ok(steps)
}

pub fn plan_shift(facts: &Facts, d: &mut Draft) -> Result<(), Refusal> {
    let Some(new) = d.idmap.clone() else {
        return Ok(());
    };
    let steps = pending_steps(facts, &new)?;
    if steps.is_empty() {
        d.state.shift.steps.clear();
        // Recorded where the state is written anyway, or kept up to date:
        // without it, the config's map is still the files' map next time.
        let had = facts
            .state
            .as_ref()
            .is_some_and(|s| s.files_idmap.is_some());
        let written = match &facts.state {
            Some(s) => *s != d.state,
            None => d.state != crate::model::state::State::new(facts.vmid),
        };
        if had || written {
            d.state.files_idmap = Some(render_values(&new));
        }
        return Ok(());
    }
    let exe = facts
        .shift_exe
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|e| hook_value(e));
    let value = exe.map_err(|why| {
        Refusal::new(
            format!("this start must re-own the container's files for its new ID map, but cannot run the shift hook: {why}"),
            "install pct-passthrough at a plain path (install.sh puts it at /var/lib/vz/snippets/pct-passthrough)",
        )
    })?;
    if d.state.files_idmap.is_none() {
        d.state.files_idmap = Some(steps[0].from.clone());
    }
    d.state.shift.steps = steps.clone();
    for step in &steps {
        let (Ok(from), Ok(to)) = (parse_map(&step.from), parse_map(&step.to)) else {
            continue;
        };
        if let Ok(moves) = Moves::between(&from, &to) {
            for m in &moves.moves {
                d.events.push(Event::info(
                    "shift-planned",
                    format!("the map moves {m}: this start re-owns those files before init"),
                ));
            }
        }
    }
    mount_point_notes(facts, d);
    let Some(text) = d.lxc_text(facts).map(str::to_string) else {
        d.events.push(Event::warn(
            "shift-next-start",
            format!(
                "{} is missing: the files are re-owned at the next start",
                facts.lxc_config.path
            ),
        ));
        return Ok(());
    };
    if LxcConfig::parse(&text).values(HOOK_KEY).any(|v| v == value) {
        return Ok(());
    }
    let mut new_text = text;
    if !new_text.is_empty() && !new_text.ends_with('\n') {
        new_text.push('\n');
    }
    new_text.push_str(&format!("{HOOK_KEY} = {value}\n"));
    d.lxc = Some(new_text);
    d.lxc_reasons.push(
        "this start re-owns the files whose host IDs the map change moves (rootfs and storage mount points), after Proxmox mounts them and before init".into(),
    );
    Ok(())
}

/// What the shift leaves alone, said before the start.
fn mount_point_notes(facts: &Facts, d: &mut Draft) {
    for mp in d.conf.mp_entries() {
        let key = format!("mp{}", mp.index);
        let ro = mp
            .value
            .split(',')
            .any(|p| matches!(p, "ro=1" | "ro=yes" | "ro=on" | "ro=true"));
        if mountmap::is_bind(&mp) {
            d.events.push(Event::info(
                "shift-skip",
                format!("{key} is a bind mount of the host's {}: its files are the host's and are not re-owned", mp.volume),
            ));
        } else if mp.idmap.is_some() {
            d.events.push(
                Event::warn(
                    "shift-skip",
                    format!("{key} has its own idmap=: its files are not re-owned"),
                )
                .with_fix("check the ownership of its files inside the container"),
            );
        } else if ro {
            d.events.push(
                Event::warn(
                    "shift-skip",
                    format!("{key} is read-only: its files are not re-owned"),
                )
                .with_fix(format!(
                    "to re-own them, remove ro=1 from {key} for one start (pct set {} --{key} ...)",
                    facts.vmid
                )),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::apply;
    use super::super::*;
    use crate::model::pveconf::PveConfig;

    const SERIAL: &str = "arch: amd64\nunprivileged: 1\nlxc.mount.entry: /dev/serial/by-id/usb-x dev/ttyUSB0 none bind,optional,create=file\n";
    const GENERATED: &str = "lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n";

    fn facts(conf: &str) -> Facts {
        let mut f = Facts::minimal(105, "/etc/pve/lxc/105.conf", PveConfig::parse(conf));
        f.subuid.text = Some("root:100000:65536\n".into());
        f.subgid.text = Some("root:100000:65536\nroot:20:1\n".into());
        f.lxc_config.text = Some(GENERATED.into());
        f.shift_exe = Ok("/var/lib/vz/snippets/pct-passthrough".into());
        f
    }

    #[test]
    fn a_punch_records_the_journal_and_adds_the_hook() {
        let f = facts(SERIAL);
        let d = decide(&f);
        assert_eq!(d.refusal, None);
        let lxc = &d.change(FileTarget::LxcConfig).unwrap().new;
        assert!(
            lxc.ends_with(
                "lxc.hook.pre-start = /var/lib/vz/snippets/pct-passthrough lxc-shift-hook\n"
            ),
            "{lxc}"
        );
        // The journal is in the state the config write depends on.
        let first = &d.changes[0];
        assert!(matches!(
            first.target,
            FileTarget::State | FileTarget::StateInterim
        ));
        let st = State::parse(&first.new).unwrap();
        assert_eq!(st.shift.steps.len(), 1);
        assert_eq!(
            st.shift.steps[0].from,
            ["u 0 100000 65536", "g 0 100000 65536"]
        );
        assert_eq!(st.files_idmap.as_deref(), Some(&st.shift.steps[0].from[..]));
        assert!(d.events.iter().any(|e| e.name == "shift-planned"
            && e.message.contains("container gid 20: host 100020 -> 20")));
        // Until the hook ran, every pre-start asks for it again, no new step.
        let f1 = apply(&f, &d);
        let mut f1b = f1.clone();
        f1b.lxc_config.text = Some(GENERATED.into());
        let d1 = decide(&f1b);
        assert!(d1
            .change(FileTarget::LxcConfig)
            .unwrap()
            .new
            .contains("lxc-shift-hook"));
        assert!(d1.change(FileTarget::State).is_none());
    }

    #[test]
    fn after_the_hook_nothing_more_and_removal_shifts_back() {
        let f = facts(SERIAL);
        let f1 = apply(&f, &decide(&f));
        // The hook ran: journal done, files under the new map.
        let mut st = f1.state.clone().unwrap();
        st.files_idmap = Some(st.shift.steps[0].to.clone());
        st.shift.steps.clear();
        let mut f2 = f1.clone();
        f2.state = Some(st);
        let d2 = decide(&f2);
        assert!(d2.changes.is_empty(), "{:#?}", d2.changes);
        // The device goes: the punch goes, and gid 20 moves back.
        let mut f3 = f2.clone();
        f3.conf = PveConfig::parse(
            &f2.conf
                .render()
                .replace("lxc.mount.entry", "#lxc.mount.entry"),
        );
        let d3 = decide(&f3);
        let st3 = State::parse(&d3.changes[0].new).unwrap();
        assert_eq!(st3.shift.steps.len(), 1);
        assert!(d3
            .events
            .iter()
            .any(|e| e.message.contains("container gid 20: host 20 -> 100020")));
    }

    #[test]
    fn a_cycle_or_an_unusable_path_refuses_before_anything_changes() {
        let mut f = facts("arch: amd64\nunprivileged: 1\n");
        f.policy = Some(
            crate::model::policy::Policy::parse("p", "idmap = [\"uid 1000 1001\"]\n").unwrap(),
        );
        let mut st = State::new(105);
        st.files_idmap = Some(vec![
            "u 0 100000 1000".into(),
            "u 1000 1000 1".into(),
            "u 1001 101001 64535".into(),
            "g 0 100000 65536".into(),
        ]);
        f.state = Some(st);
        let d = decide(&f);
        let r = d.refusal.unwrap();
        assert!(
            r.what
                .contains("host uid 1000 would be both moved from and moved to"),
            "{r}"
        );
        assert!(d.changes.is_empty());
        let mut f = facts(SERIAL);
        f.shift_exe = Ok("/opt/my tools/pct-passthrough".into());
        let d = decide(&f);
        assert!(d
            .refusal
            .unwrap()
            .what
            .contains("cannot run the shift hook"));
        assert!(d.changes.is_empty());
    }

    #[test]
    fn a_map_changed_before_the_hook_started_replaces_its_step_after_it_a_further_one() {
        let f = facts(SERIAL);
        let f1 = apply(&f, &decide(&f));
        let policy =
            crate::model::policy::Policy::parse("p", "idmap = [\"both 1000 1000\"]\n").unwrap();
        // Never started: one step from the files' map to the new one.
        let mut f2 = f1.clone();
        f2.policy = Some(policy.clone());
        let d = decide(&f2);
        let st = State::parse(&d.changes[0].new).unwrap();
        assert_eq!(st.shift.steps.len(), 1);
        assert_eq!(
            st.shift.steps[0].from,
            ["u 0 100000 65536", "g 0 100000 65536"]
        );
        assert!(d.events.iter().any(|e| e
            .message
            .contains("container uid 1000: host 101000 -> 1000")));
        // Started (the hook began, then the start failed): kept, and a
        // further step from where it leads.
        let mut f3 = f1.clone();
        f3.state.as_mut().unwrap().shift.steps[0].started = true;
        f3.policy = Some(policy);
        let d = decide(&f3);
        let st = State::parse(&d.changes[0].new).unwrap();
        assert_eq!(st.shift.steps.len(), 2);
        assert!(st.shift.steps[0].started);
        assert_eq!(st.shift.steps[1].from, st.shift.steps[0].to);
        // The map goes back before the hook started: nothing to re-own.
        let mut f4 = f1.clone();
        f4.conf = PveConfig::parse(
            &f1.conf
                .render()
                .replace("lxc.mount.entry", "#lxc.mount.entry"),
        );
        // Proxmox regenerated this start's config from the config.
        f4.lxc_config.text = Some(GENERATED.into());
        let d = decide(&f4);
        assert!(d
            .change(FileTarget::LxcConfig)
            .is_none_or(|c| !c.new.contains("lxc-shift-hook")));
        let st = State::parse(&d.change(FileTarget::State).unwrap().new).unwrap();
        assert!(st.shift.steps.is_empty());
    }

    #[test]
    fn mount_points_the_shift_leaves_alone_are_named_before_the_start() {
        let conf = format!("{SERIAL}mp0: /tank/media,mp=/media\nmp1: local-lvm:vm-105-disk-1,mp=/ro,ro=1\nmp2: local-lvm:vm-105-disk-2,mp=/m,idmap=passthrough\nmp3: local-lvm:vm-105-disk-3,mp=/ok\n");
        let d = decide(&facts(&conf));
        let said: Vec<String> = d
            .events
            .iter()
            .filter(|e| e.name == "shift-skip")
            .map(ToString::to_string)
            .collect();
        assert_eq!(said.len(), 3, "{said:#?}");
        assert!(
            said[0].contains("mp0 is a bind mount of the host's /tank/media"),
            "{said:#?}"
        );
        assert!(
            said[1].contains("mp1 is read-only") && said[1].contains("remove ro=1"),
            "{said:#?}"
        );
        assert!(said[2].contains("mp2 has its own idmap="), "{said:#?}");
    }

    #[test]
    fn privileged_and_unchanged_maps_record_only_the_map() {
        let d = decide(&facts("arch: amd64\ndev0: /dev/ttyUSB0\n"));
        assert!(d.changes.is_empty());
        let mut f = facts("arch: amd64\nunprivileged: 1\ndev0: /dev/ttyUSB0\n");
        f.subgid.text = Some("root:100000:65536\n".into());
        let d = decide(&f);
        assert!(d.change(FileTarget::LxcConfig).is_none());
        assert!(
            d.change(FileTarget::State).is_none(),
            "no state only for the map"
        );
    }
}
