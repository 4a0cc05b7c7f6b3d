//! Video decoding through video-rs (FFmpeg) against the `ffmpeg` command line: every frame must
//! be byte-identical to `ffmpeg -pix_fmt rgb24`.
#![cfg(feature = "video")]
#![allow(clippy::unwrap_used)]

use echovault::media::{video::read_video, FrameSampling};
use std::path::PathBuf;
use std::process::Command;

fn ffmpeg_rgb(path: &std::path::Path) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-i", path.to_str().unwrap(), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("ffmpeg on PATH (tools/setup installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn avi_and_mp4_frames_equal_ffmpeg_rgb24() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data-samples/clips");
    let mut checked = 0;
    for name in ["a4c_normal_01.avi", "a4c_reduced_02.avi", "a4c_normal_04.mp4"] {
        let p = dir.join(name);
        let (info, frames) = read_video(&p, FrameSampling::ALL).unwrap();
        let reference = ffmpeg_rgb(&p);
        let ours: Vec<u8> = frames.iter().flat_map(|f| f.rgb.iter().copied()).collect();
        assert_eq!(info.frames, 24, "{name}");
        assert_eq!((info.width, info.height), (112, 96));
        assert!((info.fps - 25.0).abs() < 1e-6, "{name}: fps {}", info.fps);
        assert_eq!(ours.len(), reference.len(), "{name}");
        assert!(ours == reference, "{name}: frames differ from ffmpeg");
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn sampling_keeps_the_selected_frames() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data-samples/clips/a4c_reduced_05.mp4");
    let (_, all) = read_video(&p, FrameSampling::ALL).unwrap();
    let (_, some) = read_video(&p, "1:9:4".parse().unwrap()).unwrap();
    assert_eq!(some, vec![all[1].clone(), all[5].clone()]);
    let (_, zs) = read_video(&p, FrameSampling::ZERO_SHOT).unwrap();
    assert_eq!(zs.len(), 12, "frames 0,2,..,22 of 24");
}

#[test]
fn broken_files_are_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("e.avi");
    std::fs::write(&empty, b"").unwrap();
    let err = read_video(&empty, FrameSampling::ALL).unwrap_err().to_string();
    assert!(err.contains("e.avi") && err.contains("empty"), "{err}");
    let junk = tmp.path().join("j.mp4");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    let err = read_video(&junk, FrameSampling::ALL).unwrap_err().to_string();
    assert!(err.contains("j.mp4"), "{err}");
    let full = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data-samples/clips/a4c_normal_04.mp4")).unwrap();
    let cut = tmp.path().join("cut.mp4");
    std::fs::write(&cut, &full[..full.len() / 3]).unwrap();
    // A truncated MP4 either decodes its first frames or fails with a named error; never a panic.
    match read_video(&cut, FrameSampling::ALL) {
        Ok((info, frames)) => assert!(info.frames < 24 && !frames.is_empty()),
        Err(e) => assert!(e.to_string().contains("cut.mp4"), "{e}"),
    }
}

#[test]
fn mov_container_frames_equal_ffmpeg_rgb24() {
    // The same H.264 stream remuxed into QuickTime by the ffmpeg CLI (no re-encode).
    let tmp = tempfile::tempdir().unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data-samples/clips/a4c_normal_04.mp4");
    let mov = tmp.path().join("clip.mov");
    let out = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-i", src.to_str().unwrap(), "-c", "copy", mov.to_str().unwrap()])
        .output()
        .expect("ffmpeg on PATH");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (info, frames) = read_video(&mov, FrameSampling::ALL).unwrap();
    let ours: Vec<u8> = frames.iter().flat_map(|f| f.rgb.iter().copied()).collect();
    assert_eq!(info.frames, 24);
    assert!((info.fps - 25.0).abs() < 1e-6, "fps {}", info.fps);
    assert!(ours == ffmpeg_rgb(&mov), "MOV frames differ from ffmpeg");
}

// ---- Streaming frames through preprocessing, the frame bound, --crop-region (issue 20) ----

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tiny() -> (echovault::model::Clip, echovault::media::Preprocess) {
    let model = echovault::model::Clip::load(&root().join("data-samples/echovault-tiny"), tch::Device::Cpu, Default::default()).unwrap();
    let pre = echovault::media::Preprocess {
        size: model.image_size(),
        mean: model.config.mean,
        std: model.config.std,
        order: echovault::media::ChannelOrder::Bgr,
    };
    (model, pre)
}

fn read(sampling: FrameSampling, max_frames: usize, crop_regions: bool) -> echovault::media::ReadOptions {
    echovault::media::ReadOptions { sampling, max_frames, crop_regions, mask: echovault::media::MaskMode::Off }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Embeddings made frame by frame (each frame resized to 224² bytes as it is decoded, f32 only
/// per batch) equal those of the whole-video path they replaced, stored from commit 0c9b637 in
/// tests/fixtures/streaming/embeddings-before.json: AVI, a non-square 1016×708 MP4, a DICOM
/// cine, all frames and the zero-shot preset. The same machine gives the same bits; 1e-5 leaves
/// room for another CPU's kernels.
#[test]
fn streamed_embeddings_equal_the_whole_video_path_they_replaced() {
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/streaming/embeddings-before.json")).unwrap()).unwrap();
    let (model, pre) = tiny();
    let cases = golden["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for c in cases {
        let file = root().join(c["file"].as_str().unwrap());
        let sampling: FrameSampling = c["sampling"].as_str().unwrap().parse().unwrap();
        let e =
            echovault::engine::embed_video(&model, &pre, &file, &read(sampling, echovault::media::DEFAULT_MAX_FRAMES, false), 32).unwrap();
        let want_frames = c["frames"].as_array().unwrap();
        assert_eq!(e.embedding.frames.len(), want_frames.len(), "{file:?}");
        assert_eq!(e.info.frames as u64, c["frames_decoded"].as_u64().unwrap());
        assert_eq!((e.sampling, e.selected), (sampling, want_frames.len()), "under the bound: nothing thinned");
        let v: Vec<f32> = serde_json::from_value(c["embedding"].clone()).unwrap();
        assert!(max_diff(&e.embedding.video, &v) <= 1e-5, "{file:?} {sampling}: video embedding moved");
        for (ours, theirs) in e.embedding.frames.iter().zip(want_frames) {
            let theirs: Vec<f32> = serde_json::from_value(theirs.clone()).unwrap();
            assert!(max_diff(ours, &theirs) <= 1e-5, "{file:?} {sampling}: a frame embedding moved");
        }
    }
}

/// Past the bound a cine is thinned evenly: the frames kept are those of the sampling with its
/// step widened (24 frames, at most 5: every 5th, 0..20), byte-identical to ffmpeg's decode of
/// those frames, and embedded as the same frames asked for explicitly would be. A DICOM cine
/// (random access: only the kept frames are decoded) likewise.
#[test]
fn a_cine_past_the_bound_is_thinned_evenly_to_the_frames_a_wider_step_selects() {
    let avi = root().join("data-samples/clips/a4c_normal_01.avi");
    let (info, s) = echovault::media::read_cine(&avi, &read(FrameSampling::ALL, 5, false), Ok).unwrap();
    assert_eq!((info.frames, s.selected, s.items.len(), s.capped()), (24, 24, 5, true));
    assert_eq!(s.sampling, "0::5".parse().unwrap());
    let reference = ffmpeg_rgb(&avi);
    let frame_bytes = 112 * 96 * 3;
    for (row, f) in s.items.iter().enumerate() {
        let i = s.sampling.frame_of_row(row);
        assert!(f.rgb == reference[i * frame_bytes..(i + 1) * frame_bytes], "kept row {row} is frame {i}");
    }
    let (model, pre) = tiny();
    for (file, n, max, step) in [(avi.clone(), 24usize, 5, 5usize), (root().join("tests/fixtures/streaming/phantom-64.dcm"), 8, 3, 3)] {
        let capped = echovault::engine::embed_video(&model, &pre, &file, &read(FrameSampling::ALL, max, false), 32).unwrap();
        let explicit = FrameSampling { start: 0, end: None, step };
        let asked = echovault::engine::embed_video(&model, &pre, &file, &read(explicit, 0, false), 32).unwrap();
        assert_eq!((capped.sampling, capped.selected, capped.embedding.frames.len()), (explicit, n, n.div_ceil(step)), "{file:?}");
        assert!(max_diff(&capped.embedding.video, &asked.embedding.video) <= 1e-6, "{file:?}");
    }
    let zs = echovault::media::read_cine(&avi, &read(FrameSampling::ZERO_SHOT, 4, false), Ok).unwrap().1;
    assert_eq!((zs.sampling.to_string(), zs.selected, zs.items.len()), ("0:40:6".to_owned(), 12, 4), "12 of 24 selected, every 3rd kept");
}

/// `--crop-region` reaches the one decoding path of the commands that take a video: with it a
/// DICOM cine's frames are cut to its ultrasound region (columns 8..55, rows 4..59 of 64×64),
/// exactly as the uncropped frames cropped by hand; without it they are whole. `embed --video
/// --crop-region` prints the embedding of the cropped frames.
#[test]
fn crop_region_applies_to_the_decoding_path_of_every_command() {
    let file = root().join("tests/fixtures/streaming/phantom-64-region.dcm");
    let (_, whole) = echovault::media::read_cine(&file, &read(FrameSampling::ALL, 0, false), Ok).unwrap();
    let (_, cropped) = echovault::media::read_cine(&file, &read(FrameSampling::ALL, 0, true), Ok).unwrap();
    assert_eq!((whole.items[0].width, whole.items[0].height), (64, 64));
    assert_eq!(cropped.items.len(), 8);
    for (w, c) in whole.items.iter().zip(&cropped.items) {
        assert_eq!(&w.crop(8, 4, 48, 56).unwrap(), c);
    }
    let (model, pre) = tiny();
    let by_hand: Vec<echovault::media::Frame> = cropped.items.clone();
    let resized: Vec<echovault::media::Frame> = by_hand.iter().map(|f| pre.resize(f).unwrap()).collect();
    let rows = echovault::engine::embed_images(&model, &pre, &resized.iter().collect::<Vec<_>>(), 32).unwrap();
    let want = echovault::engine::mean_unit(&rows).unwrap();
    let cli = |extra: &[&str]| -> Vec<f32> {
        let o = Command::new(env!("CARGO_BIN_EXE_echovault"))
            .args(["embed", "--device", "cpu", "--json", "--model", root().join("data-samples/echovault-tiny").to_str().unwrap()])
            .args(["--video", file.to_str().unwrap()])
            .args(extra)
            .env_remove("ECHOVAULT_MODEL")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_value(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["embedding"].clone()).unwrap()
    };
    let with = cli(&["--crop-region"]);
    assert!(max_diff(&with, &want) <= 1e-6, "embed --video --crop-region embeds the region");
    assert!(max_diff(&cli(&[]), &want) > 1e-3, "without the flag the whole frame is embedded");
}

/// `search --video --crop-region` embeds a DICOM cine as `ingest --crop-region` stored it: the
/// file finds itself with cosine 1; without the flag (whole frames) it does not.
#[test]
fn search_video_with_crop_region_finds_the_cine_ingest_cropped() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("index");
    let file = root().join("tests/fixtures/streaming/phantom-64-region.dcm");
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
    let s = run(&["ingest", file.to_str().unwrap(), "--crop-region", "--progress", "none"]);
    assert_eq!(s["ingested"], 1, "{s}");
    let score = |extra: &[&str]| {
        let mut args = vec!["search", "--video", file.to_str().unwrap(), "-k", "1"];
        args.extend_from_slice(extra);
        run(&args)["hits"][0]["score"].as_f64().unwrap()
    };
    assert!(score(&["--crop-region"]) > 0.99999, "the cropped cine finds itself");
    assert!(score(&[]) < 0.9999, "whole frames are another embedding");
}

/// An AVI whose header counts ticks (video-rs writes a 1/600 s time base) is measured at its
/// frames' own spacing: FFmpeg guesses 120 fps for an 8-frame 30 fps phantom, which took its
/// 141 ticks for 28 frames and warned of a file cut short that was whole.
#[test]
fn short_phantom_avis_announce_the_frames_they_hold() {
    let tmp = tempfile::tempdir().unwrap();
    for frames in [4usize, 8, 13, 32] {
        let out = tmp.path().join(format!("n{frames}"));
        let status = Command::new(env!("CARGO_BIN_EXE_echovault"))
            .args(["phantom", "--out", out.to_str().unwrap(), "--patients", "1", "--studies", "1:1", "--formats", "avi"])
            .args(["--num-frames", &frames.to_string()])
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        let avi = std::fs::read_dir(out.join("avi"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "avi"))
            .unwrap();
        let (info, _) = read_video(&avi, FrameSampling::ALL).unwrap();
        assert_eq!(info.frames, frames);
        assert!(!info.announced_exact, "video-rs's AVI header counts ticks");
        let announced = info.announced.unwrap();
        assert!(announced.abs_diff(frames) <= 1, "{frames} frames announced as {announced}");
        assert_eq!(info.frame_count_mismatch(), None, "{frames} frames");
    }
}
