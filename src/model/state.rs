//! Node-local state of earlier runs (`/var/lib/pct-passthrough/<vmid>.json`):
//! versioned JSON. It records what the tool applied, so a later run can undo
//! exactly that, and what post-start learned about the running container.
//! An unknown version or corrupt file is reported and treated as no state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Raw lines as `key: value` (e.g. `lxc.idmap: g 20 20 1`).
    #[serde(default)]
    pub conf_lines: Vec<String>,
    /// `devN` entries the tool wrote, as `devN: value`.
    #[serde(default)]
    pub dev_entries: Vec<String>,
}

impl Owned {
    pub fn is_empty(&self) -> bool {
        self.conf_lines.is_empty() && self.dev_entries.is_empty()
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
    /// `ok`, `needs-restart`, `no-access`, `missing`.
    pub verdict: String,
    #[serde(default)]
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    pub phase: String,
    /// `ok`, `changed`, `refused`, `failed`.
    pub outcome: String,
    #[serde(default)]
    pub message: String,
    /// Seconds since the epoch.
    pub at: u64,
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

impl State {
    /// The uid/gid post-start found the service needs on the node at `path`
    /// (host path as the config names it), for the devices step.
    pub fn dev_fallback_for(&self, path: &str) -> Option<&DevFallback> {
        self.dev_fallback.iter().find(|f| f.path == path)
    }

    pub fn new(vmid: u32) -> State {
        State {
            version: STATE_VERSION,
            vmid,
            ..State::default()
        }
    }

    /// Parses state text. A problem means "treat as no state".
    pub fn parse(text: &str) -> Result<State, StateProblem> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| StateProblem::Corrupt(e.to_string()))?;
        match value.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(STATE_VERSION) => {}
            Some(v) => return Err(StateProblem::UnknownVersion(v)),
            None => return Err(StateProblem::Corrupt("no version field".into())),
        }
        serde_json::from_value(value).map_err(|e| StateProblem::Corrupt(e.to_string()))
    }

    pub fn render(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into());
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut s = State::new(105);
        s.owned.conf_lines.push("lxc.idmap: g 20 20 1".into());
        s.runtime_user = Some(RuntimeUser {
            uid: 1000,
            gid: 1000,
            groups: vec![20],
            name: Some("node".into()),
            ..RuntimeUser::default()
        });
        assert_eq!(State::parse(&s.render()).unwrap(), s);
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
    }
}
