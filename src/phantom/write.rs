//! Writing phantom cines: DICOM US multi-frame (dicom-rs; JPEG baseline through the `image`
//! crate's encoder, native RGB, or an H.264 stream through FFmpeg / video-rs) and AVI (H.264
//! through FFmpeg / video-rs).

use crate::error::Error;
use crate::media::Frame;
use dicom_core::value::{PixelFragmentSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use std::path::Path;

/// Ultrasound Multi-frame Image Storage.
const US_MULTIFRAME: &str = "1.2.840.10008.5.1.4.1.1.3.1";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
/// MPEG-4 AVC/H.264 High Profile / Level 4.1.
const H264_HIGH_41: &str = "1.2.840.10008.1.2.4.102";

/// How a DICOM phantom's pixel data is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DicomCodec {
    /// JPEG baseline (lossy), YBR_FULL, one fragment per frame with a basic offset table.
    Jpeg,
    /// Native explicit-VR little-endian RGB.
    Native,
    /// An H.264 elementary stream (Annex B, x264 through FFmpeg) as one fragment, transfer
    /// syntax 1.2.840.10008.1.2.4.102, YBR_PARTIAL_420, empty basic offset table.
    H264,
}

/// What the DICOM header says.
#[derive(Debug)]
pub struct DicomMeta<'a> {
    pub patient: &'a str,
    pub study_uid: &'a str,
    pub series_uid: &'a str,
    pub sop_uid: &'a str,
    /// `YYYYMMDD`.
    pub date: &'a str,
    pub fps: f64,
    pub heart_rate: f64,
}

fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, v: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
}

fn put_u16(obj: &mut InMemDicomObject, tag: Tag, v: u16) {
    obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
}

/// Writes a US multi-frame DICOM file with its pixel data stored as `codec` says.
pub fn dicom(path: &Path, frames: &[Frame], m: &DicomMeta<'_>, codec: DicomCodec) -> Result<(), Error> {
    let first = frames.first().ok_or_else(|| Error::media(path, "no frames to write"))?;
    let (w, h) = (first.width, first.height);
    let mut obj = InMemDicomObject::new_empty();
    put_str(&mut obj, tags::SOP_CLASS_UID, VR::UI, US_MULTIFRAME);
    put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, m.sop_uid);
    put_str(&mut obj, tags::STUDY_INSTANCE_UID, VR::UI, m.study_uid);
    put_str(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, m.series_uid);
    put_str(&mut obj, tags::STUDY_DATE, VR::DA, m.date);
    put_str(&mut obj, tags::SERIES_DATE, VR::DA, m.date);
    put_str(&mut obj, tags::STUDY_TIME, VR::TM, "093000");
    put_str(&mut obj, tags::MODALITY, VR::CS, "US");
    put_str(&mut obj, tags::MANUFACTURER, VR::LO, "echovault phantom");
    put_str(&mut obj, tags::MANUFACTURER_MODEL_NAME, VR::LO, "A4C cine v1");
    put_str(&mut obj, tags::PATIENT_NAME, VR::PN, &format!("PHANTOM^{}", m.patient.trim_start_matches("PHANTOM-")));
    put_str(&mut obj, tags::PATIENT_ID, VR::LO, m.patient);
    put_str(&mut obj, tags::STUDY_DESCRIPTION, VR::LO, "TTE phantom");
    put_str(&mut obj, tags::SERIES_NUMBER, VR::IS, "1");
    put_str(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(&mut obj, tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\ABDOMINAL");
    put_str(&mut obj, tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
    put_str(&mut obj, tags::NUMBER_OF_FRAMES, VR::IS, &frames.len().to_string());
    put_str(&mut obj, tags::FRAME_TIME, VR::DS, &format!("{:.4}", 1000.0 / m.fps));
    put_str(&mut obj, tags::CINE_RATE, VR::IS, &format!("{:.0}", m.fps));
    put_str(&mut obj, tags::HEART_RATE, VR::IS, &format!("{:.0}", m.heart_rate));
    obj.put(DataElement::new(tags::FRAME_INCREMENT_POINTER, VR::AT, PrimitiveValue::Tags(vec![tags::FRAME_TIME].into())));
    put_u16(&mut obj, tags::SAMPLES_PER_PIXEL, 3);
    let photometric = match codec {
        DicomCodec::Jpeg => "YBR_FULL",
        DicomCodec::Native => "RGB",
        DicomCodec::H264 => "YBR_PARTIAL_420",
    };
    put_str(&mut obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, photometric);
    put_u16(&mut obj, tags::PLANAR_CONFIGURATION, 0);
    put_u16(&mut obj, tags::ROWS, h as u16);
    put_u16(&mut obj, tags::COLUMNS, w as u16);
    put_u16(&mut obj, tags::BITS_ALLOCATED, 8);
    put_u16(&mut obj, tags::BITS_STORED, 8);
    put_u16(&mut obj, tags::HIGH_BIT, 7);
    put_u16(&mut obj, tags::PIXEL_REPRESENTATION, 0);
    // One region: the whole image (the sector sits inside it), 0.15 mm per pixel-ish.
    let region = InMemDicomObject::from_element_iter([
        DataElement::new(tags::REGION_SPATIAL_FORMAT, VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(tags::REGION_DATA_TYPE, VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(tags::REGION_FLAGS, VR::UL, PrimitiveValue::from(0u32)),
        DataElement::new(tags::REGION_LOCATION_MIN_X0, VR::UL, PrimitiveValue::from(0u32)),
        DataElement::new(tags::REGION_LOCATION_MIN_Y0, VR::UL, PrimitiveValue::from(0u32)),
        DataElement::new(tags::REGION_LOCATION_MAX_X1, VR::UL, PrimitiveValue::from(w as u32 - 1)),
        DataElement::new(tags::REGION_LOCATION_MAX_Y1, VR::UL, PrimitiveValue::from(h as u32 * 9 / 10)),
        DataElement::new(tags::PHYSICAL_UNITS_X_DIRECTION, VR::US, PrimitiveValue::from(3u16)),
        DataElement::new(tags::PHYSICAL_UNITS_Y_DIRECTION, VR::US, PrimitiveValue::from(3u16)),
        DataElement::new(tags::PHYSICAL_DELTA_X, VR::FD, PrimitiveValue::from(15.0 / w as f64)),
        DataElement::new(tags::PHYSICAL_DELTA_Y, VR::FD, PrimitiveValue::from(15.0 / h as f64)),
    ]);
    obj.put(DataElement::new(tags::SEQUENCE_OF_ULTRASOUND_REGIONS, VR::SQ, dicom_core::value::DataSetSequence::from(vec![region])));
    let ts = if codec == DicomCodec::H264 {
        put_str(&mut obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "01");
        put_str(&mut obj, tags::LOSSY_IMAGE_COMPRESSION_METHOD, VR::CS, "ISO_14496_10");
        let mut stream = h264_stream(path, frames, m.fps)?;
        if stream.len() % 2 == 1 {
            stream.push(0); // fragments have even length; a trailing zero byte is stream padding
        }
        if stream.len() > u32::MAX as usize - 1 {
            return Err(Error::media(path, format!("the H.264 stream of {} bytes does not fit one fragment", stream.len())));
        }
        obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, Value::PixelSequence(PixelFragmentSequence::new(vec![], vec![stream]))));
        H264_HIGH_41
    } else if codec == DicomCodec::Jpeg {
        put_str(&mut obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "01");
        put_str(&mut obj, tags::LOSSY_IMAGE_COMPRESSION_METHOD, VR::CS, "ISO_10918_1");
        let mut fragments = Vec::with_capacity(frames.len());
        for (i, f) in frames.iter().enumerate() {
            let mut buf = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 92)
                .encode(&f.rgb, f.width as u32, f.height as u32, image::ExtendedColorType::Rgb8)
                .map_err(|e| Error::media(path, format!("JPEG encoding of frame {i} failed: {e}")))?;
            if buf.len() % 2 == 1 {
                buf.push(0); // fragments have even length
            }
            fragments.push(buf);
        }
        let mut offsets = Vec::with_capacity(fragments.len());
        let mut at = 0u32;
        for f in &fragments {
            offsets.push(at);
            at += 8 + f.len() as u32;
        }
        obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, Value::PixelSequence(PixelFragmentSequence::new(offsets, fragments))));
        JPEG_BASELINE
    } else {
        let mut bytes = Vec::with_capacity(frames.len() * w * h * 3);
        for f in frames {
            bytes.extend_from_slice(&f.rgb);
        }
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(bytes)));
        EXPLICIT_LE
    };
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(ts)
                .implementation_class_uid("2.25.302458935497302935108412303842914813951")
                .implementation_version_name("ECHOVAULT"),
        )
        .map_err(|e| Error::media(path, format!("DICOM header: {e}")))?;
    file.write_to_file(path).map_err(|e| Error::media(path, format!("cannot write DICOM: {e}")))
}

/// `frames` as an H.264 elementary stream (Annex B: parameter sets in band), encoded through
/// FFmpeg (x264, yuv420p) into a temporary file beside `path` and read back.
#[cfg(feature = "video")]
fn h264_stream(path: &Path, frames: &[Frame], fps: f64) -> Result<Vec<u8>, Error> {
    use video_rs::encode::{EncoderBuilder, Settings};
    use video_rs::time::Time;
    let first = frames.first().ok_or_else(|| Error::media(path, "no frames to write"))?;
    let _ = video_rs::init();
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new().prefix(".phantom-").suffix(".h264").tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    let settings = Settings::preset_h264_yuv420p(first.width, first.height, false);
    let mut enc = EncoderBuilder::new(tmp.path(), settings)
        .with_format("h264")
        .build()
        .map_err(|e| Error::media(path, format!("cannot create an H.264 stream: {e}")))?;
    let step = Time::from_nth_of_a_second(fps.round().max(1.0) as usize);
    let mut at = Time::zero();
    for (i, f) in frames.iter().enumerate() {
        let arr = video_rs::Frame::from_shape_vec((f.height, f.width, 3), f.rgb.clone())
            .map_err(|e| Error::media(path, format!("frame {i}: {e}")))?;
        enc.encode(&arr, at).map_err(|e| Error::media(path, format!("encoding frame {i} failed: {e}")))?;
        at = at.aligned_with(step).add();
    }
    enc.finish().map_err(|e| Error::media(path, format!("finishing the H.264 stream failed: {e}")))?;
    drop(enc);
    std::fs::read(tmp.path()).map_err(|e| Error::io(tmp.path(), e))
}

/// Without FFmpeg (`--no-default-features`), H.264 DICOM output is refused.
#[cfg(not(feature = "video"))]
fn h264_stream(path: &Path, _frames: &[Frame], _fps: f64) -> Result<Vec<u8>, Error> {
    Err(Error::media(path, "this build has no video support (feature `video`): write JPEG or native DICOM instead"))
}

/// Writes an H.264 AVI through FFmpeg.
#[cfg(feature = "video")]
pub fn avi(path: &Path, frames: &[Frame], fps: f64) -> Result<(), Error> {
    use video_rs::encode::{Encoder, Settings};
    use video_rs::time::Time;
    let first = frames.first().ok_or_else(|| Error::media(path, "no frames to write"))?;
    let _ = video_rs::init();
    let settings = Settings::preset_h264_yuv420p(first.width, first.height, false);
    let mut enc = Encoder::new(path, settings).map_err(|e| Error::media(path, format!("cannot create video: {e}")))?;
    let step = Time::from_nth_of_a_second(fps.round().max(1.0) as usize);
    let mut at = Time::zero();
    for (i, f) in frames.iter().enumerate() {
        let arr = video_rs::Frame::from_shape_vec((f.height, f.width, 3), f.rgb.clone())
            .map_err(|e| Error::media(path, format!("frame {i}: {e}")))?;
        enc.encode(&arr, at).map_err(|e| Error::media(path, format!("encoding frame {i} failed: {e}")))?;
        at = at.aligned_with(step).add();
    }
    enc.finish().map_err(|e| Error::media(path, format!("finishing the video failed: {e}")))
}

/// Without FFmpeg (`--no-default-features`), AVI output is refused.
#[cfg(not(feature = "video"))]
pub fn avi(path: &Path, _frames: &[Frame], _fps: f64) -> Result<(), Error> {
    Err(Error::media(path, "this build has no video support (feature `video`): write DICOM instead"))
}
