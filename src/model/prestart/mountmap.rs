//! The mount-point step: a policy `[[mount]]` becomes Proxmox's `idmap=`
//! option on that `mpN` where the installed pve-container has it (no change
//! to the container's map, its files or the subordinate IDs); on older
//! Proxmox its lines join the container-wide map instead (a passthrough
//! source), and the shift step re-owns what that moves.

use super::{Draft, Facts, Refusal};
use crate::model::event::Event;
use crate::model::idmap::{Passthrough, RawIdmap};
use crate::model::mountmap::{self, supports_mp_idmap};
use crate::model::policy::{LineIndex, MountPolicy};
use crate::model::state::OwnedLine;

/// True when this host writes `idmap=` on mount points.
pub fn mp_idmap_supported(facts: &Facts) -> bool {
    facts
        .pve_container
        .as_deref()
        .is_some_and(supports_mp_idmap)
}

fn mounts(facts: &Facts) -> &[MountPolicy] {
    facts.policy.as_ref().map_or(&[], |p| p.mounts.as_slice())
}

/// The raw lines of one `[[mount]]`, each checked, with the policy line.
fn raw_lines(facts: &Facts, m: &MountPolicy) -> Result<Vec<(usize, RawIdmap)>, Refusal> {
    let lines = LineIndex::new(facts.policy_file.text.as_deref().unwrap_or(""));
    m.idmap
        .iter()
        .map(|item| {
            let line = lines.line_of(item.span().start);
            RawIdmap::parse(item.get_ref())
                .map(|r| (line, r))
                .map_err(|e| {
                    Refusal::new(
                        format!("{} line {line}: mount idmap {e}", facts.policy_file.path),
                        "fix the line (raw.idmap syntax: \"both 1000 1000\", the ID on the mount's file system first)",
                    )
                })
        })
        .collect()
}

/// Passthrough source: on Proxmox without per-mount-point maps, every
/// `[[mount]]` line is a container-wide passthrough.
pub fn fallback_passthroughs(facts: &Facts) -> Result<Vec<Passthrough>, Refusal> {
    if mp_idmap_supported(facts) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for m in mounts(facts) {
        for (line, raw) in raw_lines(facts, m)? {
            out.extend(raw.passthroughs(&format!(
                "policy line {line}, [[mount]] {} (container-wide: {})",
                m.mp.get_ref(),
                version_words(facts)
            )));
        }
    }
    Ok(out)
}

fn version_words(facts: &Facts) -> String {
    match &facts.pve_container {
        Some(v) => format!(
            "pve-container {v} has no per-mount-point idmap, which came with {}",
            min_version()
        ),
        None => format!(
            "pve-container's version is unknown; per-mount-point idmap needs {}",
            min_version()
        ),
    }
}

fn min_version() -> String {
    let [a, b, c] = mountmap::MIN_VERSION;
    format!("{a}.{b}.{c}")
}

/// Writes, keeps or removes the tool's `idmap=` on each `mpN`.
pub fn plan_mount_maps(facts: &Facts, d: &mut Draft) -> Result<(), Refusal> {
    let supported = mp_idmap_supported(facts);
    let mut wanted: Vec<OwnedLine> = Vec::new();
    for m in mounts(facts) {
        let key = m.mp.get_ref();
        let at = facts
            .policy
            .as_ref()
            .map_or_else(String::new, |p| p.at(m.mp.span().start));
        let Some(entry) = mp_entry(d, key) else {
            return Err(Refusal::new(
                format!("{at}: [[mount]] mp = \"{key}\", but the container config has no {key}"),
                format!("add the mount point first (pct set {} --{key} /host/dir,mp=/path), or fix the key", facts.vmid),
            ));
        };
        let lines: Vec<RawIdmap> = raw_lines(facts, m)?.into_iter().map(|(_, r)| r).collect();
        let value = mountmap::value_for(&lines).map_err(|e| {
            Refusal::new(
                format!("{at}: [[mount]] {key}: {e}"),
                "make the lines of one mount point not overlap",
            )
        })?;
        if !supported {
            d.events.push(Event::warn(
                "mount-map-fallback",
                format!(
                    "{key}: {}; its passthrough goes into the container's map instead, and files of the IDs it moves are re-owned",
                    version_words(facts)
                ),
            ).with_fix("upgrade Proxmox VE (apt full-upgrade) to get the per-mount-point map, which leaves the container's map and files alone"));
            continue;
        }
        let owned = OwnedLine::new(key.clone(), format!("idmap={value}"));
        let was_ours = facts
            .state
            .as_ref()
            .is_some_and(|s| s.owned.mp_options.iter().any(|o| o.key == *key));
        match entry.idmap.as_deref() {
            Some(v) if v == value => {}
            Some(v) if !was_ours => {
                return Err(Refusal::new(
                    format!("{at}: [[mount]] {key} wants idmap={value}, but {key} already has idmap={v}, which a person wrote"),
                    format!("remove idmap= from {key} (pct set {} --{key} ...) or the [[mount]] table", facts.vmid),
                ));
            }
            _ => {
                let new = mountmap::with_idmap(&entry.value, Some(&value));
                d.conf.set_key(key, &new);
                d.conf_reasons.push(format!(
                    "{key} maps {value} for that mount only (the policy's [[mount]]): the container's map and its files stay as they are"
                ));
            }
        }
        wanted.push(owned);
    }
    remove_unwanted(facts, d, &wanted);
    d.state.owned.mp_options = wanted;
    Ok(())
}

/// The current `mpN` entry in the draft.
fn mp_entry(d: &Draft, key: &str) -> Option<crate::model::pveconf::MpEntry> {
    d.conf
        .mp_entries()
        .into_iter()
        .find(|e| format!("mp{}", e.index) == key)
}

/// Takes the tool's `idmap=` off mount points the policy no longer names.
fn remove_unwanted(facts: &Facts, d: &mut Draft, wanted: &[OwnedLine]) {
    let Some(state) = &facts.state else { return };
    for old in &state.owned.mp_options {
        if wanted.iter().any(|w| w.key == old.key) {
            continue;
        }
        let Some(entry) = mp_entry(d, &old.key) else {
            continue;
        };
        if entry.idmap.as_deref().map(|v| format!("idmap={v}")) == Some(old.value.clone()) {
            let new = mountmap::with_idmap(&entry.value, None);
            d.conf.set_key(&old.key, &new);
            d.conf_reasons.push(format!(
                "{} loses the tool's {}: the policy no longer names it",
                old.key, old.value
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::apply;
    use super::super::*;
    use crate::model::policy::Policy;
    use crate::model::pveconf::PveConfig;

    const CONF: &str = "arch: amd64\nmp0: /tank/media,mp=/media\nunprivileged: 1\n";
    const POLICY: &str = "[[mount]]\nmp = \"mp0\"\nidmap = [\"both 1000 1000\"]\n";

    fn facts(conf: &str, policy: &str, version: Option<&str>) -> Facts {
        let mut f = Facts::minimal(105, "/etc/pve/lxc/105.conf", PveConfig::parse(conf));
        f.subuid.text = Some("root:100000:65536\n".into());
        f.subgid.text = Some("root:100000:65536\n".into());
        f.lxc_config.text =
            Some("lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n".into());
        f.policy = Some(Policy::parse("p.toml", policy).unwrap());
        f.policy_file = HostFile::new("/etc/pve/pct-passthrough/105.toml", Some(policy.into()));
        f.pve_container = version.map(str::to_string);
        f.shift_exe = Ok("/usr/bin/pct-passthrough".into());
        f
    }

    #[test]
    fn new_proxmox_gets_the_mount_option_and_no_map_change() {
        let f = facts(CONF, POLICY, Some("6.1.10"));
        let d = decide(&f);
        assert_eq!(d.refusal, None);
        let conf = &d.change(FileTarget::PveConf).unwrap().new;
        assert!(
            conf.contains("mp0: /tank/media,mp=/media,idmap=u:1000:1000:1;g:1000:1000:1\n"),
            "{conf}"
        );
        assert!(!conf.contains("lxc.idmap"), "{conf}");
        assert!(d.change(FileTarget::Subuid).is_none());
        assert!(d.change(FileTarget::LxcConfig).is_none(), "no shift hook");
        let f1 = apply(&f, &d);
        assert!(
            decide(&f1).changes.is_empty(),
            "a second run changes nothing"
        );
        // The table goes away: exactly the option goes.
        let mut f2 = f1.clone();
        f2.policy = Some(Policy::parse("p.toml", "").unwrap());
        f2.policy_file.text = Some(String::new());
        let d2 = decide(&f2);
        assert_eq!(d2.change(FileTarget::PveConf).unwrap().new, CONF);
    }

    #[test]
    fn old_proxmox_falls_back_to_the_container_map_and_says_so() {
        let f = facts(CONF, POLICY, Some("6.1.5"));
        let d = decide(&f);
        assert_eq!(d.refusal, None);
        let conf = &d.change(FileTarget::PveConf).unwrap().new;
        assert!(conf.contains("lxc.idmap: u 1000 1000 1\n"), "{conf}");
        assert!(conf.contains("mp0: /tank/media,mp=/media\n"), "{conf}");
        let ev = d
            .events
            .iter()
            .find(|e| e.name == "mount-map-fallback")
            .unwrap();
        assert!(
            ev.message
                .contains("pve-container 6.1.5 has no per-mount-point idmap"),
            "{ev}"
        );
        // Unknown version: the same fallback.
        let d = decide(&facts(CONF, POLICY, None));
        assert!(d.events.iter().any(|e| e.name == "mount-map-fallback"));
    }

    #[test]
    fn a_persons_other_idmap_is_refused_and_a_missing_mp_named() {
        let conf = CONF.replace("mp=/media", "mp=/media,idmap=passthrough");
        let r = decide(&facts(&conf, POLICY, Some("6.1.6")))
            .refusal
            .unwrap();
        assert!(r.what.contains("mp0 already has idmap=passthrough"), "{r}");
        let r = decide(&facts("unprivileged: 1\n", POLICY, Some("6.1.6")))
            .refusal
            .unwrap();
        assert!(
            r.what.starts_with(
                "p.toml line 2: [[mount]] mp = \"mp0\", but the container config has no mp0"
            ),
            "{r}"
        );
    }
}
