//! From one frame's samples to 8-bit RGB: bit depths, planar configuration, signedness,
//! MONOCHROME1/2, PALETTE COLOR, YBR_FULL and YBR_FULL_422. Pure functions over byte slices, so
//! that every path is unit-tested and fuzzed without a file.

/// How the samples of one frame are laid out and what they mean.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// Rows (height).
    pub rows: usize,
    /// Columns (width).
    pub cols: usize,
    /// Samples per pixel: 1 or 3.
    pub samples: usize,
    /// Bits allocated per sample: 1, 8, 16 or 32.
    pub bits_allocated: usize,
    /// Bits stored per sample (≤ bits allocated).
    pub bits_stored: usize,
    /// Signed samples (PixelRepresentation 1).
    pub signed: bool,
    /// Planar configuration 1: all R, then all G, then all B.
    pub planar: bool,
    /// The colour model.
    pub photometric: Photometric,
    /// A VOI window (centre, width) applied to monochrome samples deeper than 8 bits.
    pub window: Option<(f64, f64)>,
}

/// Photometric interpretations echovault decodes.
#[derive(Clone, Debug, PartialEq)]
pub enum Photometric {
    /// Grey, 0 = black.
    Monochrome2,
    /// Grey, 0 = white.
    Monochrome1,
    /// RGB.
    Rgb,
    /// Full-range YCbCr, one Cb/Cr per pixel.
    YbrFull,
    /// Full-range YCbCr, Cb/Cr shared by each horizontal pair (native: `Y Y Cb Cr`).
    YbrFull422,
    /// Indices into a colour lookup table.
    Palette(Box<Palette>),
}

impl Photometric {
    /// The DICOM name.
    pub fn name(&self) -> &'static str {
        match self {
            Photometric::Monochrome2 => "MONOCHROME2",
            Photometric::Monochrome1 => "MONOCHROME1",
            Photometric::Rgb => "RGB",
            Photometric::YbrFull => "YBR_FULL",
            Photometric::YbrFull422 => "YBR_FULL_422",
            Photometric::Palette(_) => "PALETTE COLOR",
        }
    }
}

/// A PALETTE COLOR lookup table (red, green and blue of equal length).
#[derive(Clone, Debug, PartialEq)]
pub struct Palette {
    /// The first stored value mapped (descriptor's second number).
    pub first: i64,
    /// Entries already scaled to 8 bits: `[r, g, b]` per index.
    pub rgb: Vec<[u8; 3]>,
}

impl Palette {
    /// Builds a palette from the three descriptors (`[entries, first, bits]`) and the three
    /// tables as 16-bit words (8-bit tables are stored one entry per word as well).
    pub fn new(descriptors: [[i64; 3]; 3], tables: [&[u16]; 3]) -> Result<Palette, String> {
        let [entries, first, bits] = descriptors[0];
        if descriptors.iter().any(|d| *d != descriptors[0]) {
            return Err(format!("palette descriptors differ between red, green and blue: {descriptors:?}"));
        }
        let entries = if entries == 0 { 65536 } else { entries as usize };
        if !(bits == 8 || bits == 16) {
            return Err(format!("palette entries of {bits} bits (expected 8 or 16)"));
        }
        let mut rgb = vec![[0u8; 3]; entries];
        for (c, table) in tables.iter().enumerate() {
            // 8-bit tables are usually one entry per 16-bit word; some writers pack two per word.
            let values: Vec<u16> = if bits == 8 && table.len() * 2 == entries {
                table.iter().flat_map(|w| [w & 0xff, w >> 8]).collect()
            } else {
                table.to_vec()
            };
            if values.len() < entries {
                return Err(format!(
                    "palette table {} holds {} entries, the descriptor says {entries}",
                    ["red", "green", "blue"][c],
                    values.len()
                ));
            }
            for (e, v) in rgb.iter_mut().zip(values) {
                e[c] = if bits == 16 { (v >> 8) as u8 } else { v.min(255) as u8 };
            }
        }
        Ok(Palette { first, rgb })
    }

    fn lookup(&self, v: i64) -> [u8; 3] {
        let i = (v - self.first).clamp(0, self.rgb.len() as i64 - 1);
        self.rgb[i as usize]
    }
}

impl Layout {
    /// Bytes of one native frame (bit-packed 1-bit frames are rounded up).
    pub fn native_frame_bytes(&self) -> Option<usize> {
        let pixels = self.rows.checked_mul(self.cols)?;
        if self.photometric == Photometric::YbrFull422 && self.bits_allocated == 8 {
            // Y Y Cb Cr per pair of pixels.
            return pixels.checked_mul(2);
        }
        let bits = pixels.checked_mul(self.samples)?.checked_mul(self.bits_allocated)?;
        Some(bits.div_ceil(8))
    }

    /// Checks that the layout is one echovault can turn into RGB.
    pub fn validate(&self) -> Result<(), String> {
        if self.rows == 0 || self.cols == 0 {
            return Err(format!("image of {} rows × {} columns", self.rows, self.cols));
        }
        if !matches!(self.bits_allocated, 1 | 8 | 16 | 32) {
            return Err(format!("BitsAllocated {} (expected 1, 8, 16 or 32)", self.bits_allocated));
        }
        if self.bits_stored == 0 || self.bits_stored > self.bits_allocated {
            return Err(format!("BitsStored {} with BitsAllocated {}", self.bits_stored, self.bits_allocated));
        }
        let want = match self.photometric {
            Photometric::Rgb | Photometric::YbrFull | Photometric::YbrFull422 => 3,
            _ => 1,
        };
        if self.samples != want {
            return Err(format!("{} with SamplesPerPixel {}", self.photometric.name(), self.samples));
        }
        if self.photometric == Photometric::YbrFull422 && self.bits_allocated != 8 {
            return Err(format!("YBR_FULL_422 with BitsAllocated {}", self.bits_allocated));
        }
        Ok(())
    }

    /// Native frame bytes (little-endian words) → RGB. `bit_offset` is where the frame starts
    /// inside `data` for bit-packed 1-bit images (0 otherwise).
    pub fn native_to_rgb(&self, data: &[u8], bit_offset: usize) -> Result<Vec<u8>, String> {
        let n = self.rows * self.cols;
        if self.photometric == Photometric::YbrFull422 {
            // Y0 Y1 Cb Cr per horizontal pair; an odd last column uses the pair's first luma.
            let need = n * 2;
            if data.len() < need {
                return Err(format!("frame holds {} bytes, YBR_FULL_422 needs {need}", data.len()));
            }
            let mut out = Vec::with_capacity(n * 3);
            for r in 0..self.rows {
                for c in 0..self.cols {
                    let i = r * self.cols + c;
                    let pair = (i / 2) * 4;
                    out.extend(ybr_to_rgb(data[pair + (i % 2)], data[pair + 2], data[pair + 3]));
                }
            }
            return Ok(out);
        }
        if let Some(rgb) = self.fast_8bit(data) {
            return Ok(rgb);
        }
        let samples = self.unpack(data, bit_offset)?;
        Ok(self.samples_to_rgb(&samples))
    }

    /// The common ultrasound layouts (8-bit unsigned RGB interleaved, grey, palette) without the
    /// general per-sample path; `None` when the layout is another one.
    fn fast_8bit(&self, data: &[u8]) -> Option<Vec<u8>> {
        if self.bits_allocated != 8 || self.bits_stored != 8 || self.signed {
            return None;
        }
        let n = self.rows * self.cols;
        match &self.photometric {
            Photometric::Rgb if !self.planar => Some(data.get(..n * 3)?.to_vec()),
            Photometric::Monochrome2 => Some(data.get(..n)?.iter().flat_map(|&g| [g, g, g]).collect()),
            Photometric::Palette(p) => {
                let table: Vec<[u8; 3]> = (0..256).map(|v| p.lookup(v)).collect();
                Some(data.get(..n)?.iter().flat_map(|&v| table[usize::from(v)]).collect())
            }
            _ => None,
        }
    }

    /// Raw samples of one frame, interleaved (planar configuration undone), as `i64`.
    fn unpack(&self, data: &[u8], bit_offset: usize) -> Result<Vec<i64>, String> {
        let count = self.rows * self.cols * self.samples;
        let need = (bit_offset + count * self.bits_allocated).div_ceil(8);
        if data.len() < need {
            return Err(format!("frame holds {} bytes, {} needed", data.len(), need));
        }
        let mut raw: Vec<i64> = match self.bits_allocated {
            1 => (0..count).map(|i| i64::from((data[(bit_offset + i) / 8] >> ((bit_offset + i) % 8)) & 1)).collect(),
            8 => data[..count].iter().map(|&b| i64::from(b)).collect(),
            16 => data[..count * 2].chunks_exact(2).map(|c| i64::from(u16::from_le_bytes([c[0], c[1]]))).collect(),
            _ => data[..count * 4].chunks_exact(4).map(|c| i64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect(),
        };
        let mask = if self.bits_stored >= 64 { -1i64 } else { (1i64 << self.bits_stored) - 1 };
        for v in raw.iter_mut() {
            *v &= mask;
            if self.signed && self.bits_stored < 64 && (*v >> (self.bits_stored - 1)) & 1 == 1 {
                *v -= 1i64 << self.bits_stored;
            }
        }
        if self.planar && self.samples == 3 {
            let plane = self.rows * self.cols;
            let mut inter = vec![0i64; count];
            for p in 0..plane {
                for s in 0..3 {
                    inter[p * 3 + s] = raw[s * plane + p];
                }
            }
            raw = inter;
        }
        Ok(raw)
    }

    /// Interleaved samples (already sign-extended) → 8-bit RGB.
    pub fn samples_to_rgb(&self, samples: &[i64]) -> Vec<u8> {
        let n = self.rows * self.cols;
        let mut out = Vec::with_capacity(n * 3);
        match &self.photometric {
            Photometric::Monochrome1 | Photometric::Monochrome2 => {
                let invert = self.photometric == Photometric::Monochrome1;
                for &v in &samples[..n] {
                    let g = self.grey(v);
                    let g = if invert { 255 - g } else { g };
                    out.extend([g, g, g]);
                }
            }
            Photometric::Palette(p) => {
                for &v in &samples[..n] {
                    out.extend(p.lookup(v));
                }
            }
            Photometric::Rgb => {
                for &v in &samples[..n * 3] {
                    out.push(self.to_8bit(v));
                }
            }
            Photometric::YbrFull | Photometric::YbrFull422 => {
                for px in samples[..n * 3].chunks_exact(3) {
                    out.extend(ybr_to_rgb(self.to_8bit(px[0]), self.to_8bit(px[1]), self.to_8bit(px[2])));
                }
            }
        }
        out
    }

    /// A sample of `bits_stored` bits scaled to 8 bits (signed samples shifted to unsigned).
    fn to_8bit(&self, v: i64) -> u8 {
        let v = if self.signed { v + (1i64 << (self.bits_stored - 1)) } else { v };
        if self.bits_stored <= 8 {
            v.clamp(0, 255) as u8
        } else {
            (v >> (self.bits_stored - 8)).clamp(0, 255) as u8
        }
    }

    /// A monochrome sample as 8-bit grey: as is up to 8 bits; deeper samples through the VOI
    /// window when there is one (DICOM PS3.3 C.11.2.1.2 linear), else scaled by bit depth.
    fn grey(&self, v: i64) -> u8 {
        if self.bits_stored <= 8 && !self.signed {
            return v.clamp(0, 255) as u8;
        }
        match self.window {
            Some((c, w)) if w >= 1.0 => {
                let x = v as f64;
                let y = if x <= c - 0.5 - (w - 1.0) / 2.0 {
                    0.0
                } else if x > c - 0.5 + (w - 1.0) / 2.0 {
                    255.0
                } else {
                    ((x - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0
                };
                (y + 0.5).floor().clamp(0.0, 255.0) as u8
            }
            _ => self.to_8bit(v),
        }
    }
}

/// Full-range YCbCr → RGB as pydicom's `convert_color_space` computes it (float32 matrix,
/// +0.5, clip, truncate), so that native YBR frames match it.
pub fn ybr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (f32::from(y), f32::from(cb) - 128.0, f32::from(cr) - 128.0);
    let g_cb: f32 = -0.114 * 1.772 / 0.587;
    let g_cr: f32 = -0.299 * 1.402 / 0.587;
    let r = y + 1.402 * cr;
    let g = y + g_cb * cb + g_cr * cr;
    let b = y + 1.772 * cb;
    [r, g, b].map(|x| (x + 0.5).clamp(0.0, 255.0) as u8)
}

/// Decodes one DICOM RLE Lossless frame (PS3.5 G) into native little-endian frame bytes with
/// planar configuration 0.
pub fn rle_decode(data: &[u8], layout: &Layout) -> Result<Vec<u8>, String> {
    if data.len() < 64 {
        return Err(format!("RLE frame of {} bytes has no 64-byte header", data.len()));
    }
    let word = |i: usize| u32::from_le_bytes([data[4 * i], data[4 * i + 1], data[4 * i + 2], data[4 * i + 3]]) as usize;
    let segments = word(0);
    let bytes_per_sample = layout.bits_allocated.div_ceil(8);
    let want = layout.samples * bytes_per_sample;
    if segments != want {
        return Err(format!("RLE frame has {segments} segments, {want} expected"));
    }
    let pixels = layout.rows * layout.cols;
    let mut out = vec![0u8; pixels * want];
    for s in 0..segments {
        let start = word(1 + s);
        let end = if s + 1 < segments { word(2 + s) } else { data.len() };
        if start < 64 || start > end || end > data.len() {
            return Err(format!("RLE segment {s} spans {start}..{end} of {} bytes", data.len()));
        }
        let plane = packbits(&data[start..end], pixels).map_err(|e| format!("RLE segment {s}: {e}"))?;
        // Segments run sample by sample, most significant byte first.
        let sample = s / bytes_per_sample;
        let byte = bytes_per_sample - 1 - s % bytes_per_sample;
        for (p, v) in plane.into_iter().enumerate() {
            out[(p * layout.samples + sample) * bytes_per_sample + byte] = v;
        }
    }
    Ok(out)
}

/// PackBits as DICOM RLE uses it; returns exactly `len` bytes (a short segment is an error,
/// trailing padding is ignored).
fn packbits(src: &[u8], len: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(len);
    let mut i = 0;
    while out.len() < len && i < src.len() {
        let n = src[i] as i8;
        i += 1;
        if n >= 0 {
            let count = n as usize + 1;
            let lit = src.get(i..i + count).ok_or("literal run past the end of the segment")?;
            out.extend_from_slice(lit);
            i += count;
        } else if n != -128 {
            let count = 1 - n as isize;
            let b = *src.get(i).ok_or("repeat run past the end of the segment")?;
            out.extend(std::iter::repeat_n(b, count as usize));
            i += 1;
        }
    }
    if out.len() < len {
        return Err(format!("decodes to {} bytes, {len} expected", out.len()));
    }
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(photometric: Photometric, samples: usize, bits: usize) -> Layout {
        Layout {
            rows: 2,
            cols: 3,
            samples,
            bits_allocated: bits,
            bits_stored: bits,
            signed: false,
            planar: false,
            photometric,
            window: None,
        }
    }

    #[test]
    fn planar_rgb_is_interleaved() {
        let mut l = layout(Photometric::Rgb, 3, 8);
        l.planar = true;
        let data: Vec<u8> = (0..6).chain(10..16).chain(20..26).collect();
        let rgb = l.native_to_rgb(&data, 0).unwrap();
        assert_eq!(&rgb[..6], &[0, 10, 20, 1, 11, 21]);
    }

    #[test]
    fn monochrome1_is_inverted_and_16_bit_is_scaled() {
        let mut l = layout(Photometric::Monochrome1, 1, 16);
        l.bits_stored = 12;
        let data: Vec<u8> = [0u16, 4095, 2048, 16, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let rgb = l.native_to_rgb(&data, 0).unwrap();
        assert_eq!(&rgb[..12], &[255, 255, 255, 0, 0, 0, 127, 127, 127, 254, 254, 254]);
    }

    #[test]
    fn signed_samples_are_sign_extended() {
        let mut l = layout(Photometric::Monochrome2, 1, 16);
        l.signed = true;
        l.window = Some((0.0, 2.0));
        let data: Vec<u8> = [0xffffu16, 0, 1, 0x8000, 0x7fff, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let rgb = l.native_to_rgb(&data, 0).unwrap();
        assert_eq!(rgb.iter().step_by(3).copied().collect::<Vec<_>>(), vec![0, 255, 255, 0, 255, 255]);
    }

    #[test]
    fn ybr_422_shares_chroma_between_pairs() {
        let l = layout(Photometric::YbrFull422, 3, 8);
        let data = [10u8, 200, 128, 128, 50, 60, 128, 128, 70, 80, 128, 128];
        let rgb = l.native_to_rgb(&data, 0).unwrap();
        let grey: Vec<u8> = rgb.iter().step_by(3).copied().collect();
        assert_eq!(grey, vec![10, 200, 50, 60, 70, 80]);
        assert_eq!(ybr_to_rgb(76, 85, 255), [254, 0, 0]);
    }

    #[test]
    fn palette_maps_and_clamps() {
        let r: Vec<u16> = (0..4).map(|i| i * 0x4000).collect();
        let p = Palette::new([[4, 10, 16]; 3], [&r, &r, &r]).unwrap();
        let l = layout(Photometric::Palette(Box::new(p)), 1, 8);
        let rgb = l.native_to_rgb(&[0, 10, 11, 13, 200, 12], 0).unwrap();
        assert_eq!(rgb.iter().step_by(3).copied().collect::<Vec<_>>(), vec![0, 0, 64, 192, 192, 128]);
        assert!(Palette::new([[4, 0, 12]; 3], [&r, &r, &r]).is_err());
        assert!(Palette::new([[8, 0, 16]; 3], [&r, &r, &r]).is_err());
    }

    #[test]
    fn rle_round_trip_16_bit_and_errors() {
        let l = layout(Photometric::Monochrome2, 1, 16);
        // Two segments (high bytes, low bytes) of 6 bytes each.
        let hi = [5u8, 1, 2, 3, 4, 5, 6];
        let lo = [0xfbu8, 9]; // repeat 9 six times
        let mut data = vec![0u8; 64];
        data[..4].copy_from_slice(&2u32.to_le_bytes());
        data[4..8].copy_from_slice(&64u32.to_le_bytes());
        data[8..12].copy_from_slice(&(64 + hi.len() as u32).to_le_bytes());
        data.extend(hi);
        data.extend(lo);
        let frame = rle_decode(&data, &l).unwrap();
        assert_eq!(&frame[..4], &[9, 1, 9, 2]);
        assert!(rle_decode(&data[..70], &l).is_err());
        assert!(rle_decode(&data[..10], &l).is_err());
        let mut bad = data.clone();
        bad[4..8].copy_from_slice(&9999u32.to_le_bytes());
        assert!(rle_decode(&bad, &l).is_err());
    }

    #[test]
    fn short_frames_are_errors_not_panics() {
        // A 2×3 frame needs exactly this many bytes (1-bit: 6 bits from a bit offset of 7 span
        // two bytes); one byte less is an error, never a panic or a frame read past its end.
        for (ph, s, b, offset, need) in [
            (Photometric::Rgb, 3, 8, 0, 18),
            (Photometric::Monochrome2, 1, 8, 0, 6),
            (Photometric::Monochrome2, 1, 16, 0, 12),
            (Photometric::YbrFull422, 3, 8, 0, 12),
            (Photometric::Monochrome2, 1, 1, 0, 1),
            (Photometric::Monochrome2, 1, 1, 7, 2),
        ] {
            let l = layout(ph.clone(), s, b);
            let data = vec![1u8; need];
            let rgb = l.native_to_rgb(&data, offset).unwrap_or_else(|e| panic!("{ph:?} {b}-bit, {need} bytes: {e}"));
            assert_eq!(rgb.len(), 2 * 3 * 3, "{ph:?} {b}-bit");
            for short in 0..need {
                assert!(l.native_to_rgb(&data[..short], offset).is_err(), "{ph:?} {b}-bit from {short} of {need} bytes");
            }
        }
    }
}
