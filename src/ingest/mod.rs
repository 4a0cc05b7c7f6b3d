//! Ingest: discover inputs (videos, DICOM files, DICOMDIRs) → decode (N workers) →
//! preprocess → embed (batched across videos, every configured model) → write, as stages on
//! bounded crossbeam channels (see [`pipeline`]). Each video is written with its frame
//! embeddings, its video embedding and its study's refreshed embedding as one atomic index
//! batch per model set; reports are linked to their studies and embedded with each model's
//! tokenizer. Patient ids are pseudonymised (keyed hash) before anything is stored or logged.
//! One bad file is recorded in the index's error table and never stops the run. Files already
//! indexed (same path, size and mtime in the ingest log, or same content hash, or — DICOM — same
//! SOPInstanceUID) are skipped, so a re-run after a crash continues where the last one stopped.

mod discover;
pub mod pipeline;
pub(crate) mod reports;
mod shard;

pub use discover::{discover, Discovered, Found, InputKind};
pub use pipeline::{ingest, ingest_dicomweb, Progress};
pub use reports::{read_reports, ReportEntry};
pub use shard::Shard;

use crate::error::Error;
use crate::media::dicom::DicomCine;
use crate::pseudonym::patient_key;
use echovault_index::StudyDate;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What to ingest besides the files found, and how.
#[derive(Clone, Debug, Default)]
pub struct IngestOptions {
    /// Report manifest: JSONL, CSV, a `.txt` file or a folder of them (see [`read_reports`]).
    pub reports: Option<PathBuf>,
    /// Crop DICOM frames to their ultrasound region where one is present and lies inside the
    /// image (off by default: the reference embeds whole frames).
    pub crop_regions: bool,
    /// Decode workers (0: one per core).
    pub workers: usize,
    /// Only studies dated on or after this day (`YYYY-MM-DD`); inputs without a study date
    /// (DICOM StudyDate, or the report manifest's date for a video's study) are passed over.
    pub since: Option<StudyDate>,
    /// Only studies dated on or before this day; undated inputs are passed over likewise.
    pub until: Option<StudyDate>,
    /// Videos each channel between stages holds at most (0: the default, 2).
    pub queue: usize,
    /// Set to stop the run early (`echovault serve` on SIGTERM): no new file is started, those
    /// already in the pipeline are written and committed, reports are left for the next run,
    /// and the summary covers what was done. A re-run continues where this one stopped.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Only the studies of this shard (`ingest --shard I/N`, see [`Shard`]); the others' files
    /// are passed over before they are hashed or decoded (DICOMweb: before their instances are
    /// listed), and their reports with them.
    pub shard: Option<Shard>,
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
    /// Inputs found.
    pub found: usize,
    /// Videos embedded and written in this run.
    pub ingested: usize,
    /// Inputs skipped because the index already holds them (in every configured space).
    pub skipped: usize,
    /// Inputs whose content (or SOPInstanceUID) equals another input's: indexed once.
    pub duplicates: usize,
    /// Inputs passed over by `--since` (older or undated studies).
    pub outside_since: usize,
    /// Frames embedded in this run (per model).
    pub frames: usize,
    /// Reports embedded and written in this run.
    pub reports: usize,
    /// Reports already indexed with the same text (not embedded again).
    pub reports_unchanged: usize,
    /// Inputs that failed, with reasons.
    pub failed: Vec<Failure>,
    /// DICOM objects passed over because they hold no image (structured reports, presentation
    /// states, DICOMDIR records of other types), with reasons.
    pub not_images: Vec<Failure>,
    /// Files found that are no media (neither a video, nor DICOM, nor named `.dcm`/`.dicom`,
    /// nor a video's sidecar report), and directories reached twice (symlink loops).
    pub ignored: Vec<String>,
    /// Ids of the videos written in this run.
    pub ids: Vec<String>,
    /// With `--shard`: files passed over as another shard's (not read past a DICOM header; over
    /// DICOMweb 0: another shard's instances are never listed).
    pub other_shard_files: usize,
    /// With `--shard`: distinct studies passed over as another shard's (files, or DICOMweb
    /// studies whose instances were not listed).
    pub other_shard_studies: usize,
}

/// Content id of a file: the first 128 bits of its SHA-256, hex.
pub fn content_id(path: &Path) -> Result<String, Error> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    if !f.metadata().map_err(|e| Error::io(path, e))?.is_file() {
        return Err(Error::Invalid(format!("{}: not a regular file", path.display())));
    }
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

/// Content id of bytes in memory (a DICOM instance retrieved over DICOMweb): the same as
/// [`content_id`] of a file holding them.
pub fn content_id_of(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..16])
}

/// Item id of a study's report.
pub fn report_id(study: &str) -> String {
    format!("report:{study}")
}

/// Item id of a study.
pub fn study_id(study: &str) -> String {
    format!("study:{study}")
}

/// Why a readable input is not embedded.
enum Pass {
    /// Valid DICOM without an image.
    NotImage(String),
    /// Its study date is before `--since`, or it has none.
    OutsideSince,
    /// The index already holds this SOPInstanceUID under another content id.
    DuplicateOf(String),
}

/// Decides from a file's study id, study date and SOPInstanceUID, before its frames are decoded,
/// whether it is passed over.
type Gate<'a> = &'a (dyn Fn(&str, Option<StudyDate>, Option<&str>) -> Option<Pass> + Sync);

/// A decoded input, ready to embed.
struct Decoded {
    /// The kept frames, resized for the models as they were decoded.
    frames: pipeline::VideoFrames,
    total_frames: usize,
    fps: Option<f64>,
    study: String,
    patient: Option<String>,
    date: Option<StudyDate>,
    sop_uid: Option<String>,
    extra: BTreeMap<String, String>,
}

#[cfg(feature = "video")]
fn decode_video(ctx: &pipeline::Ctx, path: &Path, id: &str, gate: Gate) -> Result<Result<Decoded, Pass>, Error> {
    // Without DICOM study ids, a video file is its own study (its name is the study id); its
    // date can only come from the report manifest, which the gate knows.
    let study = path.file_stem().and_then(|s| s.to_str()).unwrap_or(id).to_owned();
    if let Some(pass) = gate(&study, None, None) {
        return Ok(Err(pass));
    }
    let (info, frames) = ctx.read_video(path)?;
    let mut extra = BTreeMap::new();
    extra.insert("size".into(), format!("{}x{}", info.width, info.height));
    if let Some(announced) = info.announced.filter(|_| info.to_end) {
        extra.insert("frames_decoded".into(), info.frames.to_string());
        extra.insert("frames_announced".into(), announced.to_string());
    }
    if let Some((decoded, announced)) = info.frame_count_mismatch() {
        // The path only at debug (PACS folders carry names and MRNs); the item records both counts.
        tracing::warn!("a video decoded {decoded} frames where its container announces {announced} (a file cut short?)");
        tracing::debug!(file = %path.display(), "{decoded} frames decoded, {announced} announced");
    }
    Ok(Ok(Decoded { frames, total_frames: info.frames, fps: Some(info.fps), study, patient: None, date: None, sop_uid: None, extra }))
}

#[cfg(not(feature = "video"))]
fn decode_video(_: &pipeline::Ctx, path: &Path, _: &str, _: Gate) -> Result<Result<Decoded, Pass>, Error> {
    Err(Error::media(path, "this echovault was built without the `video` feature (FFmpeg)"))
}

/// A DICOM file passed over (no image, outside `--since`, a known instance): `Ok(Err(why))`.
/// `fetched`: the file's bytes, retrieved over DICOMweb (`path` is then its WADO-RS URL).
fn decode_dicom(
    ctx: &pipeline::Ctx,
    path: &Path,
    id: &str,
    opts: &IngestOptions,
    gate: Gate,
    fetched: Option<Vec<u8>>,
) -> Result<Result<Decoded, Pass>, Error> {
    let from_web = fetched.is_some();
    let opened = match fetched {
        Some(bytes) => DicomCine::from_bytes(bytes),
        None => DicomCine::open(path),
    };
    let cine = match opened {
        Ok(c) => c,
        Err(e) if e.not_image => return Ok(Err(Pass::NotImage(e.message))),
        Err(e) => return Err(Error::media(path, e)),
    };
    let info = cine.info().clone();
    let study = info.study_uid.clone().unwrap_or_else(|| id.to_owned());
    // A StudyDate that is no day (anonymisers write 00000000) leaves the video undated rather
    // than refused.
    let date = info.study_date.as_deref().and_then(|d| match d.parse::<StudyDate>() {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!("a DICOM StudyDate that is no day ({e}): stored undated");
            tracing::debug!(file = %path.display(), "StudyDate {e}; stored undated");
            None
        }
    });
    if let Some(pass) = gate(&study, date, info.sop_uid.as_deref()) {
        return Ok(Err(pass));
    }
    let crop = if opts.crop_regions { info.crop_region().ok() } else { None };
    let frames = ctx.sample_dicom(&cine, path, crop.as_ref())?;
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
    if from_web {
        // What a DICOM viewer opens (also the item's source).
        extra.insert("wado_url".into(), path.display().to_string());
    }
    Ok(Ok(Decoded {
        frames,
        total_frames: info.frames,
        fps: info.fps,
        study,
        patient: match info.patient_id.as_ref() {
            Some(p) => Some(patient_key(ctx.index.secret()?, p.expose())),
            None => None,
        },
        date,
        sop_uid: info.sop_uid.clone(),
        extra,
    }))
}

#[cfg(test)]
mod content_id_tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn content_id_refuses_what_is_not_a_regular_file() {
        let e = content_id(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(e.contains("/dev/null") && e.contains("not a regular file"), "{e}");
    }
}
