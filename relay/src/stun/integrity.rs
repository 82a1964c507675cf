//! Integrity attributes: MESSAGE-INTEGRITY (RFC 8489 §14.5, HMAC-SHA1, computed by the caller:
//! the codec has no crypto), the long-term credential key of §9.2.2, and FINGERPRINT
//! (§14.7, CRC-32 XOR 0x5354554e).

/// Length of the MESSAGE-INTEGRITY value (HMAC-SHA1).
pub const MAC_LEN: usize = 20;

/// The FINGERPRINT value of `bytes` (the message up to, excluding, the attribute, with the
/// length field already covering it).
pub fn fingerprint(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes) ^ 0x5354_554E
}

/// Equality of two MACs without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The long-term credential key `MD5(username ":" realm ":" password)` (RFC 8489 §9.2.2;
/// OpaqueString processing is the identity for the ASCII names used here).
pub fn long_term_key(username: &[u8], realm: &[u8], password: &[u8]) -> [u8; 16] {
    use md5::Digest;
    let mut h = md5::Md5::new();
    h.update(username);
    h.update(b":");
    h.update(realm);
    h.update(b":");
    h.update(password);
    h.finalize().into()
}
