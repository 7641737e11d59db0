//! The optional per-container policy (`/etc/pve/pct-passthrough/<vmid>.toml`),
//! parsed strictly: unknown keys and bad syntax are errors with the line.

use serde::Deserialize;
use toml::Spanned;

use crate::model::idmap::ID_LIMIT;

/// How a device gets into the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceMethod {
    /// A `devN` entry: PVE makes a private node with the wanted owner and mode.
    Dev,
    /// `lxc.mount.entry` bind of the host node, a cgroup rule and a 1:1 group map.
    Bind,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicePolicy {
    pub path: Spanned<String>,
    #[serde(default)]
    pub method: Option<DeviceMethod>,
    #[serde(default)]
    pub container_path: Option<String>,
    #[serde(default)]
    pub required: bool,
    /// Lets `/dev/mem`, `/dev/kmem`, `/dev/port` and block devices through.
    #[serde(default)]
    pub allow_dangerous: bool,
}

/// ID passthroughs for one mount point: Proxmox's `idmap=` option on that
/// `mpN` (pve-container >= 6.1.6) instead of the container-wide map.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountPolicy {
    /// The mount point's key, `mp0`.
    pub mp: Spanned<String>,
    /// `raw.idmap` lines as for the container-wide `idmap`; the host side
    /// is the ID on the mount's file system.
    pub idmap: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// `false` turns the hook off for this container.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// LXD/Incus `raw.idmap` lines, host ID first: `"both 1000 1000"`; or
    /// `"uid|gid|both HOST runtime"` for the detected service user.
    #[serde(default)]
    pub idmap: Vec<Spanned<String>>,
    /// Devices to pass through.
    #[serde(default, rename = "device")]
    pub devices: Vec<DevicePolicy>,
    /// Per-mount-point passthroughs.
    #[serde(default, rename = "mount")]
    pub mounts: Vec<MountPolicy>,
    /// Another hookscript to run as well, like `local:snippets/old-hook.pl`.
    #[serde(default)]
    pub chain: Option<String>,
    /// Upper bound for post-start's detached worker, in seconds.
    #[serde(default, deserialize_with = "at_least_one_second")]
    pub detect_timeout: Option<u32>,
    /// The container UID of the service user, when detection should not guess
    /// among several non-root processes.
    #[serde(default)]
    pub runtime_uid: Option<u32>,
    /// The file it was read from and its line index, for messages.
    #[serde(skip)]
    pub file: String,
    #[serde(skip)]
    newlines: Vec<usize>,
}

fn yes() -> bool {
    true
}

/// Refuses 0 while parsing, so the error carries the value's line.
fn at_least_one_second<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match u32::deserialize(d)? {
        0 => Err(serde::de::Error::custom(
            "detect_timeout = 0: it must be at least 1 second",
        )),
        secs => Ok(Some(secs)),
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            enabled: true,
            idmap: Vec::new(),
            devices: Vec::new(),
            mounts: Vec::new(),
            chain: None,
            detect_timeout: None,
            runtime_uid: None,
            file: String::new(),
            newlines: Vec::new(),
        }
    }
}

/// 1-based lines of many byte offsets in one text: the newlines are found
/// once, then each lookup is a binary search (a policy with n `idmap` lines
/// costs O(n log n), not the O(n²) of [`line_of`] per line).
#[derive(Debug, Clone)]
pub struct LineIndex {
    newlines: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> LineIndex {
        LineIndex {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// The same as [`line_of`] on the indexed text.
    pub fn line_of(&self, pos: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < pos) + 1
    }
}

/// 1-based line of byte offset `pos` in `text`.
pub fn line_of(text: &str, pos: usize) -> usize {
    text.as_bytes()[..pos.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Policy {
    /// Parses policy text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Policy, String> {
        let mut policy: Policy = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let msg = e.message().trim_end().to_string();
            match line {
                Some(l) => {
                    format!("{file} line {l}: {msg}; see the policy reference in the README")
                }
                None => format!("{file}: {msg}; see the policy reference in the README"),
            }
        })?;
        policy.file = file.to_string();
        policy.newlines = LineIndex::new(text).newlines;
        if let Some(uid) = policy.runtime_uid.filter(|&u| u64::from(u) >= ID_LIMIT) {
            let at = text
                .find("runtime_uid")
                .map_or(String::new(), |pos| format!(" line {}", line_of(text, pos)));
            return Err(format!(
                "{file}{at}: runtime_uid {uid} is not a user ID; the largest is {}",
                ID_LIMIT - 1
            ));
        }
        Ok(policy)
    }

    /// `<file> line N` of a byte offset in the policy text (a span start).
    pub fn at(&self, pos: usize) -> String {
        let line = self.newlines.partition_point(|&nl| nl < pos) + 1;
        format!("{} line {line}", self.file)
    }

    /// The 1-based line of a byte offset in the policy text.
    pub fn line_of(&self, pos: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < pos) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_keys() {
        let text = "enabled = true\nidmap = [\"both 1000 1000\", \"gid 44 44\"]\n\n[[device]]\npath = \"/dev/ttyUSB0\"\nmethod = \"bind\"\nrequired = true\n";
        let p = Policy::parse("p.toml", text).unwrap();
        assert!(p.enabled);
        assert_eq!(p.idmap.len(), 2);
        assert_eq!(line_of(text, p.idmap[1].span().start), 2);
        assert_eq!(p.devices[0].method, Some(DeviceMethod::Bind));
        assert!(p.devices[0].required);
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let e = Policy::parse(
            "/etc/pve/pct-passthrough/105.toml",
            "enabled = true\nidmaps = []\n",
        )
        .unwrap_err();
        assert!(
            e.starts_with("/etc/pve/pct-passthrough/105.toml line 2: unknown field `idmaps`"),
            "{e}"
        );
        let e =
            Policy::parse("p", "[[device]]\npath = \"/dev/x\"\nmethod = \"usb\"\n").unwrap_err();
        assert!(e.contains("line 3"), "{e}");
        let e = Policy::parse("p", "enabled = \n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn a_zero_detect_timeout_names_the_file_and_line() {
        let e = Policy::parse(
            "/etc/pve/pct-passthrough/105.toml",
            "enabled = true\n\ndetect_timeout = 0\n",
        )
        .unwrap_err();
        assert!(
            e.starts_with(
                "/etc/pve/pct-passthrough/105.toml line 3: detect_timeout = 0: it must be at least 1 second"
            ),
            "{e}"
        );
        let p = Policy::parse("p", "detect_timeout = 7\n").unwrap();
        assert_eq!(p.detect_timeout, Some(7));
        assert_eq!(Policy::parse("p", "").unwrap().detect_timeout, None);
    }

    proptest::proptest! {
        #[test]
        fn line_index_agrees_with_line_of(text in "[a\n\r=]{0,40}", pos in 0usize..50) {
            proptest::prop_assert_eq!(LineIndex::new(&text).line_of(pos), line_of(&text, pos));
        }
    }

    #[rstest::rstest]
    #[case::last(4294967294, None)]
    #[case::reserved(
        4294967295,
        Some("p.toml line 2: runtime_uid 4294967295 is not a user ID; the largest is 4294967294")
    )]
    fn runtime_uid_at_the_top_of_the_range(#[case] uid: u64, #[case] want: Option<&str>) {
        let text = format!("enabled = true\nruntime_uid = {uid}\n");
        match (Policy::parse("p.toml", &text), want) {
            (Ok(p), None) => assert_eq!(p.runtime_uid.map(u64::from), Some(uid)),
            (Err(e), Some(w)) => assert_eq!(e, w),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn defaults_to_enabled() {
        assert!(Policy::parse("p", "").unwrap().enabled);
        assert!(!Policy::parse("p", "enabled = false").unwrap().enabled);
    }
}
