//! The synthetic picture the camera "sees": scrolling colour bars, a bouncing block,
//! and a burnt-in frame counter and UTC wall-clock time, rendered straight into I420.

use crate::vp8::i420_len;

/// Scale of the 5x7 glyphs (each font pixel becomes `SCALE`x`SCALE` image pixels).
const SCALE: usize = 4;
const GLYPH_W: usize = 5;
const GLYPH_H: usize = 7;
/// Horizontal advance per character, in image pixels.
const ADVANCE: usize = (GLYPH_W + 1) * SCALE;

/// Colour bars as (Y, U, V): white, yellow, cyan, green, magenta, red, blue, black.
const BARS: [(u8, u8, u8); 8] = [
    (235, 128, 128),
    (210, 16, 146),
    (170, 166, 16),
    (145, 54, 34),
    (106, 202, 222),
    (81, 90, 240),
    (41, 240, 110),
    (16, 128, 128),
];

/// Renders test-pattern frames into one reused I420 buffer.
pub struct TestPattern {
    width: usize,
    height: usize,
    buf: Vec<u8>,
}

impl TestPattern {
    /// `width` and `height` must be even (I420).
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width: width as usize,
            height: height as usize,
            buf: vec![0; i420_len(width, height)],
        }
    }

    /// Draws frame number `frame` stamped with `unix_ms` and returns the I420 bytes.
    pub fn render(&mut self, frame: u64, unix_ms: u64) -> &[u8] {
        let (w, h) = (self.width, self.height);
        let (cw, ch) = (w / 2, h / 2);
        let shift = (frame as usize * 4) % w.max(1);
        let bar_w = w.div_ceil(BARS.len()).max(1);
        let (y_plane, chroma) = self.buf.split_at_mut(w * h);
        let (u_plane, v_plane) = chroma.split_at_mut(cw * ch);
        // Bars depend on x only: compute one row, then shade it per row.
        let bars: Vec<(u8, u8, u8)> = (0..w)
            .map(|x| BARS[(((x + shift) % w) / bar_w) % BARS.len()])
            .collect();
        for y in 0..h {
            // A soft vertical gradient over the bars so motion is visible everywhere.
            let shade = ((3 * h - y) << 8) / (3 * h);
            let row = &mut y_plane[y * w..(y + 1) * w];
            for (px, bar) in row.iter_mut().zip(&bars) {
                *px = ((bar.0 as usize * shade) >> 8) as u8;
            }
        }
        for y in 0..ch {
            let (u_row, v_row) = (
                &mut u_plane[y * cw..(y + 1) * cw],
                &mut v_plane[y * cw..(y + 1) * cw],
            );
            for (x, (u, v)) in u_row.iter_mut().zip(v_row.iter_mut()).enumerate() {
                let bar = bars[2 * x];
                *u = bar.1;
                *v = bar.2;
            }
        }
        // A grey block bouncing across the frame.
        let size = (h / 5).max(2) & !1;
        let (bx, by) = (
            bounce(frame as usize * 7, w.saturating_sub(size)),
            bounce(frame as usize * 5, h.saturating_sub(size)),
        );
        self.fill(bx, by, size, size, (128, 128, 128));
        // Counter and clock on a black strip at the bottom.
        let secs = unix_ms / 1000;
        let text = format!(
            "#{:06} {:02}:{:02}:{:02}.{:03}",
            frame % 1_000_000,
            (secs / 3600) % 24,
            (secs / 60) % 60,
            secs % 60,
            unix_ms % 1000
        );
        let (tx, ty) = text_origin(h);
        let strip_h = GLYPH_H * SCALE + 2 * SCALE;
        let strip_w = (text.len() * ADVANCE + 2 * SCALE).min(w) & !1;
        self.fill(tx - SCALE, ty - SCALE, strip_w, strip_h, (16, 128, 128));
        self.text(tx, ty, &text, 235);
        &self.buf
    }

    /// Fills a rectangle (clipped to the frame) with a (Y, U, V) colour.
    fn fill(&mut self, x0: usize, y0: usize, rw: usize, rh: usize, (cy, cu, cv): (u8, u8, u8)) {
        let (w, h) = (self.width, self.height);
        let (cw, ch) = (w / 2, h / 2);
        let (x1, y1) = ((x0 + rw).min(w), (y0 + rh).min(h));
        for y in y0.min(h)..y1 {
            self.buf[y * w + x0.min(w)..y * w + x1].fill(cy);
        }
        let (u_off, v_off) = (w * h, w * h + cw * ch);
        for y in (y0 / 2).min(ch)..y1.div_ceil(2).min(ch) {
            for x in (x0 / 2).min(cw)..x1.div_ceil(2).min(cw) {
                self.buf[u_off + y * cw + x] = cu;
                self.buf[v_off + y * cw + x] = cv;
            }
        }
    }

    /// Draws `text` in luma `level` with its top-left corner at (x0, y0); clipped.
    fn text(&mut self, x0: usize, y0: usize, text: &str, level: u8) {
        for (i, c) in text.chars().enumerate() {
            let rows = glyph(c);
            for (gy, bits) in rows.iter().enumerate() {
                for gx in 0..GLYPH_W {
                    if bits & (1 << (GLYPH_W - 1 - gx)) == 0 {
                        continue;
                    }
                    let px = x0 + i * ADVANCE + gx * SCALE;
                    let py = y0 + gy * SCALE;
                    for y in py..(py + SCALE).min(self.height) {
                        for x in px..(px + SCALE).min(self.width) {
                            self.buf[y * self.width + x] = level;
                        }
                    }
                }
            }
        }
    }
}

/// Position that moves one unit per step and bounces between 0 and `max`.
fn bounce(step: usize, max: usize) -> usize {
    if max == 0 {
        return 0;
    }
    let p = step % (2 * max);
    if p <= max {
        p
    } else {
        2 * max - p
    }
}

/// 5x7 bitmaps (one byte per row, bit 4 is the leftmost pixel) of the characters drawn.
fn glyph(c: char) -> [u8; GLYPH_H] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        _ => [0; GLYPH_H],
    }
}

/// Top-left corner of the text line in a frame of this size.
fn text_origin(height: usize) -> (usize, usize) {
    let strip_h = GLYPH_H * SCALE + 2 * SCALE;
    let strip_y = height.saturating_sub(strip_h + 2 * SCALE) & !1;
    (3 * SCALE, strip_y + SCALE)
}

/// Reads `n` characters of burnt-in text back from a luma plane (`?` where no glyph
/// matches), by sampling the centre of every font pixel.
pub fn read_text(y_plane: &[u8], width: usize, height: usize, n: usize) -> String {
    let (x0, y0) = text_origin(height);
    let alphabet = "0123456789:.# ";
    (0..n)
        .map(|i| {
            let mut rows = [0u8; GLYPH_H];
            for (gy, row) in rows.iter_mut().enumerate() {
                for gx in 0..GLYPH_W {
                    let x = x0 + i * ADVANCE + gx * SCALE + SCALE / 2;
                    let y = y0 + gy * SCALE + SCALE / 2;
                    if y_plane.get(y * width + x).is_some_and(|&v| v > 128) {
                        *row |= 1 << (GLYPH_W - 1 - gx);
                    }
                }
            }
            alphabet.chars().find(|&c| glyph(c) == rows).unwrap_or('?')
        })
        .collect()
}

/// The frame counter burnt into a decoded picture, if legible.
pub fn read_counter(y_plane: &[u8], width: usize, height: usize) -> Option<u64> {
    let text = read_text(y_plane, width, height, 7);
    text.strip_prefix('#')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_move_and_carry_the_counter() {
        let mut p = TestPattern::new(640, 360);
        let a = p.render(1, 0).to_vec();
        let b = p.render(2, 0).to_vec();
        assert_eq!(a.len(), 640 * 360 * 3 / 2);
        let changed = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert!(changed > 10_000, "the pattern moves between frames");

        // Read the counter back: compare each digit cell against the font.
        let frame = p.render(123_456, 45_296_789).to_vec(); // 12:34:56.789 UTC
        assert_eq!(read_text(&frame, 640, 360, 20), "#123456 12:34:56.789");
        assert_eq!(read_counter(&frame, 640, 360), Some(123_456));
    }

    #[test]
    fn bounce_stays_in_range() {
        for s in 0..100 {
            assert!(bounce(s, 10) <= 10);
        }
        assert_eq!(bounce(12, 10), 8);
        assert_eq!(bounce(5, 0), 0);
    }
}
