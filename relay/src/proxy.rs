//! PROXY protocol version 2 (HAProxy's `send-proxy-v2`; spec: haproxy.org
//! `doc/proxy-protocol.txt`, section 2.2) on the relay's TCP listeners, for deployments behind
//! an L4 load balancer: the header names the real client address, which then takes the place
//! of the balancer's for XOR-MAPPED-ADDRESS, quotas, per-IP caps and logs.
//!
//! Policy: only connections from `proxy_protocol_from` (trusted balancer CIDRs) are read for a
//! header, and from them it is **required** (a trusted source without one is closed: it would
//! otherwise make every client look like the balancer). Others are served as usual, so a header
//! from an untrusted source is just bytes that are not STUN (or not a TLS ClientHello) and the
//! connection is refused like any garbage: nobody can forge their address. Version 1 (text) is
//! not accepted.
//!
//! [`parse`] is sans-IO; [`read_header`] is the thin driver (exact reads, so no byte of the
//! client's own stream is consumed; a deadline and a size bound).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport, length.
pub const FIXED_LEN: usize = 16;

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The 12-byte signature is missing: not a PROXY v2 header.
    #[error("no PROXY v2 signature")]
    NoSignature,
    /// Version nibble other than 2.
    #[error("PROXY protocol version {0} (only 2 is accepted)")]
    Version(u8),
    /// Command other than LOCAL (0) or PROXY (1).
    #[error("unknown PROXY command {0}")]
    Command(u8),
    /// Address block shorter than its family needs.
    #[error("address block too short for its family")]
    Truncated,
    /// The announced length exceeds the configured bound.
    #[error("PROXY header of {0} bytes exceeds the limit")]
    TooLong(usize),
}

/// The outcome of [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// `n` bytes in all are needed before the header can be decided.
    Incomplete(usize),
    /// A complete header of `len` bytes. `source`: the client's address for PROXY over
    /// TCP/IPv4 or IPv6; `None` for LOCAL (the balancer's own health check) and for
    /// families/transports this relay does not use (UNSPEC, UNIX, UDP): the connection's own
    /// address applies, as the spec says.
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
}

/// Decodes a header at the start of `buf`, whose total length may be at most `max`.
pub fn parse(buf: &[u8], max: usize) -> Result<Parsed, ProxyError> {
    let sig = buf.len().min(SIGNATURE.len());
    if buf[..sig] != SIGNATURE[..sig] {
        return Err(ProxyError::NoSignature);
    }
    if buf.len() < FIXED_LEN {
        return Ok(Parsed::Incomplete(FIXED_LEN));
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0F);
    if version != 2 {
        return Err(ProxyError::Version(version));
    }
    if command > 1 {
        return Err(ProxyError::Command(command));
    }
    let len = FIXED_LEN + u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if len > max {
        return Err(ProxyError::TooLong(len));
    }
    if buf.len() < len {
        return Ok(Parsed::Incomplete(len));
    }
    let block = &buf[FIXED_LEN..len];
    let (family, transport) = (buf[13] >> 4, buf[13] & 0x0F);
    let source = match (command, family, transport) {
        // PROXY, TCP over IPv4: src 4, dst 4, src port 2, dst port 2 (TLVs may follow).
        (1, 1, 1) => {
            let a = block.get(..12).ok_or(ProxyError::Truncated)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([a[8], a[9]]),
            ))
        }
        // PROXY, TCP over IPv6: src 16, dst 16, src port 2, dst port 2.
        (1, 2, 1) => {
            let a = block.get(..36).ok_or(ProxyError::Truncated)?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[32], a[33]]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    };
    Ok(Parsed::Header { len, source })
}

/// Trusted balancer networks (`proxy_protocol_from`) and the header bound.
#[derive(Debug, Clone, Default)]
pub struct ProxyPolicy {
    from: Vec<(IpAddr, u8)>,
    /// Largest header accepted, bytes.
    pub max_bytes: usize,
    /// Deadline for the whole header.
    pub timeout: Duration,
}

impl ProxyPolicy {
    /// From CIDR strings (`10.0.0.0/8`, `fd00::/8`, or a bare address = one host).
    pub fn parse(cidrs: &[String], max_bytes: usize, timeout: Duration) -> Result<Self, String> {
        let mut from = Vec::new();
        for c in cidrs {
            let (ip, bits) = match c.split_once('/') {
                Some((ip, bits)) => (ip, Some(bits)),
                None => (c.as_str(), None),
            };
            let ip: IpAddr = ip.parse().map_err(|e| format!("{c:?}: {e}"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(b) => b.parse::<u8>().map_err(|e| format!("{c:?}: {e}"))?,
                None => max,
            };
            if bits > max {
                return Err(format!("{c:?}: prefix longer than {max}"));
            }
            from.push((ip, bits));
        }
        Ok(Self {
            from,
            max_bytes: max_bytes.max(FIXED_LEN),
            timeout,
        })
    }

    /// Whether connections from `ip` must carry a PROXY v2 header.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.from.iter().any(|&(net, bits)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), bits),
            _ => false,
        })
    }

    pub fn is_off(&self) -> bool {
        self.from.is_empty()
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (bytes, rest) = ((bits / 8) as usize, bits % 8);
    if a[..bytes] != b[..bytes] {
        return false;
    }
    rest == 0 || (a[bytes] ^ b[bytes]) >> (8 - rest) == 0
}

/// Reads one header from `stream` within the policy's deadline and size bound; returns the
/// client's address (`peer` for LOCAL and unused families). Reads exactly the header's bytes.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    policy: &ProxyPolicy,
) -> Result<SocketAddr, String> {
    let read = async {
        let mut buf = vec![0u8; FIXED_LEN];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match parse(&buf, policy.max_bytes).map_err(|e| e.to_string())? {
                Parsed::Header { source, .. } => return Ok(source.unwrap_or(peer)),
                Parsed::Incomplete(n) => {
                    let have = buf.len();
                    buf.resize(n, 0);
                    stream
                        .read_exact(&mut buf[have..])
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
        }
    };
    tokio::time::timeout(policy.timeout, read)
        .await
        .map_err(|_| "no PROXY header within the deadline".to_owned())?
}

/// A v2 PROXY header for a TCP connection from `src` to `dst` (what a balancer sends; used by
/// tests and benches).
pub fn encode(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(0x21); // version 2, PROXY
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's IPv4 example layout: 203.0.113.7:51000 -> 10.0.0.5:3478, then a TLV
    /// (PP2_TYPE_NOOP, 2 bytes) that is skipped.
    const V4: &[u8] = &[
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, // signature
        0x21, 0x11, 0x00, 0x11, // v2 PROXY, TCP/IPv4, 17 bytes follow
        203, 0, 113, 7, 10, 0, 0, 5, // src, dst
        0xC7, 0x38, 0x0D, 0x96, // 51000, 3478
        0x04, 0x00, 0x02, 0xAA, // TLV NOOP len 2
        0xBB, // (the TLV's second byte)
    ];

    #[test]
    fn ipv4_header_with_a_tlv() {
        let src = SocketAddr::from(([203, 0, 113, 7], 51000));
        assert_eq!(
            parse(V4, 512),
            Ok(Parsed::Header {
                len: V4.len(),
                source: Some(src)
            })
        );
        // Byte by byte: more is asked for, never a wrong answer.
        for n in 0..V4.len() {
            assert!(
                matches!(parse(&V4[..n], 512), Ok(Parsed::Incomplete(_))),
                "{n}"
            );
        }
    }

    #[test]
    fn ipv6_local_and_unspec() {
        let src: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::2]:5349".parse().unwrap();
        let h = encode(src, dst);
        assert_eq!(h[13], 0x21);
        assert_eq!(
            parse(&h, 512),
            Ok(Parsed::Header {
                len: FIXED_LEN + 36,
                source: Some(src)
            })
        );
        // LOCAL (health check), no address block: the connection's own address applies.
        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(
            parse(&local, 512),
            Ok(Parsed::Header {
                len: 16,
                source: None
            })
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4", 512),
            Err(ProxyError::NoSignature)
        );
        // A STUN Binding request is not a header.
        assert_eq!(
            parse(&[0x00, 0x01, 0x00, 0x00, 0x21, 0x12], 512),
            Err(ProxyError::NoSignature)
        );
        let mut h = V4.to_vec();
        h[12] = 0x11;
        assert_eq!(parse(&h, 512), Err(ProxyError::Version(1)));
        h[12] = 0x22;
        assert_eq!(parse(&h, 512), Err(ProxyError::Command(2)));
        // Size bound checked on the length field, before anything is buffered.
        let mut big = SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert_eq!(parse(&big, 512), Err(ProxyError::TooLong(16 + 65535)));
        // IPv4 family with a too short block.
        let mut short = SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4]);
        assert_eq!(parse(&short, 512), Err(ProxyError::Truncated));
    }

    #[test]
    fn policy_cidrs() {
        let p = ProxyPolicy::parse(
            &["10.0.0.0/8".into(), "192.168.1.7".into(), "fd00::/8".into()],
            512,
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(p.trusts("10.200.3.4".parse().unwrap()));
        assert!(p.trusts("::ffff:10.0.0.1".parse().unwrap()));
        assert!(p.trusts("192.168.1.7".parse().unwrap()));
        assert!(!p.trusts("192.168.1.8".parse().unwrap()));
        assert!(!p.trusts("11.0.0.1".parse().unwrap()));
        assert!(p.trusts("fd12::1".parse().unwrap()));
        assert!(!p.trusts("fe80::1".parse().unwrap()));
        assert!(ProxyPolicy::parse(&["10.0.0.0/33".into()], 512, Duration::ZERO).is_err());
        assert!(ProxyPolicy::parse(&[], 512, Duration::ZERO)
            .unwrap()
            .is_off());
    }
}
