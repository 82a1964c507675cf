//! A realtime VP8 encoder over libvpx (`env-libvpx-sys` bindings, linked via pkg-config).
//!
//! Tuned for live streaming: one pass, CBR, no lagged frames (every input frame comes
//! out at once), fast speed preset, periodic key frames plus key frames on demand
//! (a viewer that joins or reports loss asks for one with a PLI).

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_ulong};
use std::ptr;

use vpx_sys::{
    vp8e_enc_control_id, vpx_codec_ctx_t, vpx_codec_cx_pkt_kind, vpx_codec_destroy,
    vpx_codec_enc_cfg_t, vpx_codec_enc_config_default, vpx_codec_enc_init_ver, vpx_codec_encode,
    vpx_codec_err_t, vpx_codec_error, vpx_codec_get_cx_data, vpx_codec_vp8_cx, vpx_image_t,
    vpx_img_fmt, vpx_img_wrap, vpx_kf_mode, vpx_rc_mode, VPX_DL_REALTIME, VPX_EFLAG_FORCE_KF,
    VPX_ENCODER_ABI_VERSION, VPX_ERROR_RESILIENT_DEFAULT, VPX_FRAME_IS_KEY,
};

/// Errors of the VP8 encoder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Vp8Error {
    /// Width or height is zero or odd (I420 needs even dimensions).
    #[error("bad frame size {0}x{1}: both must be even and non-zero")]
    BadSize(u32, u32),
    /// The input buffer is not one I420 frame of the configured size.
    #[error("frame buffer has {got} bytes, expected {want}")]
    BadFrame { got: usize, want: usize },
    /// libvpx reported an error.
    #[error("libvpx: {0}")]
    Codec(String),
}

/// Encoder settings.
#[derive(Debug, Clone, Copy)]
pub struct Vp8Config {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// Longest distance between key frames, in frames.
    pub keyframe_interval: u32,
}

impl Default for Vp8Config {
    fn default() -> Self {
        Self {
            width: 640,
            height: 360,
            fps: 20,
            bitrate_kbps: 600,
            keyframe_interval: 60,
        }
    }
}

/// One encoded VP8 frame.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    pub data: Vec<u8>,
    pub keyframe: bool,
    pub pts: i64,
}

/// A libvpx VP8 encoder context.
pub struct Vp8Encoder {
    ctx: vpx_codec_ctx_t,
    config: Vp8Config,
}

// SAFETY: the libvpx context is only used through `&mut self`; libvpx keeps no
// thread-affine state, so moving the context to another thread is sound.
unsafe impl Send for Vp8Encoder {}

impl Vp8Encoder {
    pub fn new(config: Vp8Config) -> Result<Self, Vp8Error> {
        if config.width == 0
            || config.height == 0
            || !config.width.is_multiple_of(2)
            || !config.height.is_multiple_of(2)
        {
            return Err(Vp8Error::BadSize(config.width, config.height));
        }
        // SAFETY: plain FFI calls; `cfg` and `ctx` are zeroed C structs (valid all-zero
        // bit patterns) that libvpx fills in before reading.
        unsafe {
            let iface = vpx_codec_vp8_cx();
            if iface.is_null() {
                return Err(Vp8Error::Codec("libvpx has no VP8 encoder".into()));
            }
            let mut cfg: vpx_codec_enc_cfg_t = MaybeUninit::zeroed().assume_init();
            check(vpx_codec_enc_config_default(iface, &mut cfg, 0), None)?;
            cfg.g_w = config.width;
            cfg.g_h = config.height;
            cfg.g_timebase.num = 1;
            cfg.g_timebase.den = config.fps.max(1) as c_int;
            cfg.g_threads = 1;
            cfg.g_lag_in_frames = 0;
            cfg.g_error_resilient = VPX_ERROR_RESILIENT_DEFAULT;
            cfg.rc_end_usage = vpx_rc_mode::VPX_CBR;
            cfg.rc_target_bitrate = config.bitrate_kbps;
            cfg.rc_min_quantizer = 4;
            cfg.rc_max_quantizer = 56;
            cfg.rc_undershoot_pct = 95;
            cfg.rc_overshoot_pct = 15;
            cfg.rc_buf_sz = 1000;
            cfg.rc_buf_initial_sz = 500;
            cfg.rc_buf_optimal_sz = 600;
            cfg.rc_dropframe_thresh = 0;
            cfg.kf_mode = vpx_kf_mode::VPX_KF_AUTO;
            cfg.kf_min_dist = 0;
            cfg.kf_max_dist = config.keyframe_interval.max(1);

            let mut ctx: vpx_codec_ctx_t = MaybeUninit::zeroed().assume_init();
            check(
                vpx_codec_enc_init_ver(&mut ctx, iface, &cfg, 0, VPX_ENCODER_ABI_VERSION as c_int),
                None,
            )?;
            let mut encoder = Self { ctx, config };
            // Fastest realtime preset: the test pattern is easy and CPU is shared.
            let rc = vpx_sys::vpx_codec_control_(
                &mut encoder.ctx,
                vp8e_enc_control_id::VP8E_SET_CPUUSED as c_int,
                12 as c_int,
            );
            check(rc, Some(&mut encoder.ctx))?;
            Ok(encoder)
        }
    }

    pub fn config(&self) -> Vp8Config {
        self.config
    }

    /// Size in bytes of one I420 frame of the configured dimensions.
    pub fn frame_len(&self) -> usize {
        i420_len(self.config.width, self.config.height)
    }

    /// Encodes one I420 frame (Y plane, then U, then V, no padding). Returns the
    /// compressed frames libvpx produced (one, or none if it dropped the frame).
    pub fn encode(
        &mut self,
        i420: &[u8],
        pts: i64,
        force_keyframe: bool,
    ) -> Result<Vec<EncodedFrame>, Vp8Error> {
        let want = self.frame_len();
        if i420.len() != want {
            return Err(Vp8Error::BadFrame {
                got: i420.len(),
                want,
            });
        }
        let flags = if force_keyframe {
            VPX_EFLAG_FORCE_KF as _
        } else {
            0
        };
        let mut out = Vec::new();
        // SAFETY: `image` wraps `i420`, which outlives the encode call and has exactly
        // the size libvpx reads for an I420 image of these dimensions (checked above);
        // libvpx only reads input pixels. Packets returned by `vpx_codec_get_cx_data`
        // stay valid until the next encode call, and are copied out before that.
        unsafe {
            let mut image: vpx_image_t = MaybeUninit::zeroed().assume_init();
            let wrapped = vpx_img_wrap(
                &mut image,
                vpx_img_fmt::VPX_IMG_FMT_I420,
                self.config.width,
                self.config.height,
                1,
                i420.as_ptr() as *mut u8,
            );
            if wrapped.is_null() {
                return Err(Vp8Error::Codec("vpx_img_wrap failed".into()));
            }
            let rc = vpx_codec_encode(
                &mut self.ctx,
                &image,
                pts,
                1,
                flags,
                VPX_DL_REALTIME as c_ulong,
            );
            check(rc, Some(&mut self.ctx))?;
            let mut iter = ptr::null();
            loop {
                let pkt = vpx_codec_get_cx_data(&mut self.ctx, &mut iter);
                if pkt.is_null() {
                    break;
                }
                if (*pkt).kind != vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                    continue;
                }
                let frame = (*pkt).data.frame;
                let data =
                    std::slice::from_raw_parts(frame.buf as *const u8, frame.sz as usize).to_vec();
                out.push(EncodedFrame {
                    data,
                    keyframe: frame.flags & VPX_FRAME_IS_KEY != 0,
                    pts: frame.pts,
                });
            }
        }
        Ok(out)
    }
}

impl Drop for Vp8Encoder {
    fn drop(&mut self) {
        // SAFETY: `ctx` was initialised by `vpx_codec_enc_init_ver` and is destroyed once.
        unsafe {
            vpx_codec_destroy(&mut self.ctx);
        }
    }
}

/// A decoded picture's luma plane (enough to check what a viewer would see).
#[derive(Debug, Clone)]
pub struct DecodedLuma {
    pub width: usize,
    pub height: usize,
    /// `width * height` bytes, rows packed.
    pub y: Vec<u8>,
}

/// A libvpx VP8 decoder: lets tests (and the Rust viewer in the integration tests)
/// prove that what arrives over WebRTC is decodable video with the expected content.
pub struct Vp8Decoder {
    ctx: vpx_codec_ctx_t,
}

// SAFETY: as for the encoder, the context is only used through `&mut self`.
unsafe impl Send for Vp8Decoder {}

impl Vp8Decoder {
    pub fn new() -> Result<Self, Vp8Error> {
        // SAFETY: plain FFI; the zeroed context is initialised by libvpx, a null config
        // selects the defaults.
        unsafe {
            let iface = vpx_sys::vpx_codec_vp8_dx();
            if iface.is_null() {
                return Err(Vp8Error::Codec("libvpx has no VP8 decoder".into()));
            }
            let mut ctx: vpx_codec_ctx_t = MaybeUninit::zeroed().assume_init();
            check(
                vpx_sys::vpx_codec_dec_init_ver(
                    &mut ctx,
                    iface,
                    ptr::null(),
                    0,
                    vpx_sys::VPX_DECODER_ABI_VERSION as c_int,
                ),
                None,
            )?;
            Ok(Self { ctx })
        }
    }

    /// Decodes one compressed frame; returns the luma of the picture it produced.
    pub fn decode(&mut self, frame: &[u8]) -> Result<Option<DecodedLuma>, Vp8Error> {
        let len = u32::try_from(frame.len())
            .map_err(|_| Vp8Error::Codec("frame larger than 4 GiB".into()))?;
        // SAFETY: libvpx reads `len` bytes from `frame`; the returned image and its
        // planes stay valid until the next decode call and are copied out before it.
        unsafe {
            let rc =
                vpx_sys::vpx_codec_decode(&mut self.ctx, frame.as_ptr(), len, ptr::null_mut(), 0);
            check(rc, Some(&mut self.ctx))?;
            let mut iter = ptr::null();
            let img = vpx_sys::vpx_codec_get_frame(&mut self.ctx, &mut iter);
            if img.is_null() {
                return Ok(None);
            }
            let img = &*img;
            let (w, h) = (img.d_w as usize, img.d_h as usize);
            let stride = img.stride[0] as usize;
            let mut y = Vec::with_capacity(w * h);
            for row in 0..h {
                let p = img.planes[0].add(row * stride);
                y.extend_from_slice(std::slice::from_raw_parts(p, w));
            }
            Ok(Some(DecodedLuma {
                width: w,
                height: h,
                y,
            }))
        }
    }
}

impl Drop for Vp8Decoder {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe {
            vpx_codec_destroy(&mut self.ctx);
        }
    }
}

/// Bytes in an I420 frame: a full-size Y plane and two quarter-size chroma planes.
pub fn i420_len(width: u32, height: u32) -> usize {
    let (w, h) = (width as usize, height as usize);
    w * h + 2 * (w / 2) * (h / 2)
}

/// Maps a libvpx status to a result, with libvpx's message when a context is at hand.
///
/// # Safety
/// `ctx`, if given, must be an initialised codec context.
unsafe fn check(rc: vpx_codec_err_t, ctx: Option<&mut vpx_codec_ctx_t>) -> Result<(), Vp8Error> {
    if rc == vpx_codec_err_t::VPX_CODEC_OK {
        return Ok(());
    }
    let msg = match ctx {
        // SAFETY: caller guarantees an initialised context; libvpx returns a static C string.
        Some(ctx) => unsafe {
            let p = vpx_codec_error(ctx);
            if p.is_null() {
                format!("{rc:?}")
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        },
        None => format!("{rc:?}"),
    };
    Err(Vp8Error::Codec(msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::TestPattern;

    #[test]
    fn encodes_keyframe_then_deltas_and_forced_keyframes() {
        let config = Vp8Config::default();
        let mut enc = Vp8Encoder::new(config).unwrap();
        let mut pattern = TestPattern::new(config.width, config.height);
        let mut frames = Vec::new();
        for n in 0..10 {
            let img = pattern.render(n, n * 50);
            frames.extend(enc.encode(img, n as i64, n == 7).unwrap());
        }
        assert_eq!(frames.len(), 10, "no lag, no drops: one packet per frame");
        assert!(frames[0].keyframe);
        assert!(!frames[1].keyframe);
        assert!(frames[7].keyframe, "forced key frame");
        // A VP8 key frame starts with the start code 9d 01 2a after the 3-byte tag,
        // then the 14-bit width and height.
        let kf = &frames[0].data;
        assert_eq!(&kf[3..6], &[0x9d, 0x01, 0x2a]);
        assert_eq!(u16::from_le_bytes([kf[6], kf[7]]) & 0x3fff, 640);
        assert_eq!(u16::from_le_bytes([kf[8], kf[9]]) & 0x3fff, 360);
        // Frame tag bit 0 is 0 for key frames, 1 for inter frames.
        assert_eq!(frames[0].data[0] & 1, 0);
        assert_eq!(frames[1].data[0] & 1, 1);
        // Inter frames of a slowly moving pattern are much smaller than the key frame.
        assert!(frames[2].data.len() < kf.len());

        // And they decode back to the picture, counter legible.
        let mut dec = Vp8Decoder::new().unwrap();
        let mut last = None;
        for f in &frames {
            last = dec.decode(&f.data).unwrap();
        }
        let luma = last.unwrap();
        assert_eq!((luma.width, luma.height), (640, 360));
        assert_eq!(
            crate::pattern::read_counter(&luma.y, luma.width, luma.height),
            Some(9)
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            Vp8Encoder::new(Vp8Config {
                width: 641,
                ..Vp8Config::default()
            }),
            Err(Vp8Error::BadSize(641, 360))
        ));
        let mut enc = Vp8Encoder::new(Vp8Config::default()).unwrap();
        assert!(matches!(
            enc.encode(&[0; 10], 0, false),
            Err(Vp8Error::BadFrame { got: 10, .. })
        ));
    }
}
