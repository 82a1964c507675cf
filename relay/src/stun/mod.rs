//! Sans-IO STUN codec (RFC 8489) with the TURN additions of RFC 8656.
//!
//! Parsing is zero-copy: [`Message::parse`] validates the header and the attribute layout once
//! and hands out a borrowed view; attribute values are slices of the input. Building goes
//! through [`MessageBuilder`], which appends to a caller-owned `Vec<u8>` (reused across packets,
//! so the steady state allocates nothing). The codec has no crypto dependency: HMAC-SHA1 for
//! MESSAGE-INTEGRITY is passed in as a closure.
//!
//! One module per attribute family, each citing its RFC section: [`address`], [`integrity`],
//! [`errors`], [`text`], [`turn`], and ChannelData framing in [`channel_data`].

pub mod address;
pub mod channel_data;
pub mod errors;
pub mod integrity;
pub mod text;
pub mod turn;

pub use channel_data::ChannelData;

/// The magic cookie of RFC 8489 §5.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN header (RFC 8489 §5).
pub const HEADER_LEN: usize = 20;

/// Attribute type codes (RFC 8489 §18.3, RFC 8656 §18).
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    pub const SOFTWARE: u16 = 0x8022;
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    pub const FINGERPRINT: u16 = 0x8028;
    /// An attribute type below 0x8000 is comprehension-required (RFC 8489 §14).
    pub fn comprehension_required(t: u16) -> bool {
        t < 0x8000
    }
}

/// STUN methods used by TURN (RFC 8489 §18.2, RFC 8656 §17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Method {
    Binding = 0x001,
    Allocate = 0x003,
    Refresh = 0x004,
    Send = 0x006,
    Data = 0x007,
    CreatePermission = 0x008,
    ChannelBind = 0x009,
}

impl Method {
    fn from_u16(m: u16) -> Option<Self> {
        Some(match m {
            0x001 => Self::Binding,
            0x003 => Self::Allocate,
            0x004 => Self::Refresh,
            0x006 => Self::Send,
            0x007 => Self::Data,
            0x008 => Self::CreatePermission,
            0x009 => Self::ChannelBind,
            _ => return None,
        })
    }
}

/// Message class (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0,
            Class::Indication => 1,
            Class::Success => 2,
            Class::Error => 3,
        }
    }
}

/// Encodes method and class into the 14-bit message type (RFC 8489 §5, figure 3).
pub fn message_type(class: Class, method: Method) -> u16 {
    let m = method as u16;
    let c = class.bits();
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

fn split_type(t: u16) -> (u16, Class) {
    let m = (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2);
    let class = match ((t >> 4) & 1) | ((t >> 7) & 2) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (m, class)
}

/// Why bytes are not a STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than a header, or than the header's length field says.
    #[error("truncated")]
    Truncated,
    /// The first two bits are not zero or the magic cookie is wrong: not STUN.
    #[error("not a STUN message")]
    NotStun,
    /// The length is not a multiple of 4 or does not match the datagram.
    #[error("bad length")]
    BadLength,
    /// An attribute runs past the end of the message.
    #[error("bad attribute layout")]
    BadAttribute,
    /// FINGERPRINT present but not last, or wrong.
    #[error("bad fingerprint")]
    BadFingerprint,
    /// A method this codec does not know.
    #[error("unknown method {0:#x}")]
    UnknownMethod(u16),
    /// An attribute value has the wrong size or content.
    #[error("malformed attribute {0:#06x}")]
    MalformedAttribute(u16),
}

/// One attribute of a parsed message.
#[derive(Debug, Clone, Copy)]
pub struct Attribute<'a> {
    pub typ: u16,
    pub value: &'a [u8],
    /// Offset of the attribute header inside the message.
    pub offset: usize,
}

/// A validated STUN message borrowed from a receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    bytes: &'a [u8],
    method: Method,
    class: Class,
    integrity_offset: Option<usize>,
}

/// Whether `bytes` can be a STUN message (first two bits zero, magic cookie): the cheap test
/// that tells STUN from ChannelData on a shared port (RFC 8656 §12).
pub fn looks_like_stun(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN
        && bytes[0] & 0xC0 == 0
        && u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) == MAGIC_COOKIE
}

impl<'a> Message<'a> {
    /// Parses and validates one whole message (exactly `bytes`: a UDP datagram or a frame
    /// cut from a stream). Checks the FINGERPRINT when present (RFC 8489 §14.7).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() < HEADER_LEN {
            return Err(DecodeError::Truncated);
        }
        if !looks_like_stun(bytes) {
            return Err(DecodeError::NotStun);
        }
        let len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
        if !len.is_multiple_of(4) {
            return Err(DecodeError::BadLength);
        }
        if HEADER_LEN + len > bytes.len() {
            return Err(DecodeError::Truncated);
        }
        if HEADER_LEN + len != bytes.len() {
            return Err(DecodeError::BadLength);
        }
        let (m, class) = split_type(u16::from_be_bytes([bytes[0], bytes[1]]));
        let method = Method::from_u16(m).ok_or(DecodeError::UnknownMethod(m))?;
        let mut integrity_offset = None;
        let mut off = HEADER_LEN;
        while off < bytes.len() {
            if off + 4 > bytes.len() {
                return Err(DecodeError::BadAttribute);
            }
            let typ = u16::from_be_bytes([bytes[off], bytes[off + 1]]);
            let alen = u16::from_be_bytes([bytes[off + 2], bytes[off + 3]]) as usize;
            let end = off + 4 + alen;
            let padded = off + 4 + ((alen + 3) & !3);
            if padded > bytes.len() {
                return Err(DecodeError::BadAttribute);
            }
            match typ {
                attr::MESSAGE_INTEGRITY if integrity_offset.is_none() => {
                    if alen != integrity::MAC_LEN {
                        return Err(DecodeError::MalformedAttribute(typ));
                    }
                    integrity_offset = Some(off);
                }
                attr::FINGERPRINT => {
                    if alen != 4 || padded != bytes.len() {
                        return Err(DecodeError::BadFingerprint);
                    }
                    let want = u32::from_be_bytes([
                        bytes[off + 4],
                        bytes[off + 5],
                        bytes[off + 6],
                        bytes[off + 7],
                    ]);
                    if integrity::fingerprint(&bytes[..off]) != want {
                        return Err(DecodeError::BadFingerprint);
                    }
                }
                _ => {}
            }
            debug_assert!(end <= padded);
            off = padded;
        }
        Ok(Self {
            bytes,
            method,
            class,
            integrity_offset,
        })
    }

    pub fn method(&self) -> Method {
        self.method
    }

    pub fn class(&self) -> Class {
        self.class
    }

    /// The 96-bit transaction id (RFC 8489 §5).
    pub fn transaction_id(&self) -> &'a [u8; 12] {
        // Invariant: parse() checked bytes.len() >= 20, so 8..20 is 12 bytes.
        self.bytes[8..20].try_into().expect("header is 20 bytes")
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Attributes in order. Attributes after MESSAGE-INTEGRITY other than FINGERPRINT must
    /// be ignored (RFC 8489 §14.5); [`Self::attributes`] stops there, FINGERPRINT was
    /// already checked by parse.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            bytes: self.bytes,
            off: HEADER_LEN,
            stop: self.integrity_offset.map(|o| o + 4 + integrity::MAC_LEN),
        }
    }

    /// The first attribute of type `typ` (before MESSAGE-INTEGRITY).
    pub fn attribute(&self, typ: u16) -> Option<&'a [u8]> {
        self.attributes().find(|a| a.typ == typ).map(|a| a.value)
    }

    /// Whether the message ends with a FINGERPRINT (parse checked it is last and right).
    pub fn has_fingerprint(&self) -> bool {
        let n = self.bytes.len();
        n >= HEADER_LEN + 8
            && u16::from_be_bytes([self.bytes[n - 8], self.bytes[n - 7]]) == attr::FINGERPRINT
            && u16::from_be_bytes([self.bytes[n - 6], self.bytes[n - 5]]) == 4
    }

    /// Whether the message carries MESSAGE-INTEGRITY.
    pub fn has_integrity(&self) -> bool {
        self.integrity_offset.is_some()
    }

    /// Checks MESSAGE-INTEGRITY with `hmac` (HMAC-SHA1 keyed with the long-term or
    /// short-term key, fed the chunks in order). False when absent or wrong.
    pub fn verify_integrity(&self, hmac: impl FnOnce(&[&[u8]]) -> [u8; 20]) -> bool {
        let Some(off) = self.integrity_offset else {
            return false;
        };
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.bytes[..HEADER_LEN]);
        let covered = (off + 4 + integrity::MAC_LEN - HEADER_LEN) as u16;
        header[2..4].copy_from_slice(&covered.to_be_bytes());
        let mac = hmac(&[&header, &self.bytes[HEADER_LEN..off]]);
        integrity::constant_time_eq(&mac, &self.bytes[off + 4..off + 4 + integrity::MAC_LEN])
    }
}

/// Iterator over a message's attributes.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    bytes: &'a [u8],
    off: usize,
    stop: Option<usize>,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Attribute<'a>;
    fn next(&mut self) -> Option<Attribute<'a>> {
        if self.off + 4 > self.bytes.len() || self.stop.is_some_and(|s| self.off >= s) {
            return None;
        }
        let b = self.bytes;
        let typ = u16::from_be_bytes([b[self.off], b[self.off + 1]]);
        let alen = u16::from_be_bytes([b[self.off + 2], b[self.off + 3]]) as usize;
        // Layout was validated by parse(); still never index past the end.
        let value = b.get(self.off + 4..self.off + 4 + alen)?;
        let a = Attribute {
            typ,
            value,
            offset: self.off,
        };
        self.off += 4 + ((alen + 3) & !3);
        Some(a)
    }
}

/// Builds a message into a reused buffer (RFC 8489 §5, §14).
#[derive(Debug)]
pub struct MessageBuilder<'b> {
    buf: &'b mut Vec<u8>,
}

impl<'b> MessageBuilder<'b> {
    /// Starts a message: clears `buf` and writes the header.
    pub fn new(buf: &'b mut Vec<u8>, class: Class, method: Method, tid: &[u8; 12]) -> Self {
        buf.clear();
        buf.extend_from_slice(&message_type(class, method).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(tid);
        Self { buf }
    }

    fn set_len(&mut self, len: usize) {
        let l = (len as u16).to_be_bytes();
        self.buf[2] = l[0];
        self.buf[3] = l[1];
    }

    /// Appends an attribute with padding to 4 bytes.
    pub fn attr(&mut self, typ: u16, value: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        let pad = (4 - value.len() % 4) % 4;
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        let len = self.buf.len() - HEADER_LEN;
        self.set_len(len);
        self
    }

    /// The transaction id written in the header.
    pub fn transaction_id(&self) -> [u8; 12] {
        let mut t = [0u8; 12];
        t.copy_from_slice(&self.buf[8..20]);
        t
    }

    /// Appends MESSAGE-INTEGRITY computed by `hmac` over the message so far with the length
    /// field covering the attribute (RFC 8489 §14.5).
    pub fn integrity(&mut self, hmac: impl FnOnce(&[&[u8]]) -> [u8; 20]) -> &mut Self {
        let len = self.buf.len() - HEADER_LEN + 4 + integrity::MAC_LEN;
        self.set_len(len);
        let mac = hmac(&[&self.buf[..]]);
        self.buf
            .extend_from_slice(&attr::MESSAGE_INTEGRITY.to_be_bytes());
        self.buf
            .extend_from_slice(&(integrity::MAC_LEN as u16).to_be_bytes());
        self.buf.extend_from_slice(&mac);
        self
    }

    /// Appends FINGERPRINT (RFC 8489 §14.7); must be the last attribute.
    pub fn fingerprint(&mut self) -> &mut Self {
        let len = self.buf.len() - HEADER_LEN + 8;
        self.set_len(len);
        let crc = integrity::fingerprint(self.buf);
        self.buf.extend_from_slice(&attr::FINGERPRINT.to_be_bytes());
        self.buf.extend_from_slice(&4u16.to_be_bytes());
        self.buf.extend_from_slice(&crc.to_be_bytes());
        self
    }

    /// The encoded message.
    pub fn finish(self) -> &'b [u8] {
        self.buf
    }
}

#[cfg(test)]
mod tests;
