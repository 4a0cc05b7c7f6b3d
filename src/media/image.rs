//! Still images (PNG, JPEG) as one RGB frame, for `echovault embed --image`.

use crate::error::Error;
use crate::media::Frame;
use std::path::Path;

/// Largest image accepted, in pixels (guards against absurd headers).
const MAX_PIXELS: u64 = 64 << 20;

/// Reads an image file as an 8-bit RGB frame.
pub fn read_image(path: &Path) -> Result<Frame, Error> {
    let reader = image::ImageReader::open(path).map_err(|e| Error::io(path, e))?.with_guessed_format().map_err(|e| Error::io(path, e))?;
    let (w, h) = reader.into_dimensions().map_err(|e| Error::media(path, format!("not a readable image: {e}")))?;
    if w == 0 || h == 0 || u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(Error::media(path, format!("unsupported image size {w}×{h}")));
    }
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::media(path, format!("cannot decode image: {e}")))?;
    let rgb = img.to_rgb8();
    Frame::new(w as usize, h as usize, rgb.into_raw()).ok_or_else(|| Error::media(path, "decoded image has an unexpected size"))
}
