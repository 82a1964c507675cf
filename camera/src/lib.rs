//! `vc-camera`: a camera simulator that behaves like real firmware. It onboards from the
//! QR code the viewer app shows ([`onboard`]), then holds a signaling connection to
//! `vc-relay` and streams a live VP8 test pattern to every viewer over WebRTC ([`run`]).

pub mod backoff;
pub mod link;
pub mod media;
pub mod onboard;
pub mod pattern;
pub mod peer;
pub mod run;
pub mod vp8;
