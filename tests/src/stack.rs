//! The stack under test beside vc-control ([`crate::control`]): vc-relay started on loopback
//! port 0, and reading its metrics.

use anyhow::Result;

pub use crate::control::{Control, Db};
use crate::{start, Running};

/// Starts vc-relay with ticket secret `secret`, reporting presence to `control_url` (empty:
/// none), all listeners on loopback port 0; `extra_env` overrides.
pub async fn start_relay(
    secret: &str,
    control_url: &str,
    extra_env: &[(&str, &str)],
) -> Result<Running> {
    let mut env = vec![
        ("VC_TICKET_SECRET", secret),
        ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
        ("VC_SIGNALING__LISTEN", "127.0.0.1:0"),
        ("VC_SIGNALING__CONTROL_URL", control_url),
        ("VC_TURN__LISTEN", "127.0.0.1:0"),
        // Only used with [tls]; never the fixed default 5349 (tests run in parallel).
        ("VC_TURN__TLS_LISTEN", "127.0.0.1:0"),
        ("VC_QUIC__LISTEN", "127.0.0.1:0"),
        ("RUST_LOG", "warn"),
    ];
    env.extend_from_slice(extra_env);
    start("vc-relay", &[], &env).await
}

/// The Prometheus text of vc-relay's admin `/metrics`.
pub async fn relay_metrics(relay: &Running) -> Result<String> {
    let client = shared::tls::http_client_builder(None)
        .map_err(anyhow::Error::msg)?
        .build()?;
    let response = client
        .get(format!("http://{}/metrics", relay.addr("admin")))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "relay /metrics {}",
        response.status()
    );
    Ok(response.text().await?)
}

/// One Prometheus sample's value from a text exposition (`name` with no labels, or
/// `name{labels}` exactly as exported); `None` when absent.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}
