//! The one stable hash, and the partition of a record key. It lives here, in the crate
//! every side of the API shares, so the server's edge, its key views and a client that
//! routes records to partition leaders itself all map a key to the same partition.
//!
//! Never change it: keys, and consumer groups (hashed to their offsets partition), would
//! lose their home on every node and in every release.

/// FNV-1a, 64-bit.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The partition of a record whose key is `key` (its bytes as stored: a JSON body's key
/// string as UTF-8, a base64 key decoded) in a topic of `partitions` partitions.
pub fn partition_of_key(key: &[u8], partitions: u32) -> u32 {
    // The remainder is below `partitions`, a u32: the cast cannot truncate.
    (fnv1a(key) % u64::from(partitions.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_never_change() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            partition_of_key(b"a", 3),
            (0xaf63_dc4c_8601_ec8c_u64 % 3) as u32
        );
        assert_eq!(partition_of_key(b"a", 0), 0, "no partitions counts as one");
    }
}
