//! WebSocket signaling between cameras and viewers. Owned by the signaling work (issue 5).

use serde::{Deserialize, Serialize};

/// Signaling listener settings and limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SignalingConfig {
    /// WebSocket listen address; clients connect to `ws://<addr>/ws`.
    pub listen: String,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8443".into(),
        }
    }
}
