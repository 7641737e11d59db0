//! `/etc/subuid` and `/etc/subgid`, read as shadow reads them: every line
//! kept verbatim, coverage as the union of the `root` and `0` ranges with
//! adjacent ranges chained, and the exact append that adds what is missing.

use crate::model::idmap::{IdKind, IdRange, ID_LIMIT};
use crate::model::idset;

/// Root must cover these host ranges in `/etc/subuid` (uids) or
/// `/etc/subgid` (gids). The apply step re-reads the file under lock and
/// re-plans from this, so a concurrent writer cannot be overwritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubidNeed {
    pub kind: IdKind,
    pub ranges: Vec<IdRange>,
}

/// One parsed range line: `owner:start:count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubidRange {
    /// 1-based line number.
    pub line: usize,
    pub owner: String,
    pub range: IdRange,
}

/// A subordinate-ID file. Only range lines are interpreted; the text is
/// never rebuilt, so nothing else can change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubidFile {
    text: String,
    ranges: Vec<SubidRange>,
}

/// True for the owners shadow treats as root here: the name or uid 0.
pub fn is_root_owner(owner: &str) -> bool {
    owner == "root" || (!owner.is_empty() && owner.bytes().all(|b| b == b'0'))
}

impl SubidFile {
    /// Parses text; never fails. Lines that are not `owner:start:count`
    /// with decimal numbers (comments, blanks, garbage) are kept and ignored.
    pub fn parse(text: &str) -> SubidFile {
        let mut ranges = Vec::new();
        for (i, line) in text.split('\n').enumerate() {
            let mut f = line.split(':');
            let (Some(owner), Some(start), Some(count), None) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            let num = |s: &str| -> Option<u64> {
                if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                s.parse().ok()
            };
            let (Some(start), Some(count)) = (num(start), num(count)) else {
                continue;
            };
            if owner.is_empty() || count == 0 || start + count > ID_LIMIT {
                continue;
            }
            ranges.push(SubidRange {
                line: i + 1,
                owner: owner.to_string(),
                range: IdRange::new(start, count),
            });
        }
        SubidFile {
            text: text.to_string(),
            ranges,
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn ranges(&self) -> &[SubidRange] {
        &self.ranges
    }

    /// Root's coverage: the union of `root` and `0` ranges, sorted, with
    /// overlapping and adjacent ranges chained into one.
    pub fn root_coverage(&self) -> Vec<IdRange> {
        let rs: Vec<IdRange> = self
            .ranges
            .iter()
            .filter(|r| is_root_owner(&r.owner))
            .map(|r| r.range)
            .collect();
        idset::union(rs)
    }

    /// The parts of `wanted` that root's ranges do not cover, merged.
    pub fn missing(&self, wanted: &[IdRange]) -> Vec<IdRange> {
        // No line can hold an ID at or past ID_LIMIT (this parser ignores
        // one, and the kernel refuses a map reaching it; `idmap::validate`
        // names such a map): never plan to append one.
        let want = idset::union(wanted.iter().map(|r| IdRange {
            start: r.start,
            end: r.end.min(ID_LIMIT),
        }));
        idset::difference(&want, &self.root_coverage())
    }

    /// The file with `root:start:count` lines appended for `missing`, a
    /// missing final newline repaired first. `None` when nothing is missing.
    pub fn with_appended(&self, missing: &[IdRange]) -> Option<String> {
        if missing.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(self.text.len() + missing.len() * 24);
        out.push_str(&self.text);
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        for r in missing {
            out.push_str(&format!("root:{}:{}\n", r.start, r.len()));
        }
        Some(out)
    }

    /// What a writer must do so root covers `wanted`: the new text, or
    /// `None` when it already does.
    pub fn plan(&self, wanted: &[IdRange]) -> Option<(String, Vec<IdRange>)> {
        let missing = self.missing(wanted);
        self.with_appended(&missing).map(|t| (t, missing))
    }
}

/// True when `/etc/nsswitch.conf` text has an active `subid:` line naming
/// a service other than `files`: shadow then asks that service and ignores
/// `/etc/subuid` and `/etc/subgid`.
pub fn nsswitch_has_subid(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.split('#').next().unwrap_or("").trim_start();
        l.strip_prefix("subid")
            .and_then(|rest| rest.trim_start().strip_prefix(':'))
            .is_some_and(|services| {
                services
                    .split_ascii_whitespace()
                    .next()
                    .is_some_and(|s| s != "files")
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    fn r(start: u64, len: u64) -> IdRange {
        IdRange::new(start, len)
    }

    #[rstest]
    #[case::covered("root:100000:65536\n", &[r(100000, 65536)], &[])]
    #[case::numeric_owner("0:20:1\nroot:100000:65536\n", &[r(20, 1)], &[])]
    #[case::chained("root:100000:1000\n0:101000:64536\n", &[r(100000, 65536)], &[])]
    #[case::overlapping_chain("root:100000:2000\nroot:101000:64536\n", &[r(100000, 65536)], &[])]
    #[case::gap("root:100000:10\nroot:100011:65525\n", &[r(100000, 65536)], &[r(100010, 1)])]
    #[case::missing_20("root:100000:65536\n", &[r(20, 1)], &[r(20, 1)])]
    #[case::other_user_does_not_count("lxd:20:1\nroot:100000:65536\n", &[r(20, 1)], &[r(20, 1)])]
    #[case::partly("root:20:2\n", &[r(19, 5)], &[r(19, 1), r(22, 2)])]
    #[case::merged_wants("", &[r(20, 1), r(21, 1), r(44, 1)], &[r(20, 2), r(44, 1)])]
    #[case::comment_ignored("#root:20:1\n", &[r(20, 1)], &[r(20, 1)])]
    #[case::garbage_ignored("root:20\nroot:x:1\nroot:20:1:9\n:20:1\nroot:20:0\n", &[r(20, 1)], &[r(20, 1)])]
    #[case::boundary_65535("root:100000:65535\n", &[r(100000, 65536)], &[r(165535, 1)])]
    #[case::boundary_exact("root:100000:65536\n", &[r(165535, 1)], &[])]
    #[case::past_2_32_ignored("root:4294967295:2\n", &[r(4294967294, 1)], &[r(4294967294, 1)])]
    #[case::last_id_counts("root:4294967294:1\n", &[r(4294967294, 1)], &[])]
    #[case::reaching_the_reserved_id_ignored("root:4294967294:2\n", &[r(4294967294, 1)], &[r(4294967294, 1)])]
    #[case::the_reserved_id_ignored("root:4294967295:1\n", &[r(4294967294, 1)], &[r(4294967294, 1)])]
    #[case::range_ending_at_the_limit("root:4294967290:5\n", &[r(4294967290, 5)], &[])]
    fn missing_ranges(#[case] text: &str, #[case] wanted: &[IdRange], #[case] want: &[IdRange]) {
        assert_eq!(SubidFile::parse(text).missing(wanted), want);
    }

    #[rstest]
    #[case::plain("root:100000:65536\n", "root:100000:65536\nroot:20:1\n")]
    #[case::no_final_newline("root:100000:65536", "root:100000:65536\nroot:20:1\n")]
    #[case::empty("", "root:20:1\n")]
    #[case::keeps_everything(
        "# c\n\nlxd:1:2\n garbage \nroot:100000:65536\n",
        "# c\n\nlxd:1:2\n garbage \nroot:100000:65536\nroot:20:1\n"
    )]
    fn appends_verbatim(#[case] text: &str, #[case] want: &str) {
        let (new, _) = SubidFile::parse(text).plan(&[r(20, 1)]).unwrap();
        assert_eq!(new, want);
        // Applying the plan again needs nothing.
        assert_eq!(SubidFile::parse(&new).plan(&[r(20, 1)]), None);
    }

    #[rstest]
    #[case::below(&[r(4294967290, 5)], Some("root:4294967290:5\n"))]
    #[case::reaching_the_limit(&[r(4294967290, 6)], Some("root:4294967290:5\n"))]
    #[case::only_the_reserved_id(&[r(4294967295, 1)], None)]
    #[case::past_2_32(&[r(4294967296, 10)], None)]
    fn never_appends_a_range_reaching_the_limit(
        #[case] wanted: &[IdRange],
        #[case] want: Option<&str>,
    ) {
        let f = SubidFile::parse("");
        let got = f.plan(wanted).map(|(t, _)| t);
        assert_eq!(got.as_deref(), want);
        if let Some(t) = got {
            // What was appended parses back as coverage.
            assert_eq!(SubidFile::parse(&t).plan(wanted), None);
        }
    }

    #[rstest]
    #[case("subid: sss\n", true)]
    #[case("  subid :sss\n", true)]
    #[case("subid: files\n", false)]
    #[case("subid:\n", false)]
    #[case("subid: sss # remote\n", true)]
    #[case("#subid: sss\n", false)]
    #[case("passwd: files\nsubids: x\n", false)]
    #[case("", false)]
    fn nsswitch(#[case] text: &str, #[case] want: bool) {
        assert_eq!(nsswitch_has_subid(text), want);
    }

    proptest! {
        #[test]
        fn append_covers_and_keeps_the_prefix(
            text in "[a-z0-9:#\n ]{0,200}",
            wanted in prop::collection::vec((0u64..200_000, 1u64..100), 0..10),
        ) {
            let f = SubidFile::parse(&text);
            let wanted: Vec<IdRange> = wanted.into_iter().map(|(s, l)| r(s, l)).collect();
            match f.plan(&wanted) {
                None => prop_assert!(f.missing(&wanted).is_empty()),
                Some((new, missing)) => {
                    prop_assert!(new.starts_with(&text));
                    prop_assert!(new.ends_with('\n'));
                    prop_assert!(!missing.is_empty());
                    let after = SubidFile::parse(&new);
                    prop_assert!(after.missing(&wanted).is_empty());
                    // Nothing appended that was already covered.
                    for m in &missing {
                        prop_assert!(f.root_coverage().iter().all(|c| !c.overlaps(m)));
                    }
                }
            }
        }
    }
}
