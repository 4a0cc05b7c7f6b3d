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
}
