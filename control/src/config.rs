//! vc-control's configuration: one serde struct with defaults, loaded by
//! [`shared::config::load`] from an optional TOML file and `VC_*` environment overrides
//! (`VC_DEVICE_TOKEN_TTL_SECS=60`, `VC_RELAY__SIGNALING_URL=...`, `VC_ARGON2__MEMORY_KIB=...`).

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shared::tls::ReloadableCert;
use shared::Secret;

use crate::limiter::Cidr;
use crate::StartError;

/// Everything vc-control can be told. Every limit and TTL of the API is a named setting here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address of the HTTP listener (port 0 picks a free port).
    pub listen: String,
    /// Admin listener: `/metrics` (Prometheus) and `/healthz`, plain HTTP, like vc-relay's
    /// `admin_listen`. Keep it on loopback or a private network; the public listener does
    /// not serve `/metrics`.
    pub admin_listen: String,
    /// `sqlite://path?mode=rwc` (default) or `postgres://...`.
    pub database_url: String,
    /// Where generated secrets (and the default SQLite file) live.
    pub data_dir: PathBuf,
    /// Public base URL of this server, written into onboarding QR codes (`https://...` when
    /// `[tls]` is set). Empty, or the default while `[tls]` is set: derived from the bound
    /// address with the listener's scheme (see [`Config::resolve_server_url`]).
    pub server_url: String,
    /// HS256 key of login JWTs; generated into `data_dir/jwt.secret` when empty.
    pub jwt_secret: Secret,
    /// Key of relay tickets, shared with vc-relay; generated into `data_dir/ticket.secret` when empty.
    pub ticket_secret: Secret,
    /// Lifetime of a login JWT, seconds.
    pub jwt_ttl_secs: u64,
    /// Lifetime of a one-time device token (and its QR code), seconds.
    pub device_token_ttl_secs: u64,
    /// Lifetime of relay tickets (TURN credentials and signaling tokens), seconds.
    pub ticket_ttl_secs: u64,
    /// Failed logins allowed per email + client within `login_window_secs` before 429.
    /// A client is an IPv4 address or an IPv6 /64.
    pub login_max_failures: u32,
    /// Failed logins allowed per email (from all clients together) per window: bounds a
    /// distributed guess at one account.
    pub login_account_max_failures: u32,
    /// Failed logins allowed per client (over all emails) per window: bounds one client
    /// spraying many accounts.
    pub login_client_max_failures: u32,
    /// Window of the failed-login limits, seconds.
    pub login_window_secs: u64,
    /// Registrations allowed per client within `register_window_secs` before 429.
    pub register_max_per_client: u32,
    /// Window of the registration limit, seconds.
    pub register_window_secs: u64,
    /// Proxies (CIDRs or addresses) whose `X-Forwarded-For` is believed. Empty (default):
    /// the header is ignored and the TCP peer is the client. Localhost is not implied.
    pub trusted_proxies: Vec<Cidr>,
    /// Cameras (pending or activated) one account may have; onboarding beyond -> 409
    /// `camera_limit`. Bounds what one account can hold on the relay too.
    pub max_cameras_per_account: u32,
    /// Shares (active or pending invitations) one camera may have; inviting beyond -> 409
    /// `share_limit`. Bounds how many viewers one camera can be opened to.
    pub max_shares_per_device: u32,
    /// After a camera's first successful activation, a retry without its device secret is
    /// accepted only this many seconds (and only while the secret is unused): long enough
    /// for a camera whose answer was lost, short enough that a leaked QR code cannot
    /// replace the real camera's secret later.
    pub activation_retry_window_secs: u64,
    /// Largest accepted request body, bytes (larger -> 413).
    pub max_body_bytes: usize,
    /// Minimum password length at registration.
    pub password_min_len: usize,
    /// Upper bound of `?wait=` on check-status, seconds.
    pub check_status_max_wait_secs: u64,
    /// How far a presence report's `sent_at` may lie from our clock, seconds (replay window).
    pub presence_max_skew_secs: u64,
    /// Database pool size.
    pub db_max_connections: u32,
    /// Onboarded cameras that never activated are deleted this many seconds after their
    /// token expired.
    pub pending_retention_secs: u64,
    pub relay: RelayConfig,
    pub argon2: Argon2Config,
    pub http: HttpConfig,
    pub tls: TlsConfig,
}

/// `[tls]`: certificate of the HTTP listener. Unset: plaintext HTTP, as before.
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
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            reload_check_secs: 10,
        }
    }
}

impl TlsConfig {
    /// True when a certificate is configured.
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }
}

/// The default `server_url`: what a plaintext listener on the default `listen` serves.
const DEFAULT_SERVER_URL: &str = "http://127.0.0.1:8000";

impl Config {
    /// The certificate of the HTTP listener, loaded (and reloadable), when `[tls]` is set.
    /// A configured certificate that cannot be loaded is an error: no silent plaintext.
    pub fn load_tls(&self) -> Result<Option<Arc<ReloadableCert>>, StartError> {
        Ok(ReloadableCert::load_configured(
            &self.tls.cert_file,
            &self.tls.key_file,
        )?)
    }

    /// `server_url` as QR codes carry it, for a listener on `addr` (the bound address when
    /// known, else `listen`). An explicit value is kept as written; empty (or the plaintext
    /// default while TLS is on, which could only be wrong) becomes `<scheme>://<addr>`, so a
    /// TLS-only server never hands cameras an `http://` URL.
    pub fn resolve_server_url(&self, addr: &str) -> String {
        let derive = self.server_url.is_empty()
            || (self.tls.enabled() && self.server_url == DEFAULT_SERVER_URL);
        if !derive {
            return self.server_url.clone();
        }
        let scheme = if self.tls.enabled() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }
}

/// Connection limits of the HTTP listener (slowloris and idle-socket floods).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// A client must send a request's whole header within this many seconds.
    pub header_read_timeout_secs: u64,
    /// A connection with no request in flight that moves no bytes this long is closed.
    /// (For HTTP/1, hyper's header timer also runs while waiting for the next request.)
    pub keep_alive_idle_secs: u64,
    /// Open connections at most; further ones are closed at once.
    pub max_connections: u32,
}

/// Where cameras and viewers find vc-relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RelayConfig {
    /// WebSocket signaling URL handed out with tickets and activation.
    pub signaling_url: String,
    /// TURN URIs handed out with tickets and activation.
    pub turn_uris: Vec<String>,
    /// `quic://host:port` of vc-relay's QUIC listener, handed out in camera tickets (cameras
    /// prefer it and fall back to `signaling_url`). Empty: none.
    pub quic_url: String,
}

/// Cost of the argon2id password hash. The defaults are OWASP's recommendation
/// (19 MiB, 2 passes, 1 lane); the integration tests lower them to stay fast.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Argon2Config {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8000".into(),
            admin_listen: "127.0.0.1:9101".into(),
            database_url: "sqlite://data/visionconnect.db?mode=rwc".into(),
            data_dir: PathBuf::from("data"),
            server_url: DEFAULT_SERVER_URL.into(),
            jwt_secret: Secret::default(),
            ticket_secret: Secret::default(),
            jwt_ttl_secs: 24 * 3600,
            device_token_ttl_secs: 600,
            ticket_ttl_secs: 600,
            login_max_failures: 10,
            login_account_max_failures: 50,
            login_client_max_failures: 100,
            login_window_secs: 60,
            register_max_per_client: 10,
            register_window_secs: 3600,
            trusted_proxies: Vec::new(),
            max_cameras_per_account: 100,
            max_shares_per_device: 10,
            activation_retry_window_secs: 30,
            max_body_bytes: 64 * 1024,
            password_min_len: 8,
            check_status_max_wait_secs: 60,
            presence_max_skew_secs: 60,
            db_max_connections: 16,
            pending_retention_secs: 24 * 3600,
            relay: RelayConfig::default(),
            argon2: Argon2Config::default(),
            http: HttpConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 10,
            keep_alive_idle_secs: 60,
            max_connections: 10_000,
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            signaling_url: "ws://127.0.0.1:8443/ws".into(),
            turn_uris: vec![
                "turn:127.0.0.1:3478?transport=udp".into(),
                "turn:127.0.0.1:3478?transport=tcp".into(),
            ],
            quic_url: String::new(),
        }
    }
}

impl Default for Argon2Config {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_secrets_do_not_print() {
        let c: Config = shared::config::load_with_env(None, "VC_CONTROL_UNIT_TEST_").unwrap();
        assert_eq!(c.listen, "127.0.0.1:8000");
        assert_eq!(c.admin_listen, "127.0.0.1:9101");
        assert_eq!(c.device_token_ttl_secs, 600);
        assert_eq!(c.max_body_bytes, 65536);
        let mut c = c;
        c.jwt_secret = Secret::new("hunter2hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn server_url_follows_the_listener_scheme_unless_set() {
        let mut c = Config::default();
        let at = "127.0.0.1:8000";
        assert_eq!(c.resolve_server_url(at), "http://127.0.0.1:8000");
        c.tls.cert_file = "cert.pem".into();
        assert_eq!(c.resolve_server_url(at), "https://127.0.0.1:8000");
        c.server_url = String::new();
        assert_eq!(c.resolve_server_url("10.0.0.5:443"), "https://10.0.0.5:443");
        // An explicit URL is the operator's (a proxy in front may terminate TLS).
        c.server_url = "http://cams.example".into();
        assert_eq!(c.resolve_server_url(at), "http://cams.example");
        assert!(!Config::default().tls.enabled());
        assert_eq!(Config::default().tls.reload_check_secs, 10);
    }

    #[test]
    fn abuse_limits_have_defaults_and_load_from_a_file() {
        let c = Config::default();
        assert!(c.trusted_proxies.is_empty(), "no proxy trusted by default");
        assert_eq!(
            (c.max_cameras_per_account, c.activation_retry_window_secs),
            (100, 30)
        );
        assert_eq!(c.max_shares_per_device, 10);
        assert_eq!(
            (
                c.http.header_read_timeout_secs,
                c.http.keep_alive_idle_secs,
                c.http.max_connections
            ),
            (10, 60, 10_000)
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n[http]\nmax_connections = 5\n",
        )
        .unwrap();
        let c: Config =
            shared::config::load_with_env(Some(&path), "VC_CONTROL_UNIT_TEST_FILE_").unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(c.trusted_proxies[0].contains("10.9.8.7".parse().unwrap()));
        assert_eq!(c.http.max_connections, 5);
        assert_eq!(c.http.header_read_timeout_secs, 10);
        std::fs::write(&path, "trusted_proxies = [\"10.0.0.0/40\"]\n").unwrap();
        assert!(
            shared::config::load_with_env::<Config>(Some(&path), "VC_CONTROL_UNIT_TEST_FILE_")
                .is_err()
        );
    }
}
