//! The ingest pipeline: stages on bounded crossbeam channels.
//!
//! ```text
//! feeder ──todo──▶ decode ×N ──decoded──▶ embed ──done──▶ write
//!   │  (stat, ingest log)  (hash, skip, decode,     (batched across   (one atomic
//!   │                       resize each frame)      videos, every     batch per video,
//!   └───── quick skips, failures, passes ─────────▶ model; reports)   per report)
//! ```
//!
//! - **feeder**: stats each discovered file; a file whose path, size and mtime the ingest log
//!   records as done, and whose item holds a video vector in every configured space, is
//!   skipped without being read. A DICOMweb source ([`ingest_dicomweb`]) is fed instead by its
//!   search (QIDO-RS; instances whose SOPInstanceUID is indexed in every space are skipped
//!   unfetched) and its retrievals (WADO-RS on the client's workers, at most that many
//!   instances in memory): an instance is decoded from its bytes like a file.
//! - **decode** (`workers` threads): content hash (the video's id); skip when indexed in every
//!   space; DICOM header first (passes over non-images, `--since`, SOPInstanceUIDs already
//!   indexed), then the sampled frames, streamed: each frame, as it is decoded, is cropped and
//!   resized to each distinct input size of the models and kept as bytes at that size (what
//!   the tower needs, [`Preprocess::resize`]); the decoded frame is dropped at once. At most
//!   `max_frames` are kept per video (a longer selection is thinned evenly, see
//!   [`crate::media::sampling`]; the item records `frames_selected` when it was). A panic
//!   inside a decoder is caught and becomes that file's failure.
//! - **embed** (the calling thread, which owns the LibTorch models): gathers videos until
//!   `frame_batch` frames (or the queue runs dry), runs each model on the lot — each batch
//!   normalised to f32 only when its turn comes, and split in halves when LibTorch fails on it
//!   (out of memory), down to one frame; a video that fails even so fails alone, with
//!   LibTorch's message, and the run goes on — splits the rows back per video; then embeds the
//!   reports, batched.
//! - **write**: per video one atomic batch — item, frame embeddings (f16),
//!   video embedding and the refreshed study embedding in every space, the ingest-log entries,
//!   the error entry cleared; per report one batch. A study's embedding is the normalised mean of
//!   all its videos in the index, in id order, so it does not depend on the order of arrival.
//!   Commits are handed to the OS at once (a killed process loses nothing committed) and synced
//!   to disk every second and at the end (a power cut loses at most the last second, which the
//!   next run redoes: ingest is idempotent).
//!
//! **Memory bound.** A decoded frame lives only until it is resized; a video is held as at most
//! `max_frames` frames of `S × S × 3` bytes per distinct model input size `S` (512 × 224² × 3
//! = 75 MiB by default), whatever its length or resolution. Each channel holds at most `queue`
//! videos (default 2), so at any time at most `workers + queue` videos are being decoded or
//! wait, plus those gathered for one embed batch (≤ `frame_batch` frames, or one video), plus
//! one f32 batch (`frame_batch × 3 × S × S`) and the forward pass's activations: memory is
//! bounded by about `workers + queue + 2` bounded videos, whatever the number of files. The
//! discovered file list (paths only) is the one thing that grows with the export.
//!
//! **Failure.** Every stage ends when its input closes or its output is gone, so a stage that
//! fails (an error or a panic) brings the others down instead of leaving them blocked; the
//! run then reports that error. What was committed stays committed; re-running continues.

use super::{
    content_id, decode_dicom, decode_video, report_id, study_id, Decoded, Discovered, Failure, Gate, IngestOptions, IngestSummary,
    InputKind, Pass, ReportEntry, Shard,
};
use crate::dicomweb::{Client, DicomWebError, Endpoint, InstanceRef, StudyQuery, Target};
use crate::engine::{mean_unit, Engine};
use crate::error::Error;
use crate::media::dicom::{DicomCine, UsRegion};
use crate::media::{Frame, FrameSampling, Preprocess, ReadOptions, Sampled};
use crossbeam_channel::{bounded, Receiver, Sender};
use echovault_index::{Durability, Index, ItemId, ItemRecord, Kind, SpaceId, StudyDate};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What the stages other than embedding need: the index, the frame sampling, and per model its
/// space and input size (the models themselves stay on the embedding thread: LibTorch
/// modules are not shared between threads).
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The index.
    pub index: &'a Index,
    /// Frames embedded per video.
    pub sampling: FrameSampling,
    /// The sampling, the frame bound and the crop.
    pub read: ReadOptions,
    /// Per model: its space and the index in `resizers` of its input size.
    pub spaces: Vec<(SpaceId, usize)>,
    /// One resizing per distinct input size of the models.
    pub resizers: Vec<Preprocess>,
}

/// A sampled frame at each distinct input size of the models ([`Ctx::resizers`]), as bytes.
pub(crate) type Resized = Vec<Frame>;

/// The frames kept of a video, at the models' input sizes.
pub(crate) type VideoFrames = Sampled<Resized>;

impl Ctx<'_> {
    /// The frames the run's sampling and bound keep of a DICOM cine (each cropped to `crop`
    /// when given), resized as they are decoded.
    pub(crate) fn sample_dicom(&self, cine: &DicomCine, path: &Path, crop: Option<&UsRegion>) -> Result<VideoFrames, Error> {
        crate::media::sample_dicom(cine, path, &self.read, crop, |fs| self.resize(path, &fs))
    }

    /// The frames the run's sampling and bound keep of a video file, resized as they are
    /// decoded.
    #[cfg(feature = "video")]
    pub(crate) fn read_video(&self, path: &Path) -> Result<(crate::media::video::VideoInfo, VideoFrames), Error> {
        crate::media::read_video(path, &self.read, |fs| self.resize(path, &fs))
    }

    /// Decoded frames → per frame, one resized frame per distinct input size.
    fn resize(&self, path: &Path, frames: &[Frame]) -> Result<Vec<Resized>, Error> {
        let mut out: Vec<Resized> = frames.iter().map(|_| Vec::with_capacity(self.resizers.len())).collect();
        for p in &self.resizers {
            let resized = p.resize_many(frames).map_err(|e| match e {
                Error::Invalid(reason) => Error::media(path, reason),
                Error::Torch(t) => Error::media(path, format!("resizing a frame: libtorch: {}", crate::model::batches::brief(&t))),
                other => other,
            })?;
            out.iter_mut().zip(resized).for_each(|(o, r)| o.push(r));
        }
        Ok(out)
    }
}

/// Where a run stands, passed to the progress callback after each input and each report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Progress {
    /// Inputs found by the walk.
    pub found: usize,
    /// Inputs finished (ingested, skipped, passed over or failed).
    pub done: usize,
    /// Videos embedded and written.
    pub ingested: usize,
    /// Inputs skipped as already indexed or duplicates.
    pub skipped: usize,
    /// Inputs that failed.
    pub failed: usize,
    /// Frames embedded (per model).
    pub frames: usize,
    /// Reports written.
    pub reports: usize,
    /// Time since the run started.
    #[serde(skip)]
    pub elapsed: Duration,
    /// The failure this report is about (an input or a report that failed just now), so a
    /// watcher can list failures as they happen.
    #[serde(skip)]
    pub failure: Option<Failure>,
}

impl Progress {
    /// Videos embedded per second so far.
    pub fn videos_per_s(&self) -> f64 {
        self.ingested as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Frames embedded per second so far.
    pub fn frames_per_s(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What the ingest log remembers of a file that was done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LogEntry {
    id: String,
    size: u64,
    mtime_ns: u128,
}

fn file_key(path: &Path) -> String {
    format!("file:{}", path.display())
}

fn sop_key(uid: &str) -> String {
    format!("sop:{uid}")
}

/// Size and modification time of a file, as the ingest log records them.
fn stamp(path: &Path) -> Option<(u64, u128)> {
    let m = std::fs::metadata(path).ok()?;
    let mtime = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    Some((m.len(), mtime))
}

struct Job {
    input: Discovered,
    /// A DICOM instance retrieved over DICOMweb: its bytes (the input's path is then its
    /// WADO-RS URL, which is also its `source` and its `errors` key).
    fetched: Option<Vec<u8>>,
}

/// A decoded video with what the models still lack.
struct DecodedJob {
    input: Discovered,
    id: String,
    decoded: Decoded,
    /// Indices of the engine's embedders whose space lacks this video.
    needs: Vec<usize>,
}

struct Embedded {
    input: Discovered,
    id: String,
    decoded: Decoded,
    /// (embedder index, video embedding, frame embeddings).
    spaces: Vec<(usize, Vec<f32>, Vec<Vec<f32>>)>,
}

struct EmbeddedReport {
    entry: ReportEntry,
    source: String,
    spaces: Vec<(usize, Vec<f32>)>,
}

enum Done {
    Skipped {
        input: Discovered,
        id: Option<String>,
    },
    Duplicate,
    OutsideSince,
    /// A file of another shard (`--shard`), with its study when known.
    OtherShard {
        study: Option<String>,
    },
    /// A DICOMweb study of another shard, passed over before its instances were listed.
    OtherShardStudy(String),
    NotImage(Failure),
    Failed(Failure),
    Video(Box<Embedded>),
    Report(Box<EmbeddedReport>),
    ReportUnchanged,
    /// A report that cannot be embedded (e.g. its text cannot be tokenised): its row of
    /// `errors`, keyed by the reports file and the study; the run goes on.
    ReportFailed(Failure),
}

/// A report to index, with where it came from.
struct ReportJob {
    entry: ReportEntry,
    source: String,
}

/// Ingests `paths` (files or directories) into the engine's index with every model of the
/// engine. `progress` is called (on the writing thread) after each finished input and report.
pub fn ingest(
    engine: &Engine,
    paths: &[PathBuf],
    opts: &IngestOptions,
    progress: impl FnMut(&Progress) + Send,
) -> Result<IngestSummary, Error> {
    let start = Instant::now();
    let found = super::discover(paths)?;
    let mut summary = IngestSummary { found: found.videos.len() + found.failed.len(), ..IngestSummary::default() };
    // With --shard, what the walk could not read as an input (its study unknown) goes by its
    // file name: one shard reports it.
    let other_shard = |path: &Path| opts.shard.is_some_and(|s| !s.owns_file(path));
    for (path, reason) in &found.skipped {
        if other_shard(path) {
            continue;
        }
        summary.not_images.push(Failure { path: path.display().to_string(), reason: reason.clone() });
    }
    // Files the walk could not take as inputs (a `.dcm` that is no DICOM, a symlink to itself,
    // a DICOMDIR reference outside the export) are failures like those of decoding.
    for (path, reason) in &found.failed {
        if other_shard(path) {
            summary.other_shard_files += 1;
            continue;
        }
        tracing::debug!(file = %path.display(), "ingest failed: {reason}");
        record_failure(&engine.index, &mut summary, Failure { path: path.display().to_string(), reason: reason.clone() })?;
    }
    summary.ignored = found.ignored.iter().map(|p| p.display().to_string()).collect();
    let reports = gather_reports(opts, &found.videos)?;
    run(engine, Feed::Files(&found.videos), reports, summary, opts, start, progress)
}

/// Ingests the instances of a DICOMweb server (`ingest dicomweb:URL`): the studies `query`
/// selects are listed (QIDO-RS), instances whose SOPInstanceUID is indexed already (in every
/// space) are skipped without being fetched, the others are retrieved (WADO-RS, on the
/// client's workers) and go through the same stages as files. An instance's `source` and
/// `errors` key is its WADO-RS URL; a failed search or retrieval is a failure of the run (its
/// reason names the UIDs and the HTTP status) and the run goes on.
pub fn ingest_dicomweb(
    engine: &Engine,
    client: &Client,
    query: StudyQuery,
    opts: &IngestOptions,
    progress: impl FnMut(&Progress) + Send,
) -> Result<IngestSummary, Error> {
    let start = Instant::now();
    let reports = gather_reports(opts, &[])?;
    // The shard is the options' (the search skips other shards' studies before listing them).
    let query = StudyQuery { shard: opts.shard, ..query };
    run(engine, Feed::DicomWeb(client, query), reports, IngestSummary::default(), opts, start, progress)
}

/// Where the inputs of a run come from.
enum Feed<'a> {
    /// Files found by the walk.
    Files(&'a [Discovered]),
    /// The instances of a DICOMweb search.
    DicomWeb(&'a Client, StudyQuery),
}

fn run(
    engine: &Engine,
    inputs: Feed,
    reports: Vec<ReportJob>,
    mut summary: IngestSummary,
    opts: &IngestOptions,
    start: Instant,
    mut progress: impl FnMut(&Progress) + Send,
) -> Result<IngestSummary, Error> {
    // Inputs found so far: all of them for files; a DICOMweb search counts as it lists.
    let found = AtomicUsize::new(summary.found);
    let dates: HashMap<String, StudyDate> = reports.iter().filter_map(|r| Some((r.entry.study.clone(), r.entry.date?))).collect();
    // Patients named by the report manifest, keyed at once: videos that carry no PatientID
    // (AVI, MP4) take their study's.
    // The secret first: an index that keeps it outside fails here, before anything is read.
    let secret = engine.index.secret()?;
    let patients: HashMap<String, String> = reports
        .iter()
        .filter_map(|r| Some((r.entry.study.clone(), crate::pseudonym::patient_key(secret, r.entry.patient.as_deref()?))))
        .collect();
    let facts = StudyFacts { dates, patients };
    let workers = if opts.workers == 0 { std::thread::available_parallelism().map_or(2, |n| n.get()) } else { opts.workers };
    let queue = if opts.queue == 0 { 2 } else { opts.queue };
    let stop = AtomicBool::new(false);

    let (todo_tx, todo_rx) = bounded::<Job>(queue);
    let (dec_tx, dec_rx) = bounded::<DecodedJob>(queue);
    let (done_tx, done_rx) = bounded::<Done>(queue.max(workers));

    let mut resizers: Vec<Preprocess> = Vec::new();
    let mut spaces = Vec::new();
    for e in &engine.embedders {
        // Resizing depends only on the input size: models of one size share their frames.
        let k = match resizers.iter().position(|p| p.size == e.preprocess.size) {
            Some(k) => k,
            None => {
                resizers.push(e.preprocess.clone());
                resizers.len() - 1
            }
        };
        spaces.push((e.space, k));
    }
    let read = ReadOptions { sampling: engine.sampling, max_frames: engine.max_frames, crop_regions: opts.crop_regions, mask: engine.mask };
    let ctx = Ctx { index: &engine.index, sampling: engine.sampling, read, spaces, resizers };
    let gate = |study: &str, date: Option<StudyDate>, sop: Option<&str>| -> Option<Pass> {
        if opts.since.is_some() || opts.until.is_some() {
            let date = date.or_else(|| facts.dates.get(study).copied());
            if date.is_none_or(|d| opts.since.is_some_and(|s| d < s) || opts.until.is_some_and(|u| d > u)) {
                return Some(Pass::OutsideSince);
            }
        }
        // Instances indexed by earlier runs; those of this run are told apart when written.
        let uid = sop?;
        let known = ctx.index.get_log(&sop_key(uid)).ok().flatten()?;
        let other = String::from_utf8(known).ok()?;
        indexed_everywhere(&ctx, &other).then_some(Pass::DuplicateOf(other))
    };

    let result = std::thread::scope(|s| -> Result<(), Error> {
        let (ctx, stop, gate, facts) = (&ctx, &stop, &gate, &facts);
        let found = &found;
        let feeder = {
            let done_tx = done_tx.clone();
            let cancel = opts.cancel.as_deref();
            s.spawn(move || match inputs {
                Feed::Files(videos) => feed(ctx, videos, opts.shard, &todo_tx, &done_tx, stop, cancel),
                Feed::DicomWeb(client, query) => feed_dicomweb(ctx, client, query, &todo_tx, &done_tx, stop, cancel, found),
            })
        };
        let mut decoders = Vec::new();
        for _ in 0..workers {
            let (todo_rx, dec_tx, done_tx) = (todo_rx.clone(), dec_tx.clone(), done_tx.clone());
            decoders.push(s.spawn(move || decode_stage(ctx, opts, gate, &todo_rx, &dec_tx, &done_tx, stop)));
        }
        drop((todo_rx, dec_tx));
        let summary = &mut summary;
        let writer = s.spawn(move || {
            let r = write_stage(ctx, &done_rx, facts, summary, found, start, &mut progress);
            if r.is_err() {
                stop.store(true, Ordering::SeqCst);
            }
            // Dropping the receiver here makes every stage's next send fail: they end.
            drop(done_rx);
            r
        });
        // Embedding runs on this thread, which owns the models.
        let embedded = embed_stage(engine, ctx, &dec_rx, &done_tx, reports, opts.cancel.as_deref());
        // Halt before the queues close, so no stage takes their closing for a failure of its own.
        if embedded.is_err() {
            stop.store(true, Ordering::SeqCst);
        }
        drop((dec_rx, done_tx));
        let mut stage_error = None;
        let mut join = |name: &str, h: std::thread::ScopedJoinHandle<'_, Result<(), Error>>| match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                stage_error.get_or_insert(e);
            }
            Err(_) => {
                stage_error.get_or_insert(Error::Invalid(format!("the {name} stage of the ingest pipeline panicked")));
            }
        };
        join("write", writer);
        join("discover", feeder);
        for d in decoders {
            join("decode", d);
        }
        if let Some(e) = stage_error {
            return Err(e);
        }
        embedded
    });
    result?;
    summary.found = found.load(Ordering::SeqCst);
    // Snapshot the graphs now, so the next open replays nothing.
    engine.index.checkpoint()?;
    Ok(summary)
}

/// Manifest reports, then sidecar reports of studies the manifest does not cover.
fn gather_reports(opts: &IngestOptions, videos: &[Discovered]) -> Result<Vec<ReportJob>, Error> {
    let mut out: Vec<ReportJob> = Vec::new();
    let mut seen = HashSet::new();
    if let Some(manifest) = &opts.reports {
        for entry in super::read_reports(manifest)? {
            // Another shard's study: that shard embeds its report.
            if opts.shard.is_some_and(|s| !s.owns(&entry.study)) {
                continue;
            }
            seen.insert(entry.study.clone());
            out.push(ReportJob { entry, source: manifest.display().to_string() });
        }
    }
    for v in videos {
        let (Some(report), Some(study)) = (&v.report, v.path.file_stem().and_then(|s| s.to_str())) else { continue };
        if opts.shard.is_some_and(|s| !s.owns(study)) {
            continue;
        }
        if seen.insert(study.to_owned()) {
            let text = std::fs::read_to_string(report).map_err(|e| Error::io(report, e))?;
            out.push(ReportJob {
                entry: ReportEntry { study: study.to_owned(), text: text.trim().to_owned(), date: None, patient: None },
                source: report.display().to_string(),
            });
        }
    }
    Ok(out)
}

/// True when every space of the engine holds a video vector for `id`.
fn indexed_everywhere(ctx: &Ctx, id: &str) -> bool {
    missing_spaces(ctx, id).is_ok_and(|m| m.is_empty())
}

/// Indices of the embedders whose space lacks a video vector for `id`.
fn missing_spaces(ctx: &Ctx, id: &str) -> Result<Vec<usize>, Error> {
    let item = ItemId::from(id);
    let mut out = Vec::new();
    for (i, (space, _)) in ctx.spaces.iter().enumerate() {
        if ctx.index.get_vector(*space, Kind::Video, &item)?.is_none() {
            out.push(i);
        }
    }
    Ok(out)
}

fn feed(
    ctx: &Ctx,
    videos: &[Discovered],
    shard: Option<Shard>,
    todo: &Sender<Job>,
    done: &Sender<Done>,
    stop: &AtomicBool,
    cancel: Option<&AtomicBool>,
) -> Result<(), Error> {
    for input in videos {
        if stop.load(Ordering::SeqCst) || cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
            break;
        }
        // Another shard's video (its study is its file name): not read at all. DICOM files are
        // told apart by their header, on the decode workers.
        if let (Some(shard), InputKind::Video) = (shard, input.kind) {
            let study = input.path.file_stem().and_then(|s| s.to_str());
            let owned = study.map_or_else(|| shard.owns_file(&input.path), |s| shard.owns(s));
            if !owned {
                if done.send(Done::OtherShard { study: study.map(str::to_owned) }).is_err() {
                    break;
                }
                continue;
            }
        }
        // Quick skip: same path, size and mtime as a file done before, still indexed.
        let logged = ctx.index.get_log(&file_key(&input.path))?.and_then(|b| serde_json::from_slice::<LogEntry>(&b).ok());
        if let (Some(log), Some((size, mtime_ns))) = (logged, stamp(&input.path)) {
            if log.size == size && log.mtime_ns == mtime_ns && indexed_everywhere(ctx, &log.id) {
                if done.send(Done::Skipped { input: input.clone(), id: None }).is_err() {
                    break;
                }
                continue;
            }
        }
        if todo.send(Job { input: input.clone(), fetched: None }).is_err() {
            break;
        }
    }
    Ok(())
}

/// The feeder of a DICOMweb source: a thread walks the search (QIDO-RS) and passes over the
/// instances indexed already; this one takes the retrieved instances (WADO-RS, on the
/// client's workers: at most that many in memory) and feeds them to the decoders.
#[allow(clippy::too_many_arguments)]
fn feed_dicomweb(
    ctx: &Ctx,
    client: &Client,
    query: StudyQuery,
    todo: &Sender<Job>,
    done: &Sender<Done>,
    stop: &AtomicBool,
    cancel: Option<&AtomicBool>,
    found: &AtomicUsize,
) -> Result<(), Error> {
    let halted = || stop.load(Ordering::SeqCst) || cancel.is_some_and(|c| c.load(Ordering::SeqCst));
    let endpoint = client.endpoint();
    let as_input = |url: &str| Discovered { path: PathBuf::from(url), kind: InputKind::Dicom, report: None };
    // Failures of earlier runs to list this source or one of its studies: cleared once listed.
    let mut listing_errors: HashSet<String> =
        ctx.index.errors()?.into_iter().map(|(key, _)| key).filter(|k| k.starts_with(endpoint.base()) && !k.contains("/series/")).collect();
    let mut clear = |key: String| -> Result<(), Error> {
        if listing_errors.remove(&key) {
            let mut b = ctx.index.batch();
            b.put_error(&key, None);
            ctx.index.commit_with(b, Durability::Buffered)?;
        }
        Ok(())
    };
    let (refs_tx, refs_rx) = bounded::<InstanceRef>(client.options().workers.max(1));
    let fetched = client.fetch(refs_rx.into_iter().map(Ok));
    std::thread::scope(|s| -> Result<(), Error> {
        let walker = s.spawn(move || -> Result<(), Error> {
            let mut walk = client.walk(query);
            let mut halted_early = false;
            while let Some(r) = walk.next() {
                if halted() {
                    halted_early = true;
                    break;
                }
                for study in walk.take_listed() {
                    clear(endpoint.study_url(&study))?;
                }
                // Studies of other shards passed over before this instance's (none listed).
                if !walk.take_other_shard().into_iter().all(|study| done.send(Done::OtherShardStudy(study)).is_ok()) {
                    if !halted() {
                        return Err(stopped_taking());
                    }
                    halted_early = true;
                    break;
                }
                let sent = match r {
                    Err(e) => done.send(Done::Failed(web_failure(endpoint, &e))).is_ok(),
                    Ok(r) if known_instance(ctx, &r.sop_uid) => {
                        found.fetch_add(1, Ordering::SeqCst);
                        done.send(Done::Skipped { input: as_input(&r.url(endpoint)), id: None }).is_ok()
                    }
                    Ok(r) => {
                        found.fetch_add(1, Ordering::SeqCst);
                        refs_tx.send(r).is_ok()
                    }
                };
                if !sent {
                    if !halted() {
                        return Err(stopped_taking());
                    }
                    halted_early = true;
                    break;
                }
            }
            if !halted_early {
                // Studies of other shards after the last instance of this one's.
                for study in walk.take_other_shard() {
                    if done.send(Done::OtherShardStudy(study)).is_err() {
                        break;
                    }
                }
                for study in walk.take_listed() {
                    clear(endpoint.study_url(&study))?;
                }
                if walk.complete() {
                    clear(endpoint.studies_url())?;
                }
            }
            // Dropping `refs_tx` ends the retrieval once it has fetched what was listed.
            Ok(())
        });
        for r in fetched {
            if halted() {
                break;
            }
            let sent = match r {
                Ok(i) => todo.send(Job { input: as_input(&i.url), fetched: Some(i.bytes) }).is_ok(),
                Err(e) => done.send(Done::Failed(web_failure(endpoint, &e))).is_ok(),
            };
            if !sent {
                if !halted() {
                    return Err(stopped_taking());
                }
                break;
            }
        }
        walker.join().unwrap_or_else(|_| Err(Error::Invalid("the DICOMweb search thread panicked".into())))
    })
}

/// A send of the DICOMweb feed failed though the run was not halted: a later stage ended
/// early, and the instances not yet handed over would be left out without a word.
fn stopped_taking() -> Error {
    Error::Invalid("the ingest pipeline stopped taking DICOMweb instances before the search ended: the rest were not ingested".into())
}

/// Whether the ingest log holds this SOPInstanceUID for an item indexed in every space.
fn known_instance(ctx: &Ctx, sop_uid: &str) -> bool {
    let known = ctx.index.get_log(&sop_key(sop_uid)).ok().flatten().and_then(|b| String::from_utf8(b).ok());
    known.is_some_and(|id| id.as_bytes() == NOT_IMAGE || indexed_everywhere(ctx, &id))
}

/// What the ingest log holds for a DICOMweb instance that is not an image (a structured
/// report, say): a rerun does not retrieve it again.
const NOT_IMAGE: &[u8] = b"not-image";

/// Logs the instance at this WADO-RS URL (`…/instances/{SOPInstanceUID}`) as not an image.
fn remember_not_image(ctx: &Ctx, url: &Path) -> Result<(), Error> {
    let Some((_, sop)) = url.to_str().and_then(|u| u.rsplit_once("/instances/")) else {
        return Ok(());
    };
    let mut b = ctx.index.batch();
    b.put_log(&sop_key(sop), Some(NOT_IMAGE));
    ctx.index.commit_with(b, Durability::Buffered)?;
    Ok(())
}

/// A failed search or retrieval, keyed by what failed — an instance by its WADO-RS URL (its
/// source once ingested), a study that could not be listed by the study's URL, the search by
/// the studies URL — so that the run that succeeds clears it; the reason names the UIDs and the
/// HTTP status.
fn web_failure(endpoint: &Endpoint, e: &DicomWebError) -> Failure {
    let key = match e.target() {
        Some(Target { study: Some(study), series: Some(series), sop: Some(sop) }) => endpoint.instance_url(study, series, sop),
        Some(Target { study: Some(study), .. }) => endpoint.study_url(study),
        _ => endpoint.studies_url(),
    };
    Failure { path: key, reason: e.reason() }
}

fn decode_stage(
    ctx: &Ctx,
    opts: &IngestOptions,
    gate: Gate,
    todo: &Receiver<Job>,
    out: &Sender<DecodedJob>,
    done: &Sender<Done>,
    stop: &AtomicBool,
) -> Result<(), Error> {
    for job in todo {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let path = job.input.path.clone();
        let Job { input, fetched } = job;
        let outcome = catch_unwind(AssertUnwindSafe(|| decode_job(ctx, opts, gate, &input, fetched)))
            .unwrap_or_else(|_| Err(Error::media(&path, "the decoder panicked on this file")));
        let sent = match outcome {
            Ok(Step::Decoded(d)) => out.send(*d).is_ok(),
            Ok(Step::Done(d)) => done.send(d).is_ok(),
            Err(e) => done.send(Done::Failed(failure(&path, &e))).is_ok(),
        };
        if !sent {
            break;
        }
    }
    Ok(())
}

fn failure(path: &Path, e: &Error) -> Failure {
    let reason = match e {
        // The path is already the key; keep the reason alone.
        Error::Media { reason, .. } => reason.clone(),
        Error::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    Failure { path: path.display().to_string(), reason }
}

enum Step {
    Decoded(Box<DecodedJob>),
    Done(Done),
}

fn decode_job(ctx: &Ctx, opts: &IngestOptions, gate: Gate, input: &Discovered, fetched: Option<Vec<u8>>) -> Result<Step, Error> {
    // Another shard's DICOM file: its header read, nothing else (no hash, no frames). Retrieved
    // instances come from this shard's studies only.
    if let (Some(shard), InputKind::Dicom, None) = (opts.shard, input.kind, &fetched) {
        let study = super::shard::dicom_study(&input.path);
        let owned = study.as_deref().map_or_else(|| shard.owns_file(&input.path), |s| shard.owns(s));
        if !owned {
            return Ok(Step::Done(Done::OtherShard { study }));
        }
    }
    let id = match &fetched {
        Some(bytes) => super::content_id_of(bytes),
        None => content_id(&input.path)?,
    };
    let needs = missing_spaces(ctx, &id)?;
    if needs.is_empty() {
        return Ok(Step::Done(Done::Skipped { input: input.clone(), id: Some(id) }));
    }
    let over_dicomweb = fetched.is_some();
    let decoded = match input.kind {
        InputKind::Video => decode_video(ctx, &input.path, &id, gate)?,
        InputKind::Dicom => decode_dicom(ctx, &input.path, &id, opts, gate, fetched)?,
    };
    match decoded {
        Ok(decoded) => Ok(Step::Decoded(Box::new(DecodedJob { input: input.clone(), id, decoded, needs }))),
        Err(Pass::NotImage(reason)) => {
            tracing::debug!(file = %input.path.display(), "passed over: {reason}");
            if over_dicomweb {
                remember_not_image(ctx, &input.path)?;
            }
            Ok(Step::Done(Done::NotImage(Failure { path: input.path.display().to_string(), reason })))
        }
        Err(Pass::OutsideSince) => Ok(Step::Done(Done::OutsideSince)),
        Err(Pass::DuplicateOf(other)) => {
            tracing::debug!(file = %input.path.display(), "same SOPInstanceUID as indexed item {other}: skipped");
            Ok(Step::Done(Done::Duplicate))
        }
    }
}

fn embed_stage(
    engine: &Engine,
    ctx: &Ctx,
    input: &Receiver<DecodedJob>,
    done: &Sender<Done>,
    reports: Vec<ReportJob>,
    cancel: Option<&AtomicBool>,
) -> Result<(), Error> {
    let batch_frames = engine.embedders.iter().map(|e| e.frame_batch).min().unwrap_or(1).max(1);
    let mut pending: Vec<DecodedJob> = Vec::new();
    let mut frames = 0usize;
    loop {
        // Take what is queued; block only when there is nothing to embed yet.
        let next = if pending.is_empty() {
            match input.recv() {
                Ok(p) => Some(p),
                Err(_) => break,
            }
        } else {
            input.try_recv().ok()
        };
        // With nothing more queued, embed what is pending rather than wait.
        if let Some(p) = next {
            frames += p.decoded.frames.items.len();
            pending.push(p);
            if frames < batch_frames {
                continue;
            }
        }
        for d in embed_batch(engine, ctx, std::mem::take(&mut pending)) {
            if done.send(d).is_err() {
                return Ok(());
            }
        }
        frames = 0;
    }
    if !pending.is_empty() {
        for d in embed_batch(engine, ctx, pending) {
            if done.send(d).is_err() {
                return Ok(());
            }
        }
    }
    if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
        // Cancelled: the reports wait for the next run.
        return Ok(());
    }
    embed_reports(engine, reports, done)
}

/// Embeds the frames of several videos in shared forward passes; a video whose pass fails is
/// retried alone, so one bad video fails alone.
fn embed_batch(engine: &Engine, ctx: &Ctx, videos: Vec<DecodedJob>) -> Vec<Done> {
    match embed_together(engine, ctx, &videos) {
        Ok(per_video) => videos.into_iter().zip(per_video).map(|(p, spaces)| embedded(p, spaces)).collect(),
        Err(e) if videos.len() == 1 => videos.into_iter().map(|p| Done::Failed(failure(&p.input.path, &e))).collect(),
        Err(_) => videos
            .into_iter()
            .map(|p| match embed_together(engine, ctx, std::slice::from_ref(&p)) {
                Ok(mut s) => embedded(p, s.remove(0)),
                Err(e) => Done::Failed(failure(&p.input.path, &e)),
            })
            .collect(),
    }
}

fn embedded(p: DecodedJob, spaces: SpaceRows) -> Done {
    let DecodedJob { input, id, mut decoded, .. } = p;
    // The frames are embedded: free them before the video waits to be written.
    decoded.frames.items = Vec::new();
    Done::Video(Box::new(Embedded { input, id, decoded, spaces }))
}

type SpaceRows = Vec<(usize, Vec<f32>, Vec<Vec<f32>>)>;

fn embed_together(engine: &Engine, ctx: &Ctx, videos: &[DecodedJob]) -> Result<Vec<SpaceRows>, Error> {
    let mut out: Vec<SpaceRows> = videos.iter().map(|_| Vec::new()).collect();
    for (i, e) in engine.embedders.iter().enumerate() {
        // The videos needing this model, and their frames at its input size, in order.
        let members: Vec<usize> = (0..videos.len()).filter(|&v| videos[v].needs.contains(&i)).collect();
        if members.is_empty() {
            continue;
        }
        let size = ctx.spaces[i].1;
        let frames: Vec<&Frame> = members.iter().flat_map(|&v| videos[v].decoded.frames.items.iter().map(move |r| &r[size])).collect();
        let mut rows = e.embed_resized(&frames)?.into_iter();
        for v in members {
            let n = videos[v].decoded.frames.items.len();
            let frames: Vec<Vec<f32>> = rows.by_ref().take(n).collect();
            let video = mean_unit(&frames).ok_or_else(|| Error::Invalid("no frames to embed".into()))?;
            out[v].push((i, video, frames));
        }
    }
    Ok(out)
}

fn embed_reports(engine: &Engine, reports: Vec<ReportJob>, done: &Sender<Done>) -> Result<(), Error> {
    // Only what is new or changed, per space.
    let mut todo: Vec<(ReportJob, Vec<usize>)> = Vec::new();
    for r in reports {
        let rid = ItemId(report_id(&r.entry.study));
        let same_text = engine.index.get_item(&rid)?.and_then(|rec| rec.text).is_some_and(|t| t == r.entry.text);
        let mut needs = Vec::new();
        for (i, e) in engine.embedders.iter().enumerate() {
            if !same_text || engine.index.get_vector(e.space, Kind::Report, &rid)?.is_none() {
                needs.push(i);
            }
        }
        if needs.is_empty() {
            if done.send(Done::ReportUnchanged).is_err() {
                return Ok(());
            }
        } else {
            todo.push((r, needs));
        }
    }
    let chunk = engine.embedders.iter().map(|e| e.frame_batch).min().unwrap_or(32).max(1);
    for group in todo.chunks(chunk) {
        let mut spaces: Vec<Vec<(usize, Vec<f32>)>> = group.iter().map(|_| Vec::new()).collect();
        let mut failed: Vec<Option<String>> = vec![None; group.len()];
        for (i, e) in engine.embedders.iter().enumerate() {
            let members: Vec<usize> = (0..group.len()).filter(|&g| group[g].1.contains(&i)).collect();
            if members.is_empty() {
                continue;
            }
            let texts: Vec<&str> = members.iter().map(|&g| group[g].0.entry.text.as_str()).collect();
            match e.embed_texts(&texts) {
                Ok(vectors) => members.into_iter().zip(vectors).for_each(|(g, v)| spaces[g].push((i, v))),
                // One report the tokenizer refuses fails alone: the others of the group are
                // embedded one by one.
                // LibTorch failing on the group (out of memory) likewise: one by one.
                Err(Error::Tokenizer { .. } | Error::Torch(_)) => {
                    for g in members {
                        match e.embed_texts(&[group[g].0.entry.text.as_str()]) {
                            Ok(mut v) => spaces[g].push((i, v.remove(0))),
                            Err(err @ Error::Tokenizer { .. }) => failed[g] = Some(format!("{}: {err}", e.space_name)),
                            Err(Error::Torch(t)) => {
                                failed[g] = Some(format!("{}: libtorch: {}", e.space_name, crate::model::batches::brief(&t)))
                            }
                            Err(other) => return Err(other),
                        }
                    }
                }
                Err(other) => return Err(other),
            }
        }
        for (((r, _), spaces), failed) in group.iter().zip(spaces).zip(failed) {
            let d = match failed {
                Some(reason) => Done::ReportFailed(Failure { path: report_key(&r.source, &r.entry.study), reason }),
                None => Done::Report(Box::new(EmbeddedReport { entry: r.entry.clone(), source: r.source.clone(), spaces })),
            };
            if done.send(d).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The `errors` key of a report: its reports file and study (a report is no file of its own).
fn report_key(source: &str, study: &str) -> String {
    format!("{source} (report of study {study})")
}

/// Study id → its videos in the index (built from the items table once, then kept current).
type Members = HashMap<String, BTreeSet<ItemId>>;

fn write_stage(
    ctx: &Ctx,
    done: &Receiver<Done>,
    facts: &StudyFacts,
    summary: &mut IngestSummary,
    found: &AtomicUsize,
    start: Instant,
    progress: &mut impl FnMut(&Progress),
) -> Result<(), Error> {
    let index = ctx.index;
    // Ids written in this run: the same content under two paths is indexed once.
    let mut written: HashSet<String> = HashSet::new();
    // SOPInstanceUIDs written in this run: one instance exported as several files (copies that
    // differ in a byte, re-encodings) is one video — the first written; a copy that failed to
    // decode does not stand in for one that decodes.
    let mut written_sops: HashSet<String> = HashSet::new();
    let mut members: Option<Members> = None;
    // Studies of other shards (--shard) passed over.
    let mut other_studies: HashSet<String> = HashSet::new();
    // Walk results of other shards were counted before the run: done.
    let mut p = Progress { found: found.load(Ordering::SeqCst), done: summary.other_shard_files, ..Progress::default() };
    // Failures of the walk (recorded already) are reported first, one by one, as any failure is:
    // a watcher lists them as they come.
    for f in summary.failed.clone() {
        p.done += 1;
        p.failed += 1;
        p.elapsed = start.elapsed();
        p.failure = Some(f);
        progress(&p);
    }
    p.failure = None;
    // Commits are buffered (they survive the process being killed) and synced to disk once a
    // second: a power cut loses at most the last second, which the next run redoes.
    let mut synced_at = Instant::now();
    for d in done {
        let input_done = !matches!(d, Done::Report(_) | Done::ReportUnchanged | Done::ReportFailed(_) | Done::OtherShardStudy(_));
        match d {
            Done::Skipped { input, id } => {
                summary.skipped += 1;
                p.skipped += 1;
                // A file recognised by its hash gets a log entry, so the next run skips it
                // without reading it.
                if let (Some(id), Some((size, mtime_ns))) = (id, stamp(&input.path)) {
                    let mut b = index.batch();
                    put_log(&mut b, &input.path, &id, size, mtime_ns)?;
                    b.put_error(&input.path.to_string_lossy(), None);
                    index.commit_with(b, Durability::Buffered)?;
                }
            }
            Done::Duplicate => {
                summary.duplicates += 1;
                p.skipped += 1;
            }
            Done::OutsideSince => summary.outside_since += 1,
            Done::OtherShard { study } => {
                summary.other_shard_files += 1;
                other_studies.extend(study);
            }
            Done::OtherShardStudy(study) => {
                other_studies.insert(study);
            }
            Done::NotImage(f) => summary.not_images.push(f),
            Done::ReportFailed(f) => {
                tracing::debug!(report = %f.path, "report not embedded: {}", f.reason);
                p.failure = Some(f.clone());
                record_failure(index, summary, f)?;
            }
            Done::Failed(f) => {
                tracing::debug!(file = %f.path, "ingest failed: {}", f.reason);
                p.failure = Some(f.clone());
                record_failure(index, summary, f)?;
                p.failed += 1;
            }
            Done::Video(e) => {
                let same_sop = e.decoded.sop_uid.as_ref().is_some_and(|uid| written_sops.contains(uid));
                if same_sop || !written.insert(e.id.clone()) {
                    // The same content under two paths, or the same instance in two files, in
                    // one run: indexed once.
                    summary.duplicates += 1;
                    p.skipped += 1;
                } else {
                    written_sops.extend(e.decoded.sop_uid.clone());
                    let members = match &mut members {
                        Some(m) => m,
                        None => members.insert(study_members(index)?),
                    };
                    let frames = e.spaces.first().map_or(0, |s| s.2.len());
                    write_video(ctx, &e, facts, members)?;
                    summary.ingested += 1;
                    summary.frames += frames;
                    summary.ids.push(e.id.clone());
                    p.ingested += 1;
                    p.frames += frames;
                }
            }
            Done::Report(r) => {
                write_report(ctx, &r)?;
                summary.reports += 1;
                p.reports += 1;
            }
            Done::ReportUnchanged => summary.reports_unchanged += 1,
        }
        if input_done {
            p.done += 1;
        }
        p.found = found.load(Ordering::SeqCst).max(p.done);
        if synced_at.elapsed() >= SYNC_EVERY {
            index.sync()?;
            synced_at = Instant::now();
        }
        p.elapsed = start.elapsed();
        progress(&p);
        p.failure = None;
    }
    summary.other_shard_studies = other_studies.len();
    index.sync()?;
    Ok(())
}

/// A failed input or report: its row of `errors` and the summary's list.
fn record_failure(index: &Index, summary: &mut IngestSummary, f: Failure) -> Result<(), Error> {
    let mut b = index.batch();
    b.put_error(&f.path, Some(&f.reason));
    index.commit_with(b, Durability::Buffered)?;
    summary.failed.push(f);
    Ok(())
}

/// How often the writer syncs its buffered commits.
const SYNC_EVERY: Duration = Duration::from_secs(1);

fn study_members(index: &Index) -> Result<Members, Error> {
    let mut m = Members::new();
    for rec in index.items(Some(Kind::Video))? {
        if let Some(study) = rec.study {
            m.entry(study).or_default().insert(rec.id);
        }
    }
    Ok(m)
}

fn put_log(b: &mut echovault_index::Batch, path: &Path, id: &str, size: u64, mtime_ns: u128) -> Result<(), Error> {
    let entry = LogEntry { id: id.to_owned(), size, mtime_ns };
    let value = serde_json::to_vec(&entry).map_err(|e| Error::Invalid(format!("ingest log entry: {e}")))?;
    b.put_log(&file_key(path), Some(&value));
    Ok(())
}

/// What the report manifest says of each study: its date, its (keyed) patient.
struct StudyFacts {
    dates: HashMap<String, StudyDate>,
    patients: HashMap<String, String>,
}

fn write_video(ctx: &Ctx, e: &Embedded, facts: &StudyFacts, members: &mut Members) -> Result<(), Error> {
    let index = ctx.index;
    let d = &e.decoded;
    let path = &e.input.path;
    let item = ItemId(e.id.clone());
    let mut rec = ItemRecord::new(e.id.clone(), Kind::Video, path.display().to_string());
    rec.study = Some(d.study.clone());
    rec.patient = d.patient.clone().or_else(|| facts.patients.get(&d.study).cloned());
    rec.date = d.date.or_else(|| facts.dates.get(&d.study).copied()).or_else(|| existing_date(index, &d.study));
    rec.frames = Some(d.total_frames as u32);
    rec.fps = d.fps;
    rec.extra = d.extra.clone();
    rec.extra.insert("embedded_frames".into(), e.spaces.first().map_or(0, |s| s.2.len()).to_string());
    // Which frames the stored frame embeddings are (zero-shot readings pick theirs from them):
    // the run's sampling, its step widened when the bound thinned a long cine.
    let kept = &d.frames;
    rec.extra.insert("sampling".into(), kept.sampling.to_string());
    if kept.sampling != ctx.sampling {
        // Capped: how many frames the sampling selected, and the bound that thinned them.
        rec.extra.insert("frames_selected".into(), kept.selected.to_string());
        rec.extra.insert("max_frames".into(), ctx.read.max_frames.to_string());
    }
    let mut b = index.batch();
    b.put_item(rec.clone());
    let study = members.entry(d.study.clone()).or_default();
    study.insert(item.clone());
    let sid = study_id(&d.study);
    let mut srec = ItemRecord::new(sid.clone(), Kind::Study, path.display().to_string());
    srec.study = Some(d.study.clone());
    srec.patient = rec.patient.clone();
    srec.date = rec.date;
    srec.extra.insert("videos".into(), study.len().to_string());
    b.put_item(srec);
    for (i, video, frames) in &e.spaces {
        let space = ctx.spaces[*i].0;
        b.put_vector(space, e.id.clone(), Kind::Video, video.clone());
        b.put_frames(space, e.id.clone(), frames.clone());
        // The study embedding: mean of all its videos in this space, in id order.
        let mut vectors = Vec::with_capacity(study.len());
        for m in study.iter() {
            if *m == item {
                vectors.push(video.clone());
            } else if let Some(v) = index.get_vector(space, Kind::Video, m)? {
                vectors.push(v);
            }
        }
        if let Some(v) = mean_unit(&vectors) {
            b.put_vector(space, sid.clone(), Kind::Study, v);
        }
    }
    if let Some((size, mtime_ns)) = stamp(path) {
        put_log(&mut b, path, &e.id, size, mtime_ns)?;
    }
    if let Some(uid) = &d.sop_uid {
        b.put_log(&sop_key(uid), Some(e.id.as_bytes()));
    }
    b.put_error(&path.to_string_lossy(), None);
    index.commit_with(b, Durability::Buffered)?;
    Ok(())
}

/// The date the index knows for a study (from its report), for videos that carry none.
fn existing_date(index: &Index, study: &str) -> Option<StudyDate> {
    let rec = index.get_item(&ItemId(report_id(study))).ok().flatten()?;
    rec.date
}

fn write_report(ctx: &Ctx, r: &EmbeddedReport) -> Result<(), Error> {
    let index = ctx.index;
    let rid = report_id(&r.entry.study);
    let mut rec = ItemRecord::new(rid.clone(), Kind::Report, r.source.clone());
    rec.study = Some(r.entry.study.clone());
    rec.text = Some(r.entry.text.clone());
    // Linked to its study: the study's patient and date where the report has none.
    let study = index.get_item(&ItemId(study_id(&r.entry.study)))?;
    rec.patient = match (study.as_ref().and_then(|s| s.patient.clone()), r.entry.patient.as_deref()) {
        (Some(key), _) => Some(key),
        (None, Some(p)) => Some(crate::pseudonym::patient_key(index.secret()?, p)),
        (None, None) => None,
    };
    rec.date = r.entry.date.or_else(|| study.as_ref().and_then(|s| s.date));
    let mut b = index.batch();
    b.put_item(rec);
    for (i, v) in &r.spaces {
        b.put_vector(ctx.spaces[*i].0, rid.clone(), Kind::Report, v.clone());
    }
    // A report that failed in an earlier run and is embedded now leaves `errors`.
    b.put_error(&report_key(&r.source, &r.entry.study), None);
    index.commit_with(b, Durability::Buffered)?;
    Ok(())
}
