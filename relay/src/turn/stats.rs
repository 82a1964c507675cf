//! Per-shard counters, plain integers on the packet path; drivers flush them into the
//! `metrics` registry about once a second (names prefixed `vc_relay_turn_`, no user labels).

/// Counters of one shard since the last flush.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub allocations_created: u64,
    pub allocations_expired: u64,
    pub allocations_deleted: u64,
    pub failed_quota: u64,
    pub failed_capacity: u64,
    pub failed_auth: u64,
    pub failed_other: u64,
    pub auth_failures: u64,
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    pub malformed: u64,
    pub no_permission: u64,
    pub rate_limited: u64,
    /// Unauthenticated answers not sent (per-source budget spent).
    pub unauth_limited: u64,
}

impl Stats {
    /// Adds the counters to the global metrics registry.
    pub fn flush(&self) {
        self.emit(false);
    }

    /// Registers every TURN counter at zero, so dashboards and alerts see them (and `rate()`
    /// works) before the first event.
    pub fn register_all() {
        Stats::default().emit(true);
        metrics::gauge!("vc_relay_turn_tcp_connections_active").increment(0.0);
        for reason in ["per_ip", "total", "tls_handshake"] {
            metrics::counter!("vc_relay_turn_tcp_rejected_total", "reason" => reason).increment(0);
        }
    }

    /// Adds the counters; `all`: zeros too (registration), else only what moved (hot path).
    fn emit(&self, all: bool) {
        use metrics::counter;
        let c = |name: &'static str, v: u64| {
            if all || v > 0 {
                counter!(name).increment(v);
            }
        };
        c(
            "vc_relay_turn_allocations_created_total",
            self.allocations_created,
        );
        c(
            "vc_relay_turn_allocations_expired_total",
            self.allocations_expired,
        );
        c(
            "vc_relay_turn_allocations_deleted_total",
            self.allocations_deleted,
        );
        let f = |reason: &'static str, v: u64| {
            if all || v > 0 {
                counter!("vc_relay_turn_allocations_failed_total", "reason" => reason).increment(v);
            }
        };
        f("quota", self.failed_quota);
        f("capacity", self.failed_capacity);
        f("auth", self.failed_auth);
        f("other", self.failed_other);
        c("vc_relay_turn_auth_failures_total", self.auth_failures);
        c("vc_relay_turn_quota_rejections_total", self.failed_quota);
        let d = |name: &'static str, dir: &'static str, v: u64| {
            if all || v > 0 {
                counter!(name, "direction" => dir).increment(v);
            }
        };
        d(
            "vc_relay_turn_relayed_packets_total",
            "to_peer",
            self.to_peer_packets,
        );
        d(
            "vc_relay_turn_relayed_bytes_total",
            "to_peer",
            self.to_peer_bytes,
        );
        d(
            "vc_relay_turn_relayed_packets_total",
            "to_client",
            self.to_client_packets,
        );
        d(
            "vc_relay_turn_relayed_bytes_total",
            "to_client",
            self.to_client_bytes,
        );
        c("vc_relay_turn_malformed_dropped_total", self.malformed);
        c(
            "vc_relay_turn_no_permission_dropped_total",
            self.no_permission,
        );
        c(
            "vc_relay_turn_rate_limited_dropped_total",
            self.rate_limited,
        );
        c(
            "vc_relay_turn_unauth_limited_dropped_total",
            self.unauth_limited,
        );
    }
}
