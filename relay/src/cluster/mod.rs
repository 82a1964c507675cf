//! Running several vc-relay nodes as one fleet (issue 9).

use serde::{Deserialize, Serialize};

/// `[cluster]` settings (env `VC_CLUSTER__<FIELD>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// This node's name, unique in the fleet: presence leases and the cross-node directory are
    /// keyed by it. Default: the host name.
    pub node_id: String,
    /// NATS server(s) for cross-node routing, comma separated (`nats://127.0.0.1:4222`).
    /// Empty: a single node, no NATS needed (the embedded default).
    pub nats_url: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: default_node_id(),
            nats_url: String::new(),
        }
    }
}

fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay-1".into())
}
