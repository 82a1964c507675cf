//! What `vc-control` and `vc-relay` both need, written once:
//! relay tickets (TURN REST credentials and signed signaling tokens),
//! the JSON types of the control API and the signaling protocol, and config loading.

pub mod api;
pub mod config;
pub mod error;
pub mod secret;
pub mod signaling;
pub mod ticket;
pub mod tls;

pub use error::Error;
pub use secret::Secret;
