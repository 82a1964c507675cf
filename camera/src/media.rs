//! The live video source: one encoder thread renders the test pattern, encodes it as
//! VP8 and writes the frames to a single WebRTC track that every viewer's peer
//! connection shares (webrtc-rs fans a local track out to all its bindings), so N
//! viewers cost one encode. Nothing is encoded while nobody watches.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use webrtc::api::media_engine::MIME_TYPE_VP8;
use webrtc::media::Sample;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;

use crate::pattern::TestPattern;
use crate::vp8::{EncodedFrame, Vp8Config, Vp8Encoder, Vp8Error};

#[derive(Default)]
struct Shared {
    viewers: AtomicUsize,
    keyframe: AtomicBool,
    stop: AtomicBool,
    frames_encoded: AtomicU64,
    frames_written: AtomicU64,
}

/// Owns the encoder thread and the shared VP8 track; stops the thread when dropped.
pub struct VideoSource {
    track: Arc<TrackLocalStaticSample>,
    shared: Arc<Shared>,
    config: Vp8Config,
}

/// Counts one viewer while alive.
pub struct ViewerGuard {
    shared: Arc<Shared>,
}

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.shared.viewers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl VideoSource {
    /// Starts the encoder thread. Must be called inside a tokio runtime.
    pub fn start(config: Vp8Config) -> Result<Self, Vp8Error> {
        let encoder = Vp8Encoder::new(config)?;
        let track = Arc::new(TrackLocalStaticSample::new(
            RTCRtpCodecCapability {
                mime_type: MIME_TYPE_VP8.to_owned(),
                clock_rate: 90_000,
                ..Default::default()
            },
            "video".to_owned(),
            "vc-camera".to_owned(),
        ));
        let shared = Arc::new(Shared::default());
        let period = Duration::from_secs(1) / config.fps.max(1);
        // A few frames of slack; when the writer falls behind, frames are dropped and
        // a key frame is forced so decoders recover at once.
        let (tx, mut rx) = mpsc::channel::<EncodedFrame>(4);
        {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("vc-encoder".into())
                .spawn(move || encode_loop(encoder, period, &shared, &tx))
                .map_err(|e| Vp8Error::Codec(format!("spawn encoder thread: {e}")))?;
        }
        {
            let track = track.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Some(frame) = rx.recv().await {
                    let sample = Sample {
                        data: frame.data.into(),
                        duration: period,
                        timestamp: SystemTime::now(),
                        ..Default::default()
                    };
                    if let Err(e) = track.write_sample(&sample).await {
                        tracing::debug!(error = %e, "write_sample");
                    }
                    shared.frames_written.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Ok(Self {
            track,
            shared,
            config,
        })
    }

    pub fn track(&self) -> Arc<TrackLocalStaticSample> {
        self.track.clone()
    }

    pub fn config(&self) -> Vp8Config {
        self.config
    }

    /// Registers a viewer (encoding runs while at least one is registered) and asks
    /// for a key frame so it can start decoding at once.
    pub fn attach(&self) -> ViewerGuard {
        self.shared.viewers.fetch_add(1, Ordering::AcqRel);
        self.request_keyframe();
        ViewerGuard {
            shared: self.shared.clone(),
        }
    }

    /// The next frame is encoded as a key frame (PLI/FIR from a viewer, a new viewer).
    pub fn request_keyframe(&self) {
        self.shared.keyframe.store(true, Ordering::Release);
    }

    /// A closure that requests a key frame, for tasks that outlive a borrow of `self`.
    pub fn keyframe_handle(&self) -> impl Fn() + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || shared.keyframe.store(true, Ordering::Release)
    }

    pub fn viewers(&self) -> usize {
        self.shared.viewers.load(Ordering::Acquire)
    }

    /// Frames encoded and frames handed to the track so far.
    pub fn frame_counts(&self) -> (u64, u64) {
        (
            self.shared.frames_encoded.load(Ordering::Relaxed),
            self.shared.frames_written.load(Ordering::Relaxed),
        )
    }
}

impl Drop for VideoSource {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

fn encode_loop(
    mut encoder: Vp8Encoder,
    period: Duration,
    shared: &Shared,
    tx: &mpsc::Sender<EncodedFrame>,
) {
    let config = encoder.config();
    let mut pattern = TestPattern::new(config.width, config.height);
    let mut next = Instant::now();
    let mut tick: u64 = 0;
    let mut pts: i64 = 0;
    while !shared.stop.load(Ordering::Acquire) && !tx.is_closed() {
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > period * 4 {
            // Far behind (machine suspended or overloaded): skip ahead, don't burst.
            next = now;
        }
        tick += 1;
        if shared.viewers.load(Ordering::Acquire) == 0 {
            continue;
        }
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let force = shared.keyframe.swap(false, Ordering::AcqRel);
        let image = pattern.render(tick, unix_ms);
        match encoder.encode(image, pts, force) {
            Ok(frames) => {
                for frame in frames {
                    shared.frames_encoded.fetch_add(1, Ordering::Relaxed);
                    match tx.try_send(frame) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            shared.keyframe.store(true, Ordering::Release);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "VP8 encode failed"),
        }
        pts += 1;
    }
}
