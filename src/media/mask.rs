//! Sector masking (`--mask`): every pixel outside the ultrasound image is set to 0 before the
//! frames are cropped and resized for the model, so burned-in text (names, dates), the ECG trace
//! and other annotations never reach it.
//!
//! Two ways to find what to keep:
//! - **`outside-region`**: the union of the DICOM file's 2D ultrasound regions
//!   (SequenceOfUltrasoundRegions, RegionSpatialFormat 1, those lying inside the image). A file
//!   without such a region (any video file, a DICOM without regions) falls back to `auto`.
//! - **`auto`**: the sector found from motion. Over the first [`AUTO_FRAMES`] frames, each
//!   pixel's luma minimum and maximum are taken; a pixel "moves" when its range exceeds
//!   [`AUTO_THRESHOLD`], and is "lit" when its maximum exceeds [`LIT_THRESHOLD`]. Moving or lit
//!   pixels are opened (eroded, then dilated, by a (2·[`OPEN_RADIUS`]+1)² square), which removes
//!   every line thinner than that — burned-in text strokes, the ECG trace and its sweep cursor —
//!   and isolated compression noise. Of the 8-connected components that remain, the one holding
//!   the most moving pixels is the sector, with every other holding at least
//!   [`PART_OF_LARGEST`] as many (a sector cut in two by a dark band); a component without
//!   motion (a solid logo) is never part of it. The convex hull of the sector's pixels, filled, is
//!   the mask (a sector is a convex cone; the hull fills the cavities where blood is dark and
//!   still). Lit pixels count because compressed video (H.264) keeps still speckle still: motion
//!   alone finds only where the heart moves. The opening cuts the sector's sharpest corner (the
//!   apex, a few pixels). The opening cuts the sector's sharpest corner (the
//!   apex, a few pixels); the hull never reaches outside the moving component, so a still
//!   annotation next to the sector stays blank. A cine in which nothing moves (a still image,
//!   one frame) has no sector: an error, never an unmasked frame.
//!
//! Masking reads the cine twice for `auto` on video files (the first [`AUTO_FRAMES`] frames,
//! then the sampled ones); DICOM frames are read by index, so only those frames twice.
//! Memory: two bytes per pixel (luma min and max) and one group of frames.

use crate::media::dicom::UsRegion;
use crate::media::Frame;

/// Frames the `auto` mask is computed from (the first ones of the cine).
pub const AUTO_FRAMES: usize = 32;
/// Luma range (0–255) above which a pixel counts as moving.
pub const AUTO_THRESHOLD: u8 = 6;
/// Luma maximum (0–255) above which a pixel counts as lit.
pub const LIT_THRESHOLD: u8 = 8;
/// Radius of the square opening that drops thin moving lines before the largest component.
pub const OPEN_RADIUS: usize = 2;
/// Components kept beside the largest: those at least this share of its size.
pub const PART_OF_LARGEST: f64 = 0.05;
/// The sector must cover at least this share of the image (else: no sector found).
const MIN_SHARE: f64 = 0.01;

/// What `--mask` blanks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MaskMode {
    /// Nothing: frames as decoded (the default; the embeddings of published checkpoints).
    #[default]
    Off,
    /// Outside the DICOM ultrasound regions; `Auto` where a file has none.
    OutsideRegion,
    /// Outside the moving sector.
    Auto,
}

impl std::str::FromStr for MaskMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(MaskMode::Off),
            "outside-region" => Ok(MaskMode::OutsideRegion),
            "auto" => Ok(MaskMode::Auto),
            _ => Err(format!("unknown mask '{s}': expected outside-region, auto or off")),
        }
    }
}

impl std::fmt::Display for MaskMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MaskMode::Off => "off",
            MaskMode::OutsideRegion => "outside-region",
            MaskMode::Auto => "auto",
        })
    }
}

/// Pixels kept (true) of a `width × height` image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Row-major, true = kept.
    pub keep: Vec<bool>,
}

impl Mask {
    /// The union of the 2D regions (RegionSpatialFormat 1) that lie inside a `cols × rows`
    /// image; `None` when there is none.
    pub fn from_regions(regions: &[UsRegion], rows: usize, cols: usize) -> Option<Mask> {
        let mut keep = vec![false; rows * cols];
        let mut any = false;
        for r in regions.iter().filter(|r| r.spatial_format == 1 && r.fits(rows, cols)) {
            let (x, y, w, h) = r.rect(rows, cols);
            for yy in y..y + h {
                keep[yy * cols + x..yy * cols + x + w].iter_mut().for_each(|k| *k = true);
            }
            any = true;
        }
        any.then_some(Mask { width: cols, height: rows, keep })
    }

    /// Pixels kept.
    pub fn kept(&self) -> usize {
        self.keep.iter().filter(|k| **k).count()
    }

    /// Whether pixel (x, y) is kept.
    pub fn at(&self, x: usize, y: usize) -> bool {
        self.keep[y * self.width + x]
    }

    /// The part of the mask under the rectangle (x, y, w, h); `None` when it does not fit.
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Option<Mask> {
        if x + w > self.width || y + h > self.height {
            return None;
        }
        let keep = (y..y + h).flat_map(|yy| self.keep[yy * self.width + x..yy * self.width + x + w].iter().copied()).collect();
        Some(Mask { width: w, height: h, keep })
    }

    /// Sets every pixel of `f` outside the mask to 0. `Err` when the sizes differ.
    pub fn apply(&self, f: &mut Frame) -> Result<(), String> {
        if (f.width, f.height) != (self.width, self.height) {
            return Err(format!("a {}×{} frame in a cine masked at {}×{}", f.width, f.height, self.width, self.height));
        }
        for (px, keep) in f.rgb.chunks_exact_mut(3).zip(&self.keep) {
            if !keep {
                px.fill(0);
            }
        }
        Ok(())
    }
}

/// Per-pixel luma minimum and maximum over the frames seen (the `auto` mask's input).
#[derive(Clone, Debug)]
pub struct Motion {
    width: usize,
    height: usize,
    min: Vec<u8>,
    max: Vec<u8>,
    frames: usize,
}

impl Motion {
    /// Nothing seen yet.
    pub fn new(width: usize, height: usize) -> Self {
        Motion { width, height, min: vec![u8::MAX; width * height], max: vec![0; width * height], frames: 0 }
    }

    /// Frames seen.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Adds one frame. `Err` when its size differs from the first's.
    pub fn add(&mut self, f: &Frame) -> Result<(), String> {
        if (f.width, f.height) != (self.width, self.height) {
            return Err(format!("a {}×{} frame among {}×{} ones", f.width, f.height, self.width, self.height));
        }
        for ((px, lo), hi) in f.rgb.chunks_exact(3).zip(&mut self.min).zip(&mut self.max) {
            let l = ((u32::from(px[0]) * 77 + u32::from(px[1]) * 150 + u32::from(px[2]) * 29) >> 8) as u8;
            *lo = (*lo).min(l);
            *hi = (*hi).max(l);
        }
        self.frames += 1;
        Ok(())
    }

    /// The sector: moving pixels, opened, largest component, convex hull filled. `Err` says
    /// why there is none.
    pub fn sector(&self) -> Result<Mask, String> {
        let (w, h) = (self.width, self.height);
        if self.frames < 2 {
            return Err(format!("--mask auto finds the sector from motion and needs 2 frames or more, this cine has {}", self.frames));
        }
        let moving: Vec<bool> = self.min.iter().zip(&self.max).map(|(lo, hi)| hi.saturating_sub(*lo) > AUTO_THRESHOLD).collect();
        let candidate: Vec<bool> = self.max.iter().zip(&moving).map(|(hi, m)| *m || *hi > LIT_THRESHOLD).collect();
        let opened = dilate(&erode(&candidate, w, h, OPEN_RADIUS), w, h, OPEN_RADIUS);
        let component = sector_components(&opened, &moving, w, h);
        if (component.len() as f64) < MIN_SHARE * (w * h) as f64 {
            return Err(format!(
                "--mask auto found no moving sector ({} of {} pixels move across {} frames): a still image? (--mask off to embed it unmasked)",
                component.len(),
                w * h,
                self.frames
            ));
        }
        Ok(fill_hull(&component, w, h))
    }
}

/// Square min filter (separable): a pixel stays when every pixel within `r` (Chebyshev) is set;
/// outside the image counts as unset.
fn erode(m: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
    filter(m, w, h, r, true)
}

/// Square max filter (separable).
fn dilate(m: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
    filter(m, w, h, r, false)
}

fn filter(m: &[bool], w: usize, h: usize, r: usize, all: bool) -> Vec<bool> {
    let pass = |src: &[bool], along_x: bool| -> Vec<bool> {
        let mut out = vec![false; w * h];
        for y in 0..h {
            for x in 0..w {
                let (c, n) = if along_x { (x, w) } else { (y, h) };
                let range = c.saturating_sub(r)..(c + r + 1).min(n);
                let inside = range.len() == 2 * r + 1;
                let at = |k: usize| if along_x { src[y * w + k] } else { src[k * w + x] };
                out[y * w + x] = if all { inside && range.clone().all(at) } else { range.clone().any(at) };
            }
        }
        out
    };
    pass(&pass(m, true), false)
}

/// The pixels (x, y) of the 8-connected set component holding the most `moving` pixels and of
/// every other holding at least [`PART_OF_LARGEST`] as many.
fn sector_components(m: &[bool], moving: &[bool], w: usize, h: usize) -> Vec<(usize, usize)> {
    let mut seen = vec![false; w * h];
    let mut all: Vec<(usize, Vec<(usize, usize)>)> = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !m[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let mut comp = Vec::new();
        while let Some(p) = stack.pop() {
            let (x, y) = (p % w, p / w);
            comp.push((x, y));
            for ny in y.saturating_sub(1)..(y + 2).min(h) {
                for nx in x.saturating_sub(1)..(x + 2).min(w) {
                    let q = ny * w + nx;
                    if m[q] && !seen[q] {
                        seen[q] = true;
                        stack.push(q);
                    }
                }
            }
        }
        let motion = comp.iter().filter(|&&(x, y)| moving[y * w + x]).count();
        all.push((motion, comp));
    }
    let most = all.iter().map(|c| c.0).max().unwrap_or(0);
    all.into_iter().filter(|c| c.0 > 0 && c.0 as f64 >= PART_OF_LARGEST * most as f64).flat_map(|c| c.1).collect()
}

/// The convex hull of `pixels` (their centres), filled: a pixel is kept when its centre lies in
/// the hull.
fn fill_hull(pixels: &[(usize, usize)], w: usize, h: usize) -> Mask {
    // Only each row's leftmost and rightmost pixels can be hull vertices.
    let mut ends: Vec<(i64, i64)> = Vec::new();
    let mut span = vec![(usize::MAX, 0usize); h];
    for &(x, y) in pixels {
        span[y] = (span[y].0.min(x), span[y].1.max(x));
    }
    for (y, &(lo, hi)) in span.iter().enumerate() {
        if lo != usize::MAX {
            ends.push((lo as i64, y as i64));
            ends.push((hi as i64, y as i64));
        }
    }
    let hull = convex_hull(ends);
    let mut keep = vec![false; w * h];
    for y in 0..h {
        // The hull's extent along row y: intersect every edge that crosses it.
        let yf = y as f64;
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for i in 0..hull.len() {
            let (a, b) = (hull[i], hull[(i + 1) % hull.len()]);
            let (ay, by) = (a.1 as f64, b.1 as f64);
            if (ay - yf) * (by - yf) > 0.0 {
                continue;
            }
            if ay == by {
                lo = lo.min(a.0.min(b.0) as f64);
                hi = hi.max(a.0.max(b.0) as f64);
            } else {
                let x = a.0 as f64 + (yf - ay) / (by - ay) * (b.0 - a.0) as f64;
                lo = lo.min(x);
                hi = hi.max(x);
            }
        }
        if lo <= hi {
            let from = (lo - 1e-9).ceil().max(0.0) as usize;
            let to = ((hi + 1e-9).floor() as usize).min(w - 1);
            for x in from..=to {
                keep[y * w + x] = true;
            }
        }
    }
    Mask { width: w, height: h, keep }
}

/// Andrew's monotone chain: the hull's vertices, counter-clockwise (a single point or a
/// segment for degenerate input).
fn convex_hull(mut pts: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    pts.sort_unstable();
    pts.dedup();
    if pts.len() < 3 {
        return pts;
    }
    let cross = |o: (i64, i64), a: (i64, i64), b: (i64, i64)| (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0);
    let mut hull: Vec<(i64, i64)> = Vec::with_capacity(2 * pts.len());
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &(i64, i64)>> = if pass == 0 { Box::new(pts.iter()) } else { Box::new(pts.iter().rev()) };
        for &p in iter {
            while hull.len() >= start + 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0 {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disc of noise that changes every frame, a still text block, and a moving one-pixel
    /// line touching the disc: the mask is the disc (less nothing of its interior), never the
    /// text or the line.
    #[test]
    fn auto_keeps_the_moving_disc_and_drops_still_text_and_thin_lines() {
        let (w, h) = (80, 60);
        let mut motion = Motion::new(w, h);
        let inside = |x: usize, y: usize| (x as f64 - 40.0).powi(2) + (y as f64 - 28.0).powi(2) <= 20.0f64.powi(2);
        for t in 0..10u32 {
            let mut rgb = vec![0u8; w * h * 3];
            for y in 0..h {
                for x in 0..w {
                    let v = if inside(x, y) {
                        (((x as u32 * 31 + y as u32 * 17 + t * 53) % 97) + 20) as u8
                    } else if y < 4 && x < 12 {
                        200
                    } else if x == 40 && y > 40 {
                        (t * 20) as u8
                    } else {
                        0
                    };
                    rgb[(y * w + x) * 3..(y * w + x) * 3 + 3].fill(v);
                }
            }
            motion.add(&Frame { width: w, height: h, rgb }).unwrap();
        }
        let m = motion.sector().unwrap();
        for y in 0..h {
            for x in 0..w {
                if !inside(x, y) {
                    assert!(!m.at(x, y), "({x},{y}) outside the disc is kept");
                }
            }
        }
        // The opening rounds the disc's edge by a pixel at most.
        let interior = |x: usize, y: usize| (x as f64 - 40.0).powi(2) + (y as f64 - 28.0).powi(2) <= 18.5f64.powi(2);
        assert!((0..h).all(|y| (0..w).all(|x| !interior(x, y) || m.at(x, y))));
        let still = Motion { frames: 5, ..Motion::new(w, h) };
        assert!(still.sector().unwrap_err().contains("no moving sector"));
    }

    #[test]
    fn regions_union_and_modes_parse() {
        let r = |x0, y0, x1, y1, fmt| UsRegion { spatial_format: fmt, data_type: 1, x0, y0, x1, y1 };
        let m = Mask::from_regions(&[r(2, 2, 5, 4, 1), r(6, 0, 7, 1, 1), r(0, 0, 9, 9, 3)], 10, 10).unwrap();
        assert_eq!(m.kept(), 4 * 3 + 2 * 2);
        assert!(m.at(2, 2) && m.at(5, 4) && !m.at(1, 2) && !m.at(5, 5) && m.at(7, 1));
        assert!(Mask::from_regions(&[r(0, 0, 20, 5, 1)], 10, 10).is_none(), "a region outside the image is no region");
        for mode in [MaskMode::Off, MaskMode::OutsideRegion, MaskMode::Auto] {
            assert_eq!(mode.to_string().parse::<MaskMode>(), Ok(mode));
        }
        assert!("sector".parse::<MaskMode>().is_err());
    }
}
