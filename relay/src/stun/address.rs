//! Address attributes: XOR-MAPPED-ADDRESS (RFC 8489 §14.2), XOR-PEER-ADDRESS (RFC 8656 §18.3)
//! and XOR-RELAYED-ADDRESS (RFC 8656 §18.5). All three share the XOR encoding of §14.2: the
//! port is XORed with the top 16 bits of the magic cookie, an IPv4 address with the cookie,
//! an IPv6 address with the cookie followed by the transaction id.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{DecodeError, MessageBuilder, MAGIC_COOKIE};

const FAMILY_V4: u8 = 0x01;
const FAMILY_V6: u8 = 0x02;

/// Decodes an XOR-*-ADDRESS value.
pub fn decode_xor(value: &[u8], tid: &[u8; 12], typ: u16) -> Result<SocketAddr, DecodeError> {
    if value.len() < 8 {
        return Err(DecodeError::MalformedAttribute(typ));
    }
    let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match value[1] {
        FAMILY_V4 if value.len() == 8 => {
            let mut ip = [0u8; 4];
            for i in 0..4 {
                ip[i] = value[4 + i] ^ cookie[i];
            }
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        FAMILY_V6 if value.len() == 20 => {
            let mut ip = [0u8; 16];
            for i in 0..16 {
                let k = if i < 4 { cookie[i] } else { tid[i - 4] };
                ip[i] = value[4 + i] ^ k;
            }
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => Err(DecodeError::MalformedAttribute(typ)),
    }
}

/// Encodes `addr` XORed into a stack buffer; returns the buffer and the used length.
pub fn encode_xor(addr: SocketAddr, tid: &[u8; 12]) -> ([u8; 20], usize) {
    let mut out = [0u8; 20];
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    out[2..4].copy_from_slice(&port.to_be_bytes());
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[1] = FAMILY_V4;
            for (i, b) in ip.octets().iter().enumerate() {
                out[4 + i] = b ^ cookie[i];
            }
            (out, 8)
        }
        IpAddr::V6(ip) => {
            out[1] = FAMILY_V6;
            for (i, b) in ip.octets().iter().enumerate() {
                let k = if i < 4 { cookie[i] } else { tid[i - 4] };
                out[4 + i] = b ^ k;
            }
            (out, 20)
        }
    }
}

impl MessageBuilder<'_> {
    /// Appends an XOR-encoded address attribute of type `typ`.
    pub fn xor_address(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        let tid = self.transaction_id();
        let (buf, len) = encode_xor(addr, &tid);
        self.attr(typ, &buf[..len])
    }
}
