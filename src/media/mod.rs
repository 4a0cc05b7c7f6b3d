//! Media: decoding cines to RGB frames, choosing which frames to embed, and turning frames into
//! the tensors the image tower expects.

pub mod dicom;
mod frame;
pub mod image;
pub mod mask;
pub mod preprocess;
pub mod sampling;
pub mod stream;
#[cfg(feature = "video")]
pub mod video;

pub use frame::Frame;
pub use mask::{Mask, MaskMode};
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
/// ultrasound region. With `mask`, every pixel outside the ultrasound image is set to 0 first
/// (see [`mask`]). A selection that keeps no frame is an error.
pub fn read_cine<T>(
    path: &std::path::Path,
    opts: &ReadOptions,
    each: impl FnMut(Vec<Frame>) -> Result<Vec<T>, crate::Error>,
) -> Result<(CineInfo, Sampled<T>), crate::Error> {
    if dicom::is_dicom(path) {
        let cine = dicom::DicomCine::open(path).map_err(|e| crate::Error::media(path, e))?;
        let crop = stream::crop_of(&cine, opts);
        let sampled = sample_dicom(&cine, path, opts, crop.as_ref(), each)?;
        let info = cine.info();
        return Ok((CineInfo { frames: info.frames, width: info.cols, height: info.rows, fps: info.fps }, sampled));
    }
    #[cfg(feature = "video")]
    {
        let (v, sampled) = read_video(path, opts, each)?;
        Ok((CineInfo { frames: v.frames, width: v.width, height: v.height, fps: Some(v.fps) }, sampled))
    }
    #[cfg(not(feature = "video"))]
    {
        let _ = (opts, each);
        Err(crate::Error::media(path, "this echovault was built without the `video` feature (FFmpeg)"))
    }
}

/// [`stream::sample_dicom`] with `opts.mask` applied to every frame before `each` (the mask cut
/// to `crop` as the frames are).
pub fn sample_dicom<T>(
    cine: &dicom::DicomCine,
    path: &std::path::Path,
    opts: &ReadOptions,
    crop: Option<&dicom::UsRegion>,
    each: impl FnMut(Vec<Frame>) -> Result<Vec<T>, crate::Error>,
) -> Result<Sampled<T>, crate::Error> {
    let info = cine.info();
    let m = match dicom_mask(cine, path, opts.mask)? {
        Some(m) => match crop {
            Some(r) => {
                let (x, y, w, h) = r.rect(info.rows, info.cols);
                Some(m.crop(x, y, w, h).ok_or_else(|| crate::Error::media(path, "the ultrasound region lies outside the image"))?)
            }
            None => Some(m),
        },
        None => None,
    };
    stream::sample_dicom(cine, path, opts, crop, masked(path, m, each))
}

/// [`video::read_video_each`] with `opts.mask` applied to every frame before `each` (a video
/// file has no ultrasound regions: `outside-region` is `auto`).
#[cfg(feature = "video")]
pub fn read_video<T>(
    path: &std::path::Path,
    opts: &ReadOptions,
    each: impl FnMut(Vec<Frame>) -> Result<Vec<T>, crate::Error>,
) -> Result<(video::VideoInfo, Sampled<T>), crate::Error> {
    let m = match opts.mask {
        MaskMode::Off => None,
        MaskMode::OutsideRegion | MaskMode::Auto => Some(video_mask(path)?),
    };
    video::read_video_each(path, opts, masked(path, m, each))
}

/// `each` after `m` (when given) has blanked every frame.
fn masked<T>(
    path: &std::path::Path,
    m: Option<Mask>,
    mut each: impl FnMut(Vec<Frame>) -> Result<Vec<T>, crate::Error>,
) -> impl FnMut(Vec<Frame>) -> Result<Vec<T>, crate::Error> {
    let path = path.to_owned();
    move |mut frames: Vec<Frame>| {
        if let Some(m) = &m {
            for f in &mut frames {
                m.apply(f).map_err(|e| crate::Error::media(&path, e))?;
            }
        }
        each(frames)
    }
}

/// The mask of a DICOM cine at its full size: its 2D ultrasound regions for `outside-region`
/// (the moving sector where it has none), the moving sector for `auto`.
fn dicom_mask(cine: &dicom::DicomCine, path: &std::path::Path, mode: MaskMode) -> Result<Option<Mask>, crate::Error> {
    let info = cine.info();
    if mode == MaskMode::Off {
        return Ok(None);
    }
    if mode == MaskMode::OutsideRegion {
        if let Some(m) = Mask::from_regions(&info.regions, info.rows, info.cols) {
            return Ok(Some(m));
        }
        tracing::debug!("--mask outside-region: a DICOM cine without a 2D ultrasound region inside its image, masked by motion");
    }
    let mut motion = mask::Motion::new(info.cols, info.rows);
    for i in 0..info.frames.min(mask::AUTO_FRAMES) {
        let f = cine.frame(i).map_err(|e| crate::Error::media(path, e))?;
        motion.add(&f).map_err(|e| crate::Error::media(path, e))?;
    }
    motion.sector().map(Some).map_err(|e| crate::Error::media(path, e))
}

/// The moving sector of a video file, from its first [`mask::AUTO_FRAMES`] frames (a first,
/// short decode).
#[cfg(feature = "video")]
fn video_mask(path: &std::path::Path) -> Result<Mask, crate::Error> {
    let first = ReadOptions {
        sampling: FrameSampling { start: 0, end: Some(mask::AUTO_FRAMES), step: 1 },
        max_frames: 0,
        crop_regions: false,
        mask: MaskMode::Off,
    };
    let mut motion: Option<mask::Motion> = None;
    video::read_video_each(path, &first, |frames| {
        for f in &frames {
            motion.get_or_insert_with(|| mask::Motion::new(f.width, f.height)).add(f).map_err(|e| crate::Error::media(path, e))?;
        }
        Ok(vec![(); frames.len()])
    })?;
    motion.ok_or_else(|| crate::Error::media(path, "no frame decoded"))?.sector().map_err(|e| crate::Error::media(path, e))
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
