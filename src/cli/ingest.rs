//! `echovault ingest PATH...`.

use super::{open_engine, Global, EXIT_PARTIAL};
use clap::Args;
use echovault::ingest::{ingest, IngestOptions};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// Video files or directories (walked recursively; NAME.txt beside NAME.avi is its report).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// JSONL report manifest: {"study": ID, "text": TEXT, "date": "YYYY-MM-DD"} per line.
    #[arg(long)]
    reports: Option<PathBuf>,
}

pub fn run(g: &Global, a: &IngestArgs) -> anyhow::Result<i32> {
    let engine = open_engine(g)?;
    let start = Instant::now();
    let opts = IngestOptions { reports: a.reports.clone() };
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
    }
    Ok(if summary.failed.is_empty() { 0 } else { EXIT_PARTIAL })
}
