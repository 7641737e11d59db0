//! State of earlier runs, versioned JSON. It records what the tool applied,
//! so a later run can undo exactly that, and what post-start learned about
//! the running container. Two files hold it: what must follow the container
//! across a cluster ([`CLUSTER_KEYS`]: owned lines, runtime user, fallbacks)
//! in `/etc/pve/pct-passthrough/<vmid>.state.json`, the rest in the
//! node-local `/var/lib/pct-passthrough/<vmid>.json`; [`State::join`] makes
//! one value of them. Version 1 (one node-local file with everything) is
//! read and migrated. An unknown version or corrupt file is reported and
//! treated as no state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `Display` as the word the JSON uses (`as_str`), for the enums below.
macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

display_as_str!(HotplugAction, Verdict, PhaseName, Outcome);

pub const STATE_VERSION: u32 = 2;

/// Version 1: everything in the node-local file (release 0.1).
pub const LEGACY_VERSION: u32 = 1;

/// The one list of the fields that follow the container across nodes (the
/// cluster file), handed to `$then!` as identifiers; every other field is
/// node-local. The container's files move with it: `files_idmap` (the map
/// they are owned under) and `shift` (changes not yet applied to them).
macro_rules! cluster_fields {
    ($then:ident) => {
        $then!(
            owned,
            runtime_user,
            container_groups,
            dev_fallback,
            first_boot_groups,
            files_idmap,
            shift
        )
    };
}

macro_rules! field_names {
    ($($field:ident),*) => { &[$(stringify!($field)),*] };
}

/// The JSON keys of the cluster file's fields.
pub const CLUSTER_KEYS: &[&str] = cluster_fields!(field_names);

/// Written by [`StateFile`] (every field, by name), read by the derive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct State {
    pub version: u32,
    pub vmid: u32,
    /// Lines and entries the tool put into the container config.
    #[serde(default)]
    pub owned: Owned,
    /// The service user post-start detected, as IDs inside the container.
    #[serde(default)]
    pub runtime_user: Option<RuntimeUser>,
    /// GIDs of device groups inside the container, by name (`render`, `video`,
    /// `dialout`), as post-start found them.
    #[serde(default)]
    pub container_groups: BTreeMap<String, u32>,
    /// What post-start changed inside the container, in words.
    #[serde(default)]
    pub changes: Vec<String>,
    /// Verdict per device: can the service open it?
    #[serde(default)]
    pub devices: Vec<DeviceVerdict>,
    /// The last phase that ran and how it ended.
    #[serde(default)]
    pub last_run: Option<LastRun>,
    /// Host device-group GIDs that carry another name inside the container
    /// (host render 104 is `_ssh` inside, for example).
    #[serde(default)]
    pub group_collisions: Vec<GroupCollision>,
    /// Devices the service cannot reach through group membership: the next
    /// pre-start gives them the service's uid/gid through `devN`.
    #[serde(default)]
    pub dev_fallback: Vec<DevFallback>,
    /// Set (and kept) once post-start had to add a group or a membership
    /// after the service had started: from then on pre-start has LXC apply
    /// the Group rules before init (`model::firstboot`).
    #[serde(default)]
    pub first_boot_groups: bool,
    /// The ID map the container's files are owned under (`lxc.idmap`
    /// values): the map it last ran with, once that start's shift is done.
    #[serde(default)]
    pub files_idmap: Option<Vec<String>>,
    /// The shift journal: map changes not yet applied to the container's
    /// files, in order (pre-start records them before the config changes;
    /// the shift hook removes each once done), and the inode in flight.
    #[serde(default)]
    pub shift: ShiftJournal,
    /// What the last shift re-owned; post-start puts it in the task log.
    #[serde(default)]
    pub last_shift: Option<ShiftRecord>,
    /// The last hotplug event per device (`udev add|remove`), newest
    /// handling only: one entry per host path and container path.
    #[serde(default)]
    pub hotplug: Vec<HotplugRecord>,
}

/// Pending map changes of the container's files (see `model::shift`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShiftJournal {
    #[serde(default)]
    pub steps: Vec<crate::model::shift::ShiftStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inflight: Option<crate::model::shift::Inflight>,
}

impl ShiftJournal {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.inflight.is_none()
    }
}

/// One finished shift, as the task log reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShiftRecord {
    /// Seconds since the epoch.
    pub at: u64,
    pub summary: String,
    /// Set once post-start printed it.
    #[serde(default)]
    pub reported: bool,
}

/// What the last udev event did for one device of the running container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotplugRecord {
    /// The device path as declared (host side, a by-id link usually).
    pub path: String,
    pub container_path: String,
    pub action: HotplugAction,
    /// The kernel's node the event named (`/dev/ttyUSB1`).
    pub node: String,
    /// `c 188:1`: the numbers put in place or taken away.
    #[serde(default)]
    pub rule_id: Option<String>,
    pub outcome: Outcome,
    #[serde(default)]
    pub detail: String,
    /// Seconds since the epoch.
    pub at: u64,
}

/// A udev event's action, as far as hotplug acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HotplugAction {
    Add,
    Remove,
}

impl HotplugAction {
    pub fn parse(s: &str) -> Option<HotplugAction> {
        match s {
            "add" => Some(HotplugAction::Add),
            "remove" => Some(HotplugAction::Remove),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HotplugAction::Add => "add",
            HotplugAction::Remove => "remove",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCollision {
    pub gid: u32,
    pub host_name: String,
    pub container_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevFallback {
    /// The device path as the container config names it (host side).
    pub path: String,
    /// Container IDs of the service.
    pub uid: u32,
    pub gid: u32,
    pub reason: String,
}

/// What the tool owns in the container config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    /// Raw lines, `lxc.idmap: g 20 20 1` in the JSON.
    #[serde(default)]
    pub conf_lines: Vec<OwnedLine>,
    /// `devN` entries the tool wrote, `dev0: /dev/...,gid=20` in the JSON.
    #[serde(default)]
    pub dev_entries: Vec<OwnedLine>,
    /// Options the tool added to a person's `devN`, one each:
    /// `dev0: gid=20` in the JSON. The rest of that line is the person's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dev_options: Vec<OwnedLine>,
    /// A person's copy of Proxmox's default map the tool took out while its
    /// own map is needed, as written: put back when the need goes away.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adopted: Vec<OwnedLine>,
    /// `idmap=` options the tool put on a person's `mpN` line, one each:
    /// `mp0: idmap=u:1000:1000:1` in the JSON.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mp_options: Vec<OwnedLine>,
}

impl Owned {
    pub fn is_empty(&self) -> bool {
        self.conf_lines.is_empty()
            && self.dev_entries.is_empty()
            && self.dev_options.is_empty()
            && self.adopted.is_empty()
            && self.mp_options.is_empty()
    }

    /// The owned raw lines with this key.
    pub fn lines_of<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a OwnedLine> + 'a {
        self.conf_lines.iter().filter(move |l| l.key == key)
    }
}

/// One config line the tool owns: its key and value as written. Stored as
/// the string `key: value` in the JSON, as version 1 always did.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OwnedLine {
    pub key: String,
    pub value: String,
}

impl OwnedLine {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> OwnedLine {
        OwnedLine {
            key: key.into(),
            value: value.into(),
        }
    }

    /// The `devN` index of an owned device entry.
    pub fn dev_index(&self) -> Option<u32> {
        let n = self.key.strip_prefix("dev")?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n.parse().ok()
    }
}

impl std::fmt::Display for OwnedLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.value)
    }
}

impl TryFrom<String> for OwnedLine {
    type Error = String;
    fn try_from(s: String) -> Result<OwnedLine, String> {
        let (key, value) = s
            .split_once(':')
            .ok_or_else(|| format!("owned line '{s}' is not 'key: value'"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("owned line '{s}' has no key"));
        }
        Ok(OwnedLine::new(key, value.trim()))
    }
}

impl From<OwnedLine> for String {
    fn from(l: OwnedLine) -> String {
        l.to_string()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// From the container's `/etc/passwd`; `None` when the UID has no entry.
    pub name: Option<String>,
    /// The process it was found on (container PID namespace, if known).
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub comm: Option<String>,
    /// False when the entrypoint dropped supplementary groups (su-exec
    /// user:group, gosu user:group, numeric uid without passwd entry).
    #[serde(default)]
    pub keeps_supplementary_groups: bool,
    /// Seconds since the epoch.
    #[serde(default)]
    pub detected_at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceVerdict {
    pub path: String,
    #[serde(default)]
    pub container_path: Option<String>,
    pub verdict: Verdict,
    #[serde(default)]
    pub detail: String,
    /// The node as post-start saw it inside: owner, group, permission bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inside: Option<InsideStat>,
}

/// A node's owner, group and permission bits inside the container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsideStat {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// Can the service open a device?
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Ok,
    /// In the node's group now; the running service got it too late.
    NeedsRestart,
    NoAccess,
    Missing,
    /// Not judged yet.
    #[default]
    Unknown,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::NeedsRestart => "needs-restart",
            Verdict::NoAccess => "no-access",
            Verdict::Missing => "missing",
            Verdict::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    pub phase: PhaseName,
    pub outcome: Outcome,
    #[serde(default)]
    pub message: String,
    /// Seconds since the epoch.
    pub at: u64,
}

/// The phase a `last_run` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseName {
    PreStart,
    PostStart,
    PreStop,
    PostStop,
}

impl PhaseName {
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseName::PreStart => "pre-start",
            PhaseName::PostStart => "post-start",
            PhaseName::PreStop => "pre-stop",
            PhaseName::PostStop => "post-stop",
        }
    }
}

/// How a phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Changed,
    Refused,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Changed => "changed",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// Why a state file was ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateProblem {
    UnknownVersion(u64),
    Corrupt(String),
}

impl std::fmt::Display for StateProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateProblem::UnknownVersion(v) => write!(
                f,
                "state version {v} is not known to this version of pct-passthrough (expects {STATE_VERSION}); ignored"
            ),
            StateProblem::Corrupt(e) => write!(f, "corrupt state ({e}); ignored"),
        }
    }
}

/// Which fields a rendering holds: one of the two files, or all of them
/// (`plan`, tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Whole,
    Cluster,
    Node,
}

impl Part {
    fn holds(self, key: &str) -> bool {
        match self {
            Part::Whole => true,
            Part::Cluster => CLUSTER_KEYS.contains(&key),
            Part::Node => !CLUSTER_KEYS.contains(&key),
        }
    }
}

/// One state file as JSON, serialized straight from the state: the keys
/// of `part` in alphabetical order, `version` and `vmid` in both files, an
/// empty shift journal, hotplug list, `files_idmap` or `last_shift` left
/// out.
struct StateFile<'a>(&'a State, Part);

impl Serialize for StateFile<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // Every field by name: a new one does not build until it is here.
        let State {
            version: _,
            vmid,
            owned,
            runtime_user,
            container_groups,
            changes,
            devices,
            last_run,
            group_collisions,
            dev_fallback,
            first_boot_groups,
            files_idmap,
            shift,
            last_shift,
            hotplug,
        } = self.0;
        let part = self.1;
        let mut map = ser.serialize_map(None)?;
        macro_rules! entries {
            ($($key:ident $(unless $empty:expr)?),* $(,)?) => {$(
                if part.holds(stringify!($key)) $(&& !$empty)? {
                    map.serialize_entry(stringify!($key), $key)?;
                }
            )*};
        }
        entries!(
            changes,
            container_groups,
            dev_fallback,
            devices,
            files_idmap unless files_idmap.is_none(),
            first_boot_groups,
            group_collisions,
            hotplug unless hotplug.is_empty(),
            last_run,
            last_shift unless last_shift.is_none(),
            owned,
            runtime_user,
            shift unless shift.is_empty(),
        );
        map.serialize_entry("version", &STATE_VERSION)?;
        map.serialize_entry("vmid", vmid)?;
        map.end()
    }
}

impl State {
    /// The uid/gid post-start found the service needs on the node at `path`
    /// (host path as the config names it), for the devices step.
    pub fn dev_fallback_for(&self, path: &str) -> Option<&DevFallback> {
        self.dev_fallback.iter().find(|f| f.path == path)
    }

    /// The last hotplug record for a device.
    pub fn hotplug_for(&self, path: &str, container_path: &str) -> Option<&HotplugRecord> {
        self.hotplug
            .iter()
            .find(|r| r.path == path && r.container_path == container_path)
    }

    /// Keeps `rec` as the last hotplug record of its device.
    pub fn record_hotplug(&mut self, rec: HotplugRecord) {
        self.hotplug
            .retain(|r| !(r.path == rec.path && r.container_path == rec.container_path));
        self.hotplug.push(rec);
    }

    pub fn new(vmid: u32) -> State {
        State {
            version: STATE_VERSION,
            vmid,
            ..State::default()
        }
    }

    /// Parses state text (either file, or version 1's single file). A
    /// problem means "treat as no state".
    pub fn parse(text: &str) -> Result<State, StateProblem> {
        /// The version alone first: a state of another version may not
        /// have this version's fields.
        #[derive(Deserialize)]
        struct Versioned {
            version: Option<serde_json::Value>,
        }
        let head: Versioned =
            serde_json::from_str(text).map_err(|e| StateProblem::Corrupt(e.to_string()))?;
        match head.version.as_ref().and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(STATE_VERSION) || v == u64::from(LEGACY_VERSION) => {}
            Some(v) => return Err(StateProblem::UnknownVersion(v)),
            None => return Err(StateProblem::Corrupt("no version field".into())),
        }
        serde_json::from_str(text).map_err(|e| StateProblem::Corrupt(e.to_string()))
    }

    /// The whole state as one JSON text (plan diffs, tests).
    pub fn render(&self) -> String {
        self.render_part(Part::Whole)
    }

    /// The cluster file's text: the fields that follow the container.
    pub fn render_cluster(&self) -> String {
        self.render_part(Part::Cluster)
    }

    /// The node-local file's text: every field that does not follow.
    pub fn render_node(&self) -> String {
        self.render_part(Part::Node)
    }

    /// Pretty JSON, one final newline.
    fn render_part(&self, part: Part) -> String {
        let mut s =
            serde_json::to_string_pretty(&StateFile(self, part)).unwrap_or_else(|_| "{}".into());
        s.push('\n');
        s
    }

    /// True when the fields that follow the container hold anything.
    pub fn has_cluster_part(&self) -> bool {
        // Against a new state's fields, unrendered.
        let new = State::new(self.vmid);
        macro_rules! any_differs {
            ($($field:ident),*) => { false $(|| self.$field != new.$field)* };
        }
        cluster_fields!(any_differs)
    }

    /// One state from the two files: the fields that follow the container
    /// from the cluster file when there is one, else from the node file
    /// (version 1 kept them there: migration); the rest from the node file.
    pub fn join(vmid: u32, cluster: Option<State>, node: Option<State>) -> State {
        let mut s = node.unwrap_or_else(|| State::new(vmid));
        if let Some(c) = cluster {
            macro_rules! take {
                ($($field:ident),*) => { $(s.$field = c.$field;)* };
            }
            cluster_fields!(take);
        }
        s.version = STATE_VERSION;
        s.vmid = vmid;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut s = State::new(105);
        s.owned
            .conf_lines
            .push(OwnedLine::new("lxc.idmap", "g 20 20 1"));
        s.runtime_user = Some(RuntimeUser {
            uid: 1000,
            gid: 1000,
            groups: vec![20],
            name: Some("node".into()),
            ..RuntimeUser::default()
        });
        assert_eq!(State::parse(&s.render()).unwrap(), s);
    }

    /// One edit per field (nested lists counted one each), each giving a
    /// field a value a new state does not have.
    fn one_field_edits() -> Vec<fn(&mut State)> {
        vec![
            |s| {
                s.owned
                    .conf_lines
                    .push(OwnedLine::new("lxc.idmap", "g 20 20 1"))
            },
            |s| {
                s.owned
                    .dev_entries
                    .push(OwnedLine::new("dev0", "/dev/ttyUSB0"))
            },
            |s| s.owned.dev_options.push(OwnedLine::new("dev0", "gid=20")),
            |s| {
                s.owned
                    .adopted
                    .push(OwnedLine::new("lxc.idmap", "u 0 100000 65536"))
            },
            |s| {
                s.owned
                    .mp_options
                    .push(OwnedLine::new("mp0", "idmap=u:1:1:1"))
            },
            |s| s.runtime_user = Some(RuntimeUser::default()),
            |s| _ = s.container_groups.insert("dialout".into(), 20),
            |s| s.dev_fallback.push(DevFallback::default()),
            |s| s.first_boot_groups = true,
            |s| s.files_idmap = Some(Vec::new()),
            |s| {
                s.shift
                    .steps
                    .push(crate::model::shift::ShiftStep::new(vec![], vec![]))
            },
            |s| s.changes.push("x".into()),
            |s| s.devices.push(DeviceVerdict::default()),
            |s| s.group_collisions.push(GroupCollision::default()),
            |s| s.last_shift = Some(ShiftRecord::default()),
            |s| {
                s.last_run = Some(LastRun {
                    phase: PhaseName::PreStart,
                    outcome: Outcome::Ok,
                    message: String::new(),
                    at: 1,
                })
            },
            |s| {
                s.shift.inflight = Some(crate::model::shift::Inflight {
                    root: "/".into(),
                    rel: b"usr/bin/ping".to_vec(),
                    ino: 12,
                    mode: 0o104755,
                    cap: Some(vec![1, 2]),
                })
            },
            |s| {
                s.record_hotplug(HotplugRecord {
                    path: "/dev/serial/by-id/x".into(),
                    container_path: "/dev/ttyACM0".into(),
                    action: HotplugAction::Add,
                    node: "/dev/ttyACM0".into(),
                    rule_id: Some("c 166:0".into()),
                    outcome: Outcome::Ok,
                    detail: String::new(),
                    at: 2,
                })
            },
        ]
    }

    /// Straight serialization writes every field: a state with all of them
    /// set comes back whole, from one file and from the two; each file's
    /// keys come in alphabetical order (byte-stable across releases).
    #[test]
    fn every_field_is_written_and_read_back() {
        let mut s = State::new(105);
        for edit in one_field_edits() {
            edit(&mut s);
        }
        assert_eq!(State::parse(&s.render()).unwrap(), s);
        let (cluster, node) = (s.render_cluster(), s.render_node());
        let joined = State::join(
            105,
            Some(State::parse(&cluster).unwrap()),
            Some(State::parse(&node).unwrap()),
        );
        assert_eq!(joined, s);
        for text in [s.render(), cluster, node] {
            let keys: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("  \""))
                .filter_map(|l| l.split('"').next())
                .collect();
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            assert_eq!(keys, sorted, "{text}");
            assert!(
                keys.contains(&"version") && keys.contains(&"vmid"),
                "{text}"
            );
        }
    }

    /// `has_cluster_part` compares fields, not renders: one field set at a
    /// time, it says yes exactly when the cluster file's text changes.
    #[test]
    fn cluster_part_is_what_the_cluster_file_renders() {
        let edits = one_field_edits();
        let empty = State::new(105).render_cluster();
        let mut cluster_fields = 0;
        for edit in edits {
            let mut s = State::new(105);
            edit(&mut s);
            let renders = s.render_cluster() != empty;
            assert_eq!(s.has_cluster_part(), renders, "{}", s.render());
            cluster_fields += usize::from(renders);
        }
        assert_eq!(cluster_fields, 12);
        assert!(!State::new(105).has_cluster_part());
    }

    /// The two files hold disjoint fields, and joining them gives the
    /// state back; the cluster file wins over a version-1 node file.
    #[test]
    fn splits_into_cluster_and_node_files_and_joins_back() {
        let mut s = State::new(105);
        s.owned
            .conf_lines
            .push(OwnedLine::new("lxc.idmap", "g 20 20 1"));
        s.runtime_user = Some(RuntimeUser {
            uid: 1000,
            ..RuntimeUser::default()
        });
        s.first_boot_groups = true;
        s.files_idmap = Some(vec!["u 0 100000 65536".into()]);
        s.shift.steps.push(crate::model::shift::ShiftStep::new(
            vec!["g 0 100000 65536".into()],
            vec!["g 0 100000 20".into()],
        ));
        s.last_shift = Some(ShiftRecord::default());
        s.changes.push("added svc to dialout".into());
        s.last_run = Some(LastRun {
            phase: PhaseName::PreStart,
            outcome: Outcome::Ok,
            message: String::new(),
            at: 1,
        });
        let cluster: serde_json::Value = serde_json::from_str(&s.render_cluster()).unwrap();
        let node: serde_json::Value = serde_json::from_str(&s.render_node()).unwrap();
        assert_eq!(cluster["version"], 2);
        assert_eq!(node["version"], 2);
        assert!(cluster.get("last_run").is_none() && cluster.get("changes").is_none());
        assert!(node.get("owned").is_none() && node.get("runtime_user").is_none());
        assert!(node.get("shift").is_none() && cluster.get("shift").is_some());
        assert!(node.get("files_idmap").is_none() && cluster.get("last_shift").is_none());
        assert_eq!(cluster["owned"]["conf_lines"][0], "lxc.idmap: g 20 20 1");
        let c = State::parse(&s.render_cluster()).unwrap();
        let n = State::parse(&s.render_node()).unwrap();
        assert_eq!(State::join(105, Some(c.clone()), Some(n)), s);
        assert!(c.has_cluster_part());
        assert!(!State::parse(&s.render_node()).unwrap().has_cluster_part());
        // A version-1 node file: its fields are used without a cluster file,
        // and the cluster file wins when there is one.
        let mut v1 = s.clone();
        v1.version = LEGACY_VERSION;
        v1.owned.conf_lines[0].value = "g 44 44 1".into();
        assert_eq!(
            State::join(105, None, Some(v1.clone())).owned.conf_lines[0].value,
            "g 44 44 1"
        );
        assert_eq!(
            State::join(105, Some(c), Some(v1)).owned.conf_lines[0].value,
            "g 20 20 1"
        );
    }

    /// A state file as release 0.1 wrote it: every field still reads, and
    /// rendering gives the same JSON values back.
    #[test]
    fn reads_a_state_written_by_0_1() {
        let text = r#"{
  "version": 1,
  "vmid": 105,
  "owned": {
    "conf_lines": ["lxc.idmap: u 0 100000 65536", "lxc.cgroup2.devices.allow: c 188:0 rwm"],
    "dev_entries": ["dev0: /dev/serial/by-id/usb-x,gid=20"]
  },
  "runtime_user": {"uid": 1000, "gid": 1000, "groups": [20], "name": "node"},
  "devices": [{"path": "/dev/ttyUSB0", "container_path": "/dev/ttyUSB0", "verdict": "needs-restart", "detail": "d"}],
  "last_run": {"phase": "post-start", "outcome": "changed", "message": "m", "at": 7}
}"#;
        let s = State::parse(text).unwrap();
        assert_eq!(
            s.owned.conf_lines[1],
            OwnedLine::new("lxc.cgroup2.devices.allow", "c 188:0 rwm")
        );
        assert_eq!(s.owned.dev_entries[0].dev_index(), Some(0));
        assert_eq!(
            s.owned.dev_entries[0].value,
            "/dev/serial/by-id/usb-x,gid=20"
        );
        assert_eq!(s.devices[0].verdict, Verdict::NeedsRestart);
        let last = s.last_run.as_ref().unwrap();
        assert_eq!(
            (last.phase, last.outcome),
            (PhaseName::PostStart, Outcome::Changed)
        );
        let old: serde_json::Value = serde_json::from_str(text).unwrap();
        let new: serde_json::Value = serde_json::from_str(&s.render()).unwrap();
        for key in ["owned", "runtime_user", "devices", "last_run"] {
            if key == "runtime_user" {
                continue; // gains its defaulted fields
            }
            assert_eq!(old[key], new[key], "{key}");
        }
    }

    #[test]
    fn an_unknown_verdict_or_outcome_is_a_problem() {
        let bad = r#"{"version": 1, "vmid": 105, "last_run": {"phase": "post-start", "outcome": "meh", "at": 1}}"#;
        assert!(matches!(State::parse(bad), Err(StateProblem::Corrupt(_))));
        let bad = r#"{"version": 1, "vmid": 105, "owned": {"conf_lines": ["no colon"]}}"#;
        assert!(matches!(State::parse(bad), Err(StateProblem::Corrupt(_))));
    }

    #[test]
    fn unknown_version_and_garbage_are_problems() {
        assert_eq!(
            State::parse(r#"{"version": 9, "vmid": 105}"#),
            Err(StateProblem::UnknownVersion(9))
        );
        assert!(matches!(
            State::parse("\u{1}garbage"),
            Err(StateProblem::Corrupt(_))
        ));
        assert!(matches!(State::parse("{}"), Err(StateProblem::Corrupt(_))));
        assert!(matches!(
            State::parse(r#"{"version": 1, "vmid": "x"}"#),
            Err(StateProblem::Corrupt(_))
        ));
        // A later version's fields are its own: the version decides first.
        assert_eq!(
            State::parse(r#"{"owned": 7, "version": 3, "vmid": [105]}"#),
            Err(StateProblem::UnknownVersion(3))
        );
        assert_eq!(
            State::parse(r#"{"version": "2", "vmid": 105}"#),
            Err(StateProblem::Corrupt("no version field".into()))
        );
        for not_an_object in ["[]", "[2]", "2", "null"] {
            assert!(
                matches!(State::parse(not_an_object), Err(StateProblem::Corrupt(_))),
                "{not_an_object}"
            );
        }
    }
}
