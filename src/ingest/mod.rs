//! Ingest: discover inputs (videos, DICOM files, DICOMDIRs), decode and embed each cine, write
//! each one (with its sidecar report and its study) as one atomic index batch. Patient ids are
//! pseudonymised (keyed hash) before anything is stored or logged. One bad file is recorded in the index's
//! error table and never stops the run; files already indexed (same content hash) are skipped,
//! so a re-run continues where an interrupted one stopped.

mod discover;
mod reports;

pub use discover::{discover, Discovered, Found, InputKind};
pub use reports::{read_reports, ReportEntry};

use crate::engine::{mean_unit, Engine};
use crate::error::Error;
use crate::media::dicom::DicomCine;
use crate::media::Frame;
use crate::pseudonym::patient_key;
use echovault_index::{ItemId, ItemRecord, Kind};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

/// What to ingest besides the files found.
#[derive(Clone, Debug, Default)]
pub struct IngestOptions {
    /// Report manifest: JSONL, CSV, a `.txt` file or a folder of them (see [`read_reports`]).
    pub reports: Option<PathBuf>,
    /// Crop DICOM frames to their ultrasound region where one is present and lies inside the
    /// image (off by default: the reference embeds whole frames).
    pub crop_regions: bool,
}

/// One failed input.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    /// The input path.
    pub path: String,
    /// Why it failed.
    pub reason: String,
}

/// The outcome of an ingest run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IngestSummary {
    /// Videos embedded and written in this run.
    pub ingested: usize,
    /// Inputs skipped (already indexed).
    pub skipped: usize,
    /// Reports embedded and written in this run.
    pub reports: usize,
    /// Inputs that failed, with reasons.
    pub failed: Vec<Failure>,
    /// DICOM objects passed over because they hold no image (structured reports, presentation
    /// states, DICOMDIR records of other types), with reasons.
    pub not_images: Vec<Failure>,
    /// Ids of the videos written in this run.
    pub ids: Vec<String>,
}

/// Content id of a file: the first 128 bits of its SHA-256, hex.
pub fn content_id(path: &Path) -> Result<String, Error> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(&h.finalize()[..16]))
}

/// Item id of a study's report.
pub fn report_id(study: &str) -> String {
    format!("report:{study}")
}

/// Item id of a study.
pub fn study_id(study: &str) -> String {
    format!("study:{study}")
}

/// Ingests `paths` (files or directories) into the engine's index. `progress` is called after
/// each input with (done, total).
pub fn ingest(
    engine: &Engine,
    paths: &[PathBuf],
    opts: &IngestOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<IngestSummary, Error> {
    let found = discover(paths)?;
    let mut summary = IngestSummary::default();
    let total = found.videos.len();
    for (path, reason) in &found.skipped {
        summary.not_images.push(Failure { path: path.display().to_string(), reason: reason.clone() });
    }
    let mut studies = HashMap::new();
    for (i, video) in found.videos.iter().enumerate() {
        match ingest_one(engine, video, opts, &mut studies, &mut summary) {
            Ok(()) => {}
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(file = %video.path.display(), "ingest failed: {reason}");
                let mut b = engine.index.batch();
                b.put_error(&video.path.to_string_lossy(), Some(&reason));
                engine.index.commit(b)?;
                summary.failed.push(Failure { path: video.path.display().to_string(), reason });
            }
        }
        progress(i + 1, total);
    }
    if let Some(manifest) = &opts.reports {
        for entry in read_reports(manifest)? {
            write_report(engine, &entry, &manifest.display().to_string())?;
            summary.reports += 1;
        }
    }
    // Snapshot the graphs now, so the next open replays nothing.
    engine.index.checkpoint()?;
    Ok(summary)
}

/// A decoded input, ready to embed.
struct Decoded {
    frames: Vec<Frame>,
    total_frames: usize,
    fps: Option<f64>,
    study: String,
    patient: Option<String>,
    date: Option<String>,
    extra: BTreeMap<String, String>,
}

#[cfg(feature = "video")]
fn decode_video(engine: &Engine, path: &Path, id: &str) -> Result<Decoded, Error> {
    let (info, frames) = crate::media::video::read_video(path, engine.sampling)?;
    let mut extra = BTreeMap::new();
    extra.insert("size".into(), format!("{}x{}", info.width, info.height));
    Ok(Decoded {
        frames,
        total_frames: info.frames,
        fps: Some(info.fps),
        // Without DICOM study ids, a video file is its own study (its name is the study id).
        study: path.file_stem().and_then(|s| s.to_str()).unwrap_or(id).to_owned(),
        patient: None,
        date: None,
        extra,
    })
}

#[cfg(not(feature = "video"))]
fn decode_video(_: &Engine, path: &Path, _: &str) -> Result<Decoded, Error> {
    Err(Error::media(path, "this echovault was built without the `video` feature (FFmpeg)"))
}

/// Why a DICOM file is passed over (valid DICOM, but no image): `Ok(Err(reason))`.
fn decode_dicom(engine: &Engine, path: &Path, id: &str, opts: &IngestOptions) -> Result<Result<Decoded, String>, Error> {
    let cine = match DicomCine::open(path) {
        Ok(c) => c,
        Err(e) if e.not_image => return Ok(Err(e.message)),
        Err(e) => return Err(Error::media(path, e)),
    };
    let info = cine.info().clone();
    let crop = if opts.crop_regions { info.crop_region().ok() } else { None };
    let mut frames = Vec::new();
    for i in 0..info.frames {
        if engine.sampling.selects(i) {
            let f = cine.frame(i).map_err(|e| Error::media(path, e))?;
            frames.push(match &crop {
                Some(r) => {
                    let (x, y, w, h) = r.rect(info.rows, info.cols);
                    f.crop(x, y, w, h).unwrap_or(f)
                }
                None => f,
            });
        }
        if engine.sampling.done_after(i) {
            break;
        }
    }
    if frames.is_empty() {
        return Err(Error::media(path, format!("the frame sampling selects none of its {} frames", info.frames)));
    }
    let mut extra = BTreeMap::new();
    extra.insert("size".into(), format!("{}x{}", info.cols, info.rows));
    extra.insert("transfer_syntax".into(), info.transfer_syntax.clone());
    for (k, v) in [
        ("sop_uid", &info.sop_uid),
        ("series_uid", &info.series_uid),
        ("modality", &info.modality),
        ("manufacturer", &info.manufacturer),
        ("model", &info.model),
        ("study_time", &info.study_time),
        ("burned_in_annotation", &info.burned_in_annotation),
    ] {
        if let Some(v) = v {
            extra.insert(k.into(), v.clone());
        }
    }
    if let Some(r) = &crop {
        extra.insert("crop".into(), format!("{},{},{},{}", r.x0, r.y0, r.x1, r.y1));
    }
    Ok(Ok(Decoded {
        frames,
        total_frames: info.frames,
        fps: info.fps,
        study: info.study_uid.clone().unwrap_or_else(|| id.to_owned()),
        patient: info.patient_id.as_ref().map(|p| patient_key(engine.index.secret(), p.expose())),
        date: info.study_date.clone(),
        extra,
    }))
}

fn ingest_one(
    engine: &Engine,
    input: &Discovered,
    opts: &IngestOptions,
    studies: &mut HashMap<String, Vec<ItemId>>,
    summary: &mut IngestSummary,
) -> Result<(), Error> {
    let path = &input.path;
    let id = content_id(path)?;
    let item = ItemId(id.clone());
    if let Some(rec) = engine.index.get_item(&item)? {
        if engine.index.get_vector(engine.space, Kind::Video, &item)?.is_some() {
            // Already indexed: it still counts towards its study's vector in this run.
            if let Some(study) = rec.study {
                studies.entry(study).or_default().push(item);
            }
            summary.skipped += 1;
            return Ok(());
        }
    }
    let d = match input.kind {
        InputKind::Video => decode_video(engine, path, &id)?,
        InputKind::Dicom => match decode_dicom(engine, path, &id, opts)? {
            Ok(d) => d,
            Err(reason) => {
                tracing::info!(file = %path.display(), "skipped: {reason}");
                summary.not_images.push(Failure { path: path.display().to_string(), reason });
                return Ok(());
            }
        },
    };
    let emb = engine.embed_frames(&d.frames).map_err(|e| match e {
        Error::Invalid(reason) => Error::media(path, reason),
        other => other,
    })?;
    let mut rec = ItemRecord::new(id.clone(), Kind::Video, path.display().to_string());
    rec.study = Some(d.study.clone());
    rec.patient = d.patient.clone();
    rec.date = d.date.clone();
    rec.frames = Some(d.total_frames as u32);
    rec.fps = d.fps;
    rec.extra = d.extra;
    rec.extra.insert("embedded_frames".into(), emb.frames.len().to_string());
    let mut b = engine.index.batch();
    b.put_item(rec);
    b.put_vector(engine.space, id.clone(), Kind::Video, emb.video.clone());
    // The study vector: mean of the study's videos seen in this run (those indexed earlier
    // included), written with each new video so that an interrupted run leaves it current.
    let members = studies.entry(d.study.clone()).or_default();
    members.push(item.clone());
    let mut vectors = vec![emb.video.clone()];
    for m in members.iter().filter(|m| **m != item) {
        if let Some(v) = engine.index.get_vector(engine.space, Kind::Video, m)? {
            vectors.push(v);
        }
    }
    let sid = study_id(&d.study);
    let mut srec = ItemRecord::new(sid.clone(), Kind::Study, path.display().to_string());
    srec.study = Some(d.study.clone());
    srec.patient = d.patient.clone();
    srec.date = d.date.clone();
    srec.extra.insert("videos".into(), vectors.len().to_string());
    b.put_item(srec);
    if let Some(v) = mean_unit(&vectors) {
        b.put_vector(engine.space, sid, Kind::Study, v);
    }
    if let Some(report) = &input.report {
        let text = std::fs::read_to_string(report).map_err(|e| Error::io(report, e))?;
        let rid = report_id(&d.study);
        let mut rrec = ItemRecord::new(rid.clone(), Kind::Report, report.display().to_string());
        rrec.study = Some(d.study.clone());
        rrec.patient = d.patient.clone();
        rrec.text = Some(text.trim().to_owned());
        b.put_vector(engine.space, rid, Kind::Report, engine.embed_text(text.trim())?);
        b.put_item(rrec);
        summary.reports += 1;
    }
    b.put_error(&path.to_string_lossy(), None);
    engine.index.commit(b)?;
    summary.ingested += 1;
    summary.ids.push(id);
    Ok(())
}

/// Writes one manifest report (replacing an earlier version of it).
fn write_report(engine: &Engine, entry: &ReportEntry, source: &str) -> Result<(), Error> {
    let rid = report_id(&entry.study);
    let mut rec = ItemRecord::new(rid.clone(), Kind::Report, source.to_owned());
    rec.study = Some(entry.study.clone());
    rec.date = entry.date.clone();
    rec.text = Some(entry.text.clone());
    let mut b = engine.index.batch();
    b.put_vector(engine.space, rid, Kind::Report, engine.embed_text(&entry.text)?);
    b.put_item(rec);
    engine.index.commit(b)?;
    Ok(())
}
