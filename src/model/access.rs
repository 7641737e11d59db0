//! Can the service open a device node? Computed from the node's owner, group
//! and mode as seen inside the container and the process's credentials, and
//! turned into the per-device verdict post-start records. Pure.

use crate::model::state::Verdict;
use serde::{Deserialize, Serialize};

/// The overflow ID a user namespace shows for an unmapped owner or group.
pub const OVERFLOW_ID: u32 = 65534;

/// A node as `stat` shows it inside the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStat {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits and file type (`st_mode`).
    pub mode: u32,
    pub is_char_device: bool,
}

/// The credentials a process runs with, container view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Whether `c` may open `n` for reading and writing, by the kernel's DAC
/// rules. Root in the container overrides only when owner and group are
/// both mapped (not the overflow ID).
pub fn can_read_write(n: &NodeStat, c: &Creds) -> bool {
    if c.uid == 0 && n.uid != OVERFLOW_ID && n.gid != OVERFLOW_ID {
        return true;
    }
    let bits = if n.uid == c.uid {
        (n.mode >> 6) & 7
    } else if n.gid == c.gid || c.groups.contains(&n.gid) {
        (n.mode >> 3) & 7
    } else {
        n.mode & 7
    };
    bits & 6 == 6
}

/// The verdict for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub detail: String,
    /// The next pre-start should give the node this service's uid/gid (devN).
    pub needs_dev_fallback: bool,
}

/// Judges one node. `member_now`: the user is (after the edit) listed in the
/// node group's `/etc/group` entry. `keeps_groups`: `Some(false)` when the
/// entrypoint dropped supplementary groups.
pub fn judge(
    node: Option<&NodeStat>,
    c: &Creds,
    member_now: bool,
    keeps_groups: Option<bool>,
) -> Judgement {
    let Some(n) = node else {
        return Judgement {
            verdict: Verdict::Missing,
            detail: "the node does not exist inside the container".into(),
            needs_dev_fallback: false,
        };
    };
    if !n.is_char_device {
        return Judgement {
            verdict: Verdict::Missing,
            detail: format!(
                "not a device node inside ({}:{} mode {:o}): the device is unplugged, and LXC made the bind's mount point (create=file)",
                n.uid,
                n.gid,
                n.mode & 0o7777
            ),
            needs_dev_fallback: false,
        };
    }
    if can_read_write(n, c) {
        return Judgement {
            verdict: Verdict::Ok,
            detail: format!(
                "uid {} can open it ({}:{} mode {:o})",
                c.uid,
                n.uid,
                n.gid,
                n.mode & 0o7777
            ),
            needs_dev_fallback: false,
        };
    }
    let group_could = (n.mode >> 3) & 6 == 6;
    if n.gid == OVERFLOW_ID {
        return Judgement {
            verdict: Verdict::NoAccess,
            detail: "the node's group is not mapped into the container (shows as 65534); the next start must map it or give the node the service's uid/gid".into(),
            needs_dev_fallback: true,
        };
    }
    if group_could && member_now && keeps_groups != Some(false) && n.gid != 0 {
        return Judgement {
            verdict: Verdict::NeedsRestart,
            detail: format!(
                "uid {} is now in group {}, but groups are fixed when a process starts; restart the container{}",
                c.uid,
                n.gid,
                if keeps_groups.is_none() {
                    format!(" (should its entrypoint drop groups, the next start gives the node uid {} gid {})", c.uid, c.gid)
                } else {
                    String::new()
                }
            ),
            // Unknown whether the entrypoint keeps groups: the owner
            // fallback makes the next start work either way.
            needs_dev_fallback: keeps_groups.is_none(),
        };
    }
    let why = if keeps_groups == Some(false) {
        "the entrypoint dropped supplementary groups (user:group form or a uid without a passwd entry)"
    } else if n.gid == 0 {
        "the node belongs to group 0 (root); the tool does not add users to it"
    } else if !group_could {
        "the node's mode gives its group no read-write access"
    } else {
        "the user is not in the node's group"
    };
    Judgement {
        verdict: Verdict::NoAccess,
        detail: format!(
            "{why}; the next start gives the node uid {} gid {} (devN uid=/gid=, or a private node in place of a bind)",
            c.uid, c.gid
        ),
        needs_dev_fallback: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn node(uid: u32, gid: u32, mode: u32) -> NodeStat {
        NodeStat {
            uid,
            gid,
            mode: 0o020000 | mode,
            is_char_device: true,
        }
    }
    fn creds(uid: u32, gid: u32, groups: &[u32]) -> Creds {
        Creds {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[rstest]
    #[case::group_member(node(65534, 20, 0o660), creds(1000, 1000, &[20]), true)]
    #[case::primary_group(node(65534, 20, 0o660), creds(1000, 20, &[]), true)]
    #[case::not_member(node(65534, 20, 0o660), creds(1000, 1000, &[]), false)]
    #[case::owner(node(1000, 1000, 0o600), creds(1000, 1, &[]), true)]
    #[case::owner_bits_win(node(1000, 20, 0o066), creds(1000, 20, &[]), false)]
    #[case::other(node(0, 0, 0o666), creds(1000, 1000, &[]), true)]
    #[case::root_mapped(node(0, 20, 0o600), creds(0, 0, &[]), true)]
    #[case::root_unmapped_owner(node(65534, 20, 0o660), creds(0, 0, &[]), false)]
    #[case::read_only(node(65534, 20, 0o640), creds(1000, 20, &[]), false)]
    fn dac(#[case] n: NodeStat, #[case] c: Creds, #[case] ok: bool) {
        assert_eq!(can_read_write(&n, &c), ok);
    }

    #[test]
    fn verdicts() {
        let n = node(65534, 20, 0o660);
        let c = creds(1000, 1000, &[]);
        assert_eq!(judge(None, &c, false, None).verdict, Verdict::Missing);
        assert_eq!(
            judge(Some(&n), &creds(1000, 1000, &[20]), true, Some(true)).verdict,
            Verdict::Ok
        );
        assert_eq!(
            judge(Some(&n), &c, true, None).verdict,
            Verdict::NeedsRestart
        );
        let v = judge(Some(&n), &c, true, Some(false));
        assert_eq!(v.verdict, Verdict::NoAccess);
        assert!(v.needs_dev_fallback && v.detail.contains("dropped"));
        let v = judge(Some(&node(65534, 65534, 0o660)), &c, false, None);
        assert!(v.detail.contains("not mapped"));
        // An unplugged optional bind leaves an empty file behind.
        let file = NodeStat {
            uid: 0,
            gid: 0,
            mode: 0o100000,
            is_char_device: false,
        };
        let v = judge(Some(&file), &c, false, Some(false));
        assert_eq!(v.verdict, Verdict::Missing);
        assert!(!v.needs_dev_fallback && v.detail.contains("unplugged"));
    }
}
