//! FNV-1a (64-bit): a fixed, specified hash, the same in every build and release — for what must
//! agree across processes and versions (resource versions, consistent hashing); std's
//! `DefaultHasher` promises neither.

/// The FNV-1a hash of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}
