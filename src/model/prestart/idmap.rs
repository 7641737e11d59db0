//! The ID-map step: passthrough sources in, `lxc.idmap` lines, the
//! subordinate-ID needs and the same-boot patch out.

use std::collections::{HashMap, HashSet};

use super::{Draft, Facts};
use crate::model::device::{self, DeviceClass};
use crate::model::event::Event;
use crate::model::idmap::{self, IdKind, IdRange, IdmapEntry, Passthrough, RawIdmap};
use crate::model::lxcconf::LxcConfig;
use crate::model::policy::LineIndex;
use crate::model::pveconf::{LineKind, PveConfig};
use crate::model::runtime;
use crate::model::subid::{nsswitch_has_subid, SubidNeed};

/// A place passthroughs come from. Add a source by adding an entry to
/// [`PASSTHROUGH_SOURCES`]; each reads only the facts.
pub struct PassthroughSource {
    pub name: &'static str,
    /// The passthroughs this source wants, or a refusal message.
    pub collect: fn(&Facts) -> Result<Vec<Passthrough>, String>,
}

/// Every source, in order. Devices add the host group of bound nodes;
/// post-start adds the recorded runtime user.
pub const PASSTHROUGH_SOURCES: &[PassthroughSource] = &[
    PassthroughSource {
        name: "policy",
        collect: policy_idmap,
    },
    PassthroughSource {
        name: "serial-bind",
        collect: serial_binds,
    },
    PassthroughSource {
        name: "bound-node-group",
        collect: super::devices::bound_node_groups,
    },
    PassthroughSource {
        name: "runtime-user",
        collect: runtime_user_idmap,
    },
];

/// Every passthrough all sources want.
pub fn collect_passthroughs(facts: &Facts) -> Result<Vec<Passthrough>, String> {
    let mut out = Vec::new();
    for source in PASSTHROUGH_SOURCES {
        out.extend((source.collect)(facts)?);
    }
    Ok(out)
}

/// The policy's `idmap` lines (LXD/Incus `raw.idmap`).
pub fn policy_idmap(facts: &Facts) -> Result<Vec<Passthrough>, String> {
    let Some(policy) = &facts.policy else {
        return Ok(Vec::new());
    };
    let lines = LineIndex::new(facts.policy_file.text.as_deref().unwrap_or(""));
    let mut out = Vec::new();
    for item in &policy.idmap {
        if runtime::is_runtime_idmap(item.get_ref()) {
            // The runtime-user source handles these.
            continue;
        }
        let line = lines.line_of(item.span().start);
        let raw = RawIdmap::parse(item.get_ref())
            .map_err(|e| format!("{} line {line}: idmap {e}", facts.policy_file.path))?;
        out.extend(raw.passthroughs(&format!("policy line {line}: \"{}\"", item.get_ref())));
    }
    Ok(out)
}

/// Policy `idmap` lines naming the runtime user (`"uid 1005 runtime"`):
/// host ID ↔ the service user post-start recorded. Nothing until a
/// non-root runtime user is recorded; the map applies from the start after.
pub fn runtime_user_idmap(facts: &Facts) -> Result<Vec<Passthrough>, String> {
    let Some(policy) = &facts.policy else {
        return Ok(Vec::new());
    };
    let lines = LineIndex::new(facts.policy_file.text.as_deref().unwrap_or(""));
    let user = facts
        .state
        .as_ref()
        .and_then(|s| s.runtime_user.as_ref())
        .filter(|u| u.uid != 0);
    let mut out = Vec::new();
    for item in policy
        .idmap
        .iter()
        .filter(|i| runtime::is_runtime_idmap(i.get_ref()))
    {
        let line = lines.line_of(item.span().start);
        let r = runtime::parse_runtime_idmap(item.get_ref())
            .map_err(|e| format!("{} line {line}: idmap {e}", facts.policy_file.path))?;
        let Some(u) = user else { continue };
        let who = format!(
            "policy line {line}: \"{}\" (runtime user {} recorded by post-start)",
            item.get_ref(),
            u.name.as_deref().map_or_else(
                || format!("uid {}", u.uid),
                |n| format!("{n} uid {}", u.uid)
            )
        );
        if r.uid {
            out.push(Passthrough {
                kind: IdKind::Uid,
                ct: u64::from(u.uid),
                host: u64::from(r.host),
                len: 1,
                reason: who.clone(),
            });
        }
        if r.gid {
            out.push(Passthrough {
                kind: IdKind::Gid,
                ct: u64::from(u.gid),
                host: u64::from(r.host),
                len: 1,
                reason: who,
            });
        }
    }
    Ok(out)
}

/// True for host paths of serial device nodes (by path alone; see
/// [`device::classify`] for the rules).
pub fn is_serial_path(path: &str) -> bool {
    device::classify(path, None) == DeviceClass::Serial
}

/// GID 20 for every bind mount of a host serial device node.
pub fn serial_binds(facts: &Facts) -> Result<Vec<Passthrough>, String> {
    Ok(facts
        .conf
        .mount_entries()
        .iter()
        .filter(|m| m.is_bind() && is_serial_path(&m.source))
        .map(|m| {
            Passthrough::same(
                IdKind::Gid,
                u64::from(device::DIALOUT_GID),
                format!("serial device bound: {}", m.source),
            )
        })
        .collect())
}

/// The owned-line string for an `lxc.idmap` entry, as the state keeps it.
pub fn owned_idmap_line(e: &IdmapEntry) -> String {
    format!("lxc.idmap: {e}")
}

/// The ID-map step: passthroughs in, `lxc.idmap` lines, subordinate-ID
/// needs and the same-boot patch out.
pub fn plan_idmap(facts: &Facts, d: &mut Draft) -> Result<(), String> {
    let conf_path = &facts.conf_path;
    // How many occurrences of each entry the tool owns.
    let mut owned: HashMap<IdmapEntry, usize> = HashMap::new();
    for e in d
        .state
        .owned
        .conf_lines
        .iter()
        .filter_map(|l| l.strip_prefix("lxc.idmap:"))
        .filter_map(|v| IdmapEntry::parse(v.trim()).ok())
    {
        *owned.entry(e).or_default() += 1;
    }
    // The main section's lines (of the draft, so earlier steps' edits
    // count), with their line index.
    let end = main_end(&d.conf);
    let mut lines: Vec<(usize, IdmapEntry)> = Vec::new();
    for (n, line) in d.conf.lines()[..end].iter().enumerate() {
        if let LineKind::Raw { key, value } = &line.kind {
            if key != "lxc.idmap" {
                continue;
            }
            match IdmapEntry::parse(value) {
                Ok(e) => lines.push((n, e)),
                Err(err) => {
                    return Err(format!(
                        "{conf_path} line {}: lxc.idmap {err}; Proxmox fails the start with \"failed to parse idmap\"; fix or remove the line",
                        n + 1
                    ))
                }
            }
        }
    }
    // Each owned entry claims one occurrence, the last: the tool appends.
    // A person's copy of the same line stays theirs.
    let mut mine_at: HashSet<usize> = HashSet::new();
    for (n, e) in lines.iter().rev() {
        if let Some(c) = owned.get_mut(e).filter(|c| **c > 0) {
            *c -= 1;
            mine_at.insert(*n);
        }
    }
    let mine: Vec<IdmapEntry> = lines
        .iter()
        .filter(|(n, _)| mine_at.contains(n))
        .map(|(_, e)| *e)
        .collect();
    let theirs: Vec<IdmapEntry> = lines
        .iter()
        .filter(|(n, _)| !mine_at.contains(n))
        .map(|(_, e)| *e)
        .collect();
    // Every line, in the config's order (as PVE copies them to LXC).
    let all: Vec<IdmapEntry> = lines.iter().map(|(_, e)| *e).collect();
    let passthroughs = collect_passthroughs(facts)?;
    let described: Vec<String> = passthroughs.iter().map(ToString::to_string).collect();

    // A privileged container with a person's lxc.idmap lines still runs in
    // a user namespace: those lines are checked and covered like any other.
    if !facts.conf.unprivileged() && theirs.is_empty() {
        if !passthroughs.is_empty() {
            d.events.push(Event::info(
                "idmap-privileged",
                "privileged container: host IDs are container IDs, so no ID map is needed; doing device and group work only",
            ));
        }
        if !mine.is_empty() {
            remove_owned_idmap(
                d,
                &mine_at,
                Some("removed the tool's lxc.idmap lines: a privileged container needs no ID map"),
            );
        }
        return Ok(());
    }

    let effective: Vec<IdmapEntry> = if !theirs.is_empty() {
        let gives = |m: &[IdmapEntry]| {
            idmap::validate(m).is_ok() && idmap::unmet(m, &passthroughs).is_empty()
        };
        let alone = gives(&theirs);
        // A person's lines added next to the tool's, together a good map.
        let together = !mine.is_empty() && gives(&all);
        let chosen = if alone && (idmap::maps_root(&theirs) || !together) {
            if !mine.is_empty() {
                remove_owned_idmap(d, &mine_at, Some("removed the tool's lxc.idmap lines: the container's own lines give what is needed"));
            }
            theirs
        } else if together {
            all
        } else if let Err(problems) = idmap::validate(&theirs) {
            return Err(format!(
                "{conf_path}: the lxc.idmap lines would make the start fail: {}",
                problems.join("; ")
            ));
        } else {
            let unmet = idmap::unmet(&theirs, &passthroughs);
            return Err(conflict_message(conf_path, &theirs, &unmet, &passthroughs));
        };
        if !passthroughs.is_empty() {
            d.events.push(Event::info(
                "idmap-kept",
                format!(
                    "the container's own lxc.idmap lines already give {}; left unchanged",
                    described.join(", ")
                ),
            ));
        }
        if !idmap::maps_root(&chosen) {
            let lines: Vec<String> = chosen.iter().map(|e| format!("'{e}'")).collect();
            return Err(format!(
                "{conf_path}: the lxc.idmap lines {} map no container uid 0 or no container gid 0 (root), and LXC fails to start such a container; add lines for container ID 0 of both types, like 'lxc.idmap: u 0 100000 65536' and 'lxc.idmap: g 0 100000 65536'",
                lines.join(", ")
            ));
        }
        chosen
    } else if passthroughs.is_empty() {
        if !mine.is_empty() {
            remove_owned_idmap(
                d,
                &mine_at,
                Some("removed the tool's lxc.idmap lines: no ID passthrough is needed any more, Proxmox's default map applies"),
            );
        }
        idmap::pve_default()
    } else {
        let map = idmap::compute(&idmap::pve_default(), &passthroughs).map_err(|e| {
            format!(
                "the wanted ID map is not possible: {e}; fix the sources ({})",
                described.join(", ")
            )
        })?;
        if mine != map {
            remove_owned_idmap(d, &mine_at, None);
            let values = idmap::render_values(&map);
            d.conf
                .push_raw_all("lxc.idmap", values.iter().map(String::as_str));
            d.state
                .owned
                .conf_lines
                .extend(map.iter().map(owned_idmap_line));
            d.conf_reasons.push(format!(
                "lxc.idmap {} for {}",
                idmap::render_values(&map).join(", "),
                described.join(", ")
            ));
        }
        map
    };

    d.idmap = Some(effective.clone());

    // Subordinate IDs for every host range of the map.
    for kind in IdKind::ALL {
        let ranges: Vec<IdRange> = effective
            .iter()
            .filter(|e| e.kind == kind)
            .map(IdmapEntry::host_range)
            .collect();
        if !ranges.is_empty() {
            d.subid.push(SubidNeed { kind, ranges });
        }
    }
    if facts.nsswitch.as_deref().is_some_and(nsswitch_has_subid) {
        d.events.push(Event::warn(
            "subid-nsswitch",
            "/etc/nsswitch.conf has a subid: line naming a service other than files, so shadow ignores /etc/subuid and /etc/subgid; make sure that service grants root the ranges of the map, or remove the line",
        ));
    }

    // Same boot: PVE wrote the generated config before this hook ran.
    match d.lxc_text(facts).map(LxcConfig::parse) {
        Some(lxc) => {
            if let Some(new) = lxc.with_idmap(&effective) {
                d.lxc = Some(new);
                d.lxc_reasons.push(format!(
                    "this start uses lxc.idmap {}",
                    idmap::render_values(&effective).join(", ")
                ));
            }
        }
        None if d.conf.render() != facts.conf.render() => {
            d.events.push(Event::warn(
                "idmap-next-start",
                format!(
                    "{}: not found, so the new map applies from the next start",
                    facts.lxc_config.path
                ),
            ));
        }
        None => {}
    }
    Ok(())
}

/// Index one past the main section.
fn main_end(conf: &PveConfig) -> usize {
    conf.lines()
        .iter()
        .position(|l| {
            matches!(
                l.kind,
                LineKind::PendingHeader | LineKind::SnapshotHeader(_)
            )
        })
        .unwrap_or(conf.lines().len())
}

/// Removes the tool's `lxc.idmap` lines (main-section indexes `mine_at`)
/// from the config and from the state; `reason` is recorded when a line goes.
fn remove_owned_idmap(d: &mut Draft, mine_at: &HashSet<usize>, reason: Option<&str>) {
    // remove_main_where visits the main section's lines in order.
    let mut n = 0;
    let removed = d.conf.remove_main_where(|_| {
        let hit = mine_at.contains(&n);
        n += 1;
        hit
    });
    d.state
        .owned
        .conf_lines
        .retain(|l| !l.starts_with("lxc.idmap:"));
    if let (true, Some(reason)) = (removed > 0, reason) {
        d.conf_reasons.push(reason.to_string());
    }
}

fn conflict_message(
    conf_path: &str,
    theirs: &[IdmapEntry],
    unmet: &[(&Passthrough, String)],
    passthroughs: &[Passthrough],
) -> String {
    let what: Vec<String> = unmet.iter().map(|(p, why)| format!("{p}: {why}")).collect();
    let lines: Vec<String> = theirs.iter().map(|e| format!("'{e}'")).collect();
    let fix = match idmap::compute(theirs, passthroughs) {
        Ok(map) => format!(
            "replace them with: {}",
            map.iter()
                .map(|e| format!("lxc.idmap: {e}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => format!("change them so that {e} no longer holds"),
    };
    format!(
        "{conf_path}: the container's own lxc.idmap lines {} do not give what is needed: {}; the tool never changes lines a person wrote; fix: {fix}; or delete them and pct-passthrough writes the whole map (lines it wrote on another node count as a person's after a migration)",
        lines.join(", "),
        what.join("; ")
    )
}
