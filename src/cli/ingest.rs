//! `echovault ingest PATH...`.

use super::{open_engine, Global, EXIT_PARTIAL};
use clap::Args;
use echovault::ingest::{ingest, IngestOptions};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// DICOM files (recognised by content), DICOMDIRs, videos, or directories (walked
    /// recursively, through their DICOMDIR when they have one; NAME.txt beside NAME.avi is its
    /// report).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Reports by study id (for DICOM the StudyInstanceUID): a JSONL manifest
    /// ({"study": ID, "text": TEXT, "date": "YYYY-MM-DD"} per line), a CSV with study and text
    /// columns, a STUDY.txt file, or a folder of them.
    #[arg(long)]
    reports: Option<PathBuf>,
    /// Crop DICOM frames to their ultrasound region (SequenceOfUltrasoundRegions) where it is
    /// present and lies inside the image.
    #[arg(long)]
    crop_region: bool,
}

pub fn run(g: &Global, a: &IngestArgs) -> anyhow::Result<i32> {
    let engine = open_engine(g)?;
    let start = Instant::now();
    let opts = IngestOptions { reports: a.reports.clone(), crop_regions: a.crop_region };
    let summary = ingest(&engine, &a.paths, &opts, |done, total| {
        tracing::info!("ingest: {done}/{total} files, {:.1} files/s", done as f64 / start.elapsed().as_secs_f64().max(1e-9));
    })?;
    let secs = start.elapsed().as_secs_f64();
    if g.json {
        let mut v = serde_json::to_value(&summary)?;
        v["seconds"] = serde_json::json!(secs);
        v["space"] = serde_json::json!(engine.space_name);
        println!("{v}");
    } else {
        println!(
            "ingested {} videos and {} reports into {} (space {}), skipped {}, failed {} — {:.1} s",
            summary.ingested,
            summary.reports,
            g.index.display(),
            engine.space_name,
            summary.skipped,
            summary.failed.len(),
            secs
        );
        for f in &summary.failed {
            println!("  failed: {}: {}", f.path, f.reason);
        }
        for f in &summary.not_images {
            println!("  passed over: {}: {}", f.path, f.reason);
        }
    }
    Ok(if summary.failed.is_empty() { 0 } else { EXIT_PARTIAL })
}
