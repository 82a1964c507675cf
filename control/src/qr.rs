//! Onboarding QR codes: the compact-JSON [`shared::api::QrPayload`] rendered as a PNG data URL
//! and as SVG. The PNG is 1 bit per pixel, 4 px per module with the 4-module quiet zone the
//! standard asks for, which keeps it small (a few KiB) and fast to render.

use base64::Engine as _;
use qrcode::{render::svg, Color, EcLevel, QrCode};
use shared::api::QrPayload;

use crate::error::ApiError;

/// Pixels per QR module in the PNG.
const SCALE: usize = 4;
/// Modules of white border on every side.
const QUIET_ZONE: usize = 4;

/// The rendered code.
pub struct QrImages {
    /// `data:image/png;base64,...`
    pub png_data_url: String,
    /// A standalone SVG document.
    pub svg: String,
}

/// Encodes `payload` (compact JSON) with error correction level M.
pub fn render(payload: &QrPayload) -> Result<QrImages, ApiError> {
    let json = serde_json::to_vec(payload).map_err(|e| ApiError::Internal(e.to_string()))?;
    let code = QrCode::with_error_correction_level(&json, EcLevel::M)
        .map_err(|e| ApiError::Internal(format!("qr encode: {e}")))?;
    let png = png_bytes(&code)?;
    let svg = code
        .render::<svg::Color>()
        .min_dimensions(256, 256)
        .quiet_zone(true)
        .build();
    let mut png_data_url = String::from("data:image/png;base64,");
    base64::engine::general_purpose::STANDARD.encode_string(&png, &mut png_data_url);
    Ok(QrImages { png_data_url, svg })
}

fn png_bytes(code: &QrCode) -> Result<Vec<u8>, ApiError> {
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET_ZONE) * SCALE;
    let row_bytes = side.div_ceil(8);
    // 1-bit grayscale: bit set = white.
    let mut pixels = vec![0xffu8; row_bytes * side];
    for (i, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (mx, my) = (i % modules, i / modules);
        for dy in 0..SCALE {
            let y = (my + QUIET_ZONE) * SCALE + dy;
            for dx in 0..SCALE {
                let x = (mx + QUIET_ZONE) * SCALE + dx;
                pixels[y * row_bytes + x / 8] &= !(0x80 >> (x % 8));
            }
        }
    }
    let mut out = Vec::with_capacity(4096);
    let side32 = u32::try_from(side).map_err(|_| ApiError::Internal("qr too large".into()))?;
    let mut encoder = png::Encoder::new(&mut out, side32, side32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::One);
    encoder.set_compression(png::Compression::Fast);
    let png_err = |e: png::EncodingError| ApiError::Internal(format!("png encode: {e}"));
    let mut writer = encoder.write_header().map_err(png_err)?;
    writer.write_image_data(&pixels).map_err(png_err)?;
    writer.finish().map_err(png_err)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_png_and_svg() {
        let payload = QrPayload {
            v: shared::api::QR_PAYLOAD_VERSION,
            wifi_ssid: "Home".into(),
            wifi_password: "correct horse".into(),
            server_url: "http://127.0.0.1:8000".into(),
            device_token: "a".repeat(43),
            camera_model: "CP_PLUS_WIFI_V2".into(),
            expires_at: 1_700_000_000,
        };
        let images = render(&payload).unwrap();
        let b64 = images
            .png_data_url
            .strip_prefix("data:image/png;base64,")
            .unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert!(images.svg.contains("<svg"));
    }
}
