//! AVI / MP4 / MOV decoding through FFmpeg (`video-rs`): every frame as RGB, fps from the
//! container. Frames not selected by the sampling are decoded (codecs need them) but not kept.

use crate::error::Error;
use crate::media::{Frame, FrameSampling};
use std::path::Path;
use std::sync::Once;

/// What the container says about a video.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoInfo {
    /// Frames decoded.
    pub frames: usize,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Frames per second (0 when unknown).
    pub fps: f64,
}

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // Only fails when FFmpeg itself cannot initialise; decoding then reports the error.
        let _ = video_rs::init();
    });
}

/// Decodes `path`, keeping the frames `sampling` selects.
pub fn read_video(path: &Path, sampling: FrameSampling) -> Result<(VideoInfo, Vec<Frame>), Error> {
    let (info, kept) = read_video_where(path, |i| sampling.selects(i), |i| sampling.done_after(i))?;
    if kept.is_empty() {
        return Err(Error::media(path, format!("the frame sampling selects none of its {} frames", info.frames)));
    }
    Ok((info, kept))
}

/// Decodes `path`, keeping frame `i` when `keep(i)`, stopping after frame `i` when `stop(i)`.
/// With nothing kept, only counts frames (an empty selection is then not an error).
pub fn read_video_where(path: &Path, keep: impl Fn(usize) -> bool, stop: impl Fn(usize) -> bool) -> Result<(VideoInfo, Vec<Frame>), Error> {
    init();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() == 0 {
        return Err(Error::media(path, "empty file"));
    }
    let mut decoder = video_rs::Decoder::new(path).map_err(|e| Error::media(path, format!("cannot open as video: {e}")))?;
    let (w, h) = decoder.size();
    let fps = f64::from(decoder.frame_rate());
    let mut kept = Vec::new();
    let mut n = 0usize;
    loop {
        match decoder.decode() {
            Ok((_, frame)) => {
                if keep(n) {
                    let shape = frame.shape().to_vec();
                    let rgb = frame.as_slice().map(<[u8]>::to_vec).unwrap_or_else(|| frame.iter().copied().collect());
                    let f = Frame::new(shape[1], shape[0], rgb)
                        .ok_or_else(|| Error::media(path, format!("frame {n} has unexpected shape {shape:?}")))?;
                    kept.push(f);
                }
                n += 1;
                if stop(n - 1) {
                    break;
                }
            }
            Err(video_rs::Error::ReadExhausted | video_rs::Error::DecodeExhausted) => break,
            Err(e) => return Err(Error::media(path, format!("decoding frame {n} failed: {e}"))),
        }
    }
    if n == 0 {
        return Err(Error::media(path, "no decodable frames"));
    }
    Ok((VideoInfo { frames: n, width: w as usize, height: h as usize, fps }, kept))
}
