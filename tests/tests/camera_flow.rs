//! vc-camera end to end, with no browser: vc-control + vc-relay + vc-camera as real
//! processes. The camera onboards from the QR PNG the control plane renders, streams
//! through the relay, and a Rust viewer (webrtc crate, relay-only ICE) decodes the VP8
//! frames and reads the camera's burnt-in frame counter back. Then the faults: bad QR
//! codes, a relay restart (the camera reconnects by itself), the camera killed (viewers
//! get `camera_offline`).

use std::net::TcpListener;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use shared::api::TicketResponse;
use shared::signaling::ServerMessage;
use uuid::Uuid;
use vc_tests::viewer::{viewer_connect, viewer_until_online, Connect};
use webrtc::ice::candidate::CandidateType;

const TEST_DEADLINE: Duration = Duration::from_secs(150);

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Relay {
    running: vc_tests::Running,
    env: Vec<(String, String)>,
}

async fn start_relay(env: Vec<(String, String)>) -> Result<Relay> {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let running = vc_tests::start("vc-relay", &[], &pairs).await?;
    Ok(Relay { running, env })
}

fn relay_env(
    secret: &str,
    control_url: &str,
    turn: &str,
    signaling: &str,
) -> Vec<(String, String)> {
    [
        ("VC_TICKET_SECRET", secret),
        ("VC_TURN__LISTEN", turn),
        ("VC_TURN__ALLOW_LOOPBACK_PEERS", "true"),
        ("VC_SIGNALING__LISTEN", signaling),
        ("VC_SIGNALING__CONTROL_URL", control_url),
        ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
        // SIGTERM ends the relay at once: the test restarts it on the same ports.
        ("VC_DRAIN_SECS", "0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

struct Api {
    http: reqwest::Client,
    base: String,
    jwt: String,
}

impl Api {
    async fn post(&self, path: &str, body: Value) -> Result<(u16, Value)> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.jwt)
            .json(&body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    async fn viewer_ticket(&self, device_id: Uuid) -> Result<TicketResponse> {
        let (status, body) = self
            .post("/api/relay/ticket", json!({ "device_id": device_id }))
            .await?;
        ensure!(status == 200, "viewer ticket: {status} {body}");
        Ok(serde_json::from_value(body)?)
    }

    /// Onboards a camera and returns (QR PNG bytes, the onboard response).
    async fn onboard(&self, name: &str) -> Result<(Vec<u8>, Value)> {
        let (status, body) = self
            .post(
                "/api/camera/onboard",
                json!({
                    "camera_model": "CP_PLUS_WIFI_V2",
                    "wifi_ssid": "HomeNet",
                    "wifi_password": "correct horse",
                    "device_name": name,
                }),
            )
            .await?;
        ensure!(status == 201, "onboard: {status} {body}");
        let data_url = body["qr_code"].as_str().context("qr_code")?;
        let b64 = data_url
            .strip_prefix("data:image/png;base64,")
            .context("qr_code is a PNG data URL")?;
        Ok((base64::engine::general_purpose::STANDARD.decode(b64)?, body))
    }
}

async fn login(base: &str) -> Result<Api> {
    let http = shared::tls::http_client_builder(None)
        .map_err(anyhow::Error::msg)?
        .build()?;
    let email = format!("cam-{}@example.com", Uuid::new_v4().simple());
    let creds = json!({ "email": email, "password": "camera-flow-pw" });
    let r = http
        .post(format!("{base}/api/register"))
        .json(&creds)
        .send()
        .await?;
    ensure!(r.status().as_u16() == 201, "register: {}", r.status());
    let r: Value = http
        .post(format!("{base}/api/login"))
        .json(&creds)
        .send()
        .await?
        .json()
        .await?;
    Ok(Api {
        http,
        base: base.to_owned(),
        jwt: r["access_token"]
            .as_str()
            .context("access_token")?
            .to_owned(),
    })
}

/// Runs `vc-camera onboard` to completion; returns (success, stdout, stderr).
async fn camera_onboard(args: &[&str]) -> Result<(bool, String, String)> {
    let mut cmd = tokio::process::Command::new(vc_tests::binary("vc-camera"));
    cmd.arg("onboard").args(args).kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("VC_") {
            cmd.env_remove(k);
        }
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("vc-camera onboard hung")??;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_onboards_streams_through_relay_and_survives_faults() -> Result<()> {
    tokio::time::timeout(TEST_DEADLINE, flow())
        .await
        .context("camera flow exceeded its deadline")?
}

async fn flow() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let control_port = free_port()?;
    let control_url = format!("http://127.0.0.1:{control_port}");

    let relay = start_relay(relay_env(
        &secret,
        &control_url,
        "127.0.0.1:0",
        "127.0.0.1:0",
    ))
    .await?;
    let signaling_addr = relay.running.addr("signaling").to_owned();
    let turn_addr = relay.running.addr("turn-udp").to_owned();
    let signaling_url = format!("ws://{signaling_addr}/ws");
    let turn_uris = format!("[\"turn:{turn_addr}?transport=udp\"]");
    let db = format!("sqlite://{}/vc.db?mode=rwc", dir.path().display());
    let data_dir = dir.path().join("data");
    let _control = vc_tests::start(
        "vc-control",
        &[],
        &[
            ("VC_LISTEN", &format!("127.0.0.1:{control_port}")),
            ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
            ("VC_DATABASE_URL", &db),
            ("VC_DATA_DIR", &data_dir.to_string_lossy()),
            ("VC_SERVER_URL", &control_url),
            ("VC_TICKET_SECRET", &secret),
            ("VC_RELAY__SIGNALING_URL", &signaling_url),
            ("VC_RELAY__TURN_URIS", &turn_uris),
        ],
    )
    .await?;
    let api = login(&control_url).await?;

    // Onboard from the QR PNG exactly as the control plane rendered it.
    let (png, onboard) = api.onboard("porch").await?;
    let qr = dir.path().join("qr.png");
    std::fs::write(&qr, &png)?;
    let state = dir.path().join("camera-state.json");
    let state_arg = state.to_string_lossy().into_owned();
    let qr_arg = qr.to_string_lossy().into_owned();
    let (ok, out, err) = camera_onboard(&["--qr", &qr_arg, "--state", &state_arg]).await?;
    ensure!(ok, "onboard failed:\n{out}\n{err}");
    ensure!(
        out.contains("wifi join ssid=\"HomeNet\""),
        "prints the Wi-Fi: {out}"
    );
    ensure!(
        !out.contains("correct horse"),
        "never prints the Wi-Fi password"
    );
    let device_id: Uuid = onboard["device_id"]
        .as_str()
        .context("device_id")?
        .parse()?;
    ensure!(out.contains(&format!("activated {device_id}")), "{out}");
    let saved: Value = serde_json::from_slice(&std::fs::read(&state)?)?;
    ensure!(saved["device_id"] == json!(device_id.to_string()));
    {
        use std::os::unix::fs::PermissionsExt as _;
        ensure!(std::fs::metadata(&state)?.permissions().mode() & 0o777 == 0o600);
    }

    // Bad QR codes: the same (now used) token from another camera, and an unknown token.
    let other_state = dir.path().join("other.json").to_string_lossy().into_owned();
    let (ok, out, err) = camera_onboard(&[
        "--qr",
        &qr_arg,
        "--state",
        &other_state,
        "--uid",
        "VC-SOMEONE-ELSE",
    ])
    .await?;
    ensure!(!ok, "a used token must be refused");
    ensure!(
        out.contains("HTTP 410") && out.contains("\"error\""),
        "prints the server's JSON error: {out}\n{err}"
    );
    // `qr_payload` is the QR text (a JSON string) or the payload object itself.
    let mut forged: Value = match &onboard["qr_payload"] {
        Value::String(text) => serde_json::from_str(text)?,
        other => other.clone(),
    };
    forged["device_token"] = json!("not-a-real-token-0123456789abcdef");
    let (ok, out, _) =
        camera_onboard(&["--qr-payload", &forged.to_string(), "--state", &other_state]).await?;
    ensure!(
        !ok && out.contains("HTTP 404") && out.contains("\"error\""),
        "{out}"
    );

    // Stream: relay-only Rust viewer decodes the live picture.
    let cam = vc_tests::start(
        "vc-camera",
        &["run", "--state", &state_arg, "--fps", "20"],
        &[],
    )
    .await?;
    let mut viewer = viewer_until_online(
        || api.viewer_ticket(device_id),
        device_id,
        Duration::from_secs(15),
    )
    .await?;
    let first = viewer.frames(30).await?;
    ensure!(
        viewer.selected_local_type().await == Some(CandidateType::Relay),
        "relay-only viewer must use a relay candidate"
    );
    ensure!(viewer.ask("ping").await? == "pong");
    let info: Value = serde_json::from_str(&viewer.ask("info").await?)?;
    ensure!(
        info["model"] == "CP_PLUS_WIFI_V2" && info["device_id"] == json!(device_id.to_string()),
        "{info}"
    );

    // A second viewer at the same time sees the same live counter.
    let mut second = viewer_until_online(
        || api.viewer_ticket(device_id),
        device_id,
        Duration::from_secs(5),
    )
    .await?;
    let s = second.frames(10).await?;
    ensure!(s[0] > first[0]);
    viewer.frames(5).await?;
    second.close().await;
    viewer.close().await;

    // Relay restart on the same addresses: the camera comes back by itself.
    let env = relay.env.clone();
    relay.running.terminate().await?;
    let env: Vec<(String, String)> = env
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "VC_TURN__LISTEN" => (k, turn_addr.clone()),
            "VC_SIGNALING__LISTEN" => (k, signaling_addr.clone()),
            _ => (k, v),
        })
        .collect();
    let relay = start_relay(env).await?;
    let mut again = viewer_until_online(
        || api.viewer_ticket(device_id),
        device_id,
        Duration::from_secs(30),
    )
    .await?;
    again.frames(10).await?;
    ensure!(again.ask("ping").await? == "pong");

    // Camera killed: the running session ends and new viewers hear `camera_offline`.
    cam.terminate().await?;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = again.events.recv().await {
            if matches!(ev, ServerMessage::Bye { .. } | ServerMessage::Error { .. }) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    ensure!(ended, "the viewer's session ends when the camera goes away");
    let offline = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(ticket) = api.viewer_ticket(device_id).await {
                if let Ok(Connect::CameraOffline) = viewer_connect(&ticket, device_id).await {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    ensure!(offline.is_ok(), "new viewers are told camera_offline");
    again.close().await;
    drop(relay);
    Ok(())
}
