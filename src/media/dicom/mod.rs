//! DICOM ultrasound cines through dicom-rs: recognised by content (the `DICM` marker), metadata
//! read once, frames decoded one at a time to 8-bit RGB (a whole decoded cine is never held).
//!
//! Native pixel data is read straight from the file at each frame's offset; compressed pixel
//! data is kept as its (small) fragments and one frame is decoded per call. Every failure is a
//! [`DicomError`] with a reason; nothing here panics on file content (fuzzed: `fuzz/`).

pub mod codec;
pub mod pixels;
mod video;

use super::Frame;
use codec::{Codec, MAX_FRAME_BYTES};
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::mem::InMemElement;
use dicom_object::{FileDicomObject, InMemDicomObject, OpenFileOptions};
use pixels::{Layout, Palette, Photometric};
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a DICOM file could not be read or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DicomError {
    /// What is wrong.
    pub message: String,
    /// The file is valid DICOM but holds no image (a structured report, a presentation state...):
    /// ingest skips it with this reason instead of counting a failure.
    pub not_image: bool,
}

#[allow(non_snake_case)]
fn DicomError(message: String) -> DicomError {
    DicomError { message, not_image: false }
}

impl From<String> for DicomError {
    fn from(s: String) -> Self {
        DicomError(s)
    }
}

impl From<&str> for DicomError {
    fn from(s: &str) -> Self {
        DicomError(s.to_owned())
    }
}

/// Names of non-image storage classes echovault recognises (to skip them with a reason).
fn non_image_class(uid: &str) -> Option<&'static str> {
    const CLASSES: [(&str, &str); 7] = [
        ("1.2.840.10008.5.1.4.1.1.88.", "structured report"),
        ("1.2.840.10008.5.1.4.1.1.11.", "presentation state"),
        ("1.2.840.10008.5.1.4.1.1.9.", "waveform"),
        ("1.2.840.10008.5.1.4.1.1.104.", "encapsulated document"),
        ("1.2.840.10008.5.1.4.1.1.66", "raw data"),
        ("1.2.840.10008.5.1.4.1.1.481.", "radiotherapy object"),
        ("1.2.840.10008.1.3.10", "media storage directory (DICOMDIR)"),
    ];
    CLASSES.iter().find(|(p, _)| uid.starts_with(p)).map(|(_, n)| *n)
}

type Result<T> = std::result::Result<T, DicomError>;

/// The most frames a header may claim (a 10-minute cine at 1000 fps).
pub const MAX_FRAMES: usize = 600_000;

/// True when the file starts with a 128-byte preamble and `DICM`.
pub fn is_dicom(path: &Path) -> bool {
    Source::File(path.to_owned()).is_dicom()
}

/// A patient identifier that never prints: `Debug` shows `<redacted>`. Turn it into a
/// pseudonymous key (`crate::pseudonym`) before storing or logging anything.
#[derive(Clone, PartialEq, Eq)]
pub struct PatientId(String);

impl PatientId {
    /// The raw identifier, for pseudonymisation only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PatientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PatientId(<redacted>)")
    }
}

/// One entry of the SequenceOfUltrasoundRegions.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UsRegion {
    /// RegionSpatialFormat (1 = 2D tissue or flow, 2 = M-mode, 3 = spectral, 4 = waveform...).
    pub spatial_format: u16,
    /// RegionDataType (1 = tissue, 2 = colour flow, 3 = PW spectral...).
    pub data_type: u16,
    /// Left column (inclusive).
    pub x0: u32,
    /// Top row (inclusive).
    pub y0: u32,
    /// Right column (inclusive).
    pub x1: u32,
    /// Bottom row (inclusive).
    pub y1: u32,
}

impl UsRegion {
    /// True when the region lies inside a `cols × rows` image and is not empty. A maximum one
    /// past the last column or row (common: writers store the size) is accepted.
    pub fn fits(&self, rows: usize, cols: usize) -> bool {
        self.x0 < self.x1 && self.y0 < self.y1 && (self.x1 as usize) <= cols && (self.y1 as usize) <= rows
    }

    /// The region as (x, y, width, height), clipped to a `cols × rows` image.
    pub fn rect(&self, rows: usize, cols: usize) -> (usize, usize, usize, usize) {
        let x1 = (self.x1 as usize).min(cols.saturating_sub(1));
        let y1 = (self.y1 as usize).min(rows.saturating_sub(1));
        (self.x0 as usize, self.y0 as usize, (x1 + 1).saturating_sub(self.x0 as usize), (y1 + 1).saturating_sub(self.y0 as usize))
    }
}

/// What a DICOM file says about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct DicomInfo {
    /// Transfer syntax UID.
    pub transfer_syntax: String,
    /// Its name.
    pub transfer_syntax_name: String,
    /// SOPClassUID.
    pub sop_class_uid: Option<String>,
    /// Frames (NumberOfFrames, 1 when absent).
    pub frames: usize,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// PhotometricInterpretation as written.
    pub photometric: String,
    /// SamplesPerPixel.
    pub samples: usize,
    /// BitsAllocated.
    pub bits_allocated: usize,
    /// BitsStored.
    pub bits_stored: usize,
    /// PlanarConfiguration.
    pub planar: u16,
    /// Frames per second: 1000 / FrameTime, else CineRate, else RecommendedDisplayFrameRate.
    pub fps: Option<f64>,
    /// PatientID (never printed; pseudonymise before use).
    pub patient_id: Option<PatientId>,
    /// StudyInstanceUID.
    pub study_uid: Option<String>,
    /// SeriesInstanceUID.
    pub series_uid: Option<String>,
    /// SOPInstanceUID.
    pub sop_uid: Option<String>,
    /// StudyDate as `YYYY-MM-DD` (DICOM `YYYYMMDD` converted).
    pub study_date: Option<String>,
    /// StudyTime as written (`HHMMSS.FFFFFF`).
    pub study_time: Option<String>,
    /// Modality.
    pub modality: Option<String>,
    /// Manufacturer.
    pub manufacturer: Option<String>,
    /// ManufacturerModelName.
    pub model: Option<String>,
    /// BurnedInAnnotation (`YES`/`NO`).
    pub burned_in_annotation: Option<String>,
    /// SequenceOfUltrasoundRegions.
    pub regions: Vec<UsRegion>,
}

impl DicomInfo {
    /// The region to crop to: the largest 2D region that lies inside the image. `Err` says why
    /// there is none (no regions, or every region outside the image).
    pub fn crop_region(&self) -> std::result::Result<UsRegion, String> {
        if self.regions.is_empty() {
            return Err("no ultrasound regions".into());
        }
        let area = |r: &UsRegion| (r.x1 - r.x0 + 1) as u64 * (r.y1 - r.y0 + 1) as u64;
        self.regions
            .iter()
            .filter(|r| r.spatial_format == 1 && r.fits(self.rows, self.cols))
            .max_by_key(|r| area(r))
            .cloned()
            .ok_or_else(|| format!("no 2D region of {} lies inside the {}×{} image", self.regions.len(), self.cols, self.rows))
    }
}

/// The bytes of a DICOM file: on disk (read on demand) or in memory.
#[derive(Clone)]
enum Source {
    File(PathBuf),
    Bytes(Arc<Vec<u8>>),
}

impl Source {
    fn len(&self) -> Result<u64> {
        match self {
            Source::File(p) => Ok(std::fs::metadata(p).map_err(|e| format!("cannot read: {e}"))?.len()),
            Source::Bytes(b) => Ok(b.len() as u64),
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Source::File(p) => {
                let mut f = std::fs::File::open(p)?;
                f.seek(SeekFrom::Start(offset))?;
                f.read_exact(buf)
            }
            Source::Bytes(b) => {
                let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
                let src = b.get(start..start + buf.len()).ok_or(std::io::ErrorKind::UnexpectedEof)?;
                buf.copy_from_slice(src);
                Ok(())
            }
        }
    }

    /// Parses the file with dicom-rs (up to the pixel data when `header_only`).
    fn parse(&self, header_only: bool) -> Result<FileDicomObject<InMemDicomObject>> {
        let mut opts = OpenFileOptions::new().read_preamble(ReadPreamble::Always);
        if header_only {
            opts = opts.read_until(tags::PIXEL_DATA);
        }
        let what = if header_only { "DICOM header" } else { "DICOM file" };
        match self {
            Source::File(p) => {
                let f = std::fs::File::open(p).map_err(|e| format!("cannot read: {e}"))?;
                opts.from_reader(std::io::BufReader::new(f))
            }
            Source::Bytes(b) => opts.from_reader(&b[..]),
        }
        .map_err(|e| DicomError(format!("unreadable {what}: {e}")))
    }

    /// Offset of the last `7FE0,0010 OB|OW` element of undefined length followed by an item tag.
    fn find_last_encapsulated(&self, size: u64) -> Result<Option<u64>> {
        const CHUNK: u64 = 1 << 20;
        let matches = |w: &[u8]| {
            w[..4] == [0xe0, 0x7f, 0x10, 0x00]
                && (&w[4..6] == b"OB" || &w[4..6] == b"OW")
                && w[6..12] == [0, 0, 0xff, 0xff, 0xff, 0xff]
                && w[12..16] == [0xfe, 0xff, 0x00, 0xe0]
        };
        let mut found = None;
        let mut at = 132u64;
        let mut buf = Vec::new();
        while at + 16 <= size {
            let n = (size - at).min(CHUNK + 15);
            buf.resize(n as usize, 0);
            self.read_at(at, &mut buf).map_err(|e| format!("cannot read: {e}"))?;
            if let Some(p) = buf.windows(16).rposition(matches) {
                found = Some(at + p as u64);
            }
            at += CHUNK;
        }
        Ok(found)
    }

    fn is_dicom(&self) -> bool {
        let mut head = [0u8; 132];
        self.read_at(0, &mut head).is_ok() && &head[128..] == b"DICM"
    }
}

/// Where the pixel data is.
enum Pixels {
    /// Native samples at `offset` in the source; big-endian words of `swap` bytes are reversed
    /// (1: none) to give little-endian samples.
    Source { offset: u64, len: u64, swap: usize },
    /// Native samples in memory (little-endian words).
    Memory(Vec<u8>),
    /// Compressed fragments as (offset of the value in the source, length), and each frame's
    /// fragment range; fragments are read when their frame is decoded.
    Fragments { fragments: Vec<(u64, u64)>, frames: Vec<Range<usize>>, codec: Codec },
    /// An MPEG-2, H.264 or HEVC stream: the fragments concatenated, decoded through FFmpeg.
    Video(Box<video::VideoFrames>),
}

/// An opened DICOM cine: metadata plus frame-by-frame decoding.
pub struct DicomCine {
    source: Source,
    info: DicomInfo,
    layout: Layout,
    pixels: Pixels,
}

impl std::fmt::Debug for DicomCine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DicomCine").field("info", &self.info).finish_non_exhaustive()
    }
}

fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let e = obj.element_opt(tag).ok()??;
    let s = e.to_str().ok()?;
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!s.is_empty()).then(|| s.to_owned())
}

fn int(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<i64> {
    obj.element_opt(tag).ok()??.to_int::<i64>().ok()
}

fn float(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<f64> {
    obj.element_opt(tag).ok()??.to_float64().ok().filter(|v| v.is_finite())
}

/// A LUT's values as 16-bit words: US/SS/OW values as parsed; raw bytes (how dicom-rs may keep
/// OW/OB) paired in the transfer syntax's byte order.
fn words(e: &InMemElement, big: bool) -> Result<Vec<u16>> {
    if let Ok(v) = e.uint16_slice() {
        return Ok(v.to_vec());
    }
    if let Some(dicom_core::PrimitiveValue::U8(b)) = e.value().primitive() {
        return Ok(b
            .chunks(2)
            .map(|c| {
                let pair = [c[0], *c.get(1).unwrap_or(&0)];
                if big {
                    u16::from_be_bytes(pair)
                } else {
                    u16::from_le_bytes(pair)
                }
            })
            .collect());
    }
    let v = e.to_multi_int::<i64>().map_err(|err| format!("palette: {err}"))?;
    // SS descriptors: 65536 entries are written as 0, negative first values wrap.
    Ok(v.into_iter().map(|x| x.rem_euclid(65536) as u16).collect())
}

/// Expands segmented palette data (PS3.3 C.7.9.2) the way pydicom does: discrete, linear
/// (rounded half to even) and indirect segments.
fn expand_segmented(data: &[u16], max_segments: Option<usize>, last: Option<u16>, depth: usize) -> Result<Vec<u16>> {
    if depth > 8 {
        return Err("segmented palette: indirect segments nest too deeply".into());
    }
    let mut lut: Vec<u16> = Vec::new();
    let (mut i, mut segments) = (0usize, 0usize);
    while i + 1 < data.len() {
        let (op, len) = (data[i], usize::from(data[i + 1]));
        i += 2;
        match op {
            0 => {
                lut.extend_from_slice(data.get(i..i + len).ok_or("segmented palette: discrete segment past the end")?);
                i += len;
            }
            1 => {
                let y0 = lut.last().copied().or(last).ok_or("segmented palette: starts with a linear segment")?;
                let y1 = *data.get(i).ok_or("segmented palette: linear segment past the end")?;
                i += 1;
                if y0 == y1 || len == 0 {
                    lut.extend(std::iter::repeat_n(y1, len));
                } else {
                    let step = (f64::from(y1) - f64::from(y0)) / len as f64;
                    let start = f64::from(y0) + step;
                    let stop = f64::from(y1);
                    let delta = if len > 1 { (stop - start) / (len - 1) as f64 } else { 0.0 };
                    for k in 0..len {
                        let v = if k + 1 == len { stop } else { start + k as f64 * delta };
                        lut.push(v.round_ties_even().clamp(0.0, 65535.0) as u16);
                    }
                }
            }
            2 => {
                let prev = *lut.last().ok_or("segmented palette: starts with an indirect segment")?;
                let lo = *data.get(i).ok_or("segmented palette: indirect segment past the end")?;
                let hi = *data.get(i + 1).ok_or("segmented palette: indirect segment past the end")?;
                i += 2;
                let at = (usize::from(hi) << 16) | usize::from(lo);
                let rest = data.get(at..).ok_or("segmented palette: indirect offset past the end")?;
                lut.extend(expand_segmented(rest, Some(len), Some(prev), depth + 1)?);
            }
            other => return Err(format!("segmented palette: unknown segment type {other}").into()),
        }
        if lut.len() > 65536 {
            return Err("segmented palette expands past 65536 entries".into());
        }
        segments += 1;
        if max_segments == Some(segments) {
            break;
        }
    }
    Ok(lut)
}

fn palette(obj: &InMemDicomObject, big: bool) -> Result<Palette> {
    let desc_tags = [
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
    ];
    let data_tags = [
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    ];
    let segmented_tags = [
        tags::SEGMENTED_RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::SEGMENTED_GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::SEGMENTED_BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    ];
    let mut descs = [[0i64; 3]; 3];
    let mut tables: Vec<Vec<u16>> = Vec::new();
    for c in 0..3 {
        let d = obj.element_opt(desc_tags[c]).ok().flatten().ok_or("PALETTE COLOR without a lookup table descriptor")?;
        let w = words(d, big)?;
        if w.len() < 3 {
            return Err("palette descriptor with fewer than 3 values".into());
        }
        descs[c] = [i64::from(w[0]), i64::from(w[1]), i64::from(w[2])];
        if let Some(e) = obj.element_opt(data_tags[c]).ok().flatten() {
            tables.push(words(e, big)?);
        } else if let Some(e) = obj.element_opt(segmented_tags[c]).ok().flatten() {
            tables.push(expand_segmented(&words(e, big)?, None, None, 0)?);
        } else {
            return Err("PALETTE COLOR without lookup table data".into());
        }
    }
    Ok(Palette::new(descs, [&tables[0], &tables[1], &tables[2]])?)
}

fn regions(obj: &InMemDicomObject) -> Vec<UsRegion> {
    let Some(items) = obj.element_opt(tags::SEQUENCE_OF_ULTRASOUND_REGIONS).ok().flatten().and_then(|e| e.items()) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|it| {
            let u = |t| int(it, t).and_then(|v| u32::try_from(v).ok());
            Some(UsRegion {
                spatial_format: u(tags::REGION_SPATIAL_FORMAT).unwrap_or(0) as u16,
                data_type: u(tags::REGION_DATA_TYPE).unwrap_or(0) as u16,
                x0: u(tags::REGION_LOCATION_MIN_X0)?,
                y0: u(tags::REGION_LOCATION_MIN_Y0)?,
                x1: u(tags::REGION_LOCATION_MAX_X1)?,
                y1: u(tags::REGION_LOCATION_MAX_Y1)?,
            })
        })
        .collect()
}

fn dicom_date(s: Option<String>) -> Option<String> {
    let s = s?;
    let d: String = s.chars().filter(char::is_ascii_digit).collect();
    if d.len() == 8 {
        Some(format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..]))
    } else {
        Some(s)
    }
}

impl DicomCine {
    /// Opens `path`: reads the header (not the pixel data), checks that its frames can be decoded.
    pub fn open(path: &Path) -> Result<DicomCine> {
        Self::open_source(Source::File(path.to_owned()))
    }

    /// Opens a DICOM file held in memory (preamble included).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<DicomCine> {
        Self::open_source(Source::Bytes(Arc::new(bytes)))
    }

    fn open_source(source: Source) -> Result<DicomCine> {
        let size = source.len()?;
        if !source.is_dicom() {
            return Err("not a DICOM file (no 'DICM' marker after the 128-byte preamble)".into());
        }
        let head = source.parse(true)?;
        let (info, layout, codec) = Self::describe(&head)?;
        // Native data: the pixel data element is the last one; its value is the file's tail.
        let pixels = match codec {
            Codec::NativeLittle | Codec::NativeBig if info.transfer_syntax != "1.2.840.10008.1.2.1.99" => {
                let need = native_bytes(&layout, info.frames)?;
                if size < need {
                    return Err(format!(
                        "pixel data of {} frames needs {need} bytes, the file has {size} (truncated, or NumberOfFrames too large)",
                        info.frames
                    )
                    .into());
                }
                match locate_native(&source, size, need, codec == Codec::NativeBig) {
                    Some((offset, len, ow)) => {
                        // Big endian: 16/32-bit samples are byte-swapped; 8-bit samples only when
                        // written as OW words.
                        let swap = match (codec, layout.bits_allocated) {
                            (Codec::NativeBig, 16) => 2,
                            (Codec::NativeBig, 32) => 4,
                            (Codec::NativeBig, 8) if ow => 2,
                            _ => 1,
                        };
                        Pixels::Source { offset, len, swap }
                    }
                    None => Self::load_pixels(&source, &info, &layout, codec)?,
                }
            }
            Codec::Jpeg | Codec::Jpeg2000 | Codec::JpegLs | Codec::Rle | Codec::Video => {
                Self::scan_fragments(&source, size, &head, &info, codec)?
            }
            _ => Self::load_pixels(&source, &info, &layout, codec)?,
        };
        drop(head);
        let have = match &pixels {
            Pixels::Source { len, .. } => Some(*len),
            Pixels::Memory(v) => Some(v.len() as u64),
            Pixels::Fragments { .. } | Pixels::Video(_) => None,
        };
        if let Some(have) = have {
            let need = native_bytes(&layout, info.frames)?;
            if have < need {
                return Err(format!("NumberOfFrames {} needs {need} bytes of pixel data, the file holds {have}", info.frames).into());
            }
        }
        Ok(DicomCine { source, info, layout, pixels })
    }

    /// Finds the top-level encapsulated pixel data and lists its fragments without reading them,
    /// checking every item length against the bytes that are there (a length field is never
    /// trusted to size an allocation). Encapsulated transfer syntaxes are explicit VR little
    /// endian, so the element starts `E0 7F 10 00 'O' 'B'|'W' 00 00 FF FF FF FF` followed by an
    /// item; the last such place in the file is the image's pixel data (icons come earlier).
    fn scan_fragments(
        source: &Source,
        size: u64,
        head: &FileDicomObject<InMemDicomObject>,
        info: &DicomInfo,
        codec: Codec,
    ) -> Result<Pixels> {
        let start = source.find_last_encapsulated(size)?.ok_or("no encapsulated pixel data found")?;
        let mut pos = start + 12;
        let mut items: Vec<(u64, u64)> = Vec::new();
        loop {
            if pos == size {
                break; // a missing sequence delimiter at the very end is tolerated
            }
            let mut h = [0u8; 8];
            source.read_at(pos, &mut h).map_err(|_| format!("pixel data item {} is cut off (truncated file?)", items.len()))?;
            let len = u64::from(u32::from_le_bytes([h[4], h[5], h[6], h[7]]));
            match h[..4] {
                [0xfe, 0xff, 0x00, 0xe0] => {
                    if len > size - pos - 8 {
                        return Err(format!(
                            "pixel data item {} claims {len} bytes, {} remain in the file (truncated?)",
                            items.len(),
                            size - pos - 8
                        )
                        .into());
                    }
                    items.push((pos + 8, len));
                    pos += 8 + len;
                }
                [0xfe, 0xff, 0xdd, 0xe0] => break,
                _ => return Err(format!("pixel data item {} has no item tag (corrupt encapsulation)", items.len()).into()),
            }
        }
        let (bot, fragments) = items.split_first().ok_or("encapsulated pixel data without a basic offset table item")?;
        let fragments = fragments.to_vec();
        if codec == Codec::Video {
            // One stream for the whole cine: frames do not map to fragments (any offset table
            // is not used).
            let v = video::VideoFrames::new(fragments);
            if v.len() == 0 {
                return Err("the encapsulated video stream is empty".into());
            }
            return Ok(Pixels::Video(Box::new(v)));
        }
        let mut offsets = Vec::new();
        if bot.1 > 0 {
            if bot.1 % 4 != 0 || bot.1 / 4 > MAX_FRAMES as u64 {
                return Err(format!("basic offset table of {} bytes", bot.1).into());
            }
            let mut b = vec![0u8; bot.1 as usize];
            source.read_at(bot.0, &mut b).map_err(|e| format!("basic offset table: {e}"))?;
            offsets = b.chunks_exact(4).map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect();
        }
        if let Some(ext) = head.element_opt(tags::EXTENDED_OFFSET_TABLE).ok().flatten() {
            let b = ext.to_bytes().map_err(|e| format!("extended offset table: {e}"))?;
            offsets = b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
        }
        let mut heads = Vec::with_capacity(fragments.len());
        for (off, len) in &fragments {
            let mut h = vec![0u8; (*len).min(8) as usize];
            source.read_at(*off, &mut h).map_err(|e| format!("pixel data fragment: {e}"))?;
            heads.push(h);
        }
        let info_list: Vec<(u64, &[u8])> = fragments.iter().zip(&heads).map(|((_, len), h)| (*len, h.as_slice())).collect();
        let frames = codec::frame_fragments(&info_list, &offsets, info.frames, codec)?;
        Ok(Pixels::Fragments { fragments, frames, codec })
    }

    /// Reads the whole object (pixel data included) when the pixel data is compressed or not at
    /// the end of the file.
    fn load_pixels(source: &Source, info: &DicomInfo, layout: &Layout, codec: Codec) -> Result<Pixels> {
        let obj = source.parse(false)?;
        let pd = obj.element_opt(tags::PIXEL_DATA).ok().flatten().ok_or("no pixel data")?;
        match pd.value() {
            dicom_core::DicomValue::PixelSequence(_) => Err("encapsulated pixel data with an uncompressed transfer syntax".into()),
            v => {
                if !matches!(codec, Codec::NativeLittle | Codec::NativeBig) {
                    return Err(format!("{} pixel data is not encapsulated", info.transfer_syntax_name).into());
                }
                // dicom-rs decodes OW words to native values: serialise them little-endian.
                let bytes = match v.uint16_slice() {
                    Ok(w) if layout.bits_allocated != 8 || pd.vr() == dicom_core::VR::OW => {
                        w.iter().flat_map(|x| x.to_le_bytes()).collect()
                    }
                    _ => v.to_bytes().map_err(|e| format!("pixel data: {e}"))?.into_owned(),
                };
                Ok(Pixels::Memory(bytes))
            }
        }
    }

    fn describe(obj: &FileDicomObject<InMemDicomObject>) -> Result<(DicomInfo, Layout, Codec)> {
        let ts = obj.meta().transfer_syntax().trim_end_matches(['\0', ' ']).to_owned();
        let (ts_name, codec) = codec::transfer_syntax(&ts);
        let num = |t, what: &str| -> Result<usize> {
            let v = int(obj, t).ok_or_else(|| format!("no {what} in the header (is this an image?)"))?;
            usize::try_from(v).map_err(|_| DicomError(format!("{what} is {v}")))
        };
        let meta_class = obj.meta().media_storage_sop_class_uid().trim_end_matches(['\0', ' ']);
        let sop_class = text(obj, tags::SOP_CLASS_UID).or_else(|| (!meta_class.is_empty()).then(|| meta_class.to_owned()));
        let no_rows = obj.element_opt(tags::ROWS).ok().flatten().is_none();
        if let Some(kind) = sop_class.as_deref().and_then(non_image_class).filter(|_| no_rows) {
            return Err(DicomError {
                message: format!("not an image: a {kind} (SOP class {})", sop_class.as_deref().unwrap_or("")),
                not_image: true,
            });
        }
        if no_rows {
            return Err(DicomError { message: "not an image: no Rows, no pixel data".into(), not_image: true });
        }
        let rows = num(tags::ROWS, "Rows")?;
        let cols = num(tags::COLUMNS, "Columns")?;
        let samples = int(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1).max(0) as usize;
        let bits_allocated = num(tags::BITS_ALLOCATED, "BitsAllocated")?;
        let bits_stored = int(obj, tags::BITS_STORED).map_or(bits_allocated, |v| v.max(0) as usize);
        let frames = match text(obj, tags::NUMBER_OF_FRAMES) {
            Some(s) => s.trim().parse::<i64>().map_err(|_| format!("NumberOfFrames '{s}' is not a number"))?,
            None => 1,
        };
        if frames < 1 || frames as usize > MAX_FRAMES {
            return Err(format!("NumberOfFrames {frames} (expected 1..{MAX_FRAMES})").into());
        }
        let frames = frames as usize;
        let ph_text = text(obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_else(|| "MONOCHROME2".into());
        let photometric = match ph_text.as_str() {
            // FFmpeg decodes video streams to RGB whatever their chroma format (MPEG-2 and
            // H.264 are YBR_PARTIAL_420 in DICOM, MONOCHROME2 allowed for HEVC).
            _ if codec == Some(Codec::Video) => Photometric::Rgb,
            "MONOCHROME2" => Photometric::Monochrome2,
            "MONOCHROME1" => Photometric::Monochrome1,
            "RGB" => Photometric::Rgb,
            "YBR_FULL" => Photometric::YbrFull,
            "YBR_FULL_422" => Photometric::YbrFull422,
            // JPEG 2000 colour transforms are undone by the codec; the result is RGB.
            "YBR_RCT" | "YBR_ICT" if codec == Some(Codec::Jpeg2000) => Photometric::Rgb,
            // JPEG decoders convert YCbCr themselves.
            "YBR_PARTIAL_422" | "YBR_PARTIAL_420" if codec == Some(Codec::Jpeg) => Photometric::YbrFull,
            "PALETTE COLOR" => Photometric::Palette(Box::new(palette(obj, codec == Some(Codec::NativeBig))?)),
            other => return Err(format!("photometric interpretation '{other}' is not supported").into()),
        };
        let window = float(obj, tags::WINDOW_CENTER).zip(float(obj, tags::WINDOW_WIDTH));
        let video = codec == Some(Codec::Video);
        let layout = Layout {
            rows,
            cols,
            // Video frames come out of FFmpeg as 8-bit interleaved RGB.
            samples: if video { 3 } else { samples },
            bits_allocated: if video { 8 } else { bits_allocated },
            bits_stored: if video { 8 } else { bits_stored },
            signed: !video && int(obj, tags::PIXEL_REPRESENTATION) == Some(1),
            planar: !video && int(obj, tags::PLANAR_CONFIGURATION) == Some(1),
            photometric,
            window: window.filter(|_| !video),
        };
        layout.validate()?;
        let frame_bytes = layout.native_frame_bytes().unwrap_or(usize::MAX);
        if frame_bytes > MAX_FRAME_BYTES || rows.saturating_mul(cols).saturating_mul(3) > MAX_FRAME_BYTES {
            return Err(format!("a {cols}×{rows} frame is larger than the {} MiB limit", MAX_FRAME_BYTES >> 20).into());
        }
        let Some(codec) = codec else {
            return Err(format!("unsupported transfer syntax ({ts_name}, {ts})").into());
        };
        let fps = float(obj, tags::FRAME_TIME)
            .filter(|t| *t > 0.0)
            .map(|t| 1000.0 / t)
            .or_else(|| float(obj, tags::CINE_RATE).filter(|r| *r > 0.0))
            .or_else(|| float(obj, tags::RECOMMENDED_DISPLAY_FRAME_RATE).filter(|r| *r > 0.0));
        let info = DicomInfo {
            transfer_syntax: ts.clone(),
            transfer_syntax_name: ts_name.to_owned(),
            sop_class_uid: sop_class,
            frames,
            rows,
            cols,
            photometric: ph_text,
            samples,
            bits_allocated,
            bits_stored,
            planar: int(obj, tags::PLANAR_CONFIGURATION).unwrap_or(0).clamp(0, 1) as u16,
            fps,
            patient_id: text(obj, tags::PATIENT_ID).map(PatientId),
            study_uid: text(obj, tags::STUDY_INSTANCE_UID),
            series_uid: text(obj, tags::SERIES_INSTANCE_UID),
            sop_uid: text(obj, tags::SOP_INSTANCE_UID),
            study_date: dicom_date(text(obj, tags::STUDY_DATE)),
            study_time: text(obj, tags::STUDY_TIME),
            modality: text(obj, tags::MODALITY),
            manufacturer: text(obj, tags::MANUFACTURER),
            model: text(obj, tags::MANUFACTURER_MODEL_NAME),
            burned_in_annotation: text(obj, tags::BURNED_IN_ANNOTATION),
            regions: regions(obj),
        };
        Ok((info, layout, codec))
    }

    /// The header.
    pub fn info(&self) -> &DicomInfo {
        &self.info
    }

    /// Decodes frame `i` to RGB (before any crop or resize).
    pub fn frame(&self, i: usize) -> Result<Frame> {
        if i >= self.info.frames {
            return Err(format!("frame {i} requested, the file has {}", self.info.frames).into());
        }
        let l = &self.layout;
        let rgb = match &self.pixels {
            Pixels::Source { offset, swap, .. } => {
                let (start, bit_offset, len) = frame_span(l, i)?;
                let mut buf = vec![0u8; len];
                self.source.read_at(offset + start as u64, &mut buf).map_err(|e| format!("reading frame {i}: {e}"))?;
                if *swap > 1 {
                    buf.chunks_exact_mut(*swap).for_each(<[u8]>::reverse);
                }
                l.native_to_rgb(&buf, bit_offset)
            }
            Pixels::Memory(data) => {
                let (start, bit_offset, len) = frame_span(l, i)?;
                let bytes = data.get(start..start + len).ok_or_else(|| format!("frame {i} lies past the end of the pixel data"))?;
                l.native_to_rgb(bytes, bit_offset)
            }
            Pixels::Fragments { fragments, frames, codec } => {
                let range = frames.get(i).ok_or_else(|| format!("frame {i} has no fragments"))?;
                let mut data = Vec::new();
                for &(off, len) in &fragments[range.clone()] {
                    let at = data.len();
                    data.resize(at + len as usize, 0);
                    self.source.read_at(off, &mut data[at..]).map_err(|e| format!("reading frame {i}: {e}"))?;
                }
                let data = data.as_slice();
                match codec {
                    Codec::Jpeg => match codec::decode_jpeg(data, l) {
                        // jpeg-decoder reads 8-bit lossy and any lossless JPEG; 12-bit lossy
                        // goes to FFmpeg.
                        Err(_) if video::jpeg_precision(data) == Some(12) => video::decode_jpeg12(data, l),
                        r => r,
                    }
                    .map(codec::Decoded::into_rgb),
                    Codec::Jpeg2000 => codec::decode_jpeg2000(data, l).map(codec::Decoded::into_rgb),
                    Codec::JpegLs => video::decode_jpegls(data, l).map(codec::Decoded::into_rgb),
                    Codec::Rle => pixels::rle_decode(data, l).and_then(|b| {
                        let mut inter = l.clone();
                        inter.planar = false;
                        inter.native_to_rgb(&b, 0)
                    }),
                    Codec::NativeLittle | Codec::NativeBig | Codec::Video => Err("not a compressed frame".into()),
                }
            }
            Pixels::Video(v) => v.frame(&self.source, i, self.info.frames, l.rows, l.cols),
        }
        .map_err(|e| DicomError(format!("frame {i}: {e}")))?;
        Frame::new(l.cols, l.rows, rgb).ok_or_else(|| DicomError(format!("frame {i}: decoded to the wrong size")))
    }
}

/// Bytes of native pixel data `frames` frames need.
fn native_bytes(l: &Layout, frames: usize) -> Result<u64> {
    if l.bits_allocated == 1 {
        let bits = (l.rows * l.cols * l.samples) as u64 * frames as u64;
        return Ok(bits.div_ceil(8));
    }
    let per = l.native_frame_bytes().ok_or("frame size overflows")? as u64;
    per.checked_mul(frames as u64).ok_or_else(|| DicomError("pixel data size overflows".into()))
}

/// (byte start, bit offset, byte length) of native frame `i`.
fn frame_span(l: &Layout, i: usize) -> std::result::Result<(usize, usize, usize), String> {
    if l.bits_allocated == 1 {
        let bits = l.rows * l.cols * l.samples;
        let start_bit = i * bits;
        let start = start_bit / 8;
        let end = (start_bit + bits).div_ceil(8);
        return Ok((start, start_bit % 8, end - start));
    }
    let per = l.native_frame_bytes().ok_or("frame size overflows")?;
    Ok((i * per, 0, per))
}

/// Finds the native pixel data value at the end of the file: checks that the element header
/// (`7FE0,0010` with a length) sits right before a value that ends the file, optionally padded
/// to even length. Returns (offset, length, VR is OW) or `None` when the pixel data is
/// not the last element (the caller then reads the whole object).
fn locate_native(source: &Source, size: u64, need: u64, big: bool) -> Option<(u64, u64, bool)> {
    for value_len in [need + (need & 1), need] {
        for header in [12u64, 8] {
            let Some(start) = size.checked_sub(value_len + header) else { continue };
            let mut h = [0u8; 12];
            if source.read_at(start, &mut h[..header as usize]).is_err() {
                continue;
            }
            let tag_le = h[..4] == [0xe0, 0x7f, 0x10, 0x00];
            let tag_be = h[..4] == [0x7f, 0xe0, 0x00, 0x10];
            let (ok, len) = if header == 12 {
                let vr_ok = &h[4..6] == b"OB" || &h[4..6] == b"OW";
                let len = if big { u32::from_be_bytes([h[8], h[9], h[10], h[11]]) } else { u32::from_le_bytes([h[8], h[9], h[10], h[11]]) };
                (vr_ok && h[6..8] == [0, 0] && ((tag_le && !big) || (tag_be && big)), len)
            } else {
                (tag_le && !big, u32::from_le_bytes([h[4], h[5], h[6], h[7]]))
            };
            if ok && u64::from(len) == value_len {
                return Some((start + header, value_len, header == 12 && &h[4..6] == b"OW"));
            }
        }
    }
    None
}
