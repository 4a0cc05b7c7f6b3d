//! DICOM codecs decoded through FFmpeg (video-rs and its `ffmpeg` re-export): JPEG-LS and
//! 12-bit lossy JPEG frames, and encapsulated video pixel data (MPEG-2, MPEG-4 AVC/H.264,
//! HEVC/H.265: transfer syntaxes 1.2.840.10008.1.2.4.100–.108 and their fragmentable `.1`
//! variants) decoded with video-rs, the decoder of AVI and MP4 files.
//!
//! The fragments, concatenated, are the video bit stream (PS3.5 §8.2.5–8.2.8: one stream for the
//! whole cine, frames do not map to fragments, the basic offset table is empty). The stream is
//! copied into an anonymous in-memory file (`memfd_create`: never on disk, gone with the process)
//! that FFmpeg opens as `/proc/self/fd/N`, so its format is found by content — an elementary
//! stream (what the standard describes and what scanners write), or an MPEG-2 program or
//! transport stream or MP4 that some writers wrap it in, seekable as FFmpeg needs for MP4.
//! Frames are decoded forward from the last one asked for; asking for an earlier frame starts
//! again from the stream's first frame.

use super::codec::Decoded;
use super::pixels::Layout;
use super::Source;
use std::sync::Mutex;

/// Decodes one JPEG-LS frame (lossless or near-lossless) with FFmpeg's decoder, to the
/// samples it holds (8 or 16 bits, grey or RGB).
pub(super) fn decode_jpegls(data: &[u8], layout: &Layout) -> Result<Decoded, String> {
    let (components, near, ilv) = jpegls_scan(data).ok_or("JPEG-LS: no start-of-scan header")?;
    // FFmpeg 5.1 decodes a sample-interleaved near-lossless colour stream to black without an
    // error (pydicom's SC_rgb_jls_lossy_sample.dcm); only what was checked against pydicom is
    // decoded: one component, or three interleaved by line.
    if components > 1 && ilv != 1 {
        let how = if ilv == 2 { "by sample" } else { "not interleaved" };
        return Err(format!(
            "JPEG-LS colour {how} (NEAR {near}) is not decoded: FFmpeg's decoder, checked against pydicom, is only right for grey or line-interleaved colour"
        ));
    }
    imp::decode_still(Still::JpegLs, data, layout)
}

/// Decodes one 12-bit lossy JPEG frame (ISO 10918-1 extended, which jpeg-decoder does not
/// read) with FFmpeg's JPEG decoder, to its 12-bit samples.
pub(super) fn decode_jpeg12(data: &[u8], layout: &Layout) -> Result<Decoded, String> {
    imp::decode_still(Still::Jpeg12, data, layout)
}

/// Still-image codecs decoded through FFmpeg.
#[derive(Clone, Copy, Debug)]
enum Still {
    JpegLs,
    Jpeg12,
}

impl Still {
    fn name(self) -> &'static str {
        match self {
            Still::JpegLs => "JPEG-LS",
            Still::Jpeg12 => "12-bit JPEG",
        }
    }
}

/// The sample precision of a JPEG codestream's frame header (SOFn), if found.
pub(super) fn jpeg_precision(data: &[u8]) -> Option<u8> {
    let mut at = 2;
    while at + 4 < data.len() {
        if data[at] != 0xff {
            return None;
        }
        let marker = data[at + 1];
        if marker == 0xff {
            at += 1;
            continue;
        }
        if matches!(marker, 0xc0..=0xc3 | 0xc5..=0xc7 | 0xc9..=0xcb | 0xcd..=0xcf) {
            return data.get(at + 4).copied();
        }
        if marker == 0xda {
            return None;
        }
        at += 2 + usize::from(u16::from_be_bytes([data[at + 2], data[at + 3]]));
    }
    None
}

/// (components in the first scan, NEAR, ILV) from a JPEG-LS codestream's first SOS segment.
fn jpegls_scan(data: &[u8]) -> Option<(usize, u8, u8)> {
    let mut at = 2; // after SOI
    while at + 4 <= data.len() {
        if data[at] != 0xff {
            return None;
        }
        let marker = data[at + 1];
        if marker == 0xff {
            at += 1; // fill byte
            continue;
        }
        let len = usize::from(u16::from_be_bytes([data[at + 2], data[at + 3]]));
        if marker == 0xda {
            let seg = data.get(at + 4..at + 2 + len)?;
            let ns = usize::from(*seg.first()?);
            let near = *seg.get(1 + 2 * ns)?;
            let ilv = *seg.get(2 + 2 * ns)?;
            return Some((ns, near, ilv));
        }
        at += 2 + len;
    }
    None
}

/// The encapsulated stream of one cine and, once a frame was asked for, where decoding stands.
pub(super) struct VideoFrames {
    /// (offset in the source, length) of every fragment, in order.
    fragments: Vec<(u64, u64)>,
    cursor: Mutex<Option<imp::Cursor>>,
}

impl VideoFrames {
    pub(super) fn new(fragments: Vec<(u64, u64)>) -> Self {
        VideoFrames { fragments, cursor: Mutex::new(None) }
    }

    /// Bytes of the stream.
    pub(super) fn len(&self) -> u64 {
        self.fragments.iter().map(|(_, l)| l).sum()
    }

    /// Frame `i` (of `frames`, NumberOfFrames) as 8-bit RGB of `cols × rows`.
    pub(super) fn frame(&self, source: &Source, i: usize, frames: usize, rows: usize, cols: usize) -> Result<Vec<u8>, String> {
        let mut cursor = self.cursor.lock().unwrap_or_else(|poisoned| {
            // A panic while decoding left the decoder in an unknown state: start again.
            let mut c = poisoned.into_inner();
            *c = None;
            c
        });
        imp::frame(&mut cursor, source, &self.fragments, i, frames, rows, cols)
    }
}

#[cfg(not(feature = "video"))]
mod imp {
    use super::Source;

    /// Never made: without FFmpeg there is no decoder.
    pub(super) enum Cursor {}

    pub(super) fn decode_still(what: super::Still, _: &[u8], _: &super::Layout) -> Result<super::Decoded, String> {
        Err(format!("{} is decoded through FFmpeg, and this build has no video support (feature `video`)", what.name()))
    }

    pub(super) fn frame(
        _: &mut Option<Cursor>,
        _: &Source,
        _: &[(u64, u64)],
        _: usize,
        _: usize,
        _: usize,
        _: usize,
    ) -> Result<Vec<u8>, String> {
        Err("encapsulated video is decoded through FFmpeg, and this build has no video support (feature `video`)".into())
    }
}

#[cfg(feature = "video")]
mod imp {
    use super::Source;
    use std::fs::File;
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::path::PathBuf;

    use super::{Decoded, Layout, Still};

    /// One still codestream through FFmpeg's decoder, read back as samples (no colour or
    /// bit-depth conversion: the layout's own rules map them to RGB, as for other codecs).
    pub(super) fn decode_still(what: Still, data: &[u8], layout: &Layout) -> Result<Decoded, String> {
        use ff::format::Pixel;
        use video_rs::ffmpeg as ff;
        init();
        let name = what.name();
        let id = match what {
            Still::JpegLs => ff::codec::Id::JPEGLS,
            Still::Jpeg12 => ff::codec::Id::MJPEG,
        };
        let codec = ff::codec::decoder::find(id).ok_or_else(|| format!("this FFmpeg has no {name} decoder"))?;
        let mut dec = ff::codec::Context::new_with_codec(codec).decoder().video().map_err(|e| format!("{name} decoder: {e}"))?;
        dec.send_packet(&ff::Packet::copy(data)).map_err(|e| format!("{name}: {e}"))?;
        dec.send_eof().map_err(|e| format!("{name}: {e}"))?;
        let mut f = ff::frame::Video::empty();
        dec.receive_frame(&mut f).map_err(|e| format!("{name}: {e}"))?;
        let (w, h) = (f.width() as usize, f.height() as usize);
        if (w, h) != (layout.cols, layout.rows) {
            return Err(format!("{name} frame is {w}×{h}, the header says {}×{}", layout.cols, layout.rows));
        }
        let (channels, bytes) = match f.format() {
            Pixel::GRAY8 => (1, 1),
            Pixel::GRAY16LE => (1, 2),
            Pixel::RGB24 => (3, 1),
            Pixel::GRAY12LE => (1, 2),
            other => return Err(format!("{name} decoded to pixel format {other:?}, which echovault does not read")),
        };
        if channels != layout.samples {
            return Err(format!("{name} stream has {channels} components, the header says {}", layout.samples));
        }
        let (stride, plane) = (f.stride(0), f.data(0));
        let mut samples = Vec::with_capacity(w * h * channels);
        for y in 0..h {
            let row =
                plane.get(y * stride..y * stride + w * channels * bytes).ok_or_else(|| format!("{name} frame smaller than its size"))?;
            if bytes == 1 {
                samples.extend(row.iter().map(|&b| i64::from(b)));
            } else {
                samples.extend(row.chunks_exact(2).map(|c| i64::from(u16::from_le_bytes([c[0], c[1]]))));
            }
        }
        if matches!(what, Still::Jpeg12) && f.format() == Pixel::GRAY16LE {
            // FFmpeg's JPEG decoder returns 12-bit samples in the high bits of 16.
            samples.iter_mut().for_each(|v| *v >>= 4);
        }
        let mut out = layout.clone();
        out.planar = false;
        if out.signed && channels == 1 {
            // Lossless codecs keep two's-complement bit patterns: sign-extend.
            let bits = out.bits_stored;
            samples.iter_mut().for_each(|v| {
                if (*v >> (bits - 1)) & 1 == 1 {
                    *v -= 1 << bits;
                }
            });
        }
        Ok(Decoded { samples, layout: out, rgb: None })
    }

    /// A decoder over the stream, positioned before frame `next`.
    pub(super) struct Cursor {
        /// The in-memory copy of the stream (kept open: FFmpeg reads it by its /proc path).
        file: File,
        decoder: video_rs::Decoder,
        next: usize,
    }

    fn init() {
        static INIT: std::sync::Once = std::sync::Once::new();
        INIT.call_once(|| {
            // Only fails when FFmpeg itself cannot initialise; opening then reports the error.
            let _ = video_rs::init();
        });
    }

    /// An anonymous in-memory file (a temporary file, unlinked at once, where memfd is missing).
    #[allow(unsafe_code)]
    fn anonymous_file() -> Result<File, String> {
        // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new file
        // descriptor that nothing else owns (or -1), which OwnedFd then owns and closes.
        let fd = unsafe { libc::memfd_create(c"echovault-dicom-video".as_ptr(), libc::MFD_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: `fd` is a valid descriptor owned by no one else (see above).
            return Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        tempfile::tempfile().map_err(|e| format!("cannot create a temporary file for the video stream: {e}"))
    }

    fn open(file: &File) -> Result<video_rs::Decoder, String> {
        init();
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        video_rs::Decoder::new(path).map_err(|e| format!("the encapsulated video stream cannot be opened by FFmpeg: {e}"))
    }

    /// Copies the fragments into a new anonymous file.
    fn copy_stream(source: &Source, fragments: &[(u64, u64)]) -> Result<File, String> {
        let mut file = anonymous_file()?;
        let mut buf = Vec::new();
        for (n, &(off, len)) in fragments.iter().enumerate() {
            let mut at = 0u64;
            while at < len {
                let chunk = (len - at).min(1 << 20) as usize;
                buf.resize(chunk, 0);
                source.read_at(off + at, &mut buf).map_err(|e| format!("reading video fragment {n}: {e}"))?;
                file.write_all(&buf).map_err(|e| format!("copying the video stream: {e}"))?;
                at += chunk as u64;
            }
        }
        file.flush().map_err(|e| format!("copying the video stream: {e}"))?;
        Ok(file)
    }

    pub(super) fn frame(
        cursor: &mut Option<Cursor>,
        source: &Source,
        fragments: &[(u64, u64)],
        i: usize,
        frames: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<u8>, String> {
        if cursor.as_ref().is_some_and(|c| c.next > i) {
            // Backwards: a new decoder over the same copy.
            let c = cursor.take().ok_or("no decoder")?;
            let decoder = open(&c.file)?;
            *cursor = Some(Cursor { file: c.file, decoder, next: 0 });
        }
        let c = match cursor {
            Some(c) => c,
            None => {
                let file = copy_stream(source, fragments)?;
                let decoder = open(&file)?;
                let (w, h) = decoder.size();
                if (w as usize, h as usize) != (cols, rows) {
                    return Err(format!("the video stream's frames are {w}×{h}, the header says {cols}×{rows}"));
                }
                cursor.insert(Cursor { file, decoder, next: 0 })
            }
        };
        loop {
            let at = c.next;
            match c.decoder.decode() {
                Ok((_, frame)) => {
                    c.next += 1;
                    if at < i {
                        continue;
                    }
                    let shape = frame.shape().to_vec();
                    if shape != [rows, cols, 3] {
                        return Err(format!("video frame {at} decoded to {shape:?}, the header says {cols}×{rows} RGB"));
                    }
                    return Ok(frame.as_slice().map(<[u8]>::to_vec).unwrap_or_else(|| frame.iter().copied().collect()));
                }
                Err(video_rs::Error::ReadExhausted | video_rs::Error::DecodeExhausted) => {
                    *cursor = None;
                    return Err(format!("the video stream ends after {at} frames, NumberOfFrames is {frames} (a stream cut short?)"));
                }
                Err(e) => {
                    *cursor = None;
                    return Err(format!("decoding video frame {at} failed: {e}"));
                }
            }
        }
    }
}
