//! Onboarding: read the QR code like the camera's lens would, "join" the Wi-Fi it names,
//! and activate against the control plane; the result is kept in the state file.

use std::io::Write as _;
use std::net::{ToSocketAddrs, UdpSocket};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shared::api::{ActivateRequest, ActivateResponse, QrPayload, QR_PAYLOAD_VERSION};
use uuid::Uuid;

use crate::backoff::Backoff;

/// Errors of onboarding and the state file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnboardError {
    /// The image could not be read or holds no readable QR code.
    #[error("QR image: {0}")]
    Image(String),
    /// The QR text is not a VisionConnect payload.
    #[error("QR payload: {0}")]
    Payload(String),
    /// The control plane refused the activation (its JSON error body is kept verbatim).
    #[error("activation rejected with HTTP {status}: {body}")]
    Rejected { status: u16, body: String },
    /// The control plane could not be reached within the retry budget.
    #[error("control plane unreachable after {attempts} attempts: {last}")]
    Unreachable { attempts: u32, last: String },
    /// Reading or writing the state file failed.
    #[error("state file {path}: {message}")]
    State { path: PathBuf, message: String },
}

/// What the camera remembers between runs (`camera-state.json`, mode 0600).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CameraState {
    /// Hardware id, stable for this state file.
    pub device_uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signaling_url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turn_uris: Vec<String>,
}

impl CameraState {
    /// Loads the state file, or `None` when it does not exist.
    pub fn load(path: &Path) -> Result<Option<Self>, OnboardError> {
        let err = |message: String| OnboardError::State {
            path: path.to_owned(),
            message,
        };
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| err(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Writes the state atomically (temp file + rename), readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<(), OnboardError> {
        let err = |message: String| OnboardError::State {
            path: path.to_owned(),
            message,
        };
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| err(e.to_string()))?;
        // Invariant: the state is plain strings and ids, serialisation cannot fail.
        let json = serde_json::to_vec_pretty(self).expect("state serialises");
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
    }

    /// Device id and secret, once activated.
    pub fn credentials(&self) -> Option<(Uuid, &str)> {
        Some((self.device_id?, self.device_secret.as_deref()?))
    }
}

/// A fresh random hardware id, `VC-` and 12 hex digits.
pub fn new_device_uid() -> String {
    format!("VC-{:012X}", fastrand::u64(..) & 0xFFFF_FFFF_FFFF)
}

/// Decodes the first QR code in a PNG (or any format `image` reads) into its text.
pub fn decode_qr_image(bytes: &[u8]) -> Result<String, OnboardError> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| OnboardError::Image(e.to_string()))?
        .to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare(img);
    let grids = prepared.detect_grids();
    let mut last_err = "no QR code found in the image".to_owned();
    for grid in grids {
        match grid.decode() {
            Ok((_, text)) => return Ok(text),
            Err(e) => last_err = format!("QR code unreadable: {e}"),
        }
    }
    Err(OnboardError::Image(last_err))
}

/// Parses the QR text as a [`QrPayload`] of a version this camera understands.
pub fn parse_payload(text: &str) -> Result<QrPayload, OnboardError> {
    let payload: QrPayload =
        serde_json::from_str(text).map_err(|e| OnboardError::Payload(e.to_string()))?;
    if payload.v != QR_PAYLOAD_VERSION {
        return Err(OnboardError::Payload(format!(
            "unsupported payload version {} (this camera reads {QR_PAYLOAD_VERSION})",
            payload.v
        )));
    }
    if !(payload.server_url.starts_with("http://") || payload.server_url.starts_with("https://")) {
        return Err(OnboardError::Payload(format!(
            "server_url {:?} is not an http(s) URL",
            payload.server_url
        )));
    }
    if payload.device_token.is_empty() {
        return Err(OnboardError::Payload("empty device_token".into()));
    }
    Ok(payload)
}

/// One line describing the Wi-Fi the camera would join (the password is never shown).
pub fn wifi_line(payload: &QrPayload) -> String {
    if payload.wifi_password.is_empty() {
        format!("wifi join ssid={:?} security=open", payload.wifi_ssid)
    } else {
        format!(
            "wifi join ssid={:?} security=wpa2 password=<{} chars>",
            payload.wifi_ssid,
            payload.wifi_password.chars().count()
        )
    }
}

/// The local address of the interface the host would use to reach `server_url`.
/// (A connected UDP socket picks the route without sending anything.)
pub fn local_ip_towards(server_url: &str) -> Option<String> {
    let url = reqwest::Url::parse(server_url).ok()?;
    let host = url.host_str()?;
    let port = url.port_or_known_default()?;
    let target = (host.trim_matches(|c| c == '[' || c == ']'), port)
        .to_socket_addrs()
        .ok()?
        .next()?;
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = UdpSocket::bind(bind).ok()?;
    sock.connect(target).ok()?;
    Some(sock.local_addr().ok()?.ip().to_string())
}

/// Calls `POST <server_url>/api/camera/activate`, retrying network errors and 5xx answers
/// with exponential backoff up to `attempts` tries. A 4xx answer is final.
/// `device_secret` is the secret of an earlier activation, if the state file has one: the
/// server accepts a late retry of the same QR code only with it. A retry inside this call
/// (the answer was lost) comes within the server's retry window and needs none.
pub async fn activate(
    client: &reqwest::Client,
    payload: &QrPayload,
    device_uid: &str,
    device_secret: Option<&str>,
    attempts: u32,
) -> Result<ActivateResponse, OnboardError> {
    let url = format!(
        "{}/api/camera/activate",
        payload.server_url.trim_end_matches('/')
    );
    let request = ActivateRequest {
        device_token: payload.device_token.clone(),
        device_uid: device_uid.to_owned(),
        camera_model: payload.camera_model.clone(),
        local_ip: local_ip_towards(&payload.server_url),
        device_secret: device_secret.map(str::to_owned),
    };
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(8));
    let mut last = String::new();
    for attempt in 1..=attempts.max(1) {
        match client.post(&url).json(&request).send().await {
            Ok(resp) if resp.status().is_success() => {
                return resp
                    .json::<ActivateResponse>()
                    .await
                    .map_err(|e| OnboardError::Payload(format!("bad activation response: {e}")));
            }
            Ok(resp) if resp.status().is_client_error() => {
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                return Err(OnboardError::Rejected { status, body });
            }
            Ok(resp) => last = format!("HTTP {}", resp.status()),
            Err(e) => last = e.to_string(),
        }
        if attempt < attempts {
            let wait = backoff.next_delay();
            tracing::warn!(attempt, error = %last, ?wait, "activation failed, retrying");
            tokio::time::sleep(wait).await;
        }
    }
    Err(OnboardError::Unreachable {
        attempts: attempts.max(1),
        last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> QrPayload {
        QrPayload {
            v: 1,
            wifi_ssid: "Home".into(),
            wifi_password: "hunter22".into(),
            server_url: "http://127.0.0.1:8000".into(),
            device_token: "tok".into(),
            camera_model: "VC-100".into(),
            expires_at: 1_900_000_000,
        }
    }

    #[test]
    fn qr_png_round_trip() {
        // Render a QR code the way a phone screen would show it: dark modules on white,
        // with a quiet zone, scaled up.
        let text = serde_json::to_string(&payload()).unwrap();
        let code = qr_matrix(&text);
        let png = to_png(&code, 6);
        let decoded = decode_qr_image(&png).unwrap();
        assert_eq!(parse_payload(&decoded).unwrap(), payload());
    }

    #[test]
    fn bad_images_and_payloads_are_rejected() {
        assert!(matches!(
            decode_qr_image(b"not a png"),
            Err(OnboardError::Image(_))
        ));
        let blank = to_png(&vec![vec![false; 21]; 21], 4);
        assert!(matches!(
            decode_qr_image(&blank),
            Err(OnboardError::Image(_))
        ));
        assert!(parse_payload("{}").is_err());
        let mut p = payload();
        p.v = 9;
        assert!(parse_payload(&serde_json::to_string(&p).unwrap()).is_err());
        let mut p = payload();
        p.server_url = "ftp://x".into();
        assert!(parse_payload(&serde_json::to_string(&p).unwrap()).is_err());
    }

    #[test]
    fn wifi_line_hides_the_password() {
        let line = wifi_line(&payload());
        assert!(line.contains("\"Home\"") && !line.contains("hunter22"));
        let mut open = payload();
        open.wifi_password.clear();
        assert!(wifi_line(&open).contains("open"));
    }

    #[test]
    fn state_file_is_private_and_round_trips() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("camera-state.json");
        assert_eq!(CameraState::load(&path).unwrap(), None);
        let state = CameraState {
            device_uid: new_device_uid(),
            device_id: Some(Uuid::new_v4()),
            device_secret: Some("s3cret".into()),
            ..CameraState::default()
        };
        state.save(&path).unwrap();
        state.save(&path).unwrap();
        assert_eq!(CameraState::load(&path).unwrap(), Some(state.clone()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(state.credentials().is_some());
        assert!(state.device_uid.starts_with("VC-") && state.device_uid.len() == 15);
    }

    #[test]
    fn local_ip_of_loopback_server() {
        assert_eq!(
            local_ip_towards("http://127.0.0.1:8000").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(local_ip_towards("not a url"), None);
    }

    fn qr_matrix(text: &str) -> Vec<Vec<bool>> {
        let code = qrcode::QrCode::new(text.as_bytes()).unwrap();
        let w = code.width();
        let colors = code.to_colors();
        (0..w)
            .map(|y| {
                (0..w)
                    .map(|x| colors[y * w + x] == qrcode::Color::Dark)
                    .collect()
            })
            .collect()
    }

    fn to_png(modules: &[Vec<bool>], scale: u32) -> Vec<u8> {
        let n = modules.len() as u32;
        let quiet = 4;
        let size = (n + 2 * quiet) * scale;
        let img = image::GrayImage::from_fn(size, size, |x, y| {
            let (mx, my) = (x / scale, y / scale);
            let dark = mx >= quiet
                && my >= quiet
                && mx < n + quiet
                && my < n + quiet
                && modules[(my - quiet) as usize][(mx - quiet) as usize];
            image::Luma([if dark { 0 } else { 255 }])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }
}
