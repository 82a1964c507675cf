//! The relay's one config struct: defaults, `--config` TOML file, `VC_*` env overrides
//! (`VC_TURN__REALM`, `VC_SIGNALING__LISTEN`, ...).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shared::tls::ReloadableCert;
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
    pub tls: TlsConfig,
    pub quic: QuicConfig,
}

/// `[quic]`: the QUIC signaling link for cameras (issue 10). Runs only when `[tls]` is
/// configured (QUIC is always TLS 1.3; it serves the `[tls]` certificate and reloads with it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct QuicConfig {
    /// UDP address of the QUIC listener (ALPN `vc-signal/1`). Empty: off.
    pub listen: String,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:4433".into(),
        }
    }
}

/// `[tls]`: certificate for `wss://` signaling and TURN over TLS. Unset: plaintext only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first). Empty: TLS off.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key_file: PathBuf,
    /// Seconds between checks of the files' mtimes (reload on change; SIGHUP reloads at once).
    /// 0: SIGHUP only.
    pub reload_check_secs: u64,
    /// One TLS port for both WSS signaling and TURN (e.g. `0.0.0.0:443`, for networks that
    /// pass nothing else), routed by ALPN (`stun.turn`, `http/1.1`) or the first byte. Empty:
    /// off. The dedicated listeners keep running.
    pub single_port_listen: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            reload_check_secs: 10,
            single_port_listen: String::new(),
        }
    }
}

impl TlsConfig {
    /// True when a certificate is configured.
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }
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
            tls: TlsConfig::default(),
            quic: QuicConfig::default(),
        }
    }
}

impl RelayConfig {
    /// The TLS certificate, loaded (and reloadable), when `[tls]` is configured.
    pub fn load_tls(&self) -> Result<Option<std::sync::Arc<ReloadableCert>>, Error> {
        Ok(ReloadableCert::load_configured(
            &self.tls.cert_file,
            &self.tls.key_file,
        )?)
    }

    /// The ticket secret: configured, or read from the control plane's data dir. Shorter
    /// than [`shared::secret::MIN_SECRET_BYTES`]: an error naming where it came from.
    pub fn resolve_ticket_secret(&self) -> Result<Secret, Error> {
        if !self.ticket_secret.is_empty() {
            self.ticket_secret
                .check_strength("ticket_secret (VC_TICKET_SECRET)")?;
            return Ok(self.ticket_secret.clone());
        }
        let secret = shared::config::read_secret(&self.ticket_secret_file)?.ok_or_else(|| {
            Error::Config(format!(
                "no ticket secret: set VC_TICKET_SECRET (the same as vc-control's) or start \
                 vc-control first so that it creates {}",
                self.ticket_secret_file.display()
            ))
        })?;
        secret.check_strength(&format!(
            "the ticket secret in {} (ticket_secret_file)",
            self.ticket_secret_file.display()
        ))?;
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // figment's `Jail` API fixes the closure's error type.
    #[allow(clippy::result_large_err)]
    fn tls_keys_from_file_and_env_and_off_by_default() {
        figment::Jail::expect_with(|jail| {
            let d: RelayConfig = shared::config::load_with_env(None, "VCTLS0_").unwrap();
            assert!(
                !d.tls.enabled(),
                "the embedded default needs no certificate"
            );
            assert!(d.load_tls().unwrap().is_none());
            assert_eq!(d.tls.reload_check_secs, 10);
            jail.create_file(
                "r.toml",
                "[tls]\ncert_file = \"/etc/vc/cert.pem\"\nreload_check_secs = 3\n",
            )?;
            jail.set_env("VCTLS1_TLS__KEY_FILE", "/etc/vc/key.pem");
            let c: RelayConfig =
                shared::config::load_with_env(Some(std::path::Path::new("r.toml")), "VCTLS1_")
                    .unwrap();
            assert!(c.tls.enabled());
            assert_eq!(c.tls.cert_file, PathBuf::from("/etc/vc/cert.pem"));
            assert_eq!(c.tls.key_file, PathBuf::from("/etc/vc/key.pem"));
            assert_eq!(c.tls.reload_check_secs, 3);
            // Configured but unreadable: startup fails instead of silently serving plaintext.
            assert!(c.load_tls().is_err());
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn quic_listen_default_file_and_env() {
        figment::Jail::expect_with(|jail| {
            let d: RelayConfig = shared::config::load_with_env(None, "VCQUIC0_").unwrap();
            // On by default, but only ever bound when [tls] is configured (see `Relay::start`).
            assert_eq!(d.quic.listen, "0.0.0.0:4433");
            jail.create_file("q.toml", "[quic]\nlisten = \"[::]:4434\"\n")?;
            let f: RelayConfig =
                shared::config::load_with_env(Some(std::path::Path::new("q.toml")), "VCQUIC1_")
                    .unwrap();
            assert_eq!(f.quic.listen, "[::]:4434");
            jail.set_env("VCQUIC2_QUIC__LISTEN", "");
            let off: RelayConfig =
                shared::config::load_with_env(Some(std::path::Path::new("q.toml")), "VCQUIC2_")
                    .unwrap();
            assert!(
                off.quic.listen.is_empty(),
                "env overrides the file (empty: off)"
            );
            Ok(())
        });
    }

    #[test]
    fn short_ticket_secrets_refused_configured_or_from_the_file() {
        let mut c = RelayConfig {
            ticket_secret: Secret::new("only-twenty-one-bytes"),
            ..Default::default()
        };
        let err = c.resolve_ticket_secret().unwrap_err().to_string();
        assert!(err.contains("VC_TICKET_SECRET"), "{err}");
        c.ticket_secret = Secret::new("x".repeat(32));
        assert!(c.resolve_ticket_secret().is_ok());

        let dir = std::env::temp_dir().join(format!("vc-relay-secret-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        c.ticket_secret = Secret::default();
        c.ticket_secret_file = dir.join("ticket.secret");
        std::fs::write(&c.ticket_secret_file, "short\n").unwrap();
        let err = c.resolve_ticket_secret().unwrap_err().to_string();
        assert!(err.contains("ticket.secret"), "{err}");
        std::fs::write(&c.ticket_secret_file, "y".repeat(40)).unwrap();
        assert_eq!(c.resolve_ticket_secret().unwrap().expose(), "y".repeat(40));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
