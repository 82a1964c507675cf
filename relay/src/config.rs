//! The relay's one config struct: defaults, `--config` TOML file, `VC_*` env overrides
//! (`VC_TURN__REALM`, `VC_SIGNALING__LISTEN`, ...).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shared::Secret;

use crate::{cluster::ClusterConfig, signaling::SignalingConfig, turn::TurnConfig, Error};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RelayConfig {
    /// Secret shared with vc-control for relay tickets. Empty: read `ticket_secret_file`.
    pub ticket_secret: Secret,
    /// Where vc-control keeps the generated ticket secret (same data dir on one host).
    pub ticket_secret_file: PathBuf,
    /// Prometheus `/metrics` listener.
    pub admin_listen: String,
    /// Seconds existing allocations and connections may keep running after SIGTERM.
    pub drain_secs: u64,
    pub turn: TurnConfig,
    pub signaling: SignalingConfig,
    pub cluster: ClusterConfig,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            ticket_secret: Secret::default(),
            ticket_secret_file: PathBuf::from("data/ticket.secret"),
            admin_listen: "127.0.0.1:9090".into(),
            drain_secs: 30,
            turn: TurnConfig::default(),
            signaling: SignalingConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl RelayConfig {
    /// The ticket secret: configured, or read from the control plane's data dir.
    pub fn resolve_ticket_secret(&self) -> Result<Secret, Error> {
        if !self.ticket_secret.is_empty() {
            return Ok(self.ticket_secret.clone());
        }
        shared::config::read_secret(&self.ticket_secret_file)?.ok_or_else(|| {
            Error::Config(format!(
                "no ticket secret: set VC_TICKET_SECRET (the same as vc-control's) or start \
                 vc-control first so that it creates {}",
                self.ticket_secret_file.display()
            ))
        })
    }
}
