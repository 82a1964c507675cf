//! Onboarding QR codes: the compact-JSON [`shared::api::QrPayload`] rendered as a PNG data URL
//! and as SVG (both rendered here from the module matrix). The PNG is 1 bit per pixel, 4 px per module with the 4-module quiet zone the
//! standard asks for, which keeps it small (a few KiB) and fast to render.

use base64::Engine as _;
use qrcode::canvas::{Canvas, MaskPattern};
use qrcode::{Color, EcLevel};
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
    let (modules, width) = encode(&json)?;
    let png = png_bytes(&modules, width)?;
    let svg = svg(&modules, width);
    let mut png_data_url = String::from("data:image/png;base64,");
    base64::engine::general_purpose::STANDARD.encode_string(&png, &mut png_data_url);
    Ok(QrImages { png_data_url, svg })
}

const MASKS: [MaskPattern; 8] = [
    MaskPattern::Checkerboard,
    MaskPattern::HorizontalLines,
    MaskPattern::VerticalLines,
    MaskPattern::DiagonalLines,
    MaskPattern::LargeCheckerboard,
    MaskPattern::Fields,
    MaskPattern::Diamonds,
    MaskPattern::Meadow,
];

/// The module matrix (row-major, `true` = dark) and its width. Like `QrCode::new` but with
/// our own mask scoring: the crate's `apply_best_mask` costs ~15 ms per code and bounded
/// onboarding throughput; [`penalty`] does the same ISO 18004 scoring in microseconds.
fn encode(data: &[u8]) -> Result<(Vec<bool>, usize), ApiError> {
    let qr_err = |e: qrcode::types::QrError| ApiError::Internal(format!("qr encode: {e}"));
    let bits = qrcode::bits::encode_auto(data, EcLevel::M).map_err(qr_err)?;
    let version = bits.version();
    let bytes = bits.into_bytes();
    let (encoded, ec) =
        qrcode::ec::construct_codewords(&bytes, version, EcLevel::M).map_err(qr_err)?;
    let mut canvas = Canvas::new(version, EcLevel::M);
    canvas.draw_all_functional_patterns();
    canvas.draw_data(&encoded, &ec);
    let width =
        usize::try_from(version.width()).map_err(|_| ApiError::Internal("qr width".into()))?;
    MASKS
        .iter()
        .map(|&mask| {
            let mut c = canvas.clone();
            c.apply_mask(mask);
            let modules: Vec<bool> = c
                .into_colors()
                .into_iter()
                .map(|m| m == Color::Dark)
                .collect();
            (penalty(&modules, width), modules)
        })
        .min_by_key(|(score, _)| *score)
        .map(|(_, modules)| (modules, width))
        .ok_or_else(|| ApiError::Internal("no mask".into()))
}

/// ISO/IEC 18004 §7.8.3 mask penalty: runs of 5+ (N1), 2x2 blocks (N2), finder-like
/// 1:1:3:1:1 patterns next to 4 light modules (N3), dark/light imbalance (N4).
fn penalty(m: &[bool], w: usize) -> u32 {
    let at = |x: usize, y: usize| m[y * w + x];
    let mut score = 0u32;
    for horizontal in [true, false] {
        for a in 0..w {
            let line: Vec<bool> = (0..w)
                .map(|b| if horizontal { at(b, a) } else { at(a, b) })
                .collect();
            let mut run = 1;
            for i in 1..=w {
                if i < w && line[i] == line[i - 1] {
                    run += 1;
                } else {
                    if run >= 5 {
                        score += 3 + (run - 5);
                    }
                    run = 1;
                }
            }
            const FINDER: [bool; 7] = [true, false, true, true, true, false, true];
            let light = |i: isize| i < 0 || i >= w as isize || !line[i as usize];
            for i in 0..w.saturating_sub(6) {
                if line[i..i + 7] == FINDER {
                    let i = i as isize;
                    if (i - 4..i).all(light) || (i + 7..i + 11).all(light) {
                        score += 40;
                    }
                }
            }
        }
    }
    for y in 0..w - 1 {
        for x in 0..w - 1 {
            let c = at(x, y);
            if at(x + 1, y) == c && at(x, y + 1) == c && at(x + 1, y + 1) == c {
                score += 3;
            }
        }
    }
    let dark = m.iter().filter(|d| **d).count();
    let percent = dark * 100 / m.len();
    score += (percent.abs_diff(50) / 5) as u32 * 10;
    score
}

/// A standalone SVG: one path, horizontal runs of dark modules merged, with a quiet zone.
fn svg(m: &[bool], w: usize) -> String {
    use std::fmt::Write as _;
    let side = w + 2 * QUIET_ZONE;
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        r##"<?xml version="1.0" standalone="yes"?><svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{px}" height="{px}" viewBox="0 0 {side} {side}" shape-rendering="crispEdges"><rect width="{side}" height="{side}" fill="#fff"/><path fill="#000" d=""##,
        px = side * SCALE,
    );
    for y in 0..w {
        let mut x = 0;
        while x < w {
            if m[y * w + x] {
                let start = x;
                while x < w && m[y * w + x] {
                    x += 1;
                }
                let _ = write!(
                    out,
                    "M{} {}h{}v1H{}z",
                    start + QUIET_ZONE,
                    y + QUIET_ZONE,
                    x - start,
                    start + QUIET_ZONE
                );
            } else {
                x += 1;
            }
        }
    }
    out.push_str(r#""/></svg>"#);
    out
}

fn png_bytes(m: &[bool], modules: usize) -> Result<Vec<u8>, ApiError> {
    let side = (modules + 2 * QUIET_ZONE) * SCALE;
    let row_bytes = side.div_ceil(8);
    // 1-bit grayscale: bit set = white.
    let mut pixels = vec![0xffu8; row_bytes * side];
    for (i, dark) in m.iter().enumerate() {
        if !*dark {
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
