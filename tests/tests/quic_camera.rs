//! The QUIC camera link end to end (issue 10): vc-control hands the camera a ticket with a
//! `quic_url`; the real vc-camera holds its signaling link over QUIC (quinn) to vc-relay with
//! `[tls]`; a relay-only Rust viewer on `wss://` decodes its video. Mid-session the camera's
//! UDP socket moves to a new port (SIGUSR1: `Endpoint::rebind`): the viewer keeps receiving,
//! the camera gets no new `welcome` (no `offline`, one `online`), vc-control's presence row
//! is untouched (same connection id, no new event), and a second viewer's offer reaches the
//! camera over the migrated path. With UDP blocked (the ticket's QUIC port drops every
//! datagram) the camera in `auto` falls back to its `wss://` URL and streams the same way.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use camera::onboard::CameraState;
use vc_tests::certs::TestCert;
use vc_tests::stack::{start_relay, Control, Db};
use vc_tests::viewer::viewer_until_online_wss;

/// >= 32 bytes, shared by vc-control (tickets, presence) and vc-relay.
const SECRET: &str = "quic-camera-test-ticket-secret-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_over_quic_streams_and_survives_a_socket_rebind() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(120), flow())
        .await
        .context("QUIC camera flow exceeded its deadline")?
}

/// vc-relay with `[tls]`, vc-control naming its `wss://` URL and `quic_url` (from the
/// relay's QUIC port, or `quic_url` when given), one activated camera, and the real vc-camera
/// started on it in `auto`.
struct Stack {
    _dir: tempfile::TempDir,
    cert: TestCert,
    _relay: vc_tests::Running,
    control: Control,
    jwt: String,
    device: uuid::Uuid,
    camera: vc_tests::Running,
    signaling_url: String,
    quic_url: String,
}

impl Stack {
    /// Waits for the camera's `link` line (which must read `want`) within `within`, then for it
    /// to be online, in its own output and in vc-control.
    async fn until_online(&self, want: &str, within: Duration) -> Result<()> {
        let link = self.camera.wait_line("link ", within).await?;
        ensure!(link == want, "{link}");
        self.camera
            .wait_line("online ", Duration::from_secs(15))
            .await?;
        self.control
            .wait_status(&self.jwt, self.device, "online")
            .await?;
        Ok(())
    }
}

async fn stack(uid: &str, quic_url: Option<String>) -> Result<Stack> {
    let dir = tempfile::tempdir()?;
    let cert = TestCert::generate()?;
    let (cert_file, key_file) = cert.write(dir.path())?;
    let (cert_file, key_file) = (
        cert_file.display().to_string(),
        key_file.display().to_string(),
    );

    // vc-control's port first: the relay reports presence to it, and it names the relay.
    let control_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let control_url = format!("http://127.0.0.1:{control_port}");
    let relay = start_relay(
        SECRET,
        &control_url,
        &[
            ("VC_TLS__CERT_FILE", &cert_file),
            ("VC_TLS__KEY_FILE", &key_file),
            ("VC_TURN__ALLOW_LOOPBACK_PEERS", "true"),
        ],
    )
    .await?;
    let port = |name: &str| -> Result<String> {
        Ok(relay
            .addr(name)
            .rsplit_once(':')
            .context("host:port")?
            .1
            .to_owned())
    };
    // DNS names, as production URIs must be (the certificate is for localhost).
    let signaling_url = format!("wss://localhost:{}/ws", port("signaling")?);
    let quic_url = match quic_url {
        Some(url) => url,
        None => format!("quic://localhost:{}", port("quic")?),
    };
    let turn_uris = format!("[\"turn:127.0.0.1:{}?transport=udp\"]", port("turn-udp")?);
    let listen = format!("127.0.0.1:{control_port}");
    let control = Control::start(
        Db::Sqlite,
        SECRET,
        &[
            ("VC_LISTEN", &listen),
            ("VC_SERVER_URL", &control_url),
            ("VC_RELAY__SIGNALING_URL", &signaling_url),
            ("VC_RELAY__QUIC_URL", &quic_url),
            ("VC_RELAY__TURN_URIS", &turn_uris),
        ],
    )
    .await?;
    let jwt = control.user(&format!("{uid}@example.com")).await?;
    let (device, secret) = control.camera(&jwt, uid).await?;
    // Only camera tickets name the QUIC link.
    let camera_ticket = control.camera_ticket(device, &secret).await?;
    ensure!(camera_ticket.signaling.quic_url.as_deref() == Some(quic_url.as_str()));
    ensure!(control
        .viewer_ticket(&jwt, device)
        .await?
        .signaling
        .quic_url
        .is_none());

    let state = dir.path().join("camera-state.json");
    CameraState {
        device_uid: uid.into(),
        device_id: Some(device),
        device_secret: Some(secret),
        server_url: Some(control_url.clone()),
        camera_model: Some("CP_PLUS_WIFI_V2".into()),
        signaling_url: Some(signaling_url.clone()),
        turn_uris: vec![],
    }
    .save(&state)?;
    let state_arg = state.display().to_string();
    let camera = vc_tests::start(
        "vc-camera",
        &[
            "run",
            "--state",
            &state_arg,
            "--fps",
            "20",
            "--ca-file",
            &cert_file,
        ],
        &[],
    )
    .await?;
    Ok(Stack {
        _dir: dir,
        cert,
        _relay: relay,
        control,
        jwt,
        device,
        camera,
        signaling_url,
        quic_url,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_falls_back_to_wss_when_udp_is_blocked() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(120), fallback())
        .await
        .context("WSS fallback flow exceeded its deadline")?
}

async fn fallback() -> Result<()> {
    // A UDP port that swallows every datagram: the QUIC handshake never completes, as behind
    // a firewall that drops UDP.
    let blackhole = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let quic_url = format!("quic://localhost:{}", blackhole.local_addr()?.port());
    let s = stack("VC-WSS-1", Some(quic_url)).await?;
    // The camera gives QUIC its 5 s handshake deadline, then links over wss://.
    s.until_online(
        &format!("link ws {}", s.signaling_url),
        Duration::from_secs(20),
    )
    .await?;
    let (camera, control, jwt, device, cert) = (&s.camera, &s.control, &s.jwt, s.device, &s.cert);
    let ticket = || control.viewer_ticket(jwt, device);
    let mut viewer =
        viewer_until_online_wss(ticket, device, Duration::from_secs(15), &cert.der).await?;
    viewer.frames(20).await?;
    viewer.close().await;
    let out = camera.output();
    ensure!(
        out.iter().filter(|l| l.starts_with("link ")).count() == 1,
        "the camera relinked: {out:#?}"
    );
    Ok(())
}

async fn flow() -> Result<()> {
    let s = stack("VC-QUIC-1", None).await?;
    // `auto` picks QUIC because the ticket offers it.
    s.until_online(
        &format!("link quic {}", s.quic_url),
        Duration::from_secs(15),
    )
    .await?;
    let (camera, control, jwt, device, cert) = (&s.camera, &s.control, &s.jwt, s.device, &s.cert);

    let ticket = || control.viewer_ticket(jwt, device);
    let mut viewer =
        viewer_until_online_wss(ticket, device, Duration::from_secs(15), &cert.der).await?;
    let before = viewer.frames(20).await?;
    let presence = "SELECT status, presence_conn, presence_at_ms FROM devices WHERE id = ";
    let presence = format!("{presence}'{device}'");
    let row_before = control.sql(&presence).await?;

    // Move the camera's QUIC socket to a new port.
    let pid = camera.child.id().context("camera pid")?;
    let status = tokio::process::Command::new("kill")
        .args(["-USR1", &pid.to_string()])
        .status()
        .await?;
    ensure!(status.success(), "kill -USR1");
    let rebound = camera
        .wait_line("quic rebound ", Duration::from_secs(5))
        .await?;

    // The running call goes on, and a new viewer's offer and answer cross the migrated link
    // (the old socket is closed: nothing can come back through it).
    let after = viewer.frames(40).await?;
    ensure!(
        after[0] > before[before.len() - 1],
        "{before:?} then {after:?}"
    );
    let mut second =
        viewer_until_online_wss(ticket, device, Duration::from_secs(10), &cert.der).await?;
    second.frames(10).await?;
    viewer.frames(5).await?;

    let out = camera.output();
    let count = |p: &str| out.iter().filter(|l| l.starts_with(p)).count();
    ensure!(
        count("online ") == 1 && count("offline ") == 0 && count("link ") == 1,
        "the camera reconnected after `{rebound}`: {out:#?}"
    );
    ensure!(
        !out.iter().any(|l| l.ends_with("closed signaling_lost")),
        "{out:#?}"
    );
    // No presence event reached vc-control: same connection, same time of the online event.
    let row_after = control.sql(&presence).await?;
    ensure!(
        row_after == row_before && row_after.starts_with("online|"),
        "presence changed: {row_before} -> {row_after}"
    );
    second.close().await;
    viewer.close().await;
    Ok(())
}
