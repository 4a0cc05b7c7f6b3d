//! Ingest: discover inputs, decode and embed each video, write each video (with its sidecar
//! report and its study) as one atomic index batch. One bad file is recorded in the index's
//! error table and never stops the run; files already indexed (same content hash) are skipped,
//! so a re-run continues where an interrupted one stopped.

mod discover;
mod reports;

pub use discover::{discover, Discovered};
pub use reports::{read_reports, ReportEntry};

use crate::engine::{mean_unit, Engine};
use crate::error::Error;
use echovault_index::{ItemId, ItemRecord, Kind};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// What to ingest besides the files found.
#[derive(Clone, Debug, Default)]
pub struct IngestOptions {
    /// JSONL report manifest (`{"study": ..., "text": ...}` per line).
    pub reports: Option<PathBuf>,
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
    for (i, video) in found.videos.iter().enumerate() {
        match ingest_video(engine, video, &mut summary) {
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

#[cfg(not(feature = "video"))]
fn ingest_video(_: &Engine, video: &Discovered, _: &mut IngestSummary) -> Result<(), Error> {
    Err(Error::media(&video.path, "this echovault was built without the `video` feature (FFmpeg)"))
}

#[cfg(feature = "video")]
fn ingest_video(engine: &Engine, video: &Discovered, summary: &mut IngestSummary) -> Result<(), Error> {
    let path = &video.path;
    let id = content_id(path)?;
    let item = ItemId(id.clone());
    if engine.index.get_vector(engine.space, Kind::Video, &item)?.is_some() {
        summary.skipped += 1;
        return Ok(());
    }
    let (info, emb) = engine.embed_video_file(path)?;
    let study = path.file_stem().and_then(|s| s.to_str()).unwrap_or(&id).to_owned();
    let mut rec = ItemRecord::new(id.clone(), Kind::Video, path.display().to_string());
    rec.study = Some(study.clone());
    rec.frames = Some(info.frames as u32);
    rec.fps = Some(info.fps);
    rec.extra.insert("size".into(), format!("{}x{}", info.width, info.height));
    rec.extra.insert("embedded_frames".into(), emb.frames.len().to_string());
    let mut b = engine.index.batch();
    b.put_item(rec);
    b.put_vector(engine.space, id.clone(), Kind::Video, emb.video.clone());
    // Without DICOM study ids, a video file is its own study (its name is the study id), so
    // the study vector is the video vector. Multi-video studies come with DICOM inputs.
    let study_videos = vec![emb.video.clone()];
    let sid = study_id(&study);
    let mut srec = ItemRecord::new(sid.clone(), Kind::Study, path.display().to_string());
    srec.study = Some(study.clone());
    srec.extra.insert("videos".into(), study_videos.len().to_string());
    b.put_item(srec);
    if let Some(v) = mean_unit(&study_videos) {
        b.put_vector(engine.space, sid, Kind::Study, v);
    }
    if let Some(report) = &video.report {
        let text = std::fs::read_to_string(report).map_err(|e| Error::io(report, e))?;
        let rid = report_id(&study);
        let mut rrec = ItemRecord::new(rid.clone(), Kind::Report, report.display().to_string());
        rrec.study = Some(study.clone());
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
