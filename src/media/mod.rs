//! Media: decoding cines to RGB frames, choosing which frames to embed, and turning frames into
//! the tensors the image tower expects.

pub mod dicom;
mod frame;
pub mod image;
pub mod preprocess;
pub mod sampling;
pub mod stream;
#[cfg(feature = "video")]
pub mod video;

pub use frame::Frame;
pub use preprocess::{ChannelOrder, Preprocess};
pub use sampling::{FrameSampling, DEFAULT_MAX_FRAMES};
pub use stream::{ReadOptions, Sampled};

/// Container formats decoded through FFmpeg (by file extension, lower case).
pub const VIDEO_EXTENSIONS: [&str; 4] = ["avi", "mp4", "mov", "mkv"];

/// True when `path` looks like a video file echovault can decode.
pub fn is_video_path(path: &std::path::Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// What decoding a cine learned of it, whatever its format.
#[derive(Clone, Debug, PartialEq)]
pub struct CineInfo {
    /// Frames in the cine (DICOM: NumberOfFrames; video: frames decoded).
    pub frames: usize,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Frames per second, when known.
    pub fps: Option<f64>,
}

/// Decodes the frames `opts` selects from a DICOM cine (recognised by content, whatever the
/// file name) or else a video file through FFmpeg, handing each kept frame to `each` as soon as
/// a few are decoded: the one decoding path of every command that takes a video (`search --video`,
/// `embed --video`, the server's uploads), as `ingest` reads them — the same frame bound
/// (`max_frames`, thinned evenly) and, with `crop_regions`, the same crop of a DICOM cine to its
/// ultrasound region. A selection that keeps no frame is an error.
pub fn read_cine<T>(
    path: &std::path::Path,
    opts: &ReadOptions,
    each: impl FnMut(Vec<Frame>) -> Result<Vec<T>, crate::Error>,
) -> Result<(CineInfo, Sampled<T>), crate::Error> {
    if dicom::is_dicom(path) {
        let cine = dicom::DicomCine::open(path).map_err(|e| crate::Error::media(path, e))?;
        let crop = stream::crop_of(&cine, opts);
        let sampled = stream::sample_dicom(&cine, path, opts, crop.as_ref(), each)?;
        let info = cine.info();
        return Ok((CineInfo { frames: info.frames, width: info.cols, height: info.rows, fps: info.fps }, sampled));
    }
    #[cfg(feature = "video")]
    {
        let (v, sampled) = video::read_video_each(path, opts, each)?;
        Ok((CineInfo { frames: v.frames, width: v.width, height: v.height, fps: Some(v.fps) }, sampled))
    }
    #[cfg(not(feature = "video"))]
    {
        let _ = (opts, each);
        Err(crate::Error::media(path, "this echovault was built without the `video` feature (FFmpeg)"))
    }
}

/// Decodes a DICOM cine (recognised by content) or a video file, keeping frame `i` when
/// `keep(i)`.
pub fn read_frames(path: &std::path::Path, keep: impl Fn(usize) -> bool) -> Result<Vec<Frame>, crate::Error> {
    if dicom::is_dicom(path) {
        let cine = dicom::DicomCine::open(path).map_err(|e| crate::Error::media(path, e))?;
        let n = cine.info().frames;
        return (0..n).filter(|i| keep(*i)).map(|i| cine.frame(i).map_err(|e| crate::Error::media(path, e))).collect();
    }
    #[cfg(feature = "video")]
    {
        Ok(video::read_video_where(path, keep, |_| false)?.1)
    }
    #[cfg(not(feature = "video"))]
    {
        let _ = keep;
        Err(crate::Error::media(path, "this echovault was built without the `video` feature (FFmpeg)"))
    }
}
