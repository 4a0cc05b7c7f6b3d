//! Reading a cine frame by frame: kept frames go through a caller's transform as soon as a few
//! are decoded ([`GROUP`] at a time; ingest and `embed --video` resize them to the tower's
//! input, 224² bytes), so a long cine never sits in memory at its native resolution; at most
//! `max_frames` results are kept (see [`crate::media::sampling`] for how a longer cine is
//! thinned).

use crate::error::Error;
use crate::media::dicom::{DicomCine, UsRegion};
use crate::media::{Frame, FrameSampling, DEFAULT_MAX_FRAMES};
use std::path::Path;

/// Decoded frames handed to the transform at once: one LibTorch call per group rather than per
/// frame (LibTorch's thread pool makes many small calls slow on a busy machine), at the cost of
/// holding this many frames at native size (8 × 6 MB for 1080p).
pub const GROUP: usize = 8;

/// Which frames of a cine are read, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadOptions {
    /// Frames selected.
    pub sampling: FrameSampling,
    /// Frames kept at most (0: no bound); a cine that selects more is thinned evenly.
    pub max_frames: usize,
    /// Crop DICOM frames to their ultrasound region where one is present and lies inside the
    /// image (`--crop-region`; videos have no regions).
    pub crop_regions: bool,
    /// What is blanked before the transform (`--mask`; see [`crate::media::mask`]).
    pub mask: crate::media::MaskMode,
}

impl ReadOptions {
    /// `sampling` with the default bound and no crop.
    pub fn new(sampling: FrameSampling) -> Self {
        ReadOptions { sampling, max_frames: DEFAULT_MAX_FRAMES, crop_regions: false, mask: crate::media::MaskMode::Off }
    }
}

/// The frames kept of one cine, as the transform made them.
#[derive(Clone, Debug)]
pub struct Sampled<T> {
    /// One per kept frame, in frame order.
    pub items: Vec<T>,
    /// The frames `items` are: the sampling asked for, its step widened when the cine was
    /// thinned to the bound.
    pub sampling: FrameSampling,
    /// Frames the sampling asked for selected (before the bound).
    pub selected: usize,
}

impl<T> Sampled<T> {
    /// True when the bound thinned the selection.
    pub fn capped(&self) -> bool {
        self.items.len() < self.selected
    }
}

/// Keeps the transformed frames of one cine within the bound.
pub(crate) struct Keeper<T> {
    asked: FrameSampling,
    plan: FrameSampling,
    max: usize,
    items: Vec<T>,
    selected: usize,
}

impl<T> Keeper<T> {
    /// A keeper for a cine of `expected` frames when that is known before decoding (the
    /// selection is then thinned once, up front), else thinning as frames come.
    pub(crate) fn new(opts: &ReadOptions, expected: Option<usize>) -> Self {
        let plan = match expected {
            Some(n) => opts.sampling.capped(n, opts.max_frames),
            None => opts.sampling,
        };
        Keeper { asked: opts.sampling, plan, max: opts.max_frames, items: Vec::new(), selected: 0 }
    }

    /// Whether frame `i` is to be decoded and kept; counts it when the sampling selects it.
    pub(crate) fn wants(&mut self, i: usize) -> bool {
        if self.asked.selects(i) {
            self.selected += 1;
        }
        self.plan.selects(i)
    }

    /// True when no frame after `i` can be wanted.
    pub(crate) fn done_after(&self, i: usize) -> bool {
        self.asked.done_after(i)
    }

    /// Keeps frame `i` (wanted earlier) unless a thinning since left it out; past the bound,
    /// doubles the step and drops every other kept.
    pub(crate) fn keep(&mut self, i: usize, item: T) {
        if !self.plan.selects(i) {
            return;
        }
        self.items.push(item);
        if self.max > 0 && self.items.len() > self.max {
            self.plan = self.plan.thinned(2);
            let mut row = 0;
            self.items.retain(|_| {
                row += 1;
                row % 2 == 1
            });
        }
    }

    pub(crate) fn finish(self) -> Sampled<T> {
        Sampled { items: self.items, sampling: self.plan, selected: self.selected }
    }
}

/// Wanted frames waiting for their group's transform.
pub(crate) struct Pending(Vec<(usize, Frame)>);

impl Pending {
    pub(crate) fn new() -> Self {
        Pending(Vec::with_capacity(GROUP))
    }

    /// Adds frame `i`; a full group goes through `each` into `keeper`.
    pub(crate) fn push<T>(
        &mut self,
        i: usize,
        f: Frame,
        keeper: &mut Keeper<T>,
        each: &mut impl FnMut(Vec<Frame>) -> Result<Vec<T>, Error>,
    ) -> Result<(), Error> {
        self.0.push((i, f));
        if self.0.len() >= GROUP {
            self.flush(keeper, each)?;
        }
        Ok(())
    }

    /// The waiting frames through `each` into `keeper`, in frame order.
    pub(crate) fn flush<T>(
        &mut self,
        keeper: &mut Keeper<T>,
        each: &mut impl FnMut(Vec<Frame>) -> Result<Vec<T>, Error>,
    ) -> Result<(), Error> {
        if self.0.is_empty() {
            return Ok(());
        }
        let (rows, frames): (Vec<usize>, Vec<Frame>) = std::mem::take(&mut self.0).into_iter().unzip();
        let items = each(frames)?;
        if items.len() != rows.len() {
            return Err(Error::Invalid(format!("a frame transform gave {} results for {} frames", items.len(), rows.len())));
        }
        rows.into_iter().zip(items).for_each(|(i, item)| keeper.keep(i, item));
        Ok(())
    }
}

/// The frames `opts` selects of a DICOM cine, each cropped to `crop` (a region of the image)
/// when given, then through `each` (a group of frames at a time, one result per frame). A
/// selection that keeps no frame is an error.
pub fn sample_dicom<T>(
    cine: &DicomCine,
    path: &Path,
    opts: &ReadOptions,
    crop: Option<&UsRegion>,
    mut each: impl FnMut(Vec<Frame>) -> Result<Vec<T>, Error>,
) -> Result<Sampled<T>, Error> {
    let info = cine.info();
    let mut keeper = Keeper::new(opts, Some(info.frames));
    let mut pending = Pending::new();
    for i in 0..info.frames {
        if keeper.wants(i) {
            let f = cine.frame(i).map_err(|e| Error::media(path, e))?;
            let f = match crop {
                Some(r) => {
                    let (x, y, w, h) = r.rect(info.rows, info.cols);
                    f.crop(x, y, w, h).unwrap_or(f)
                }
                None => f,
            };
            pending.push(i, f, &mut keeper, &mut each)?;
        }
        if keeper.done_after(i) {
            break;
        }
    }
    pending.flush(&mut keeper, &mut each)?;
    let s = keeper.finish();
    if s.items.is_empty() {
        return Err(Error::media(path, format!("the frame sampling selects none of its {} frames", info.frames)));
    }
    Ok(s)
}

/// The ultrasound region `opts` crops a DICOM cine's frames to, if any.
pub fn crop_of(cine: &DicomCine, opts: &ReadOptions) -> Option<UsRegion> {
    if opts.crop_regions {
        cine.info().crop_region().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep_all(opts: &ReadOptions, expected: Option<usize>, n: usize) -> Sampled<usize> {
        let mut k = Keeper::new(opts, expected);
        for i in 0..n {
            if k.wants(i) {
                k.keep(i, i);
            }
            if k.done_after(i) {
                break;
            }
        }
        k.finish()
    }

    #[test]
    fn a_known_length_is_thinned_once_an_unknown_one_as_it_comes() {
        let opts = ReadOptions { sampling: FrameSampling::ALL, max_frames: 8, crop_regions: false, mask: crate::media::MaskMode::Off };
        let known = keep_all(&opts, Some(20), 20);
        assert_eq!(known.items, vec![0, 3, 6, 9, 12, 15, 18]);
        assert_eq!((known.selected, known.capped(), known.sampling.step), (20, true, 3));
        let unknown = keep_all(&opts, None, 20);
        assert_eq!(unknown.items, vec![0, 4, 8, 12, 16]);
        assert_eq!(unknown.sampling.step, 4);
        // What the keeper records is what it kept.
        for s in [&known, &unknown] {
            let rows: Vec<usize> = (0..s.items.len()).map(|r| s.sampling.frame_of_row(r)).collect();
            assert_eq!(rows, s.items);
        }
        // A container that announced fewer frames than it holds still stays within the bound.
        let lied = keep_all(&opts, Some(8), 30);
        assert!(lied.items.len() <= 8 && lied.capped(), "{:?}", lied.items);
        assert_eq!(lied.items, (0..lied.items.len()).map(|r| lied.sampling.frame_of_row(r)).collect::<Vec<_>>());
        // Within the bound: every selected frame, unthinned.
        let short = keep_all(&opts, None, 8);
        assert_eq!((short.items.len(), short.capped(), short.sampling), (8, false, FrameSampling::ALL));
        // Frames transformed a group at a time: a thinning while a group waits drops the frames
        // it left out, so the result is the frame-by-frame one.
        for (expected, n) in [(None, 20), (Some(20), 20), (Some(8), 30), (None, 8)] {
            let mut k = Keeper::new(&opts, expected);
            let mut pending = Pending::new();
            let mut each = |fs: Vec<Frame>| -> Result<Vec<usize>, Error> { Ok(fs.iter().map(|f| f.width).collect()) };
            for i in 0..n {
                if k.wants(i) {
                    pending
                        .push(i, Frame::new(i, 1, vec![0; i * 3]).unwrap_or(Frame { width: i, height: 1, rgb: vec![] }), &mut k, &mut each)
                        .unwrap();
                }
            }
            pending.flush(&mut k, &mut each).unwrap();
            assert_eq!(k.finish().items, keep_all(&opts, expected, n).items, "{expected:?} of {n}");
        }
        let zs = keep_all(
            &ReadOptions { sampling: FrameSampling::ZERO_SHOT, max_frames: 0, crop_regions: false, mask: crate::media::MaskMode::Off },
            None,
            100,
        );
        assert_eq!(zs.items, (0..40).step_by(2).collect::<Vec<_>>());
    }
}
