//! `--mask` (issue 19 part 4): what lies outside the ultrasound image is blanked before
//! preprocessing. Checked against the phantom generator's geometry (src/phantom/draw.rs: the
//! sector's apex at (0.5, 0.07) of the image side, radius 0.80, half-angle 0.70 rad; the HR and
//! view labels in the top corners; the ECG strip along the bottom, its baseline at 0.93 and its
//! sweep cursor reaching 0.05 of the side + 2 pixels above it), not against our own mask: every
//! pixel outside the sector is 0, every pixel well inside is as decoded. DICOM regions: outside
//! the boxes 0, inside unchanged. `--mask off` changes nothing.

#![allow(clippy::unwrap_used)]

mod common;

use common::root;
use echovault::media::{read_cine, Frame, FrameSampling, MaskMode, ReadOptions};
use std::path::Path;
use std::process::Command;

const APEX: (f64, f64) = (0.5, 0.07);
const SECTOR_RADIUS: f64 = 0.80;
const SECTOR_HALF_ANGLE: f64 = 0.70;

/// Whether the centre of pixel (x, y) of an `n`-pixel phantom lies in its sector (draw.rs's
/// test, with a margin in pixels: positive = shrunk, negative = grown).
fn in_sector(x: usize, y: usize, n: usize, margin: f64) -> bool {
    let p = ((x as f64 + 0.5) / n as f64, (y as f64 + 0.5) / n as f64);
    let (dx, dy) = (p.0 - APEX.0, p.1 - APEX.1);
    let r = (dx * dx + dy * dy).sqrt();
    let m = margin / n as f64;
    // Distance to each straight edge of the cone: r·sin(half-angle − |angle|).
    let edge = r * (SECTOR_HALF_ANGLE - dx.atan2(dy).abs()).sin();
    r <= SECTOR_RADIUS - m && dy >= m && edge >= m
}

fn opts(mask: MaskMode, crop_regions: bool) -> ReadOptions {
    ReadOptions { sampling: FrameSampling::ALL, max_frames: 0, crop_regions, mask }
}

fn frames(file: &Path, mask: MaskMode, crop: bool) -> Vec<Frame> {
    read_cine(file, &opts(mask, crop), Ok).unwrap_or_else(|e| panic!("{}: {e}", file.display())).1.items
}

fn phantoms(dir: &Path, extra: &[&str]) -> Vec<echovault::phantom::Truth> {
    let o = Command::new(env!("CARGO_BIN_EXE_echovault"))
        .args(["phantom", "--out", dir.to_str().unwrap(), "--force", "--studies", "1:1", "--seed", "7"])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    echovault::phantom::read_manifest(&dir.join("manifest.jsonl")).unwrap()
}

/// On phantom cines of every format (lossless DICOM, JPEG DICOM, H.264 AVI), `--mask auto`
/// leaves no pixel outside the sector lit (lossy ones: none more than 3 pixels outside, where
/// the codec smears the edge) — the burned-in labels and the whole ECG strip among them — and
/// leaves every pixel 3 or more pixels inside the sector as decoded (the opening trims the apex
/// tip; the test allows that margin and requires 98 % of the sector unchanged).
/// `outside-region` on the phantom DICOM blanks below its one region (rows past 0.9 of the side)
/// and nothing inside it; on AVIs (no regions) it is `auto`.
#[test]
fn auto_blanks_the_phantoms_text_and_ecg_and_keeps_the_sector() {
    let tmp = tempfile::tempdir().unwrap();
    let truth = phantoms(tmp.path(), &["--formats", "dicom-native,dicom-jpeg,avi", "--patients", "3"]);
    assert_eq!(truth.len(), 3);
    let n = 112;
    let ecg_top = (n as f64 * 0.93) as usize - (n as f64 * 0.05) as usize - 2;
    for t in &truth {
        let file = tmp.path().join(&t.file);
        let plain = frames(&file, MaskMode::Off, false);
        let masked = frames(&file, MaskMode::Auto, false);
        assert_eq!(plain.len(), masked.len());
        // Something was there to blank: the labels and the ECG are lit in the plain frames.
        let lit = |f: &Frame, x: usize, y: usize| f.rgb[(y * n + x) * 3..(y * n + x) * 3 + 3].iter().any(|v| *v > 0);
        let outside_lit: usize =
            (0..n).flat_map(|y| (0..n).map(move |x| (x, y))).filter(|&(x, y)| !in_sector(x, y, n, 0.0) && lit(&plain[0], x, y)).count();
        assert!(outside_lit > 100, "{}: only {outside_lit} pixels lit outside the sector before masking", t.file);
        // Lossy codecs ring at the sector's edge, and the ringing moves from frame to frame: a
        // fringe of up to 3 pixels outside the sector may be kept (never the labels or the ECG
        // strip, checked on their own).
        let fringe = if t.format == echovault::phantom::Format::DicomNative { 0.0 } else { -3.0 };
        let (mut kept, mut sector) = (0usize, 0usize);
        for (p, m) in plain.iter().zip(&masked) {
            assert_eq!((m.width, m.height), (n, n));
            for y in 0..n {
                for x in 0..n {
                    let at = (y * n + x) * 3;
                    if !in_sector(x, y, n, fringe) || y >= ecg_top {
                        assert_eq!(&m.rgb[at..at + 3], &[0, 0, 0], "{}: pixel ({x},{y}) outside the sector is lit", t.file);
                    }
                    if in_sector(x, y, n, 3.0) {
                        assert_eq!(&m.rgb[at..at + 3], &p.rgb[at..at + 3], "{}: pixel ({x},{y}) inside the sector changed", t.file);
                    }
                    if in_sector(x, y, n, 0.0) {
                        sector += 1;
                        kept += usize::from(m.rgb[at..at + 3] == p.rgb[at..at + 3]);
                    }
                }
            }
        }
        assert!(kept as f64 >= 0.98 * sector as f64, "{}: {kept} of {sector} sector pixels unchanged", t.file);
        // The labels' boxes (draw.rs: 4 px per character from (2, 2), and "A4C" at the right).
        for f in &masked {
            for y in 2..7 {
                for x in (2..2 + 4 * 6).chain(n - 30..n - 2) {
                    assert!(!lit(f, x, y), "{}: label pixel ({x},{y}) lit", t.file);
                }
            }
        }
        let region = frames(&file, MaskMode::OutsideRegion, false);
        if t.file.ends_with(".avi") {
            assert!(region == masked, "{}: a video has no regions: outside-region is auto", t.file);
        } else {
            // The phantom's one region spans every column and rows 0..=0.9·side (its labels
            // and the top of its ECG strip lie inside it: regions alone do not blank them).
            let r = echovault::media::dicom::DicomCine::open(&file).unwrap().info().crop_region().unwrap();
            assert_eq!((r.x0, r.y0, r.x1, r.y1), (0, 0, n as u32 - 1, n as u32 * 9 / 10));
            for (p, m) in plain.iter().zip(&region) {
                let cut = (r.y1 as usize + 1) * n * 3;
                assert!(m.rgb[..cut] == p.rgb[..cut], "{}: pixels inside the region changed", t.file);
                assert!(m.rgb[cut..].iter().all(|v| *v == 0), "{}: pixels below the region are lit", t.file);
                assert!(p.rgb[cut..].iter().any(|v| *v > 0), "{}: the ECG below the region is lit before masking", t.file);
            }
        }
    }
}

/// A DICOM cine with an ultrasound region smaller than the image (columns 8..55, rows 4..59 of
/// 64×64): `outside-region` zeroes every pixel outside the box and keeps every pixel inside;
/// with `--crop-region` the crop is the box, unchanged.
#[test]
fn outside_region_blanks_outside_the_dicom_region_boxes() {
    let file = root().join("tests/fixtures/streaming/phantom-64-region.dcm");
    let plain = frames(&file, MaskMode::Off, false);
    let masked = frames(&file, MaskMode::OutsideRegion, false);
    assert_eq!(plain.len(), masked.len());
    let mut blanked = 0;
    for (p, m) in plain.iter().zip(&masked) {
        for y in 0..64 {
            for x in 0..64 {
                let at = (y * 64 + x) * 3;
                if (8..=55).contains(&x) && (4..=59).contains(&y) {
                    assert_eq!(&m.rgb[at..at + 3], &p.rgb[at..at + 3], "({x},{y}) inside the region changed");
                } else {
                    assert_eq!(&m.rgb[at..at + 3], &[0, 0, 0], "({x},{y}) outside the region is lit");
                    blanked += usize::from(p.rgb[at..at + 3].iter().any(|v| *v > 0));
                }
            }
        }
    }
    assert!(blanked > 0, "the fixture has lit pixels outside its region to blank");
    assert_eq!(frames(&file, MaskMode::OutsideRegion, true), frames(&file, MaskMode::Off, true));
}

/// A cine in which nothing moves (one frame) has no sector to find: `--mask auto` refuses it
/// with an error naming the file, never embeds it unmasked.
#[test]
fn auto_refuses_a_cine_without_motion() {
    let tmp = tempfile::tempdir().unwrap();
    let truth = phantoms(tmp.path(), &["--formats", "dicom-native", "--num-frames", "1", "--patients", "1"]);
    let file = tmp.path().join(&truth[0].file);
    let err = read_cine(&file, &opts(MaskMode::Auto, false), Ok).unwrap_err().to_string();
    assert!(err.contains(&truth[0].file) || err.contains(file.file_name().unwrap().to_str().unwrap()), "{err}");
    assert!(err.contains("2 frames"), "{err}");
    assert_eq!(frames(&file, MaskMode::Off, false).len(), 1);
}

/// `embed --video --mask off` prints the embedding of the command without the flag, bit for
/// bit; `--mask auto` a different one (the blanked labels and ECG change what the model sees);
/// a bad mode is a usage error.
#[test]
fn mask_off_embeds_as_before_and_auto_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let truth = phantoms(tmp.path(), &["--formats", "avi", "--patients", "1"]);
    let file = tmp.path().join(&truth[0].file);
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_echovault"))
            .args(["embed", "--device", "cpu", "--json", "--model", root().join("data-samples/echovault-tiny").to_str().unwrap()])
            .args(["--video", file.to_str().unwrap()])
            .args(extra)
            .env_remove("ECHOVAULT_MODEL")
            .output()
            .unwrap()
    };
    let emb = |extra: &[&str]| -> Vec<f32> {
        let o = run(extra);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_value(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["embedding"].clone()).unwrap()
    };
    let before = emb(&[]);
    assert_eq!(emb(&["--mask", "off"]), before);
    let auto = emb(&["--mask", "auto"]);
    let diff = auto.iter().zip(&before).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff > 1e-4, "--mask auto embeds the same as off (max diff {diff})");
    let bad = run(&["--mask", "sector"]);
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// `ingest --mask auto` stores what `search --video --mask auto` embeds, for a DICOM cine and a
/// video file alike: each finds itself with cosine 1 only with the same mask.
#[test]
fn ingest_and_search_mask_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let truth = phantoms(tmp.path(), &["--formats", "avi,dicom-native", "--patients", "2"]);
    let index = tmp.path().join("index");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_echovault"))
            .args(["--json", "--index", index.to_str().unwrap(), "--device", "cpu"])
            .args(["--model", root().join("data-samples/echovault-tiny").to_str().unwrap()])
            .args(args)
            .env_remove("ECHOVAULT_MODEL")
            .env_remove("ECHOVAULT_INDEX")
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let files: Vec<String> = truth.iter().map(|t| tmp.path().join(&t.file).to_str().unwrap().to_owned()).collect();
    let mut args = vec!["ingest", "--mask", "auto", "--progress", "none"];
    args.extend(files.iter().map(String::as_str));
    assert_eq!(run(&args)["ingested"], 2);
    for f in &files {
        let score = |mask: &str| run(&["search", "--video", f, "-k", "1", "--mask", mask])["hits"][0]["score"].as_f64().unwrap();
        let (auto, off) = (score("auto"), score("off"));
        assert!(auto > 0.99999, "{f}: the masked cine finds itself ({auto})");
        assert!(off < auto - 1e-6, "{f}: unmasked frames are another embedding ({off} vs {auto})");
    }
}
