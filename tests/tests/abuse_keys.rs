//! Key hygiene (issue 11, item 11) against the real binaries: short secrets stop startup
//! naming the setting, TURN credentials never outlive the ticket they came from, the keys
//! both daemons derive from the ticket secret agree (and are not the secret itself),
//! `/metrics` is only on vc-control's admin listener, and vc-control's state is owner-only.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use reqwest::StatusCode;
use shared::signaling::ServerMessage;
use shared::ticket::{turn_username_expiry, unix_now, TicketKey};
use shared::Secret;
use vc_tests::signaling_client::{recv, STEP};
use vc_tests::stack::{start_relay, Control, Db};

const SECRET: &str = "abuse-keys-test-ticket-secret-at-least-32-bytes";

/// Runs `name` with `env` (and nothing else from `VC_*`) expecting it to refuse to start;
/// returns what it wrote to stderr.
async fn refused_start(name: &str, env: &[(&str, &str)]) -> Result<String> {
    let mut cmd = tokio::process::Command::new(vc_tests::binary(name));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("VC_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied()).env("RUST_LOG", "warn");
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .with_context(|| format!("{name} kept running with a weak secret"))??;
    ensure!(!out.status.success(), "{name} started with a weak secret");
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn secrets_shorter_than_32_bytes_stop_both_daemons() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().display().to_string();
    let db = format!("sqlite://{data}/vc.db?mode=rwc");
    let control = |extra: &[(&'static str, &'static str)]| {
        let mut env = vec![
            ("VC_LISTEN", "127.0.0.1:0".to_owned()),
            ("VC_ADMIN_LISTEN", "127.0.0.1:0".to_owned()),
            ("VC_DATA_DIR", data.clone()),
            ("VC_DATABASE_URL", db.clone()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        env
    };
    for (extra, setting) in [
        (
            vec![("VC_TICKET_SECRET", "thirty-one-bytes-is-not-enough")],
            "VC_TICKET_SECRET",
        ),
        (
            vec![
                ("VC_TICKET_SECRET", SECRET),
                ("VC_JWT_SECRET", "short-login-key"),
            ],
            "VC_JWT_SECRET",
        ),
        (
            vec![("VC_TICKET_SECRET", SECRET), ("VC_JWT_SECRET", SECRET)],
            "jwt_secret and ticket_secret are the same",
        ),
    ] {
        let env = control(&extra);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let err = refused_start("vc-control", &env).await?;
        ensure!(
            err.contains(setting),
            "vc-control error names {setting}: {err}"
        );
    }
    // A stored secret file that is too short is refused too (an operator wrote it by hand).
    std::fs::write(dir.path().join("ticket.secret"), "hand-written\n")?;
    let env = control(&[]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let err = refused_start("vc-control", &env).await?;
    ensure!(err.contains("ticket.secret"), "names the file: {err}");

    let err = refused_start(
        "vc-relay",
        &[
            ("VC_TICKET_SECRET", "relay-secret-too-short"),
            ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
            ("VC_SIGNALING__LISTEN", "127.0.0.1:0"),
            ("VC_TURN__LISTEN", "127.0.0.1:0"),
        ],
    )
    .await?;
    ensure!(err.contains("VC_TICKET_SECRET"), "vc-relay error: {err}");
    Ok(())
}

/// The expiry of the signaling token `token` as `key` verifies it.
fn token_exp(key: &TicketKey, token: &str) -> Result<u64> {
    Ok(key.verify_signaling(token, unix_now())?.exp)
}

#[tokio::test]
async fn turn_credentials_never_outlive_their_ticket() -> Result<()> {
    // Ticket TTL 120 s; the relay would hand out an hour (its default) without the cap.
    let c = Control::start(Db::Sqlite, SECRET, &[("VC_TICKET_TTL_SECS", "120")]).await?;
    let relay = start_relay(SECRET, &c.base, &[]).await?;
    let key = TicketKey::new(&Secret::new(SECRET));
    let jwt = c.user("keys@example.com").await?;
    let (dev, secret) = c.camera(&jwt, "KEYS-1").await?;

    for refresh in 0..2 {
        let ticket = c.camera_ticket(dev, &secret).await?;
        let exp = token_exp(&key, &ticket.signaling.token)?;
        // vc-control: the TURN credential ends exactly with the token, and verifies with
        // the TURN key derived from the shared secret.
        ensure!(turn_username_expiry(&ticket.turn.username)? == exp);
        key.verify_turn_credentials(&ticket.turn.username, &ticket.turn.credential, unix_now())?;
        ensure!(
            TicketKey::new(&Secret::new(format!("{SECRET}x")))
                .verify_turn_credentials(&ticket.turn.username, &ticket.turn.credential, unix_now())
                .is_err(),
            "another secret derives another key"
        );

        // vc-relay accepts vc-control's token (both derived the same ticket key) and its
        // `welcome` credentials end with that token, not an hour later.
        let url = format!(
            "ws://{}/ws?token={}",
            relay.addr("signaling"),
            ticket.signaling.token
        );
        let (mut cam, _) =
            tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url)).await??;
        let ServerMessage::Welcome { ice_servers, .. } = recv(&mut cam).await? else {
            anyhow::bail!("no welcome");
        };
        let ice = ice_servers.first().context("ice server")?;
        let ice_exp = turn_username_expiry(&ice.username)?;
        ensure!(
            ice_exp <= exp,
            "welcome credential expires at {ice_exp}, its token at {exp} (refresh {refresh})"
        );
        ensure!(
            ice_exp + 5 >= exp,
            "capped at the token, not shorter: {ice_exp} vs {exp}"
        );
        key.verify_turn_credentials(&ice.username, &ice.credential, unix_now())?;
        // A refresh fetches a new ticket: its credentials follow the new token.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn metrics_only_on_the_admin_listener_and_state_is_owner_only() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir()?;
    let state = tmp.path().join("state");
    let db = format!("sqlite://{}/vc.db?mode=rwc", state.display());
    let state_s = state.display().to_string();
    // No JWT secret configured: vc-control generates `state/jwt.secret`.
    let c = Control::start(
        Db::Sqlite,
        SECRET,
        &[("VC_DATA_DIR", &state_s), ("VC_DATABASE_URL", &db)],
    )
    .await?;
    c.user("ops@example.com").await?;

    let public = c.http.get(format!("{}/metrics", c.base)).send().await?;
    ensure!(
        public.status() == StatusCode::NOT_FOUND,
        "public /metrics: {}",
        public.status()
    );
    let text = c.metrics().await?;
    ensure!(
        text.contains("registrations_total"),
        "admin /metrics: {text}"
    );
    for listener in [&c.base, &c.admin] {
        let health = c.http.get(format!("{listener}/healthz")).send().await?;
        ensure!(health.status() == StatusCode::OK, "{listener}/healthz");
    }
    let api = c
        .http
        .get(format!("{}/api/camera/models", c.admin))
        .send()
        .await?;
    ensure!(
        api.status() == StatusCode::NOT_FOUND,
        "the admin listener serves no API"
    );

    let mode = |p: &std::path::Path| -> Result<u32> {
        Ok(std::fs::metadata(p)
            .with_context(|| p.display().to_string())?
            .permissions()
            .mode()
            & 0o777)
    };
    ensure!(mode(&state)? == 0o700, "data dir {:o}", mode(&state)?);
    for file in ["vc.db", "jwt.secret"] {
        let m = mode(&state.join(file))?;
        ensure!(m == 0o600, "{file} {m:o}");
    }
    Ok(())
}
