//! The clinical questions: `zero-shot`, `reid`, `timeline`, and `eval` (zero-shot, reid,
//! transitions, retrieval) with bootstrap intervals and the paper's figures beside ours.

use super::{open_engine, Global, EXIT_PARTIAL};
use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand};
use echovault::engine::{Embedder, Engine};
use echovault::index::{Filter, Index, ItemId, ItemRecord, Kind, Query, StudyDate};
use echovault::ingest::{report_id, study_id};
use echovault::media::FrameSampling;
use echovault::tasks::manifest::{self, Manifest, Row};
use echovault::tasks::metrics::{auc, bootstrap, mae, Estimate, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED};
use echovault::tasks::pairs::{self, mean, recall_at, reid_pairs, retrieval_ranks, transition_scores, Visit};
use echovault::tasks::prompts::{self, Mode, PromptFile};
use echovault::tasks::source::{embed_task, VideoSource};
use echovault::tasks::zeroshot::{read, EmbeddedTask, Reading};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Which of several `--model`s a command uses, as the paper found best: zero-shot readings with
/// EchoCLIP (CLIP BPE), similarity and retrieval with EchoCLIP-R (a model directory holding
/// `template_vocab.txt`). With one model, that one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prefer {
    ZeroShot,
    Similarity,
}

fn pick(models: &[PathBuf], given_vocab: Option<&echovault::engine::TemplateVocabArg>, prefer: Prefer) -> usize {
    let template = |d: &PathBuf| echovault::engine::template_vocab_for(d, given_vocab, models.len() == 1).is_some();
    models.iter().position(|d| template(d) == (prefer == Prefer::Similarity)).unwrap_or(0)
}

/// The model and, when the index exists, the index: read-only commands never create an index.
enum Loaded {
    Engine(Box<Engine>, usize),
    Bare(Box<Embedder>),
}

impl Loaded {
    fn open(g: &Global, need_index: bool, prefer: Prefer) -> anyhow::Result<Loaded> {
        let cfg = g.engine_config()?;
        let models: Vec<PathBuf> = std::iter::once(cfg.model_dir.clone()).chain(cfg.extra_models.iter().cloned()).collect();
        let i = pick(&models, cfg.template_vocab.as_ref(), prefer);
        if g.index.is_dir() {
            return Ok(Loaded::Engine(Box::new(open_engine(g)?), i));
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

    /// The model this command uses (and its space).
    fn embedder(&self) -> &Embedder {
        match self {
            Loaded::Engine(e, i) => &e.embedders[*i],
            Loaded::Bare(e) => e,
        }
    }

    fn index(&self) -> Option<&Index> {
        match self {
            Loaded::Engine(e, _) => Some(&e.index),
            Loaded::Bare(_) => None,
        }
    }

    /// The index, for commands that need one.
    fn need_index(&self) -> anyhow::Result<&Index> {
        self.index().context("no index")
    }

    fn source(&self, zero_shot: FrameSampling, video: FrameSampling) -> VideoSource<'_> {
        VideoSource::new(self.embedder(), self.index(), zero_shot, video)
    }
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
    /// Frames read: zero-shot (0..40 step 2, the paper's), all, or START:END:STEP.
    #[arg(long, default_value = "zero-shot")]
    frames: FrameSampling,
    /// Keep the readings in the indexed videos' records (`zero_shot.TASK`).
    #[arg(long)]
    store: bool,
    /// List the prompt file's tasks and exit.
    #[arg(long)]
    list_tasks: bool,
}

fn load_prompts(path: Option<&Path>) -> anyhow::Result<(PromptFile, String)> {
    Ok(match path {
        Some(p) => (prompts::load(p)?, p.display().to_string()),
        None => (prompts::default_prompts(), "built-in".to_owned()),
    })
}

/// The tasks named (`all`: every task of the file).
fn select_tasks(file: &PromptFile, names: &[String]) -> anyhow::Result<Vec<String>> {
    if names.is_empty() || names.iter().any(|n| n == "all") {
        return Ok(file.keys().cloned().collect());
    }
    let mut out: Vec<String> = Vec::new();
    for n in names {
        anyhow::ensure!(
            file.contains_key(n),
            "no task '{n}' in the prompt file (it has: {})",
            file.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    Ok(out)
}

fn embed_tasks(e: &Embedder, file: &PromptFile, names: &[String]) -> anyhow::Result<Vec<(String, EmbeddedTask)>> {
    names
        .iter()
        .map(|n| Ok((n.clone(), embed_task(e, &file[n]).with_context(|| format!("embedding the prompts of task '{n}'"))?)))
        .collect()
}

fn reading_text(task: &str, r: &Reading, unit: Option<&str>) -> String {
    match r {
        Reading::Binary { score, present: Some(p) } => format!("{task}={score:.4} ({})", if *p { "present" } else { "absent" }),
        Reading::Binary { score, present: None } => format!("{task}={score:.4}"),
        Reading::Regression { value } => {
            format!("{task}={}{}", prompts::format_value(*value), unit.map(|u| format!(" {u}")).unwrap_or_default())
        }
        Reading::Categorical { class, .. } => format!("{task}={class}"),
    }
}

fn stored_value(r: &Reading) -> String {
    match r {
        Reading::Binary { score, .. } => format!("{score:.6}"),
        Reading::Regression { value } => prompts::format_value(*value),
        Reading::Categorical { class, .. } => class.clone(),
    }
}

pub fn run_zero_shot(g: &Global, a: &ZeroShotArgs) -> anyhow::Result<i32> {
    let (file, prompts_name) = load_prompts(a.prompts.as_deref())?;
    if a.list_tasks {
        if g.json {
            println!("{}", json!({ "prompts": prompts_name, "tasks": file }));
        } else {
            for (name, t) in &file {
                println!("{name:<28} {:<11} {}", format!("{:?}", t.mode).to_lowercase(), t.description.clone().unwrap_or_default());
            }
        }
        return Ok(0);
    }
    let names = select_tasks(&file, &a.task)?;
    let loaded = Loaded::open(g, !a.ids.is_empty() || a.all_indexed || a.store, Prefer::ZeroShot)?;
    let src = loaded.source(a.frames, g.sampling);
    let tasks = embed_tasks(loaded.embedder(), &file, &names)?;

    let mut inputs: Vec<(String, anyhow::Result<echovault::tasks::source::Embedded>)> = Vec::new();
    for p in &a.videos {
        inputs.push((p.display().to_string(), src.frames_of_file(p).map_err(Into::into)));
    }
    let mut ids = a.ids.clone();
    if a.all_indexed {
        if let Some(index) = loaded.index() {
            ids.extend(index.items(Some(Kind::Video))?.into_iter().map(|r| r.id.0));
        }
    }
    for id in &ids {
        inputs.push((id.clone(), src.item(id).map_err(anyhow::Error::from).and_then(|r| Ok(src.frames_of_item(&r)?))));
    }

    let mut results = Vec::new();
    let mut failed = Vec::new();
    let mut batch = loaded.index().map(Index::batch);
    for (input, got) in inputs {
        let e = match got {
            Ok(e) => e,
            Err(err) => {
                failed.push(json!({ "input": input, "reason": format!("{err:#}") }));
                continue;
            }
        };
        let mut readings = serde_json::Map::new();
        let mut line = Vec::new();
        let mut record = e.record.clone();
        for (name, t) in &tasks {
            let Some(r) = read(&e.frames, t) else { continue };
            line.push(reading_text(name, &r, file[name].unit.as_deref()));
            if let Some(rec) = record.as_mut() {
                rec.extra.insert(format!("zero_shot.{name}"), stored_value(&r));
            }
            readings.insert(name.clone(), serde_json::to_value(&r)?);
        }
        if let (true, Some(mut rec), Some(b)) = (a.store, record, batch.as_mut()) {
            rec.extra.insert("zero_shot.model".into(), loaded.embedder().space_name.clone());
            b.put_item(rec);
        }
        if !g.json {
            println!("{input}: {}", line.join("  "));
        }
        results.push(
            json!({ "input": input, "id": e.record.as_ref().map(|r| r.id.0.clone()), "frames": e.frames.len(), "readings": readings }),
        );
    }
    let mut stored = 0;
    if let (true, Some(index), Some(b)) = (a.store, loaded.index(), batch) {
        stored = results.iter().filter(|r| !r["id"].is_null()).count();
        if !b.is_empty() {
            index.commit(b)?;
        }
    }
    if g.json {
        println!(
            "{}",
            json!({ "model": loaded.embedder().space_name, "prompts": prompts_name, "frames": a.frames.to_string(), "tasks": names,
                    "results": results, "failed": failed, "stored": stored })
        );
    } else {
        for f in &failed {
            println!("failed: {}: {}", f["input"].as_str().unwrap_or(""), f["reason"].as_str().unwrap_or(""));
        }
        if a.store {
            println!("stored the readings of {stored} indexed videos");
        }
    }
    Ok(if failed.is_empty() { 0 } else { EXIT_PARTIAL })
}

// ---------------------------------------------------------------- reid

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("query").required(true).args(["video", "video_id", "study_id"])))]
pub struct ReidArgs {
    /// A video file (DICOM, AVI, MP4).
    video: Option<PathBuf>,
    /// An indexed video.
    #[arg(long)]
    video_id: Option<String>,
    /// An indexed study (its StudyInstanceUID or study id).
    #[arg(long)]
    study_id: Option<String>,
    /// Candidates to show.
    #[arg(short, long, default_value_t = 10)]
    k: usize,
    /// Also show studies of the query's own date.
    #[arg(long)]
    same_date: bool,
}

pub fn run_reid(g: &Global, a: &ReidArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(a.k > 0, "-k must be at least 1");
    let loaded = Loaded::open(g, true, Prefer::Similarity)?;
    let (index, emb) = (loaded.need_index()?, loaded.embedder());
    let src = loaded.source(FrameSampling::ZERO_SHOT, g.sampling);
    let (query, rec, v) = if let Some(p) = &a.video {
        let (rec, v) = src.video_of_file(p)?;
        (json!({ "video": p.display().to_string() }), rec, v)
    } else if let Some(id) = &a.video_id {
        let rec = src.item(id)?;
        let v = src
            .stored_vector(&rec.id, Kind::Video)?
            .with_context(|| format!("video '{id}' has no vector in space '{}'", emb.space_name))?;
        (json!({ "video_id": id }), Some(rec), v)
    } else {
        let s = a.study_id.clone().unwrap_or_default();
        let id = if s.starts_with("study:") { s.clone() } else { study_id(&s) };
        let rec = src.item(&id)?;
        let v =
            src.stored_vector(&rec.id, Kind::Study)?.with_context(|| format!("study '{s}' has no vector in space '{}'", emb.space_name))?;
        (json!({ "study_id": s }), Some(rec), v)
    };
    // A DICOM file the index does not hold still says whose study it is (the patient keyed with
    // this index's secret, as ingest would store it).
    let header = match (&rec, &a.video) {
        (None, Some(p)) if echovault::media::dicom::is_dicom(p) => {
            echovault::media::dicom::DicomCine::open(p).ok().map(|c| c.info().clone())
        }
        _ => None,
    };
    let own_study = rec.as_ref().and_then(|r| r.study.clone()).or_else(|| header.as_ref().and_then(|h| h.study_uid.clone()));
    let own_date: Option<StudyDate> =
        rec.as_ref().and_then(|r| r.date).or_else(|| header.as_ref().and_then(|h| h.study_date.as_deref()?.parse().ok()));
    let own_patient = rec.as_ref().and_then(|r| r.patient.clone()).or_else(|| {
        let id = header.as_ref()?.patient_id.as_ref()?;
        Some(echovault::pseudonym::patient_key(index.secret(), id.expose()))
    });
    let mut filter = Filter::default();
    if let Some(s) = &own_study {
        filter.exclude.push(ItemId(study_id(s)));
    }
    // Over-fetch: same-date studies are dropped after the search.
    let mut q = Query::new(emb.space, Kind::Study, v, a.k * 4 + 16);
    q.filter = filter;
    let hits = index.search(&q)?;
    let hits: Vec<_> = hits.into_iter().filter(|h| a.same_date || own_date.is_none() || h.record.date != own_date).take(a.k).collect();
    let rows: Vec<Value> = hits
        .iter()
        .map(|h| {
            json!({ "study": h.record.study, "id": h.id.as_str(), "patient": h.record.patient, "date": h.record.date, "score": h.score,
                    "same_patient": own_patient.as_ref().and_then(|p| h.record.patient.as_ref().map(|q| p == q)) })
        })
        .collect();
    if g.json {
        println!(
            "{}",
            json!({ "query": query, "study": own_study, "date": own_date, "patient": own_patient, "space": emb.space_name, "candidates": rows })
        );
    } else {
        println!("studies most like {query} (other dates), space {}:", emb.space_name);
        for (i, h) in hits.iter().enumerate() {
            let same = match (&own_patient, &h.record.patient) {
                (Some(p), Some(q)) if p == q => "  same patient",
                _ => "",
            };
            println!(
                "{:>3}. {:+.4}  {}  {}  patient {}{same}",
                i + 1,
                h.score,
                h.record.date.map_or("(no date)".to_owned(), |d| d.to_string()),
                h.record.study.as_deref().unwrap_or(h.id.as_str()),
                h.record.patient.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(0)
}

// ---------------------------------------------------------------- timeline

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("who").required(true).args(["patient", "patient_id"])))]
pub struct TimelineArgs {
    /// Pseudonymous patient key (as search and reid show it).
    #[arg(long)]
    patient: Option<String>,
    /// The patient's own id (MRN): pseudonymised with the index's secret, never printed.
    #[arg(long)]
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
}

pub fn run_timeline(g: &Global, a: &TimelineArgs) -> anyhow::Result<i32> {
    let loaded = Loaded::open(g, true, Prefer::Similarity)?;
    let (index, emb) = (loaded.need_index()?, loaded.embedder());
    let key = match (&a.patient, &a.patient_id) {
        (Some(k), _) => k.clone(),
        (None, Some(raw)) => echovault::pseudonym::patient_key(index.secret(), raw),
        _ => anyhow::bail!("give --patient or --patient-id"),
    };
    let event = match &a.event {
        Some(d) => Some(d.parse::<StudyDate>().context("--event")?.days_since_epoch()),
        None => None,
    };
    let mut studies: Vec<(i64, ItemRecord, Vec<f32>)> = Vec::new();
    let mut undated = 0;
    for rec in index.items(Some(Kind::Study))? {
        if rec.patient.as_deref() != Some(key.as_str()) {
            continue;
        }
        let Some(day) = rec.date.map(StudyDate::days_since_epoch) else {
            undated += 1;
            continue;
        };
        if let Some(v) = index.get_vector(emb.space, Kind::Study, &rec.id)? {
            studies.push((day, rec, v));
        }
    }
    anyhow::ensure!(!studies.is_empty(), "no dated studies of this patient in space '{}'", emb.space_name);
    studies.sort_by(|x, y| (x.0, &x.1.id).cmp(&(y.0, &y.1.id)));
    let visits: Vec<Visit> = studies.iter().map(|(d, _, v)| Visit { patient: key.clone(), day: *d, vector: v.clone() }).collect();
    let rows = pairs::timeline(&visits, event, a.window, a.drop);
    let out: Vec<Value> = rows
        .iter()
        .map(|r| {
            let s = &studies[r.visit].1;
            json!({ "study": s.study, "date": s.date, "similarity": r.similarity, "reference": r.reference.map(|i| studies[i].1.date),
                    "after_event": event.map(|e| studies[r.visit].0 >= e), "flagged": r.flagged })
        })
        .collect();
    if g.json {
        println!(
            "{}",
            json!({ "patient": key, "event": a.event, "window_days": a.window, "space": emb.space_name, "studies": out, "undated": undated })
        );
    } else {
        let how = if a.event.is_some() { "the earliest study in the window" } else { "the previous study" };
        println!("patient {key}: {} studies, similarity to {how}", rows.len());
        for r in &rows {
            let s = &studies[r.visit].1;
            let mark = match (event, r.flagged) {
                (_, true) => "  <- drop",
                _ => "",
            };
            let after = match event {
                Some(e) if studies[r.visit].0 >= e => " (after event)",
                _ => "",
            };
            println!(
                "  {}  {:>8}  {}{after}{mark}",
                s.date.map(|d| d.to_string()).unwrap_or_default(),
                r.similarity.map_or("-".to_owned(), |x| format!("{x:+.4}")),
                s.study.as_deref().unwrap_or("")
            );
        }
    }
    Ok(0)
}

// ---------------------------------------------------------------- eval

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(subcommand)]
    what: EvalWhat,
}

#[derive(Subcommand, Debug)]
enum EvalWhat {
    /// Zero-shot readings against labels: MAE for regression tasks, AUC for binary ones,
    /// accuracy for categorical ones.
    ZeroShot(EvalZeroShot),
    /// Patient re-identification: AUC of same-patient vs different-patient video pairs, and the
    /// mean similarity within a study, within a patient, across patients.
    Reid(EvalReid),
    /// Clinical transitions: AUC of similarity to the earliest study before vs after an event.
    Transitions(EvalTransitions),
    /// Cross-modal retrieval over indexed video–report pairs: MCMRR, recall@1/5/10.
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
    /// Frames read: zero-shot (the paper's), all, or START:END:STEP.
    #[arg(long, default_value = "zero-shot")]
    frames: FrameSampling,
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

/// One line of an evaluation table.
struct Line {
    task: String,
    metric: String,
    n: usize,
    est: Option<Estimate>,
    paper: Option<&'static str>,
}

fn line_json(l: &Line) -> Value {
    json!({ "task": l.task, "metric": l.metric, "n": l.n, "value": l.est.as_ref().map(|e| e.value), "lo": l.est.as_ref().map(|e| e.lo),
            "hi": l.est.as_ref().map(|e| e.hi), "resamples": l.est.as_ref().map(|e| e.resamples), "undefined": l.est.as_ref().map(|e| e.undefined),
            "paper": l.paper })
}

fn fmt_num(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

fn markdown(title: &str, lines: &[Line]) -> String {
    let mut s = format!("{title}\n\n| task | metric | n | echovault | 95 % CI | paper |\n|---|---|---:|---:|---|---|\n");
    for l in lines {
        let (v, ci) = match &l.est {
            Some(e) if e.lo.is_finite() => (fmt_num(e.value), format!("{} – {}", fmt_num(e.lo), fmt_num(e.hi))),
            Some(e) => (fmt_num(e.value), "–".into()),
            None => ("–".into(), "–".into()),
        };
        s.push_str(&format!("| {} | {} | {} | {v} | {ci} | {} |\n", l.task, l.metric, l.n, l.paper.unwrap_or("–")));
    }
    s
}

fn finish(g: &Global, c: &EvalCommon, what: &str, model: &str, lines: &[Line], mut extra: Value, failed: &[Value]) -> anyhow::Result<i32> {
    let md =
        markdown(&format!("echovault eval {what} (model space `{model}`, {} bootstrap resamples, seed {})", c.resamples, c.seed), lines);
    if let Some(p) = &c.markdown {
        std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    if g.json {
        extra["eval"] = json!(what);
        extra["model"] = json!(model);
        extra["rows"] = Value::Array(lines.iter().map(line_json).collect());
        extra["failed"] = json!(failed);
        extra["markdown"] = json!(md);
        println!("{extra}");
    } else {
        println!("{md}");
        for f in failed {
            println!("failed: {}: {}", f["input"].as_str().unwrap_or(""), f["reason"].as_str().unwrap_or(""));
        }
    }
    Ok(if failed.is_empty() { 0 } else { EXIT_PARTIAL })
}

fn dump(c: &EvalCommon, v: Value) -> anyhow::Result<()> {
    if let Some(p) = &c.dump_inputs {
        std::fs::write(p, v.to_string()).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// The paper's figure for a zero-shot task, where it reports one.
fn paper_zero_shot(task: &str, mode: Mode) -> Option<&'static str> {
    match (task, mode) {
        ("ejection_fraction", _) => Some("MAE 7.1 % (external)"),
        ("pacemaker" | "impella" | "tavr" | "mitraclip", _) => Some("AUC 0.84–0.97 (devices)"),
        _ => None,
    }
}

pub fn run_eval(g: &Global, a: &EvalArgs) -> anyhow::Result<i32> {
    match &a.what {
        EvalWhat::ZeroShot(z) => eval_zero_shot(g, z),
        EvalWhat::Reid(r) => eval_reid(g, r),
        EvalWhat::Transitions(t) => eval_transitions(g, t),
        EvalWhat::Retrieval(r) => eval_retrieval(g, r),
    }
}

/// A row's video: an `id` column names an indexed item, else the file column names a file.
enum Input {
    Id(String),
    File(PathBuf),
}

fn row_input(m: &Manifest, r: &Row) -> anyhow::Result<Input> {
    if let Some(id) = r.text(&["id", "item", "video_id"]) {
        return Ok(Input::Id(id));
    }
    m.file(r).map(Input::File).with_context(|| format!("{}: no file (columns {}) nor id", m.at(r), manifest::FILE_COLUMNS.join("/")))
}

fn input_name(i: &Input) -> String {
    match i {
        Input::Id(s) => s.clone(),
        Input::File(p) => p.display().to_string(),
    }
}

/// Categorical label: the class whose name the manifest gives (case-insensitive).
fn class_label(r: &Row, names: &[&str], classes: &[String]) -> Option<usize> {
    let t = r.text(names)?;
    classes.iter().position(|c| c.eq_ignore_ascii_case(&t))
}

fn eval_zero_shot(g: &Global, a: &EvalZeroShot) -> anyhow::Result<i32> {
    let m = manifest::read(&a.manifest)?;
    let rows = m.split(a.split.as_deref());
    anyhow::ensure!(!rows.is_empty(), "{}: no rows of split {:?}", a.manifest.display(), a.split);
    let (file, prompts_name) = load_prompts(a.prompts.as_deref())?;
    // Tasks: those named, else every task the manifest labels at least once.
    let label_names = |t: &str| file[t].label_names(t);
    // A task is labelled when some row gives its value (binary: both present and absent rows).
    let labelled = |t: &str| {
        let names = label_names(t);
        let n: Vec<&str> = names.iter().map(String::as_str).collect();
        match file[t].mode {
            Mode::Regression => rows.iter().any(|r| r.number(&n).is_some()),
            Mode::Binary => [true, false].iter().all(|want| rows.iter().any(|r| r.flag(&n) == Some(*want))),
            Mode::Categorical => rows.iter().any(|r| r.text(&n).is_some()),
        }
    };
    let names: Vec<String> =
        if a.task.is_empty() { file.keys().filter(|t| labelled(t)).cloned().collect() } else { select_tasks(&file, &a.task)? };
    anyhow::ensure!(
        !names.is_empty(),
        "{}: no column labels any task of the prompt file ({}); columns are matched by task name or the task's `labels`",
        a.manifest.display(),
        file.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    let loaded = Loaded::open(g, false, Prefer::ZeroShot)?;
    let src = loaded.source(a.frames, g.sampling);
    let tasks = embed_tasks(loaded.embedder(), &file, &names)?;

    // Per task: (reading number or class, label) per input that has both.
    let mut per_task: BTreeMap<String, Vec<(f64, f64)>> = names.iter().map(|n| (n.clone(), Vec::new())).collect();
    let mut failed = Vec::new();
    let mut predictions = Vec::new();
    let mut dumped = Vec::new();
    for r in &rows {
        let input = match row_input(&m, r) {
            Ok(i) => i,
            Err(e) => {
                failed.push(json!({ "input": m.at(r), "reason": format!("{e:#}") }));
                continue;
            }
        };
        let got = match &input {
            Input::Id(id) => src.item(id).and_then(|rec| src.frames_of_item(&rec)),
            Input::File(p) => src.frames_of_file(p),
        };
        let e = match got {
            Ok(e) => e,
            Err(err) => {
                failed.push(json!({ "input": input_name(&input), "reason": err.to_string() }));
                continue;
            }
        };
        let mut pred = serde_json::Map::new();
        let mut labels = serde_json::Map::new();
        for (name, t) in &tasks {
            let ln = label_names(name);
            let ln: Vec<&str> = ln.iter().map(String::as_str).collect();
            let label = match t {
                EmbeddedTask::Regression(..) => r.number(&ln),
                EmbeddedTask::Binary(..) => r.flag(&ln).map(|b| if b { 1.0 } else { 0.0 }),
                EmbeddedTask::Categorical(c) => {
                    let classes: Vec<String> = c.iter().map(|x| x.0.clone()).collect();
                    class_label(r, &ln, &classes).map(|i| i as f64)
                }
            };
            let Some(reading) = read(&e.frames, t) else { continue };
            let value = match (&reading, t) {
                (Reading::Categorical { class, .. }, EmbeddedTask::Categorical(c)) => {
                    c.iter().position(|x| &x.0 == class).unwrap_or(0) as f64
                }
                _ => reading.number(),
            };
            pred.insert(name.clone(), serde_json::to_value(&reading)?);
            if let Some(l) = label {
                labels.insert(name.clone(), json!(l));
                if let Some(v) = per_task.get_mut(name) {
                    v.push((value, l));
                }
            }
        }
        predictions.push(
            json!({ "input": input_name(&input), "id": e.record.as_ref().map(|x| x.id.0.clone()), "readings": pred, "labels": labels }),
        );
        if a.common.dump_inputs.is_some() {
            dumped.push(json!({ "frames": e.frames, "labels": labels }));
        }
    }
    if let Some(p) = &a.predictions {
        let text: String = predictions.iter().map(|v| format!("{v}\n")).collect();
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    if a.common.dump_inputs.is_some() {
        let tdump: Vec<Value> = tasks
            .iter()
            .map(|(name, t)| match t {
                EmbeddedTask::Binary(p, _) => json!({ "name": name, "mode": "binary", "prompts": p }),
                EmbeddedTask::Regression(p, v) => json!({ "name": name, "mode": "regression", "prompts": p, "values": v }),
                EmbeddedTask::Categorical(c) => {
                    json!({ "name": name, "mode": "categorical", "classes": c.iter().map(|x| &x.1).collect::<Vec<_>>() })
                }
            })
            .collect();
        dump(
            &a.common,
            json!({ "op": "eval_zero_shot", "tasks": tdump, "inputs": dumped, "resamples": a.common.resamples, "seed": a.common.seed }),
        )?;
    }
    let c = &a.common;
    let mut lines = Vec::new();
    for (name, t) in &tasks {
        let pairs = &per_task[name];
        let n = pairs.len();
        let (metric, est) = match t {
            EmbeddedTask::Regression(..) => (
                format!("MAE{}", file[name].unit.as_deref().map(|u| format!(" ({u})")).unwrap_or_default()),
                bootstrap(n, c.resamples, c.seed, |idx| {
                    let (p, l): (Vec<f64>, Vec<f64>) = idx.iter().map(|&i| pairs[i]).unzip();
                    mae(&p, &l)
                }),
            ),
            EmbeddedTask::Binary(..) => (
                "AUC".to_owned(),
                bootstrap(n, c.resamples, c.seed, |idx| {
                    let pos: Vec<f64> = idx.iter().filter(|&&i| pairs[i].1 == 1.0).map(|&i| pairs[i].0).collect();
                    let neg: Vec<f64> = idx.iter().filter(|&&i| pairs[i].1 == 0.0).map(|&i| pairs[i].0).collect();
                    auc(&pos, &neg)
                }),
            ),
            EmbeddedTask::Categorical(..) => (
                "accuracy".to_owned(),
                bootstrap(n, c.resamples, c.seed, |idx| {
                    (!idx.is_empty()).then(|| idx.iter().filter(|&&i| pairs[i].0 == pairs[i].1).count() as f64 / idx.len() as f64)
                }),
            ),
        };
        lines.push(Line { task: name.clone(), metric, n, est, paper: paper_zero_shot(name, file[name].mode) });
    }
    let model = loaded.embedder().space_name.clone();
    finish(
        g,
        c,
        "zero-shot",
        &model,
        &lines,
        json!({ "manifest": a.manifest.display().to_string(), "prompts": prompts_name, "frames": a.frames.to_string(), "inputs": rows.len() }),
        &failed,
    )
}

/// Video vectors of a manifest's rows with their patient, study and date.
struct Labelled {
    vectors: Vec<Vec<f32>>,
    patients: Vec<String>,
    studies: Vec<String>,
    dates: Vec<Option<StudyDate>>,
}

fn labelled_videos(m: &Manifest, src: &VideoSource<'_>) -> anyhow::Result<(Labelled, Vec<Value>)> {
    let mut out = Labelled { vectors: Vec::new(), patients: Vec::new(), studies: Vec::new(), dates: Vec::new() };
    let mut failed = Vec::new();
    for r in &m.rows {
        let got = (|| -> anyhow::Result<(String, Option<ItemRecord>, Vec<f32>, String)> {
            let input = row_input(m, r)?;
            let patient =
                r.text(&["patient", "patient_id", "patientid", "mrn"]).with_context(|| format!("{}: no patient column", m.at(r)))?;
            let (rec, v) = match &input {
                Input::Id(id) => {
                    let rec = src.item(id)?;
                    let v =
                        src.stored_vector(&rec.id, Kind::Video)?.with_context(|| format!("'{id}' has no video vector in this space"))?;
                    (Some(rec), v)
                }
                Input::File(p) => src.video_of_file(p)?,
            };
            Ok((patient, rec, v, input_name(&input)))
        })();
        // A row's date must be a day: a bad one refuses the row, naming it.
        let got = got.and_then(|x| Ok((x, r.text(&["date", "study_date"]).map(|d| d.parse::<StudyDate>()).transpose()?)));
        match got {
            Ok(((patient, rec, v, name), date)) => {
                // A file the index does not hold: the DICOM header's study and date.
                let (file_study, file_date) = match (&rec, m.file(r)) {
                    (None, Some(p)) => VideoSource::file_facts(&p),
                    _ => (None, None),
                };
                let study = r
                    .text(&["study", "study_uid", "study_id"])
                    .or_else(|| rec.as_ref().and_then(|x| x.study.clone()))
                    .or(file_study)
                    .unwrap_or_else(|| Path::new(&name).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or(name.clone()));
                out.dates.push(date.or_else(|| rec.and_then(|x| x.date)).or(file_date));
                out.vectors.push(v);
                out.patients.push(patient);
                out.studies.push(study);
            }
            Err(e) => failed.push(json!({ "input": m.at(r), "reason": format!("{e:#}") })),
        }
    }
    Ok((out, failed))
}

fn mean_estimate(v: &[f64], c: &EvalCommon) -> Option<Estimate> {
    bootstrap(v.len(), c.resamples, c.seed, |idx| mean(&idx.iter().map(|&i| v[i]).collect::<Vec<_>>()))
}

fn eval_reid(g: &Global, a: &EvalReid) -> anyhow::Result<i32> {
    let m = manifest::read(&a.manifest)?;
    let loaded = Loaded::open(g, false, Prefer::Similarity)?;
    let src = loaded.source(FrameSampling::ZERO_SHOT, g.sampling);
    let (l, failed) = labelled_videos(&m, &src)?;
    let c = &a.common;
    let p = reid_pairs(&l.vectors, &l.patients, &l.studies, a.max_pairs, c.seed);
    dump(
        c,
        json!({ "op": "eval_reid", "vectors": l.vectors, "patients": l.patients, "studies": l.studies, "max_pairs": a.max_pairs,
                    "resamples": c.resamples, "seed": c.seed }),
    )?;
    // AUC over the pairs of different studies: same patient (1) vs different patients (0).
    let scored: Vec<(f64, bool)> = p.same_patient.iter().map(|&s| (s, true)).chain(p.different.iter().map(|&s| (s, false))).collect();
    let est = bootstrap(scored.len(), c.resamples, c.seed, |idx| {
        let pos: Vec<f64> = idx.iter().filter(|&&i| scored[i].1).map(|&i| scored[i].0).collect();
        let neg: Vec<f64> = idx.iter().filter(|&&i| !scored[i].1).map(|&i| scored[i].0).collect();
        auc(&pos, &neg)
    });
    let lines = vec![
        Line { task: "same patient vs different patients".into(), metric: "AUC".into(), n: scored.len(), est, paper: Some("0.86") },
        Line {
            task: "same study".into(),
            metric: "mean cosine".into(),
            n: p.same_study.len(),
            est: mean_estimate(&p.same_study, c),
            paper: Some("0.87"),
        },
        Line {
            task: "same patient, other study".into(),
            metric: "mean cosine".into(),
            n: p.same_patient.len(),
            est: mean_estimate(&p.same_patient, c),
            paper: Some("0.64"),
        },
        Line {
            task: "different patients".into(),
            metric: "mean cosine".into(),
            n: p.different.len(),
            est: mean_estimate(&p.different, c),
            paper: Some("0.40"),
        },
    ];
    let model = loaded.embedder().space_name.clone();
    finish(
        g,
        c,
        "reid",
        &model,
        &lines,
        json!({ "manifest": a.manifest.display().to_string(), "videos": l.vectors.len(), "sampled_pairs": p.sampled }),
        &failed,
    )
}

/// A study's patient, date and video vectors.
type StudyVideos = (String, Option<StudyDate>, Vec<Vec<f32>>);

/// The paper's figure for an event type.
fn paper_transition(kind: &str) -> Option<&'static str> {
    let k = kind.to_ascii_lowercase();
    if k.contains("transplant") {
        Some("0.79 (heart transplant)")
    } else if ["surg", "valve", "cabg", "replacement", "repair"].iter().any(|w| k.contains(w)) {
        Some("0.77 (cardiac surgery)")
    } else {
        None
    }
}

fn eval_transitions(g: &Global, a: &EvalTransitions) -> anyhow::Result<i32> {
    let ev = manifest::read(&a.manifest)?;
    let loaded = Loaded::open(g, a.studies.is_none(), Prefer::Similarity)?;
    let src = loaded.source(FrameSampling::ZERO_SHOT, g.sampling);
    let mut failed = Vec::new();
    // Visits: one per study.
    let (visits, from_index): (Vec<Visit>, bool) = match &a.studies {
        Some(path) => {
            let m = manifest::read(path)?;
            let (l, f) = labelled_videos(&m, &src)?;
            failed.extend(f);
            let mut by_study: BTreeMap<String, StudyVideos> = BTreeMap::new();
            for i in 0..l.vectors.len() {
                let e = by_study.entry(l.studies[i].clone()).or_insert_with(|| (l.patients[i].clone(), l.dates[i], Vec::new()));
                e.2.push(l.vectors[i].clone());
            }
            let mut v = Vec::new();
            for (study, (patient, date, vs)) in by_study {
                match (date.map(StudyDate::days_since_epoch), echovault::engine::mean_unit(&vs)) {
                    (Some(day), Some(vector)) => v.push(Visit { patient, day, vector }),
                    _ => failed.push(json!({ "input": study, "reason": "study without a valid date" })),
                }
            }
            (v, false)
        }
        None => {
            let (index, emb) = (loaded.need_index()?, loaded.embedder());
            let mut v = Vec::new();
            for rec in index.items(Some(Kind::Study))? {
                let (Some(patient), Some(day)) = (rec.patient.clone(), rec.date.map(StudyDate::days_since_epoch)) else { continue };
                if let Some(vector) = index.get_vector(emb.space, Kind::Study, &rec.id)? {
                    v.push(Visit { patient, day, vector });
                }
            }
            (v, true)
        }
    };
    let known: std::collections::HashSet<&str> = visits.iter().map(|v| v.patient.as_str()).collect();
    let mut events = Vec::new();
    for r in &ev.rows {
        let (Some(patient), Some(date)) = (r.text(&["patient", "patient_id", "patientid", "mrn"]), r.text(&["date", "event_date"])) else {
            failed.push(json!({ "input": ev.at(r), "reason": "an event needs patient and date" }));
            continue;
        };
        let day = match date.parse::<StudyDate>() {
            Ok(d) => d.days_since_epoch(),
            Err(e) => {
                failed.push(json!({ "input": ev.at(r), "reason": format!("event date: {e}") }));
                continue;
            }
        };
        // Index studies carry pseudonymous keys: a raw id is keyed with the index's secret.
        let patient = match (loaded.index(), from_index && !known.contains(patient.as_str())) {
            (Some(index), true) => echovault::pseudonym::patient_key(index.secret(), &patient),
            _ => patient,
        };
        let kind = r.text(&["event", "type", "event_type"]).unwrap_or_else(|| "event".into());
        events.push(pairs::Event { patient, day, kind });
    }
    let scored = transition_scores(&visits, &events, a.window);
    let c = &a.common;
    dump(
        c,
        json!({ "op": "eval_transitions", "visits": visits.iter().map(|v| json!({ "patient": v.patient, "day": v.day, "vector": v.vector })).collect::<Vec<_>>(),
                "events": events.iter().map(|e| json!({ "patient": e.patient, "day": e.day, "kind": e.kind })).collect::<Vec<_>>(),
                "window": a.window, "resamples": c.resamples, "seed": c.seed }),
    )?;
    let mut kinds: Vec<String> = events.iter().map(|e| e.kind.clone()).collect();
    kinds.sort();
    kinds.dedup();
    let mut lines = Vec::new();
    let mut groups: Vec<(String, Option<String>)> = kinds.iter().map(|k| (k.clone(), Some(k.clone()))).collect();
    if kinds.len() > 1 {
        groups.push(("all events".into(), None));
    }
    for (label, kind) in groups {
        let s: Vec<(f64, bool)> =
            scored.iter().filter(|x| kind.as_ref().is_none_or(|k| &events[x.event].kind == k)).map(|x| (x.similarity, x.after)).collect();
        let est = bootstrap(s.len(), c.resamples, c.seed, |idx| {
            let before: Vec<f64> = idx.iter().filter(|&&i| !s[i].1).map(|&i| s[i].0).collect();
            let after: Vec<f64> = idx.iter().filter(|&&i| s[i].1).map(|&i| s[i].0).collect();
            auc(&before, &after)
        });
        let paper = kind.as_deref().and_then(paper_transition);
        lines.push(Line { task: label, metric: "AUC before vs after".into(), n: s.len(), est, paper });
    }
    let model = loaded.embedder().space_name.clone();
    let used = scored.iter().map(|s| s.event).collect::<std::collections::BTreeSet<_>>().len();
    finish(
        g,
        c,
        "transitions",
        &model,
        &lines,
        json!({ "manifest": a.manifest.display().to_string(), "events": events.len(), "events_scored": used, "studies": visits.len(), "window_days": a.window }),
        &failed,
    )
}

fn eval_retrieval(g: &Global, a: &EvalRetrieval) -> anyhow::Result<i32> {
    let loaded = Loaded::open(g, true, Prefer::Similarity)?;
    let (index, emb) = (loaded.need_index()?, loaded.embedder());
    let src = loaded.source(FrameSampling::ZERO_SHOT, g.sampling);
    let mut failed = Vec::new();
    let records: Vec<ItemRecord> = match &a.manifest {
        None => index.items(Some(Kind::Video))?,
        Some(p) => {
            let m = manifest::read(p)?;
            let mut v = Vec::new();
            for r in &m.rows {
                let got = row_input(&m, r).and_then(|i| match &i {
                    Input::Id(id) => Ok(Some(src.item(id)?)),
                    Input::File(f) => Ok(src.lookup(f)?),
                });
                match got {
                    Ok(Some(rec)) => v.push(rec),
                    Ok(None) => failed.push(json!({ "input": m.at(r), "reason": "not in the index (ingest it with its report first)" })),
                    Err(e) => failed.push(json!({ "input": m.at(r), "reason": format!("{e:#}") })),
                }
            }
            v
        }
    };
    let mut videos = Vec::new();
    let mut truth = Vec::new();
    let mut reports: Vec<Vec<f32>> = Vec::new();
    let mut report_of: HashMap<String, usize> = HashMap::new();
    for rec in &records {
        let Some(study) = &rec.study else { continue };
        let rid = ItemId(report_id(study));
        let Some(v) = index.get_vector(emb.space, Kind::Video, &rec.id)? else { continue };
        let r = match report_of.get(&rid.0) {
            Some(&r) => r,
            None => {
                let Some(rv) = index.get_vector(emb.space, Kind::Report, &rid)? else { continue };
                reports.push(rv);
                report_of.insert(rid.0.clone(), reports.len() - 1);
                reports.len() - 1
            }
        };
        videos.push(v);
        truth.push(r);
    }
    anyhow::ensure!(!videos.is_empty(), "no indexed video has a report in space '{}' (ingest with --reports)", emb.space_name);
    let c = &a.common;
    dump(
        c,
        json!({ "op": "eval_retrieval", "videos": videos, "reports": reports, "truth": truth, "resamples": c.resamples, "seed": c.seed }),
    )?;
    let ranks = retrieval_ranks(&videos, &reports, &truth);
    let n = videos.len();
    let boot = |stat: &dyn Fn(&[usize]) -> Option<f64>| bootstrap(n, c.resamples, c.seed, stat);
    let mut lines = vec![Line {
        task: format!("video ↔ report ({} reports, {} videos)", ranks.reports, ranks.videos),
        metric: "MCMRR".into(),
        n,
        est: boot(&|idx| pairs::mcmrr(&ranks, idx)),
        paper: Some("206 (of 21,484)"),
    }];
    for (dir, rk) in [("video → report", &ranks.video_to_report), ("report → video", &ranks.report_to_video)] {
        lines.push(Line {
            task: dir.into(),
            metric: "mean rank".into(),
            n,
            est: boot(&|idx| mean(&idx.iter().map(|&i| rk[i] as f64).collect::<Vec<_>>())),
            paper: None,
        });
        for k in [1, 5, 10] {
            lines.push(Line {
                task: dir.into(),
                metric: format!("recall@{k}"),
                n,
                est: boot(&|idx| recall_at(&idx.iter().map(|&i| rk[i]).collect::<Vec<_>>(), k)),
                paper: None,
            });
        }
    }
    let model = emb.space_name.clone();
    finish(g, c, "retrieval", &model, &lines, json!({ "videos": ranks.videos, "reports": ranks.reports }), &failed)
}
