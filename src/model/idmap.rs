//! ID maps: `lxc.idmap` entries, LXD/Incus `raw.idmap` lines, the stable
//! hole-punching engine (`compute`), the validator, and the check that a
//! person's own map already gives every passthrough. Pure; ends are `u64`.

use std::fmt;

use crate::model::idset;

/// The first ID no range may reach: a range `[first, first + count)` is
/// valid only when `first + count <= 4294967295`, on both sides of a map
/// line and in `/etc/subuid`/`/etc/subgid`. 4294967295 is `(uid_t)-1`,
/// which the kernel reserves: on this project's CI kernel (6.18) writing
/// `4294967295 4294967295 1`, `0 4294967295 1` or `0 4294967294 2` to a
/// fresh `unshare -U` process's `uid_map` fails with EINVAL, and
/// `4294967294 4294967294 1` is taken.
pub const ID_LIMIT: u64 = u32::MAX as u64;
/// The kernel takes at most 340 lines per `uid_map` / `gid_map`.
pub const MAX_LINES_PER_KIND: usize = 340;
/// Proxmox's default map for unprivileged containers: `0 100000 65536`.
pub const PVE_BASE_HOST: u64 = 100_000;
pub const PVE_BASE_LEN: u64 = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IdKind {
    Uid,
    Gid,
}

impl IdKind {
    pub const ALL: [IdKind; 2] = [IdKind::Uid, IdKind::Gid];

    /// `u` or `g`, as in `lxc.idmap`.
    pub fn letter(self) -> char {
        match self {
            IdKind::Uid => 'u',
            IdKind::Gid => 'g',
        }
    }

    /// `uid` or `gid`, for messages.
    pub fn word(self) -> &'static str {
        match self {
            IdKind::Uid => "uid",
            IdKind::Gid => "gid",
        }
    }
}

/// A half-open range of IDs `[start, end)`, never empty once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdRange {
    pub start: u64,
    pub end: u64,
}

impl IdRange {
    pub fn new(start: u64, len: u64) -> IdRange {
        IdRange {
            start,
            end: start.saturating_add(len),
        }
    }

    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    pub fn overlaps(&self, other: &IdRange) -> bool {
        self.start < other.end && other.start < self.end
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len() == 1 {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end.saturating_sub(1))
        }
    }
}

/// One `lxc.idmap` line: `u|g CT HOST LEN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdmapEntry {
    pub kind: IdKind,
    pub ct: u64,
    pub host: u64,
    pub len: u64,
}

impl IdmapEntry {
    pub fn new(kind: IdKind, ct: u64, host: u64, len: u64) -> IdmapEntry {
        IdmapEntry {
            kind,
            ct,
            host,
            len,
        }
    }

    pub fn ct_range(&self) -> IdRange {
        IdRange::new(self.ct, self.len)
    }

    pub fn host_range(&self) -> IdRange {
        IdRange::new(self.host, self.len)
    }

    /// Parses an `lxc.idmap` value the way pve-container does:
    /// `^([ug])\s+(\d+)\s+(\d+)\s+(\d+)\s*$`.
    pub fn parse(value: &str) -> Result<IdmapEntry, String> {
        let bad = || {
            format!("'{value}' is not an idmap entry; the form is 'u|g CT_ID HOST_ID COUNT', like 'g 20 20 1'")
        };
        // Perl's `\s`, vertical tab included (Rust's ASCII whitespace lacks it).
        let space = |c: char| u8::try_from(c).is_ok_and(crate::model::pveconf::is_perl_space);
        let mut f = value.split(space).filter(|s| !s.is_empty());
        let kind = match f.next() {
            Some("u") => IdKind::Uid,
            Some("g") => IdKind::Gid,
            _ => return Err(bad()),
        };
        // PVE's regex needs whitespace after the letter.
        if !value
            .trim_start_matches(space)
            .as_bytes()
            .get(1)
            .is_some_and(|&b| crate::model::pveconf::is_perl_space(b))
        {
            return Err(bad());
        }
        let mut num = || -> Result<u64, String> {
            let s = f.next().ok_or_else(bad)?;
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse::<u64>()
                .map_err(|_| format!("'{value}': {s} is not a valid ID (IDs are below {ID_LIMIT})"))
        };
        let ct = num()?;
        let host = num()?;
        let len = num()?;
        if f.next().is_some() {
            return Err(bad());
        }
        Ok(IdmapEntry::new(kind, ct, host, len))
    }
}

impl fmt::Display for IdmapEntry {
    /// The `lxc.idmap` value, like `g 20 20 1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.kind.letter(),
            self.ct,
            self.host,
            self.len
        )
    }
}

/// PVE's default map for an unprivileged container without `lxc.idmap`.
pub fn pve_default() -> Vec<IdmapEntry> {
    IdKind::ALL
        .iter()
        .map(|&k| IdmapEntry::new(k, 0, PVE_BASE_HOST, PVE_BASE_LEN))
        .collect()
}

/// "These container IDs must be these host IDs", and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Passthrough {
    pub kind: IdKind,
    pub ct: u64,
    pub host: u64,
    pub len: u64,
    /// Where it came from, for messages: `policy line 3: "gid 44 44"`.
    pub reason: String,
}

impl Passthrough {
    /// A 1:1 passthrough of one ID.
    pub fn same(kind: IdKind, id: u64, reason: impl Into<String>) -> Passthrough {
        Passthrough {
            kind,
            ct: id,
            host: id,
            len: 1,
            reason: reason.into(),
        }
    }

    pub fn entry(&self) -> IdmapEntry {
        IdmapEntry::new(self.kind, self.ct, self.host, self.len)
    }
}

impl fmt::Display for Passthrough {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "container {} {} -> host {} {} ({})",
            self.kind.word(),
            self.entry().ct_range(),
            self.kind.word(),
            self.entry().host_range(),
            self.reason
        )
    }
}

/// Which side of a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Container,
    Host,
}

impl Side {
    fn word(self) -> &'static str {
        match self {
            Side::Container => "container",
            Side::Host => "host",
        }
    }
}

/// Checks a complete map (both kinds): no zero-length line, no range
/// reaching [`ID_LIMIT`], no host ID 0, no overlap on either side per kind, at most 340
/// lines per kind. Every problem names the offending lines.
pub fn validate(entries: &[IdmapEntry]) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    for e in entries {
        if e.len == 0 {
            problems.push(format!(
                "invalid map entry '{e}': zero length; remove the line"
            ));
            continue;
        }
        for (side, start) in [(Side::Container, e.ct), (Side::Host, e.host)] {
            if start.checked_add(e.len).is_none_or(|end| end > ID_LIMIT) {
                problems.push(format!(
                    "invalid map entry '{e}': {} {}s reach {} or more, past the largest mappable ID {}; shorten the range",
                    side.word(),
                    e.kind.word(),
                    ID_LIMIT,
                    ID_LIMIT - 1
                ));
            }
        }
        if e.host == 0 {
            problems.push(format!(
                "invalid map entry '{e}': it maps host {} 0 (host root) into the container; map another host ID",
                e.kind.word()
            ));
        }
    }
    for kind in IdKind::ALL {
        let of_kind: Vec<&IdmapEntry> = entries
            .iter()
            .filter(|e| e.kind == kind && e.len > 0)
            .collect();
        if of_kind.len() > MAX_LINES_PER_KIND {
            problems.push(format!(
                "{} '{}' lines: the kernel takes at most {MAX_LINES_PER_KIND}; merge adjacent ranges or pass fewer IDs through",
                of_kind.len(),
                kind.letter()
            ));
        }
        for side in [Side::Container, Side::Host] {
            overlaps(&of_kind, side, &mut problems);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Finds overlaps on one side in O(n log n): sort by start and compare each
/// entry with the one that reaches furthest so far.
fn overlaps(entries: &[&IdmapEntry], side: Side, problems: &mut Vec<String>) {
    let range = |e: &IdmapEntry| match side {
        Side::Container => e.ct_range(),
        Side::Host => e.host_range(),
    };
    let mut sorted: Vec<&IdmapEntry> = entries.to_vec();
    sorted.sort_by_key(|e| (range(e).start, range(e).end));
    let mut furthest: Option<&IdmapEntry> = None;
    for e in sorted {
        if let Some(f) = furthest {
            let (fr, er) = (range(f), range(e));
            if er.start < fr.end {
                problems.push(format!(
                    "invalid map entry '{e}': {} {} {} is also mapped by entry '{f}'; each {} ID may appear in one line only",
                    side.word(),
                    e.kind.word(),
                    er.start.max(fr.start),
                    side.word(),
                ));
            }
            if er.end > fr.end {
                furthest = Some(e);
            }
        } else {
            furthest = Some(e);
        }
    }
}

/// Where a planned map goes wrong, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapError(pub Vec<String>);

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

/// How long a merged passthrough's reason may grow before further sources
/// are summed up: a run of n adjacent IDs from n policy lines then merges
/// in O(n), not O(n²), and its message stays readable.
const REASON_MAX: usize = 240;
const MORE: &str = "; and more";

/// Appends `reason` to a merged passthrough's `reasons` unless it is already
/// there, or `; and more` once they are long.
fn add_reason(reasons: &mut String, reason: &str) {
    if reasons.ends_with(MORE) || reasons.split("; ").any(|r| r == reason) {
        return;
    }
    if reasons.len() + 2 + reason.len() > REASON_MAX {
        reasons.push_str(MORE);
    } else {
        reasons.push_str("; ");
        reasons.push_str(reason);
    }
}

/// Merges passthroughs of one kind: exact duplicates collapse, ranges that
/// continue each other on both sides join. Two passthroughs that want the
/// same container ID on different host IDs (or the reverse) are an error
/// naming both sources.
pub fn merge_passthroughs(passthroughs: &[Passthrough]) -> Result<Vec<Passthrough>, MapError> {
    let mut problems = Vec::new();
    let mut out: Vec<Passthrough> = Vec::new();
    for kind in IdKind::ALL {
        let mut of_kind: Vec<&Passthrough> = passthroughs
            .iter()
            .filter(|p| p.kind == kind && p.len > 0)
            .collect();
        of_kind.sort_by_key(|p| (p.ct, p.host, p.len));
        let mut merged: Vec<Passthrough> = Vec::new();
        for p in of_kind {
            if let Some(last) = merged.last_mut() {
                let last_end = last.ct.saturating_add(last.len);
                let offset = |x: &Passthrough| i128::from(x.host) - i128::from(x.ct);
                let same_offset = offset(p) == offset(last);
                if p.ct <= last_end && same_offset {
                    let end = last_end.max(p.ct.saturating_add(p.len));
                    last.len = end - last.ct;
                    add_reason(&mut last.reason, &p.reason);
                    continue;
                }
                if p.ct < last_end {
                    problems.push(format!(
                        "container {} {} is wanted on host {} {} ({}) and on host {} {} ({}); remove one of them",
                        kind.word(),
                        p.ct,
                        kind.word(),
                        last.host + (p.ct - last.ct),
                        last.reason,
                        kind.word(),
                        p.host,
                        p.reason
                    ));
                    continue;
                }
            }
            merged.push(p.clone());
        }
        // The same host ID wanted by two container IDs.
        let mut by_host: Vec<&Passthrough> = merged.iter().collect();
        by_host.sort_by_key(|p| (p.host, p.len));
        for pair in by_host.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if b.host < a.host.saturating_add(a.len) {
                problems.push(format!(
                    "host {} {} is wanted as container {} {} ({}) and as container {} {} ({}); a host ID can appear once per map, remove one of them",
                    kind.word(),
                    b.host,
                    kind.word(),
                    a.ct + (b.host - a.host),
                    a.reason,
                    kind.word(),
                    b.ct,
                    b.reason
                ));
            }
        }
        out.extend(merged);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(MapError(problems))
    }
}

/// The full map for `base` with `passthroughs` punched in: every container
/// ID a passthrough names maps to its host ID, every other ID keeps
/// host = base host + offset (stable hole punching, never compacted).
/// Adjacent lines that continue each other are merged; no zero-length line.
/// Both kinds are always emitted when the base has them. The result is
/// validated.
pub fn compute(
    base: &[IdmapEntry],
    passthroughs: &[Passthrough],
) -> Result<Vec<IdmapEntry>, MapError> {
    let merged = merge_passthroughs(passthroughs)?;
    let mut out = Vec::new();
    for kind in IdKind::ALL {
        let holes = idset::union(
            merged
                .iter()
                .filter(|p| p.kind == kind)
                .map(|p| IdRange::new(p.ct, p.len)),
        );
        let mut entries: Vec<IdmapEntry> = Vec::new();
        let mut base_of_kind: Vec<&IdmapEntry> = base
            .iter()
            .filter(|e| e.kind == kind && e.len > 0)
            .collect();
        base_of_kind.sort_by_key(|e| e.ct);
        for b in base_of_kind {
            punch(b, &holes, &mut entries);
        }
        entries.extend(merged.iter().filter(|p| p.kind == kind).map(|p| p.entry()));
        entries.sort_by_key(|e| (e.ct, e.host));
        // Merge lines that continue each other on both sides.
        let mut joined: Vec<IdmapEntry> = Vec::with_capacity(entries.len());
        for e in entries {
            match joined.last_mut() {
                Some(last)
                    if last.ct.saturating_add(last.len) == e.ct
                        && last.host.saturating_add(last.len) == e.host =>
                {
                    last.len += e.len;
                }
                _ => joined.push(e),
            }
        }
        out.extend(joined);
    }
    validate(&out).map_err(MapError)?;
    Ok(out)
}

/// Appends the parts of `b` that no hole covers. `holes` is sorted by start.
fn punch(b: &IdmapEntry, holes: &[IdRange], out: &mut Vec<IdmapEntry>) {
    for piece in idset::difference(&[b.ct_range()], holes) {
        out.push(IdmapEntry::new(
            b.kind,
            piece.start,
            b.host + (piece.start - b.ct),
            piece.len(),
        ));
    }
}

/// Where `map` sends container ID `ct` of `kind`, if anywhere.
pub fn lookup(map: &[IdmapEntry], kind: IdKind, ct: u64) -> Option<u64> {
    map.iter()
        .find(|e| e.kind == kind && e.ct <= ct && ct < e.ct.saturating_add(e.len))
        .map(|e| e.host + (ct - e.ct))
}

/// True when `map` maps container uid 0 and gid 0: LXC needs both.
pub fn maps_root(map: &[IdmapEntry]) -> bool {
    IdKind::ALL.iter().all(|&k| lookup(map, k, 0).is_some())
}

/// The passthroughs `map` does not already give, each with what the map
/// does with its first differing ID instead.
pub fn unmet<'a>(
    map: &[IdmapEntry],
    passthroughs: &'a [Passthrough],
) -> Vec<(&'a Passthrough, String)> {
    let mut sorted: Vec<&IdmapEntry> = map.iter().collect();
    sorted.sort_by_key(|e| (e.kind, e.ct));
    let mut out = Vec::new();
    'each: for p in passthroughs {
        let mut ct = p.ct;
        let end = p.ct.saturating_add(p.len);
        while ct < end {
            let at = sorted.partition_point(|e| (e.kind, e.ct) <= (p.kind, ct));
            let e = at
                .checked_sub(1)
                .map(|i| sorted[i])
                .filter(|e| e.kind == p.kind && ct < e.ct.saturating_add(e.len));
            let want = p.host + (ct - p.ct);
            match e {
                Some(e) if e.host + (ct - e.ct) == want => {
                    ct = e.ct.saturating_add(e.len);
                }
                Some(e) => {
                    out.push((
                        p,
                        format!(
                            "entry '{e}' maps container {} {ct} to host {} {}, not {want}",
                            p.kind.word(),
                            p.kind.word(),
                            e.host + (ct - e.ct)
                        ),
                    ));
                    continue 'each;
                }
                None => {
                    out.push((p, format!("no entry maps container {} {ct}", p.kind.word())));
                    continue 'each;
                }
            }
        }
    }
    out
}

/// One LXD/Incus `raw.idmap` line: `uid|gid|both HOST[-HOST] CT[-CT]`
/// (inclusive ranges, host side first, both sides the same size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawIdmap {
    pub kinds: Vec<IdKind>,
    pub host: IdRange,
    pub ct: IdRange,
}

impl RawIdmap {
    pub fn parse(line: &str) -> Result<RawIdmap, String> {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        let [kind, host, ct] = f.as_slice() else {
            return Err(format!(
                "'{line}' is not a raw.idmap line; the form is 'uid|gid|both HOST[-HOST] CONTAINER[-CONTAINER]', like \"both 1000 1000\""
            ));
        };
        let kinds = match *kind {
            "uid" => vec![IdKind::Uid],
            "gid" => vec![IdKind::Gid],
            "both" => vec![IdKind::Uid, IdKind::Gid],
            other => return Err(format!("'{line}': '{other}' is not uid, gid or both")),
        };
        let host = parse_inclusive(line, host)?;
        let ct = parse_inclusive(line, ct)?;
        if host.len() != ct.len() {
            return Err(format!(
                "'{line}': the host side has {} IDs and the container side {}; both sides must be the same size",
                host.len(),
                ct.len()
            ));
        }
        Ok(RawIdmap { kinds, host, ct })
    }

    pub fn passthroughs(&self, reason: &str) -> Vec<Passthrough> {
        self.kinds
            .iter()
            .map(|&kind| Passthrough {
                kind,
                ct: self.ct.start,
                host: self.host.start,
                len: self.ct.len(),
                reason: reason.to_string(),
            })
            .collect()
    }
}

/// `N` or `A-B` (inclusive), each below [`ID_LIMIT`].
fn parse_inclusive(line: &str, s: &str) -> Result<IdRange, String> {
    let num = |t: &str| -> Result<u64, String> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "'{line}': '{s}' is not an ID or an ID range like 1000-1009"
            ));
        }
        match t.parse::<u64>() {
            Ok(n) if n < ID_LIMIT => Ok(n),
            _ => Err(format!(
                "'{line}': {t} is too large; the largest ID a map may use is {}",
                ID_LIMIT - 1
            )),
        }
    };
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let n = num(s)?;
            (n, n)
        }
    };
    if b < a {
        return Err(format!(
            "'{line}': the range {s} runs backwards; write the lower ID first"
        ));
    }
    Ok(IdRange {
        start: a,
        end: b + 1,
    })
}

/// Renders entries as `lxc.idmap` values.
pub fn render_values(map: &[IdmapEntry]) -> Vec<String> {
    map.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    fn e(s: &str) -> IdmapEntry {
        IdmapEntry::parse(s).unwrap()
    }

    fn map(lines: &[&str]) -> Vec<IdmapEntry> {
        lines.iter().map(|l| e(l)).collect()
    }

    fn show(m: &[IdmapEntry]) -> Vec<String> {
        render_values(m)
    }

    fn pt(kind: IdKind, ct: u64, host: u64, len: u64) -> Passthrough {
        Passthrough {
            kind,
            ct,
            host,
            len,
            reason: format!("test {ct}"),
        }
    }

    #[rstest]
    // The vectors.
    #[case::gid_20(&[pt(IdKind::Gid, 20, 20, 1)], &["u 0 100000 65536", "g 0 100000 20", "g 20 20 1", "g 21 100021 65515"])]
    #[case::uid_pair_merges(&[pt(IdKind::Uid, 1000, 1000, 1), pt(IdKind::Uid, 1001, 1001, 1)], &["u 0 100000 1000", "u 1000 1000 2", "u 1002 101002 64534", "g 0 100000 65536"])]
    #[case::last_id_no_trailer(&[pt(IdKind::Gid, 65535, 65535, 1)], &["u 0 100000 65536", "g 0 100000 65535", "g 65535 65535 1"])]
    #[case::first_id(&[pt(IdKind::Gid, 0, 1000, 1)], &["u 0 100000 65536", "g 0 1000 1", "g 1 100001 65535"])]
    #[case::ct_106_to_host_104(&[pt(IdKind::Gid, 106, 104, 1)], &["u 0 100000 65536", "g 0 100000 106", "g 106 104 1", "g 107 100107 65429"])]
    #[case::beyond_base(&[pt(IdKind::Uid, 65536, 65536, 1)], &["u 0 100000 65536", "u 65536 65536 1", "g 0 100000 65536"])]
    #[case::straddles_the_end(&[pt(IdKind::Uid, 65530, 2000, 10)], &["u 0 100000 65530", "u 65530 2000 10", "g 0 100000 65536"])]
    #[case::identity_with_base_collapses(&[pt(IdKind::Uid, 5, 100005, 1)], &["u 0 100000 65536", "g 0 100000 65536"])]
    #[case::duplicates_collapse(&[pt(IdKind::Gid, 20, 20, 1), pt(IdKind::Gid, 20, 20, 1)], &["u 0 100000 65536", "g 0 100000 20", "g 20 20 1", "g 21 100021 65515"])]
    #[case::overlapping_same_offset_merge(&[pt(IdKind::Uid, 10, 10, 5), pt(IdKind::Uid, 12, 12, 10)], &["u 0 100000 10", "u 10 10 12", "u 22 100022 65514", "g 0 100000 65536"])]
    #[case::two_holes(&[pt(IdKind::Gid, 20, 20, 1), pt(IdKind::Gid, 44, 44, 1)], &["u 0 100000 65536", "g 0 100000 20", "g 20 20 1", "g 21 100021 23", "g 44 44 1", "g 45 100045 65491"])]
    #[case::none(&[], &["u 0 100000 65536", "g 0 100000 65536"])]
    fn computes_on_the_pve_default(#[case] pts: &[Passthrough], #[case] want: &[&str]) {
        assert_eq!(show(&compute(&pve_default(), pts).unwrap()), want);
    }

    // Incus `shared/idmap` AddSafe cases, base u 0 1000 1000.
    #[rstest]
    #[case::split(pt(IdKind::Uid, 500, 500, 10), &["u 0 1000 500", "u 500 500 10", "u 510 1510 490"])]
    #[case::lower(pt(IdKind::Uid, 0, 500, 10), &["u 0 500 10", "u 10 1010 990"])]
    #[case::upper(pt(IdKind::Uid, 995, 500, 10), &["u 0 1000 995", "u 995 500 10"])]
    fn incus_add_safe(#[case] p: Passthrough, #[case] want: &[&str]) {
        assert_eq!(
            show(&compute(&map(&["u 0 1000 1000"]), &[p]).unwrap()),
            want
        );
    }

    // Incus `Intersects`, at the 65535/65536 boundary.
    #[rstest]
    #[case("u 0 231071 65536", true)]
    #[case("u 0 231072 65536", true)]
    #[case("u 65535 231072 65536", true)]
    #[case("u 65536 231072 65536", false)]
    fn incus_intersects(#[case] other: &str, #[case] clash: bool) {
        let m = map(&["u 0 165536 65536", other]);
        assert_eq!(validate(&m).is_err(), clash, "{other}");
    }

    // pve-container's validate_id_maps tests.
    #[rstest]
    #[case::one_user(&["u 0 100000 1005", "g 0 100000 1007", "u 1005 1005 1", "g 1007 1007 1", "u 1006 101006 64530", "g 1008 101008 64528"])]
    #[case::ranges(&["u 3000 103000 60000", "u 2000 1000 1000", "u 0 100000 2000", "g 2000 102000 63534", "g 1000 2000 1000", "g 0 100000 1000", "u 63000 263000 2536", "g 65534 365534 2"])]
    #[case::wiki_1005(&["u 0 100000 1005", "g 0 100000 1005", "u 1005 1005 1", "g 1005 1005 1", "u 1006 101006 64530", "g 1006 101006 64530"])]
    fn pve_valid(#[case] lines: &[&str]) {
        assert_eq!(validate(&map(lines)), Ok(()));
    }

    #[rstest]
    #[case::host_twice(&["u 0 100000 1005", "u 1005 1005 2", "u 1007 101007 992", "u 11000 1000 10"], "invalid map entry 'u 1005 1005 2': host uid 1005 is also mapped by entry 'u 11000 1000 10'")]
    #[case::ct_twice(&["u 0 100000 65536", "u 1005 1005 1", "u 1006 201006 64530"], "invalid map entry 'u 1005 1005 1': container uid 1005 is also mapped by entry 'u 0 100000 65536'")]
    #[case::three_way_first(&["u 5 100000 6", "u 0 200000 11", "u 3 300000 2"], "invalid map entry 'u 3 300000 2': container uid 3 is also mapped by entry 'u 0 200000 11'")]
    // pve-container misses this pair; we do not.
    #[case::three_way_second(&["u 5 100000 6", "u 0 200000 11", "u 3 300000 2"], "invalid map entry 'u 5 100000 6': container uid 5 is also mapped by entry 'u 0 200000 11'")]
    #[case::gid_ct(&["g 0 100000 1001", "g 1000 1000 10"], "invalid map entry 'g 1000 1000 10': container gid 1000 is also mapped by entry 'g 0 100000 1001'")]
    #[case::gid_host(&["g 0 100000 1000", "g 2000 102000 1000", "g 3500 99500 5000"], "invalid map entry 'g 0 100000 1000': host gid 100000 is also mapped by entry 'g 3500 99500 5000'")]
    #[case::host_zero(&["u 0 0 1"], "invalid map entry 'u 0 0 1': it maps host uid 0 (host root)")]
    #[case::zero_len(&["g 5 5 0"], "invalid map entry 'g 5 5 0': zero length")]
    #[case::past_2_32(&["u 4294967295 100000 2"], "invalid map entry 'u 4294967295 100000 2': container uids reach 4294967295")]
    #[case::host_past_2_32(&["g 0 4294967290 7"], "host gids reach 4294967295")]
    fn pve_invalid(#[case] lines: &[&str], #[case] want: &str) {
        let problems = validate(&map(lines)).unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "{problems:#?} lacks {want}"
        );
    }

    #[test]
    fn merged_reasons_stay_short_and_unique() {
        let same = [
            Passthrough::same(IdKind::Gid, 20, "serial device bound: /dev/a"),
            Passthrough::same(IdKind::Gid, 20, "serial device bound: /dev/a"),
            Passthrough::same(IdKind::Gid, 21, "policy line 1"),
            Passthrough::same(IdKind::Gid, 22, "policy line 12"),
        ];
        let m = merge_passthroughs(&same).unwrap();
        assert_eq!(
            m[0].reason,
            "serial device bound: /dev/a; policy line 1; policy line 12"
        );
        assert_eq!(m[0].len, 3);
        // A run of 5,000 adjacent IDs from 5,000 lines: one passthrough, a
        // bounded reason.
        let run: Vec<Passthrough> = (0..5000)
            .map(|i| Passthrough::same(IdKind::Uid, 1000 + i, format!("policy line {i}")))
            .collect();
        let m = merge_passthroughs(&run).unwrap();
        assert_eq!((m.len(), m[0].ct, m[0].len), (1, 1000, 5000));
        assert!(m[0].reason.starts_with("policy line 0; policy line 1; "));
        assert!(m[0].reason.ends_with("; and more"), "{}", m[0].reason);
        assert!(m[0].reason.len() <= REASON_MAX + MORE.len());
    }

    #[test]
    fn idmap_whitespace_is_perls() {
        // pve-container: `^([ug])\s+(\d+)\s+(\d+)\s+(\d+)\s*$`; `\s` has the vertical tab.
        let e = IdmapEntry::parse("g\x0b20\t20\x0c1").unwrap();
        assert_eq!(e, IdmapEntry::new(IdKind::Gid, 20, 20, 1));
        assert!(IdmapEntry::parse("g\u{a0}20 20 1").is_err());
        assert!(IdmapEntry::parse("g 20 20 1\u{a0}").is_err());
    }

    #[test]
    fn types_do_not_clash_with_each_other() {
        assert_eq!(
            validate(&map(&["u 0 100000 65536", "g 0 100000 65536"])),
            Ok(())
        );
    }

    /// The kernel's limit, first + count <= 4294967295 on both sides (see
    /// [`ID_LIMIT`] for what `unshare -U` showed on this machine).
    #[rstest]
    #[case::both_last(&["u 4294967294 4294967294 1"], None)]
    #[case::ct_last(&["g 4294967294 200000 1"], None)]
    #[case::host_last(&["g 0 4294967294 1"], None)]
    #[case::ends_at_limit(&["u 4294967293 4294967293 2"], None)]
    #[case::both_reserved(&["u 4294967295 4294967295 1"], Some("container uids reach 4294967295"))]
    #[case::ct_reserved(&["g 4294967295 200000 1"], Some("container gids reach 4294967295"))]
    #[case::host_reserved(&["u 0 4294967295 1"], Some("host uids reach 4294967295"))]
    #[case::host_range_reaches(&["u 0 4294967294 2"], Some("host uids reach 4294967295"))]
    #[case::ct_range_reaches(&["g 4294967293 300000 3"], Some("container gids reach 4294967295"))]
    #[case::count_wraps_u64(&["u 1 1 18446744073709551615"], Some("container uids reach 4294967295"))]
    fn the_top_of_the_id_range(#[case] lines: &[&str], #[case] want: Option<&str>) {
        match (validate(&map(lines)), want) {
            (Ok(()), None) => {}
            (Err(p), Some(w)) => assert!(p.iter().any(|p| p.contains(w)), "{p:#?} lacks {w}"),
            (got, want) => panic!("{lines:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn more_than_340_lines_per_kind_is_refused() {
        let ok: Vec<IdmapEntry> = (0..340)
            .map(|i| IdmapEntry::new(IdKind::Uid, i * 2, 1000 + i * 2, 1))
            .collect();
        assert_eq!(validate(&ok), Ok(()));
        let mut too_many = ok.clone();
        too_many.push(IdmapEntry::new(IdKind::Uid, 5000, 9000, 1));
        let p = validate(&too_many).unwrap_err();
        assert!(p[0].starts_with("341 'u' lines"), "{p:?}");
        // 340 of each kind is fine.
        let mut both = ok.clone();
        both.extend(ok.iter().map(|e| IdmapEntry {
            kind: IdKind::Gid,
            ..*e
        }));
        assert_eq!(validate(&both), Ok(()));
    }

    #[rstest]
    #[case::same_ct_other_host(&[pt(IdKind::Gid, 20, 20, 1), pt(IdKind::Gid, 20, 21, 1)], "container gid 20 is wanted on host gid 20 (test 20) and on host gid 21 (test 20)")]
    #[case::same_host_other_ct(&[pt(IdKind::Uid, 1000, 1000, 1), pt(IdKind::Uid, 2000, 1000, 1)], "host uid 1000 is wanted as container uid 1000 (test 1000) and as container uid 2000 (test 2000)")]
    fn conflicting_passthroughs_name_both(#[case] pts: &[Passthrough], #[case] want: &str) {
        let err = compute(&pve_default(), pts).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }

    #[test]
    fn host_id_inside_the_base_range_is_refused() {
        // Container 20 -> host 100050: host 100050 is also container 50's.
        let err = compute(&pve_default(), &[pt(IdKind::Gid, 20, 100050, 1)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("host gid 100050 is also mapped by entry"),
            "{err}"
        );
        let err = compute(&pve_default(), &[pt(IdKind::Gid, 20, 0, 1)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("host gid 0"), "{err}");
    }

    #[rstest]
    #[case("u 0 100000 65536", Ok(IdmapEntry::new(IdKind::Uid, 0, 100000, 65536)))]
    #[case("g\t20  20 1 ", Ok(IdmapEntry::new(IdKind::Gid, 20, 20, 1)))]
    #[case("x 0 1 1", Err(()))]
    #[case("u 0 1", Err(()))]
    #[case("u 0 1 1 1", Err(()))]
    #[case("u -1 1 1", Err(()))]
    #[case("u0 1 1", Err(()))]
    #[case("u 0 1 99999999999999999999999", Err(()))]
    fn parses_lxc_idmap(#[case] s: &str, #[case] want: Result<IdmapEntry, ()>) {
        assert_eq!(IdmapEntry::parse(s).map_err(|_| ()), want);
    }

    #[rstest]
    #[case("both 1000 1000", &["u 1000 1000 1", "g 1000 1000 1"])]
    #[case("gid 44 44", &["g 44 44 1"])]
    #[case("uid 1005 1000", &["u 1000 1005 1"])]
    #[case("both 2000-2009 2000-2009", &["u 2000 2000 10", "g 2000 2000 10"])]
    #[case("uid 4294967294 5", &["u 5 4294967294 1"])]
    #[case("gid 4294967294 4294967294", &["g 4294967294 4294967294 1"])]
    #[case("both 4294967290-4294967294 0-4", &["u 0 4294967290 5", "g 0 4294967290 5"])]
    fn parses_raw_idmap(#[case] s: &str, #[case] want: &[&str]) {
        let r = RawIdmap::parse(s).unwrap();
        let got: Vec<String> = r
            .passthroughs("x")
            .iter()
            .map(|p| p.entry().to_string())
            .collect();
        assert_eq!(got, want);
    }

    #[rstest]
    #[case("both 1000", "is not a raw.idmap line")]
    #[case("user 1 1", "'user' is not uid, gid or both")]
    #[case("uid 1-3 1-2", "the host side has 3 IDs and the container side 2")]
    #[case("uid 3-1 3-1", "runs backwards")]
    #[case("uid 4294967296 1", "too large")]
    #[case(
        "uid 4294967295 4294967295",
        "4294967295 is too large; the largest ID a map may use is 4294967294"
    )]
    #[case("gid 5 4294967295", "4294967295 is too large")]
    #[case("both 4294967290-4294967295 0-5", "4294967295 is too large")]
    #[case("uid x 1", "is not an ID")]
    fn raw_idmap_errors(#[case] s: &str, #[case] want: &str) {
        let e = RawIdmap::parse(s).unwrap_err();
        assert!(e.contains(want), "{e}");
    }

    #[test]
    fn unmet_names_what_the_map_does_instead() {
        let wiki = map(&[
            "u 0 100000 1005",
            "g 0 100000 1005",
            "u 1005 1005 1",
            "g 1005 1005 1",
            "u 1006 101006 64530",
            "g 1006 101006 64530",
        ]);
        assert!(unmet(&wiki, &[pt(IdKind::Uid, 1005, 1005, 1)]).is_empty());
        let want = [pt(IdKind::Gid, 20, 20, 1)];
        let u = unmet(&wiki, &want);
        assert_eq!(
            u[0].1,
            "entry 'g 0 100000 1005' maps container gid 20 to host gid 100020, not 20"
        );
        let want = [pt(IdKind::Gid, 70000, 70000, 1)];
        assert_eq!(
            unmet(&wiki, &want)[0].1,
            "no entry maps container gid 70000"
        );
        // A passthrough spread over two lines that continue each other.
        let split = map(&[
            "g 0 100000 20",
            "g 20 20 1",
            "g 21 21 1",
            "g 22 100022 65514",
        ]);
        assert!(unmet(&split, &[pt(IdKind::Gid, 20, 20, 2)]).is_empty());
    }

    fn arb_passthroughs() -> impl Strategy<Value = Vec<Passthrough>> {
        // Host IDs below 100000 so they never land in the base's host range.
        prop::collection::vec((prop::bool::ANY, 0u64..65536, 1u64..8), 0..40).prop_map(|v| {
            v.into_iter()
                .map(|(u, id, len)| {
                    let kind = if u { IdKind::Uid } else { IdKind::Gid };
                    let id = id.min(65536 - len).max(1);
                    Passthrough::same(kind, id, "prop").with_len(len)
                })
                .collect()
        })
    }

    impl Passthrough {
        fn with_len(mut self, len: u64) -> Passthrough {
            self.len = len;
            self
        }
    }

    proptest! {
        #[test]
        fn hole_punching_invariants(pts in arb_passthroughs()) {
            let out = compute(&pve_default(), &pts).unwrap();
            prop_assert_eq!(validate(&out), Ok(()));
            prop_assert!(out.iter().all(|e| e.len > 0));
            for kind in IdKind::ALL {
                let mut of_kind: Vec<&IdmapEntry> = out.iter().filter(|e| e.kind == kind).collect();
                of_kind.sort_by_key(|e| e.ct);
                // Covers 0..65536 without gaps.
                let mut next = 0;
                for e in &of_kind {
                    prop_assert_eq!(e.ct, next);
                    next = e.ct + e.len;
                }
                prop_assert_eq!(next, 65536);
                // Adjacent lines never continue each other (merged).
                for w in of_kind.windows(2) {
                    prop_assert!(w[0].host + w[0].len != w[1].host);
                }
                // Every line lies wholly inside the passed IDs (then it is
                // 1:1) or wholly outside (then host = base + ct).
                let passed = crate::model::idset::union(
                    pts.iter()
                        .filter(|p| p.kind == kind)
                        .map(|p| IdRange::new(p.ct, p.len)),
                );
                for e in &of_kind {
                    let r = e.ct_range();
                    let inside = passed.iter().any(|p| p.start <= r.start && r.end <= p.end);
                    let touches = passed.iter().any(|p| p.overlaps(&r));
                    if inside {
                        prop_assert_eq!(e.host, e.ct, "{}", e);
                    } else {
                        prop_assert!(!touches, "{} is partly passed", e);
                        prop_assert_eq!(e.host, PVE_BASE_HOST + e.ct, "{}", e);
                    }
                }
            }
            // Every passthrough is met.
            prop_assert!(unmet(&out, &pts).is_empty());
            // Idempotent: punching again changes nothing.
            prop_assert_eq!(compute(&out, &pts).unwrap(), out);
        }

        #[test]
        fn shifted_passthroughs_conflict_or_are_met(
            v in prop::collection::vec((prop::bool::ANY, 0u64..70_000, 1u64..50), 0..30),
        ) {
            // Distinct host regions, so only container sides can clash.
            let pts: Vec<Passthrough> = v
                .iter()
                .enumerate()
                .map(|(i, &(u, ct, len))| Passthrough {
                    kind: if u { IdKind::Uid } else { IdKind::Gid },
                    ct,
                    host: 200_000 + i as u64 * 100,
                    len,
                    reason: format!("p{i}"),
                })
                .collect();
            let clash = pts.iter().enumerate().any(|(i, a)| {
                pts[..i].iter().any(|b| {
                    a.kind == b.kind && a.entry().ct_range().overlaps(&b.entry().ct_range())
                })
            });
            match compute(&pve_default(), &pts) {
                Err(e) => prop_assert!(clash, "unexpected error {}", e),
                Ok(out) => {
                    prop_assert!(!clash);
                    prop_assert_eq!(validate(&out), Ok(()));
                    prop_assert!(unmet(&out, &pts).is_empty());
                    for kind in IdKind::ALL {
                        for id in [0u64, 1, 1000, 65535] {
                            let passed = pts.iter().any(|p| p.kind == kind && p.ct <= id && id < p.ct + p.len);
                            if !passed {
                                prop_assert_eq!(lookup(&out, kind, id), Some(PVE_BASE_HOST + id));
                            }
                        }
                    }
                }
            }
        }

        #[test]
        fn parse_render_round_trip(kind in prop::bool::ANY, ct in 0u64..ID_LIMIT, host in 0u64..ID_LIMIT, len in 0u64..ID_LIMIT) {
            let e = IdmapEntry::new(if kind { IdKind::Uid } else { IdKind::Gid }, ct, host, len);
            prop_assert_eq!(IdmapEntry::parse(&e.to_string()), Ok(e));
        }
    }
}
