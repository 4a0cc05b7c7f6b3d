//! One decoded frame: 8-bit RGB, row-major, interleaved (HWC).

/// An RGB frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes, RGB.
    pub rgb: Vec<u8>,
}

impl Frame {
    /// A frame from interleaved RGB bytes; `None` when the length does not match.
    pub fn new(width: usize, height: usize, rgb: Vec<u8>) -> Option<Self> {
        (width.checked_mul(height)?.checked_mul(3)? == rgb.len()).then_some(Frame { width, height, rgb })
    }

    /// The `w × h` rectangle at (`x`, `y`); `None` when it does not lie inside the frame.
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Option<Frame> {
        if w == 0 || h == 0 || x.checked_add(w)? > self.width || y.checked_add(h)? > self.height {
            return None;
        }
        let mut rgb = Vec::with_capacity(w * h * 3);
        for r in y..y + h {
            let start = (r * self.width + x) * 3;
            rgb.extend_from_slice(&self.rgb[start..start + w * 3]);
        }
        Some(Frame { width: w, height: h, rgb })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_takes_the_rectangle_and_refuses_outside() {
        let f = Frame::new(3, 2, (0..18).collect()).unwrap();
        let c = f.crop(1, 1, 2, 1).unwrap();
        assert_eq!((c.width, c.height, c.rgb), (2, 1, vec![12, 13, 14, 15, 16, 17]));
        assert!(f.crop(2, 0, 2, 1).is_none());
        assert!(f.crop(0, 0, 0, 1).is_none());
    }
}
