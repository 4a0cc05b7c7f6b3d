//! Compressed frames: which fragments make up frame `i` (basic and extended offset tables, one
//! fragment per frame, or codestream markers when the table is empty), and decoding JPEG
//! (baseline, extended, lossless), JPEG 2000 and RLE frames into native little-endian samples.

use super::pixels::{Layout, Photometric};

/// Transfer syntaxes by family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Uncompressed little endian (implicit or explicit VR, also deflated).
    NativeLittle,
    /// Uncompressed explicit VR big endian.
    NativeBig,
    /// JPEG baseline, extended or lossless (ISO 10918-1).
    Jpeg,
    /// JPEG 2000 (lossless or lossy, also HTJ2K part 1 codestreams).
    Jpeg2000,
    /// RLE Lossless.
    Rle,
    /// JPEG-LS, lossless or near-lossless (ISO 14495-1), decoded through FFmpeg.
    JpegLs,
    /// MPEG-2, MPEG-4 AVC/H.264 or HEVC/H.265 video streams.
    Video,
}

/// Name and family of a transfer syntax UID (`None`: one echovault cannot decode).
pub fn transfer_syntax(uid: &str) -> (&'static str, Option<Codec>) {
    use Codec::*;
    match uid {
        "1.2.840.10008.1.2" => ("Implicit VR Little Endian", Some(NativeLittle)),
        "1.2.840.10008.1.2.1" => ("Explicit VR Little Endian", Some(NativeLittle)),
        "1.2.840.10008.1.2.1.99" => ("Deflated Explicit VR Little Endian", Some(NativeLittle)),
        "1.2.840.10008.1.2.2" => ("Explicit VR Big Endian", Some(NativeBig)),
        "1.2.840.10008.1.2.4.50" => ("JPEG Baseline (Process 1)", Some(Jpeg)),
        "1.2.840.10008.1.2.4.51" => ("JPEG Extended (Process 2 & 4)", Some(Jpeg)),
        "1.2.840.10008.1.2.4.57" => ("JPEG Lossless, Non-Hierarchical (Process 14)", Some(Jpeg)),
        "1.2.840.10008.1.2.4.70" => ("JPEG Lossless, Non-Hierarchical, First-Order Prediction", Some(Jpeg)),
        "1.2.840.10008.1.2.4.80" => ("JPEG-LS Lossless", Some(JpegLs)),
        "1.2.840.10008.1.2.4.81" => ("JPEG-LS Lossy (Near-Lossless)", Some(JpegLs)),
        "1.2.840.10008.1.2.4.90" => ("JPEG 2000 Image Compression (Lossless Only)", Some(Jpeg2000)),
        "1.2.840.10008.1.2.4.91" => ("JPEG 2000 Image Compression", Some(Jpeg2000)),
        "1.2.840.10008.1.2.4.201" => ("High-Throughput JPEG 2000 (Lossless Only)", None),
        "1.2.840.10008.1.2.4.202" => ("High-Throughput JPEG 2000 with RPCL (Lossless Only)", None),
        "1.2.840.10008.1.2.4.203" => ("High-Throughput JPEG 2000", None),
        "1.2.840.10008.1.2.5" => ("RLE Lossless", Some(Rle)),
        "1.2.840.10008.1.2.4.100" | "1.2.840.10008.1.2.4.100.1" => ("MPEG2 Main Profile @ Main Level", Some(Video)),
        "1.2.840.10008.1.2.4.101" | "1.2.840.10008.1.2.4.101.1" => ("MPEG2 Main Profile @ High Level", Some(Video)),
        "1.2.840.10008.1.2.4.102" | "1.2.840.10008.1.2.4.102.1" => ("MPEG-4 AVC/H.264 High Profile / Level 4.1", Some(Video)),
        "1.2.840.10008.1.2.4.103" | "1.2.840.10008.1.2.4.103.1" => ("MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1", Some(Video)),
        "1.2.840.10008.1.2.4.104" | "1.2.840.10008.1.2.4.104.1" => ("MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video", Some(Video)),
        "1.2.840.10008.1.2.4.105" | "1.2.840.10008.1.2.4.105.1" => ("MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video", Some(Video)),
        "1.2.840.10008.1.2.4.106" | "1.2.840.10008.1.2.4.106.1" => ("MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2", Some(Video)),
        "1.2.840.10008.1.2.4.107" => ("HEVC/H.265 Main Profile / Level 5.1", Some(Video)),
        "1.2.840.10008.1.2.4.108" => ("HEVC/H.265 Main 10 Profile / Level 5.1", Some(Video)),
        _ => ("unknown", None),
    }
}

/// Where each frame's bytes lie among the fragments: `frames[i]` = fragment index range.
/// `fragments` holds each fragment's length and its first bytes (8 are enough).
#[allow(clippy::single_range_in_vec_init)] // one frame owning every fragment is one range
pub fn frame_fragments(
    fragments: &[(u64, &[u8])],
    offsets: &[u64],
    frames: usize,
    codec: Codec,
) -> Result<Vec<std::ops::Range<usize>>, String> {
    if fragments.is_empty() {
        return Err("the pixel data holds no fragments".into());
    }
    if frames == 1 {
        return Ok(vec![0..fragments.len()]);
    }
    if fragments.len() == frames {
        return Ok((0..frames).map(|i| i..i + 1).collect());
    }
    if !offsets.is_empty() {
        if offsets.len() != frames {
            return Err(format!("the offset table lists {} frames, NumberOfFrames is {frames}", offsets.len()));
        }
        // Offsets count bytes from the first fragment's item tag; each fragment adds 8 header bytes.
        let mut starts = Vec::with_capacity(fragments.len());
        let mut pos = 0u64;
        for (len, _) in fragments {
            starts.push(pos);
            pos += 8 + len;
        }
        let mut out = Vec::with_capacity(frames);
        for (i, &o) in offsets.iter().enumerate() {
            let first =
                starts.iter().position(|&s| s == o).ok_or_else(|| format!("offset table entry {i} ({o}) does not start a fragment"))?;
            let end = match offsets.get(i + 1) {
                Some(&next) => starts
                    .iter()
                    .position(|&s| s == next)
                    .ok_or_else(|| format!("offset table entry {} ({next}) does not start a fragment", i + 1))?,
                None => fragments.len(),
            };
            if end <= first {
                return Err(format!("offset table entries {i} and {} are not increasing", i + 1));
            }
            out.push(first..end);
        }
        return Ok(out);
    }
    // No table and more fragments than frames: a frame starts where a codestream starts.
    let starts_frame = |f: &[u8]| match codec {
        Codec::Jpeg | Codec::JpegLs => f.starts_with(&[0xff, 0xd8]),
        Codec::Jpeg2000 => f.starts_with(&[0xff, 0x4f, 0xff, 0x51]) || f.get(4..8) == Some(b"jP  "),
        _ => false,
    };
    let mut out: Vec<std::ops::Range<usize>> = Vec::with_capacity(frames);
    for (i, (_, head)) in fragments.iter().enumerate() {
        if i == 0 || starts_frame(head) {
            out.push(i..i + 1);
        } else if let Some(last) = out.last_mut() {
            last.end = i + 1;
        }
    }
    if out.len() != frames {
        return Err(format!(
            "found {} codestreams in {} fragments without an offset table, NumberOfFrames is {frames}",
            out.len(),
            fragments.len()
        ));
    }
    Ok(out)
}

/// The most bytes a decoder may allocate for one frame.
pub const MAX_FRAME_BYTES: usize = 512 << 20;

/// A decoded compressed frame: samples already interleaved, with the photometric
/// interpretation they are in now (JPEG decoders return RGB for YCbCr streams).
#[derive(Debug)]
pub struct Decoded {
    /// Interleaved samples.
    pub samples: Vec<i64>,
    /// Layout of `samples` (photometric possibly changed to RGB).
    pub layout: Layout,
    /// The frame already as 8-bit RGB (lossy colour JPEG: the decoder's output as is); then
    /// `samples` is empty.
    pub rgb: Option<Vec<u8>>,
}

impl Decoded {
    /// The frame as 8-bit RGB.
    pub fn into_rgb(self) -> Vec<u8> {
        match self.rgb {
            Some(rgb) => rgb,
            None => self.layout.samples_to_rgb(&self.samples),
        }
    }
}

/// Decodes one JPEG frame.
pub fn decode_jpeg(data: &[u8], layout: &Layout) -> Result<Decoded, String> {
    let mut dec = jpeg_decoder::Decoder::new(data);
    dec.set_max_decoding_buffer_size(MAX_FRAME_BYTES);
    dec.read_info().map_err(|e| format!("JPEG header: {e}"))?;
    let info = dec.info().ok_or("JPEG header: no frame header")?;
    if usize::from(info.width) != layout.cols || usize::from(info.height) != layout.rows {
        return Err(format!("JPEG frame is {}×{}, the header says {}×{}", info.width, info.height, layout.cols, layout.rows));
    }
    // The stream's components are what they are; DICOM's RGB label means "do not convert".
    if layout.photometric == Photometric::Rgb {
        dec.set_color_transform(jpeg_decoder::ColorTransform::RGB);
    }
    let pixels = dec.decode().map_err(|e| format!("JPEG: {e}"))?;
    let lossless = info.coding_process == jpeg_decoder::CodingProcess::Lossless;
    let n = layout.rows * layout.cols;
    let mut out = layout.clone();
    out.planar = false;
    // jpeg-decoder returns samples above 8 bits as native-endian u16, also for three
    // components (lossless only, where it skips any colour transform).
    let wide = |p: &[u8]| -> Vec<i64> { p.chunks_exact(2).map(|c| i64::from(u16::from_ne_bytes([c[0], c[1]]))).collect() };
    let narrow = |p: &[u8]| -> Vec<i64> { p.iter().map(|&b| i64::from(b)).collect() };
    if info.pixel_format == jpeg_decoder::PixelFormat::RGB24 && !lossless && pixels.len() == n * 3 {
        if layout.samples != 3 {
            return Err("JPEG stream has three components, the header says one".into());
        }
        out.samples = 3;
        out.photometric = Photometric::Rgb;
        return Ok(Decoded { samples: Vec::new(), layout: out, rgb: Some(pixels) });
    }
    let samples: Vec<i64> = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => {
            out.samples = 1;
            narrow(&pixels)
        }
        jpeg_decoder::PixelFormat::L16 => {
            out.samples = 1;
            wide(&pixels)
        }
        jpeg_decoder::PixelFormat::RGB24 => {
            out.samples = 3;
            if !lossless {
                // Lossy decoding converted YCbCr to RGB (or was told the stream is RGB).
                out.photometric = Photometric::Rgb;
                out.bits_stored = out.bits_stored.min(8);
            }
            if pixels.len() == n * 6 {
                wide(&pixels)
            } else {
                narrow(&pixels)
            }
        }
        f => return Err(format!("JPEG pixel format {f:?} is not supported")),
    };
    if samples.len() != n * out.samples {
        return Err(format!("JPEG decoded to {} samples, {} expected", samples.len(), n * out.samples));
    }
    if out.samples == 1 && matches!(layout.photometric, Photometric::Rgb | Photometric::YbrFull | Photometric::YbrFull422) {
        return Err("JPEG stream has one component, the header says colour".into());
    }
    if out.samples == 3 && layout.samples != 3 {
        return Err("JPEG stream has three components, the header says one".into());
    }
    out.signed = layout.signed && out.samples == 1;
    if out.signed {
        // Lossless JPEG keeps two's-complement bit patterns: sign-extend.
        let bits = out.bits_stored;
        let samples = samples.into_iter().map(|v| if (v >> (bits - 1)) & 1 == 1 { v - (1 << bits) } else { v }).collect();
        return Ok(Decoded { samples, layout: out, rgb: None });
    }
    Ok(Decoded { samples, layout: out, rgb: None })
}

/// Decodes one JPEG 2000 frame (the codec undoes the multi-component transform).
pub fn decode_jpeg2000(data: &[u8], layout: &Layout) -> Result<Decoded, String> {
    // Check the codestream's size before the codec allocates anything for it.
    let (w, h, c) = j2k_size(data).ok_or("JPEG 2000: no SIZ marker segment")?;
    if w != layout.cols || h != layout.rows {
        return Err(format!("JPEG 2000 frame is {w}×{h}, the header says {}×{}", layout.cols, layout.rows));
    }
    if c == 0 || c > 4 {
        return Err(format!("JPEG 2000 stream has {c} components"));
    }
    let image = jpeg2k::Image::from_bytes(data).map_err(|e| format!("JPEG 2000: {e}"))?;
    let comps = image.components();
    if comps.is_empty() {
        return Err("JPEG 2000 stream has no components".into());
    }
    let (w, h) = (comps[0].width() as usize, comps[0].height() as usize);
    if w != layout.cols || h != layout.rows {
        return Err(format!("JPEG 2000 frame is {w}×{h}, the header says {}×{}", layout.cols, layout.rows));
    }
    let mut out = layout.clone();
    out.planar = false;
    let n = w * h;
    let samples: Vec<i64> = match comps.len() {
        1 => {
            out.samples = 1;
            comps[0].data().iter().take(n).map(|&v| i64::from(v)).collect()
        }
        c if c >= 3 => {
            out.samples = 3;
            if !matches!(layout.photometric, Photometric::Rgb | Photometric::YbrFull) {
                out.photometric = Photometric::Rgb;
            }
            let mut s = Vec::with_capacity(n * 3);
            let planes: Vec<&[i32]> = comps[..3].iter().map(|c| c.data()).collect();
            if planes.iter().any(|p| p.len() < n) {
                return Err("JPEG 2000 components are smaller than the image (subsampled components are not supported)".into());
            }
            if out.photometric == Photometric::Rgb && out.bits_stored <= 8 && !out.signed {
                // 8-bit colour: interleave straight into RGB bytes.
                let mut rgb = Vec::with_capacity(n * 3);
                for ((r, g), b) in planes[0][..n].iter().zip(&planes[1][..n]).zip(&planes[2][..n]) {
                    rgb.extend([*r, *g, *b].map(|v| v.clamp(0, 255) as u8));
                }
                return Ok(Decoded { samples: Vec::new(), layout: out, rgb: Some(rgb) });
            }
            for i in 0..n {
                for p in &planes {
                    s.push(i64::from(p[i]));
                }
            }
            s
        }
        c => return Err(format!("JPEG 2000 stream has {c} components")),
    };
    if samples.len() != n * out.samples {
        return Err("JPEG 2000 component sizes disagree".into());
    }
    // The header's BitsStored and PixelRepresentation describe the samples (as pydicom reads
    // them); a codestream that disagrees keeps its values, which the header's range then maps.
    Ok(Decoded { samples, layout: out, rgb: None })
}

/// (width, height, components) from a JPEG 2000 codestream's SIZ segment (JP2 boxes skipped by
/// looking for the SOC + SIZ markers).
pub fn j2k_size(data: &[u8]) -> Option<(usize, usize, usize)> {
    let at = data.windows(4).take(4096).position(|w| w == [0xff, 0x4f, 0xff, 0x51])?;
    let siz = data.get(at + 4..at + 4 + 38)?;
    let be32 = |o: usize| u32::from_be_bytes([siz[o], siz[o + 1], siz[o + 2], siz[o + 3]]) as usize;
    // Lsiz(2) Rsiz(2) Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz Csiz(2)
    let (x, y, xo, yo) = (be32(4), be32(8), be32(12), be32(16));
    let c = u16::from_be_bytes([siz[36], siz[37]]) as usize;
    Some((x.checked_sub(xo)?, y.checked_sub(yo)?, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn fragments_map_to_frames_by_table_by_count_and_by_markers() {
        let jpeg = |n: u8| vec![0xff, 0xd8, n, n];
        let tail = |n: u8| vec![n; 6];
        let ff = |f: &[Vec<u8>], offsets: &[u64], frames: usize| {
            let info: Vec<(u64, &[u8])> = f.iter().map(|v| (v.len() as u64, v.as_slice())).collect();
            frame_fragments(&info, offsets, frames, Codec::Jpeg)
        };
        // One fragment per frame.
        let f = vec![jpeg(1), jpeg(2)];
        assert_eq!(ff(&f, &[], 2).unwrap(), vec![0..1, 1..2]);
        // Two fragments per frame, empty table: split at SOI markers.
        let f = vec![jpeg(1), tail(1), jpeg(2), tail(2), jpeg(3), tail(3)];
        assert_eq!(ff(&f, &[], 3).unwrap(), vec![0..2, 2..4, 4..6]);
        // The same with a basic offset table (4+8 + 6+8 = 26 bytes per frame).
        assert_eq!(ff(&f, &[0, 26, 52], 3).unwrap(), vec![0..2, 2..4, 4..6]);
        assert!(ff(&f, &[0, 25, 52], 3).is_err());
        assert!(ff(&f, &[0, 26], 3).is_err());
        assert!(ff(&f, &[], 4).is_err());
        assert!(ff(&[], &[], 1).is_err());
        // A single frame owns every fragment.
        assert_eq!(ff(&f, &[], 1).unwrap(), vec![0..6]);
    }

    #[test]
    fn transfer_syntax_names() {
        assert_eq!(transfer_syntax("1.2.840.10008.1.2.4.50"), ("JPEG Baseline (Process 1)", Some(Codec::Jpeg)));
        assert_eq!(transfer_syntax("1.2.840.10008.1.2.4.80").1, Some(Codec::JpegLs));
        assert_eq!(transfer_syntax("1.2.840.10008.1.2.4.201").1, None);
        assert_eq!(transfer_syntax("1.2.3").0, "unknown");
    }
}
