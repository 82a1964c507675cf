//! ChannelData messages (RFC 8656 §12.4): a 4-byte header (channel number, length) then the
//! application data. Over UDP the padding is optional; over TCP each message is padded to a
//! multiple of 4 (§12.5), and [`frame_len`] cuts STUN messages and ChannelData out of a stream.

use super::turn::ChannelNumber;

/// A parsed ChannelData message borrowing its payload.
#[derive(Debug, Clone, Copy)]
pub struct ChannelData<'a> {
    pub channel: ChannelNumber,
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses a ChannelData message; `None` if the first two bits are not `01`, the number is
    /// outside 0x4000-0x7FFF or the length lies. (A number never bound is dropped by the
    /// server, RFC 8656 §12.4.)
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() < 4 {
            return None;
        }
        let channel = ChannelNumber::parse(u16::from_be_bytes([bytes[0], bytes[1]]))?;
        let len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
        let data = bytes.get(4..4 + len)?;
        Some(Self { channel, data })
    }
}

/// Writes the ChannelData header for `len` bytes of data.
pub fn header(channel: ChannelNumber, len: usize) -> [u8; 4] {
    let c = channel.get().to_be_bytes();
    let l = (len as u16).to_be_bytes();
    [c[0], c[1], l[0], l[1]]
}

/// Whether the first byte starts a ChannelData message (bits `01`, RFC 8656 §12).
pub fn is_channel_data(first: u8) -> bool {
    first & 0xC0 == 0x40
}

/// Length of the next frame on a stream transport given at least its first 4 bytes:
/// a STUN message is `20 + length`, ChannelData `4 + length` padded to 4 (RFC 8656 §12.5).
/// `None` when the bytes start neither (the connection is then closed).
pub fn frame_len(head: &[u8]) -> Option<usize> {
    if head.len() < 4 {
        return None;
    }
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    match head[0] & 0xC0 {
        0x00 => Some(20 + len),
        0x40 => Some(4 + ((len + 3) & !3)),
        _ => None,
    }
}
