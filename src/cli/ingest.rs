//! `echovault ingest PATH...` and `echovault errors`.

use super::output::reason_for;
use super::{open_engine_with, AllOpts, Global, Groups, IndexOpts};
use clap::{Args, ValueEnum};
use echovault::exchange::VectorType;
use echovault::index::VectorEncoding;
use echovault::ingest::{ingest, IngestOptions, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// DICOM files (recognised by content), DICOMDIRs, videos, or directories (walked
    /// recursively, through their DICOMDIR when they have one; NAME.txt beside NAME.avi is its
    /// report). Or one DICOMweb server, alone: dicomweb:http://HOST:PORT/dicom-web (its US
    /// studies, searched with QIDO-RS and retrieved with WADO-RS; credentials from
    /// ECHOVAULT_DICOMWEB_USER + ECHOVAULT_DICOMWEB_PASSWORD, or ECHOVAULT_DICOMWEB_TOKEN).
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
    /// Only studies dated on or after this day (YYYY-MM-DD): DICOM StudyDate, or for videos the
    /// report manifest's date of their study. Undated inputs are passed over.
    #[arg(long)]
    since: Option<echovault::index::StudyDate>,
    /// Only studies dated on or before this day (YYYY-MM-DD); undated inputs are passed over.
    #[arg(long)]
    until: Option<echovault::index::StudyDate>,
    /// Decode workers (default: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Videos each queue between pipeline stages holds at most (bounds memory).
    #[arg(long, default_value_t = 2)]
    queue: usize,
    /// Progress display: auto (bars on a terminal, log lines otherwise), bar, log or none.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// Seconds between progress log lines.
    #[arg(long, default_value_t = 10.0)]
    progress_every: f64,
    /// Only shard I of N (numbered from 0: 0/3, 1/3, 2/3): the studies whose id hashes there
    /// (first 8 bytes of SHA-256 of the StudyInstanceUID, or of a video's file name without
    /// extension, big-endian, mod N); a study never splits and its report goes with it. Other
    /// shards' files are passed over unread past a DICOM header, their DICOMweb studies
    /// unlisted. N machines each ingest one shard; `import` gathers their exports.
    #[arg(long, value_name = "I/N")]
    shard: Option<echovault::ingest::Shard>,
    /// How the vectors are stored: auto (as each embedding space holds them; float32 for a new
    /// space), float32, or float16 (half the memory and disk of a space's graph; recall within
    /// a hair of float32's). Chosen when a space is first filled: later runs keep it (auto),
    /// and asking for the other type is refused.
    #[arg(long, value_name = "auto|float32|float16", default_value = "auto")]
    vector_type: VectorType,
    #[command(flatten)]
    pub opts: AllOpts,
}

impl IngestArgs {
    pub fn groups(&self) -> Groups<'_> {
        self.opts.groups()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    Auto,
    Bar,
    Log,
    None,
}

pub fn run(g: &Global, a: &IngestArgs) -> anyhow::Result<i32> {
    let mut cfg = g.engine_config()?;
    cfg.vectors = match a.vector_type {
        VectorType::Auto => None,
        VectorType::F32 => Some(VectorEncoding::F32),
        VectorType::F16 => Some(VectorEncoding::F16),
    };
    let engine = open_engine_with(&cfg)?;
    let start = Instant::now();
    let opts = IngestOptions {
        reports: a.reports.clone(),
        crop_regions: a.crop_region,
        workers: a.workers,
        since: a.since,
        until: a.until,
        queue: a.queue,
        cancel: None,
        shard: a.shard,
    };
    let mode = match a.progress {
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
        ProgressMode::Auto => ProgressMode::Log,
        m => m,
    };
    let mut display = Display::new(mode, Duration::from_secs_f64(a.progress_every.max(0.1)));
    let web: Vec<&str> = a.paths.iter().filter_map(|p| p.to_str()).filter(|p| echovault::dicomweb::is_dicomweb(p)).collect();
    let summary = match web[..] {
        [] => ingest(&engine, &a.paths, &opts, |p| display.update(p))?,
        [source] if a.paths.len() == 1 => {
            use echovault::dicomweb::{Client, ClientOptions, Credentials, StudyQuery};
            // Retrieval waits on the network more than on the cores: at least 4 at once.
            let workers = if a.workers == 0 { 4 } else { a.workers };
            let client = Client::new(source.parse()?, Credentials::from_env()?, ClientOptions { workers, ..ClientOptions::default() });
            let query = StudyQuery { since: a.since, until: a.until, ..StudyQuery::default() };
            echovault::ingest::ingest_dicomweb(&engine, &client, query, &opts, |p| display.update(p))?
        }
        _ => anyhow::bail!("a dicomweb: source is ingested alone: one per run, without other paths"),
    };
    display.finish();
    let secs = start.elapsed().as_secs_f64();
    let spaces: Vec<&str> = engine.embedders.iter().map(|e| e.space_name.as_str()).collect();
    if g.json {
        let mut v = serde_json::to_value(&summary)?;
        for rows in ["failed", "not_images"] {
            if let Some(a) = v.get_mut(rows).and_then(serde_json::Value::as_array_mut) {
                for f in a {
                    let (path, reason) = (f["path"].as_str().unwrap_or_default(), f["reason"].as_str().unwrap_or_default());
                    f["reason"] = serde_json::json!(reason_for(path, reason));
                }
            }
        }
        v["seconds"] = serde_json::json!(secs);
        v["videos_per_s"] = serde_json::json!(summary.ingested as f64 / secs.max(1e-9));
        v["space"] = serde_json::json!(engine.space_name);
        v["spaces"] = serde_json::json!(spaces);
        v["tokenizers"] = engine.embedders.iter().map(|e| (e.space_name.clone(), serde_json::json!(e.tokenizer.kind()))).collect();
        println!("{v}");
    } else {
        println!(
            "ingested {} videos ({} frames) and {} reports into {} (spaces {}); skipped {} already indexed, {} duplicates, {} outside --since; failed {}; ignored {} other files — {:.1} s, {:.2} videos/s",
            summary.ingested,
            summary.frames,
            summary.reports,
            g.index.display(),
            spaces.join(", "),
            summary.skipped,
            summary.duplicates,
            summary.outside_since,
            summary.failed.len(),
            summary.ignored.len(),
            secs,
            summary.ingested as f64 / secs.max(1e-9)
        );
        if let Some(shard) = a.shard {
            println!(
                "shard {shard}: passed over {} files of {} studies of the other shards",
                summary.other_shard_files, summary.other_shard_studies
            );
        }
        for f in &summary.failed {
            println!("  failed: {}: {}", f.path, reason_for(&f.path, &f.reason));
        }
        for f in &summary.not_images {
            println!("  passed over: {}: {}", f.path, reason_for(&f.path, &f.reason));
        }
    }
    let succeeded = summary.ingested + summary.skipped + summary.duplicates + summary.reports > 0;
    Ok(super::outcome(!summary.failed.is_empty(), succeeded))
}

/// Progress on stderr: an indicatif bar, or a line every few seconds.
struct Display {
    mode: ProgressMode,
    bar: Option<ProgressBar>,
    every: Duration,
    last: Instant,
    latest: Progress,
}

impl Display {
    fn new(mode: ProgressMode, every: Duration) -> Display {
        let bar = (mode == ProgressMode::Bar).then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} files  {msg}  ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            b.set_style(style);
            b
        });
        Display { mode, bar, every, last: Instant::now(), latest: Progress::default() }
    }

    fn update(&mut self, p: &Progress) {
        self.latest = p.clone();
        match self.mode {
            ProgressMode::Bar => {
                if let Some(b) = &self.bar {
                    b.set_length(p.found as u64);
                    b.set_position(p.done as u64);
                    b.set_message(format!(
                        "{} frames · {:.2} videos/s · {} ingested, {} skipped, {} failed, {} reports",
                        p.frames,
                        p.videos_per_s(),
                        p.ingested,
                        p.skipped,
                        p.failed,
                        p.reports
                    ));
                }
            }
            ProgressMode::Log if self.last.elapsed() >= self.every => {
                self.last = Instant::now();
                log_line(p);
            }
            _ => {}
        }
    }

    fn finish(&mut self) {
        match self.mode {
            ProgressMode::Bar => {
                if let Some(b) = &self.bar {
                    b.finish_and_clear();
                }
            }
            ProgressMode::Log => log_line(&self.latest),
            _ => {}
        }
    }
}

/// A progress line on stderr whatever the log filter (the user asked for progress).
#[allow(clippy::print_stderr)]
fn log_line(p: &Progress) {
    let left = p.found.saturating_sub(p.done);
    let rate = p.done as f64 / p.elapsed.as_secs_f64().max(1e-9);
    let eta = if rate > 0.0 { format!("{:.0} s", left as f64 / rate) } else { "?".into() };
    eprintln!(
        "ingest: {}/{} files ({} ingested, {} skipped, {} failed), {} frames, {:.2} videos/s, {:.1} frames/s, {} reports, ETA {eta}",
        p.done,
        p.found,
        p.ingested,
        p.skipped,
        p.failed,
        p.frames,
        p.videos_per_s(),
        p.frames_per_s(),
        p.reports
    );
}

#[derive(Args, Debug)]
pub struct ErrorsArgs {
    #[command(flatten)]
    pub index: IndexOpts,
}

/// `echovault errors`: the inputs whose last ingest failed, with reasons.
pub fn run_errors(g: &Global, _: &ErrorsArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(g.index.is_dir(), "no index at {} (pass --index DIR)", g.index.display());
    let index = echovault::index::Index::open_reader(&g.index)?;
    let errors = index.errors()?;
    if g.json {
        let list: Vec<_> =
            errors.iter().map(|(path, reason)| serde_json::json!({ "path": path, "reason": reason_for(path, reason) })).collect();
        println!("{}", serde_json::json!({ "errors": list }));
    } else if errors.is_empty() {
        println!("no failed inputs recorded in {}", g.index.display());
    } else {
        println!("{} failed inputs in {}:", errors.len(), g.index.display());
        for (path, reason) in &errors {
            println!("  {path}: {}", reason_for(path, reason));
        }
    }
    Ok(0)
}
