//! TURN server (RFC 8656) over UDP and TCP. Owned by the TURN work (issue 4).

use serde::{Deserialize, Serialize};

/// TURN listener settings and limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TurnConfig {
    /// UDP and TCP listen address (same port for both).
    pub listen: String,
    pub realm: String,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:3478".into(),
            realm: "visionconnect".into(),
        }
    }
}
