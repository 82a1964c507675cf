//! Error attributes: ERROR-CODE (RFC 8489 §14.8) and UNKNOWN-ATTRIBUTES (§14.9), plus the
//! error codes STUN and TURN use (RFC 8489 §14.8, RFC 8656 §19).

use super::{attr, MessageBuilder};

/// A STUN/TURN error code with its reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    pub const BAD_REQUEST: Self = Self(400);
    pub const UNAUTHORIZED: Self = Self(401);
    pub const FORBIDDEN: Self = Self(403);
    pub const UNKNOWN_ATTRIBUTE: Self = Self(420);
    pub const ALLOCATION_MISMATCH: Self = Self(437);
    pub const STALE_NONCE: Self = Self(438);
    pub const ADDRESS_FAMILY_NOT_SUPPORTED: Self = Self(440);
    pub const WRONG_CREDENTIALS: Self = Self(441);
    pub const UNSUPPORTED_TRANSPORT: Self = Self(442);
    pub const PEER_ADDRESS_FAMILY_MISMATCH: Self = Self(443);
    pub const ALLOCATION_QUOTA_REACHED: Self = Self(486);
    pub const SERVER_ERROR: Self = Self(500);
    pub const INSUFFICIENT_CAPACITY: Self = Self(508);

    /// The reason phrase sent with the code.
    pub fn reason(self) -> &'static str {
        match self.0 {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            420 => "Unknown Attribute",
            437 => "Allocation Mismatch",
            438 => "Stale Nonce",
            440 => "Address Family not Supported",
            441 => "Wrong Credentials",
            442 => "Unsupported Transport Protocol",
            443 => "Peer Address Family Mismatch",
            486 => "Allocation Quota Reached",
            500 => "Server Error",
            508 => "Insufficient Capacity",
            _ => "Error",
        }
    }
}

/// Decodes an ERROR-CODE value into the numeric code.
pub fn decode_error_code(value: &[u8]) -> Option<u16> {
    if value.len() < 4 {
        return None;
    }
    Some(u16::from(value[2] & 0x07) * 100 + u16::from(value[3]))
}

impl MessageBuilder<'_> {
    /// Appends ERROR-CODE (class = hundreds, number = rest, then the reason phrase).
    pub fn error_code(&mut self, code: ErrorCode) -> &mut Self {
        let reason = code.reason().as_bytes();
        let mut v = [0u8; 64];
        v[2] = (code.0 / 100) as u8;
        v[3] = (code.0 % 100) as u8;
        let n = reason.len().min(60);
        v[4..4 + n].copy_from_slice(&reason[..n]);
        self.attr(attr::ERROR_CODE, &v[..4 + n])
    }

    /// Appends ERROR-CODE without a reason phrase (allowed: it is for humans), for
    /// unauthenticated answers that must stay small.
    pub fn error_code_bare(&mut self, code: ErrorCode) -> &mut Self {
        let v = [0, 0, (code.0 / 100) as u8, (code.0 % 100) as u8];
        self.attr(attr::ERROR_CODE, &v)
    }

    /// Appends UNKNOWN-ATTRIBUTES listing `types` (at most 16 are listed).
    pub fn unknown_attributes(&mut self, types: &[u16]) -> &mut Self {
        let mut v = [0u8; 32];
        let n = types.len().min(16);
        for (i, t) in types[..n].iter().enumerate() {
            v[2 * i..2 * i + 2].copy_from_slice(&t.to_be_bytes());
        }
        self.attr(attr::UNKNOWN_ATTRIBUTES, &v[..2 * n])
    }
}
