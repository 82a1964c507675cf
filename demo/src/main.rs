//! `vc-demo`: the whole system on loopback in one command (`cargo run --release -p demo`).
//!
//! Starts the real vc-relay and vc-control as child processes (from the same target dir as
//! this binary) with one freshly generated ticket secret, registers a demo account, onboards
//! one simulated camera through the real QR flow (the PNG vc-control renders is what
//! `vc-camera onboard --qr` decodes), starts `vc-camera run`, waits until vc-control reports
//! the camera online, prints the web app URL and the login, and stops everything on Ctrl-C or
//! SIGTERM.
//!
//! Stdout follows the harness contract of the daemons (`listening http <addr>` then `ready`,
//! printed once the camera is online), so the integration test can drive it like the others.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const USAGE: &str = "usage: vc-demo [--port N] [--dir DIR] [--email E] [--password P] [--no-build]

  --port N      web app / API port on 127.0.0.1 (default 8000; 0 or busy: any free port)
  --dir DIR     keep the database, secrets, QR image and logs here (default: a temporary
                directory removed on exit)
  --email E     demo account (default demo@example.com)
  --password P  its password (default: generated, printed)
  --no-build    do not run `cargo build` for vc-control, vc-relay and vc-camera first
                (the default when not started through cargo)";

/// How long the camera may take from `vc-camera run` to "online" in vc-control.
const ONLINE_WITHIN: Duration = Duration::from_secs(30);

struct Args {
    port: u16,
    dir: Option<PathBuf>,
    email: String,
    password: Option<String>,
    build: bool,
}

fn parse_args() -> Result<Option<Args>> {
    let mut args = Args {
        port: 8000,
        dir: None,
        email: "demo@example.com".into(),
        password: None,
        build: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--port" => args.port = value()?.parse().context("--port")?,
            "--dir" => args.dir = Some(value()?.into()),
            "--email" => args.email = value()?,
            "--password" => args.password = Some(value()?),
            "--no-build" => args.build = false,
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Some(args))
}

/// A child daemon; SIGTERM on [`Daemon::stop`], SIGKILL if dropped without.
struct Daemon {
    name: &'static str,
    child: Child,
}

impl Daemon {
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            eprintln!("{} did not stop within 10 s; killing it", self.name);
            let _ = self.child.kill().await;
        }
    }
}

/// Starts `bin` (stderr into `<dir>/<name>.log`), returns it and the `listening` lines it
/// printed before `ready`.
async fn spawn(
    bin_dir: &Path,
    name: &'static str,
    args: &[&str],
    env: &[(&str, String)],
    log_dir: &Path,
) -> Result<(Daemon, Vec<(String, String)>)> {
    let path = bin_dir.join(name);
    ensure!(
        path.exists(),
        "{} not found (build it: cargo build --release -p control -p relay -p camera)",
        path.display()
    );
    let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true);
    // The demo's settings are complete; a developer's VC_* overrides would break the pairing.
    for (k, _) in std::env::vars() {
        if k.starts_with("VC_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().with_context(|| format!("start {name}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut listening = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["listening", l, addr] => listening.push((l.to_string(), addr.to_string())),
                ["ready"] => return Ok::<_, anyhow::Error>(true),
                _ => {}
            }
        }
        Ok(false)
    })
    .await;
    match ready {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => bail!(
            "{name} exited before it was ready; see {}",
            log_dir.join(format!("{name}.log")).display()
        ),
        Ok(Err(e)) => return Err(e),
        Err(_) => bail!("{name} not ready within 30 s"),
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((Daemon { name, child }, listening))
}

fn addr_of<'a>(listening: &'a [(String, String)], name: &str) -> Result<&'a str> {
    listening
        .iter()
        .find(|(l, _)| l == name)
        .map(|(_, a)| a.as_str())
        .with_context(|| format!("no `listening {name}` line"))
}

/// 256 random bits as hex (uuid v4 draws from the OS RNG).
fn random_hex() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The requested port if it is free, else any free one. vc-control must know its own URL
/// before it starts (it goes into the QR code), so the port is chosen here.
fn pick_port(wanted: u16) -> Result<u16> {
    if wanted != 0 && std::net::TcpListener::bind(("127.0.0.1", wanted)).is_ok() {
        return Ok(wanted);
    }
    if wanted != 0 {
        eprintln!("port {wanted} is busy; using a free one");
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn api(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let mut req = match body {
        Some(b) => http.post(format!("{base}{path}")).json(&b),
        None => http.get(format!("{base}{path}")),
    };
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.with_context(|| path.to_owned())?;
    let status = res.status().as_u16();
    Ok((status, res.json().await.unwrap_or(Value::Null)))
}

/// Runs `cargo build` for the three binaries in this binary's profile, when started by cargo.
fn build_binaries(bin_dir: &Path) -> Result<()> {
    let Ok(cargo) = std::env::var("CARGO") else {
        return Ok(());
    };
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-p", "control", "-p", "relay", "-p", "camera"]);
    if bin_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    eprintln!("building vc-control, vc-relay, vc-camera ...");
    ensure!(cmd.status()?.success(), "cargo build failed");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let Some(args) = parse_args()? else {
        return Ok(());
    };
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("binary dir")?.to_owned();
    if args.build {
        build_binaries(&bin_dir)?;
    }
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("vc-demo-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let mut daemons = Vec::new();
    let outcome = tokio::select! {
        r = run(&args, &bin_dir, &dir, &mut daemons) => r,
        _ = shutdown_signal() => Ok(()),
    };
    if let Err(e) = &outcome {
        eprintln!("error: {e:#}\nlogs: {}", dir.display());
    }
    // Camera first, so the relay and the control plane see it leave.
    while let Some(d) = daemons.pop() {
        d.stop().await;
    }
    println!("stopped");
    outcome
}

/// Starts everything, reports, and waits for the stop signal (which cancels this future).
async fn run(args: &Args, bin_dir: &Path, dir: &Path, daemons: &mut Vec<Daemon>) -> Result<()> {
    let secret = random_hex();
    let port = pick_port(args.port)?;
    let base = format!("http://127.0.0.1:{port}");

    // Relay first: vc-control hands out its addresses. Its presence reports to vc-control
    // are retried until vc-control is up.
    let (relay, relay_at) = spawn(
        bin_dir,
        "vc-relay",
        &[],
        &[
            ("VC_TICKET_SECRET", secret.clone()),
            ("VC_TURN__LISTEN", "127.0.0.1:0".into()),
            // Browser, camera and relay share one host: relayed addresses are loopback.
            ("VC_TURN__ALLOW_LOOPBACK_PEERS", "true".into()),
            ("VC_SIGNALING__LISTEN", "127.0.0.1:0".into()),
            ("VC_SIGNALING__CONTROL_URL", base.clone()),
            ("VC_ADMIN_LISTEN", "127.0.0.1:0".into()),
            ("VC_DRAIN_SECS", "0".into()),
        ],
        dir,
    )
    .await?;
    daemons.push(relay);
    let signaling = addr_of(&relay_at, "signaling")?;
    let turn_udp = addr_of(&relay_at, "turn-udp")?;
    let mut turn_uris = vec![format!("turn:{turn_udp}?transport=udp")];
    if let Ok(tcp) = addr_of(&relay_at, "turn-tcp") {
        turn_uris.push(format!("turn:{tcp}?transport=tcp"));
    }
    let data_dir = dir.join("data");
    let (control, _) = spawn(
        bin_dir,
        "vc-control",
        &[],
        &[
            ("VC_LISTEN", format!("127.0.0.1:{port}")),
            ("VC_ADMIN_LISTEN", "127.0.0.1:0".into()),
            (
                "VC_DATABASE_URL",
                format!("sqlite://{}/demo.db?mode=rwc", dir.display()),
            ),
            ("VC_DATA_DIR", data_dir.display().to_string()),
            ("VC_SERVER_URL", base.clone()),
            ("VC_TICKET_SECRET", secret),
            ("VC_RELAY__SIGNALING_URL", format!("ws://{signaling}/ws")),
            ("VC_RELAY__TURN_URIS", serde_json::to_string(&turn_uris)?),
        ],
        dir,
    )
    .await?;
    daemons.push(control);

    // The demo account.
    let http = shared::tls::http_client_builder(None)
        .map_err(anyhow::Error::msg)?
        .build()?;
    let password = args
        .password
        .clone()
        .unwrap_or_else(|| random_hex()[..16].to_owned());
    let creds = json!({ "email": args.email, "password": password });
    let (status, body) = api(&http, &base, "/api/register", None, Some(creds.clone())).await?;
    ensure!(status == 201 || status == 409, "register: {status} {body}");
    let (status, body) = api(&http, &base, "/api/login", None, Some(creds)).await?;
    ensure!(status == 200, "login {}: {status} {body}", args.email);
    let jwt = body["access_token"]
        .as_str()
        .context("access_token")?
        .to_owned();

    // Onboard: the QR image exactly as the web app shows it, saved like a user would.
    let (status, models) = api(&http, &base, "/api/camera/models", None, None).await?;
    ensure!(status == 200, "models: {status}");
    let model = models[0]["code"].as_str().context("no camera model")?;
    let (status, onboard) = api(
        &http,
        &base,
        "/api/camera/onboard",
        Some(&jwt),
        Some(json!({
            "camera_model": model,
            "wifi_ssid": "DemoNet",
            "wifi_password": "demo-wifi-password",
            "device_name": "Demo camera",
        })),
    )
    .await?;
    ensure!(status == 201, "onboard: {status} {onboard}");
    let device_id = onboard["device_id"]
        .as_str()
        .context("device_id")?
        .to_owned();
    let png = onboard["qr_code"]
        .as_str()
        .and_then(|u| u.strip_prefix("data:image/png;base64,"))
        .context("qr_code is a PNG data URL")?;
    let qr = dir.join("qr.png");
    std::fs::write(&qr, base64::engine::general_purpose::STANDARD.decode(png)?)?;
    let state = dir.join("camera-state.json");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(bin_dir.join("vc-camera"))
            .arg("onboard")
            .arg("--qr")
            .arg(&qr)
            .arg("--state")
            .arg(&state)
            .env_remove("VC_CAMERA_STATE")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("vc-camera onboard hung")??;
    ensure!(
        out.status.success(),
        "vc-camera onboard failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let state_arg = state.display().to_string();
    let (camera, _) = spawn(
        bin_dir,
        "vc-camera",
        &["run", "--state", &state_arg],
        &[],
        dir,
    )
    .await?;
    daemons.push(camera);

    // Online as vc-control sees it: the relay reported the camera's connection.
    let since = Instant::now();
    loop {
        let path = format!("/api/camera/devices/{device_id}");
        let (status, dev) = api(&http, &base, &path, Some(&jwt), None).await?;
        if status == 200 && dev["status"] == "online" {
            break;
        }
        ensure!(
            since.elapsed() < ONLINE_WITHIN,
            "camera not online within {ONLINE_WITHIN:?} (last: {status} {dev}); logs in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("listening http 127.0.0.1:{port}");
    println!();
    println!(
        "  VisionConnect demo: camera online {} ms after `vc-camera run`",
        since.elapsed().as_millis()
    );
    println!("  web app  {base}/");
    println!("  login    {} / {password}", args.email);
    println!("  camera   \"Demo camera\" {device_id}");
    println!("  logs     {}", dir.display());
    println!("  Ctrl-C stops everything.");
    println!();
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}
