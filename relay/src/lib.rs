//! `vc-relay`: the media relay (TURN, RFC 8489/8656) and the signaling plane (WebSocket)
//! of VisionConnect. Protocol logic is sans-IO (`stun`, `turn::server`, `signaling::router`);
//! thin tokio drivers do the IO.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod error;
pub mod signaling;
pub mod stun;
pub mod turn;

pub use config::RelayConfig;
pub use error::Error;
