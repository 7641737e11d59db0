//! `doctor`'s verdicts: each check turns facts (file texts, stat results,
//! state) into ok, warn or fail with a concrete fix. Pure; `cmd::doctor`
//! gathers the facts and prints.

use std::fmt;

use crate::model::escape::escape;
use crate::model::idmap::{self, IdKind, IdmapEntry};
use crate::model::policy::Policy;
use crate::model::pveconf::PveConfig;
use crate::model::state::State;
use crate::model::subid::{is_root_owner, SubidFile, SubidRange};
use crate::model::tasklog;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub verdict: Verdict,
    /// `host`, or the container's VMID.
    pub subject: String,
    pub message: String,
    /// What to do; `None` for ok.
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(subject: &str, message: impl Into<String>) -> Check {
        Check {
            verdict: Verdict::Ok,
            subject: subject.to_string(),
            message: message.into(),
            fix: None,
        }
    }
    pub fn warn(subject: &str, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            verdict: Verdict::Warn,
            subject: subject.to_string(),
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
    pub fn fail(subject: &str, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            verdict: Verdict::Fail,
            subject: subject.to_string(),
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Shown in the task-log style (`model::tasklog`): the headline, then the
/// message's other parts and the fix indented under it; every part escaped
/// (a message may quote a container's user or group name).
impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = format!("{:<4}  {}: ", self.verdict.as_str(), self.subject);
        let mut parts: Vec<String> = self
            .message
            .split('\n')
            .map(|p| escape(p).into_owned())
            .collect();
        if let Some(fix) = &self.fix {
            parts.push(format!("fix: {}", escape(fix)));
        }
        let lines = tasklog::lines_within(&prefix, &parts.join("\n"), tasklog::WIDTH - 4);
        for (i, line) in lines.iter().enumerate() {
            if i == 0 {
                f.write_str(line)?;
            } else {
                write!(f, "\n    {line}")?;
            }
        }
        Ok(())
    }
}

/// The report and its summary line; exit code 1 if any check failed.
pub fn render(checks: &[Check]) -> (String, u8) {
    let mut out = String::new();
    for c in checks {
        out.push_str(&c.to_string());
        out.push('\n');
    }
    let count = |v| checks.iter().filter(|c| c.verdict == v).count();
    let (ok, warn, fail) = (
        count(Verdict::Ok),
        count(Verdict::Warn),
        count(Verdict::Fail),
    );
    out.push_str(&format!("{ok} ok, {warn} warn, {fail} fail\n"));
    (out, u8::from(fail > 0))
}

/// `newuidmap` and `newgidmap`: LXC needs them for every custom map.
pub fn shadow_tools(newuidmap: bool, newgidmap: bool) -> Check {
    let missing: Vec<&str> = [("newuidmap", newuidmap), ("newgidmap", newgidmap)]
        .iter()
        .filter(|(_, present)| !present)
        .map(|(n, _)| *n)
        .collect();
    if missing.is_empty() {
        Check::ok("host", "newuidmap and newgidmap are installed")
    } else {
        Check::fail(
            "host",
            format!(
                "{} not found in /usr/bin; unprivileged containers with a custom map cannot start",
                missing.join(" and ")
            ),
            "apt-get install uidmap",
        )
    }
}

/// Numbers of the lines shadow ignores: neither blank, a comment, nor a
/// range line `SubidFile` accepts.
pub fn unparsed_subid_lines(text: &str) -> Vec<usize> {
    let parsed: Vec<usize> = SubidFile::parse(text)
        .ranges()
        .iter()
        .map(|r| r.line)
        .collect();
    text.split('\n')
        .enumerate()
        .filter(|(i, l)| {
            let l = l.trim();
            // `parsed` is in line order.
            !l.is_empty() && !l.starts_with('#') && parsed.binary_search(&(i + 1)).is_err()
        })
        .map(|(i, _)| i + 1)
        .collect()
}

/// The shape of a subid file: present, a final newline, no junk lines.
/// `unparsed` lists the 1-based numbers of non-blank, non-comment lines that
/// are not `owner:start:count`.
pub fn subid_shape(path: &str, text: Option<&str>, unparsed: &[usize]) -> Vec<Check> {
    let Some(text) = text else {
        return vec![Check::fail(
            "host",
            format!("{path} does not exist; newuidmap/newgidmap refuse every map"),
            format!("echo 'root:100000:65536' > {path}"),
        )];
    };
    let mut out = Vec::new();
    if !text.is_empty() && !text.ends_with('\n') {
        out.push(Check::fail(
            "host",
            format!("{path}: the last line has no newline; shadow 4.19 and later refuse the whole file, and every unprivileged container fails to start"),
            format!("echo >> {path}"),
        ));
    }
    if !unparsed.is_empty() {
        let lines: Vec<String> = unparsed.iter().map(ToString::to_string).collect();
        out.push(Check::warn(
            "host",
            format!(
                "{path}: line {} is not owner:start:count; shadow ignores it",
                lines.join(", ")
            ),
            format!("fix or delete that line in {path}"),
        ));
    }
    if out.is_empty() {
        out.push(Check::ok(
            "host",
            format!("{path} parses and ends with a newline"),
        ));
    }
    out
}

/// A `subid:` line in nsswitch.conf makes shadow ignore the files.
pub fn nsswitch(has_subid_line: bool) -> Check {
    if has_subid_line {
        Check::warn(
            "host",
            "/etc/nsswitch.conf has a subid: line, so shadow ignores /etc/subuid and /etc/subgid and what pct-passthrough writes there",
            "remove the subid: line from /etc/nsswitch.conf, or grant root the ranges in that service",
        )
    } else {
        Check::ok(
            "host",
            "/etc/subuid and /etc/subgid are in use (no subid: line in /etc/nsswitch.conf)",
        )
    }
}

/// The map a container starts with: its `lxc.idmap` lines, PVE's default
/// for an unprivileged container without any, or none (privileged). An
/// unparsable line is an error naming it, as PVE fails the start on it.
pub fn effective_map(conf: &PveConfig) -> Result<Option<Vec<IdmapEntry>>, String> {
    let lines = conf.idmap_lines();
    if lines.is_empty() {
        return Ok(conf.unprivileged().then(idmap::pve_default));
    }
    lines
        .iter()
        .map(|l| IdmapEntry::parse(l))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Is the container's map valid, and does root's subordinate-ID coverage
/// include every host range? `hook_ours`: pct-passthrough runs for it and
/// adds missing coverage at the next start, so a gap is only a warning.
pub fn container_map(
    vmid: &str,
    conf: &PveConfig,
    subuid: &str,
    subgid: &str,
    hook_ours: bool,
) -> Vec<Check> {
    let map = match effective_map(conf) {
        Ok(Some(m)) => m,
        Ok(None) => {
            return vec![Check::ok(
                vmid,
                "privileged: no ID map (devices and groups only)",
            )]
        }
        Err(e) => {
            return vec![Check::fail(
                vmid,
                format!("lxc.idmap {e}; PVE fails the start with 'failed to parse idmap'"),
                "fix or delete that lxc.idmap line in the container config",
            )]
        }
    };
    let mut out = Vec::new();
    if let Err(problems) = idmap::validate(&map) {
        out.push(Check::fail(
            vmid,
            format!("the ID map is invalid: {}", problems.join("; ")),
            "fix those lxc.idmap lines, or delete all of them and describe the passthrough in the policy (idmap = [...]) so pct-passthrough writes the map",
        ));
    }
    let mut gaps = Vec::new();
    for kind in IdKind::ALL {
        let file = SubidFile::parse(match kind {
            IdKind::Uid => subuid,
            IdKind::Gid => subgid,
        });
        let ranges: Vec<_> = map
            .iter()
            .filter(|e| e.kind == kind)
            .map(IdmapEntry::host_range)
            .collect();
        for r in file.missing(&ranges) {
            gaps.push((kind, r));
        }
    }
    if gaps.is_empty() {
        if out.is_empty() {
            out.push(Check::ok(
                vmid,
                format!(
                    "ID map valid ({} lines) and covered by root's subordinate IDs",
                    map.len()
                ),
            ));
        }
        return out;
    }
    let what: Vec<String> = gaps
        .iter()
        .map(|(k, r)| format!("root:{}:{} in /etc/sub{}", r.start, r.len(), k.word()))
        .collect();
    let usermod: Vec<String> = gaps
        .iter()
        .map(|(k, r)| {
            let flag = if *k == IdKind::Uid {
                "--add-subuids"
            } else {
                "--add-subgids"
            };
            format!("{flag} {}-{}", r.start, r.end - 1)
        })
        .collect();
    let msg = format!("the map needs {}, which is missing", what.join(", "));
    if hook_ours {
        out.push(Check::warn(
            vmid,
            format!("{msg}; pre-start adds it at the next start"),
            format!("nothing, or now: usermod {} root", usermod.join(" ")),
        ));
    } else {
        out.push(Check::fail(
            vmid,
            format!("{msg}; the start fails with 'newgidmap: ... not allowed' (or newuidmap)"),
            format!(
                "usermod {} root, or register pct-passthrough (install.sh {vmid})",
                usermod.join(" ")
            ),
        ));
    }
    out
}

/// Index pairs `(i, j)`, `i < j`, of ranges that overlap where at least one
/// is root's, in file order. A sweep over the ranges sorted by start visits
/// only overlapping pairs: O(n log n + pairs), where trying every pair is
/// O(n²) (seconds for 10,000 lines).
fn root_overlaps(ranges: &[SubidRange]) -> Vec<(usize, usize)> {
    let mut by_start: Vec<usize> = (0..ranges.len()).collect();
    by_start.sort_by_key(|&i| (ranges[i].range.start, i));
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for (k, &i) in by_start.iter().enumerate() {
        for &j in &by_start[k + 1..] {
            if ranges[j].range.start >= ranges[i].range.end {
                break;
            }
            if is_root_owner(&ranges[i].owner) || is_root_owner(&ranges[j].owner) {
                pairs.push((i.min(j), i.max(j)));
            }
        }
    }
    pairs.sort_unstable();
    pairs
}

/// Root's ranges in one subid file: overlapping each other (duplicates that
/// hide mistakes), or shared with another owner (that user and the
/// containers then share host IDs). `used`: host ranges of the maps of the
/// containers on this node; root ranges outside all of them, other than
/// PVE's base range, are reported as possibly stale.
pub fn root_ranges(path: &str, text: &str, used: &[crate::model::idmap::IdRange]) -> Vec<Check> {
    let file = SubidFile::parse(text);
    let ranges = file.ranges();
    let mut out = Vec::new();
    for (i, j) in root_overlaps(ranges) {
        let (a, b) = (&ranges[i], &ranges[j]);
        let (ra, rb) = (is_root_owner(&a.owner), is_root_owner(&b.owner));
        if ra && rb {
            out.push(Check::warn(
                "host",
                format!(
                    "{path}: root's ranges on lines {} and {} overlap",
                    a.line, b.line
                ),
                format!(
                    "keep one of them: delete line {} of {path} if it is a duplicate",
                    b.line
                ),
            ));
        } else {
            let other = if ra { b } else { a };
            out.push(Check::warn(
                "host",
                format!(
                    "{path}: root's range on line {} overlaps '{}' on line {}: that user and the containers share host IDs",
                    if ra { a.line } else { b.line },
                    other.owner,
                    other.line
                ),
                format!("give '{}' a range of its own (usermod --del-sub{}s/--add-sub{}s)", other.owner, &path[path.len() - 3..], &path[path.len() - 3..]),
            ));
        }
    }
    let base = crate::model::idmap::IdRange::new(idmap::PVE_BASE_HOST, idmap::PVE_BASE_LEN);
    for r in ranges.iter().filter(|r| is_root_owner(&r.owner)) {
        if r.range.overlaps(&base) || used.iter().any(|u| u.overlaps(&r.range)) {
            continue;
        }
        out.push(Check::warn(
            "host",
            format!("{path} line {}: root:{}:{} is used by no container map on this node (stale?)", r.line, r.range.start, r.range.len()),
            format!("if no container on another node needs it after a migration, delete line {} of {path}", r.line),
        ));
    }
    if out.is_empty() {
        out.push(Check::ok(
            "host",
            format!("{path}: root's ranges do not overlap and are in use"),
        ));
    }
    out
}

/// What doctor knows about a container's hookscript file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookFile {
    /// The volume could not be resolved to a path.
    Unresolvable(String),
    Missing(String),
    NotExecutable(String),
    /// Executable; `same_as_this` when it is byte for byte this binary.
    Present {
        path: String,
        same_as_this: bool,
    },
}

/// Is the hookscript registered, present, executable, and this version?
/// `ours` is the file name pct-passthrough is installed under.
pub fn hookscript(
    vmid: &str,
    volume: Option<&str>,
    file: Option<&HookFile>,
    version: &str,
) -> Check {
    let register = format!("/usr/share/pct-passthrough/install/install.sh {vmid}");
    let Some(volume) = volume else {
        return Check::warn(
            vmid,
            "no hookscript is registered, so pct-passthrough does not run for this container",
            register,
        );
    };
    let ours = volume.rsplit('/').next() == Some("pct-passthrough");
    match file {
        Some(HookFile::Unresolvable(e)) => Check::fail(
            vmid,
            format!("hookscript {volume}: {e}; the start fails"),
            "fix the storage, or register the hookscript again with install.sh",
        ),
        Some(HookFile::Missing(p)) => Check::fail(
            vmid,
            format!("hookscript {volume} ({p}) does not exist on this node; the start fails"),
            format!("run install.sh on this node, or copy the binary to {p}"),
        ),
        Some(HookFile::NotExecutable(p)) => Check::fail(
            vmid,
            format!("hookscript {volume} ({p}) is not executable; the start fails"),
            format!("chmod 755 {p}"),
        ),
        Some(HookFile::Present { path, same_as_this }) => {
            if !ours && !same_as_this {
                Check::warn(
                    vmid,
                    format!("the hookscript is {volume}, not pct-passthrough"),
                    format!("{register} (keeps {volume} as chain)"),
                )
            } else if *same_as_this {
                Check::ok(
                    vmid,
                    format!("hookscript {volume} is this binary (pct-passthrough {version})"),
                )
            } else {
                Check::warn(
                    vmid,
                    format!("hookscript {volume} ({path}) differs from this binary (pct-passthrough {version})"),
                    "re-run install.sh to put this version on the snippets storage",
                )
            }
        }
        None => Check::fail(
            vmid,
            format!("hookscript {volume}: not checked"),
            "re-run doctor",
        ),
    }
}

/// The cluster as doctor sees it: the other nodes (name, online) from
/// `/etc/pve/.members`, and those `install.sh --all-nodes` put the binary on
/// (its manifest): what this node can tell about the others' files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    pub others: Vec<(String, bool)>,
    pub installed_on: Vec<String>,
}

/// A hookscript on per-node storage must be on every node that may start
/// the container; warns about the nodes not known to have it.
pub fn hookscript_on_nodes(
    vmid: &str,
    volume: &str,
    shared: bool,
    cluster: &ClusterFacts,
) -> Option<Check> {
    if cluster.others.is_empty() || shared {
        return None;
    }
    let lacking: Vec<&str> = cluster
        .others
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !cluster.installed_on.iter().any(|i| i == n))
        .collect();
    if lacking.is_empty() {
        return Some(Check::ok(
            vmid,
            format!("hookscript {volume}: install.sh --all-nodes put it on every other node"),
        ));
    }
    Some(Check::warn(
        vmid,
        format!(
            "hookscript {volume} is on per-node storage, and node{} {} {} not known to have it (install.sh --all-nodes did not put it there): a start or migration there fails",
            if lacking.len() == 1 { "" } else { "s" },
            lacking.join(", "),
            if lacking.len() == 1 { "is" } else { "are" },
        ),
        "/usr/share/pct-passthrough/install/install.sh --all-nodes, or register it from a shared storage (install.sh --storage <id>)",
    ))
}

/// Devices the container names, as `(source, path, required)`: `devN`
/// entries (a missing one fails the start), binds of `/dev` nodes in
/// `lxc.mount.entry` (required unless `optional`), and policy devices not
/// already named.
pub fn wanted_devices(conf: &PveConfig, policy: Option<&Policy>) -> Vec<(String, String, bool)> {
    let mut wanted: Vec<(String, String, bool)> = Vec::new();
    for d in conf.dev_entries() {
        wanted.push((format!("dev{}", d.index), d.path.clone(), true));
    }
    for m in conf.mount_entries() {
        if m.source.starts_with("/dev/") {
            let optional = m.options.iter().any(|o| o == "optional");
            wanted.push(("lxc.mount.entry".into(), m.source.clone(), !optional));
        }
    }
    for d in policy.map(|p| p.devices.as_slice()).unwrap_or_default() {
        let path = d.path.get_ref().clone();
        if !wanted.iter().any(|(_, p, _)| *p == path) {
            wanted.push(("policy device".into(), path, d.required));
        }
    }
    wanted
}

/// What doctor found for one device the container names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    /// As named in the config (`dev0`, `lxc.mount.entry`, policy).
    pub source: String,
    pub path: String,
    /// Where it resolved to (`/dev/ttyUSB0`), `None` if missing.
    pub node: Option<String>,
    /// Missing means the start fails (`devN`, a required policy device)
    /// rather than being skipped (an `optional` bind).
    pub required: bool,
    /// A `/dev/serial/by-id/` link that points to the same node.
    pub by_id: Option<String>,
    /// USB attributes of a serial node, from sysfs.
    pub usb: Option<UsbAttrs>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbAttrs {
    pub vendor: String,
    pub product: String,
    pub serial: Option<String>,
}

/// Kernel names that move between boots with plug order.
fn unstable_name(path: &str) -> bool {
    let Some(name) = path.strip_prefix("/dev/") else {
        return false;
    };
    ["ttyUSB", "ttyACM", "ttyAMA", "hidraw"].iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// A udev rule that gives a serial adapter a stable name. Permissions come
/// from the GID 20 passthrough, so the rule needs no chown or MODE.
pub fn udev_rule(kernel: &str, usb: Option<&UsbAttrs>) -> String {
    let name = kernel.trim_start_matches("/dev/");
    match usb {
        Some(u) => {
            let serial = u
                .serial
                .as_ref()
                .map(|s| format!(", ATTRS{{serial}}==\"{s}\""))
                .unwrap_or_default();
            format!(
                "SUBSYSTEM==\"tty\", ATTRS{{idVendor}}==\"{}\", ATTRS{{idProduct}}==\"{}\"{serial}, SYMLINK+=\"serial/{name}-stable\"",
                u.vendor, u.product
            )
        }
        None => format!(
            "SUBSYSTEM==\"tty\", ATTRS{{idVendor}}==\"<vendor>\", ATTRS{{idProduct}}==\"<product>\", ATTRS{{serial}}==\"<serial>\", SYMLINK+=\"serial/{name}-stable\" (values from: udevadm info -a -n /dev/{name})"
        ),
    }
}

/// Present, and named by a path that survives a reboot and a replug.
pub fn device(vmid: &str, d: &DeviceFacts) -> Check {
    let Some(node) = &d.node else {
        let msg = format!("{} {} does not exist", d.source, d.path);
        let fix = format!("plug the device in, or fix the path in {}", d.source);
        return if d.required {
            Check::fail(vmid, format!("{msg}; the start fails"), fix)
        } else {
            Check::warn(vmid, format!("{msg}; it is skipped at start"), fix)
        };
    };
    if unstable_name(&d.path) {
        let fix = match &d.by_id {
            Some(link) => format!("name it by its stable link: {link}"),
            None => format!(
                "no /dev/serial/by-id link points to it; add a udev rule to /etc/udev/rules.d/99-serial-stable.rules: {}, then 'udevadm control --reload && udevadm trigger' and use /dev/serial/{}-stable",
                udev_rule(&d.path, d.usb.as_ref()),
                d.path.trim_start_matches("/dev/")
            ),
        };
        return Check::warn(
            vmid,
            format!(
                "{} {}: the kernel name can change at the next boot or replug",
                d.source, d.path
            ),
            fix,
        );
    }
    if d.path != *node {
        Check::ok(vmid, format!("{} {} is present ({node})", d.source, d.path))
    } else {
        Check::ok(vmid, format!("{} {} is present", d.source, d.path))
    }
}

/// A render node's GID inside the container belongs to another group.
/// `node_gid` is the GID the node has inside (the `devN` `gid=`, or the host
/// GID for a 1:1 passthrough).
pub fn render_group(vmid: &str, path: &str, node_gid: u32, state: Option<&State>) -> Option<Check> {
    let groups = &state?.container_groups;
    if groups.is_empty() {
        return None;
    }
    let owner = groups
        .iter()
        .find(|(_, &g)| g == node_gid)
        .map(|(n, _)| n.as_str());
    let render = groups.get("render").copied();
    match (owner, render) {
        (Some(name), _) if name != "render" && name != "video" => Some(Check::warn(
            vmid,
            format!("{path} has GID {node_gid} inside the container, which is the group '{name}' there, not render"),
            match render {
                Some(r) => format!("give the node the container's render GID: set gid={r} on its devN entry"),
                None => "create a render group inside with a free GID, and set that gid= on the devN entry".to_string(),
            },
        )),
        (None, Some(r)) if r != node_gid => Some(Check::warn(
            vmid,
            format!("{path} has GID {node_gid} inside the container, but the render group there is {r}"),
            format!("set gid={r} on the devN entry of {path}"),
        )),
        _ => Some(Check::ok(vmid, format!("{path}: GID {node_gid} is the render group inside"))),
    }
}

/// Host device groups whose GID is another group inside the container, as
/// post-start recorded them (host render 104 is `_ssh` inside, for example).
pub fn group_collisions(vmid: &str, state: Option<&State>) -> Vec<Check> {
    let Some(s) = state else {
        return Vec::new();
    };
    s.group_collisions
        .iter()
        .map(|c| {
            let fix = match s.container_groups.get(&c.host_name) {
                Some(g) => format!(
                    "give the device the container's own {} GID: set gid={g} on its devN entry",
                    c.host_name
                ),
                None => format!(
                    "create a {} group inside the container with a free GID, then set that gid= on the devN entry",
                    c.host_name
                ),
            };
            Check::warn(
                vmid,
                format!(
                    "host group {} (GID {}) is the group '{}' inside the container, so a bind or 1:1 map of the node gives it to '{}'",
                    c.host_name, c.gid, c.container_name, c.container_name
                ),
                fix,
            )
        })
        .collect()
}

/// The service user detected after start, and whether it kept its groups.
pub fn runtime_user(vmid: &str, state: Option<&State>) -> Check {
    let Some(u) = state.and_then(|s| s.runtime_user.as_ref()) else {
        return Check::ok(
            vmid,
            "no runtime user detected yet; post-start detects it at the first start with the hook",
        );
    };
    let who = match &u.name {
        Some(n) => format!("{n} (uid {})", u.uid),
        None => format!("uid {}", u.uid),
    };
    if u.keeps_supplementary_groups {
        Check::ok(
            vmid,
            format!("service user {who} keeps its supplementary groups"),
        )
    } else {
        Check::warn(
            vmid,
            format!("service user {who} runs without supplementary groups (su-exec/gosu user:group, or a uid without a passwd entry), so group membership cannot give it the device"),
            "let pct-passthrough give access by owner at the next start (devN uid=/gid=, automatic), or start it with 'gosu <user>' without ':group'",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::RuntimeUser;

    proptest::proptest! {
        /// The sweep finds exactly the pairs that trying every pair finds.
        #[test]
        fn root_overlaps_is_every_pair_tried(
            lines in proptest::collection::vec((0u8..3, 0u64..60, 1u64..20), 0..40)
        ) {
            let text: String = lines
                .iter()
                .map(|(o, start, len)| format!("{}:{start}:{len}\n", ["root", "0", "alice"][*o as usize]))
                .collect();
            let file = SubidFile::parse(&text);
            let r = file.ranges();
            let mut naive = Vec::new();
            for i in 0..r.len() {
                for j in i + 1..r.len() {
                    if (is_root_owner(&r[i].owner) || is_root_owner(&r[j].owner))
                        && r[i].range.overlaps(&r[j].range)
                    {
                        naive.push((i, j));
                    }
                }
            }
            proptest::prop_assert_eq!(root_overlaps(r), naive);
        }
    }

    #[test]
    fn render_counts_and_exit_code() {
        let (out, code) = render(&[Check::ok("host", "a"), Check::fail("105", "b", "do c")]);
        assert_eq!(
            out,
            "ok    host: a\nfail  105: b\n      fix: do c\n1 ok, 0 warn, 1 fail\n"
        );
        assert_eq!(code, 1);
        assert_eq!(render(&[Check::warn("host", "w", "f")]).1, 0);
    }

    #[test]
    fn subid_shape_checks() {
        assert_eq!(
            subid_shape("/etc/subgid", None, &[])[0].verdict,
            Verdict::Fail
        );
        let c = subid_shape("/etc/subgid", Some("root:100000:65536"), &[]);
        assert_eq!(c[0].verdict, Verdict::Fail);
        assert_eq!(c[0].fix.as_deref(), Some("echo >> /etc/subgid"));
        let c = subid_shape("/etc/subuid", Some("x\nroot:1:1\n"), &[1]);
        assert_eq!(c[0].verdict, Verdict::Warn);
        assert!(c[0].message.contains("line 1 is not"));
        assert_eq!(
            subid_shape("/etc/subuid", Some(""), &[])[0].verdict,
            Verdict::Ok
        );
    }

    #[test]
    fn subid_junk_lines() {
        assert_eq!(
            unparsed_subid_lines("root:100000:65536\n# c\n\nroot:x:1\nfoo\nroot:1:2:3\nroot:5:0\n"),
            [4, 5, 6, 7]
        );
    }

    #[test]
    fn unstable_names() {
        for p in ["/dev/ttyUSB0", "/dev/ttyACM12", "/dev/hidraw3"] {
            assert!(unstable_name(p), "{p}");
        }
        for p in [
            "/dev/ttyUSB",
            "/dev/serial/by-id/usb-x",
            "/dev/ttyS0",
            "/dev/dri/renderD128",
        ] {
            assert!(!unstable_name(p), "{p}");
        }
    }

    #[test]
    fn udev_rule_from_usb_attributes() {
        let u = UsbAttrs {
            vendor: "10c4".into(),
            product: "ea60".into(),
            serial: Some("7a1f".into()),
        };
        assert_eq!(
            udev_rule("/dev/ttyUSB0", Some(&u)),
            "SUBSYSTEM==\"tty\", ATTRS{idVendor}==\"10c4\", ATTRS{idProduct}==\"ea60\", ATTRS{serial}==\"7a1f\", SYMLINK+=\"serial/ttyUSB0-stable\""
        );
        assert!(udev_rule("/dev/ttyACM0", None).contains("udevadm info -a -n /dev/ttyACM0"));
    }

    #[test]
    fn render_group_collision() {
        let mut s = State::new(120);
        assert!(render_group("120", "/dev/dri/renderD128", 104, Some(&s)).is_none());
        s.container_groups.insert("_ssh".into(), 104);
        s.container_groups.insert("render".into(), 107);
        let c = render_group("120", "/dev/dri/renderD128", 104, Some(&s)).unwrap();
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c.message.contains("the group '_ssh' there"));
        assert_eq!(
            c.fix.as_deref(),
            Some("give the node the container's render GID: set gid=107 on its devN entry")
        );
        let c = render_group("120", "/dev/dri/renderD128", 107, Some(&s)).unwrap();
        assert_eq!(c.verdict, Verdict::Ok);
    }

    #[test]
    fn container_maps() {
        let conf = |t: &str| PveConfig::parse(t);
        let full = "root:100000:65536\n";
        let c = container_map("105", &conf("unprivileged: 1\n"), full, full, true);
        assert_eq!(c[0].verdict, Verdict::Ok, "{c:?}");
        let c = container_map("105", &conf("arch: amd64\n"), "", "", false);
        assert!(c[0].message.starts_with("privileged"));
        let gid20 = "unprivileged: 1\nlxc.idmap: u 0 100000 65536\nlxc.idmap: g 0 100000 20\nlxc.idmap: g 20 20 1\nlxc.idmap: g 21 100021 65515\n";
        let c = container_map("105", &conf(gid20), full, full, false);
        assert_eq!(c[0].verdict, Verdict::Fail);
        assert!(c[0].message.contains("root:20:1 in /etc/subgid"), "{c:?}");
        assert_eq!(
            c[0].fix.as_deref(),
            Some("usermod --add-subgids 20-20 root, or register pct-passthrough (install.sh 105)")
        );
        let c = container_map(
            "105",
            &conf(gid20),
            full,
            "root:100000:65536\nroot:20:1\n",
            false,
        );
        assert_eq!(c[0].verdict, Verdict::Ok);
        assert_eq!(
            container_map("105", &conf(gid20), full, full, true)[0].verdict,
            Verdict::Warn
        );
        let c = container_map("105", &conf("unprivileged: 1\nlxc.idmap: g 0 100000 65536\nlxc.idmap: g 0 200000 1\nlxc.idmap: u 0 100000 65536\n"), full, "root:100000:200000\n", true);
        assert_eq!(c[0].verdict, Verdict::Fail);
        assert!(c[0].message.starts_with("the ID map is invalid: "), "{c:?}");
        let c = container_map(
            "105",
            &conf("unprivileged: 1\nlxc.idmap: x 1 2\n"),
            full,
            full,
            true,
        );
        assert!(c[0].message.contains("failed to parse idmap"), "{c:?}");
    }

    #[test]
    fn root_range_checks() {
        let used = [crate::model::idmap::IdRange::new(20, 1)];
        let c = root_ranges("/etc/subgid", "root:100000:65536\nroot:20:1\n", &used);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].verdict, Verdict::Ok);
        let c = root_ranges(
            "/etc/subgid",
            "root:100000:65536\n0:100000:10\nalice:165530:100\nroot:44:1\n",
            &used,
        );
        let msgs: Vec<&str> = c.iter().map(|c| c.message.as_str()).collect();
        assert_eq!(msgs, [
            "/etc/subgid: root's ranges on lines 1 and 2 overlap",
            "/etc/subgid: root's range on line 1 overlaps 'alice' on line 3: that user and the containers share host IDs",
            "/etc/subgid line 4: root:44:1 is used by no container map on this node (stale?)",
        ]);
        assert!(c[1].fix.as_deref().unwrap().contains("--del-subgids"));
    }

    #[test]
    fn recorded_collisions() {
        let mut s = State::new(120);
        assert!(group_collisions("120", Some(&s)).is_empty());
        s.group_collisions
            .push(crate::model::state::GroupCollision {
                gid: 104,
                host_name: "render".into(),
                container_name: "_ssh".into(),
            });
        s.container_groups.insert("render".into(), 107);
        let c = &group_collisions("120", Some(&s))[0];
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c
            .message
            .starts_with("host group render (GID 104) is the group '_ssh' inside"));
        assert_eq!(
            c.fix.as_deref(),
            Some("give the device the container's own render GID: set gid=107 on its devN entry")
        );
    }

    #[test]
    fn dropped_groups() {
        let mut s = State::new(105);
        assert_eq!(runtime_user("105", Some(&s)).verdict, Verdict::Ok);
        s.runtime_user = Some(RuntimeUser {
            uid: 1000,
            name: Some("node".into()),
            keeps_supplementary_groups: false,
            ..RuntimeUser::default()
        });
        let c = runtime_user("105", Some(&s));
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c
            .message
            .starts_with("service user node (uid 1000) runs without supplementary groups"));
    }

    #[test]
    fn a_hookscript_on_per_node_storage_must_be_on_every_node() {
        let mut c = ClusterFacts {
            others: vec![("pve2".into(), true), ("pve3".into(), false)],
            installed_on: vec!["pve2".into()],
        };
        let w = hookscript_on_nodes("105", "local:snippets/pct-passthrough", false, &c).unwrap();
        assert_eq!(w.verdict, Verdict::Warn, "{w:?}");
        assert!(w.message.contains("node pve3 is not known"), "{w:?}");
        assert_eq!(
            hookscript_on_nodes("105", "nfs:snippets/pct-passthrough", true, &c),
            None
        );
        c.installed_on.push("pve3".into());
        let ok = hookscript_on_nodes("105", "local:snippets/pct-passthrough", false, &c).unwrap();
        assert_eq!(ok.verdict, Verdict::Ok);
        assert_eq!(
            hookscript_on_nodes("105", "local:snippets/x", false, &ClusterFacts::default()),
            None
        );
    }
}
