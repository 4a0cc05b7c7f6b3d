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
