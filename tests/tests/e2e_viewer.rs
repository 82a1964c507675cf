//! End-to-end proof of issue 6: the viewer web app served by the real `vc-control`, driven in
//! headless Chromium (`tests/e2e/viewer.mjs` on the `tests/browser` kit), watching a real
//! `vc-camera` through the real `vc-relay`: relay-only (relay/relay pair through vc-relay) and
//! direct, camera killed -> "camera offline", camera restarted -> recovers; then (issue 12) a
//! second account in its own Chromium profile watches the camera the owner shared with it, and
//! when the owner revokes the share its player stops within 2 s while the owner's plays on.
//!
//! This test owns every process: the Node script asks for camera actions with `STEP` lines on
//! its stdout and gets `OK`/`ERR` on its stdin. Screenshots land in `tests/e2e/artifacts/`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use vc_tests::browser::{repo_root, require_browser_kit};

/// The whole browser walk-through, bounded so a wedged part can never hang CI.
const TEST_DEADLINE: Duration = Duration::from_secs(240);

/// A free TCP port on 127.0.0.1. vc-control and vc-relay each need the other's address at
/// start, so vc-control's port is chosen before the relay starts.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn camera_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(vc_tests::binary("vc-camera"));
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("VC_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// `vc-camera run`, its output forwarded to the test's stderr. `relay_only`: the camera
/// gathers relay candidates only, so the pair is relay/relay on both ends.
fn start_camera(state: &Path, relay_only: bool, ca: Option<&Path>) -> Result<Child> {
    let state = state.to_string_lossy();
    let mut args = vec!["run", "--state", &state];
    if relay_only {
        args.push("--relay-only");
    }
    let mut cmd = camera_command(&args);
    if let Some(ca) = ca {
        cmd.env("VC_CAMERA_CA_FILE", ca);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn vc-camera run")?;
    let stdout = child.stdout.take().context("camera stdout")?;
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[vc-camera] {line}");
        }
    });
    Ok(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_app_watches_camera_through_relay_in_chromium() -> Result<()> {
    require_browser_kit()?;
    tokio::time::timeout(TEST_DEADLINE, walk_through())
        .await
        .context("end-to-end viewer test exceeded its deadline")?
}

/// Issue 10: the web app served by vc-control over HTTPS (certificate from rcgen, Chromium
/// with `--ignore-certificate-errors`), its tickets naming `wss://` signaling and `turns:` on
/// the relay's single TLS port (the page can reach the relay only through the ticket's URL);
/// the camera activates and fetches tickets over HTTPS and links over QUIC, trusting the test
/// certificate; the relay reports presence to the HTTPS vc-control. Relay-only video through
/// vc-relay is decoded. Chromium runs with UDP forbidden (as behind a TCP-443-only firewall),
/// so its relay candidate is the `turns:` one on the single port although UDP TURN is offered
/// too (which the camera, whose WebRTC stack has no TURN over TLS, uses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_app_over_https_with_wss_and_turns_on_the_single_port() -> Result<()> {
    require_browser_kit()?;
    tokio::time::timeout(TEST_DEADLINE, tls_walk_through())
        .await
        .context("HTTPS viewer test exceeded its deadline")?
}

async fn tls_walk_through() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cert = vc_tests::certs::TestCert::generate()?;
    let (cert_file, key_file) = cert.write(dir.path())?;
    let (c, k) = (
        cert_file.display().to_string(),
        key_file.display().to_string(),
    );
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let jwt_secret = uuid::Uuid::new_v4().simple().to_string();
    let control_port = free_port()?;
    // DNS names: Chromium sends SNI (and matches the certificate) only for host names.
    let control_url = format!("https://localhost:{control_port}");

    // The relay's ports are needed in its own `turn_uris`, so its single port is picked first.
    let single_port = free_port()?;
    let turn_udp = free_port()?;
    let turns = format!("turns:localhost:{single_port}?transport=tcp");
    let turn_uris = format!("[\"turn:127.0.0.1:{turn_udp}?transport=udp\", \"{turns}\"]");
    let single_listen = format!("127.0.0.1:{single_port}");
    let turn_listen = format!("127.0.0.1:{turn_udp}");
    let relay = vc_tests::stack::start_relay(
        &secret,
        &control_url,
        &[
            ("VC_TLS__CERT_FILE", &c),
            ("VC_TLS__KEY_FILE", &k),
            ("VC_TLS__SINGLE_PORT_LISTEN", &single_listen),
            ("VC_TURN__LISTEN", &turn_listen),
            ("VC_TURN__ALLOW_LOOPBACK_PEERS", "true"),
            ("VC_SIGNALING__TURN_URIS", &turn_uris),
            ("VC_SIGNALING__CONTROL_CA_FILE", &c),
        ],
    )
    .await?;
    let quic_port = relay.addr("quic").rsplit_once(':').context("quic port")?.1;
    let quic_url = format!("quic://localhost:{quic_port}");
    let signaling_url = format!("wss://localhost:{single_port}/ws");

    let db = format!("sqlite://{}/vc.db?mode=rwc", dir.path().display());
    let data_dir = dir.path().join("data");
    let control = vc_tests::start(
        "vc-control",
        &[],
        &[
            ("VC_LISTEN", &format!("127.0.0.1:{control_port}")),
            ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
            ("VC_DATABASE_URL", &db),
            ("VC_DATA_DIR", &data_dir.to_string_lossy()),
            ("VC_SERVER_URL", &control_url),
            ("VC_TICKET_SECRET", &secret),
            ("VC_JWT_SECRET", &jwt_secret),
            // The ticket's signaling URL is the only one the page uses: it must be wss:// on
            // the single port.
            ("VC_TLS__CERT_FILE", &c),
            ("VC_TLS__KEY_FILE", &k),
            ("VC_RELAY__SIGNALING_URL", &signaling_url),
            ("VC_RELAY__QUIC_URL", &quic_url),
            ("VC_RELAY__TURN_URIS", &turn_uris),
        ],
    )
    .await?;

    let result = run_viewer_script(
        "tls",
        &control_url,
        &format!("127.0.0.1:{single_port}"),
        &[
            // The viewer's relay candidate must come from `turns:` on the single port: Chromium
            // runs as behind a firewall that lets only TCP out (Chromium's `--webrtc-ip-handling-policy`
            // `disable_non_proxied_udp`: no UDP at all, so no UDP TURN; the camera keeps UDP).
            "--turn-url",
            &turns,
            "--relay-walk-only",
            "--flag=--ignore-certificate-errors",
            "--flag=--webrtc-ip-handling-policy=disable_non_proxied_udp",
        ],
        dir.path(),
        Some(&cert_file),
    )
    .await?;
    for must in [
        "unauthenticated visitor gets the login form",
        "registered and logged in",
        "long-poll reports the activation",
        "camera turns online in the list",
        "relay only: local candidate is relay",
        "relay only: remote candidate is relay",
        "relay only: through vc-relay",
    ] {
        ensure!(
            passed(&result)?.contains(&must),
            "check {must:?} missing: {result}"
        );
    }
    let relay_stats = &result["relay"];
    ensure!(
        relay_stats["framesDecoded"].as_u64().unwrap_or(0) >= 30,
        "relay frames: {relay_stats}"
    );
    drop(relay);
    control.terminate().await?;
    Ok(())
}

/// The names of the checks the script passed.
fn passed(result: &serde_json::Value) -> Result<Vec<&str>> {
    Ok(result["checks"]
        .as_array()
        .context("checks")?
        .iter()
        .filter(|c| c["ok"] == true)
        .filter_map(|c| c["name"].as_str())
        .collect())
}

/// Runs `tests/e2e/viewer.mjs` against `base_url`, doing the camera steps it asks for (the
/// camera state in `dir`, trusting `ca` for HTTPS and QUIC); returns its RESULT once every
/// check passed. `artifacts`: under `tests/e2e/artifacts/`, one per test (they run in
/// parallel and the QR image is handed over as a file there).
async fn run_viewer_script(
    artifacts: &str,
    base_url: &str,
    turn_addr: &str,
    extra_args: &[&str],
    dir: &Path,
    ca: Option<&Path>,
) -> Result<serde_json::Value> {
    let artifacts = repo_root().join("tests/e2e/artifacts").join(artifacts);
    let mut cmd = Command::new("node");
    cmd.arg(repo_root().join("tests/e2e/viewer.mjs"))
        .arg("--base-url")
        .arg(base_url)
        .arg("--turn-addr")
        .arg(turn_addr)
        .arg("--artifacts")
        .arg(&artifacts)
        .args(extra_args);
    if let Some(ca) = ca {
        // The script's own API calls (Node's fetch) trust the test certificate too.
        cmd.env("NODE_EXTRA_CA_CERTS", ca);
    }
    let mut node = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("spawn node tests/e2e/viewer.mjs")?;
    let mut to_node = node.stdin.take().context("node stdin")?;
    let mut from_node = BufReader::new(node.stdout.take().context("node stdout")?).lines();

    let state = dir.join("camera-state.json");
    let mut camera: Option<Child> = None;
    let mut result = None;
    while let Some(line) = from_node.next_line().await? {
        let (kind, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match kind {
            "STEP" => {
                let (step, data) = rest.split_once(' ').unwrap_or((rest, "{}"));
                let data: serde_json::Value = serde_json::from_str(data)?;
                let reply = match do_step(step, &data, &state, &mut camera, ca).await {
                    Ok(()) => "OK".to_owned(),
                    Err(e) => format!("ERR {e:#}"),
                };
                eprintln!("[e2e] step {step}: {reply}");
                to_node.write_all(format!("{reply}\n").as_bytes()).await?;
                to_node.flush().await?;
            }
            "RESULT" => result = Some(serde_json::from_str::<serde_json::Value>(rest)?),
            _ => eprintln!("[viewer.mjs] {line}"),
        }
    }
    let status = node.wait().await?;
    if let Some(mut cam) = camera.take() {
        let _ = cam.kill().await;
    }
    let result = result.context("viewer.mjs printed no RESULT line")?;
    eprintln!(
        "[e2e] result: {}",
        serde_json::to_string_pretty(&result).unwrap_or_default()
    );
    let failed: Vec<_> = result["checks"]
        .as_array()
        .map(|c| c.iter().filter(|c| c["ok"] != true).cloned().collect())
        .unwrap_or_default();
    if !status.success() || result["passed"] != true {
        bail!(
            "viewer walk-through failed ({status}): {} {failed:?}",
            result["error"]
        );
    }
    Ok(result)
}

async fn walk_through() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let jwt_secret = uuid::Uuid::new_v4().simple().to_string();
    let control_port = free_port()?;
    let control_url = format!("http://127.0.0.1:{control_port}");

    let relay = vc_tests::start(
        "vc-relay",
        &[],
        &[
            ("VC_TICKET_SECRET", &secret),
            ("VC_TURN__LISTEN", "127.0.0.1:0"),
            ("VC_TURN__ALLOW_LOOPBACK_PEERS", "true"),
            ("VC_SIGNALING__LISTEN", "127.0.0.1:0"),
            ("VC_SIGNALING__CONTROL_URL", &control_url),
            ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
        ],
    )
    .await?;
    let signaling_url = format!("ws://{}/ws", relay.addr("signaling"));
    let turn_addr = relay.addr("turn-udp").to_owned();
    let turn_uris = format!("[\"turn:{turn_addr}?transport=udp\"]");

    let db = format!("sqlite://{}/vc.db?mode=rwc", dir.path().display());
    let data_dir = dir.path().join("data");
    let control = vc_tests::start(
        "vc-control",
        &[],
        &[
            ("VC_LISTEN", &format!("127.0.0.1:{control_port}")),
            ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
            ("VC_DATABASE_URL", &db),
            ("VC_DATA_DIR", &data_dir.to_string_lossy()),
            ("VC_SERVER_URL", &control_url),
            ("VC_TICKET_SECRET", &secret),
            ("VC_JWT_SECRET", &jwt_secret),
            ("VC_RELAY__SIGNALING_URL", &signaling_url),
            ("VC_RELAY__TURN_URIS", &turn_uris),
        ],
    )
    .await?;
    ensure!(
        control.url("http") == control_url,
        "vc-control bound {} instead of {control_url}",
        control.url("http")
    );

    let result = run_viewer_script("", &control_url, &turn_addr, &[], dir.path(), None).await?;
    // The checks the issue names, read back from the script's own record.
    let passed = passed(&result)?;
    for must in [
        "relay only: local candidate is relay",
        "relay only: remote candidate is relay",
        "relay only: through vc-relay",
        "direct: no relay on the selected pair",
        "camera killed: page says \"Camera offline\"",
        "camera restarted: video recovers without a reload",
        "share: invitee plays the shared camera",
        "share revoked: invitee player stops within 2 s",
        "share revoked: the owner keeps watching",
        "share revoked: the invitee gets no new ticket",
    ] {
        ensure!(passed.contains(&must), "check {must:?} missing: {passed:?}");
    }
    ensure!(
        result["relay"]["framesDecoded"].as_u64().unwrap_or(0) >= 30,
        "relay frames: {}",
        result["relay"]
    );
    ensure!(
        result["direct"]["framesDecoded"].as_u64().unwrap_or(0) >= 30,
        "direct frames: {}",
        result["direct"]
    );
    // vc-relay drains for `drain_secs` on SIGTERM; nothing to prove here, so it is killed on drop.
    drop(relay);
    control.terminate().await?;
    Ok(())
}

fn relay_only(data: &serde_json::Value) -> bool {
    data["relay_only"].as_bool().unwrap_or(false)
}

/// What the page asked for: onboard the camera with the QR PNG it showed, kill it, start it.
async fn do_step(
    step: &str,
    data: &serde_json::Value,
    state: &Path,
    camera: &mut Option<Child>,
    ca: Option<&Path>,
) -> Result<()> {
    match step {
        "onboard" => {
            let qr = data["qr"].as_str().context("onboard needs a qr path")?;
            let mut cmd = camera_command(&[
                "onboard",
                "--qr",
                qr,
                "--state",
                &state.to_string_lossy(),
                "--uid",
                &format!("e2e-{}", uuid::Uuid::new_v4().simple()),
            ]);
            if let Some(ca) = ca {
                cmd.env("VC_CAMERA_CA_FILE", ca);
            }
            let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output();
            let out = tokio::time::timeout(Duration::from_secs(60), out)
                .await
                .context("vc-camera onboard took over 60 s")??;
            eprintln!(
                "[vc-camera onboard] {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            ensure!(out.status.success(), "vc-camera onboard: {}", out.status);
            *camera = Some(start_camera(state, relay_only(data), ca)?);
        }
        "kill-camera" => {
            let mut cam = camera.take().context("no camera running")?;
            // SIGKILL: a crash, not a goodbye.
            cam.kill().await?;
        }
        "start-camera" => {
            ensure!(camera.is_none(), "camera already running");
            *camera = Some(start_camera(state, relay_only(data), ca)?);
        }
        "restart-camera" => {
            if let Some(mut cam) = camera.take() {
                cam.kill().await?;
            }
            *camera = Some(start_camera(state, relay_only(data), ca)?);
        }
        other => bail!("unknown step {other}"),
    }
    Ok(())
}
