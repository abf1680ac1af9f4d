//! [`ByteRanges`]: a set of byte ranges of a file, kept sorted and merged.
//!
//! Every part of imgbuild that reports which bytes of the image it wrote (the ext4 write
//! tracker, the FAT I/O window, the apply stage, the packer's dirty map, the secret-file
//! mapper) speaks this one type, in one convention: `(offset, length)` pairs, sorted by offset,
//! where ranges that overlap *or touch* are merged into one and empty ranges are never stored.
//! So two sets holding the same bytes are equal, and consecutive ranges always have a gap of at
//! least one byte between them.
//!
//! Arithmetic saturates at `u64::MAX`: a range that would reach past the end of the `u64`
//! space is cut there instead of wrapping.

use std::fmt;

/// A sorted, merged set of byte ranges, each an `(offset, length)` pair with `length > 0`.
///
/// Invariant: for consecutive ranges `a`, `b`: `a.0 + a.1 < b.0` (no overlap, no contact).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ByteRanges {
    ranges: Vec<(u64, u64)>,
}

impl ByteRanges {
    /// An empty set.
    pub const fn new() -> ByteRanges {
        ByteRanges { ranges: Vec::new() }
    }

    /// Adds the `len` bytes at `offset`, merging with every range it overlaps or touches.
    /// An empty range (`len == 0`) adds nothing.
    ///
    /// Appending at or after the last range (the common case for sequential writers) takes
    /// constant time; elsewhere a binary search finds the place.
    pub fn insert(&mut self, offset: u64, len: u64) {
        let (mut start, mut end) = (offset, offset.saturating_add(len));
        if end == start {
            return;
        }
        if let Some(last) = self.ranges.last_mut() {
            let last_end = last.0.saturating_add(last.1);
            if start > last_end {
                self.ranges.push((start, end - start));
                return;
            }
            if start >= last.0 {
                last.1 = last_end.max(end) - last.0;
                return;
            }
        } else {
            self.ranges.push((start, end - start));
            return;
        }
        // Ranges that overlap or touch [start, end) are `first..last`.
        let first = self
            .ranges
            .partition_point(|&(o, l)| o.saturating_add(l) < start);
        let last = self.ranges.partition_point(|&(o, _)| o <= end);
        if first < last {
            start = start.min(self.ranges[first].0);
            let (o, l) = self.ranges[last - 1];
            end = end.max(o.saturating_add(l));
        }
        self.ranges
            .splice(first..last, std::iter::once((start, end - start)));
    }

    /// Adds every range of `other` (the union of both sets).
    pub fn merge(&mut self, other: &ByteRanges) {
        if other.ranges.is_empty() {
            return;
        }
        if self.ranges.is_empty() {
            self.ranges.clone_from(&other.ranges);
            return;
        }
        let mut all = Vec::with_capacity(self.ranges.len() + other.ranges.len());
        all.extend_from_slice(&self.ranges);
        all.extend_from_slice(&other.ranges);
        *self = ByteRanges::from_unsorted(all);
    }

    /// The set of the given ranges, in any order, possibly overlapping (sorts once, then merges).
    pub fn from_unsorted(mut ranges: Vec<(u64, u64)>) -> ByteRanges {
        ranges.retain(|&(offset, len)| offset.saturating_add(len) > offset);
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (offset, len) in ranges {
            let end = offset.saturating_add(len);
            match merged.last_mut() {
                Some((o, l)) if offset <= o.saturating_add(*l) => {
                    *l = o.saturating_add(*l).max(end) - *o;
                }
                _ => merged.push((offset, end - offset)),
            }
        }
        ByteRanges { ranges: merged }
    }

    /// The ranges, sorted and merged, as `(offset, length)` pairs.
    pub fn as_slice(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Iterates over the ranges as `(offset, length)` pairs, in ascending order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().copied()
    }

    /// Iterates over the ranges as half-open `start..end` ranges, in ascending order.
    pub fn spans(&self) -> impl ExactSizeIterator<Item = std::ops::Range<u64>> + '_ {
        self.ranges.iter().map(|&(o, l)| o..o.saturating_add(l))
    }

    /// Number of (merged) ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether the set holds no byte.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of bytes in the set (saturating).
    pub fn total_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .fold(0u64, |sum, &(_, l)| sum.saturating_add(l))
    }

    /// The same ranges moved `by` bytes up (from offsets inside a partition to offsets in the
    /// image file, say). Offsets saturate at `u64::MAX`.
    pub fn shifted(&self, by: u64) -> ByteRanges {
        let mut out = ByteRanges::new();
        for &(o, l) in &self.ranges {
            out.insert(o.saturating_add(by), l);
        }
        out
    }

    /// The part of the set inside the `len` bytes at `offset`.
    pub fn intersection(&self, offset: u64, len: u64) -> ByteRanges {
        let (start, end) = (offset, offset.saturating_add(len));
        let first = self
            .ranges
            .partition_point(|&(o, l)| o.saturating_add(l) <= start);
        let ranges = self.ranges[first..]
            .iter()
            .take_while(|&&(o, _)| o < end)
            .filter_map(|&(o, l)| {
                let (s, e) = (o.max(start), o.saturating_add(l).min(end));
                (s < e).then_some((s, e - s))
            })
            .collect();
        ByteRanges { ranges }
    }

    /// Whether any byte of the `len` bytes at `offset` is in the set.
    pub fn overlaps(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let end = offset.saturating_add(len);
        let i = self
            .ranges
            .partition_point(|&(o, l)| o.saturating_add(l) <= offset);
        self.ranges.get(i).is_some_and(|&(o, _)| o < end)
    }

    /// Whether the byte at `offset` is in the set.
    pub fn contains(&self, offset: u64) -> bool {
        self.overlaps(offset, 1)
    }
}

impl fmt::Debug for ByteRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.spans()).finish()
    }
}

impl Extend<(u64, u64)> for ByteRanges {
    fn extend<I: IntoIterator<Item = (u64, u64)>>(&mut self, iter: I) {
        for (offset, len) in iter {
            self.insert(offset, len);
        }
    }
}

impl FromIterator<(u64, u64)> for ByteRanges {
    fn from_iter<I: IntoIterator<Item = (u64, u64)>>(iter: I) -> ByteRanges {
        ByteRanges::from_unsorted(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a ByteRanges {
    type Item = (u64, u64);
    type IntoIter = std::iter::Copied<std::slice::Iter<'a, (u64, u64)>>;

    fn into_iter(self) -> Self::IntoIter {
        self.ranges.iter().copied()
    }
}

impl From<ByteRanges> for Vec<(u64, u64)> {
    fn from(r: ByteRanges) -> Vec<(u64, u64)> {
        r.ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(u64, u64)]) -> ByteRanges {
        let mut r = ByteRanges::new();
        for &(o, l) in pairs {
            r.insert(o, l);
        }
        r
    }

    /// The invariant every public operation must keep.
    fn assert_canonical(r: &ByteRanges) {
        assert!(r.iter().all(|(_, l)| l > 0), "empty range in {r:?}");
        assert!(
            r.as_slice().windows(2).all(|w| w[0].0 + w[0].1 < w[1].0),
            "not sorted and merged: {r:?}"
        );
    }

    /// Byte-by-byte model of a set over a small universe.
    fn model(pairs: &[(u64, u64)], size: usize) -> Vec<bool> {
        let mut bytes = vec![false; size];
        for &(o, l) in pairs {
            for b in &mut bytes[o as usize..(o + l) as usize] {
                *b = true;
            }
        }
        bytes
    }

    #[test]
    fn inserts_merge_overlapping_and_touching_ranges_in_any_order() {
        let r = set(&[
            (100, 10),
            (50, 10),
            (60, 5),
            (200, 0),
            (105, 100),
            (1000, 1),
            (0, 1),
        ]);
        assert_eq!(r.as_slice(), &[(0, 1), (50, 15), (100, 105), (1000, 1)]);
        assert_canonical(&r);
        let mut all = r.clone();
        all.insert(0, 2000);
        assert_eq!(all.as_slice(), &[(0, 2000)]);
        assert_eq!(set(&[(5, 0)]), ByteRanges::new());
    }

    #[test]
    fn insert_agrees_with_a_byte_model_and_with_from_unsorted() {
        // A fixed pseudo-random sequence (xorshift) of ranges in a 256-byte universe.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200 {
            let pairs: Vec<(u64, u64)> = (0..(next() % 12))
                .map(|_| (next() % 200, next() % 40))
                .collect();
            let r = set(&pairs);
            assert_canonical(&r);
            assert_eq!(model(r.as_slice(), 256), model(&pairs, 256), "{pairs:?}");
            assert_eq!(r, ByteRanges::from_unsorted(pairs.clone()));
            assert_eq!(r, pairs.iter().copied().collect::<ByteRanges>());
            let expected = model(&pairs, 256).iter().filter(|b| **b).count() as u64;
            assert_eq!(r.total_bytes(), expected);
            for b in 0..256u64 {
                assert_eq!(r.contains(b), model(&pairs, 256)[b as usize]);
            }
        }
    }

    #[test]
    fn merge_is_the_union() {
        let mut a = set(&[(0, 4), (10, 5)]);
        a.merge(&set(&[(4, 2), (12, 10), (100, 1)]));
        assert_eq!(a.as_slice(), &[(0, 6), (10, 12), (100, 1)]);
        let mut empty = ByteRanges::new();
        empty.merge(&a);
        assert_eq!(empty, a);
        a.merge(&ByteRanges::new());
        assert_eq!(empty, a);
    }

    #[test]
    fn shift_moves_every_range_and_saturates() {
        let r = set(&[(0, 4), (10, 5)]);
        assert_eq!(r.shifted(100).as_slice(), &[(100, 4), (110, 5)]);
        let top = set(&[(u64::MAX - 10, 5)]).shifted(20);
        assert!(top.is_empty(), "nothing is left below u64::MAX: {top:?}");
    }

    #[test]
    fn intersection_clips_to_the_window() {
        let r = set(&[(0, 10), (20, 10), (40, 10)]);
        assert_eq!(r.intersection(5, 20).as_slice(), &[(5, 5), (20, 5)]);
        assert_eq!(r.intersection(10, 10), ByteRanges::new());
        assert_eq!(r.intersection(0, u64::MAX), r);
        assert_eq!(r.intersection(45, 0), ByteRanges::new());
        assert_eq!(r.intersection(100, 5), ByteRanges::new());
    }

    #[test]
    fn overlaps_tests_any_shared_byte() {
        let r = set(&[(10, 10)]);
        assert!(!r.overlaps(0, 10));
        assert!(r.overlaps(0, 11));
        assert!(r.overlaps(19, 100));
        assert!(!r.overlaps(20, 100));
        assert!(!r.overlaps(15, 0));
        assert!(!ByteRanges::new().overlaps(0, u64::MAX));
    }

    #[test]
    fn saturates_at_the_end_of_the_u64_space() {
        let r = set(&[(u64::MAX - 1, 10), (u64::MAX - 5, 2)]);
        assert_eq!(r.as_slice(), &[(u64::MAX - 5, 2), (u64::MAX - 1, 1)]);
        assert_canonical(&r);
        assert_eq!(r.total_bytes(), 3);
        let spans: Vec<_> = r.spans().collect();
        assert_eq!(
            spans,
            vec![u64::MAX - 5..u64::MAX - 3, u64::MAX - 1..u64::MAX]
        );
        assert_eq!(format!("{r:?}"), format!("{spans:?}"));
    }
}
