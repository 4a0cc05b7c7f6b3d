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
fn lossy_jpeg_frames_are_within_tolerance_of_pydicom() {
    for (name, frames) in [
        ("examples_ybr_color.dcm", 30),
        ("color3d_jpeg_baseline.dcm", 120),
        ("SC_rgb_jpeg_dcmtk.dcm", 1),
        ("SC_rgb_dcmtk_+eb+cy+s2.dcm", 1),
        ("SC_rgb_dcmtk_+eb+cr.dcm", 1),
        ("examples_jpeg2k.dcm", 1),
        ("US1_J2KI.dcm", 1),
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

#[test]
fn encapsulated_video_is_a_clear_unsupported_error() {
    // The JPEG cine relabelled as H.264: the error names the transfer syntax.
    let tmp = tempfile::tempdir().unwrap();
    let relabelled = tmp.path().join("relabelled.dcm");
    py(&["set-ts", file("examples_ybr_color.dcm").to_str().unwrap(), relabelled.to_str().unwrap(), "1.2.840.10008.1.2.4.102"]);
    let bytes = std::fs::read(&relabelled).unwrap();
    let e = open_bytes(tmp.path(), "h264.dcm", &bytes).unwrap_err();
    assert!(e.contains("unsupported transfer syntax") && e.contains("1.2.840.10008.1.2.4.102") && e.contains("H.264"), "{e}");
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
