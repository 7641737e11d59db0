//! The pre-start devices step: every device the config or the policy names
//! gets what makes it usable on this boot (exact cgroup rule, bind options,
//! `devN` group and owner), a missing one is refused or warned about, and the
//! tool's own lines follow the need. Pure; see `model::device` for the rules.

use std::collections::BTreeSet;

use crate::model::device::{self, CgroupRule, DeviceClass, Node, DIALOUT_GID};
use crate::model::event::Event;
use crate::model::idmap::{IdKind, Passthrough};
use crate::model::lxcconf::LxcConfig;
use crate::model::policy::{DeviceMethod, DevicePolicy, LineIndex};
use crate::model::prestart::{Draft, Facts};
use crate::model::pveconf::{DevEntry, LineKind};

/// Event names for entries a person wrote that cannot work as they are;
/// `doctor` shows them as warnings.
pub const ENTRY_FINDINGS: &[&str] = &[
    "cgroup-stale",
    "cgroup-broad",
    "bind-options",
    "dev-unusable",
    "dev-mode",
];

const MOUNT_KEY: &str = "lxc.mount.entry";
const RULE_KEY: &str = "lxc.cgroup2.devices.allow";

/// A declared device path and what stat found there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFact {
    pub path: String,
    /// `Ok(None)`: missing. `Err`: could not be resolved (a link loop).
    pub node: Result<Option<Node>, String>,
}

/// Every device path the config and the policy name, once each, in order:
/// what `phase::pre_start` stats before planning.
pub fn declared_paths(
    facts_conf: &crate::model::pveconf::PveConfig,
    policy: Option<&crate::model::policy::Policy>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |p: &str| {
        if !out.iter().any(|o| o == p) {
            out.push(p.to_string());
        }
    };
    for d in facts_conf.dev_entries() {
        add(&d.path);
    }
    for m in facts_conf.mount_entries() {
        if m.is_bind() && m.source.starts_with("/dev/") {
            add(&m.source);
        }
    }
    for p in policy.map(|p| p.devices.as_slice()).unwrap_or_default() {
        add(p.path.get_ref());
    }
    out
}

fn node_of<'a>(facts: &'a Facts, path: &str) -> Result<Option<&'a Node>, String> {
    match facts.devices.iter().find(|f| f.path == path) {
        Some(f) => f.node.as_ref().map(Option::as_ref).map_err(Clone::clone),
        None => Ok(None),
    }
}

/// A policy `[[device]]` table with its line, for messages.
struct Declared<'a> {
    policy: &'a DevicePolicy,
    line: usize,
}

fn policy_devices(facts: &Facts) -> Vec<Declared<'_>> {
    let Some(policy) = &facts.policy else {
        return Vec::new();
    };
    let lines = LineIndex::new(facts.policy_file.text.as_deref().unwrap_or(""));
    policy
        .devices
        .iter()
        .map(|p| Declared {
            policy: p,
            line: lines.line_of(p.path.span().start),
        })
        .collect()
}

/// The method a policy device uses: as written, else `bind` when it must
/// appear at another path inside, else `dev` (a private node Proxmox makes:
/// no host group to map, no subordinate IDs, works privileged or not).
fn method_of(p: &DevicePolicy) -> DeviceMethod {
    match (p.method, &p.container_path) {
        (Some(m), _) => m,
        (None, Some(ct)) if ct != p.path.get_ref() => DeviceMethod::Bind,
        (None, _) => DeviceMethod::Dev,
    }
}

/// Host groups of bound device nodes, passed through 1:1 so the node's
/// group means the same inside (dialout 20 for serial adapters). Nodes
/// owned by host group 0 stay unmapped: root-only nodes need `devN`.
pub fn bound_node_groups(facts: &Facts) -> Result<Vec<Passthrough>, String> {
    let mut sources: Vec<String> = facts
        .conf
        .mount_entries()
        .into_iter()
        .filter(|m| m.is_bind() && m.source.starts_with("/dev/"))
        .map(|m| m.source)
        .collect();
    for d in policy_devices(facts) {
        if method_of(d.policy) == DeviceMethod::Bind {
            sources.push(d.policy.path.get_ref().clone());
        }
    }
    let mut out = Vec::new();
    for src in sources {
        if let Ok(Some(node)) = node_of(facts, &src) {
            if node.gid != 0 && node.kind != device::NodeKind::NotDevice {
                out.push(Passthrough::same(
                    IdKind::Gid,
                    u64::from(node.gid),
                    format!("host group {} of bound {}", node.gid, src),
                ));
            }
        }
    }
    Ok(out)
}

/// What the step wants in the config, besides what is there already.
#[derive(Default)]
struct Want {
    /// Raw lines (`key`, `value`) the tool owns and wants kept or added.
    raw: Vec<(&'static str, String)>,
    /// Why each new raw line is there, in order.
    raw_reasons: Vec<String>,
    /// Tool-owned `devN` entries (index, value).
    devs: Vec<(u32, String)>,
    /// Cgroup rules this boot needs in the generated config.
    boot_rules: Vec<String>,
    /// Mount entries this boot needs in the generated config.
    boot_mounts: Vec<String>,
}

impl Want {
    fn raw(&mut self, key: &'static str, value: String, why: String) {
        if !self.raw.iter().any(|(k, v)| *k == key && *v == value) {
            self.raw.push((key, value));
            self.raw_reasons.push(why);
        }
    }
}

/// The devices step.
pub fn plan_devices(facts: &Facts, d: &mut Draft) -> Result<(), String> {
    let vmid = facts.vmid;
    let state = facts.state.as_ref();
    let group_gid = |name: &str| state.and_then(|s| s.container_groups.get(name).copied());
    let owned_raw: Vec<String> = d
        .state
        .owned
        .conf_lines
        .iter()
        .filter(|l| l.starts_with(MOUNT_KEY) || l.starts_with(RULE_KEY))
        .cloned()
        .collect();
    let owned_devs: Vec<String> = d.state.owned.dev_entries.clone();
    let person_rules: Vec<CgroupRule> = d
        .conf
        .cgroup2_allows()
        .into_iter()
        .filter(|v| !owned_raw.contains(&format!("{RULE_KEY}: {v}")))
        .filter_map(CgroupRule::parse)
        .collect();
    let mut want = Want::default();
    let policy_dev_paths: BTreeSet<String> = policy_devices(facts)
        .iter()
        .filter(|p| method_of(p.policy) == DeviceMethod::Dev)
        .map(|p| p.policy.path.get_ref().clone())
        .collect();
    let required: BTreeSet<String> = policy_devices(facts)
        .iter()
        .filter(|p| p.policy.required)
        .map(|p| p.policy.path.get_ref().clone())
        .collect();
    let missing = |path: &str, d: &mut Draft, how: &str| -> Result<(), String> {
        let check = if device::classify(path, None) == DeviceClass::Serial {
            "check the cable and the by-id name with 'ls -l /dev/serial/by-id'"
        } else {
            "check that the device is present and its driver loaded"
        };
        if required.contains(path) {
            return Err(format!(
                "required device {path} is missing; {check}, then start again (or set required = false in the policy)"
            ));
        }
        d.events.push(Event::warn(
            "device-missing",
            format!("{path} is missing, {how}; {check}"),
        ));
        Ok(())
    };

    // Policy devices not in the config yet: the tool adds them.
    let conf_devs = d.conf.dev_entries();
    let conf_mounts = d.conf.mount_entries();
    let mut used_indexes: Vec<u32> = conf_devs.iter().map(|e| e.index).collect();
    for decl in policy_devices(facts) {
        let p = decl.policy;
        let path = p.path.get_ref().as_str();
        let at = format!("{} line {}", facts.policy_file.path, decl.line);
        device::check_path(path).map_err(|e| format!("{at}: device {e}"))?;
        let method = method_of(p);
        if method == DeviceMethod::Dev && p.container_path.as_deref().is_some_and(|c| c != path) {
            return Err(format!(
                "{at}: device {path}: method = \"dev\" shows the node at the same path inside; for container_path = {:?} use method = \"bind\"",
                p.container_path.as_deref().unwrap_or_default()
            ));
        }
        let node = match node_of(facts, path).map_err(|e| format!("{at}: device {path}: {e}"))? {
            Some(n) => n,
            None => {
                missing(path, d, "so the tool adds nothing for it this start")?;
                continue;
            }
        };
        device::check(path, node, p.allow_dangerous).map_err(|e| format!("{at}: device {e}"))?;
        let class = device::classify(path, Some(node));
        match method {
            DeviceMethod::Dev => {
                if conf_devs.iter().any(|e| e.path == path) {
                    continue; // handled with the config's devN entries below
                }
                let owned = owned_devs
                    .iter()
                    .filter_map(|l| parse_owned_dev(l))
                    .find(|(_, e)| e.path == path);
                let index = match owned {
                    Some((i, _)) => i,
                    None => match device::free_dev_index(used_indexes.iter().copied()) {
                        Some(i) => i,
                        None => {
                            return Err(format!(
                                "{at}: device {path}: all 256 devN slots are in use"
                            ))
                        }
                    },
                };
                used_indexes.push(index);
                let mut entry = DevEntry::new(index, path);
                fill_dev_owner(&mut entry, class, node, facts, &group_gid);
                want.boot_rules.push(dev_rule(node, entry.deny_write));
                want.devs.push((index, entry.render()));
            }
            DeviceMethod::Bind => {
                if conf_mounts.iter().any(|m| m.source == path) {
                    continue; // handled with the config's binds below
                }
                let ct = p
                    .container_path
                    .as_deref()
                    .unwrap_or(path)
                    .trim_start_matches('/')
                    .to_string();
                let value = format!("{path} {ct} none {}", device::BIND_OPTIONS.join(","));
                want.boot_mounts.push(value.clone());
                want.raw(
                    MOUNT_KEY,
                    value,
                    format!("bind {path} ({}) at /{ct}", class.word()),
                );
                plan_rule(node, path, &person_rules, &mut want, d);
            }
        }
    }

    // Binds the config has: the node needs an exact rule and the mount the
    // right options. The group map comes from `bound_node_groups`.
    for m in conf_mounts
        .iter()
        .filter(|m| m.is_bind() && m.source.starts_with("/dev/"))
    {
        let line = format!("{MOUNT_KEY}: {}", m.value);
        let tools = owned_raw.contains(&line);
        if tools {
            want.raw(MOUNT_KEY, m.value.clone(), String::new());
        }
        let node = match node_of(facts, &m.source) {
            Err(e) => {
                d.events.push(Event::warn(
                    "device-unresolved",
                    format!("{}: {e}", m.source),
                ));
                continue;
            }
            Ok(None) => {
                let how = if m.options.iter().any(|o| o == "optional") {
                    "so LXC skips its bind (optional)"
                } else {
                    "and the bind has no 'optional', so LXC fails the start"
                };
                missing(&m.source, d, how)?;
                continue;
            }
            Ok(Some(n)) => n,
        };
        if let Err(e) = device::check(&m.source, node, true) {
            d.events
                .push(Event::warn("device-odd", format!("lxc.mount.entry {e}")));
            continue;
        }
        let lacking = device::missing_bind_options(&m.options);
        if !lacking.is_empty() {
            d.events.push(Event::warn(
                "bind-options",
                format!(
                    "lxc.mount.entry of {} lacks {}; a device bind wants '{}' so an unplugged device does not fail the start and LXC creates the mount point; fix the line",
                    m.source,
                    lacking.join(","),
                    device::BIND_OPTIONS.join(",")
                ),
            ));
        }
        plan_rule(node, &m.source, &person_rules, &mut want, d);
    }

    // devN entries the config has.
    for e in &conf_devs {
        let line = format!("dev{}: {}", e.index, e.value);
        let tools = owned_devs.contains(&line);
        if tools && !policy_dev_paths.contains(&e.path) {
            continue; // no longer wanted: apply_want removes it
        }
        let node = match node_of(facts, &e.path) {
            Err(err) => {
                d.events.push(Event::warn(
                    "device-unresolved",
                    format!("dev{}: {}: {err}", e.index, e.path),
                ));
                continue;
            }
            Ok(None) if tools => {
                missing(
                    &e.path,
                    d,
                    "so the tool removes its dev entry (Proxmox would fail the start)",
                )?;
                continue;
            }
            Ok(None) => {
                if required.contains(&e.path) {
                    missing(&e.path, d, "")?;
                }
                d.events.push(Event::warn(
                    "device-missing",
                    format!(
                        "dev{} {} is missing: Proxmox fails this start with 'Device {} does not exist'; plug it in, or remove the entry with 'pct set {vmid} --delete dev{}'",
                        e.index, e.path, e.path, e.index
                    ),
                ));
                continue;
            }
            Ok(Some(n)) => n,
        };
        let class = device::classify(&e.path, Some(node));
        let mut fixed = e.clone();
        if tools {
            fixed.uid = None;
            fixed.gid = None;
            fill_dev_owner(&mut fixed, class, node, facts, &group_gid);
            want.devs.push((e.index, fixed.render()));
            continue;
        }
        // A person's entry: only fill in what is missing.
        if fixed.uid.is_none() && fixed.gid.is_none() {
            fill_dev_owner(&mut fixed, class, node, facts, &group_gid);
            if fixed != *e {
                d.conf.set_key(&format!("dev{}", e.index), &fixed.render());
                d.conf_reasons.push(format!(
                    "dev{} {} ({}): {} so the service can open it",
                    e.index,
                    e.path,
                    class.word(),
                    describe_owner(&fixed)
                ));
            }
        } else {
            warn_unusable_dev(e, facts, d);
        }
        if let Some(mode) = &fixed.mode {
            if !device::mode_gives_group_rw(mode) && fixed.uid.is_none() {
                d.events.push(Event::warn(
                    "dev-mode",
                    format!(
                        "dev{} {}: mode={mode} gives its group no read/write, so group membership cannot help; use mode=0660",
                        e.index, e.path
                    ),
                ));
            }
        }
    }

    apply_want(facts, d, want, &owned_raw, &owned_devs);
    Ok(())
}

/// Group (and owner, for a service without supplementary groups) of a
/// `devN` node the tool writes or completes.
fn fill_dev_owner(
    entry: &mut DevEntry,
    class: DeviceClass,
    node: &Node,
    facts: &Facts,
    group_gid: &dyn Fn(&str) -> Option<u32>,
) {
    let fallback = facts
        .state
        .as_ref()
        .and_then(|s| s.dev_fallback_for(&entry.path));
    if let Some(fb) = fallback {
        entry.uid = Some(fb.uid);
        entry.gid = Some(fb.gid);
        return;
    }
    let gid = match class {
        DeviceClass::Serial => Some(group_gid("dialout").unwrap_or(DIALOUT_GID)),
        DeviceClass::Other if node.gid == DIALOUT_GID => Some(DIALOUT_GID),
        other => device::container_gid(other, group_gid),
    };
    entry.gid = gid;
    if gid.is_some()
        && entry
            .mode
            .as_deref()
            .is_some_and(|m| !device::mode_gives_group_rw(m))
    {
        entry.mode = Some("0660".into());
    }
}

fn describe_owner(e: &DevEntry) -> String {
    match (&e.uid, &e.gid) {
        (Some(u), Some(g)) => format!("node owned by the service, uid={u} gid={g}"),
        (None, Some(g)) => format!("gid={g}"),
        _ => "unchanged".into(),
    }
}

/// A person's `devN` with a `gid=` the service is not in: say so, never fix.
fn warn_unusable_dev(e: &DevEntry, facts: &Facts, d: &mut Draft) {
    let Some(user) = facts.state.as_ref().and_then(|s| s.runtime_user.as_ref()) else {
        return;
    };
    if user.uid == 0 {
        return;
    }
    let owner_ok = e.uid == Some(user.uid);
    let gid_ok = e.gid.is_some_and(|g| {
        g == user.gid || (user.keeps_supplementary_groups && user.groups.contains(&g))
    });
    if !owner_ok && !gid_ok {
        d.events.push(Event::warn(
            "dev-unusable",
            format!(
                "dev{} {}: gid={} is not a group of the service (uid {} gid {} groups {:?}), so it cannot open the node; set gid= to one of its groups, or uid={} ",
                e.index,
                e.path,
                e.gid.unwrap_or(0),
                user.uid,
                user.gid,
                user.groups,
                user.uid
            ),
        ));
    }
}

/// PVE's rule for a `devN` node: read/write, or read-only for deny-write.
fn dev_rule(node: &Node, deny_write: bool) -> String {
    if deny_write {
        format!("{} r", node.rule_id())
    } else {
        format!("{} rw", node.rule_id())
    }
}

/// Makes sure an exact rule exists for a bound node; warns about broad and
/// stale rules a person wrote.
fn plan_rule(node: &Node, path: &str, person: &[CgroupRule], want: &mut Want, d: &mut Draft) {
    let exact = node.cgroup_rule();
    if person.iter().any(|r| r.is_exact_for(node)) {
        return;
    }
    for r in person.iter().filter(|r| r.is_stale_for(node)) {
        d.events.push(Event::warn(
            "cgroup-stale",
            format!(
                "lxc.cgroup2.devices.allow {} {}:{} does not match {path}, which is now {} (replugged?); the tool adds '{exact}'; remove the old rule",
                r.kind,
                r.major.map_or("*".into(), |m| m.to_string()),
                r.minor.map_or("*".into(), |m| m.to_string()),
                node.rule_id()
            ),
        ));
    }
    for r in person.iter().filter(|r| r.covers(node) && r.kind != 'a') {
        d.events.push(Event::warn(
            "cgroup-broad",
            format!(
                "lxc.cgroup2.devices.allow {} {}:* rwm allows every device of major {} for {path}; the exact rule is '{exact}'",
                r.kind, node.major, node.major
            ),
        ));
    }
    want.boot_rules.push(exact.clone());
    want.raw(
        RULE_KEY,
        exact,
        format!("allow {path} ({})", node.rule_id()),
    );
}

fn parse_owned_dev(line: &str) -> Option<(u32, DevEntry)> {
    let (key, value) = line.split_once(':')?;
    let index: u32 = key.strip_prefix("dev")?.parse().ok()?;
    Some((index, DevEntry::parse(index, value.trim()).ok()?))
}

/// Brings the config and the state to what the step wants: owned lines no
/// longer wanted go, new ones come, and this boot's generated config gets
/// the rules and mounts it lacks.
fn apply_want(
    facts: &Facts,
    d: &mut Draft,
    want: Want,
    owned_raw: &[String],
    owned_devs: &[String],
) {
    // Raw lines.
    for line in owned_raw {
        let keep = want.raw.iter().any(|(k, v)| format!("{k}: {v}") == *line);
        if !keep {
            let (key, value) = line
                .split_once(':')
                .map(|(k, v)| (k, v.trim()))
                .unwrap_or((line, ""));
            if d.conf.remove_raw(key, value) > 0 {
                d.conf_reasons
                    .push(format!("removed the tool's '{line}': no longer needed"));
            }
            d.state.owned.conf_lines.retain(|l| l != line);
        }
    }
    for ((key, value), why) in want.raw.iter().zip(&want.raw_reasons) {
        let line = format!("{key}: {value}");
        let present = d.conf.raw_values(key).any(|v| v == value);
        if !present {
            d.conf.push_raw(key, value);
            d.conf_reasons.push(format!("{line}: {why}"));
        }
        if !d.state.owned.conf_lines.contains(&line) {
            d.state.owned.conf_lines.push(line);
        }
    }
    // devN entries the tool owns.
    let mut new_owned_devs = Vec::new();
    for line in owned_devs {
        let Some((index, _)) = parse_owned_dev(line) else {
            continue;
        };
        if !want.devs.iter().any(|(i, _)| *i == index) {
            let current = d.conf.get(&format!("dev{index}")).map(str::to_string);
            if current.as_deref().map(|v| format!("dev{index}: {v}")) == Some(line.clone()) {
                d.conf.remove_main_where(|l| matches!(&l.kind, LineKind::Key { key, .. } if *key == format!("dev{index}")));
                d.conf_reasons
                    .push(format!("removed the tool's '{line}': no longer needed"));
            }
        }
    }
    for (index, value) in &want.devs {
        let key = format!("dev{index}");
        if d.conf.get(&key) != Some(value.as_str()) {
            d.conf.set_key(&key, value);
            d.conf_reasons.push(format!(
                "{key}: {value}: pass the device through as a private node"
            ));
        }
        new_owned_devs.push(format!("{key}: {value}"));
    }
    d.state.owned.dev_entries = new_owned_devs;

    // This boot: PVE wrote the generated config before the hook ran.
    if want.boot_rules.is_empty() && want.boot_mounts.is_empty() {
        return;
    }
    let Some(text) = d.lxc_text(facts).map(str::to_string) else {
        return;
    };
    let lxc = LxcConfig::parse(&text);
    // Match the generated config's dialect (cgroup v1 keys on hybrid hosts).
    let rule_key = if lxc.values("lxc.cgroup.devices.allow").next().is_some()
        && lxc.values(RULE_KEY).next().is_none()
    {
        "lxc.cgroup.devices.allow"
    } else {
        RULE_KEY
    };
    let allows_all = lxc.values(rule_key).any(|v| v.trim() == "a");
    let mut new = text;
    if !allows_all {
        if let Some(t) = LxcConfig::parse(&new).with_appended(rule_key, &want.boot_rules) {
            new = t;
            d.lxc_reasons
                .push(format!("this start allows {}", want.boot_rules.join(", ")));
        }
    }
    if let Some(t) = LxcConfig::parse(&new).with_appended(MOUNT_KEY, &want.boot_mounts) {
        new = t;
        d.lxc_reasons
            .push(format!("this start binds {}", want.boot_mounts.join(", ")));
    }
    if d.lxc_text(facts) != Some(new.as_str()) {
        d.lxc = Some(new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::device::NodeKind;
    use crate::model::policy::Policy;
    use crate::model::prestart::tests::apply;
    use crate::model::prestart::{decide, Decision, HostFile, Target};
    use crate::model::pveconf::PveConfig;
    use crate::model::state::{DevFallback, RuntimeUser, State};

    const PRIV_LXC: &str = "lxc.cgroup.devices.deny = a\nlxc.cgroup.devices.allow = c 1:3 rwm\n";
    const UNPRIV_LXC: &str = "lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\nlxc.cgroup2.devices.allow = a\n";

    fn node(resolved: &str, major: u32, minor: u32, gid: u32) -> Node {
        Node {
            resolved: resolved.into(),
            kind: NodeKind::Char,
            major,
            minor,
            uid: 0,
            gid,
            mode: 0o660,
        }
    }

    fn facts(conf: &str, policy: Option<&str>, devices: &[(&str, Option<Node>)]) -> Facts {
        let mut f = Facts::minimal(105, "/etc/pve/lxc/105.conf", PveConfig::parse(conf));
        f.subuid.text = Some("root:100000:65536\n".into());
        f.subgid.text = Some("root:100000:65536\nroot:20:1\n".into());
        f.lxc_config.text = Some(
            if conf.contains("unprivileged: 1") {
                UNPRIV_LXC
            } else {
                PRIV_LXC
            }
            .into(),
        );
        if let Some(p) = policy {
            f.policy = Some(Policy::parse("p.toml", p).unwrap());
            f.policy_file = HostFile::new("/etc/pve/pct-passthrough/105.toml", Some(p.into()));
        }
        f.devices = devices
            .iter()
            .map(|(p, n)| DeviceFact {
                path: p.to_string(),
                node: Ok(n.clone()),
            })
            .collect();
        f
    }

    fn conf_of(d: &Decision) -> String {
        d.change(Target::PveConf)
            .map(|c| c.new.clone())
            .unwrap_or_default()
    }

    fn warnings(d: &Decision) -> String {
        d.events
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    const PRIV: &str = "arch: amd64\n";
    const UNPRIV: &str = "arch: amd64\nunprivileged: 1\n";
    const BYID: &str = "/dev/serial/by-id/usb-Sonoff-if00-port0";

    #[test]
    fn policy_dev_is_injected_with_dialout_then_nothing_to_do() {
        let f = facts(
            PRIV,
            Some(&format!("[[device]]\npath = \"{BYID}\"\n")),
            &[(BYID, Some(node("/dev/ttyUSB0", 188, 0, 20)))],
        );
        let d = decide(&f);
        assert_eq!(d.refusal, None);
        let conf = conf_of(&d);
        assert_eq!(conf, format!("arch: amd64\ndev0: {BYID},gid=20\n"));
        let lxc = &d.change(Target::LxcConfig).unwrap().new;
        assert!(
            lxc.ends_with("lxc.cgroup.devices.allow = c 188:0 rw\n"),
            "v1 dialect, PVE's devN rule: {lxc}"
        );
        let state = State::parse(&d.change(Target::State).unwrap().new).unwrap();
        assert_eq!(
            state.owned.dev_entries,
            vec![format!("dev0: {BYID},gid=20")]
        );
        let again = decide(&apply(&f, &d));
        assert!(again.changes.is_empty(), "{:#?}", again.changes);
    }

    #[test]
    fn removing_the_policy_device_removes_the_tools_dev_entry_only() {
        let f = facts(
            "arch: amd64\ndev3: /dev/ttyACM0,gid=20\n",
            Some(&format!("[[device]]\npath = \"{BYID}\"\n")),
            &[
                (BYID, Some(node("/dev/ttyUSB0", 188, 0, 20))),
                ("/dev/ttyACM0", Some(node("/dev/ttyACM0", 166, 0, 20))),
            ],
        );
        let d = decide(&f);
        assert!(conf_of(&d).contains(&format!("dev0: {BYID},gid=20\n")));
        let mut after = apply(&f, &d);
        after.policy = Some(Policy::parse("p.toml", "").unwrap());
        after.policy_file.text = Some(String::new());
        let d2 = decide(&after);
        assert_eq!(
            conf_of(&d2),
            "arch: amd64\ndev3: /dev/ttyACM0,gid=20\n",
            "the person's dev3 stays"
        );
    }

    #[test]
    fn missing_required_device_refuses_and_optional_warns() {
        let p = format!("[[device]]\npath = \"{BYID}\"\nrequired = true\n");
        let r = decide(&facts(PRIV, Some(&p), &[(BYID, None)]))
            .refusal
            .unwrap();
        assert!(
            r.contains(BYID) && r.contains("ls -l /dev/serial/by-id"),
            "{r}"
        );

        let p = format!("[[device]]\npath = \"{BYID}\"\n");
        let d = decide(&facts(PRIV, Some(&p), &[(BYID, None)]));
        assert_eq!(d.refusal, None);
        assert!(conf_of(&d).is_empty(), "no devN for a missing node");
        assert!(warnings(&d).contains("is missing"), "{}", warnings(&d));
    }

    #[test]
    fn a_tool_dev_entry_whose_node_vanished_is_removed() {
        let p = format!("[[device]]\npath = \"{BYID}\"\n");
        let f = facts(
            PRIV,
            Some(&p),
            &[(BYID, Some(node("/dev/ttyUSB0", 188, 0, 20)))],
        );
        let mut after = apply(&f, &decide(&f));
        after.devices[0].node = Ok(None);
        let d = decide(&after);
        assert_eq!(conf_of(&d), "arch: amd64\n");
    }

    #[test]
    fn dangerous_nodes_need_allow_dangerous() {
        let p = "[[device]]\npath = \"/dev/mem\"\n";
        let r = decide(&facts(
            PRIV,
            Some(p),
            &[("/dev/mem", Some(node("/dev/mem", 1, 1, 15)))],
        ))
        .refusal
        .unwrap();
        assert!(
            r.contains("p.toml line 2") || r.contains("105.toml line 2"),
            "{r}"
        );
        assert!(r.contains("allow_dangerous"), "{r}");
        let p = "[[device]]\npath = \"/dev/mem\"\nallow_dangerous = true\n";
        assert_eq!(
            decide(&facts(
                PRIV,
                Some(p),
                &[("/dev/mem", Some(node("/dev/mem", 1, 1, 15)))]
            ))
            .refusal,
            None
        );
    }

    #[test]
    fn bind_gets_an_exact_rule_and_warnings_for_broad_and_stale_rules() {
        let conf = "arch: amd64\nlxc.cgroup2.devices.allow: c 188:* rwm\nlxc.cgroup2.devices.allow: c 166:1 rwm\nlxc.mount.entry: /dev/ttyACM0 dev/ttyACM0 none bind\nlxc.mount.entry: /dev/ttyUSB0 dev/ttyUSB0 none bind,optional,create=file\n";
        let f = facts(
            conf,
            None,
            &[
                ("/dev/ttyACM0", Some(node("/dev/ttyACM0", 166, 0, 20))),
                ("/dev/ttyUSB0", Some(node("/dev/ttyUSB0", 188, 0, 20))),
            ],
        );
        let d = decide(&f);
        assert_eq!(d.refusal, None);
        let c = conf_of(&d);
        assert!(
            c.ends_with(
                "lxc.cgroup2.devices.allow: c 166:0 rwm\nlxc.cgroup2.devices.allow: c 188:0 rwm\n"
            ),
            "{c}"
        );
        let w = warnings(&d);
        assert!(w.contains("c 166:1 does not match /dev/ttyACM0"), "{w}");
        assert!(
            w.contains("c 188:* rwm allows every device of major 188"),
            "{w}"
        );
        assert!(w.contains("lacks optional,create=file"), "{w}");
        let lxc = &d.change(Target::LxcConfig).unwrap().new;
        assert!(
            lxc.contains(
                "lxc.cgroup.devices.allow = c 166:0 rwm\nlxc.cgroup.devices.allow = c 188:0 rwm\n"
            ),
            "{lxc}"
        );
        assert!(decide(&apply(&f, &d)).changes.is_empty());
    }

    #[test]
    fn bound_node_groups_pass_the_host_group_through() {
        let conf = "arch: amd64\nunprivileged: 1\nlxc.mount.entry: /dev/dri/renderD128 dev/dri/renderD128 none bind,optional,create=file\n";
        let f = facts(
            conf,
            None,
            &[(
                "/dev/dri/renderD128",
                Some(node("/dev/dri/renderD128", 226, 128, 104)),
            )],
        );
        let d = decide(&f);
        assert_eq!(d.refusal, None);
        let c = conf_of(&d);
        assert!(c.contains("lxc.idmap: g 104 104 1\n"), "{c}");
        assert!(d.subid.iter().any(|n| n.kind == IdKind::Gid));
        // Unprivileged: PVE allows all devices, so no same-boot rule is needed.
        let lxc = d.change(Target::LxcConfig).unwrap().new.clone();
        assert!(!lxc.contains("226:128"), "{lxc}");
    }

    #[test]
    fn person_dev_entries_get_a_missing_group_and_keep_what_they_set() {
        let conf =
            "arch: amd64\nunprivileged: 1\ndev0: /dev/dri/renderD128\ndev1: /dev/ttyUSB0,gid=5\n";
        let devices = [
            (
                "/dev/dri/renderD128",
                Some(node("/dev/dri/renderD128", 226, 128, 104)),
            ),
            ("/dev/ttyUSB0", Some(node("/dev/ttyUSB0", 188, 0, 20))),
        ];
        // Before post-start recorded the container's render group: no guess.
        let f = facts(conf, None, &devices);
        assert!(conf_of(&decide(&f)).is_empty());
        // After: gid of the container's render group.
        let mut f = facts(conf, None, &devices);
        let mut st = State::new(105);
        st.container_groups.insert("render".into(), 993);
        st.runtime_user = Some(RuntimeUser {
            uid: 1000,
            gid: 1000,
            groups: vec![993],
            keeps_supplementary_groups: true,
            ..RuntimeUser::default()
        });
        f.state = Some(st);
        let d = decide(&f);
        let c = conf_of(&d);
        assert!(c.contains("dev0: /dev/dri/renderD128,gid=993\n"), "{c}");
        assert!(
            c.contains("dev1: /dev/ttyUSB0,gid=5\n"),
            "a person's gid stays: {c}"
        );
        assert!(
            warnings(&d).contains("gid=5 is not a group of the service"),
            "{}",
            warnings(&d)
        );
    }

    #[test]
    fn tool_dev_entries_follow_the_fallback_for_services_without_groups() {
        let p = format!("[[device]]\npath = \"{BYID}\"\n");
        let mut f = facts(
            UNPRIV,
            Some(&p),
            &[(BYID, Some(node("/dev/ttyUSB0", 188, 0, 20)))],
        );
        let mut st = State::new(105);
        st.dev_fallback.push(DevFallback {
            path: BYID.into(),
            uid: 1000,
            gid: 1000,
            reason: "su-exec".into(),
        });
        f.state = Some(st);
        let c = conf_of(&decide(&f));
        assert!(
            c.contains(&format!("dev0: {BYID},gid=1000,uid=1000\n")),
            "{c}"
        );
    }

    #[test]
    fn policy_bind_at_another_path() {
        let p = "[[device]]\npath = \"/dev/ttyUSB0\"\ncontainer_path = \"/dev/zigbee\"\n";
        let f = facts(
            UNPRIV,
            Some(p),
            &[("/dev/ttyUSB0", Some(node("/dev/ttyUSB0", 188, 0, 20)))],
        );
        let d = decide(&f);
        let c = conf_of(&d);
        assert!(
            c.contains("lxc.mount.entry: /dev/ttyUSB0 dev/zigbee none bind,optional,create=file\n"),
            "{c}"
        );
        assert!(c.contains("lxc.idmap: g 20 20 1\n"), "{c}");
        let lxc = &d.change(Target::LxcConfig).unwrap().new;
        assert!(
            lxc.contains(
                "lxc.mount.entry = /dev/ttyUSB0 dev/zigbee none bind,optional,create=file\n"
            ),
            "{lxc}"
        );
        assert!(decide(&apply(&f, &d)).changes.is_empty());
        let bad = "[[device]]\npath = \"/dev/ttyUSB0\"\nmethod = \"dev\"\ncontainer_path = \"/dev/zigbee\"\n";
        let r = decide(&facts(
            UNPRIV,
            Some(bad),
            &[("/dev/ttyUSB0", Some(node("/dev/ttyUSB0", 188, 0, 20)))],
        ))
        .refusal
        .unwrap();
        assert!(
            r.contains("105.toml line 2") && r.contains("use method = \"bind\""),
            "{r}"
        );
    }
}
