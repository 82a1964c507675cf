//! The signaling JSON a client sends: parsed like the relay's connection task does
//! (`serde_json` into `shared::signaling::ClientMessage`), re-serialised and parsed again
//! (the same value), and fed to the sans-IO router from a camera and from a viewer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::signaling::router::{ConnState, Router, RouterLimits};
use shared::signaling::ClientMessage;
use shared::ticket::{Role, TicketKey};
use shared::Secret;
use uuid::Uuid;

const NOW: u64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(msg) = serde_json::from_str::<ClientMessage>(text) else {
        return;
    };
    let again = serde_json::to_string(&msg).expect("serialises");
    assert_eq!(serde_json::from_str::<ClientMessage>(&again).expect("re-parses"), msg);

    let key = TicketKey::new(&Secret::new("fuzz-secret"));
    let router = Router::new(key.clone(), RouterLimits::default());
    let device = Uuid::from_u128(0x1234);
    let cam_claims = key
        .mint_signaling(&device.to_string(), Role::Camera, vec![device], NOW, 600)
        .1;
    let viewer_claims = key.mint_signaling("user", Role::Viewer, vec![device], NOW, 600).1;
    let mut camera = ConnState::new(1, cam_claims);
    let mut viewer = ConnState::new(2, viewer_claims);
    let mut out = Vec::new();
    router.connected(NOW * 1000, &camera, &mut out);
    router.connected(NOW * 1000, &viewer, &mut out);
    router.message(
        NOW * 1000,
        &mut viewer,
        ClientMessage::Connect { device_id: device },
        &mut out,
    );
    router.message(NOW * 1000, &mut viewer, msg.clone(), &mut out);
    router.message(NOW * 1000, &mut camera, msg, &mut out);
    router.disconnected(NOW * 1000, &viewer, &mut out);
    router.disconnected(NOW * 1000, &camera, &mut out);
});
