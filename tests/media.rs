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
