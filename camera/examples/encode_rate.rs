//! How many 640x360 test-pattern frames per second one core renders and VP8-encodes,
//! against the 20 fps the camera needs (one encode serves every viewer).
//! `cargo run --release -p camera --example encode_rate [frames]`

use std::time::{Duration, Instant};

use camera::pattern::TestPattern;
use camera::vp8::{Vp8Config, Vp8Encoder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let frames: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(600);
    let config = Vp8Config::default();
    let mut encoder = Vp8Encoder::new(config)?;
    let mut pattern = TestPattern::new(config.width, config.height);
    let (mut render, mut encode, mut bytes) = (Duration::ZERO, Duration::ZERO, 0usize);
    for n in 0..frames {
        let t = Instant::now();
        let image = pattern.render(n, n * 50).to_vec();
        render += t.elapsed();
        let t = Instant::now();
        for f in encoder.encode(&image, n as i64, n % 60 == 0)? {
            bytes += f.data.len();
        }
        encode += t.elapsed();
    }
    let total = (render + encode).as_secs_f64();
    let fps = frames as f64 / total;
    println!(
        "{frames} frames {}x{}: render {:.2} ms/frame, encode {:.2} ms/frame, {:.0} fps on one core = {:.1}x the {} fps stream; {:.0} kbit/s at {} fps",
        config.width,
        config.height,
        render.as_secs_f64() * 1000.0 / frames as f64,
        encode.as_secs_f64() * 1000.0 / frames as f64,
        fps,
        fps / config.fps as f64,
        config.fps,
        bytes as f64 * 8.0 / 1000.0 / (frames as f64 / config.fps as f64),
        config.fps
    );
    Ok(())
}
