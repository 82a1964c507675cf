//! STUN/ChannelData decoders: any bytes must parse or fail, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::stun::{address, channel_data, errors, turn, ChannelData, Message};

fuzz_target!(|data: &[u8]| {
    let _ = channel_data::frame_len(data);
    let _ = ChannelData::parse(data);
    if let Ok(m) = Message::parse(data) {
        let tid = *m.transaction_id();
        for a in m.attributes() {
            let _ = address::decode_xor(a.value, &tid, a.typ);
            let _ = errors::decode_error_code(a.value);
            let _ = turn::decode_channel_number(a.value);
            let _ = turn::decode_lifetime(a.value);
            let _ = turn::decode_even_port(a.value);
            let _ = turn::decode_reservation_token(a.value);
        }
        let _ = m.verify_integrity(|_| [0u8; 20]);
    }
});
