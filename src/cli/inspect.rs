//! `echovault inspect FILE [--json] [--dump-frames DIR [--frames 0,5,9]]`: what echovault reads
//! from one DICOM or video file, and its decoded frames as PNG (8-bit RGB, before any crop or
//! resize). Needs no model; the patient key uses the secret of the index at `--index` when
//! there is one there (the key ingest would store), and is `null` otherwise.

use super::{Global, IndexOpts};
use anyhow::Context;
use echovault::media::dicom::{is_dicom, DicomCine};
use echovault::media::Frame;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// A DICOM file (recognised by content, whatever its name) or an AVI/MP4/MOV video.
    pub file: PathBuf,
    /// Write decoded frames as DIR/frame_NNNN.png.
    #[arg(long, value_name = "DIR")]
    pub dump_frames: Option<PathBuf>,
    /// Frames to dump, e.g. 0,5,9 (default: all).
    #[arg(long, value_delimiter = ',', requires = "dump_frames")]
    pub frames: Option<Vec<usize>>,
    /// Decode every frame N times and report decoded frames per second (median over the N
    /// passes; DICOM only). `tools/bench-dicom` compares it with pydicom.
    #[arg(long, value_name = "N")]
    pub time_decode: Option<usize>,
    #[command(flatten)]
    pub index: IndexOpts,
}

fn write_png(dir: &Path, i: usize, f: &Frame) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("frame_{i:04}.png"));
    let img = image::RgbImage::from_raw(f.width as u32, f.height as u32, f.rgb.clone()).context("frame buffer of the wrong size")?;
    img.save(&path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub fn run(g: &Global, a: &InspectArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(a.file.is_file(), "{}: no such file", a.file.display());
    if let Some(dir) = &a.dump_frames {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let wanted = |i: usize| a.frames.as_ref().is_none_or(|f| f.contains(&i));
    let (mut out, written) = if is_dicom(&a.file) { inspect_dicom(g, a, &wanted)? } else { inspect_video(a, &wanted)? };
    out["file"] = json!(a.file.display().to_string());
    if a.dump_frames.is_some() {
        out["dumped"] = json!(written);
    }
    if g.json {
        println!("{out}");
    } else if let Value::Object(m) = &out {
        for (k, v) in m {
            println!("{k:>22}: {}", if let Value::String(s) = v { s.clone() } else { v.to_string() });
        }
    }
    Ok(0)
}

fn inspect_dicom(g: &Global, a: &InspectArgs, wanted: &dyn Fn(usize) -> bool) -> anyhow::Result<(Value, usize)> {
    let cine = DicomCine::open(&a.file).map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    let info = cine.info();
    if let Some(f) = &a.frames {
        if let Some(bad) = f.iter().find(|&&i| i >= info.frames) {
            anyhow::bail!("--frames {bad}: the file has {} frames (0..{})", info.frames, info.frames - 1);
        }
    }
    let secret =
        echovault::index::peek_secret(&g.index).with_context(|| format!("reading the patient-key secret of {}", g.index.display()))?;
    // A secret kept outside the index: from --secret-file, checked against the index's fingerprint.
    let secret = match (secret, &g.secret_file) {
        (None, Some(file)) if g.index.is_dir() => {
            let mut index = echovault::index::Index::open_reader(&g.index)?;
            index.use_secret_file(file)?;
            Some(*index.secret()?)
        }
        (s, _) => s,
    };
    let patient_key = match (&info.patient_id, secret) {
        (Some(p), Some(s)) => Some(echovault::pseudonym::patient_key(&s, p.expose())),
        _ => None,
    };
    let (region, region_note) = match info.crop_region() {
        Ok(r) => (Some(r), None),
        Err(why) => (None, Some(why)),
    };
    let out = json!({
        "format": "dicom",
        "frames": info.frames,
        "rows": info.rows,
        "cols": info.cols,
        "photometric": info.photometric,
        "samples_per_pixel": info.samples,
        "bits_allocated": info.bits_allocated,
        "bits_stored": info.bits_stored,
        "planar_configuration": info.planar,
        "transfer_syntax": info.transfer_syntax,
        "transfer_syntax_name": info.transfer_syntax_name,
        "fps": info.fps,
        "patient_key": patient_key,
        "has_patient_id": info.patient_id.is_some(),
        "study_uid": info.study_uid,
        "series_uid": info.series_uid,
        "sop_uid": info.sop_uid,
        "sop_class_uid": info.sop_class_uid,
        "study_date": info.study_date,
        "study_time": info.study_time,
        "modality": info.modality,
        "manufacturer": info.manufacturer,
        "model": info.model,
        "burned_in_annotation": info.burned_in_annotation,
        "regions": info.regions,
        "region": region,
        "region_note": region_note,
    });
    let mut out = out;
    if let Some(n) = a.time_decode {
        let mut rates = Vec::new();
        for _ in 0..n.max(1) {
            let t0 = std::time::Instant::now();
            for i in 0..info.frames {
                std::hint::black_box(cine.frame(i).map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?);
            }
            rates.push(info.frames as f64 / t0.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        out["decode_frames_per_s"] = json!(rates[rates.len() / 2]);
        out["decode_passes"] = json!(rates.len());
    }
    let mut written = 0;
    if let Some(dir) = &a.dump_frames {
        for i in (0..info.frames).filter(|&i| wanted(i)) {
            let f = cine.frame(i).map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
            write_png(dir, i, &f)?;
            written += 1;
        }
    }
    Ok((out, written))
}

#[cfg(feature = "video")]
fn inspect_video(a: &InspectArgs, wanted: &dyn Fn(usize) -> bool) -> anyhow::Result<(Value, usize)> {
    let dump = a.dump_frames.is_some();
    let (info, frames) = echovault::media::video::read_video_where(&a.file, |i| dump && wanted(i), |_| false)?;
    let mut written = 0;
    if let Some(dir) = &a.dump_frames {
        let picked: Vec<usize> = (0..info.frames).filter(|&i| wanted(i)).collect();
        if let Some(f) = &a.frames {
            if let Some(bad) = f.iter().find(|&&i| i >= info.frames) {
                anyhow::bail!("--frames {bad}: the file has {} frames", info.frames);
            }
        }
        for (i, f) in picked.into_iter().zip(&frames) {
            write_png(dir, i, f)?;
            written += 1;
        }
    }
    let out = json!({
        "format": "video",
        "frames": info.frames,
        "rows": info.height,
        "cols": info.width,
        "photometric": "RGB",
        "transfer_syntax": null,
        "fps": info.fps,
        "patient_key": null,
        "study_uid": null,
        "sop_uid": null,
        "region": null,
    });
    Ok((out, written))
}

#[cfg(not(feature = "video"))]
fn inspect_video(a: &InspectArgs, _: &dyn Fn(usize) -> bool) -> anyhow::Result<(Value, usize)> {
    anyhow::bail!("{}: not a DICOM file, and this echovault was built without the `video` feature", a.file.display())
}
