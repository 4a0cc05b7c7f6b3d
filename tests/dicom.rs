//! DICOM decoding against pydicom (+ pylibjpeg) on real third-party files, fetched at test time
//! from PyPI (the pinned `pydicom` wheel's test files and `pydicom-data`, checksummed, cached
//! under target/dicom-data, never committed). Native and RLE frames must be identical; lossy
//! JPEG within mean |Δ| ≤ 1.0 and max |Δ| ≤ 8; and bad input must give typed errors.

#![allow(clippy::unwrap_used)]

mod common;

use common::{echovault, json, root};

use echovault::media::dicom::{is_dicom, DicomCine};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn py(args: &[&str]) -> String {
    let python = root().join(".venv/bin/python");
    assert!(python.exists(), "{} missing: run tools/setup", python.display());
    let out = Command::new(python).arg(root().join("tools/parity/dicom_ref.py")).args(args).output().unwrap();
    assert!(out.status.success(), "dicom_ref.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// name → path of every test file (fetched once per test binary).
fn files() -> &'static HashMap<String, PathBuf> {
    static FILES: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    FILES.get_or_init(|| {
        let cache = root().join("target/dicom-data");
        serde_json::from_str(&py(&["fetch", cache.to_str().unwrap()])).unwrap()
    })
}

fn file(name: &str) -> &'static Path {
    files().get(name).unwrap_or_else(|| panic!("{name} not in dicom_ref.py's list"))
}

/// The file whose pydicom output is the reference for `name`. pydicom 3.0 reads the 16-bit
/// palette tables of the big-endian OBXXXX1A copies with the wrong byte order (its RGB for
/// them differs from its RGB for the little-endian originals, whose indices and tables are
/// identical), so those are checked against the originals.
fn reference_for(name: &str) -> &str {
    match name {
        "OBXXXX1A_expb.dcm" => "OBXXXX1A.dcm",
        "OBXXXX1A_expb_2frame.dcm" => "OBXXXX1A_2frame.dcm",
        n => n,
    }
}

/// Compares our frames with pydicom's; returns (frames, mean |Δ|, max |Δ|).
fn compare(name: &str, max_frames: usize) -> (usize, f64, u8) {
    let path = file(name);
    let out = tempfile::tempdir().unwrap();
    let reference = file(reference_for(name));
    let mut meta: serde_json::Value =
        serde_json::from_str(&py(&["frames", reference.to_str().unwrap(), out.path().to_str().unwrap(), &max_frames.to_string()])).unwrap();
    if reference != path {
        meta["transfer_syntax"] =
            serde_json::from_str::<serde_json::Value>(&py(&["meta", path.to_str().unwrap()])).unwrap()["transfer_syntax"].clone();
    }
    let cine = DicomCine::open(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let info = cine.info();
    assert_eq!(info.frames as u64, meta["frames"].as_u64().unwrap(), "{name}: frame count");
    assert_eq!(info.rows as u64, meta["rows"].as_u64().unwrap(), "{name}");
    assert_eq!(info.cols as u64, meta["cols"].as_u64().unwrap(), "{name}");
    assert_eq!(info.photometric, meta["photometric"].as_str().unwrap(), "{name}");
    assert_eq!(info.transfer_syntax, meta["transfer_syntax"].as_str().unwrap(), "{name}");
    let n = meta["written"].as_u64().unwrap() as usize;
    let (mut sum, mut count, mut max) = (0u64, 0u64, 0u8);
    for i in 0..n {
        let theirs = std::fs::read(out.path().join(format!("frame_{i:04}.rgb"))).unwrap();
        let ours = cine.frame(i).unwrap_or_else(|e| panic!("{name} frame {i}: {e}"));
        assert_eq!(ours.rgb.len(), theirs.len(), "{name} frame {i}: size");
        for (a, b) in ours.rgb.iter().zip(&theirs) {
            let d = a.abs_diff(*b);
            sum += u64::from(d);
            max = max.max(d);
        }
        count += theirs.len() as u64;
    }
    let mean = sum as f64 / count as f64;
    println!("{name:<36} {:<44} {:<14} frames {n:>3}  mean |Δ| {mean:.4}  max |Δ| {max}", info.transfer_syntax_name, info.photometric);
    (n, mean, max)
}

#[test]
fn native_and_rle_frames_equal_pydicom() {
    let names = [
        "examples_rgb_color.dcm",
        "examples_palette.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
        "SC_ybr_full_uncompressed.dcm",
        "SC_rgb_rle_2frame.dcm",
        "SC_rgb_rle_16bit_2frame.dcm",
        "SC_rgb_small_odd.dcm",
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "US1_UNCR.dcm",
        "US1_UNCI.dcm",
        "OBXXXX1A.dcm",
        "OBXXXX1A_2frame.dcm",
        "OBXXXX1A_expb.dcm",
        "OBXXXX1A_expb_2frame.dcm",
        "OBXXXX1A_rle.dcm",
        "OBXXXX1A_rle_2frame.dcm",
        "gdcm-US-ALOKA-16.dcm",
        "gdcm-US-ALOKA-16_big.dcm",
        "color-pl.dcm",
        "color-px.dcm",
        "SC_rgb_expb_2frame.dcm",
        "SC_rgb_expb_16bit_2frame.dcm",
        "SC_rgb_32bit_2frame.dcm",
        "emri_small_RLE.dcm",
        "emri_small_big_endian.dcm",
        "RG1_UNCR.dcm",
        "vlut_04.dcm",
    ];
    let mut bad = Vec::new();
    for name in names {
        let (n, mean, max) = compare(name, 10);
        assert!(n >= 1);
        if max != 0 {
            bad.push(format!("{name}: mean {mean:.4} max {max}"));
        }
    }
    assert!(bad.is_empty(), "not identical to pydicom: {bad:#?}");
}

#[test]
fn lossless_compressed_frames_equal_pydicom() {
    for name in ["JPGLosslessP14SV1_1s_1f_8b.dcm", "US1_J2KR.dcm", "emri_small_jpeg_2k_lossless.dcm"] {
        let (_, mean, max) = compare(name, 10);
        assert_eq!(max, 0, "{name}: mean {mean}");
    }
}

#[test]
fn jpeg_ls_frames_equal_pydicom() {
    // Decoded through FFmpeg's JPEG-LS decoder; pydicom's through libjpeg (pylibjpeg). Lossless
    // files and near-lossless ones (the codestream defines the result) must be identical.
    for name in [
        "emri_small_jpeg_ls_lossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "JPEGLSNearLossless_08.dcm",
        "JPEGLSNearLossless_16.dcm",
        "SC_rgb_jls_lossy_line.dcm",
    ] {
        let (n, mean, max) = compare(name, 10);
        assert!(n >= 1);
        assert_eq!(max, 0, "{name}: mean {mean}");
    }
    // Sample-interleaved colour: FFmpeg 5.1 gives black for it, so it is refused, naming why.
    let cine = DicomCine::open(file("SC_rgb_jls_lossy_sample.dcm")).unwrap();
    let e = cine.frame(0).unwrap_err().to_string();
    assert!(e.contains("JPEG-LS colour by sample") && e.contains("not decoded"), "{e}");
}

#[test]
fn lossy_jpeg_frames_are_within_tolerance_of_pydicom() {
    for (name, frames) in [
        ("examples_ybr_color.dcm", 30),
        ("color3d_jpeg_baseline.dcm", 120),
        ("SC_rgb_jpeg_dcmtk.dcm", 1),
        ("SC_rgb_dcmtk_+eb+cy+s2.dcm", 1),
        ("SC_rgb_dcmtk_+eb+cr.dcm", 1),
        ("examples_jpeg2k.dcm", 1),
        ("US1_J2KI.dcm", 1),
        // 12-bit lossy JPEG (extended), through FFmpeg's decoder; pydicom's through libjpeg.
        ("JPGExtended.dcm", 1),
    ] {
        let (n, mean, max) = compare(name, frames);
        assert_eq!(n, frames, "{name}");
        assert!(mean <= 1.0 && max <= 8, "{name}: mean |Δ| {mean:.4}, max |Δ| {max}");
    }
}

#[test]
fn metadata_of_the_echo_cine() {
    let cine = DicomCine::open(file("examples_ybr_color.dcm")).unwrap();
    let i = cine.info();
    assert_eq!((i.frames, i.rows, i.cols), (30, 240, 320));
    assert_eq!(i.modality.as_deref(), Some("US"));
    assert!(i.study_uid.as_deref().is_some_and(|s| s.starts_with("1.")), "{:?}", i.study_uid);
    assert!(i.sop_uid.is_some());
    // Its regions were written for a 640×480 image: they lie outside this 320×240 one.
    assert!(!i.regions.is_empty());
    let why = i.crop_region().unwrap_err();
    assert!(why.contains("inside"), "{why}");
    assert!(!format!("{i:?}").contains(i.patient_id.as_ref().map_or("\u{0}", |p| p.expose())) || i.patient_id.is_none());
    // A file whose regions fit gets a crop.
    // OBXXXX1A's 2D region ends at column 800 of an 800-wide image (the size written as the
    // last column): accepted and clipped.
    let pal = DicomCine::open(file("OBXXXX1A.dcm")).unwrap();
    let r = pal.info().crop_region().unwrap();
    assert_eq!((r.x0, r.y0, r.x1, r.y1, r.spatial_format), (120, 60, 800, 518, 1));
    assert_eq!(r.rect(600, 800), (120, 60, 680, 459));
}

#[test]
fn recognised_by_content_not_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let renamed = tmp.path().join("IM000001");
    std::fs::copy(file("examples_ybr_color.dcm"), &renamed).unwrap();
    assert!(is_dicom(&renamed));
    assert_eq!(DicomCine::open(&renamed).unwrap().info().frames, 30);
    let text = tmp.path().join("notes.dcm");
    std::fs::write(&text, "this is a text file, not DICOM\n".repeat(10)).unwrap();
    assert!(!is_dicom(&text));
    let err = DicomCine::open(&text).unwrap_err().to_string();
    assert!(err.contains("not a DICOM file"), "{err}");
}

/// Writes `bytes` to a temp file and opens it; the error (or the decode of every frame) must
/// never panic.
fn open_bytes(dir: &Path, name: &str, bytes: &[u8]) -> Result<usize, String> {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    let cine = DicomCine::open(&p).map_err(|e| e.to_string())?;
    for i in 0..cine.info().frames {
        cine.frame(i).map_err(|e| e.to_string())?;
    }
    Ok(cine.info().frames)
}

/// Byte offset of the first occurrence of `pat` in `hay`.
fn find(hay: &[u8], pat: &[u8]) -> usize {
    hay.windows(pat.len()).position(|w| w == pat).unwrap()
}

#[test]
fn bad_input_is_a_typed_error_naming_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let jpeg = std::fs::read(file("examples_ybr_color.dcm")).unwrap();
    let native = std::fs::read(file("US1_UNCR.dcm")).unwrap();

    // Truncated: header only, and half the pixel data.
    let e = open_bytes(tmp.path(), "cut1.dcm", &jpeg[..600]).unwrap_err();
    assert!(!e.is_empty());
    let e = open_bytes(tmp.path(), "cut2.dcm", &native[..native.len() / 2]).unwrap_err();
    assert!(e.contains("truncated"), "{e}");
    let e = open_bytes(tmp.path(), "cut3.dcm", &jpeg[..jpeg.len() * 2 / 3]).unwrap_err();
    assert!(!e.is_empty());

    // Flipped bytes inside the JPEG fragments: an error or a decoded frame, never a panic.
    let mut flipped = jpeg.clone();
    let start = jpeg.len() / 2;
    for b in &mut flipped[start..start + 2000] {
        *b ^= 0x5a;
    }
    let _ = open_bytes(tmp.path(), "flip.dcm", &flipped);

    // A fragment whose item length claims 4 GB: refused from the length alone (no allocation).
    let sig = [0xe0, 0x7f, 0x10, 0x00, b'O', b'B', 0, 0, 0xff, 0xff, 0xff, 0xff];
    let pd = find(&jpeg, &sig) + sig.len();
    let bot_len = u32::from_le_bytes(jpeg[pd + 4..pd + 8].try_into().unwrap()) as usize;
    let first = pd + 8 + bot_len;
    assert_eq!(&jpeg[first..first + 4], &[0xfe, 0xff, 0x00, 0xe0]);
    let mut claims = jpeg.clone();
    claims[first + 4..first + 8].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    let e = open_bytes(tmp.path(), "claims.dcm", &claims).unwrap_err();
    assert!(e.contains("claims") && e.contains("truncated"), "{e}");

    // NumberOfFrames larger than the data (IS "2 " → "9 ").
    let two = std::fs::read(file("OBXXXX1A_2frame.dcm")).unwrap();
    let value = find(&two, &[0x28, 0x00, 0x08, 0x00, b'I', b'S']) + 8;
    assert_eq!(two[value], b'2');
    let mut more = two.clone();
    more[value] = b'9';
    let e = open_bytes(tmp.path(), "frames.dcm", &more).unwrap_err();
    assert!(e.contains("NumberOfFrames") && e.contains("9 frames"), "{e}");

    // Zero rows; absurd rows and columns (65535 × 65535 × 3 bytes per frame).
    let rows = find(&native, &[0x28, 0x00, 0x10, 0x00, b'U', b'S']);
    let cols = find(&native, &[0x28, 0x00, 0x11, 0x00, b'U', b'S']);
    let mut zero = native.clone();
    zero[rows + 8..rows + 10].copy_from_slice(&0u16.to_le_bytes());
    let e = open_bytes(tmp.path(), "zero.dcm", &zero).unwrap_err();
    assert!(e.contains("0 rows"), "{e}");
    let mut huge = native.clone();
    huge[rows + 8..rows + 10].copy_from_slice(&u16::MAX.to_le_bytes());
    huge[cols + 8..cols + 10].copy_from_slice(&u16::MAX.to_le_bytes());
    let e = open_bytes(tmp.path(), "huge.dcm", &huge).unwrap_err();
    assert!(e.contains("limit") || e.contains("pixel data"), "{e}");

    // A text file named .dcm; an empty file; a preamble with nothing after DICM.
    assert!(open_bytes(tmp.path(), "text.dcm", b"hello").unwrap_err().contains("not a DICOM"));
    assert!(open_bytes(tmp.path(), "empty.dcm", b"").unwrap_err().contains("not a DICOM"));
    let mut bare = vec![0u8; 128];
    bare.extend_from_slice(b"DICM");
    assert!(!open_bytes(tmp.path(), "bare.dcm", &bare).unwrap_err().is_empty());
}

/// pydicom on a DICOM file holding a video stream: `meta PATH` prints its structure as JSON
/// (and writes the fragments, concatenated, to PATH.stream); `wrap TEMPLATE STREAM TS FRAGMENTS
/// OUT` puts STREAM into TEMPLATE's pixel data (split into FRAGMENTS fragments) under TS.
const VIDEO_PY: &str = r#"
import json, sys
import pydicom
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import UID
cmd = sys.argv[1]
if cmd == "meta":
    d = pydicom.dcmread(sys.argv[2])
    items = list(generate_fragments(d.PixelData))
    # pydicom 3 lists the basic offset table item first.
    bot, frags = items[0], items[1:]
    open(sys.argv[2] + ".stream", "wb").write(b"".join(frags))
    print(json.dumps({"transfer_syntax": str(d.file_meta.TransferSyntaxUID), "frames": int(d.NumberOfFrames),
        "photometric": d.PhotometricInterpretation, "rows": d.Rows, "cols": d.Columns,
        "samples": d.SamplesPerPixel, "bot_len": len(bot), "fragments": len(frags)}))
elif cmd == "wrap":
    template, stream, ts, n, out = sys.argv[2:7]
    d = pydicom.dcmread(template)
    data = open(stream, "rb").read()
    if len(data) % 2:
        data += b"\0"
    d.PixelData = encapsulate([data], fragments_per_frame=int(n), has_bot=False)
    d["PixelData"].VR = "OB"
    d.file_meta.TransferSyntaxUID = UID(ts)
    d.save_as(out, enforce_file_format=True)
"#;

fn video_py(args: &[&str]) -> String {
    let out = Command::new(root().join(".venv/bin/python")).arg("-c").arg(VIDEO_PY).args(args).output().unwrap();
    assert!(out.status.success(), "pydicom {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `ffmpeg` decoding `path` (a bare stream or a container, found by content) to rgb24, frame by
/// frame.
fn ffmpeg_frames(path: &Path, w: usize, h: usize) -> Vec<Vec<u8>> {
    let out = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-i", path.to_str().unwrap(), "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("ffmpeg on PATH (tools/setup installs it)");
    assert!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len() % (w * h * 3), 0);
    out.stdout.chunks(w * h * 3).map(<[u8]>::to_vec).collect()
}

/// `echovault phantom` into `out` with `extra` options (2 patients, 1 study each, 64 px, 12 frames).
fn phantom(out: &Path, extra: &[&str]) {
    let mut args =
        vec!["phantom", "--out", out.to_str().unwrap(), "--patients", "2", "--studies", "1:1", "--size", "64", "--num-frames", "12"];
    args.extend_from_slice(extra);
    let o = echovault(&out.with_extension("no-index"), &args);
    assert!(o.status.success(), "phantom: {}", String::from_utf8_lossy(&o.stderr));
}

fn dicoms(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walk(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "dcm")).collect();
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Every frame of `path` through DicomCine, in order, then a few out of order.
fn our_frames(path: &Path) -> Vec<Vec<u8>> {
    let cine = DicomCine::open(path).unwrap();
    let n = cine.info().frames;
    let frames: Vec<Vec<u8>> = (0..n).map(|i| cine.frame(i).unwrap().rgb).collect();
    for i in [n - 1, 2, 0, n / 2] {
        assert_eq!(cine.frame(i).unwrap().rgb, frames[i], "frame {i} asked out of order");
    }
    frames
}

#[test]
fn h264_phantom_dicom_frames_equal_ffmpeg_decoding_its_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("h264");
    phantom(&out, &["--formats", "dicom-jpeg", "--dicom-codec", "h264"]);
    let files = dicoms(&out);
    assert_eq!(files.len(), 2);
    for path in &files {
        // The structure as pydicom reads it.
        let meta: serde_json::Value = serde_json::from_str(&video_py(&["meta", path.to_str().unwrap()])).unwrap();
        assert_eq!(meta["transfer_syntax"], "1.2.840.10008.1.2.4.102", "{meta}");
        assert_eq!((meta["frames"].as_u64(), meta["rows"].as_u64(), meta["cols"].as_u64()), (Some(12), Some(64), Some(64)), "{meta}");
        assert_eq!((meta["photometric"].as_str(), meta["samples"].as_u64()), (Some("YBR_PARTIAL_420"), Some(3)), "{meta}");
        assert_eq!((meta["bot_len"].as_u64(), meta["fragments"].as_u64()), (Some(0), Some(1)), "empty offset table, one fragment: {meta}");
        let stream = PathBuf::from(format!("{}.stream", path.display()));
        // An H.264 Annex B elementary stream: a start code first.
        let head = std::fs::read(&stream).unwrap();
        assert!(head.starts_with(&[0, 0, 0, 1]) || head.starts_with(&[0, 0, 1]), "{:?}", &head[..8]);
        let reference = ffmpeg_frames(&stream, 64, 64);
        assert_eq!(reference.len(), 12);
        let ours = our_frames(path);
        assert!(ours == reference, "{}: frames differ from ffmpeg's decoding of the extracted stream", path.display());
        // The frames are the phantom's, not noise: close to the JPEG export's frame 0 below.
        std::fs::remove_file(&stream).unwrap();
    }
    // The same phantoms as JPEG: the H.264 frames are close to them (both lossy).
    let jpeg = tmp.path().join("jpeg");
    phantom(&jpeg, &["--formats", "dicom-jpeg", "--dicom-codec", "jpeg"]);
    for (h, j) in files.iter().zip(dicoms(&jpeg)) {
        let (a, b) = (DicomCine::open(h).unwrap(), DicomCine::open(&j).unwrap());
        let (fa, fb) = (a.frame(5).unwrap().rgb, b.frame(5).unwrap().rgb);
        let mean = fa.iter().zip(&fb).map(|(x, y)| f64::from(x.abs_diff(*y))).sum::<f64>() / fa.len() as f64;
        assert!(mean < 6.0, "{}: mean |Δ| {mean} against the JPEG export", h.display());
    }
}

#[test]
fn h264_frames_follow_the_sampling_and_frame_bound_of_files() {
    use echovault::media::{read_cine, FrameSampling, ReadOptions};
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("h264");
    phantom(&out, &["--formats", "dicom-h264"]);
    let path = &dicoms(&out)[0];
    let all = our_frames(path);
    // Every 2nd frame from 1, at most 3 kept: the step widens to 4 (frames 1, 5, 9).
    let opts = ReadOptions {
        sampling: "1:12:2".parse::<FrameSampling>().unwrap(),
        max_frames: 3,
        crop_regions: false,
        mask: echovault::media::MaskMode::Off,
    };
    let (info, sampled) = read_cine(path, &opts, |fs| Ok(fs.into_iter().map(|f| f.rgb).collect())).unwrap();
    assert_eq!((info.frames, info.width, info.height), (12, 64, 64));
    assert!(info.fps.is_some_and(|f| (f - 30.0).abs() < 1e-3), "{:?}", info.fps);
    let rows: Vec<usize> = (0..sampled.items.len()).map(|r| sampled.sampling.frame_of_row(r)).collect();
    assert_eq!(rows, vec![1, 5, 9], "{:?}", sampled.sampling);
    for (r, f) in rows.iter().zip(&sampled.items) {
        assert!(f == &all[*r], "frame {r}");
    }
}

/// Wraps `stream` into a copy of `template` under `ts`, split into `fragments` fragments, and
/// checks our frames against ffmpeg's decoding of `stream`.
fn wrapped_equals_ffmpeg(template: &Path, stream: &Path, ts: &str, fragments: usize, frames: usize) {
    let wrapped = stream.with_extension(format!("{fragments}.dcm"));
    video_py(&["wrap", template.to_str().unwrap(), stream.to_str().unwrap(), ts, &fragments.to_string(), wrapped.to_str().unwrap()]);
    let reference = ffmpeg_frames(stream, 64, 64);
    assert_eq!(reference.len(), frames, "{}", stream.display());
    let cine = DicomCine::open(&wrapped).unwrap_or_else(|e| panic!("{ts} {}: {e}", stream.display()));
    assert_eq!(cine.info().transfer_syntax, ts);
    let ours = our_frames(&wrapped);
    assert!(ours == reference, "{ts} {} in {fragments} fragments: frames differ from ffmpeg", stream.display());
}

#[test]
fn mpeg2_hevc_and_wrapped_h264_streams_equal_ffmpeg() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("h264");
    phantom(&out, &["--formats", "dicom-h264"]);
    let template = &dicoms(&out)[0];
    video_py(&["meta", template.to_str().unwrap()]);
    let h264 = PathBuf::from(format!("{}.stream", template.display()));
    // The same H.264 stream in three fragments (the fragmentable variant).
    wrapped_equals_ffmpeg(template, &h264, "1.2.840.10008.1.2.4.102.1", 3, 12);
    // The H.264 stream inside an MP4 (moov at the end: FFmpeg needs to seek) and an MPEG-2
    // transport stream, as some writers store it.
    let ffmpeg = |args: &[&str]| {
        let o = Command::new("ffmpeg").args(["-loglevel", "error", "-y"]).args(args).output().expect("ffmpeg on PATH");
        assert!(o.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let h = h264.to_str().unwrap();
    let mp4 = tmp.path().join("h264.mp4");
    ffmpeg(&["-i", h, "-c", "copy", mp4.to_str().unwrap()]);
    wrapped_equals_ffmpeg(template, &mp4, "1.2.840.10008.1.2.4.102", 1, 12);
    // MPEG-2 video (MP@ML) and HEVC Main, encoded here from the H.264 frames.
    let m2v = tmp.path().join("s.m2v");
    ffmpeg(&["-r", "30", "-i", h, "-c:v", "mpeg2video", "-q:v", "3", "-f", "mpeg2video", m2v.to_str().unwrap()]);
    wrapped_equals_ffmpeg(template, &m2v, "1.2.840.10008.1.2.4.100", 2, 12);
    let hevc = tmp.path().join("s.hevc");
    ffmpeg(&[
        "-r",
        "30",
        "-i",
        h,
        "-c:v",
        "libx265",
        "-x265-params",
        "log-level=error",
        "-pix_fmt",
        "yuv420p",
        "-f",
        "hevc",
        hevc.to_str().unwrap(),
    ]);
    wrapped_equals_ffmpeg(template, &hevc, "1.2.840.10008.1.2.4.107", 1, 12);
}

#[test]
fn a_damaged_video_stream_is_a_clear_error_and_a_failure_row() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("h264");
    phantom(&out, &["--formats", "dicom-h264"]);
    let good = &dicoms(&out)[0];
    video_py(&["meta", good.to_str().unwrap()]);
    let stream = std::fs::read(format!("{}.stream", good.display())).unwrap();
    let export = tmp.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    // Cut to a third: decodes some frames, then ends before NumberOfFrames.
    let cut = tmp.path().join("cut.h264");
    std::fs::write(&cut, &stream[..stream.len() / 3]).unwrap();
    video_py(&[
        "wrap",
        good.to_str().unwrap(),
        cut.to_str().unwrap(),
        "1.2.840.10008.1.2.4.102",
        "1",
        export.join("cut.dcm").to_str().unwrap(),
    ]);
    let cine = DicomCine::open(&export.join("cut.dcm")).unwrap();
    let e = (0..12).find_map(|i| cine.frame(i).err()).expect("a cut stream cannot give 12 frames").to_string();
    assert!(e.contains("ends after") && e.contains("NumberOfFrames is 12"), "{e}");
    // Not a video stream at all.
    let noise = tmp.path().join("noise.bin");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(&noise, bytes).unwrap();
    video_py(&[
        "wrap",
        good.to_str().unwrap(),
        noise.to_str().unwrap(),
        "1.2.840.10008.1.2.4.102",
        "1",
        export.join("noise.dcm").to_str().unwrap(),
    ]);
    let e = DicomCine::open(&export.join("noise.dcm")).unwrap().frame(0).unwrap_err().to_string();
    assert!(e.contains("frame 0") && (e.contains("FFmpeg") || e.contains("decoding")), "{e}");
    // Ingest: two failure rows naming the reasons, exit 3, no panic; the good file ingested.
    std::fs::copy(good, export.join("good.dcm")).unwrap();
    let index = tmp.path().join("index");
    let o = echovault(&index, &["ingest", export.to_str().unwrap(), "--json"]);
    let v = json(&o);
    assert_eq!(o.status.code(), Some(3), "{v}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panick"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(v["ingested"], 1, "{v}");
    let failed = v["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "{v}");
    let reason = |name: &str| {
        failed.iter().find(|f| f["path"].as_str().unwrap().ends_with(name)).unwrap_or_else(|| panic!("{name}: {v}"))["reason"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(reason("cut.dcm").contains("ends after"), "{v}");
    assert!(reason("noise.dcm").contains("frame 0"), "{v}");
}

#[test]
fn an_h264_export_ingests_like_the_jpeg_export_of_the_same_phantoms() {
    let tmp = tempfile::tempdir().unwrap();
    let mut summaries = Vec::new();
    let mut files = Vec::new();
    for codec in ["jpeg", "h264"] {
        let out = tmp.path().join(codec);
        phantom(&out, &["--formats", "dicom-jpeg", "--dicom-codec", codec, "--seed", "7"]);
        let index = tmp.path().join(format!("index-{codec}"));
        let o = echovault(&index, &["ingest", out.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{codec}: {}", String::from_utf8_lossy(&o.stderr));
        let v = json(&o);
        summaries.push((v["ingested"].as_u64(), v["failed"].as_array().map(Vec::len), v["found"].as_u64(), v["frames"].as_u64()));
        files.push(dicoms(&out));
    }
    assert_eq!(summaries[0], summaries[1], "same counts");
    assert_eq!((summaries[0].0, summaries[0].3), (Some(2), Some(24)), "2 videos of 12 frames");
    // Embeddings of the same phantom close (cosine), not equal: both codecs are lossy.
    let embed = |p: &Path| -> Vec<f64> {
        let o = echovault(&tmp.path().join("none"), &["embed", "--video", p.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        json(&o)["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    for (j, h) in files[0].iter().zip(&files[1]) {
        let (a, b) = (embed(j), embed(h));
        let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let cos = dot / (a.iter().map(|x| x * x).sum::<f64>().sqrt() * b.iter().map(|x| x * x).sum::<f64>().sqrt());
        assert!(cos > 0.98 && cos < 1.0 - 1e-7, "{} vs {}: cosine {cos}", j.display(), h.display());
    }
}

#[test]
fn inspect_prints_metadata_and_dumps_frames_as_png() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("no-index");
    let path = file("examples_ybr_color.dcm");
    let out = echovault(&index, &["inspect", path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = json(&out);
    let meta: serde_json::Value = serde_json::from_str(&py(&["meta", path.to_str().unwrap()])).unwrap();
    assert_eq!((v["frames"].as_u64(), v["rows"].as_u64(), v["cols"].as_u64()), (Some(30), Some(240), Some(320)));
    assert_eq!(v["photometric"], "YBR_FULL_422");
    assert_eq!(v["transfer_syntax"], "1.2.840.10008.1.2.4.50");
    assert_eq!(v["study_uid"], meta["study_uid"]);
    assert_eq!(v["sop_uid"], meta["sop_uid"]);
    assert!(v["region"].is_null() && v["region_note"].as_str().unwrap().contains("inside"), "{v}");
    assert!(v["patient_key"].is_null(), "no index, no key: {v}");
    assert!(!out
        .stdout
        .windows(meta["patient_id"].as_str().unwrap().len() + 2)
        .any(|w| w == format!("\"{}\"", meta["patient_id"].as_str().unwrap()).as_bytes()));
    assert!(!index.exists(), "inspect must not create an index");

    let dump = tmp.path().join("frames");
    let out =
        echovault(&index, &["inspect", path.to_str().unwrap(), "--json", "--dump-frames", dump.to_str().unwrap(), "--frames", "0,5,29"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out)["dumped"], 3);
    let cine = DicomCine::open(path).unwrap();
    for i in [0usize, 5, 29] {
        let png = image::open(dump.join(format!("frame_{i:04}.png"))).unwrap().to_rgb8();
        assert_eq!(png.as_raw(), &cine.frame(i).unwrap().rgb, "frame {i}");
    }
    assert!(!dump.join("frame_0001.png").exists());
    let out = echovault(&index, &["inspect", path.to_str().unwrap(), "--dump-frames", dump.to_str().unwrap(), "--frames", "30"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("30 frames"));
}

#[test]
fn ingest_a_pacs_export_without_extensions() {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    std::fs::create_dir_all(export.join("S1")).unwrap();
    let secret_id = "ZZPATIENT4711";
    py(&["set-patient", file("examples_ybr_color.dcm").to_str().unwrap(), export.join("S1/IM0001").to_str().unwrap(), secret_id]);
    std::fs::copy(file("OBXXXX1A_rle.dcm"), export.join("S1/IM0002")).unwrap();
    std::fs::copy(file("US1_J2KI.dcm"), export.join("IM0003")).unwrap();
    std::fs::copy(file("test-SR.dcm"), export.join("SR0001")).unwrap();
    std::fs::write(export.join("README"), "not dicom").unwrap();
    let mut broken = std::fs::read(file("US1_UNCR.dcm")).unwrap();
    broken.truncate(broken.len() / 3);
    std::fs::write(export.join("IM0004"), broken).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&py(&["meta", export.join("S1/IM0001").to_str().unwrap()])).unwrap();
    let study = meta["study_uid"].as_str().unwrap();
    let reports = tmp.path().join("reports.csv");
    std::fs::write(&reports, format!("study,text\n{study},\"Normal left ventricular size and function, EF 60%.\"\n")).unwrap();

    let index = tmp.path().join("index");
    let out = echovault(&index, &["-v", "ingest", export.to_str().unwrap(), "--reports", reports.to_str().unwrap(), "--json"]);
    let v = json(&out);
    assert_eq!(out.status.code(), Some(3), "partial success: one truncated file. {v}");
    assert_eq!(v["ingested"], 3, "{v}");
    assert_eq!(v["reports"], 1, "{v}");
    assert_eq!(v["failed"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["failed"][0]["path"].as_str().unwrap().ends_with("IM0004"));
    assert!(v["failed"][0]["reason"].as_str().unwrap().contains("truncated"), "{v}");
    let passed = v["not_images"].as_array().unwrap();
    assert_eq!(passed.len(), 1, "{v}");
    assert!(passed[0]["reason"].as_str().unwrap().contains("structured report"), "{v}");
    for stream in [&out.stdout, &out.stderr] {
        assert!(!String::from_utf8_lossy(stream).contains(secret_id), "raw PatientID leaked");
    }

    // The video carries its study, date and a pseudonymous patient key; the report is found by text.
    let out = echovault(&index, &["search", "--text", "normal left ventricular function", "--kind", "report", "--json"]);
    let hits = json(&out);
    let hit = &hits["hits"][0];
    assert_eq!(hit["study"], study, "{hits}");
    let out = echovault(&index, &["search", "--text", "normal left ventricular function", "--kind", "video", "-k", "5", "--json"]);
    let hits = json(&out);
    let ours = hits["hits"].as_array().unwrap().iter().find(|h| h["study"] == study).unwrap_or_else(|| panic!("{hits}"));
    let key = ours["patient"].as_str().unwrap();
    assert!(key.starts_with("p-") && !key.contains(secret_id), "{key}");
    assert_eq!(ours["date"], "2016-05-03");
    let inspect = echovault(&index, &["inspect", export.join("S1/IM0001").to_str().unwrap(), "--json"]);
    assert_eq!(json(&inspect)["patient_key"], key, "inspect gives the key ingest stored");
    assert!(!String::from_utf8_lossy(&std::fs::read(index.join("LOG")).unwrap_or_default()).contains(secret_id));

    // A second run skips what is indexed and still fails on the broken file only.
    let out = echovault(&index, &["ingest", export.to_str().unwrap(), "--json"]);
    let v = json(&out);
    assert_eq!((v["ingested"].as_u64(), v["skipped"].as_u64()), (Some(0), Some(3)), "{v}");
}

#[test]
fn a_dicomdir_lists_the_images_to_ingest() {
    let dd = files()["dicomdirtests"].join("DICOMDIR");
    let want: Vec<PathBuf> = serde_json::from_str(&py(&["dicomdir", dd.to_str().unwrap()])).unwrap();
    assert!(want.len() > 5);
    let found = echovault::ingest::discover(&[files()["dicomdirtests"].clone()]).unwrap();
    assert_eq!(found.dicomdirs, vec![dd.clone()]);
    let mut got: Vec<PathBuf> = found.videos.iter().map(|d| d.path.clone()).collect();
    got.sort();
    assert_eq!(got, want);
    assert!(found.videos.iter().all(|d| d.kind == echovault::ingest::InputKind::Dicom));
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_dicomdir_cannot_reach_outside_its_export() {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("media/export");
    copy_tree(&files()["dicomdirtests"], &export);
    let want: Vec<PathBuf> = serde_json::from_str(&py(&["dicomdir", export.join("DICOMDIR").to_str().unwrap()])).unwrap();
    // Two records rewritten in place (same lengths): one climbs out with `..`, one is absolute.
    let mut dd = std::fs::read(export.join("DICOMDIR")).unwrap();
    for (from, to) in
        [(&b"77654033\\CR1\\6154 "[..], &b"..\\..\\outside\\6154"[..]), (&b"77654033\\CR2\\6247 "[..], &b"/etc\\passwd\\ab\\624"[..])]
    {
        let at = dd.windows(from.len()).position(|w| w == from).unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(from)));
        dd[at..at + from.len()].copy_from_slice(to);
    }
    std::fs::write(export.join("DICOMDIR"), dd).unwrap();
    // What the escaping record names exists: without the check it would be ingested.
    std::fs::create_dir_all(tmp.path().join("outside")).unwrap();
    std::fs::copy(file("US1_UNCR.dcm"), tmp.path().join("outside/6154")).unwrap();

    let found = echovault::ingest::discover(std::slice::from_ref(&export)).unwrap();
    assert_eq!(found.videos.len(), want.len() - 2, "{:?}", found.videos);
    assert!(found.videos.iter().all(|d| d.path.starts_with(&export)), "{:?}", found.videos);
    assert_eq!(found.failed.len(), 2, "{:?}", found.failed);
    assert!(found.failed.iter().all(|(_, why)| why.contains("leaves the export")), "{:?}", found.failed);
}
