//! Text attributes: USERNAME (RFC 8489 §14.3, < 513 bytes), REALM (§14.9, < 763 bytes),
//! NONCE (§14.10, < 763 bytes) and SOFTWARE (§14.14, < 763 bytes). Values are UTF-8 on the
//! wire; the server treats them as opaque bytes and only checks lengths.

use super::{attr, DecodeError};

/// Checks the RFC length limit of a text attribute and returns its bytes.
pub fn checked(typ: u16, value: &[u8]) -> Result<&[u8], DecodeError> {
    let max = match typ {
        attr::USERNAME => 513,
        attr::REALM | attr::NONCE | attr::SOFTWARE => 763,
        _ => usize::MAX,
    };
    if value.len() >= max {
        return Err(DecodeError::MalformedAttribute(typ));
    }
    Ok(value)
}
