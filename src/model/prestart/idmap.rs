//! The ID-map step: passthrough sources in, `lxc.idmap` lines, the
//! subordinate-ID needs and the same-boot patch out.

use std::collections::{BTreeMap, BTreeSet};

use super::{Draft, Facts, Refusal};
use crate::model::device::{self, DeviceClass};
use crate::model::event::Event;
use crate::model::idmap::{self, IdKind, IdRange, IdmapEntry, Passthrough, RawIdmap};
use crate::model::lxcconf::LxcConfig;
use crate::model::policy::DeviceMethod;
use crate::model::policy::LineIndex;
use crate::model::pveconf::{LineKind, PveConfig};
use crate::model::runtime;
use crate::model::state::OwnedLine;
use crate::model::subid::{nsswitch_has_subid, SubidNeed};

/// A place passthroughs come from. Add a source by adding an entry to
/// [`PASSTHROUGH_SOURCES`]; each reads only the facts.
pub struct PassthroughSource {
    pub name: &'static str,
    /// The passthroughs this source wants, or a refusal message.
    pub collect: fn(&Facts) -> Result<Vec<Passthrough>, Refusal>,
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
    PassthroughSource {
        name: "mount-fallback",
        collect: super::mountmap::fallback_passthroughs,
    },
];

/// Every passthrough all sources want.
pub fn collect_passthroughs(facts: &Facts) -> Result<Vec<Passthrough>, Refusal> {
    let mut out = Vec::new();
    for source in PASSTHROUGH_SOURCES {
        out.extend((source.collect)(facts)?);
    }
    Ok(out)
}

/// The policy's `idmap` lines (LXD/Incus `raw.idmap`).
pub fn policy_idmap(facts: &Facts) -> Result<Vec<Passthrough>, Refusal> {
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
        let raw = RawIdmap::parse(item.get_ref()).map_err(|e| {
            Refusal::new(
                format!("{} line {line}: idmap {e}", facts.policy_file.path),
                "fix the line (raw.idmap syntax: \"both 1000 1000\", host ID first)",
            )
        })?;
        out.extend(raw.passthroughs(&format!(
            "{} line {line}: \"{}\"",
            facts.policy_file.path,
            item.get_ref()
        )));
    }
    Ok(out)
}

/// Policy `idmap` lines naming the runtime user (`"uid 1005 runtime"`):
/// host ID ↔ the service user post-start recorded. Nothing until a
/// non-root runtime user is recorded; the map applies from the start after.
pub fn runtime_user_idmap(facts: &Facts) -> Result<Vec<Passthrough>, Refusal> {
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
        let r = runtime::parse_runtime_idmap(item.get_ref()).map_err(|e| {
            Refusal::new(
                format!("{} line {line}: idmap {e}", facts.policy_file.path),
                "fix the line (raw.idmap syntax: \"both 1000 1000\", host ID first)",
            )
        })?;
        let Some(u) = user else { continue };
        let who = format!(
            "{} line {line}: \"{}\" (runtime user {} recorded by post-start)",
            facts.policy_file.path,
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

/// GID 20 for every bind of a host serial device node, the config's and
/// the policy's alike (so the map does not wait for the tool's own mount
/// line to appear in the config).
pub fn serial_binds(facts: &Facts) -> Result<Vec<Passthrough>, Refusal> {
    Ok(super::devices::declared_of(facts)
        .iter()
        .filter(|d| d.method == DeviceMethod::Bind && is_serial_path(&d.path))
        .filter(|d| {
            // A node that exists must be one that may be passed through.
            match facts.devices.iter().find(|f| f.path == d.path) {
                Some(f) => match &f.node {
                    Ok(Some(_)) => super::devices::usable_node(facts, d).is_some(),
                    _ => true,
                },
                None => true,
            }
        })
        .map(|d| {
            Passthrough::same(
                IdKind::Gid,
                u64::from(device::DIALOUT_GID),
                format!("serial device bound: {}", d.path),
            )
        })
        .collect())
}

/// The owned line for an `lxc.idmap` entry, as the state keeps it.
pub fn owned_idmap_line(e: &IdmapEntry) -> OwnedLine {
    OwnedLine::new("lxc.idmap", e.to_string())
}

/// The container's `lxc.idmap` lines (main section), split by owner.
struct MapLines {
    /// Every line with its index in the config, in order.
    at: Vec<(usize, IdmapEntry)>,
    /// Indexes of the tool's lines.
    mine_at: BTreeSet<usize>,
    mine: Vec<IdmapEntry>,
    theirs: Vec<IdmapEntry>,
    /// Every line in the config's order, as Proxmox copies them to LXC.
    all: Vec<IdmapEntry>,
}

/// The ID-map step: passthroughs in, `lxc.idmap` lines, subordinate-ID
/// needs and the same-boot patch out.
pub fn plan_idmap(facts: &Facts, d: &mut Draft) -> Result<(), Refusal> {
    let lines = read_map_lines(facts, d)?;
    let passthroughs = collect_passthroughs(facts)?;
    if !passthroughs.is_empty()
        && is_default_copy(&lines.theirs)
        && !idmap::unmet(&lines.theirs, &passthroughs).is_empty()
    {
        adopt_default_copy(d, &lines.at, &lines.mine_at);
        return plan_idmap(facts, d);
    }
    let Some(effective) = choose_map(facts, d, &lines, &passthroughs)? else {
        return Ok(());
    };
    d.idmap = Some(effective.clone());
    plan_subids(facts, d, &effective);
    plan_this_boot(facts, d, &effective);
    Ok(())
}

/// The main section's `lxc.idmap` lines of the draft (so earlier steps'
/// edits count); a line Proxmox cannot parse refuses the start.
fn read_map_lines(facts: &Facts, d: &Draft) -> Result<MapLines, Refusal> {
    // How many occurrences of each entry the tool owns.
    let mut owned: BTreeMap<IdmapEntry, usize> = BTreeMap::new();
    for e in d
        .state
        .owned
        .lines_of("lxc.idmap")
        .filter_map(|l| IdmapEntry::parse(&l.value).ok())
    {
        *owned.entry(e).or_default() += 1;
    }
    let end = main_end(&d.conf);
    let mut at: Vec<(usize, IdmapEntry)> = Vec::new();
    for (n, line) in d.conf.lines()[..end].iter().enumerate() {
        let LineKind::Raw { key, value } = &line.kind else {
            continue;
        };
        if key != "lxc.idmap" {
            continue;
        }
        let e = IdmapEntry::parse(value).map_err(|err| {
            Refusal::new(
                format!(
                    "{} line {}: lxc.idmap {err}; Proxmox fails the start with \"failed to parse idmap\"",
                    facts.conf_path,
                    n + 1
                ),
                "fix or remove the line",
            )
        })?;
        at.push((n, e));
    }
    // Each owned entry claims one occurrence, the last: the tool appends.
    // A person's copy of the same line stays theirs.
    let mut mine_at: BTreeSet<usize> = BTreeSet::new();
    for (n, e) in at.iter().rev() {
        if let Some(c) = owned.get_mut(e).filter(|c| **c > 0) {
            *c -= 1;
            mine_at.insert(*n);
        }
    }
    let pick = |mine: bool| -> Vec<IdmapEntry> {
        at.iter()
            .filter(|(n, _)| mine_at.contains(n) == mine)
            .map(|(_, e)| *e)
            .collect()
    };
    Ok(MapLines {
        mine: pick(true),
        theirs: pick(false),
        all: at.iter().map(|(_, e)| *e).collect(),
        mine_at,
        at,
    })
}

/// One reason per mapping: two sources wanting the same one say it once.
fn describe(passthroughs: &[Passthrough]) -> Vec<String> {
    let mut described: Vec<String> = Vec::new();
    for (i, p) in passthroughs.iter().enumerate() {
        if !passthroughs[..i].iter().any(|q| q.entry() == p.entry()) {
            described.push(p.to_string());
        }
    }
    described
}

/// The map this start uses: a person's lines (checked), the tool's
/// (computed), or Proxmox's default; `None` for a privileged container.
fn choose_map(
    facts: &Facts,
    d: &mut Draft,
    lines: &MapLines,
    passthroughs: &[Passthrough],
) -> Result<Option<Vec<IdmapEntry>>, Refusal> {
    // A privileged container with a person's lxc.idmap lines still runs in
    // a user namespace (Proxmox: unprivileged or any lxc.idmap line): those
    // lines are checked and covered like any other, and so is the tool's
    // map standing in for an adopted copy of the default.
    let userns =
        facts.conf.unprivileged() || !lines.theirs.is_empty() || !d.state.owned.adopted.is_empty();
    if !userns {
        if !passthroughs.is_empty() {
            d.events.push(Event::info(
                "idmap-privileged",
                "privileged container: host IDs are container IDs, so no ID map is needed; doing device and group work only",
            ));
        }
        if !lines.mine.is_empty() {
            remove_owned_idmap(
                d,
                &lines.mine_at,
                Some("removed the tool's lxc.idmap lines: a privileged container needs no ID map"),
            );
        }
        return Ok(None);
    }
    if !lines.theirs.is_empty() {
        return persons_map(facts, d, lines, passthroughs).map(Some);
    }
    if passthroughs.is_empty() {
        if !lines.mine.is_empty() {
            remove_owned_idmap(
                d,
                &lines.mine_at,
                Some("removed the tool's lxc.idmap lines: no ID passthrough is needed any more, Proxmox's default map applies"),
            );
        }
        restore_adopted(d);
        return Ok(Some(idmap::pve_default()));
    }
    tools_map(d, lines, passthroughs).map(Some)
}

/// A person's lines: kept when they (alone, or with the tool's next to
/// them) give every passthrough and map root; refused otherwise.
fn persons_map(
    facts: &Facts,
    d: &mut Draft,
    lines: &MapLines,
    passthroughs: &[Passthrough],
) -> Result<Vec<IdmapEntry>, Refusal> {
    let conf_path = &facts.conf_path;
    let gives =
        |m: &[IdmapEntry]| idmap::validate(m).is_ok() && idmap::unmet(m, passthroughs).is_empty();
    let alone = gives(&lines.theirs);
    let together = !lines.mine.is_empty() && gives(&lines.all);
    let chosen = if alone && (idmap::maps_root(&lines.theirs) || !together) {
        if !lines.mine.is_empty() {
            remove_owned_idmap(
                d,
                &lines.mine_at,
                Some("removed the tool's lxc.idmap lines: the container's own lines give what is needed"),
            );
        }
        lines.theirs.clone()
    } else if together {
        lines.all.clone()
    } else if let Err(problems) = idmap::validate(&lines.theirs) {
        return Err(Refusal::new(
            format!(
                "{conf_path}: the lxc.idmap lines would make the start fail: {}",
                problems.join("; ")
            ),
            "fix the lines named, or delete every lxc.idmap line and pct-passthrough writes the whole map",
        ));
    } else {
        let unmet = idmap::unmet(&lines.theirs, passthroughs);
        return Err(conflict_message(
            conf_path,
            &lines.theirs,
            &unmet,
            passthroughs,
        ));
    };
    if !passthroughs.is_empty() {
        d.events.push(Event::info(
            "idmap-kept",
            format!(
                "the container's own lxc.idmap lines already give what is needed; left unchanged\n{}",
                describe(passthroughs).join("\n")
            ),
        ));
    }
    if !idmap::maps_root(&chosen) {
        let shown: Vec<String> = chosen.iter().map(|e| format!("'{e}'")).collect();
        return Err(Refusal::new(
            format!(
                "{conf_path}: the lxc.idmap lines {} map no container uid 0 or no container gid 0 (root), and LXC fails to start such a container",
                shown.join(", ")
            ),
            "add lines for container ID 0 of both types, like 'lxc.idmap: u 0 100000 65536' and 'lxc.idmap: g 0 100000 65536'",
        ));
    }
    Ok(chosen)
}

/// The tool's map: Proxmox's default with the passthroughs punched in,
/// written (and owned) when it differs from the tool's lines there.
fn tools_map(
    d: &mut Draft,
    lines: &MapLines,
    passthroughs: &[Passthrough],
) -> Result<Vec<IdmapEntry>, Refusal> {
    let described = describe(passthroughs);
    let map = idmap::compute(&idmap::pve_default(), passthroughs).map_err(|e| {
        Refusal::new(
            format!("the wanted ID map is not possible: {e}"),
            format!("fix the sources ({})", described.join(", ")),
        )
    })?;
    if lines.mine != map {
        remove_owned_idmap(d, &lines.mine_at, None);
        let values = idmap::render_values(&map);
        d.conf
            .push_raw_all("lxc.idmap", values.iter().map(String::as_str));
        d.state
            .owned
            .conf_lines
            .extend(map.iter().map(owned_idmap_line));
        d.conf_reasons.push(format!(
            "lxc.idmap {}\nfor {}",
            values.join(", "),
            described.join("\nfor ")
        ));
    }
    Ok(map)
}

/// Subordinate IDs for every host range of the map.
fn plan_subids(facts: &Facts, d: &mut Draft, effective: &[IdmapEntry]) {
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
}

/// Same boot: Proxmox wrote the generated config before this hook ran.
fn plan_this_boot(facts: &Facts, d: &mut Draft, effective: &[IdmapEntry]) {
    match d.lxc_text(facts).map(LxcConfig::parse) {
        Some(lxc) => {
            if let Some(new) = lxc.with_idmap(effective) {
                d.lxc = Some(new);
                d.lxc_reasons.push(format!(
                    "this start uses lxc.idmap {}",
                    idmap::render_values(effective).join(", ")
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
}

/// True for a person's exact copy of Proxmox's default map (`u 0 100000
/// 65536` and `g 0 100000 65536`, once each): it means what Proxmox does
/// without any line.
fn is_default_copy(theirs: &[IdmapEntry]) -> bool {
    let mut sorted = theirs.to_vec();
    sorted.sort();
    let mut default = idmap::pve_default();
    default.sort();
    sorted == default
}

/// Takes a person's copy of the default map out of the config, recording
/// the exact lines so they come back when no passthrough is needed.
fn adopt_default_copy(d: &mut Draft, lines: &[(usize, IdmapEntry)], mine_at: &BTreeSet<usize>) {
    let theirs_at: BTreeSet<usize> = lines
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !mine_at.contains(n))
        .collect();
    let mut n = 0;
    let mut adopted = Vec::new();
    d.conf.remove_main_where(|l| {
        let hit = theirs_at.contains(&n);
        n += 1;
        if hit {
            if let LineKind::Raw { key, value } = &l.kind {
                adopted.push(OwnedLine::new(key.clone(), value.clone()));
            }
        }
        hit
    });
    d.conf_reasons.push(format!(
        "replaced the container's copy of Proxmox's default map by the tool's\nits lines {} come back when no passthrough is needed",
        adopted
            .iter()
            .map(|l| format!("'{l}'"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    d.state.owned.adopted.extend(adopted);
}

/// Puts a person's adopted copy of the default map back.
fn restore_adopted(d: &mut Draft) {
    let adopted = std::mem::take(&mut d.state.owned.adopted);
    if adopted.is_empty() {
        return;
    }
    for l in &adopted {
        d.conf.push_raw(&l.key, &l.value);
    }
    d.conf_reasons.push(format!(
        "put back the container's own lines {}",
        adopted
            .iter()
            .map(|l| format!("'{l}'"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
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
fn remove_owned_idmap(d: &mut Draft, mine_at: &BTreeSet<usize>, reason: Option<&str>) {
    // remove_main_where visits the main section's lines in order.
    let mut n = 0;
    let removed = d.conf.remove_main_where(|_| {
        let hit = mine_at.contains(&n);
        n += 1;
        hit
    });
    d.state.owned.conf_lines.retain(|l| l.key != "lxc.idmap");
    if let (true, Some(reason)) = (removed > 0, reason) {
        d.conf_reasons.push(reason.to_string());
    }
}

fn conflict_message(
    conf_path: &str,
    theirs: &[IdmapEntry],
    unmet: &[(&Passthrough, String)],
    passthroughs: &[Passthrough],
) -> Refusal {
    // One line per mapping, however many sources want it.
    let mut what: Vec<String> = Vec::new();
    for (i, (p, why)) in unmet.iter().enumerate() {
        if !unmet[..i].iter().any(|(q, _)| q.entry() == p.entry()) {
            what.push(format!("{p}: {why}"));
        }
    }
    let lines: Vec<String> = theirs.iter().map(|e| format!("'{e}'")).collect();
    let delete = "or delete them and pct-passthrough writes the whole map (lines that differ from what it would write now count as a person's)";
    let fix = match suggested_replacement(theirs, passthroughs) {
        Some(map) => format!(
            "replace them with: {}; {delete}",
            map.iter()
                .map(|e| format!("lxc.idmap: {e}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "delete them and pct-passthrough writes the whole map (lines that differ from what it would write now count as a person's)".to_string(),
    };
    Refusal::new(
        format!(
            "{conf_path}: the container's own lxc.idmap lines do not give what is needed\ntheir lines: {}\n{}\nthe tool never changes lines a person wrote",
            lines.join(", "),
            what.join("\n")
        ),
        fix,
    )
}

/// The map to suggest in place of a person's lines: theirs with the
/// passthroughs punched in, Proxmox's default standing in for a type they
/// left out. Only a map that passes the tool's own checks is suggested.
pub fn suggested_replacement(
    theirs: &[IdmapEntry],
    passthroughs: &[Passthrough],
) -> Option<Vec<IdmapEntry>> {
    let mut base: Vec<IdmapEntry> = theirs.to_vec();
    for kind in IdKind::ALL {
        if !base.iter().any(|e| e.kind == kind) {
            base.extend(idmap::pve_default().into_iter().filter(|e| e.kind == kind));
        }
    }
    let map = idmap::compute(&base, passthroughs).ok()?;
    let good = idmap::validate(&map).is_ok()
        && idmap::maps_root(&map)
        && idmap::unmet(&map, passthroughs).is_empty();
    good.then_some(map)
}
