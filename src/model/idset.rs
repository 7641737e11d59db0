//! Sets of IDs as sorted, disjoint, non-adjacent half-open ranges
//! `[start, end)`: union, difference and intersection, once, for the ID map
//! (hole punching) and the subordinate IDs (coverage). Pure.

use crate::model::idmap::IdRange;

/// The normal form of a set: sorted, empty ranges dropped, overlapping and
/// adjacent ranges merged (shadow chains adjacent subid ranges too).
pub fn union(ranges: impl IntoIterator<Item = IdRange>) -> Vec<IdRange> {
    let mut rs: Vec<IdRange> = ranges.into_iter().filter(|r| !r.is_empty()).collect();
    rs.sort();
    let mut out: Vec<IdRange> = Vec::with_capacity(rs.len());
    for r in rs {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// `a` without `b`, both in normal form ([`union`]); the result is too.
/// One pass over each: O(|a| + |b|).
pub fn difference(a: &[IdRange], b: &[IdRange]) -> Vec<IdRange> {
    let mut out = Vec::new();
    let mut j = 0;
    for r in a {
        while j < b.len() && b[j].end <= r.start {
            j += 1;
        }
        let mut cursor = r.start;
        let mut k = j;
        while k < b.len() && b[k].start < r.end {
            if b[k].start > cursor {
                out.push(IdRange {
                    start: cursor,
                    end: b[k].start,
                });
            }
            cursor = cursor.max(b[k].end);
            k += 1;
        }
        if cursor < r.end {
            out.push(IdRange {
                start: cursor,
                end: r.end,
            });
        }
    }
    out
}

/// What `a` and `b` (normal form) have in common; normal form.
pub fn intersection(a: &[IdRange], b: &[IdRange]) -> Vec<IdRange> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let start = a[i].start.max(b[j].start);
        let end = a[i].end.min(b[j].end);
        if start < end {
            out.push(IdRange { start, end });
        }
        if a[i].end < b[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    union(out)
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
    #[case::adjacent_chain(&[r(100_000, 65536), r(165_536, 1)], &[r(100_000, 65537)])]
    #[case::overlap(&[r(0, 10), r(5, 10)], &[r(0, 15)])]
    #[case::gap_kept(&[r(0, 10), r(11, 1)], &[r(0, 10), r(11, 1)])]
    #[case::empty_dropped(&[r(5, 0), r(7, 1)], &[r(7, 1)])]
    #[case::top_of_the_id_space(&[r(4_294_967_294, 1), r(4_294_967_295, 1)], &[r(4_294_967_294, 2)])]
    fn unions(#[case] input: &[IdRange], #[case] want: &[IdRange]) {
        assert_eq!(union(input.iter().copied()), want);
    }

    // The Incus boundary: 65535 is inside [0, 65536), 65536 is not.
    #[rstest]
    #[case::hole_in_the_middle(&[r(0, 65536)], &[r(20, 1)], &[r(0, 20), r(21, 65515)])]
    #[case::hole_at_the_start(&[r(0, 65536)], &[r(0, 1)], &[r(1, 65535)])]
    #[case::hole_at_the_last_id(&[r(0, 65536)], &[r(65535, 1)], &[r(0, 65535)])]
    #[case::hole_just_past(&[r(0, 65536)], &[r(65536, 1)], &[r(0, 65536)])]
    #[case::hole_covers_all(&[r(0, 65536)], &[r(0, 70000)], &[])]
    #[case::two_ranges_one_hole(&[r(0, 10), r(20, 10)], &[r(5, 20)], &[r(0, 5), r(25, 5)])]
    fn differences(#[case] a: &[IdRange], #[case] b: &[IdRange], #[case] want: &[IdRange]) {
        assert_eq!(difference(a, b), want);
    }

    #[rstest]
    #[case(&[r(0, 65536)], &[r(65535, 2)], &[r(65535, 1)])]
    #[case(&[r(0, 65536)], &[r(65536, 2)], &[])]
    #[case(&[r(0, 10), r(20, 10)], &[r(5, 20)], &[r(5, 5), r(20, 5)])]
    fn intersections(#[case] a: &[IdRange], #[case] b: &[IdRange], #[case] want: &[IdRange]) {
        assert_eq!(intersection(a, b), want);
    }

    fn set() -> impl Strategy<Value = Vec<IdRange>> {
        proptest::collection::vec((0u64..300, 0u64..40), 0..8)
            .prop_map(|v| union(v.into_iter().map(|(s, l)| r(s, l))))
    }

    fn members(s: &[IdRange]) -> std::collections::BTreeSet<u64> {
        s.iter().flat_map(|r| r.start..r.end).collect()
    }

    proptest! {
        /// Each operation agrees with the same one on explicit ID sets, and
        /// keeps the normal form.
        #[test]
        fn agree_with_sets_of_ids(a in set(), b in set()) {
            let (ma, mb) = (members(&a), members(&b));
            let d = difference(&a, &b);
            prop_assert_eq!(members(&d), &ma - &mb);
            prop_assert_eq!(union(d.clone()), d);
            let i = intersection(&a, &b);
            prop_assert_eq!(members(&i), &ma & &mb);
            let u = union(a.iter().chain(&b).copied());
            prop_assert_eq!(members(&u), &ma | &mb);
        }
    }
}
