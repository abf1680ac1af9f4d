//! Dirty tracking: which byte ranges of the raw image were written since it was a copy of the
//! base image whose [`ChunkIndex`] we hold.

use crate::cache::ChunkIndex;
use crate::chunks::Hash;
use imgbuild_ranges::ByteRanges;
use std::ops::Range;

/// The base image's chunk hashes plus the byte ranges written since (sorted, merged).
///
/// A chunk whose byte range equals the base's chunk range and overlaps no written range still
/// has the base's content, so [`crate::compress_xz`] reuses the base hash without reading or
/// hashing it. Correctness rests on the caller: every write (and any change of the image length)
/// since the copy of the base must be [`mark`](DirtyMap::mark)ed.
#[derive(Debug, Clone)]
pub struct DirtyMap {
    base: ChunkIndex,
    ranges: ByteRanges,
}

impl DirtyMap {
    /// A map with no writes yet over the base image described by `base`.
    pub fn new(base: ChunkIndex) -> DirtyMap {
        DirtyMap {
            base,
            ranges: ByteRanges::new(),
        }
    }

    /// Records that `len` bytes at `offset` were written (empty writes are ignored).
    pub fn mark(&mut self, offset: u64, len: u64) {
        self.ranges.insert(offset, len);
    }

    /// Records every range of `ranges` as written.
    pub fn mark_all(&mut self, ranges: &ByteRanges) {
        self.ranges.merge(ranges);
    }

    /// The written ranges.
    pub fn ranges(&self) -> &ByteRanges {
        &self.ranges
    }

    /// The base image's chunk index.
    pub fn base(&self) -> &ChunkIndex {
        &self.base
    }

    /// The base hash of chunk `i` if `range` (its range in the current image) is exactly the
    /// base's chunk `i` and no written range overlaps it.
    pub(crate) fn clean_hash(&self, i: usize, range: &Range<u64>) -> Option<Hash> {
        let base = &self.base;
        let hash = *base.hashes.get(i)?;
        let base_end = (range.start + base.chunk_size).min(base.image_len);
        if range.start != i as u64 * base.chunk_size || range.end != base_end {
            return None;
        }
        let touched = self
            .ranges
            .overlaps(range.start, range.end.saturating_sub(range.start));
        (!touched).then_some(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> DirtyMap {
        DirtyMap::new(ChunkIndex::new(4096, 4 * 4096 + 100, vec![[0; 32]; 5]).expect("index"))
    }

    #[test]
    fn marks_are_recorded_as_the_byte_ranges_of_the_same_writes() {
        // Overlapping, touching, empty and out-of-order writes; how they merge is ByteRanges'
        // contract (tested in imgbuild-ranges): the map must record exactly that set.
        let writes: Vec<(u64, u64)> = (0..64u64)
            .map(|i| ((i * 37) % 1009, (i * 13) % 17))
            .collect();
        let mut m = map();
        for &(o, l) in &writes {
            m.mark(o, l);
        }
        let expected: ByteRanges = writes.iter().copied().collect();
        assert_eq!(m.ranges(), &expected);
        assert!(
            (2..writes.len()).contains(&expected.len()),
            "the writes must both merge and leave gaps: {expected:?}"
        );
        m.mark_all(&[(0, 2000)].into_iter().collect());
        assert_eq!(m.ranges().as_slice(), &[(0, 2000)]);
    }

    #[test]
    fn only_untouched_chunks_of_the_same_shape_are_clean() {
        let mut m = map();
        m.mark(4096 + 4095, 2);
        assert!(m.clean_hash(0, &(0..4096)).is_some());
        assert!(m.clean_hash(1, &(4096..8192)).is_none());
        assert!(m.clean_hash(2, &(8192..12288)).is_none());
        assert!(m.clean_hash(3, &(12288..16384)).is_some());
        assert!(m.clean_hash(4, &(16384..16484)).is_some());
        // The image grew: the base's short last chunk no longer matches.
        assert!(m.clean_hash(4, &(16384..20480)).is_none());
        assert!(m.clean_hash(5, &(20480..20481)).is_none());
    }
}
