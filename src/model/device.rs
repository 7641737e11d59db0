//! Devices: what a declared device path is (class, node), whether it may be
//! passed through, and the config entries that make it usable: exact cgroup
//! rules, bind mount options, `devN` owner and mode. Pure. [`declared`] is
//! the one list of a container's devices every phase and command uses.

use std::fmt;

use crate::model::policy::{DeviceMethod, DevicePolicy, Policy};
use crate::model::pveconf::PveConfig;

/// Where a device is declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSource {
    /// `devN:` in the container config.
    Dev(u32),
    /// An `lxc.mount.entry` bind of a `/dev` node; `value` as written.
    Bind { value: String, optional: bool },
    /// A policy `[[device]]` table the config does not name yet; its line.
    Policy { line: usize },
}

impl DeviceSource {
    /// How the source reads in messages: `dev0`, `lxc.mount.entry`,
    /// `policy line 3`.
    pub fn label(&self) -> String {
        match self {
            DeviceSource::Dev(i) => format!("dev{i}"),
            DeviceSource::Bind { .. } => "lxc.mount.entry".into(),
            DeviceSource::Policy { line } => format!("policy line {line}"),
        }
    }
}

/// One device a container wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub source: DeviceSource,
    /// Host path as written (a by-id link, usually).
    pub path: String,
    /// Where it shows inside the container, absolute.
    pub ct_path: String,
    pub method: DeviceMethod,
    /// A missing node fails the start: a `devN` (Proxmox refuses it), a
    /// bind without `optional` (LXC fails), a `required` policy device.
    pub required: bool,
    /// The policy lets dangerous nodes through.
    pub allow_dangerous: bool,
    /// The policy's table for this path, if any.
    pub policy: Option<DevicePolicy>,
}

/// The method a policy device uses: as written, else `bind` when it must
/// appear at another path inside, else `dev` (a private node Proxmox makes:
/// no host group to map, no subordinate IDs, works privileged or not).
pub fn policy_method(p: &DevicePolicy) -> DeviceMethod {
    match (p.method, &p.container_path) {
        (Some(m), _) => m,
        (None, Some(ct)) if ct != p.path.get_ref() => DeviceMethod::Bind,
        (None, _) => DeviceMethod::Dev,
    }
}

/// Every device the container wants, in order: the config's `devN`
/// entries, its binds of `/dev` nodes, then policy devices the config does
/// not name yet (by host path). A policy table for a path the config names
/// still lends it `required` and `allow_dangerous`.
pub fn declared(conf: &PveConfig, policy: Option<&Policy>) -> Vec<Declared> {
    let tables = policy.map(|p| p.devices.as_slice()).unwrap_or_default();
    let table_for = |path: &str| tables.iter().find(|t| t.path.get_ref() == path);
    let mut out: Vec<Declared> = Vec::new();
    let push = |out: &mut Vec<Declared>, d: Declared| {
        if !out
            .iter()
            .any(|o| o.ct_path == d.ct_path && o.path == d.path)
        {
            out.push(d);
        }
    };
    for e in conf.dev_entries() {
        let t = table_for(&e.path);
        push(
            &mut out,
            Declared {
                source: DeviceSource::Dev(e.index),
                ct_path: e.path.clone(),
                method: DeviceMethod::Dev,
                required: true,
                allow_dangerous: t.is_some_and(|t| t.allow_dangerous),
                policy: t.cloned(),
                path: e.path,
            },
        );
    }
    for m in conf.mount_entries() {
        if !(m.is_bind() && m.source.starts_with("/dev/")) {
            continue;
        }
        let t = table_for(&m.source);
        let optional = m.options.iter().any(|o| o == "optional");
        push(
            &mut out,
            Declared {
                ct_path: format!("/{}", m.target.trim_start_matches('/')),
                method: DeviceMethod::Bind,
                required: !optional || t.is_some_and(|t| t.required),
                allow_dangerous: t.is_some_and(|t| t.allow_dangerous),
                policy: t.cloned(),
                path: m.source,
                source: DeviceSource::Bind {
                    value: m.value,
                    optional,
                },
            },
        );
    }
    for t in tables {
        let path = t.path.get_ref();
        if out.iter().any(|o| o.path == *path) {
            continue;
        }
        push(
            &mut out,
            Declared {
                source: DeviceSource::Policy {
                    line: policy.map_or(0, |p| p.line_of(t.path.span().start)),
                },
                path: path.clone(),
                ct_path: t.container_path.clone().unwrap_or_else(|| path.clone()),
                method: policy_method(t),
                required: t.required,
                allow_dangerous: t.allow_dangerous,
                policy: Some(t.clone()),
            },
        );
    }
    out
}

/// Every host path [`declared`] names, once each, in order: what pre-start
/// stats before planning.
pub fn declared_paths(devices: &[Declared]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in devices {
        if !out.contains(&d.path) {
            out.push(d.path.clone());
        }
    }
    out
}

/// Host group of serial adapters (`root:dialout 0660`).
pub const DIALOUT_GID: u32 = 20;

/// What kind of device a node is, for defaults and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceClass {
    /// USB serial adapters: Zigbee, Z-Wave, Modbus sticks.
    Serial,
    /// `/dev/dri/renderD*`: GPU compute and video decode.
    Render,
    /// `/dev/dri/card*`: display and legacy GPU access.
    Card,
    /// `/dev/kfd`: AMD ROCm compute.
    Kfd,
    Other,
}

impl DeviceClass {
    pub fn word(self) -> &'static str {
        match self {
            DeviceClass::Serial => "serial",
            DeviceClass::Render => "render node",
            DeviceClass::Card => "GPU card",
            DeviceClass::Kfd => "kfd",
            DeviceClass::Other => "device",
        }
    }

    /// The container group that should own the node, by name, when the
    /// container has one (post-start records their GIDs).
    pub fn container_group(self) -> Option<&'static str> {
        match self {
            DeviceClass::Serial => Some("dialout"),
            DeviceClass::Render | DeviceClass::Kfd => Some("render"),
            DeviceClass::Card => Some("video"),
            DeviceClass::Other => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Char,
    Block,
    /// A regular file, directory, FIFO or socket: not a device.
    NotDevice,
}

/// A host device node as stat showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The node's path after following links, as seen from the root.
    pub resolved: String,
    pub kind: NodeKind,
    pub major: u32,
    pub minor: u32,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (`0o660`).
    pub mode: u32,
}

impl Node {
    /// `c 188:0`.
    pub fn rule_id(&self) -> String {
        let t = if self.kind == NodeKind::Block {
            'b'
        } else {
            'c'
        };
        format!("{t} {}:{}", self.major, self.minor)
    }

    /// The exact cgroup rule for this node.
    pub fn cgroup_rule(&self) -> String {
        format!("{} rwm", self.rule_id())
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, {}:{} mode {:o})",
            self.resolved,
            self.rule_id(),
            self.uid,
            self.gid,
            self.mode
        )
    }
}

/// Classifies by path (the declared one or the resolved one) and node.
pub fn classify(declared: &str, node: Option<&Node>) -> DeviceClass {
    let names = std::iter::once(declared).chain(node.map(|n| n.resolved.as_str()));
    for p in names {
        if p.starts_with("/dev/serial/")
            || p.starts_with("/dev/ttyUSB")
            || p.starts_with("/dev/ttyACM")
        {
            return DeviceClass::Serial;
        }
        if p.starts_with("/dev/dri/renderD") {
            return DeviceClass::Render;
        }
        if p.starts_with("/dev/dri/card") {
            return DeviceClass::Card;
        }
        if p == "/dev/kfd" {
            return DeviceClass::Kfd;
        }
    }
    match node {
        // USB serial (ttyUSB 188, ttyACM 166), or any tty owned by dialout.
        Some(n)
            if n.kind == NodeKind::Char
                && (n.major == 188 || n.major == 166 || n.gid == DIALOUT_GID) =>
        {
            DeviceClass::Serial
        }
        Some(n) if n.kind == NodeKind::Char && n.major == 226 && n.minor >= 128 => {
            DeviceClass::Render
        }
        Some(n) if n.kind == NodeKind::Char && n.major == 226 => DeviceClass::Card,
        _ => DeviceClass::Other,
    }
}

/// Nodes that give the container the host's memory or I/O ports.
const DANGEROUS: &[&str] = &["/dev/mem", "/dev/kmem", "/dev/port"];

/// Checks a declared path and its node: a path under `/dev` without `..`,
/// resolving to a char device under `/dev`; `/dev/mem`, `/dev/kmem`,
/// `/dev/port` and block devices only with `allow_dangerous`.
pub fn check(declared: &str, node: &Node, allow_dangerous: bool) -> Result<(), String> {
    check_path(declared)?;
    check_path(&node.resolved)
        .map_err(|e| format!("{declared} resolves to {}: {e}", node.resolved))?;
    match node.kind {
        NodeKind::Char => {}
        NodeKind::Block if allow_dangerous => {}
        NodeKind::Block => {
            return Err(format!(
                "{declared} is a block device ({}); passing a disk into a container bypasses its storage, so it is refused unless the policy sets allow_dangerous = true for it",
                node.resolved
            ))
        }
        NodeKind::NotDevice => {
            return Err(format!(
                "{declared} resolves to {}, which is not a device node",
                node.resolved
            ))
        }
    }
    if DANGEROUS.contains(&node.resolved.as_str()) && !allow_dangerous {
        return Err(format!(
            "{declared} is {}, which gives the container the host's memory or I/O ports; refused unless the policy sets allow_dangerous = true for it",
            node.resolved
        ));
    }
    Ok(())
}

/// A device path must be absolute, under `/dev/`, with no `.` or `..` parts,
/// and no whitespace or control characters (Proxmox's property strings and
/// LXC's fstab-style mount entries cannot carry them).
pub fn check_path(path: &str) -> Result<(), String> {
    if let Some(c) = path
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == ',')
    {
        return Err(format!(
            "{path:?} contains {c:?}; a device path cannot hold whitespace, commas or control characters"
        ));
    }
    let Some(rest) = path.strip_prefix("/dev/") else {
        return Err(format!("{path} is not under /dev/"));
    };
    if rest
        .split('/')
        .any(|c| c == ".." || c == "." || c.is_empty())
    {
        return Err(format!(
            "{path} has '.', '..' or empty parts; name the device by its plain path"
        ));
    }
    Ok(())
}

/// Where a bound device shows inside: an absolute path below `/`, no `.`,
/// `..` or empty parts, nothing LXC's mount entry cannot express.
pub fn check_container_path(path: &str) -> Result<(), String> {
    if let Some(c) = path.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{path:?} contains {c:?}, which an lxc.mount.entry cannot express"
        ));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("{path:?} is not an absolute path"));
    };
    if rest.is_empty()
        || rest
            .split('/')
            .any(|c| c == ".." || c == "." || c.is_empty())
    {
        return Err(format!(
            "{path:?} is the root or has '.', '..' or empty parts; name the node's path inside, like /dev/ttyUSB0"
        ));
    }
    Ok(())
}

/// A `lxc.cgroup2.devices.allow` value, parsed: `c 188:* rwm`, `a`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRule {
    pub kind: char,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: String,
}

impl CgroupRule {
    pub fn parse(value: &str) -> Option<CgroupRule> {
        let mut f = value.split_whitespace();
        let kind = f.next()?;
        if kind == "a" {
            return Some(CgroupRule {
                kind: 'a',
                major: None,
                minor: None,
                access: "rwm".into(),
            });
        }
        let kind = match kind {
            "c" => 'c',
            "b" => 'b',
            _ => return None,
        };
        let (ma, mi) = f.next()?.split_once(':')?;
        let num = |s: &str| {
            if s == "*" {
                Ok(None)
            } else {
                s.parse().map(Some)
            }
        };
        Some(CgroupRule {
            kind,
            major: num(ma).ok()?,
            minor: num(mi).ok()?,
            access: f.next().unwrap_or("rwm").to_string(),
        })
    }

    /// Grants read and write on `node`.
    pub fn covers(&self, node: &Node) -> bool {
        let kind_ok = match self.kind {
            'a' => return true,
            'c' => node.kind == NodeKind::Char,
            'b' => node.kind == NodeKind::Block,
            _ => false,
        };
        kind_ok
            && self.major.is_none_or(|m| m == node.major)
            && self.minor.is_none_or(|m| m == node.minor)
            && self.access.contains('r')
            && self.access.contains('w')
    }

    /// Exact: names this major and minor.
    pub fn is_exact_for(&self, node: &Node) -> bool {
        self.covers(node) && self.major.is_some() && self.minor.is_some()
    }

    /// A rule for one device of the same class but another minor: the node
    /// was replugged or renumbered since the person wrote it.
    pub fn is_stale_for(&self, node: &Node) -> bool {
        self.kind != 'a'
            && self.major == Some(node.major)
            && self.minor.is_some_and(|m| m != node.minor)
    }
}

/// The options a bind of a device node needs: `bind` to bind, `optional` so
/// an unplugged stick does not fail the start, `create=file` so LXC makes
/// the mount point.
pub const BIND_OPTIONS: [&str; 3] = ["bind", "optional", "create=file"];

/// The options of `options` that a device bind lacks.
pub fn missing_bind_options(options: &[String]) -> Vec<&'static str> {
    BIND_OPTIONS
        .iter()
        .copied()
        .filter(|want| {
            !options
                .iter()
                .any(|o| o == want || (*want == "bind" && o == "rbind"))
        })
        .collect()
}

/// The container-side GID a device node should get: dialout (20) for
/// serial, the container's own render or video group once post-start
/// recorded it. `lookup` gives a container group's GID by name.
pub fn container_gid(class: DeviceClass, lookup: impl Fn(&str) -> Option<u32>) -> Option<u32> {
    match class {
        DeviceClass::Serial => Some(lookup("dialout").unwrap_or(DIALOUT_GID)),
        other => other.container_group().and_then(lookup),
    }
}

/// Whether a `devN` mode (octal text) gives its group read and write.
pub fn mode_gives_group_rw(mode: &str) -> bool {
    u32::from_str_radix(mode.trim_start_matches("0o"), 8).is_ok_and(|m| m & 0o060 == 0o060)
}

/// The next free `devN` index (PVE allows 0 to 255).
pub fn free_dev_index(used: impl IntoIterator<Item = u32>) -> Option<u32> {
    let used: Vec<u32> = used.into_iter().collect();
    (0..=255).find(|i| !used.contains(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn node(resolved: &str, kind: NodeKind, major: u32, minor: u32, gid: u32) -> Node {
        Node {
            resolved: resolved.into(),
            kind,
            major,
            minor,
            uid: 0,
            gid,
            mode: 0o660,
        }
    }

    #[rstest]
    #[case("/dev/serial/by-id/usb-ITead-if00-port0", None, DeviceClass::Serial)]
    #[case("/dev/ttyUSB0", None, DeviceClass::Serial)]
    #[case("/dev/ttyACM1", None, DeviceClass::Serial)]
    #[case("/dev/dri/renderD128", None, DeviceClass::Render)]
    #[case("/dev/dri/card0", None, DeviceClass::Card)]
    #[case("/dev/kfd", None, DeviceClass::Kfd)]
    #[case("/dev/null", None, DeviceClass::Other)]
    #[case(
        "/dev/zigbee",
        Some(node("/dev/ttyUSB3", NodeKind::Char, 188, 3, 20)),
        DeviceClass::Serial
    )]
    #[case(
        "/dev/pts/4",
        Some(node("/dev/pts/4", NodeKind::Char, 136, 4, 20)),
        DeviceClass::Serial
    )]
    #[case(
        "/dev/gpu",
        Some(node("/dev/gpu", NodeKind::Char, 226, 128, 104)),
        DeviceClass::Render
    )]
    #[case(
        "/dev/x",
        Some(node("/dev/x", NodeKind::Char, 1, 3, 0)),
        DeviceClass::Other
    )]
    fn classification(#[case] path: &str, #[case] n: Option<Node>, #[case] want: DeviceClass) {
        assert_eq!(classify(path, n.as_ref()), want);
    }

    #[rstest]
    #[case(
        "/dev/ttyUSB0",
        node("/dev/ttyUSB0", NodeKind::Char, 188, 0, 20),
        false,
        None
    )]
    #[case(
        "/dev/serial/../mem",
        node("/dev/mem", NodeKind::Char, 1, 1, 15),
        true,
        Some("'..'")
    )]
    #[case(
        "/etc/passwd",
        node("/etc/passwd", NodeKind::NotDevice, 0, 0, 0),
        false,
        Some("not under /dev/")
    )]
    #[case(
        "/dev/evil",
        node("/etc/shadow", NodeKind::NotDevice, 0, 0, 0),
        false,
        Some("resolves to /etc/shadow: /etc/shadow is not under /dev/")
    )]
    #[case(
        "/dev/sda",
        node("/dev/sda", NodeKind::Block, 8, 0, 6),
        false,
        Some("block device")
    )]
    #[case("/dev/sda", node("/dev/sda", NodeKind::Block, 8, 0, 6), true, None)]
    #[case(
        "/dev/mem",
        node("/dev/mem", NodeKind::Char, 1, 1, 15),
        false,
        Some("host's memory")
    )]
    #[case("/dev/port", node("/dev/port", NodeKind::Char, 1, 4, 15), true, None)]
    #[case(
        "/dev/shm/x",
        node("/dev/shm/x", NodeKind::NotDevice, 0, 0, 0),
        false,
        Some("not a device node")
    )]
    #[case(
        "/dev//ttyUSB0",
        node("/dev/ttyUSB0", NodeKind::Char, 188, 0, 20),
        false,
        Some("empty parts")
    )]
    fn validation(
        #[case] path: &str,
        #[case] n: Node,
        #[case] dangerous: bool,
        #[case] err: Option<&str>,
    ) {
        match (check(path, &n, dangerous), err) {
            (Ok(()), None) => {}
            (Err(e), Some(want)) => assert!(e.contains(want), "{e}"),
            (got, want) => panic!("{path}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn cgroup_rules() {
        let n = node("/dev/ttyUSB0", NodeKind::Char, 188, 0, 20);
        let exact = CgroupRule::parse("c 188:0 rwm").unwrap();
        assert!(exact.covers(&n) && exact.is_exact_for(&n));
        let broad = CgroupRule::parse("c 188:* rwm").unwrap();
        assert!(broad.covers(&n) && !broad.is_exact_for(&n));
        let stale = CgroupRule::parse("c 188:1 rwm").unwrap();
        assert!(!stale.covers(&n) && stale.is_stale_for(&n));
        assert!(!CgroupRule::parse("c 188:0 r").unwrap().covers(&n));
        assert!(CgroupRule::parse("a").unwrap().covers(&n));
        assert!(!CgroupRule::parse("b 188:0 rwm").unwrap().covers(&n));
        assert_eq!(CgroupRule::parse("x 1:2"), None);
        assert_eq!(CgroupRule::parse("c 1"), None);
        assert_eq!(n.cgroup_rule(), "c 188:0 rwm");
    }

    #[test]
    fn bind_options_and_modes() {
        let opts = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
        assert!(missing_bind_options(&opts("bind,optional,create=file")).is_empty());
        assert_eq!(
            missing_bind_options(&opts("rbind,create=file")),
            vec!["optional"]
        );
        assert_eq!(
            missing_bind_options(&opts("bind")),
            vec!["optional", "create=file"]
        );
        assert!(mode_gives_group_rw("0660"));
        assert!(mode_gives_group_rw("0666"));
        assert!(!mode_gives_group_rw("0600"));
        assert!(!mode_gives_group_rw("garbage"));
        assert_eq!(free_dev_index([0, 1, 3]), Some(2));
        assert_eq!(free_dev_index(0..=255), None);
    }

    #[test]
    fn container_groups() {
        let none = |_: &str| None;
        let rec = |n: &str| (n == "render").then_some(993);
        assert_eq!(container_gid(DeviceClass::Serial, none), Some(20));
        assert_eq!(container_gid(DeviceClass::Render, none), None);
        assert_eq!(container_gid(DeviceClass::Render, rec), Some(993));
        assert_eq!(container_gid(DeviceClass::Kfd, rec), Some(993));
        assert_eq!(container_gid(DeviceClass::Other, rec), None);
    }
}
