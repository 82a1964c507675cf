//! `vc-camera` command line: `onboard` from a QR code, then `run`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use camera::link::Transport;
use camera::onboard::{self, CameraState, OnboardError};
use camera::peer::{Camera, CameraInfo, PeerOptions};
use camera::run::{self, RunConfig};
use camera::vp8::Vp8Config;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "vc-camera", version, about = "VisionConnect camera simulator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read the onboarding QR code, join the Wi-Fi it names and activate with the server.
    Onboard {
        /// PNG image of the QR code the viewer app shows.
        #[arg(
            long,
            conflicts_with = "qr_payload",
            required_unless_present = "qr_payload"
        )]
        qr: Option<PathBuf>,
        /// The QR code's JSON text, instead of an image.
        #[arg(long)]
        qr_payload: Option<String>,
        /// Where the camera keeps its identity and credentials.
        #[arg(long, env = "VC_CAMERA_STATE", default_value = "camera-state.json")]
        state: PathBuf,
        /// Hardware id (default: the one in the state file, else a new random one).
        #[arg(long)]
        uid: Option<String>,
        /// Activation attempts on network errors before giving up.
        #[arg(long, default_value_t = 8)]
        attempts: u32,
        /// PEM certificate(s) to trust for an `https://` server (default: system roots).
        #[arg(long, env = "VC_CAMERA_CA_FILE")]
        ca_file: Option<PathBuf>,
    },
    /// Connect to the relay and stream to viewers until stopped.
    Run {
        #[arg(long, env = "VC_CAMERA_STATE", default_value = "camera-state.json")]
        state: PathBuf,
        #[arg(long, default_value_t = 640)]
        width: u32,
        #[arg(long, default_value_t = 360)]
        height: u32,
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=60))]
        fps: u32,
        /// Target bitrate, kbit/s.
        #[arg(long, default_value_t = 600)]
        bitrate: u32,
        /// Use relay (TURN) candidates only.
        #[arg(long)]
        relay_only: bool,
        /// Also offer loopback host candidates (single-host demos and tests).
        #[arg(long)]
        include_loopback: bool,
        /// Signaling link: `auto` = QUIC when the ticket offers a `quic_url` (WebSocket if
        /// the QUIC handshake fails), `quic`, or `ws`.
        #[arg(long, value_enum, env = "VC_CAMERA_TRANSPORT", default_value = "auto")]
        transport: Transport,
        /// Keep-alive interval in seconds (QUIC PING / WebSocket ping); below the ~30 s
        /// after which many NATs drop an idle UDP mapping.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=25))]
        keepalive_secs: u64,
        /// PEM certificate(s) to trust for vc-control over HTTPS and the relay's QUIC
        /// listener (default: system roots).
        #[arg(long, env = "VC_CAMERA_CA_FILE")]
        ca_file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error,camera=info,vc_camera=info".into()),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Onboard {
            qr,
            qr_payload,
            state,
            uid,
            attempts,
            ca_file,
        } => onboard_cmd(qr, qr_payload, state, uid, attempts, ca_file).await,
        Command::Run {
            state,
            width,
            height,
            fps,
            bitrate,
            relay_only,
            include_loopback,
            transport,
            keepalive_secs,
            ca_file,
        } => {
            let video = Vp8Config {
                width,
                height,
                fps,
                bitrate_kbps: bitrate,
                keyframe_interval: fps * 3,
            };
            let options = PeerOptions {
                relay_only,
                include_loopback,
            };
            let link = LinkArgs {
                transport,
                keepalive: std::time::Duration::from_secs(keepalive_secs),
                ca_file,
            };
            run_cmd(state, video, options, link).await
        }
    }
}

async fn onboard_cmd(
    qr: Option<PathBuf>,
    qr_payload: Option<String>,
    state_path: PathBuf,
    uid: Option<String>,
    attempts: u32,
    ca_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let text = match (qr, qr_payload) {
        (Some(path), _) => {
            let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            onboard::decode_qr_image(&bytes)?
        }
        (None, Some(text)) => text,
        (None, None) => bail!("give --qr <png> or --qr-payload <json>"),
    };
    let payload = onboard::parse_payload(&text)?;
    println!("{}", onboard::wifi_line(&payload));
    println!(
        "server {} model {}",
        payload.server_url, payload.camera_model
    );

    let existing = CameraState::load(&state_path)?;
    let device_uid = uid
        .or_else(|| existing.as_ref().map(|s| s.device_uid.clone()))
        .unwrap_or_else(onboard::new_device_uid);
    if existing.is_none() {
        // Keep the hardware id stable across retries of a failed onboarding.
        CameraState {
            device_uid: device_uid.clone(),
            ..CameraState::default()
        }
        .save(&state_path)?;
    }
    println!("uid {device_uid}");

    let client = shared::tls::http_client_builder(ca_file.as_deref())
        .map_err(anyhow::Error::msg)?
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let earlier_secret = existing.as_ref().and_then(|s| s.device_secret.as_deref());
    let activated =
        match onboard::activate(&client, &payload, &device_uid, earlier_secret, attempts).await {
            Ok(a) => a,
            Err(OnboardError::Rejected { status, body }) => {
                // The server's JSON error, verbatim, for the operator.
                println!("activation failed HTTP {status} {body}");
                bail!("activation rejected (HTTP {status}): {body}");
            }
            Err(e) => return Err(e.into()),
        };
    CameraState {
        device_uid,
        device_id: Some(activated.device_id),
        device_secret: Some(activated.device_secret),
        server_url: Some(payload.server_url.clone()),
        camera_model: Some(payload.camera_model.clone()),
        signaling_url: Some(activated.signaling_url),
        turn_uris: activated.turn_uris,
    }
    .save(&state_path)?;
    println!("activated {}", activated.device_id);
    Ok(())
}

/// `run`'s signaling-link flags.
struct LinkArgs {
    transport: Transport,
    keepalive: std::time::Duration,
    ca_file: Option<PathBuf>,
}

async fn run_cmd(
    state_path: PathBuf,
    video: Vp8Config,
    options: PeerOptions,
    link: LinkArgs,
) -> anyhow::Result<()> {
    let state = CameraState::load(&state_path)?.with_context(|| {
        format!(
            "{} not found: run `vc-camera onboard` first",
            state_path.display()
        )
    })?;
    let (device_id, secret) = state
        .credentials()
        .context("the camera is not activated yet: run `vc-camera onboard` first")?;
    let server_url = state
        .server_url
        .clone()
        .context("state file has no server_url: run `vc-camera onboard` again")?;
    let config = RunConfig {
        server_url,
        device_id,
        device_secret: secret.to_owned(),
        transport: link.transport,
        keepalive: link.keepalive,
        ca_file: link.ca_file,
    };
    let info = CameraInfo {
        device_id: Some(device_id),
        uid: state.device_uid.clone(),
        model: state.camera_model.clone().unwrap_or_default(),
    };
    let camera = Camera::new(video, info, options)?;
    println!(
        "camera {device_id} {}x{}@{} VP8",
        video.width, video.height, video.fps
    );
    println!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        res = run::run(&camera, &config) => {
            // Ok is uninhabited: run only returns on a setup error.
            let Err(e) = res;
            bail!(e);
        }
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("stopped");
    Ok(())
}
