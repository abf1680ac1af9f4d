//! Deterministic pseudo-random bytes for test data: not trivially compressible or aligned, and
//! the same on every run.

/// `len` pseudo-random bytes from an xorshift64 generator started at `state` (made odd so it is
/// never zero; hence the states `2k` and `2k + 1` give the same bytes).
pub fn xorshift_bytes(state: u64, len: usize) -> Vec<u8> {
    let mut x = state | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `len` pseudo-random bytes for `seed`: [`xorshift_bytes`] started at the seed times the
/// 64-bit golden ratio, so that neighbouring seeds give unrelated bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    xorshift_bytes(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        assert_eq!(noise(7, 1000), noise(7, 1000));
        assert_ne!(noise(7, 1000), noise(8, 1000));
        assert_eq!(xorshift_bytes(2, 100), xorshift_bytes(3, 100));
        assert_eq!(noise(1, 10).len(), 10);
    }
}
