//! TURN attributes (RFC 8656 §18): CHANNEL-NUMBER (§18.1), LIFETIME (§18.2), DATA (§18.4),
//! REQUESTED-ADDRESS-FAMILY (§18.6), EVEN-PORT (§18.7), REQUESTED-TRANSPORT (§18.8),
//! DONT-FRAGMENT (§18.9, no value) and RESERVATION-TOKEN (§18.10).

use super::{attr, DecodeError, MessageBuilder};

/// The IANA protocol number of UDP, the only REQUESTED-TRANSPORT this relay offers.
pub const TRANSPORT_UDP: u8 = 17;

/// A channel number: 0x4000-0x7FFF, the range of RFC 5766 §11 that coturn, libwebrtc
/// (Chromium) and coturn's test client still draw from. RFC 8656 §12 narrowed client
/// bindings to 0x4000-0x4FFF ([`ChannelNumber::is_rfc8656`]); the server enforces that only
/// with `strict_channel_numbers`. Built only by [`ChannelNumber::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    pub const MIN: u16 = 0x4000;
    pub const MAX: u16 = 0x7FFF;
    /// Upper end of the RFC 8656 range.
    pub const RFC8656_MAX: u16 = 0x4FFF;

    pub fn parse(n: u16) -> Option<Self> {
        (Self::MIN..=Self::MAX).contains(&n).then_some(Self(n))
    }

    /// Whether the number is in RFC 8656's 0x4000-0x4FFF.
    pub fn is_rfc8656(self) -> bool {
        self.0 <= Self::RFC8656_MAX
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

/// Decodes CHANNEL-NUMBER: the number and 16 bits RFFU. Out-of-range numbers are `None`
/// (the server answers 400).
pub fn decode_channel_number(value: &[u8]) -> Result<Option<ChannelNumber>, DecodeError> {
    if value.len() != 4 {
        return Err(DecodeError::MalformedAttribute(attr::CHANNEL_NUMBER));
    }
    Ok(ChannelNumber::parse(u16::from_be_bytes([
        value[0], value[1],
    ])))
}

/// Decodes LIFETIME in seconds.
pub fn decode_lifetime(value: &[u8]) -> Result<u32, DecodeError> {
    let v: [u8; 4] = value
        .try_into()
        .map_err(|_| DecodeError::MalformedAttribute(attr::LIFETIME))?;
    Ok(u32::from_be_bytes(v))
}

/// Decodes REQUESTED-TRANSPORT: the protocol number.
pub fn decode_requested_transport(value: &[u8]) -> Result<u8, DecodeError> {
    if value.len() != 4 {
        return Err(DecodeError::MalformedAttribute(attr::REQUESTED_TRANSPORT));
    }
    Ok(value[0])
}

/// Decodes EVEN-PORT: whether the next-higher port should be reserved too (R bit).
pub fn decode_even_port(value: &[u8]) -> Result<bool, DecodeError> {
    match value.first() {
        Some(b) => Ok(b & 0x80 != 0),
        None => Err(DecodeError::MalformedAttribute(attr::EVEN_PORT)),
    }
}

/// Decodes RESERVATION-TOKEN (8 bytes).
pub fn decode_reservation_token(value: &[u8]) -> Result<u64, DecodeError> {
    let v: [u8; 8] = value
        .try_into()
        .map_err(|_| DecodeError::MalformedAttribute(attr::RESERVATION_TOKEN))?;
    Ok(u64::from_be_bytes(v))
}

/// Decodes REQUESTED-ADDRESS-FAMILY: 0x01 IPv4, 0x02 IPv6.
pub fn decode_address_family(value: &[u8]) -> Result<u8, DecodeError> {
    if value.len() != 4 {
        return Err(DecodeError::MalformedAttribute(
            attr::REQUESTED_ADDRESS_FAMILY,
        ));
    }
    Ok(value[0])
}

impl MessageBuilder<'_> {
    /// Appends LIFETIME.
    pub fn lifetime(&mut self, secs: u32) -> &mut Self {
        self.attr(attr::LIFETIME, &secs.to_be_bytes())
    }

    /// Appends RESERVATION-TOKEN.
    pub fn reservation_token(&mut self, token: u64) -> &mut Self {
        self.attr(attr::RESERVATION_TOKEN, &token.to_be_bytes())
    }
}
