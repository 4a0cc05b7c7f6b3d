//! AVI / MP4 / MOV decoding through FFmpeg (`video-rs`): every frame as RGB, fps from the
//! container. Frames not selected by the sampling are decoded (codecs need them) but not kept;
//! [`read_video_each`] hands each kept frame to the caller as it is decoded.

use crate::error::Error;
use crate::media::stream::{Keeper, Pending, ReadOptions, Sampled};
use crate::media::{Frame, FrameSampling};
use std::cell::RefCell;
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
    /// Frames the container announces, when it says: its frame count (MP4's sample table), or
    /// for AVI, whose header counts ticks of the stream's time base, those ticks at the frame
    /// rate (video-rs writes AVIs at a 1/600 time base: 621 ticks are 31.05 frames at 30 fps).
    pub announced: Option<usize>,
    /// True when `announced` is a count the container wrote, false when converted from ticks
    /// (then one frame either way is rounding, not a difference).
    pub announced_exact: bool,
    /// True when decoding ran to the end of the stream (not stopped after the last frame the
    /// sampling wanted): only then does `frames` count the frames the file holds.
    pub to_end: bool,
}

impl VideoInfo {
    /// `(decoded, announced)` when the file decoded to its end with fewer or more frames than
    /// its container announced (a file cut short, a header that lies).
    pub fn frame_count_mismatch(&self) -> Option<(usize, usize)> {
        let announced = self.announced?;
        let slack = if self.announced_exact { 0 } else { 1 };
        (self.to_end && announced.abs_diff(self.frames) > slack).then_some((self.frames, announced))
    }
}

/// Frames a container announces (see [`VideoInfo::announced`]) from its stream's frame count
/// and time base; true when that is a count as written.
fn announced_frames(path: &Path, count: u64, time_base: (i32, i32), fps: f64) -> Option<(usize, bool)> {
    let count = usize::try_from(count).ok().filter(|&n| n > 0)?;
    let avi = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("avi"));
    let (num, den) = time_base;
    if !avi || num <= 0 || den <= 0 || fps <= 0.0 {
        return Some((count, true));
    }
    let frames = count as f64 * f64::from(num) / f64::from(den) * fps;
    let exact = (frames - count as f64).abs() < 1e-6;
    Some((frames.round() as usize, exact))
}

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // Only fails when FFmpeg itself cannot initialise; decoding then reports the error.
        let _ = video_rs::init();
    });
}

/// Decodes `path`, keeping the frames `sampling` selects (every one: no bound).
pub fn read_video(path: &Path, sampling: FrameSampling) -> Result<(VideoInfo, Vec<Frame>), Error> {
    let opts = ReadOptions { sampling, max_frames: 0, crop_regions: false, mask: crate::media::MaskMode::Off };
    let (info, s) = read_video_each(path, &opts, Ok)?;
    Ok((info, s.items))
}

/// Decodes `path` frame by frame, passing the frames `opts` keeps through `each` a group at a
/// time as they are decoded ([`crate::media::stream::GROUP`]); at most `opts.max_frames` results are kept, the selection thinned evenly (up
/// front from the frame count the container announces, and further as frames come should it
/// hold more). A selection that keeps no frame is an error.
pub fn read_video_each<T>(
    path: &Path,
    opts: &ReadOptions,
    mut each: impl FnMut(Vec<Frame>) -> Result<Vec<T>, Error>,
) -> Result<(VideoInfo, Sampled<T>), Error> {
    let mut d = open(path)?;
    // The selection is thinned up front only from a frame count the container wrote; a count
    // converted from ticks (AVI) may be off, so such a video is thinned as its frames come.
    let expected = d.announced.and_then(|(n, exact)| exact.then_some(n));
    let keeper = RefCell::new(Keeper::new(opts, expected));
    let mut pending = Pending::new();
    let info = decode(
        path,
        &mut d,
        |i| keeper.borrow_mut().wants(i),
        |i| keeper.borrow().done_after(i),
        |i, f| pending.push(i, f, &mut keeper.borrow_mut(), &mut each),
    )?;
    let mut keeper = keeper.into_inner();
    pending.flush(&mut keeper, &mut each)?;
    let s = keeper.finish();
    if s.items.is_empty() {
        return Err(Error::media(path, format!("the frame sampling selects none of its {} frames", info.frames)));
    }
    Ok((info, s))
}

/// Decodes `path`, keeping frame `i` when `keep(i)`, stopping after frame `i` when `stop(i)`.
/// With nothing kept, only counts frames (an empty selection is then not an error).
pub fn read_video_where(path: &Path, keep: impl Fn(usize) -> bool, stop: impl Fn(usize) -> bool) -> Result<(VideoInfo, Vec<Frame>), Error> {
    let mut d = open(path)?;
    let mut kept = Vec::new();
    let info = decode(path, &mut d, keep, stop, |_, f| {
        kept.push(f);
        Ok(())
    })?;
    Ok((info, kept))
}

/// An opened video and what its container says.
struct Opened {
    decoder: video_rs::Decoder,
    size: (u32, u32),
    fps: f64,
    /// Frames announced, and whether as a count written (see [`VideoInfo::announced`]).
    announced: Option<(usize, bool)>,
    /// For an AVI: the seconds its header's ticks span, so the count is taken again from the
    /// frames' own spacing once two have decoded (FFmpeg's frame-rate guess, which
    /// `announced` used, is unreliable there: 120 or 600 fps for short 30 fps phantom AVIs).
    span_secs: Option<f64>,
}

fn open(path: &Path) -> Result<Opened, Error> {
    init();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() == 0 {
        return Err(Error::media(path, "empty file"));
    }
    let decoder = video_rs::Decoder::new(path).map_err(|e| Error::media(path, format!("cannot open as video: {e}")))?;
    let size = decoder.size();
    let fps = f64::from(decoder.frame_rate());
    let time_base = decoder.duration().map(|d| d.into_parts().1).map(|tb| (tb.numerator(), tb.denominator())).unwrap_or((0, 0));
    let count = decoder.frames().ok();
    let announced = count.and_then(|n| announced_frames(path, n, time_base, fps));
    let avi = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("avi"));
    let span_secs = match (announced, count) {
        (Some(_), Some(n)) if avi && time_base.0 > 0 && time_base.1 > 0 => Some(n as f64 * f64::from(time_base.0) / f64::from(time_base.1)),
        _ => None,
    };
    Ok(Opened { decoder, size, fps, announced, span_secs })
}

/// Decodes every frame (codecs need them all), handing frame `i` to `take` when `want(i)`,
/// until the stream ends or `stop(i)`.
fn decode(
    path: &Path,
    d: &mut Opened,
    mut want: impl FnMut(usize) -> bool,
    stop: impl Fn(usize) -> bool,
    mut take: impl FnMut(usize, Frame) -> Result<(), Error>,
) -> Result<VideoInfo, Error> {
    let mut n = 0usize;
    let mut to_end = false;
    let mut first_two = [None; 2];
    loop {
        match d.decoder.decode() {
            Ok((time, frame)) => {
                if n < 2 {
                    first_two[n] = Some(time.as_secs_f64());
                }
                if want(n) {
                    let shape = frame.shape().to_vec();
                    let rgb = frame.as_slice().map(<[u8]>::to_vec).unwrap_or_else(|| frame.iter().copied().collect());
                    drop(frame);
                    let f = Frame::new(shape[1], shape[0], rgb)
                        .ok_or_else(|| Error::media(path, format!("frame {n} has unexpected shape {shape:?}")))?;
                    take(n, f)?;
                }
                n += 1;
                if stop(n - 1) {
                    break;
                }
            }
            Err(video_rs::Error::ReadExhausted | video_rs::Error::DecodeExhausted) => {
                to_end = true;
                break;
            }
            Err(e) => return Err(Error::media(path, format!("decoding frame {n} failed: {e}"))),
        }
    }
    if n == 0 {
        return Err(Error::media(path, "no decodable frames"));
    }
    let (announced, announced_exact) = match d.announced {
        Some((count, exact)) => match ticks_as_frames(d.span_secs, first_two) {
            // One tick per frame: the header's count is a frame count as written.
            Some(frames) => (
                Some(frames),
                d.span_secs.is_some_and(|span| (span / frames.max(1) as f64 - tick_of(first_two)).abs() < 1e-9 && frames == count),
            ),
            None => (Some(count), exact),
        },
        None => (None, true),
    };
    let (w, h) = d.size;
    Ok(VideoInfo { frames: n, width: w as usize, height: h as usize, fps: d.fps, announced, announced_exact, to_end })
}

/// Seconds between the first two decoded frames (0 without both).
fn tick_of(first_two: [Option<f64>; 2]) -> f64 {
    match first_two {
        [Some(a), Some(b)] => b - a,
        _ => 0.0,
    }
}

/// Frames in `span_secs` at the spacing of the first two decoded frames (`None` without both,
/// or when they are not increasing).
fn ticks_as_frames(span_secs: Option<f64>, first_two: [Option<f64>; 2]) -> Option<usize> {
    let (span, a, b) = (span_secs?, first_two[0]?, first_two[1]?);
    let step = b - a;
    (step > 0.0 && span.is_finite()).then(|| (span / step).round() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avi_headers_count_ticks_other_containers_count_frames() {
        let avi = Path::new("a.AVI");
        // A plain AVI: one tick per frame.
        assert_eq!(announced_frames(avi, 24, (1, 25), 25.0), Some((24, true)));
        // video-rs's AVI: 621 ticks of 1/600 s at 30 fps.
        assert_eq!(announced_frames(avi, 621, (1, 600), 30.0), Some((31, false)));
        // MP4 counts samples, whatever its time base.
        assert_eq!(announced_frames(Path::new("a.mp4"), 24, (1, 15360), 25.0), Some((24, true)));
        assert_eq!(announced_frames(avi, 0, (1, 25), 25.0), None);
        // Ticks taken again at the frames' own spacing: an 8-frame 30 fps AVI whose header says
        // 141 ticks of 1/600 s (FFmpeg guessed 120 fps for it: 28 frames, a false alarm).
        assert_eq!(ticks_as_frames(Some(141.0 / 600.0), [Some(0.0), Some(20.0 / 600.0)]), Some(7));
        assert_eq!(ticks_as_frames(Some(621.0 / 600.0), [Some(0.0), Some(1.0 / 30.0)]), Some(31));
        assert_eq!(ticks_as_frames(Some(1.0), [Some(0.0), None]), None);
        assert_eq!(ticks_as_frames(Some(1.0), [Some(0.1), Some(0.1)]), None);
        let info = |frames, announced, announced_exact, to_end| VideoInfo {
            frames,
            width: 1,
            height: 1,
            fps: 30.0,
            announced,
            announced_exact,
            to_end,
        };
        assert_eq!(info(32, Some(31), false, true).frame_count_mismatch(), None);
        assert_eq!(info(21, Some(31), false, true).frame_count_mismatch(), Some((21, 31)));
        assert_eq!(info(23, Some(24), true, true).frame_count_mismatch(), Some((23, 24)));
        assert_eq!(info(20, Some(24), true, false).frame_count_mismatch(), None, "stopped by the sampling");
        assert_eq!(info(20, None, true, true).frame_count_mismatch(), None);
    }
}
