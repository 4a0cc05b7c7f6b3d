//! Cine thumbnails for the viewer: a horizontal strip of up to [`MAX_FRAMES`] frames sampled
//! evenly over a stored video's source, each letterboxed on black into a [`CELL_W`]×[`CELL_H`]
//! cell, as one JPEG (a "sprite" the browser plays with a CSS `steps()` animation).
//!
//! Made on demand from the source file (DICOM or FFmpeg, as ingest reads it), at most
//! [`Thumbs::slots`] at a time; only the sampled frames are kept while decoding, so memory is
//! bounded by `MAX_FRAMES` native frames per thumbnail in flight. Kept on disk under the index
//! directory (`viewer-cache/thumbs/`), keyed by the item, its source path, and the source's size
//! and modification time (a replaced source gets a new thumbnail); the oldest files are removed
//! when the cache outgrows its budget.

use crate::error::Error;
use crate::media::Frame;
use echovault_index::ItemRecord;
use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{ImageBuffer, Rgb, RgbImage};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, UNIX_EPOCH};

/// Width of one cell, pixels.
pub const CELL_W: u32 = 160;
/// Height of one cell, pixels.
pub const CELL_H: u32 = 120;
/// Frames in a thumbnail at most.
pub const MAX_FRAMES: usize = 16;
/// JPEG quality of a thumbnail.
const QUALITY: u8 = 80;
/// Changes when the picture a key names changes (cell size, sampling, quality).
const FORMAT: &str = "sprite-v1-160x120-16-q80";
/// One loop's duration when the record has no frame rate, and its bounds, milliseconds.
const DEFAULT_LOOP_MS: u32 = 1500;
const LOOP_MS: (u32, u32) = (400, 4000);

/// A thumbnail.
#[derive(Debug)]
pub struct Sprite {
    /// The JPEG.
    pub jpeg: Vec<u8>,
    /// Cells in it.
    pub frames: u32,
    /// How long one loop of the cells plays, milliseconds (the clip's duration, clamped).
    pub duration_ms: u32,
    /// Served from the disk cache.
    pub cached: bool,
    /// The cache key (an ETag).
    pub key: String,
}

/// Why a thumbnail could not be made.
#[derive(Debug)]
pub enum ThumbError {
    /// The item is not a video.
    NotVideo,
    /// The stored source is not (or no longer) a file at its path.
    MissingSource,
    /// The source could not be decoded.
    Undecodable(String),
    /// The cache could not be read or written.
    Cache(String),
}

/// Counters `/v1/metrics` reports.
#[derive(Debug, Default)]
pub struct ThumbCounters {
    /// Thumbnails served from the disk cache.
    pub hits: AtomicU64,
    /// Thumbnails made from their source.
    pub misses: AtomicU64,
    /// Frames put into thumbnails made.
    pub frames: AtomicU64,
    /// Microseconds spent making thumbnails (decode, scale, encode).
    pub micros: AtomicU64,
    /// Thumbnails that could not be made (missing or undecodable source).
    pub failures: AtomicU64,
    /// Cache files removed to keep the cache within its budget.
    pub evicted: AtomicU64,
}

/// The disk cache and its counters.
#[derive(Debug)]
pub struct Thumbs {
    dir: PathBuf,
    budget: u64,
    /// Bytes the cache holds (as this process has counted them).
    size: AtomicU64,
    /// One eviction at a time.
    evicting: Mutex<()>,
    /// Counters.
    pub counters: ThumbCounters,
}

impl Thumbs {
    /// The cache under `index_dir`, holding at most about `budget` bytes (0: no disk cache).
    pub fn new(index_dir: &Path, budget: u64) -> Thumbs {
        let dir = index_dir.join("viewer-cache").join("thumbs");
        let size = files(&dir).iter().map(|f| f.1).sum();
        Thumbs { dir, budget, size: AtomicU64::new(size), evicting: Mutex::new(()), counters: ThumbCounters::default() }
    }

    /// Bytes the cache holds.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// The thumbnail of `rec`, from the cache or made from its source. Blocks (decoding).
    pub fn get(&self, rec: &ItemRecord) -> Result<Sprite, ThumbError> {
        let r = self.get_inner(rec);
        match &r {
            Ok(s) if s.cached => self.counters.hits.fetch_add(1, Ordering::Relaxed),
            Ok(_) => self.counters.misses.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counters.failures.fetch_add(1, Ordering::Relaxed),
        };
        r
    }

    /// The cache key of `rec`'s thumbnail (also its ETag): from the item, its source path, and
    /// the source's size and modification time, so it is known before anything is decoded.
    pub fn key(rec: &ItemRecord) -> Result<String, ThumbError> {
        if rec.kind != echovault_index::Kind::Video {
            return Err(ThumbError::NotVideo);
        }
        let meta = std::fs::metadata(&rec.source).map_err(|_| ThumbError::MissingSource)?;
        if !meta.is_file() {
            return Err(ThumbError::MissingSource);
        }
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        Ok(hex::encode(&Sha256::digest(format!("{FORMAT}\0{}\0{}\0{}\0{mtime}", rec.id.0, rec.source, meta.len()))[..16]))
    }

    fn get_inner(&self, rec: &ItemRecord) -> Result<Sprite, ThumbError> {
        let key = Thumbs::key(rec)?;
        let source = Path::new(&rec.source);
        let duration_ms = loop_ms(rec);
        let path = self.dir.join(&key[..2]).join(format!("{key}.jpg"));
        if self.budget > 0 {
            if let Ok(jpeg) = std::fs::read(&path) {
                if let Some(frames) = cells_of(&jpeg) {
                    return Ok(Sprite { jpeg, frames, duration_ms, cached: true, key });
                }
            }
        }
        let start = Instant::now();
        let frames = sample(source, rec.frames.map(|n| n as usize))?;
        let jpeg = sprite(&frames).map_err(ThumbError::Undecodable)?;
        self.counters.frames.fetch_add(frames.len() as u64, Ordering::Relaxed);
        self.counters.micros.fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        if self.budget > 0 {
            // A cache that cannot be written (disk full, read-only) costs the next request a
            // decode, not this one its thumbnail.
            if let Err(ThumbError::Cache(why)) = self.store(&path, &jpeg) {
                tracing::warn!(target: "echovault::serve", "thumbnail cache: {why}");
            }
        }
        Ok(Sprite { jpeg, frames: frames.len() as u32, duration_ms, cached: false, key })
    }

    /// Writes a thumbnail (whole or not at all: a temporary file renamed), then trims the cache.
    fn store(&self, path: &Path, jpeg: &[u8]) -> Result<(), ThumbError> {
        let dir = path.parent().unwrap_or(&self.dir);
        let cache_err = |e: std::io::Error| ThumbError::Cache(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(cache_err)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(cache_err)?;
        std::io::Write::write_all(&mut tmp, jpeg).map_err(cache_err)?;
        tmp.persist(path).map_err(|e| cache_err(e.error))?;
        if self.size.fetch_add(jpeg.len() as u64, Ordering::Relaxed) + jpeg.len() as u64 > self.budget {
            self.evict();
        }
        Ok(())
    }

    /// Removes the least recently written files until the cache holds at most 90 % of its
    /// budget.
    fn evict(&self) {
        let Ok(_one) = self.evicting.try_lock() else { return };
        let mut all = files(&self.dir);
        let mut total: u64 = all.iter().map(|f| f.1).sum();
        all.sort_by_key(|f| f.2);
        let target = self.budget / 10 * 9;
        for (path, len, _) in all {
            if total <= target {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                self.counters.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.size.store(total, Ordering::Relaxed);
    }
}

/// Every cache file: path, length, modification time.
fn files(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let Ok(subdirs) = std::fs::read_dir(dir) else { return out };
    for sub in subdirs.flatten() {
        let Ok(entries) = std::fs::read_dir(sub.path()) else { continue };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_file() && e.path().extension().is_some_and(|x| x == "jpg") {
                out.push((e.path(), m.len(), m.modified().unwrap_or(UNIX_EPOCH)));
            }
        }
    }
    out
}

/// One loop's duration: the clip's, from the record's frame count and rate.
fn loop_ms(rec: &ItemRecord) -> u32 {
    match (rec.frames, rec.fps) {
        (Some(n), Some(fps)) if n > 0 && fps.is_finite() && fps > 0.0 => {
            ((f64::from(n) / fps * 1000.0).round() as u32).clamp(LOOP_MS.0, LOOP_MS.1)
        }
        _ => DEFAULT_LOOP_MS,
    }
}

/// Cells in a cached sprite (its width over the cell width), from the JPEG header alone.
fn cells_of(jpeg: &[u8]) -> Option<u32> {
    let (w, h) = image::ImageReader::with_format(std::io::Cursor::new(jpeg), image::ImageFormat::Jpeg).into_dimensions().ok()?;
    (h == CELL_H && w % CELL_W == 0 && w > 0).then_some(w / CELL_W)
}

/// Which frames of `total` a thumbnail shows: `min(total, MAX_FRAMES)` evenly spaced, the first
/// always.
pub fn picks(total: usize) -> Vec<usize> {
    let n = total.min(MAX_FRAMES);
    (0..n).map(|j| j * total / n).collect()
}

/// The sampled frames of `source`. `total` is the record's frame count; when it is unknown the
/// DICOM header tells it, or (for a video) every fourth frame of the first 64 is taken.
fn sample(source: &Path, total: Option<usize>) -> Result<Vec<Frame>, ThumbError> {
    let undecodable = |e: Error| ThumbError::Undecodable(e.to_string());
    let total = match total {
        Some(n) if n > 0 => n,
        _ if crate::media::dicom::is_dicom(source) => {
            crate::media::dicom::DicomCine::open(source).map_err(|e| ThumbError::Undecodable(e.to_string()))?.info().frames
        }
        _ => 4 * MAX_FRAMES,
    };
    let picks = picks(total);
    let last = picks.last().copied().unwrap_or(0);
    let keep = |i: usize| picks.binary_search(&i).is_ok();
    let frames = if crate::media::dicom::is_dicom(source) {
        crate::media::read_frames(source, keep).map_err(undecodable)?
    } else {
        read_video(source, keep, last).map_err(undecodable)?
    };
    if frames.is_empty() {
        return Err(ThumbError::Undecodable("no frame decoded".into()));
    }
    Ok(frames)
}

#[cfg(feature = "video")]
fn read_video(source: &Path, keep: impl Fn(usize) -> bool, last: usize) -> Result<Vec<Frame>, Error> {
    Ok(crate::media::video::read_video_where(source, keep, |i| i >= last)?.1)
}

#[cfg(not(feature = "video"))]
fn read_video(source: &Path, keep: impl Fn(usize) -> bool, _last: usize) -> Result<Vec<Frame>, Error> {
    crate::media::read_frames(source, keep)
}

/// The frames scaled into cells side by side, as a JPEG.
pub fn sprite(frames: &[Frame]) -> Result<Vec<u8>, String> {
    let mut canvas: RgbImage = ImageBuffer::from_pixel(CELL_W * frames.len() as u32, CELL_H, Rgb([0, 0, 0]));
    for (i, f) in frames.iter().enumerate() {
        let (w, h) = (f.width as u32, f.height as u32);
        let img: RgbImage =
            ImageBuffer::from_raw(w, h, f.rgb.clone()).ok_or_else(|| format!("frame {i}: {w}×{h} does not match its pixels"))?;
        // Fit inside the cell, keeping the aspect; never less than one pixel a side.
        let scale = f64::min(f64::from(CELL_W) / f64::from(w), f64::from(CELL_H) / f64::from(h));
        let (sw, sh) = (((f64::from(w) * scale).round() as u32).clamp(1, CELL_W), ((f64::from(h) * scale).round() as u32).clamp(1, CELL_H));
        let small = image::imageops::resize(&img, sw, sh, FilterType::Triangle);
        let (x, y) = (i as u32 * CELL_W + (CELL_W - sw) / 2, (CELL_H - sh) / 2);
        image::imageops::replace(&mut canvas, &small, i64::from(x), i64::from(y));
    }
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, QUALITY).encode_image(&canvas).map_err(|e| format!("cannot encode the thumbnail: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn picks_spread_over_the_clip_and_start_at_the_first_frame() {
        assert_eq!(picks(4), vec![0, 1, 2, 3]);
        assert_eq!(picks(32), (0..16).map(|j| 2 * j).collect::<Vec<_>>());
        let p = picks(600);
        assert_eq!((p.len(), p[0], p[15]), (16, 0, 562));
        assert!(p.windows(2).all(|w| w[1] > w[0]));
        assert!(picks(0).is_empty());
    }

    /// A frame whose left half is white and right half black, `w`×`h`.
    fn half_white(w: usize, h: usize) -> Frame {
        let rgb = (0..h).flat_map(|_| (0..w).flat_map(move |x| if x < w / 2 { [255u8; 3] } else { [0; 3] })).collect();
        Frame::new(w, h, rgb).unwrap()
    }

    #[test]
    fn a_sprite_letterboxes_each_frame_into_its_cell() {
        // A tall frame (1:2) fills the cell's height and is centred with black bars; a wide
        // one (4:1) fills its width.
        let jpeg = sprite(&[half_white(60, 120), half_white(400, 100)]).unwrap();
        let img = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (2 * CELL_W, CELL_H));
        assert_eq!(cells_of(&jpeg), Some(2));
        let luma = |x: u32, y: u32| img.get_pixel(x, y).0.iter().map(|&c| u32::from(c)).sum::<u32>() / 3;
        // Cell 0: 60×120 scaled to 60×120, at x 50..110; its white half is x 50..80.
        assert!(luma(10, 60) < 30, "left bar");
        assert!(luma(65, 60) > 220, "white half");
        assert!(luma(95, 60) < 30, "black half");
        assert!(luma(150, 60) < 30, "right bar");
        // Cell 1: 400×100 scaled to 160×40, rows 40..80; white for x 160..240.
        assert!(luma(CELL_W + 40, 60) > 220 && luma(CELL_W + 120, 60) < 30);
        assert!(luma(CELL_W + 40, 10) < 30, "top bar");
    }

    #[test]
    fn a_loop_plays_for_the_clips_duration_within_bounds() {
        let mut r = ItemRecord::new(echovault_index::ItemId::from("v"), echovault_index::Kind::Video, "x");
        assert_eq!(loop_ms(&r), DEFAULT_LOOP_MS);
        (r.frames, r.fps) = (Some(50), Some(25.0));
        assert_eq!(loop_ms(&r), 2000);
        (r.frames, r.fps) = (Some(600), Some(30.0));
        assert_eq!(loop_ms(&r), LOOP_MS.1);
        (r.frames, r.fps) = (Some(2), Some(50.0));
        assert_eq!(loop_ms(&r), LOOP_MS.0);
        r.fps = Some(0.0);
        assert_eq!(loop_ms(&r), DEFAULT_LOOP_MS);
    }

    #[test]
    fn missing_and_non_video_items_are_told_apart_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let t = Thumbs::new(dir.path(), 1 << 20);
        let gone = ItemRecord::new(
            echovault_index::ItemId::from("v"),
            echovault_index::Kind::Video,
            dir.path().join("gone.avi").to_str().unwrap(),
        );
        assert!(matches!(t.get(&gone), Err(ThumbError::MissingSource)));
        let report = ItemRecord::new(echovault_index::ItemId::from("r"), echovault_index::Kind::Report, "x");
        assert!(matches!(t.get(&report), Err(ThumbError::NotVideo)));
        // A directory at the source's path is not a source either.
        let d = ItemRecord::new(echovault_index::ItemId::from("d"), echovault_index::Kind::Video, dir.path().to_str().unwrap());
        assert!(matches!(t.get(&d), Err(ThumbError::MissingSource)));
        let bad = dir.path().join("bad.avi");
        std::fs::write(&bad, b"not a video").unwrap();
        let b = ItemRecord::new(echovault_index::ItemId::from("b"), echovault_index::Kind::Video, bad.to_str().unwrap());
        assert!(matches!(t.get(&b), Err(ThumbError::Undecodable(_))));
        assert_eq!(t.counters.failures.load(Ordering::Relaxed), 4);
    }
}
