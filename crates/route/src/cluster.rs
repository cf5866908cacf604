//! Redis Cluster's key slots: CRC16 (XMODEM) of the key, or of its hash
//! tag, modulo 16384, as the cluster specification defines them. Which
//! node serves a slot is the cluster's to say (its slot map, learnt at
//! run time), not a table's.

/// Slots of a Redis Cluster.
pub const SLOTS: usize = 16384;

/// The slot of `key`: the part between the first `{` and the first `}`
/// after it, when that part is not empty, else the whole key.
pub fn key_slot(key: &[u8]) -> u16 {
    (crc16(hash_tag(key)) as usize % SLOTS) as u16
}

/// What the cluster hashes of `key`.
fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, no
/// reflection, as the cluster specification's reference code (kept to 16
/// bits, unlike twemproxy's `crc16` hash over the same table).
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        crc << 8 ^ crate::hash::CRC16_TABLE[((crc >> 8) as u8 ^ b) as usize]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_is_the_specifications() {
        // The check value the specification gives.
        assert_eq!(crc16(b"123456789"), 0x31c3);
    }

    #[test]
    fn slots_match_what_redis_answers_to_cluster_keyslot() {
        // Values from CLUSTER KEYSLOT on redis-server 7.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(key_slot(b""), 0);
        // Hash tags: the first {...} with something inside.
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"{user1000}.followers"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
    }
}
