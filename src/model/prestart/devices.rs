//! The pre-start devices step: every device the container wants
//! ([`device::declared`]) gets what makes it usable on this boot (exact
//! cgroup rule, bind options, `devN` group and owner), a missing one is
//! refused or warned about, and the tool's own lines and options follow the
//! need. Deciding again on its own output changes nothing. Pure; see
//! `model::device` for the rules.

use super::{private_node_dir, Draft, Facts, PrivateNode, Refusal};
use crate::model::device::{
    self, CgroupRule, Declared, DeviceClass, DeviceSource, Node, DIALOUT_GID,
};
use crate::model::event::Event;
use crate::model::idmap::{IdKind, Passthrough};
use crate::model::lxcconf::LxcConfig;
use crate::model::policy::DeviceMethod;
use crate::model::pveconf::{DevEntry, LineKind, PveConfig};
use crate::model::state::OwnedLine;

/// Event names for entries a person wrote that cannot work as they are;
/// `doctor` shows them as warnings.
pub const ENTRY_FINDINGS: &[&str] = &[
    "cgroup-stale",
    "cgroup-broad",
    "bind-options",
    "dev-unusable",
    "dev-mode",
];

/// Event names for entries a person wrote that must not be passed through
/// as they are (a dangerous node, a directory); `doctor` fails on them.
pub const ENTRY_DANGERS: &[&str] = &["device-dangerous", "dev-parse"];

const MOUNT_KEY: &str = "lxc.mount.entry";
const RULE_KEY: &str = "lxc.cgroup2.devices.allow";

/// A declared device path and what stat found there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFact {
    pub path: String,
    /// `Ok(None)`: missing. `Err`: could not be resolved (a link loop).
    pub node: Result<Option<Node>, String>,
}

fn node_of<'a>(facts: &'a Facts, path: &str) -> Result<Option<&'a Node>, String> {
    match facts.devices.iter().find(|f| f.path == path) {
        Some(f) => f.node.as_ref().map(Option::as_ref).map_err(Clone::clone),
        None => Ok(None),
    }
}

/// The node of a declared device when it exists and may be passed through
/// as declared (a dangerous node needs the policy's `allow_dangerous`).
pub fn usable_node<'a>(facts: &'a Facts, dev: &Declared) -> Option<&'a Node> {
    let node = node_of(facts, &dev.path).ok().flatten()?;
    device::check(&dev.path, node, dev.allow_dangerous)
        .is_ok()
        .then_some(node)
}

/// The devices the container wants, from the facts' config and policy.
pub fn declared_of(facts: &Facts) -> Vec<Declared> {
    device::declared(&facts.conf, facts.policy.as_ref())
}

/// Host groups of bound device nodes, passed through 1:1 so the node's
/// group means the same inside (dialout 20 for serial adapters). Nodes
/// owned by host group 0 stay unmapped: root-only nodes need `devN`.
pub fn bound_node_groups(facts: &Facts) -> Result<Vec<Passthrough>, Refusal> {
    let mut out = Vec::new();
    for dev in declared_of(facts)
        .iter()
        .filter(|d| d.method == DeviceMethod::Bind)
    {
        if let Some(node) = usable_node(facts, dev) {
            if node.gid != 0 {
                out.push(Passthrough::same(
                    IdKind::Gid,
                    u64::from(node.gid),
                    format!("host group {} of bound {}", node.gid, dev.path),
                ));
            }
        }
    }
    Ok(out)
}

/// What the tool already owns in the config, split by kind.
struct Owned {
    /// `lxc.mount.entry` and cgroup rule lines.
    raw: Vec<OwnedLine>,
    /// Whole `devN` entries.
    devs: Vec<OwnedLine>,
    /// Options the tool added to a person's `devN` (`dev0` / `gid=20`).
    options: Vec<OwnedLine>,
}

impl Owned {
    fn of(d: &Draft) -> Owned {
        let o = &d.state.owned;
        Owned {
            raw: o
                .conf_lines
                .iter()
                .filter(|l| l.key == MOUNT_KEY || l.key == RULE_KEY)
                .cloned()
                .collect(),
            devs: o.dev_entries.clone(),
            options: o.dev_options.clone(),
        }
    }

    fn has_raw(&self, key: &str, value: &str) -> bool {
        self.raw.iter().any(|l| l.key == key && l.value == value)
    }

    fn has_dev(&self, index: u32, value: &str) -> bool {
        self.devs
            .iter()
            .any(|l| l.dev_index() == Some(index) && l.value == value)
    }

    fn dev_path(&self, path: &str) -> Option<u32> {
        self.devs.iter().find_map(|l| {
            let i = l.dev_index()?;
            DevEntry::parse(i, &l.value)
                .is_ok_and(|e| e.path == path)
                .then_some(i)
        })
    }

    fn options_of(&self, index: u32) -> Vec<&str> {
        let key = format!("dev{index}");
        self.options
            .iter()
            .filter(|l| l.key == key)
            .map(|l| l.value.as_str())
            .collect()
    }
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
    /// Options the tool owns on a person's `devN`: (index, new value, the
    /// options it added, why).
    person_devs: Vec<(u32, String, Vec<String>, String)>,
    /// Cgroup rules this boot needs in the generated config.
    boot_rules: Vec<String>,
    /// Mount entries this boot needs in the generated config.
    boot_mounts: Vec<String>,
    /// Private nodes for this boot: the mount value they replace in the
    /// generated config (`None`: a new entry), the new value, the node.
    private: Vec<(Option<String>, String, PrivateNode)>,
}

impl Want {
    fn raw(&mut self, key: &'static str, value: String, why: String) {
        if !self.raw.iter().any(|(k, v)| *k == key && *v == value) {
            self.raw.push((key, value));
            self.raw_reasons.push(why);
        }
    }
}

/// The devices step: per declared device, check its node, then want what
/// its form needs; then bring the config and this boot's LXC config there.
pub fn plan_devices(facts: &Facts, d: &mut Draft) -> Result<(), Refusal> {
    // Proxmox fails the start on a devN it cannot parse; the tool skips it.
    for e in d.conf.dev_errors() {
        d.events.push(Event::warn(
            "dev-parse",
            e.message(&facts.conf_path, facts.vmid),
        ));
    }
    let owned = Owned::of(d);
    let person_rules = person_rules(d, &owned);
    let mut want = Want::default();
    let mut used_indexes: Vec<u32> = d.conf.dev_entries().iter().map(|e| e.index).collect();
    for dev in declared_of(facts) {
        if let DeviceSource::Policy { line } = dev.source {
            check_policy_device(facts, &dev, line)?;
        }
        // An optional policy device is never a `devN` (Proxmox refuses the
        // start on one whose node is missing, before any hook runs): this
        // start binds a private node instead; an older `devN` of the tool's
        // for it goes.
        let optional_policy_dev = dev.method == DeviceMethod::Dev
            && dev
                .policy
                .as_ref()
                .is_some_and(|p| !p.required && device::policy_method(p) == DeviceMethod::Dev)
            && match dev.source {
                DeviceSource::Policy { .. } => true,
                DeviceSource::Dev(i) => owned.dev_path(&dev.path) == Some(i),
                DeviceSource::Bind { .. } => false,
            };
        if !optional_policy_dev && !still_wanted(&dev, &owned) {
            continue; // the tool's own entry for a device no longer wanted
        }
        let Some(node) = checked_node(facts, &dev, &owned, d)? else {
            continue;
        };
        if optional_policy_dev {
            want_private(facts, d, &dev, node, None, &mut want);
            continue;
        }
        match (&dev.source, dev.method) {
            (DeviceSource::Policy { line }, DeviceMethod::Dev) => want_policy_dev(
                facts,
                &dev,
                *line,
                node,
                &owned,
                &mut used_indexes,
                &mut want,
            )?,
            (DeviceSource::Policy { .. }, DeviceMethod::Bind) => {
                want_policy_bind(facts, &dev, node, &person_rules, &mut want, d)
            }
            (DeviceSource::Bind { value, .. }, _) => want_bind(
                facts,
                &dev,
                value,
                node,
                &owned,
                &person_rules,
                &mut want,
                d,
            ),
            (DeviceSource::Dev(index), _) => {
                want_dev_entry(facts, &dev, *index, node, &owned, &mut want, d)
            }
        }
    }
    apply_want(facts, d, want, &owned);
    Ok(())
}

/// Cgroup rules a person wrote (not the tool's).
fn person_rules(d: &Draft, owned: &Owned) -> Vec<CgroupRule> {
    d.conf
        .cgroup2_allows()
        .into_iter()
        .filter(|v| !owned.has_raw(RULE_KEY, v))
        .filter_map(CgroupRule::parse)
        .collect()
}

/// False for an entry the tool wrote for a policy device that the policy
/// no longer has (or has with another method): `apply_want` removes it.
fn still_wanted(dev: &Declared, owned: &Owned) -> bool {
    let wants = |m: DeviceMethod| {
        dev.policy
            .as_ref()
            .is_some_and(|p| device::policy_method(p) == m)
    };
    match &dev.source {
        DeviceSource::Dev(i) => {
            let value = owned
                .devs
                .iter()
                .find(|l| l.dev_index() == Some(*i))
                .map(|l| l.value.clone());
            match value {
                Some(_) => wants(DeviceMethod::Dev),
                None => true,
            }
        }
        DeviceSource::Bind { value, .. } => {
            !owned.has_raw(MOUNT_KEY, value) || wants(DeviceMethod::Bind)
        }
        DeviceSource::Policy { .. } => true,
    }
}

/// A policy device's paths must be what Proxmox and LXC can express.
fn check_policy_device(facts: &Facts, dev: &Declared, line: usize) -> Result<(), Refusal> {
    let at = format!("{} line {line}", facts.policy_file.path);
    device::check_path(&dev.path)
        .map_err(|e| Refusal::new(format!("{at}: device {e}"), "fix the path in the policy"))?;
    let ct = dev
        .policy
        .as_ref()
        .and_then(|p| p.container_path.as_deref());
    if let Some(ct) = ct {
        device::check_container_path(ct).map_err(|e| {
            Refusal::new(
                format!("{at}: device {}: container_path {e}", dev.path),
                "fix container_path in the policy",
            )
        })?;
        if dev.method == DeviceMethod::Dev && ct != dev.path {
            return Err(Refusal::new(
                format!(
                    "{at}: device {}: method = \"dev\" shows the node at the same path inside",
                    dev.path
                ),
                format!("for container_path = {ct:?} use method = \"bind\""),
            ));
        }
    }
    Ok(())
}

/// The device's node when it is there and may be passed through; `None`
/// (with a warning) when the device is skipped this start; a refusal when
/// it is required or the policy asks for what cannot be allowed.
fn checked_node<'a>(
    facts: &'a Facts,
    dev: &Declared,
    owned: &Owned,
    d: &mut Draft,
) -> Result<Option<&'a Node>, Refusal> {
    let label = dev.source.label();
    let policy_at = |line: usize| format!("{} line {line}", facts.policy_file.path);
    let node = match node_of(facts, &dev.path) {
        Err(e) => {
            if let DeviceSource::Policy { line } = dev.source {
                return Err(Refusal::new(
                    format!("{}: device {}: {e}", policy_at(line), dev.path),
                    "fix the path in the policy",
                ));
            }
            d.events.push(Event::warn(
                "device-unresolved",
                format!("{label} {}: {e}", dev.path),
            ));
            return Ok(None);
        }
        Ok(None) => {
            device_missing(facts, dev, owned, d)?;
            return Ok(None);
        }
        Ok(Some(n)) => n,
    };
    if let Err(e) = device::check(&dev.path, node, dev.allow_dangerous) {
        if let DeviceSource::Policy { line } = dev.source {
            return Err(Refusal::new(
                format!("{}: device {e}", policy_at(line)),
                "remove the device, or set allow_dangerous = true in its [[device]] table if you mean it",
            ));
        }
        d.events.push(
            Event::warn(
                "device-dangerous",
                format!("{label} {e}; the tool adds no rule, group or owner for it"),
            )
            .with_fix(format!(
                "remove the entry or point it at the device node; a disk, /dev/mem, /dev/kmem or /dev/port passes only through a [[device]] table with allow_dangerous = true in /etc/pve/pct-passthrough/{}.toml",
                facts.vmid
            )),
        );
        return Ok(None);
    }
    Ok(Some(node))
}

/// A declared device whose node is missing: refused when required by the
/// policy, else a warning that says what happens to the start.
fn device_missing(
    facts: &Facts,
    dev: &Declared,
    owned: &Owned,
    d: &mut Draft,
) -> Result<(), Refusal> {
    let check = if device::classify(&dev.path, None) == DeviceClass::Serial {
        "check the cable and the by-id name with 'ls -l /dev/serial/by-id'"
    } else {
        "check that the device is present and its driver loaded"
    };
    if let Some(table) = dev.policy.as_ref().filter(|p| p.required) {
        let line = facts
            .policy
            .as_ref()
            .map_or(0, |p| p.line_of(table.path.span().start));
        return Err(Refusal::new(
            format!(
                "{} line {line}: required device {} is missing",
                facts.policy_file.path, dev.path
            ),
            format!("{check}, then start again (or set required = false there)"),
        ));
    }
    let how = match &dev.source {
        DeviceSource::Policy { .. } => "so the tool adds nothing for it this start".to_string(),
        DeviceSource::Bind { optional: true, .. } => "so LXC skips its bind (optional)".into(),
        DeviceSource::Bind { .. } => {
            "and the bind has no 'optional', so LXC fails the start".into()
        }
        DeviceSource::Dev(i) if owned.dev_path(&dev.path) == Some(*i) => {
            "so the tool removes its dev entry (Proxmox would fail the start)".into()
        }
        DeviceSource::Dev(i) => {
            d.events.push(
                Event::warn(
                    "device-missing",
                    format!(
                        "dev{i} {} is missing: Proxmox fails this start with 'Device {} does not exist'",
                        dev.path, dev.path
                    ),
                )
                .with_fix(format!(
                    "plug it in, or remove the entry with 'pct set {} --delete dev{i}'",
                    facts.vmid
                )),
            );
            return Ok(());
        }
    };
    d.events.push(Event::warn(
        "device-missing",
        format!("{} is missing, {how}; {check}", dev.path),
    ));
    Ok(())
}

/// A policy device passed as a private node: the tool writes its `devN`.
fn want_policy_dev(
    facts: &Facts,
    dev: &Declared,
    line: usize,
    node: &Node,
    owned: &Owned,
    used_indexes: &mut Vec<u32>,
    want: &mut Want,
) -> Result<(), Refusal> {
    let index = match owned
        .dev_path(&dev.path)
        .or_else(|| device::free_dev_index(used_indexes.iter().copied()))
    {
        Some(i) => i,
        None => {
            return Err(Refusal::new(
                format!(
                    "{} line {line}: device {}: all 256 devN slots are in use",
                    facts.policy_file.path, dev.path
                ),
                "remove a devN entry or use method = \"bind\"",
            ))
        }
    };
    used_indexes.push(index);
    let mut entry = DevEntry::new(index, &dev.path);
    fill_dev_owner(
        &mut entry,
        device::classify(&dev.path, Some(node)),
        node,
        facts,
    );
    want.boot_rules.push(dev_rule(node, entry.deny_write));
    want.devs.push((index, entry.render()));
    Ok(())
}

/// A policy device passed as a bind of the host node.
fn want_policy_bind(
    facts: &Facts,
    dev: &Declared,
    node: &Node,
    person_rules: &[CgroupRule],
    want: &mut Want,
    d: &mut Draft,
) {
    let ct = dev.ct_path.trim_start_matches('/');
    let value = format!("{} {ct} none {}", dev.path, device::BIND_OPTIONS.join(","));
    want.boot_mounts.push(value.clone());
    let class = device::classify(&dev.path, Some(node));
    want.raw(
        MOUNT_KEY,
        value.clone(),
        format!("bind {} ({}) at /{ct}", dev.path, class.word()),
    );
    plan_rule(node, &dev.path, person_rules, want, d);
    want_bind_owner(facts, d, dev, node, &value, want);
}

/// A bind the config has: the node needs an exact rule and the mount the
/// right options. The group map comes from `bound_node_groups`.
#[allow(clippy::too_many_arguments)]
fn want_bind(
    facts: &Facts,
    dev: &Declared,
    value: &str,
    node: &Node,
    owned: &Owned,
    person_rules: &[CgroupRule],
    want: &mut Want,
    d: &mut Draft,
) {
    if owned.has_raw(MOUNT_KEY, value) {
        want.raw(MOUNT_KEY, value.to_string(), String::new());
    } else if let DeviceSource::Bind { .. } = dev.source {
        let options: Vec<String> = crate::model::pveconf::MountEntry::parse(value)
            .map(|m| m.options)
            .unwrap_or_default();
        let lacking = device::missing_bind_options(&options);
        if !lacking.is_empty() {
            d.events.push(
                Event::warn(
                    "bind-options",
                    format!(
                        "lxc.mount.entry of {} lacks {}; a device bind wants '{}' so an unplugged device does not fail the start and LXC creates the mount point",
                        dev.path,
                        lacking.join(","),
                        device::BIND_OPTIONS.join(",")
                    ),
                )
                .with_fix("fix the line"),
            );
        }
    }
    plan_rule(node, &dev.path, person_rules, want, d);
    want_bind_owner(facts, d, dev, node, value, want);
}

/// A bound node whose owner or group inside is not what the service needs
/// (it drops supplementary groups, or the container's group for the device
/// has another GID than the host's): this start binds a private node with
/// that owner instead of the host node.
fn want_bind_owner(
    facts: &Facts,
    d: &mut Draft,
    dev: &Declared,
    node: &Node,
    value: &str,
    want: &mut Want,
) {
    let class = device::classify(&dev.path, Some(node));
    let owner = owner_for(facts, &dev.path, class, node);
    let shows = match d.idmap.as_deref() {
        Some(map) => to_inside(map, IdKind::Gid, node.gid),
        None => Some(node.gid),
    };
    if owner.uid.is_none() && owner.gid.is_none_or(|g| Some(g) == shows) {
        return;
    }
    want_private(facts, d, dev, node, Some(value), want);
}

/// A private node for this start, with the owner the service needs, bound
/// at the device's path inside: in place of the bind `replaces`, or as a
/// new entry of this start's LXC config (an optional policy device).
fn want_private(
    facts: &Facts,
    d: &mut Draft,
    dev: &Declared,
    node: &Node,
    replaces: Option<&str>,
    want: &mut Want,
) {
    let class = device::classify(&dev.path, Some(node));
    let owner = owner_for(facts, &dev.path, class, node);
    let host = |kind: IdKind, id: u32| match d.idmap.as_deref() {
        Some(map) => crate::model::idmap::lookup(map, kind, u64::from(id))
            .and_then(|h| u32::try_from(h).ok())
            .unwrap_or(id),
        None => id,
    };
    let ct = dev.ct_path.trim_start_matches('/');
    let name = ct.replace('/', "_");
    let path = format!("{}/{name}", private_node_dir(facts.vmid));
    let value = match replaces {
        Some(old) => match old.trim().split_once(char::is_whitespace) {
            Some((_, rest)) => format!("{path} {}", rest.trim_start()),
            None => return,
        },
        None => format!("{path} {ct} none {}", device::BIND_OPTIONS.join(",")),
    };
    let (uid, gid) = (owner.uid.unwrap_or(0), owner.gid.unwrap_or(0));
    let reason = format!(
        "{} ({}) at /{ct}: a private node {}:{} mode 0660 inside ({}); the host node is unchanged",
        dev.path,
        class.word(),
        uid,
        gid,
        owner.why
    );
    if replaces.is_none() {
        want.boot_rules.push(dev_rule(node, false));
    }
    want.private.push((
        replaces.map(str::to_string),
        value,
        PrivateNode {
            name,
            major: node.major,
            minor: node.minor,
            host_uid: host(IdKind::Uid, uid),
            host_gid: host(IdKind::Gid, gid),
            mode: 0o660,
            reason,
        },
    ));
}

/// The container ID a host ID shows as, if the map maps it.
fn to_inside(map: &[crate::model::idmap::IdmapEntry], kind: IdKind, host: u32) -> Option<u32> {
    let h = u64::from(host);
    map.iter()
        .find(|e| e.kind == kind && e.host <= h && h < e.host.saturating_add(e.len))
        .and_then(|e| u32::try_from(e.ct + (h - e.host)).ok())
}

/// The service as pre-start knows it before the container runs: the user
/// an earlier boot recorded, else a numeric `lxc.init.uid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownService {
    pub uid: u32,
    pub gid: u32,
    /// False when it runs without supplementary groups.
    pub keeps_groups: bool,
    /// Where it is known from, for the log.
    pub source: String,
}

pub fn known_service(facts: &Facts) -> Option<KnownService> {
    match facts.state.as_ref().and_then(|s| s.runtime_user.as_ref()) {
        Some(u) if u.uid == 0 => None,
        Some(u) => Some(KnownService {
            uid: u.uid,
            gid: u.gid,
            keeps_groups: u.keeps_supplementary_groups,
            source: format!("service uid {} recorded by an earlier boot", u.uid),
        }),
        None => init_service(&facts.conf),
    }
}

/// A numeric `lxc.init.uid` (and `lxc.init.gid`, default 0): LXC starts
/// init with them and with only the `lxc.init.groups` listed.
pub fn init_service(conf: &PveConfig) -> Option<KnownService> {
    let num = |k: &str| {
        conf.raw_values(k)
            .last()
            .and_then(|v| v.trim().parse::<u32>().ok())
    };
    let uid = num("lxc.init.uid").filter(|u| *u != 0)?;
    let gid = num("lxc.init.gid").unwrap_or(0);
    let keeps_groups = conf
        .raw_values("lxc.init.groups")
        .last()
        .is_some_and(|v| !v.trim().is_empty());
    Some(KnownService {
        uid,
        gid,
        keeps_groups,
        source: format!("lxc.init.uid {uid}"),
    })
}

/// Who should own a node the tool gives the container (container IDs), and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub why: String,
}

/// The owner a device's node needs: the service's uid/gid when it runs
/// without supplementary groups (post-start found it, or it is known ahead),
/// else the container's group for the device class (dialout 20 for serial,
/// the container's own render/video GID once post-start recorded it).
pub fn owner_for(facts: &Facts, path: &str, class: DeviceClass, node: &Node) -> Owner {
    let state = facts.state.as_ref();
    if let Some(fb) = state.and_then(|s| s.dev_fallback_for(path)) {
        return Owner {
            uid: Some(fb.uid),
            gid: Some(fb.gid),
            why: format!(
                "owned by the service uid {} gid {}, which runs without supplementary groups",
                fb.uid, fb.gid
            ),
        };
    }
    if let Some(s) = known_service(facts).filter(|s| !s.keeps_groups) {
        return Owner {
            uid: Some(s.uid),
            gid: Some(s.gid),
            why: format!(
                "owned by the service uid {} gid {} ({}), which runs without supplementary groups",
                s.uid, s.gid, s.source
            ),
        };
    }
    let group_gid = |name: &str| state.and_then(|s| s.container_groups.get(name).copied());
    let gid = match class {
        DeviceClass::Other if node.gid == DIALOUT_GID => Some(DIALOUT_GID),
        other => device::container_gid(other, group_gid),
    };
    Owner {
        uid: None,
        gid,
        why: match gid {
            Some(g) => format!("group {g}, the container's {} group", class.word()),
            None => "the container's group for it is not known yet".into(),
        },
    }
}

/// A `devN` the config has: the tool's own entry follows the need; a
/// person's gets only what it lacks (recorded as the tool's options, so a
/// later start can change exactly those).
fn want_dev_entry(
    facts: &Facts,
    dev: &Declared,
    index: u32,
    node: &Node,
    owned: &Owned,
    want: &mut Want,
    d: &mut Draft,
) {
    let Some(e) = d.conf.dev_entries().into_iter().find(|e| e.index == index) else {
        return;
    };
    let class = device::classify(&dev.path, Some(node));
    if owned.has_dev(index, &e.value) || owned.dev_path(&e.path) == Some(index) {
        let mut fixed = e.clone();
        fixed.uid = None;
        fixed.gid = None;
        fill_dev_owner(&mut fixed, class, node, facts);
        want.devs.push((index, fixed.render()));
        return;
    }
    // A person's entry, less the options the tool added earlier.
    let tools = owned.options_of(index);
    let mut base = e.clone();
    if base
        .uid
        .is_some_and(|u| tools.contains(&format!("uid={u}").as_str()))
    {
        base.uid = None;
    }
    if base
        .gid
        .is_some_and(|g| tools.contains(&format!("gid={g}").as_str()))
    {
        base.gid = None;
    }
    if base.uid.is_none() && base.gid.is_none() {
        let mut fixed = base.clone();
        fill_dev_owner(&mut fixed, class, node, facts);
        let mut added = Vec::new();
        if let Some(u) = &fixed.uid {
            added.push(format!("uid={u}"));
        }
        if let Some(g) = &fixed.gid {
            added.push(format!("gid={g}"));
        }
        if fixed.mode != base.mode {
            if let Some(m) = &fixed.mode {
                added.push(format!("mode={m}"));
            }
        }
        let why = format!(
            "dev{index} {} ({}): {} so the service can open it",
            e.path,
            class.word(),
            describe_owner(&fixed)
        );
        want.person_devs.push((index, fixed.render(), added, why));
        check_dev_mode(&fixed, d);
        return;
    }
    warn_unusable_dev(&e, facts, d);
    check_dev_mode(&base, d);
}

fn check_dev_mode(e: &DevEntry, d: &mut Draft) {
    if let Some(mode) = &e.mode {
        if !device::mode_gives_group_rw(mode) && e.uid.is_none() {
            d.events.push(
                Event::warn(
                    "dev-mode",
                    format!(
                        "dev{} {}: mode={mode} gives its group no read/write, so group membership cannot help",
                        e.index, e.path
                    ),
                )
                .with_fix("use mode=0660"),
            );
        }
    }
}

/// Group (and owner, for a service without supplementary groups) of a
/// `devN` node the tool writes or completes.
fn fill_dev_owner(entry: &mut DevEntry, class: DeviceClass, node: &Node, facts: &Facts) {
    let owner = owner_for(facts, &entry.path, class, node);
    entry.uid = owner.uid;
    entry.gid = owner.gid;
    if owner.gid.is_some()
        && owner.uid.is_none()
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
        let mut fixed = e.clone();
        fixed.uid = Some(user.uid);
        fixed.gid = Some(user.gid);
        d.events.push(
            Event::warn(
                "dev-unusable",
                format!(
                    "dev{} {}: gid={} is not a group of the service (uid {} gid {} groups {:?}), so it cannot open the node",
                    e.index,
                    e.path,
                    e.gid.unwrap_or(0),
                    user.uid,
                    user.gid,
                    user.groups,
                ),
            )
            .with_fix(format!(
                "pct set {} --dev{} {}",
                facts.vmid,
                e.index,
                fixed.render()
            )),
        );
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
        d.events.push(
            Event::warn(
                "cgroup-stale",
                format!(
                    "lxc.cgroup2.devices.allow {} {}:{} does not match {path}, which is now {} (replugged?); the tool adds '{exact}'",
                    r.kind,
                    r.major.map_or("*".into(), |m| m.to_string()),
                    r.minor.map_or("*".into(), |m| m.to_string()),
                    node.rule_id()
                ),
            )
            .with_fix("remove the old rule"),
        );
    }
    for r in person.iter().filter(|r| r.covers(node) && r.kind != 'a') {
        d.events.push(
            Event::warn(
                "cgroup-broad",
                format!(
                    "lxc.cgroup2.devices.allow {} {}:* rwm allows every device of major {} for {path}",
                    r.kind, node.major, node.major
                ),
            )
            .with_fix(format!("use the exact rule '{exact}'")),
        );
    }
    want.boot_rules.push(exact.clone());
    want.raw(
        RULE_KEY,
        exact,
        format!("allow {path} ({})", node.rule_id()),
    );
}

/// Brings the config and the state to what the step wants: owned lines no
/// longer wanted go, new ones come, and this boot's generated config gets
/// the rules and mounts it lacks.
fn apply_want(facts: &Facts, d: &mut Draft, want: Want, owned: &Owned) {
    apply_raw(d, &want, owned);
    apply_devs(d, &want, owned);
    apply_person_devs(d, &want);
    apply_this_boot(facts, d, &want);
    apply_private(facts, d, want);
}

/// Binds the private nodes in this start's generated config (never in the
/// container config: Proxmox regenerates the file at every start).
fn apply_private(facts: &Facts, d: &mut Draft, want: Want) {
    let Some(mut text) = d.lxc_text(facts).map(str::to_string) else {
        return;
    };
    for (old, new, node) in want.private {
        let lxc = LxcConfig::parse(&text);
        // A bind Proxmox copied: replaced; else (an optional policy device,
        // or a generated config without the line) appended.
        let edited = old
            .as_deref()
            .and_then(|old| lxc.with_value_replaced(MOUNT_KEY, old, &new))
            .or_else(|| lxc.with_appended(MOUNT_KEY, std::slice::from_ref(&new)));
        if let Some(t) = edited {
            text = t;
        }
        if LxcConfig::parse(&text).values(MOUNT_KEY).any(|v| v == new) {
            d.lxc_reasons
                .push(format!("this start binds {}", node.reason));
            d.nodes.push(node);
        }
    }
    if d.lxc_text(facts) != Some(text.as_str()) {
        d.lxc = Some(text);
    }
}

fn apply_raw(d: &mut Draft, want: &Want, owned: &Owned) {
    for line in &owned.raw {
        let keep = want
            .raw
            .iter()
            .any(|(k, v)| *k == line.key && *v == line.value);
        if !keep {
            if d.conf.remove_raw(&line.key, &line.value) > 0 {
                d.conf_reasons
                    .push(format!("removed the tool's line: no longer needed\n{line}"));
            }
            d.state.owned.conf_lines.retain(|l| l != line);
        }
    }
    for ((key, value), why) in want.raw.iter().zip(&want.raw_reasons) {
        let line = OwnedLine::new(*key, value.clone());
        if !d.conf.raw_values(key).any(|v| v == value) {
            d.conf.push_raw(key, value);
            d.conf_reasons.push(format!("{why}\n{line}"));
        }
        if !d.state.owned.conf_lines.contains(&line) {
            d.state.owned.conf_lines.push(line);
        }
    }
}

fn apply_devs(d: &mut Draft, want: &Want, owned: &Owned) {
    for line in &owned.devs {
        let Some(index) = line.dev_index() else {
            continue;
        };
        if want.devs.iter().any(|(i, _)| *i == index) {
            continue;
        }
        let key = format!("dev{index}");
        if d.conf.get(&key) == Some(line.value.as_str()) {
            d.conf.remove_main_where(
                |l| matches!(&l.kind, LineKind::Key { key: k, .. } if *k == key),
            );
            d.conf_reasons
                .push(format!("removed the tool's line: no longer needed\n{line}"));
        }
    }
    let mut new_owned = Vec::new();
    for (index, value) in &want.devs {
        let key = format!("dev{index}");
        if d.conf.get(&key) != Some(value.as_str()) {
            d.conf.set_key(&key, value);
            d.conf_reasons.push(format!(
                "{key}: the device as a private node\n{key}: {value}"
            ));
        }
        new_owned.push(OwnedLine::new(key, value.clone()));
    }
    d.state.owned.dev_entries = new_owned;
}

/// Options on a person's `devN`: set them, and own exactly what was added.
fn apply_person_devs(d: &mut Draft, want: &Want) {
    let mut options = Vec::new();
    for (index, value, added, why) in &want.person_devs {
        let key = format!("dev{index}");
        if d.conf.get(&key) != Some(value.as_str()) {
            d.conf.set_key(&key, value);
            d.conf_reasons.push(why.clone());
        }
        options.extend(added.iter().map(|o| OwnedLine::new(key.clone(), o.clone())));
    }
    d.state.owned.dev_options = options;
}

/// This boot: PVE wrote the generated config before the hook ran.
fn apply_this_boot(facts: &Facts, d: &mut Draft, want: &Want) {
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
    use crate::model::prestart::{decide, Decision, FileTarget, HostFile};
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
        d.change(FileTarget::PveConf)
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
            Some(&format!("[[device]]\npath = \"{BYID}\"\nrequired = true\n")),
            &[(BYID, Some(node("/dev/ttyUSB0", 188, 0, 20)))],
        );
        let d = decide(&f);
        assert_eq!(d.refusal, None);
        let conf = conf_of(&d);
        assert_eq!(conf, format!("arch: amd64\ndev0: {BYID},gid=20\n"));
        let lxc = &d.change(FileTarget::LxcConfig).unwrap().new;
        assert!(
            lxc.ends_with("lxc.cgroup.devices.allow = c 188:0 rw\n"),
            "v1 dialect, PVE's devN rule: {lxc}"
        );
        let state = State::parse(&d.change(FileTarget::State).unwrap().new).unwrap();
        assert_eq!(
            state.owned.dev_entries,
            vec![OwnedLine::new("dev0", format!("{BYID},gid=20"))]
        );
        let again = decide(&apply(&f, &d));
        assert!(again.changes.is_empty(), "{:#?}", again.changes);
    }

    #[test]
    fn removing_the_policy_device_removes_the_tools_dev_entry_only() {
        let f = facts(
            "arch: amd64\ndev3: /dev/ttyACM0,gid=20\n",
            Some(&format!("[[device]]\npath = \"{BYID}\"\nrequired = true\n")),
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
            .unwrap()
            .to_string();
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
        let p = format!("[[device]]\npath = \"{BYID}\"\nrequired = true\n");
        let f = facts(
            PRIV,
            Some(&p),
            &[(BYID, Some(node("/dev/ttyUSB0", 188, 0, 20)))],
        );
        let mut after = apply(&f, &decide(&f));
        assert!(after.conf.render().contains("dev0: "));
        // The policy then makes it optional, and the node goes.
        let p = format!("[[device]]\npath = \"{BYID}\"\n");
        after.policy = Some(Policy::parse("p.toml", &p).unwrap());
        after.devices[0].node = Ok(None);
        let d = decide(&after);
        assert_eq!(d.refusal, None);
        assert_eq!(conf_of(&d), "arch: amd64\n");
        assert!(d.nodes.is_empty());
    }

    /// An optional policy device: a private node bound in this start's LXC
    /// config only, never a `devN` line Proxmox would refuse once the
    /// device is unplugged; the tool's older `devN` for it goes.
    #[test]
    fn an_optional_policy_device_is_a_private_node_of_this_start() {
        let p = format!("[[device]]\npath = \"{BYID}\"\n");
        let stick = node("/dev/ttyUSB0", 188, 0, 20);
        let f = facts(UNPRIV, Some(&p), &[(BYID, Some(stick.clone()))]);
        let d = decide(&f);
        assert_eq!(d.refusal, None);
        assert!(!conf_of(&d).contains("dev0"), "{}", conf_of(&d));
        let lxc = &d.change(FileTarget::LxcConfig).unwrap().new;
        let name = BYID.trim_start_matches('/').replace('/', "_");
        assert!(
            lxc.contains(&format!(
                "lxc.mount.entry = /var/lib/lxc/105/pct-passthrough/{name} {} none bind,optional,create=file\n",
                BYID.trim_start_matches('/')
            )),
            "{lxc}"
        );
        assert_eq!(d.nodes.len(), 1);
        let n = &d.nodes[0];
        assert_eq!((n.major, n.minor, n.mode), (188, 0, 0o660));
        // Group dialout (20) through the container's default map.
        assert_eq!((n.host_uid, n.host_gid), (100_000, 100_020));
        // The tool's devN from an older version goes; the node replaces it.
        let mut old = f.clone();
        old.conf = PveConfig::parse(&format!("{UNPRIV}dev0: {BYID},gid=20\n"));
        let mut st = State::new(105);
        st.owned
            .dev_entries
            .push(OwnedLine::new("dev0", format!("{BYID},gid=20")));
        old.state = Some(st);
        let d = decide(&old);
        assert_eq!(conf_of(&d), UNPRIV);
        assert_eq!(d.nodes.len(), 1);
        // Unplugged: nothing for it, nothing refused.
        let gone = facts(UNPRIV, Some(&p), &[(BYID, None)]);
        let d = decide(&gone);
        assert_eq!(d.refusal, None);
        assert!(
            d.nodes.is_empty() && d.changes.is_empty(),
            "{:#?}",
            d.changes
        );
    }

    /// A bind whose node needs another owner inside: a private node takes
    /// the host node's place in this start's LXC config; the container
    /// config keeps the person's line.
    #[test]
    fn a_bind_gets_a_private_node_for_a_service_without_groups_and_for_the_containers_group() {
        let render = "/dev/dri/renderD128";
        let conf = format!(
            "{UNPRIV}lxc.mount.entry: {BYID} dev/ttyUSB0 none bind,optional,create=file\nlxc.mount.entry: {render} dev/dri/renderD128 none bind,optional,create=file\n"
        );
        let devs = [
            (BYID, Some(node("/dev/ttyUSB0", 188, 0, 20))),
            (render, Some(node(render, 226, 128, 993))),
        ];
        // Nothing known: the host nodes, their groups mapped 1:1.
        let f = facts(&conf, None, &devs);
        let d = decide(&f);
        assert!(d.nodes.is_empty(), "{:#?}", d.nodes);
        // Known: container render 107, service keeps its groups: only the
        // render node is replaced, with group 107 (host 100107).
        let mut known = f.clone();
        let mut st = State::new(105);
        st.container_groups.insert("render".into(), 107);
        st.runtime_user = Some(RuntimeUser {
            uid: 1000,
            gid: 1000,
            keeps_supplementary_groups: true,
            ..Default::default()
        });
        known.state = Some(st.clone());
        let d = decide(&known);
        assert_eq!(d.nodes.len(), 1, "{:#?}", d.nodes);
        assert_eq!(
            (d.nodes[0].host_uid, d.nodes[0].host_gid),
            (100_000, 100_107)
        );
        let lxc = &d.change(FileTarget::LxcConfig).unwrap().new;
        assert!(lxc.contains("lxc.mount.entry = /var/lib/lxc/105/pct-passthrough/dev_dri_renderD128 dev/dri/renderD128 none bind,optional,create=file\n"), "{lxc}");
        assert!(!lxc.contains(&format!("= {render} ")), "{lxc}");
        assert!(!conf_of(&d).contains("pct-passthrough/"), "{}", conf_of(&d));
        // A service without supplementary groups: both nodes are its own.
        st.runtime_user.as_mut().unwrap().keeps_supplementary_groups = false;
        known.state = Some(st);
        let d = decide(&known);
        assert_eq!(d.nodes.len(), 2);
        assert!(d
            .nodes
            .iter()
            .all(|n| (n.host_uid, n.host_gid) == (101_000, 101_000)));
        // Deciding again on its own output changes nothing more.
        let again = decide(&apply(&known, &d));
        assert!(again.change(FileTarget::LxcConfig).is_none());
        assert_eq!(again.nodes, d.nodes);
    }

    /// A numeric `lxc.init.uid`: the service is known before the first
    /// start, so the first start gives the node its owner.
    #[test]
    fn lxc_init_uid_owns_the_node_from_the_first_start() {
        let conf = format!("{UNPRIV}dev0: {BYID}\nlxc.init.uid: 1000\nlxc.init.gid: 1000\n");
        let f = facts(
            &conf,
            None,
            &[(BYID, Some(node("/dev/ttyUSB0", 188, 0, 20)))],
        );
        let c = conf_of(&decide(&f));
        assert!(
            c.contains(&format!("dev0: {BYID},gid=1000,uid=1000\n")),
            "{c}"
        );
        // With lxc.init.groups, group membership works: the group.
        let f = facts(
            &format!("{conf}lxc.init.groups: 20\n"),
            None,
            &[(BYID, Some(node("/dev/ttyUSB0", 188, 0, 20)))],
        );
        let c = conf_of(&decide(&f));
        assert!(c.contains(&format!("dev0: {BYID},gid=20\n")), "{c}");
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
        .unwrap()
        .to_string();
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
        let lxc = &d.change(FileTarget::LxcConfig).unwrap().new;
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
        let lxc = d.change(FileTarget::LxcConfig).unwrap().new.clone();
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
        let p = format!("[[device]]\npath = \"{BYID}\"\nrequired = true\n");
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
        let lxc = &d.change(FileTarget::LxcConfig).unwrap().new;
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
        .unwrap()
        .to_string();
        assert!(
            r.contains("105.toml line 2") && r.contains("use method = \"bind\""),
            "{r}"
        );
    }
}
