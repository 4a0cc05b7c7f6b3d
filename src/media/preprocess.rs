//! Frames → normalised image tensors, as the EchoCLIP reference prepares them (`utils.py`
//! `crop_and_scale` then open_clip normalisation): centre-crop to a square, cut 10 % of the
//! width and of the height from each side, bicubic resize to the tower's input size, scale to
//! [0, 1], normalise with the CLIP mean/std.
//!
//! Differences from the reference, on purpose: when a crop amount rounds to zero the reference's
//! `img[p:-p]` slice would return an empty image; we skip that crop instead. The resize is
//! PyTorch's bicubic (a = −0.75, like OpenCV's `INTER_CUBIC`) rounded back to 8-bit levels as
//! OpenCV's uint8 output is; the two kernels still differ slightly at borders (issue: parity).

use crate::error::Error;
use crate::media::Frame;
use std::str::FromStr;
use tch::{Kind, Tensor};

/// Fraction cut from each side after the square crop (reference: `zoom=0.1`).
pub const ZOOM: f64 = 0.1;

/// Channel order fed to the image tower.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ChannelOrder {
    /// The reference's order: OpenCV decodes BGR and the reference feeds it as if RGB; the
    /// published EchoCLIP weights were trained that way. Default.
    #[default]
    Bgr,
    /// True RGB order.
    Rgb,
}

impl FromStr for ChannelOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "bgr" | "reference" => Ok(ChannelOrder::Bgr),
            "rgb" => Ok(ChannelOrder::Rgb),
            _ => Err(format!("channel order '{s}': use bgr (reference) or rgb")),
        }
    }
}

/// Preprocessing settings of one model.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// Output side (the tower's image size).
    pub size: i64,
    /// Normalisation mean (RGB order of the tensor channels).
    pub mean: [f64; 3],
    /// Normalisation std.
    pub std: [f64; 3],
    /// Channel order.
    pub order: ChannelOrder,
}

/// A 0-dim f32 tensor: the operand of an elementwise op with a constant. Not a `tch::Scalar`:
/// an op with a `Scalar` argument that fails panics in tch 0.24 instead of returning its error
/// (the `Scalar` is freed, and the pending LibTorch error checked, before the op's own check).
pub(crate) fn scalar(v: f32) -> Tensor {
    Tensor::from(v)
}

/// Python's `round` (half to even), as the reference's crop arithmetic uses it.
fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// The reference crop of a `w × h` frame as `(x0, y0, width, height)`.
pub fn crop_box(w: usize, h: usize) -> (usize, usize, usize, usize) {
    let (mut x0, mut y0, mut cw, mut ch) = (0usize, 0usize, w, h);
    if w > h {
        let p = py_round((w - h) as f64 / 2.0) as usize;
        if p > 0 && 2 * p < w {
            x0 += p;
            cw -= 2 * p;
        }
    } else if h > w {
        let p = py_round((h - w) as f64 / 2.0) as usize;
        if p > 0 && 2 * p < h {
            y0 += p;
            ch -= 2 * p;
        }
    }
    let px = (cw as f64 * ZOOM) as usize;
    let py = (ch as f64 * ZOOM) as usize;
    if px > 0 && 2 * px < cw {
        x0 += px;
        cw -= 2 * px;
    }
    if py > 0 && 2 * py < ch {
        y0 += py;
        ch -= 2 * py;
    }
    (x0, y0, cw, ch)
}

impl Preprocess {
    /// One frame → the `size × size` RGB frame the tower sees before normalisation: the
    /// reference crop, then PyTorch's bicubic resize rounded and clamped back to 8-bit levels
    /// (what OpenCV's uint8 `INTER_CUBIC` gives). Exactly the values the whole-video path held
    /// in f32, so keeping them as bytes loses nothing: streaming decoders keep this (4× smaller
    /// than f32, and at model resolution) instead of the decoded frame.
    pub fn resize(&self, frame: &Frame) -> Result<Frame, Error> {
        Ok(self.resize_many(std::slice::from_ref(frame))?.remove(0))
    }

    /// [`Preprocess::resize`] of several frames of one size in one pass (each frame's result is
    /// the same as alone: the resize is per image). One LibTorch call per op for the group, not
    /// per frame: on a busy machine LibTorch's thread pool made per-frame calls several times
    /// slower.
    pub fn resize_many(&self, frames: &[Frame]) -> Result<Vec<Frame>, Error> {
        let Some(first) = frames.first() else { return Ok(Vec::new()) };
        let (w, h) = (first.width, first.height);
        if let Some(f) = frames.iter().find(|f| f.width == 0 || f.height == 0 || f.rgb.len() != f.width * f.height * 3) {
            return Err(Error::Invalid(format!(
                "frame has zero size or a wrong byte count ({}×{}, {} bytes)",
                f.width,
                f.height,
                f.rgb.len()
            )));
        }
        if let Some(f) = frames.iter().find(|f| (f.width, f.height) != (w, h)) {
            return Err(Error::Invalid(format!("frames change size within a cine ({w}×{h} then {}×{})", f.width, f.height)));
        }
        let (x0, y0, cw, ch) = crop_box(w, h);
        let s = usize::try_from(self.size).map_err(|_| Error::Invalid(format!("image size {}", self.size)))?;
        let crop = |f: &Frame| f.crop(x0, y0, cw, ch).ok_or_else(|| Error::Invalid(format!("crop of a {w}×{h} frame")));
        if (cw, ch) == (s, s) {
            return frames.iter().map(crop).collect();
        }
        let _guard = tch::no_grad_guard();
        let rows = frames.iter().map(|f| Ok(Tensor::f_from_slice(&crop(f)?.rgb)?)).collect::<Result<Vec<_>, Error>>()?;
        let x = Tensor::f_stack(&rows, 0)?
            .f_reshape([frames.len() as i64, ch as i64, cw as i64, 3])?
            .f_permute([0, 3, 1, 2])?
            .f_to_kind(Kind::Float)?
            .f_upsample_bicubic2d([self.size, self.size], false, None, None)?
            .f_round()?
            .f_clamp_tensor(Some(&scalar(0.0)), Some(&scalar(255.0)))?
            .f_to_kind(Kind::Uint8)?
            .f_permute([0, 2, 3, 1])?
            .f_contiguous()?;
        drop(rows);
        let n = s * s * 3;
        (0..frames.len())
            .map(|i| {
                let mut rgb = Vec::new();
                rgb.try_reserve_exact(n).map_err(|_| Error::Invalid(format!("out of memory: {n} bytes for a resized frame")))?;
                rgb.resize(n, 0);
                x.f_get(i as i64)?.f_copy_data(&mut rgb, n)?;
                Frame::new(s, s, rgb).ok_or_else(|| Error::Invalid("resized frame has an unexpected size".into()))
            })
            .collect()
    }

    /// Frames already at the tower's size (from [`Preprocess::resize`]) → `[N, 3, size, size]`
    /// f32 CPU tensor: channel order, scale to [0, 1], CLIP mean/std.
    pub fn normalise(&self, frames: &[&Frame]) -> Result<Tensor, Error> {
        let s = self.size as usize;
        if frames.is_empty() {
            return Err(Error::Invalid("no frames to preprocess".into()));
        }
        if let Some(f) = frames.iter().find(|f| f.width != s || f.height != s || f.rgb.len() != s * s * 3) {
            return Err(Error::Invalid(format!("a {}×{} frame where the tower takes {s}×{s}", f.width, f.height)));
        }
        let _guard = tch::no_grad_guard();
        // The batch is assembled by LibTorch (whose allocations fail as errors, and the batch is
        // then halved), not in a Rust buffer (whose failed allocation aborts the process).
        let rows = frames.iter().map(|f| Tensor::f_from_slice(&f.rgb)).collect::<Result<Vec<_>, _>>()?;
        let x = Tensor::f_stack(&rows, 0)?.f_reshape([frames.len() as i64, self.size, self.size, 3])?;
        drop(rows);
        let x = match self.order {
            ChannelOrder::Rgb => x,
            ChannelOrder::Bgr => x.f_flip([3])?,
        };
        let x = x.f_permute([0, 3, 1, 2])?.f_to_kind(Kind::Float)?;
        let mean = Tensor::f_from_slice(&self.mean)?.f_to_kind(Kind::Float)?.f_reshape([1, 3, 1, 1])?;
        let std = Tensor::f_from_slice(&self.std)?.f_to_kind(Kind::Float)?.f_reshape([1, 3, 1, 1])?;
        Ok(x.f_div(&scalar(255.0))?.f_sub(&mean)?.f_div(&std)?)
    }

    /// Frames (all the same size) → `[N, 3, size, size]` f32 CPU tensor: [`Preprocess::resize`]
    /// of each, then [`Preprocess::normalise`].
    pub fn frames(&self, frames: &[Frame]) -> Result<Tensor, Error> {
        let Some(first) = frames.first() else {
            return Err(Error::Invalid("no frames to preprocess".into()));
        };
        let (w, h) = (first.width, first.height);
        if w == 0 || h == 0 {
            return Err(Error::Invalid(format!("frame has zero size {w}×{h}")));
        }
        if let Some(f) = frames.iter().find(|f| f.width != w || f.height != h) {
            return Err(Error::Invalid(format!("frames change size within a cine ({w}×{h} then {}×{})", f.width, f.height)));
        }
        let resized = self.resize_many(frames)?;
        self.normalise(&resized.iter().collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_matches_the_reference_arithmetic() {
        // 112×112 (EchoNet): no square crop, 11 px zoom each side.
        assert_eq!(crop_box(112, 112), (11, 11, 90, 90));
        // 640×480: square crop of 80 px each side, then 48 px zoom.
        assert_eq!(crop_box(640, 480), (128, 48, 384, 384));
        // Odd difference: round(0.5) = 0 in Python, so no square crop, only the zoom.
        assert_eq!(crop_box(5, 4), (0, 0, 5, 4));
        // Tiny frames: zero crops are skipped, never empty.
        assert_eq!(crop_box(1, 1), (0, 0, 1, 1));
    }

    #[test]
    fn output_shape_order_and_normalisation() {
        let p = Preprocess { size: 8, mean: [0.5; 3], std: [0.5; 3], order: ChannelOrder::Rgb };
        let mut rgb = Vec::new();
        for _ in 0..(10 * 10) {
            rgb.extend_from_slice(&[255, 0, 128]);
        }
        let f = Frame::new(10, 10, rgb).unwrap();
        let t = p.frames(&[f.clone(), f.clone()]).unwrap();
        assert_eq!(t.size(), vec![2, 3, 8, 8]);
        let r = t.double_value(&[0, 0, 4, 4]);
        let g = t.double_value(&[0, 1, 4, 4]);
        assert!((r - 1.0).abs() < 1e-6 && (g + 1.0).abs() < 1e-6);
        let p = Preprocess { order: ChannelOrder::Bgr, ..p };
        let t = p.frames(&[f]).unwrap();
        assert!((t.double_value(&[0, 2, 4, 4]) - 1.0).abs() < 1e-6, "BGR puts red last");
    }
}
