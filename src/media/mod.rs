//! Media: decoding cines to RGB frames, choosing which frames to embed, and turning frames into
//! the tensors the image tower expects.

pub mod dicom;
mod frame;
pub mod image;
pub mod preprocess;
pub mod sampling;
#[cfg(feature = "video")]
pub mod video;

pub use frame::Frame;
pub use preprocess::{ChannelOrder, Preprocess};
pub use sampling::FrameSampling;

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

/// Decodes the frames `sampling` selects from a DICOM cine (recognised by content, whatever the
/// file name) or else a video file through FFmpeg: the one decoding path of every command that
/// takes a video (`search --video`, `embed --video`, the server's uploads), as `ingest` reads
/// them. A selection that keeps no frame is an error.
pub fn read_sampled(path: &std::path::Path, sampling: FrameSampling) -> Result<(CineInfo, Vec<Frame>), crate::Error> {
    if dicom::is_dicom(path) {
        let cine = dicom::DicomCine::open(path).map_err(|e| crate::Error::media(path, e))?;
        let info = cine.info();
        let mut frames = Vec::new();
        for i in 0..info.frames {
            if sampling.selects(i) {
                frames.push(cine.frame(i).map_err(|e| crate::Error::media(path, e))?);
            }
            if sampling.done_after(i) {
                break;
            }
        }
        if frames.is_empty() {
            return Err(crate::Error::media(path, format!("the frame sampling selects none of its {} frames", info.frames)));
        }
        return Ok((CineInfo { frames: info.frames, width: info.cols, height: info.rows, fps: info.fps }, frames));
    }
    #[cfg(feature = "video")]
    {
        let (v, frames) = video::read_video(path, sampling)?;
        Ok((CineInfo { frames: v.frames, width: v.width, height: v.height, fps: Some(v.fps) }, frames))
    }
    #[cfg(not(feature = "video"))]
    {
        let _ = sampling;
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
