//! The clinical questions: `zero-shot`, `reid`, `timeline`, and `eval` (zero-shot, reid,
//! transitions, retrieval). Parses the flags into the requests of [`echovault::tasks`], picks the
//! model, renders what the library returns as text or JSON.

use super::{open_engine, open_reader_engine, positive, AllOpts, DeviceOpts, Global, Groups, ImageOpts, IndexOpts, ModelOpts, SpaceOpts};
use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand};
use echovault::engine::{Embedder, Engine};
use echovault::index::StudyDate;
use echovault::media::FrameSampling;
use echovault::tasks::context::{pick, Failure, Prefer, TaskContext};
use echovault::tasks::eval::{self, EvalResult};
use echovault::tasks::metrics::{BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED};
use echovault::tasks::readings::{self, ZeroShotRequest, ZeroShotResult};
use echovault::tasks::reid::{self, ReidRequest, ReidResult};
use echovault::tasks::timeline::{self, TimelineRequest, TimelineResult};
use echovault::tasks::zeroshot::Reading;
use std::path::{Path, PathBuf};

/// The model and, when the index exists, the index: read-only commands never create an index.
enum Loaded {
    Engine(Box<Engine>, usize),
    Bare(Box<Embedder>),
}

impl Loaded {
    /// Opens the index (when it exists) as a reader.
    fn open(g: &Global, need_index: bool, prefer: Prefer) -> anyhow::Result<Loaded> {
        Self::open_with(g, need_index, prefer, false)
    }

    /// Opens the index (when it exists) as its writer when `write` (zero-shot --store).
    fn open_with(g: &Global, need_index: bool, prefer: Prefer, write: bool) -> anyhow::Result<Loaded> {
        let cfg = g.engine_config()?;
        let models: Vec<PathBuf> = std::iter::once(cfg.model_dir.clone()).chain(cfg.extra_models.iter().cloned()).collect();
        let i = pick(&models, cfg.template_vocab.as_ref(), prefer);
        if g.index.is_dir() {
            let engine = if write { open_engine(g)? } else { open_reader_engine(g)? };
            return Ok(Loaded::Engine(Box::new(engine), i));
        }
        anyhow::ensure!(!need_index, "no index at {} (run `echovault ingest` first, or pass --index DIR)", g.index.display());
        let vocab = echovault::engine::template_vocab_for(&models[i], cfg.template_vocab.as_ref(), models.len() == 1);
        let mut e = Embedder::load(&models[i], vocab.as_deref(), cfg.device, cfg.channel_order, cfg.frame_batch)
            .with_context(|| format!("loading model {}", models[i].display()))?;
        e.space_name = match (&cfg.space, i) {
            (Some(s), 0) => s.clone(),
            _ => echovault::engine::space_name_of(&models[i]),
        };
        Ok(Loaded::Bare(Box::new(e)))
    }

    /// The model this command uses (and its space), the index when there is one.
    fn context(&self, g: &Global) -> TaskContext<'_> {
        match self {
            Loaded::Engine(e, i) => TaskContext { video_frames: g.sampling, read: read_options(g), ..TaskContext::of_engine(e, *i) },
            Loaded::Bare(e) => TaskContext { embedder: e, index: None, video_frames: g.sampling, read: read_options(g) },
        }
    }
}

/// How the task reads video files: `--max-frames` and `--mask` as ingest reads them.
fn read_options(g: &Global) -> echovault::media::ReadOptions {
    echovault::media::ReadOptions { max_frames: g.max_frames, mask: g.mask, ..echovault::media::ReadOptions::new(g.sampling) }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_value(v)?);
    Ok(())
}

fn print_failed(failed: &[Failure]) {
    for f in failed {
        println!("failed: {}: {}", f.input, f.reason);
    }
}

/// 0 when nothing failed; 3 (partial) when some inputs failed and something succeeded; 1 when
/// everything failed.
fn exit_code(failed: &[Failure], succeeded: bool) -> i32 {
    super::outcome(!failed.is_empty(), succeeded)
}

// ---------------------------------------------------------------- zero-shot

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("inputs").multiple(true).args(["videos", "ids", "all_indexed", "list_tasks"]).required(true)))]
pub struct ZeroShotArgs {
    /// Video files (DICOM, AVI, MP4). Files the index holds use their stored frame embeddings.
    videos: Vec<PathBuf>,
    /// Indexed video ids.
    #[arg(long = "id")]
    ids: Vec<String>,
    /// Every video in the index.
    #[arg(long)]
    all_indexed: bool,
    /// Tasks to read, comma-separated, or `all`.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    task: Vec<String>,
    /// Prompt file (task → mode, prompts, values), ours or the EchoCLIP reference's
    /// `prompts_used.json` (label_sources, testers, range, values, value_mapping). Default: the
    /// built-in report-style prompts (`--list-tasks` shows them).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Frames read: zero-shot (0..40 step 2, the paper's), all, or START:END:STEP
    /// [default: zero-shot].
    #[arg(long, alias = "sampling", value_name = "zero-shot|all|START:END:STEP")]
    frames: Option<FrameSampling>,
    /// Keep the readings in the indexed videos' records (`zero_shot.TASK`).
    #[arg(long)]
    store: bool,
    /// List the prompt file's tasks and exit.
    #[arg(long)]
    list_tasks: bool,
    #[command(flatten)]
    pub index: IndexOpts,
    #[command(flatten)]
    pub space: SpaceOpts,
    #[command(flatten)]
    pub model: ModelOpts,
    #[command(flatten)]
    pub device: DeviceOpts,
    #[command(flatten)]
    pub image: ImageOpts,
}

impl ZeroShotArgs {
    pub fn groups(&self) -> Groups<'_> {
        Groups { image: Some(&self.image), ..model_groups(&self.index, &self.space, &self.model, &self.device) }
    }
}

/// The groups of a command that loads a model beside an index.
fn model_groups<'a>(index: &'a IndexOpts, space: &'a SpaceOpts, model: &'a ModelOpts, device: &'a DeviceOpts) -> Groups<'a> {
    Groups { index: Some(index), space: Some(space), model: Some(model), device: Some(device), ..Groups::default() }
}

/// Frames read by a zero-shot command: its --frames, else one given before the subcommand, else
/// the paper's.
fn zero_shot_frames(g: &Global, own: Option<FrameSampling>) -> FrameSampling {
    own.or(g.frames_given).unwrap_or(FrameSampling::ZERO_SHOT)
}

/// One reading as text, to the precision it means something at: a value (EF, pressure) to one
/// decimal, a score (a cosine) to three; a task with a threshold says present or absent. JSON
/// keeps full precision.
fn reading_text(task: &str, r: &Reading, unit: Option<&str>) -> String {
    match r {
        Reading::Binary { score, present: Some(p) } => format!("{task}={score:.3} ({})", if *p { "present" } else { "absent" }),
        Reading::Binary { score, present: None } => format!("{task}={score:.3}"),
        Reading::Regression { value } => format!("{task}={value:.1}{}", unit.map(|u| format!(" {u}")).unwrap_or_default()),
        Reading::Categorical { class, .. } => format!("{task}={class}"),
    }
}

pub fn run_zero_shot(g: &Global, a: &ZeroShotArgs) -> anyhow::Result<i32> {
    if a.list_tasks {
        let list = readings::list_tasks(a.prompts.as_deref())?;
        if g.json {
            print_json(&list)?;
        } else {
            for (name, t) in &list.tasks {
                println!("{name:<28} {:<11} {}", format!("{:?}", t.mode).to_lowercase(), t.description.clone().unwrap_or_default());
            }
        }
        return Ok(0);
    }
    let req = ZeroShotRequest {
        videos: a.videos.clone(),
        ids: a.ids.clone(),
        all_indexed: a.all_indexed,
        task: a.task.clone(),
        prompts: a.prompts.clone(),
        frames: zero_shot_frames(g, a.frames),
        store: a.store,
    };
    let loaded = Loaded::open_with(g, req.needs_index(), Prefer::ZeroShot, a.store)?;
    let res = readings::zero_shot(&loaded.context(g), &req)?;
    if g.json {
        print_json(&res)?;
    } else {
        print_readings(&res, a.store);
    }
    Ok(exit_code(&res.failed, !res.results.is_empty()))
}

fn print_readings(res: &ZeroShotResult, store: bool) {
    for r in &res.results {
        let line: Vec<String> = res
            .tasks
            .iter()
            .filter_map(|name| Some(reading_text(name, r.readings.get(name)?, res.units.get(name).map(String::as_str))))
            .collect();
        println!("{}: {}", r.input, line.join("  "));
    }
    print_failed(&res.failed);
    if store {
        println!("stored the readings of {} indexed videos", res.stored);
    }
}

// ---------------------------------------------------------------- reid

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("query").required(true).args(["video", "id", "video_id", "study_id"])))]
pub struct ReidArgs {
    /// A video file (DICOM, AVI, MP4).
    video: Option<PathBuf>,
    /// An indexed video or study (a video id, a study id or StudyInstanceUID).
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// An indexed video (old spelling of --id).
    #[arg(long, hide = true)]
    video_id: Option<String>,
    /// An indexed study (old spelling of --id).
    #[arg(long, hide = true)]
    study_id: Option<String>,
    /// Candidates to show.
    #[arg(short = 'k', alias = "k", default_value_t = 10, value_parser = positive)]
    k: usize,
    /// Also show studies of the query's own date.
    #[arg(long)]
    same_date: bool,
    #[command(flatten)]
    pub opts: AllOpts,
}

impl ReidArgs {
    pub fn groups(&self) -> Groups<'_> {
        self.opts.groups()
    }
}

pub fn run_reid(g: &Global, a: &ReidArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(a.k > 0, "-k must be at least 1");
    let loaded = Loaded::open(g, true, Prefer::Similarity)?;
    let req = ReidRequest {
        video: a.video.clone(),
        id: a.id.clone(),
        video_id: a.video_id.clone(),
        study_id: a.study_id.clone(),
        k: a.k,
        same_date: a.same_date,
    };
    let res = reid::reid(&loaded.context(g), &req)?;
    if g.json {
        print_json(&res)?;
    } else {
        print_reid(&res)?;
    }
    Ok(0)
}

fn print_reid(res: &ReidResult) -> anyhow::Result<()> {
    println!("studies most like {} (other dates), space {}:", serde_json::to_value(&res.query)?, res.space);
    for (i, c) in res.candidates.iter().enumerate() {
        let same = if c.same_patient == Some(true) { "  same patient" } else { "" };
        println!(
            "{:>3}. {:+.4}  {}  {}  patient {}{same}",
            i + 1,
            c.score,
            c.date.map_or("(no date)".to_owned(), |d| d.to_string()),
            c.study.as_deref().unwrap_or(&c.id),
            c.patient.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- timeline

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("who").args(["patient", "patient_id"])))]
pub struct TimelineArgs {
    /// Pseudonymous patient key (as search and reid show it).
    #[arg(long)]
    patient: Option<String>,
    /// The patient's own id (MRN): pseudonymised with the index's secret, never printed; `-`
    /// reads it from stdin, `env` from $ECHOVAULT_PATIENT_ID (either keeps it out of shell
    /// history and `ps`). With neither flag, $ECHOVAULT_PATIENT_ID is used (a note says so).
    #[arg(long, value_name = "MRN|-|env")]
    patient_id: Option<String>,
    /// An event date (YYYY-MM-DD): compare the studies in the window around it with the
    /// earliest of them. Without it each study is compared with the previous one.
    #[arg(long)]
    event: Option<String>,
    /// Days either side of the event.
    #[arg(long, default_value_t = 200)]
    window: i64,
    /// Flag a study whose similarity lies this far below the timeline's median.
    #[arg(long, default_value_t = 0.1)]
    drop: f64,
    #[command(flatten)]
    pub index: IndexOpts,
    #[command(flatten)]
    pub space: SpaceOpts,
    #[command(flatten)]
    pub model: ModelOpts,
    #[command(flatten)]
    pub device: DeviceOpts,
}

impl TimelineArgs {
    pub fn groups(&self) -> Groups<'_> {
        model_groups(&self.index, &self.space, &self.model, &self.device)
    }
}

pub fn run_timeline(g: &Global, a: &TimelineArgs) -> anyhow::Result<i32> {
    let loaded = Loaded::open(g, true, Prefer::Similarity)?;
    let event = match &a.event {
        Some(d) => Some(d.parse::<StudyDate>().context("--event")?),
        None => None,
    };
    // --patient wins over an ECHOVAULT_PATIENT_ID left in the environment.
    let patient_id = if a.patient.is_some() { None } else { super::patient_id_arg(a.patient_id.as_deref(), true)? };
    if a.patient.is_none() && patient_id.is_none() {
        return Err(super::UsageError("timeline needs --patient KEY or --patient-id MRN (or ECHOVAULT_PATIENT_ID)".into()).into());
    }
    let req = TimelineRequest { patient: a.patient.clone(), patient_id, event, window: a.window, drop: a.drop };
    let res = timeline::timeline(&loaded.context(g), &req)?;
    if g.json {
        print_json(&res)?;
    } else {
        print_timeline(&res);
    }
    Ok(0)
}

fn print_timeline(res: &TimelineResult) {
    let how = if res.event.is_some() { "the earliest study in the window" } else { "the previous study" };
    println!("patient {}: {} studies, similarity to {how}", res.patient, res.studies.len());
    for s in &res.studies {
        let mark = if s.flagged { "  <- drop" } else { "" };
        let after = if s.after_event == Some(true) { " (after event)" } else { "" };
        println!(
            "  {}  {:>8}  {}{after}{mark}",
            s.date.map(|d| d.to_string()).unwrap_or_default(),
            s.similarity.map_or("-".to_owned(), |x| format!("{x:+.4}")),
            s.study.as_deref().unwrap_or("")
        );
    }
}

// ---------------------------------------------------------------- eval

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(subcommand)]
    what: EvalWhat,
}

impl EvalArgs {
    pub fn groups(&self) -> Groups<'_> {
        let c = match &self.what {
            EvalWhat::ZeroShot(z) => &z.common,
            EvalWhat::Reid(r) => &r.common,
            EvalWhat::Transitions(t) => &t.common,
            EvalWhat::Retrieval(r) => &r.common,
        };
        Groups { image: Some(&c.image), ..model_groups(&c.index, &c.space, &c.model, &c.device) }
    }
}

#[derive(Subcommand, Debug)]
enum EvalWhat {
    /// Zero-shot readings against labels: MAE for regression tasks, AUC for binary ones,
    /// accuracy for categorical ones.
    #[command(
        after_help = "Examples:\n  echovault eval zero-shot --manifest FileList.csv --split TEST\n  echovault eval zero-shot --manifest labels.jsonl --task pacemaker --predictions preds.jsonl"
    )]
    ZeroShot(EvalZeroShot),
    /// Patient re-identification: AUC of same-patient vs different-patient video pairs, and the
    /// mean similarity within a study, within a patient, across patients.
    #[command(
        after_help = "Examples:\n  echovault eval reid --manifest videos.jsonl\n  echovault eval reid --manifest videos.jsonl --max-pairs 20000 --dump-inputs reid-inputs.json"
    )]
    Reid(EvalReid),
    /// Clinical transitions: AUC of similarity to the earliest study before vs after an event.
    #[command(
        after_help = "Examples:\n  echovault eval transitions --manifest events.jsonl\n  echovault eval transitions --manifest events.jsonl --studies videos.jsonl --window 365"
    )]
    Transitions(EvalTransitions),
    /// Cross-modal retrieval over indexed video–report pairs: MCMRR, recall@1/5/10.
    #[command(
        after_help = "Examples:\n  echovault eval retrieval\n  echovault eval retrieval --manifest videos.jsonl --markdown retrieval.md"
    )]
    Retrieval(EvalRetrieval),
}

#[derive(Args, Debug, Clone)]
struct EvalCommon {
    /// Bootstrap resamples for the 95 % intervals.
    #[arg(long, default_value_t = BOOTSTRAP_RESAMPLES)]
    resamples: usize,
    /// Bootstrap seed.
    #[arg(long, default_value_t = BOOTSTRAP_SEED)]
    seed: u64,
    /// Also write the Markdown table to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write the exact inputs of the metrics (embeddings, labels) as JSON, for an independent
    /// re-computation.
    #[arg(long)]
    dump_inputs: Option<PathBuf>,
    #[command(flatten)]
    pub index: IndexOpts,
    #[command(flatten)]
    pub space: SpaceOpts,
    #[command(flatten)]
    pub model: ModelOpts,
    #[command(flatten)]
    pub device: DeviceOpts,
    #[command(flatten)]
    image: ImageOpts,
}

#[derive(Args, Debug)]
struct EvalZeroShot {
    /// Labels: JSONL/JSON/CSV with a file (or id) per row and a column per task (e.g. `EF`;
    /// devices as booleans or a `devices` list). EchoNet-Dynamic's FileList.csv works as it is.
    #[arg(long)]
    manifest: PathBuf,
    /// Only rows of this split (e.g. TEST).
    #[arg(long)]
    split: Option<String>,
    /// Prompt file, ours or the EchoCLIP reference's `prompts_used.json` (default: built-in).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Tasks (comma-separated; default: every task the manifest labels).
    #[arg(long, value_delimiter = ',')]
    task: Vec<String>,
    /// Frames read: zero-shot (the paper's), all, or START:END:STEP [default: zero-shot].
    #[arg(long, alias = "sampling", value_name = "zero-shot|all|START:END:STEP")]
    frames: Option<FrameSampling>,
    /// Write every input's readings and labels as JSON Lines.
    #[arg(long)]
    predictions: Option<PathBuf>,
    #[command(flatten)]
    common: EvalCommon,
}

#[derive(Args, Debug)]
struct EvalReid {
    /// Videos with their patient (and optionally study, date): a file (or id) per row.
    #[arg(long)]
    manifest: PathBuf,
    /// At most this many pairs (a seeded sample beyond).
    #[arg(long, default_value_t = 100_000)]
    max_pairs: usize,
    #[command(flatten)]
    common: EvalCommon,
}

#[derive(Args, Debug)]
struct EvalTransitions {
    /// Events: patient, date, event (type) per row.
    #[arg(long)]
    manifest: PathBuf,
    /// The studies: a video manifest (file, patient, study, date). Default: the index's studies
    /// (the events' patients are pseudonymised with the index's secret to find them).
    #[arg(long)]
    studies: Option<PathBuf>,
    /// Days either side of an event.
    #[arg(long, default_value_t = 200)]
    window: i64,
    #[command(flatten)]
    common: EvalCommon,
}

#[derive(Args, Debug)]
struct EvalRetrieval {
    /// Only these videos (a file or id per row). Default: every indexed video whose study has a
    /// report.
    #[arg(long)]
    manifest: Option<PathBuf>,
    #[command(flatten)]
    common: EvalCommon,
}

impl EvalCommon {
    fn dump(&self) -> bool {
        self.dump_inputs.is_some()
    }
}

/// Writes the files the flags ask for, then prints the table (or the JSON).
fn finish(g: &Global, c: &EvalCommon, res: &EvalResult) -> anyhow::Result<i32> {
    if let Some(p) = &c.dump_inputs {
        if let Some(v) = &res.inputs {
            write(p, &v.to_string())?;
        }
    }
    if let Some(p) = &c.markdown {
        write(p, &res.markdown)?;
    }
    if g.json {
        print_json(res)?;
    } else {
        println!("{}", res.markdown);
        print_failed(&res.failed);
    }
    Ok(exit_code(&res.failed, res.rows.iter().any(|r| r.n > 0 && r.est.is_some())))
}

fn write(p: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))
}

pub fn run_eval(g: &Global, a: &EvalArgs) -> anyhow::Result<i32> {
    match &a.what {
        EvalWhat::ZeroShot(z) => {
            let req = eval::EvalZeroShotRequest {
                manifest: z.manifest.clone(),
                split: z.split.clone(),
                prompts: z.prompts.clone(),
                task: z.task.clone(),
                frames: zero_shot_frames(g, z.frames),
                resamples: z.common.resamples,
                seed: z.common.seed,
                dump_inputs: z.common.dump(),
            };
            let loaded = Loaded::open(g, false, Prefer::ZeroShot)?;
            let res = eval::eval_zero_shot(&loaded.context(g), &req)?;
            if let Some(p) = &z.predictions {
                let mut text = String::new();
                for pred in &res.predictions {
                    text.push_str(&serde_json::to_value(pred)?.to_string());
                    text.push('\n');
                }
                write(p, &text)?;
            }
            finish(g, &z.common, &res)
        }
        EvalWhat::Reid(r) => {
            let req = eval::EvalReidRequest {
                manifest: r.manifest.clone(),
                max_pairs: r.max_pairs,
                resamples: r.common.resamples,
                seed: r.common.seed,
                dump_inputs: r.common.dump(),
            };
            let loaded = Loaded::open(g, false, Prefer::Similarity)?;
            finish(g, &r.common, &eval::eval_reid(&loaded.context(g), &req)?)
        }
        EvalWhat::Transitions(t) => {
            let req = eval::EvalTransitionsRequest {
                manifest: t.manifest.clone(),
                studies: t.studies.clone(),
                window: t.window,
                resamples: t.common.resamples,
                seed: t.common.seed,
                dump_inputs: t.common.dump(),
            };
            let loaded = Loaded::open(g, t.studies.is_none(), Prefer::Similarity)?;
            finish(g, &t.common, &eval::eval_transitions(&loaded.context(g), &req)?)
        }
        EvalWhat::Retrieval(r) => {
            let req = eval::EvalRetrievalRequest {
                manifest: r.manifest.clone(),
                resamples: r.common.resamples,
                seed: r.common.seed,
                dump_inputs: r.common.dump(),
            };
            let loaded = Loaded::open(g, true, Prefer::Similarity)?;
            finish(g, &r.common, &eval::eval_retrieval(&loaded.context(g), &req)?)
        }
    }
}
