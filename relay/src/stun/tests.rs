//! Codec tests: RFC 5769 test vectors, builder round trips, framing.

use std::net::SocketAddr;

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hmac_sha1(key: &[u8]) -> impl FnOnce(&[&[u8]]) -> [u8; 20] + '_ {
    move |chunks| {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
        let mut ctx = ring::hmac::Context::with_key(&k);
        for c in chunks {
            ctx.update(c);
        }
        let mut out = [0u8; 20];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

/// RFC 5769 §2.1: sample request with short-term credentials.
const REQUEST: &str = "00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff 80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf";

/// RFC 5769 §2.2: sample IPv4 response.
const RESPONSE_V4: &str = "01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96";

/// RFC 5769 §2.3: sample IPv6 response.
const RESPONSE_V6: &str = "01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c";

/// RFC 5769 §2.4: sample request with long-term credentials.
const REQUEST_LONG_TERM: &str = "00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66";

const SHORT_TERM_PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

#[test]
fn rfc5769_request() {
    let bytes = hex(REQUEST);
    let m = Message::parse(&bytes).expect("valid vector (fingerprint checked)");
    assert_eq!(m.method(), Method::Binding);
    assert_eq!(m.class(), Class::Request);
    assert_eq!(m.attribute(attr::SOFTWARE).unwrap(), b"STUN test client");
    assert_eq!(m.attribute(attr::USERNAME).unwrap(), b"evtj:h6vY");
    assert!(m.verify_integrity(hmac_sha1(SHORT_TERM_PASSWORD)));
    assert!(!m.verify_integrity(hmac_sha1(b"wrong")));
    // 0x0024 PRIORITY is comprehension-required and unknown to a TURN server.
    assert!(m
        .attributes()
        .any(|a| a.typ == 0x0024 && attr::comprehension_required(a.typ)));
}

#[test]
fn rfc5769_ipv4_response() {
    let bytes = hex(RESPONSE_V4);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.attribute(attr::SOFTWARE).unwrap(), b"test vector");
    let v = m.attribute(attr::XOR_MAPPED_ADDRESS).unwrap();
    let addr = address::decode_xor(v, m.transaction_id(), attr::XOR_MAPPED_ADDRESS).unwrap();
    assert_eq!(addr, "192.0.2.1:32853".parse::<SocketAddr>().unwrap());
    assert!(m.verify_integrity(hmac_sha1(SHORT_TERM_PASSWORD)));
}

#[test]
fn rfc5769_ipv6_response() {
    let bytes = hex(RESPONSE_V6);
    let m = Message::parse(&bytes).unwrap();
    let v = m.attribute(attr::XOR_MAPPED_ADDRESS).unwrap();
    let addr = address::decode_xor(v, m.transaction_id(), attr::XOR_MAPPED_ADDRESS).unwrap();
    assert_eq!(
        addr,
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse::<SocketAddr>()
            .unwrap()
    );
    assert!(m.verify_integrity(hmac_sha1(SHORT_TERM_PASSWORD)));
}

#[test]
fn rfc5769_long_term_request() {
    let bytes = hex(REQUEST_LONG_TERM);
    let m = Message::parse(&bytes).unwrap();
    let user = m.attribute(attr::USERNAME).unwrap();
    assert_eq!(user, "マトリックス".as_bytes());
    let realm = m.attribute(attr::REALM).unwrap();
    assert_eq!(realm, b"example.org");
    assert_eq!(
        m.attribute(attr::NONCE).unwrap(),
        b"f//499k954d6OL34oL9FSTvy64sA"
    );
    // The password "The<U+00AD>M<U+00AA>tr<U+2168>" after SASLprep is "TheMatrIX".
    let key = integrity::long_term_key(user, realm, b"TheMatrIX");
    assert!(m.verify_integrity(hmac_sha1(&key)));
}

#[test]
fn rebuild_ipv4_response_byte_exact() {
    // Rebuilding RFC 5769 §2.2 with the builder gives the same bytes (integrity, fingerprint).
    let want = hex(RESPONSE_V4);
    let tid: [u8; 12] = want[8..20].try_into().unwrap();
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, Class::Success, Method::Binding, &tid);
    // SOFTWARE "test vector" is padded with a space in the vector (any pad value is legal).
    b.attr(attr::SOFTWARE, b"test vector");
    b.xor_address(attr::XOR_MAPPED_ADDRESS, "192.0.2.1:32853".parse().unwrap());
    let mut got = b.finish().to_vec();
    got[20 + 4 + 11] = 0x20;
    let mut buf2 = Vec::new();
    buf2.extend_from_slice(&got);
    // Recompute integrity and fingerprint over the space-padded bytes.
    let mut b = MessageBuilder { buf: &mut buf2 };
    b.integrity(hmac_sha1(SHORT_TERM_PASSWORD)).fingerprint();
    assert_eq!(b.finish(), &want[..]);
}

#[test]
fn builder_roundtrip_with_error_and_unknown() {
    let tid = [7u8; 12];
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, Class::Error, Method::Allocate, &tid);
    b.error_code(errors::ErrorCode::UNKNOWN_ATTRIBUTE)
        .unknown_attributes(&[0x0024, 0x7777])
        .attr(attr::REALM, b"vc")
        .fingerprint();
    let bytes = b.finish().to_vec();
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.class(), Class::Error);
    assert_eq!(m.method(), Method::Allocate);
    assert_eq!(
        errors::decode_error_code(m.attribute(attr::ERROR_CODE).unwrap()),
        Some(420)
    );
    assert_eq!(
        m.attribute(attr::UNKNOWN_ATTRIBUTES).unwrap(),
        &[0x00, 0x24, 0x77, 0x77]
    );
    // Any flipped bit breaks the fingerprint.
    let mut bad = bytes.clone();
    bad[25] ^= 1;
    assert!(Message::parse(&bad).is_err());
}

#[test]
fn message_type_encoding() {
    assert_eq!(message_type(Class::Request, Method::Binding), 0x0001);
    assert_eq!(message_type(Class::Success, Method::Binding), 0x0101);
    assert_eq!(message_type(Class::Error, Method::Binding), 0x0111);
    assert_eq!(message_type(Class::Request, Method::Allocate), 0x0003);
    assert_eq!(message_type(Class::Indication, Method::Send), 0x0016);
    assert_eq!(message_type(Class::Indication, Method::Data), 0x0017);
    assert_eq!(message_type(Class::Request, Method::ChannelBind), 0x0009);
    for t in [
        0x0001u16, 0x0101, 0x0111, 0x0003, 0x0113, 0x0016, 0x0017, 0x0108,
    ] {
        let (m, c) = split_type(t);
        assert_eq!(message_type(c, Method::from_u16(m).unwrap()), t);
    }
}

#[test]
fn truncated_and_bad_inputs_rejected() {
    let full = hex(REQUEST);
    for n in 0..full.len() {
        assert!(Message::parse(&full[..n]).is_err(), "prefix {n}");
    }
    let mut bad_cookie = full.clone();
    bad_cookie[4] = 0;
    assert_eq!(
        Message::parse(&bad_cookie).unwrap_err(),
        DecodeError::NotStun
    );
    let mut long_attr = hex(RESPONSE_V4);
    long_attr[22..24].copy_from_slice(&0x0100u16.to_be_bytes());
    assert!(Message::parse(&long_attr).is_err());
}

#[test]
fn channel_data_framing() {
    let c = turn::ChannelNumber::parse(0x4001).unwrap();
    let mut pkt = channel_data::header(c, 5).to_vec();
    pkt.extend_from_slice(b"hello\0\0\0");
    let cd = ChannelData::parse(&pkt).unwrap();
    assert_eq!(cd.channel, c);
    assert_eq!(cd.data, b"hello");
    assert_eq!(channel_data::frame_len(&pkt), Some(12));
    assert!(ChannelData::parse(&pkt[..6]).is_none());
    // 0x8000 and up are not ChannelData; 0x5000-0x7FFF parse (RFC 5766 range) but are
    // outside RFC 8656's.
    assert!(ChannelData::parse(&[0x80, 0, 0, 0]).is_none());
    assert!(!ChannelData::parse(&[0x50, 0, 0, 0])
        .unwrap()
        .channel
        .is_rfc8656());
    assert!(turn::ChannelNumber::parse(0x3FFF).is_none());
    assert_eq!(channel_data::frame_len(&hex(REQUEST)), Some(20 + 0x58));
    assert_eq!(channel_data::frame_len(&[0xC0, 0, 0, 0]), None);
}
