//! What a change of a container's ID map moves on disk, and how one inode is
//! re-owned (owner, group, POSIX ACL entries, a v3 file capability's root
//! ID). Pure: `sys::shift` walks the tree and `phase::shift` applies.
//!
//! A map change moves every container ID whose host ID differs between the
//! map the files were last owned under and the new one. A shift is only
//! done when no host ID is both moved from and moved to (per kind): then
//! applying it twice equals applying it once, so a run interrupted at any
//! point is finished by running it again. The journal of pending changes
//! is part of the state (`State::shift`), written before the config.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::idmap::{IdKind, IdRange, IdmapEntry};

/// One piece of a map change: container IDs `[ct, ct+len)` were host
/// `[old_host, ..)` and are host `[new_host, ..)` now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub kind: IdKind,
    pub ct: u64,
    pub old_host: u64,
    pub new_host: u64,
    pub len: u64,
}

impl std::fmt::Display for Move {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "container {} {}: host {} -> {}",
            self.kind.word(),
            IdRange::new(self.ct, self.len),
            IdRange::new(self.old_host, self.len),
            IdRange::new(self.new_host, self.len)
        )
    }
}

/// Every move of a map change, per kind, sorted by old host ID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moves {
    pub moves: Vec<Move>,
}

impl Moves {
    /// The moves from `old` to `new`, or why they cannot be applied safely.
    pub fn between(old: &[IdmapEntry], new: &[IdmapEntry]) -> Result<Moves, String> {
        let mut moves = Vec::new();
        for o in old {
            for n in new.iter().filter(|n| n.kind == o.kind) {
                let start = o.ct.max(n.ct);
                let end = (o.ct + o.len).min(n.ct + n.len);
                if start >= end {
                    continue;
                }
                let old_host = o.host + (start - o.ct);
                let new_host = n.host + (start - n.ct);
                if old_host != new_host {
                    moves.push(Move {
                        kind: o.kind,
                        ct: start,
                        old_host,
                        new_host,
                        len: end - start,
                    });
                }
            }
        }
        moves.sort_by_key(|m| (m.kind, m.old_host));
        let m = Moves { moves };
        m.check_idempotent()?;
        Ok(m)
    }

    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }

    /// The new host ID of `host`, if the change moves it.
    pub fn map(&self, kind: IdKind, host: u32) -> Option<u32> {
        let h = u64::from(host);
        let i = self
            .moves
            .partition_point(|m| (m.kind, m.old_host) <= (kind, h));
        let m = self.moves[..i].last()?;
        (m.kind == kind && h < m.old_host + m.len)
            .then(|| u32::try_from(m.new_host + (h - m.old_host)).ok())
            .flatten()
    }

    /// A host ID both moved from and moved to would make a second run move
    /// files the first one already moved.
    fn check_idempotent(&self) -> Result<(), String> {
        for kind in IdKind::ALL {
            let of = |f: fn(&Move) -> u64| {
                crate::model::idset::union(
                    self.moves
                        .iter()
                        .filter(|m| m.kind == kind)
                        .map(|m| IdRange::new(f(m), m.len)),
                )
            };
            let both = crate::model::idset::intersection(&of(|m| m.old_host), &of(|m| m.new_host));
            if let Some(r) = both.first() {
                return Err(format!(
                    "host {} {r} would be both moved from and moved to by one map change",
                    kind.word()
                ));
            }
        }
        Ok(())
    }
}

/// `lxc.idmap` values (`u 0 100000 65536`) to entries; a bad value is an
/// error naming it.
pub fn parse_map(values: &[String]) -> Result<Vec<IdmapEntry>, String> {
    values.iter().map(|v| IdmapEntry::parse(v)).collect()
}

/// One pending map change: files are owned under `from` and must be owned
/// under `to` (each `lxc.idmap` values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShiftStep {
    pub from: Vec<String>,
    pub to: Vec<String>,
    /// Set by the shift hook before it re-owns anything for this step: a
    /// step never started moved nothing, so a later map change replaces it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub started: bool,
}

impl ShiftStep {
    pub fn new(from: Vec<String>, to: Vec<String>) -> ShiftStep {
        ShiftStep {
            from,
            to,
            started: false,
        }
    }

    /// The same map change, started or not.
    pub fn same_change(&self, other: &ShiftStep) -> bool {
        self.from == other.from && self.to == other.to
    }
}

/// An inode between its chown and the restore of what chown clears (set-ID
/// bits, `security.capability`): the next run restores it first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inflight {
    /// The walk root, as the container sees it (`/` or a mount point).
    pub root: String,
    /// The path below it, bytes.
    pub rel: Vec<u8>,
    pub ino: u64,
    pub mode: u32,
    /// The capability to set after the chown, already shifted.
    pub cap: Option<Vec<u8>>,
}

/// What the walk knows of one inode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InodeFacts {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub is_dir: bool,
    pub is_symlink: bool,
    pub acl_access: Option<Vec<u8>>,
    pub acl_default: Option<Vec<u8>>,
    pub cap: Option<Vec<u8>>,
}

/// What to do to one inode. `owner` set: chown (which clears set-ID bits
/// of non-directories and the capability); then `mode`, `cap`, ACLs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InodeChange {
    pub owner: Option<(u32, u32)>,
    /// Set-ID bits to restore after the chown.
    pub mode: Option<u32>,
    pub cap: Option<Vec<u8>>,
    pub acl_access: Option<Vec<u8>>,
    pub acl_default: Option<Vec<u8>>,
}

impl InodeChange {
    pub fn is_empty(&self) -> bool {
        *self == InodeChange::default()
    }
}

/// Decides one inode's change. Bad xattr bytes are an error naming what.
pub fn plan_inode(moves: &Moves, f: &InodeFacts) -> Result<InodeChange, String> {
    let uid = moves.map(IdKind::Uid, f.uid).unwrap_or(f.uid);
    let gid = moves.map(IdKind::Gid, f.gid).unwrap_or(f.gid);
    let owner = (uid != f.uid || gid != f.gid).then_some((uid, gid));
    let mut c = InodeChange {
        owner,
        ..InodeChange::default()
    };
    if f.is_symlink {
        return Ok(c);
    }
    if owner.is_some() && !f.is_dir && f.mode & 0o6000 != 0 {
        c.mode = Some(f.mode & 0o7777);
    }
    if let Some(cap) = &f.cap {
        let shifted = shift_cap(cap, moves)?;
        if owner.is_some() || shifted.is_some() {
            c.cap = Some(shifted.unwrap_or_else(|| cap.clone()));
        }
    }
    if let Some(a) = &f.acl_access {
        c.acl_access = shift_acl(a, moves)?;
    }
    if let Some(a) = &f.acl_default {
        c.acl_default = shift_acl(a, moves)?;
    }
    Ok(c)
}

const ACL_VERSION: u32 = 2;
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;

/// A POSIX ACL xattr (`system.posix_acl_access`/`default`: a version word,
/// then entries of tag, permissions and ID) with its user and group
/// entries moved; `None` when nothing moves.
pub fn shift_acl(bytes: &[u8], moves: &Moves) -> Result<Option<Vec<u8>>, String> {
    if bytes.len() < 4 || !(bytes.len() - 4).is_multiple_of(8) {
        return Err(format!("POSIX ACL of {} bytes is malformed", bytes.len()));
    }
    let version = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if version != ACL_VERSION {
        return Err(format!("POSIX ACL version {version} is unknown"));
    }
    let mut out = bytes.to_vec();
    let mut changed = false;
    for e in out[4..].chunks_exact_mut(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let kind = match tag {
            ACL_USER => IdKind::Uid,
            ACL_GROUP => IdKind::Gid,
            _ => continue,
        };
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        if let Some(new) = moves.map(kind, id) {
            e[4..8].copy_from_slice(&new.to_le_bytes());
            changed = true;
        }
    }
    Ok(changed.then_some(out))
}

const VFS_CAP_REVISION_MASK: u32 = 0xFF00_0000;
const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
const VFS_CAP_REVISION_3: u32 = 0x0300_0000;

/// A `security.capability` value with a v3 root ID moved; `None` when it
/// does not move (v2 has no root ID).
pub fn shift_cap(bytes: &[u8], moves: &Moves) -> Result<Option<Vec<u8>>, String> {
    if bytes.len() < 4 {
        return Err("file capability shorter than its header".into());
    }
    let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    match (magic & VFS_CAP_REVISION_MASK, bytes.len()) {
        (VFS_CAP_REVISION_2, 20) => Ok(None),
        (VFS_CAP_REVISION_3, 24) => {
            let root = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
            Ok(moves.map(IdKind::Uid, root).map(|new| {
                let mut out = bytes.to_vec();
                out[20..24].copy_from_slice(&new.to_le_bytes());
                out
            }))
        }
        (rev, len) => Err(format!(
            "file capability revision {:#x} of {len} bytes is unknown",
            rev >> 24
        )),
    }
}

/// How many inodes a shift re-owned (or would), per ID move, and the
/// first paths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShiftReport {
    /// `"uid 101000 -> 1000"` to a count.
    pub owners: BTreeMap<String, u64>,
    pub acls: u64,
    pub caps: u64,
    /// The first paths changed, as the container sees them.
    pub first: Vec<String>,
    /// Mount points inside a walk root that were not entered.
    pub not_entered: Vec<String>,
}

/// A container-controlled path for human-facing output: control
/// characters and backslashes escaped, bytes that are not UTF-8 as `\xNN`.
pub fn escape_path(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// How many paths a report keeps.
pub const FIRST_PATHS: usize = 5;

impl ShiftReport {
    /// Counts one inode's change.
    pub fn count(&mut self, f: &InodeFacts, c: &InodeChange, path: impl FnOnce() -> String) {
        if c.is_empty() {
            return;
        }
        if let Some((u, g)) = c.owner {
            if u != f.uid {
                *self
                    .owners
                    .entry(format!("uid {} -> {u}", f.uid))
                    .or_default() += 1;
            }
            if g != f.gid {
                *self
                    .owners
                    .entry(format!("gid {} -> {g}", f.gid))
                    .or_default() += 1;
            }
        }
        if c.acl_access.is_some() || c.acl_default.is_some() {
            self.acls += 1;
        }
        if c.cap.is_some() {
            self.caps += 1;
        }
        if self.first.len() < FIRST_PATHS {
            self.first.push(path());
        }
    }

    pub fn merge(&mut self, other: ShiftReport) {
        for (k, v) in other.owners {
            *self.owners.entry(k).or_default() += v;
        }
        self.acls += other.acls;
        self.caps += other.caps;
        for p in other.first {
            if self.first.len() < FIRST_PATHS {
                self.first.push(p);
            }
        }
        self.not_entered.extend(other.not_entered);
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty() && self.acls == 0 && self.caps == 0
    }

    /// One line: `re-owned uid 101000 -> 1000: 3, ...; 1 ACL; first: /a, /b`.
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "nothing to re-own".into();
        }
        let owners: Vec<String> = self
            .owners
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let mut s = owners.join(", ");
        if self.acls > 0 {
            s.push_str(&format!("; ACLs of {} inodes", self.acls));
        }
        if self.caps > 0 {
            s.push_str(&format!("; {} file capabilities", self.caps));
        }
        if !self.first.is_empty() {
            s.push_str(&format!("; first: {}", self.first.join(", ")));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::idmap::compute;
    use crate::model::idmap::{pve_default, Passthrough};

    fn punched(kind: IdKind, id: u64) -> Vec<IdmapEntry> {
        compute(&pve_default(), &[Passthrough::same(kind, id, "t")]).unwrap()
    }

    #[test]
    fn a_gid_punch_moves_exactly_that_gid_both_ways() {
        let old = pve_default();
        let new = punched(IdKind::Gid, 20);
        let m = Moves::between(&old, &new).unwrap();
        assert_eq!(
            m.moves,
            [Move {
                kind: IdKind::Gid,
                ct: 20,
                old_host: 100_020,
                new_host: 20,
                len: 1
            }]
        );
        assert_eq!(m.map(IdKind::Gid, 100_020), Some(20));
        assert_eq!(m.map(IdKind::Gid, 100_019), None);
        assert_eq!(m.map(IdKind::Gid, 100_021), None);
        assert_eq!(m.map(IdKind::Uid, 100_020), None);
        let back = Moves::between(&new, &old).unwrap();
        assert_eq!(back.map(IdKind::Gid, 20), Some(100_020));
        assert_eq!(back.map(IdKind::Gid, 100_020), None);
        assert!(Moves::between(&new, &new).unwrap().is_empty());
    }

    #[test]
    fn ranges_move_at_their_exact_edges() {
        let old = pve_default();
        let new = compute(
            &pve_default(),
            &[Passthrough {
                kind: IdKind::Uid,
                host: 2000,
                ct: 65_526,
                len: 10,
                reason: "t".into(),
            }],
        )
        .unwrap();
        let m = Moves::between(&old, &new).unwrap();
        assert_eq!(m.map(IdKind::Uid, 165_525), None);
        assert_eq!(m.map(IdKind::Uid, 165_526), Some(2000));
        assert_eq!(m.map(IdKind::Uid, 165_535), Some(2009));
        assert_eq!(m.map(IdKind::Uid, 165_536), None);
    }

    #[test]
    fn a_host_id_moved_from_and_to_is_refused() {
        // ct 1000 was host 1000; now ct 1001 is host 1000 and ct 1000 is back
        // in the base range.
        let old = punched(IdKind::Uid, 1000);
        let new = compute(
            &pve_default(),
            &[Passthrough {
                kind: IdKind::Uid,
                host: 1000,
                ct: 1001,
                len: 1,
                reason: "t".into(),
            }],
        )
        .unwrap();
        let e = Moves::between(&old, &new).unwrap_err();
        assert!(
            e.contains("host uid 1000 would be both moved from and moved to"),
            "{e}"
        );
    }

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = ACL_VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend(tag.to_le_bytes());
            v.extend(perm.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        v
    }

    #[test]
    fn acl_user_and_group_entries_move_and_nothing_else() {
        let m = Moves::between(&pve_default(), &{
            let mut p = punched(IdKind::Uid, 1000);
            p.retain(|e| e.kind == IdKind::Uid);
            p.extend(
                punched(IdKind::Gid, 20)
                    .into_iter()
                    .filter(|e| e.kind == IdKind::Gid),
            );
            p
        })
        .unwrap();
        let u32max = u32::MAX;
        let a = acl(&[
            (0x01, 6, u32max),
            (ACL_USER, 6, 101_000),
            (ACL_USER, 4, 101_001),
            (0x04, 4, u32max),
            (ACL_GROUP, 6, 100_020),
            (0x10, 6, u32max),
            (0x20, 0, u32max),
        ]);
        let got = shift_acl(&a, &m).unwrap().unwrap();
        assert_eq!(
            got,
            acl(&[
                (0x01, 6, u32max),
                (ACL_USER, 6, 1000),
                (ACL_USER, 4, 101_001),
                (0x04, 4, u32max),
                (ACL_GROUP, 6, 20),
                (0x10, 6, u32max),
                (0x20, 0, u32max),
            ])
        );
        assert_eq!(
            shift_acl(&got, &m).unwrap(),
            None,
            "a second run changes nothing"
        );
        assert!(shift_acl(&a[..7], &m).is_err());
        assert!(shift_acl(&[1, 0, 0, 0], &m).is_err());
    }

    fn cap_v3(root: u32) -> Vec<u8> {
        let mut v = (VFS_CAP_REVISION_3 | 1).to_le_bytes().to_vec();
        v.extend(0x400u32.to_le_bytes()); // CAP_NET_BIND_SERVICE
        v.extend(0u32.to_le_bytes());
        v.extend(0u32.to_le_bytes());
        v.extend(0u32.to_le_bytes());
        v.extend(root.to_le_bytes());
        v
    }

    #[test]
    fn a_v3_capability_root_id_moves_v2_stays() {
        let m = Moves::between(&pve_default(), &punched(IdKind::Uid, 0x1000)).unwrap();
        let moved = shift_cap(&cap_v3(100_000 + 0x1000), &m).unwrap().unwrap();
        assert_eq!(moved, cap_v3(0x1000));
        assert_eq!(shift_cap(&cap_v3(100_000), &m).unwrap(), None);
        let mut v2 = cap_v3(0)[..20].to_vec();
        v2[3] = 0x02;
        assert_eq!(shift_cap(&v2, &m).unwrap(), None);
        assert!(shift_cap(&cap_v3(1)[..22], &m).is_err());
    }

    #[test]
    fn paths_are_escaped_for_the_task_log() {
        assert_eq!(escape_path(b"var/spool/x"), "var/spool/x");
        assert_eq!(escape_path("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(escape_path(b"a\nb\x1b[31m"), "a\\nb\\u{1b}[31m");
        assert_eq!(escape_path(b"\xff\\"), "\\xff\\\\");
    }

    #[test]
    fn chown_restores_setid_bits_and_capability() {
        let m = Moves::between(&pve_default(), &punched(IdKind::Uid, 1000)).unwrap();
        let f = InodeFacts {
            uid: 101_000,
            gid: 101_000,
            mode: 0o104755,
            cap: Some(cap_v3(100_000)),
            ..InodeFacts::default()
        };
        let c = plan_inode(&m, &f).unwrap();
        assert_eq!(c.owner, Some((1000, 101_000)));
        assert_eq!(c.mode, Some(0o4755));
        assert_eq!(c.cap, Some(cap_v3(100_000)));
        // Symlinks: owner only.
        let l = InodeFacts {
            uid: 101_000,
            gid: 5,
            is_symlink: true,
            mode: 0o120777,
            ..InodeFacts::default()
        };
        let c = plan_inode(&m, &l).unwrap();
        assert_eq!(
            c,
            InodeChange {
                owner: Some((1000, 5)),
                ..InodeChange::default()
            }
        );
        // Unmoved: nothing.
        let u = InodeFacts {
            uid: 100_000,
            gid: 100_000,
            mode: 0o100644,
            ..InodeFacts::default()
        };
        assert!(plan_inode(&m, &u).unwrap().is_empty());
    }
}
