//! `eval` as library calls: zero-shot readings, re-identification, clinical transitions and
//! cross-modal retrieval against labels, each an [`EvalResult`]: a table of figures with 95 %
//! bootstrap intervals and the paper's figures beside ours, as rows and as Markdown. Paths in
//! the requests (manifests, prompt files, videos) are the reader's (the server's) own.

use super::context::{as_text, reason, Failure, TaskContext};
use super::manifest::{self, Manifest, Row};
use super::metrics::{auc, bootstrap, mae, Estimate, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED};
use super::pairs::{self, mean, recall_at, reid_pairs, retrieval_ranks, transition_scores, Visit};
use super::prompts::{self, Mode};
use super::source::{embed_tasks, VideoSource};
use super::zeroshot::{read, EmbeddedTask, Reading};
use crate::error::Error;
use crate::ingest::report_id;
use crate::media::FrameSampling;
use echovault_index::{ItemId, ItemRecord, Kind, StudyDate};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Pairs `eval reid` scores at most when the request gives no `max_pairs` (a seeded sample
/// beyond).
pub const DEFAULT_MAX_PAIRS: usize = 100_000;
/// Days either side of an event when the request gives no `window`.
pub const DEFAULT_WINDOW: i64 = 200;
/// The most bootstrap resamples a request may ask for.
pub const MAX_RESAMPLES: usize = 100_000;
/// The most pairs `eval reid` may be asked to score.
pub const MAX_PAIRS: usize = 10_000_000;
/// The widest window (days either side of an event) a request may give: a century.
pub const MAX_WINDOW: i64 = 36_525;

/// Refuses resamples beyond [`MAX_RESAMPLES`] (each is kept in memory).
fn check_resamples(resamples: usize) -> Result<(), Error> {
    if resamples > MAX_RESAMPLES {
        return Err(Error::Invalid(format!("resamples: at most {MAX_RESAMPLES}")));
    }
    Ok(())
}

/// Refuses a window outside `0..=MAX_WINDOW` days.
pub fn check_window(window: i64) -> Result<(), Error> {
    if !(0..=MAX_WINDOW).contains(&window) {
        return Err(Error::Invalid(format!("window: between 0 and {MAX_WINDOW} days")));
    }
    Ok(())
}

fn default_resamples() -> usize {
    BOOTSTRAP_RESAMPLES
}

fn default_seed() -> u64 {
    BOOTSTRAP_SEED
}

fn default_frames() -> FrameSampling {
    FrameSampling::ZERO_SHOT
}

fn default_max_pairs() -> usize {
    DEFAULT_MAX_PAIRS
}

fn default_window() -> i64 {
    DEFAULT_WINDOW
}

/// Zero-shot readings against a label manifest: MAE for regression tasks, AUC for binary ones,
/// accuracy for categorical ones.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalZeroShotRequest {
    /// Labels: JSONL/JSON/CSV with a file (or id) per row and a column per task (EchoNet's
    /// FileList.csv as it is).
    pub manifest: PathBuf,
    /// Only rows of this split (e.g. TEST).
    #[serde(default)]
    pub split: Option<String>,
    /// Prompt file (default: built-in).
    #[serde(default)]
    pub prompts: Option<PathBuf>,
    /// Tasks (default: every task the manifest labels).
    #[serde(default)]
    pub task: Vec<String>,
    /// Frames read: `zero-shot`, `all` or `START:END:STEP`.
    #[serde(default = "default_frames", with = "as_text")]
    pub frames: FrameSampling,
    /// Bootstrap resamples for the 95 % intervals.
    #[serde(default = "default_resamples")]
    pub resamples: usize,
    /// Bootstrap seed.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Keep the exact inputs of the metrics in [`EvalResult::inputs`].
    #[serde(skip)]
    pub dump_inputs: bool,
}

/// Patient re-identification over a video manifest: AUC of same- vs different-patient pairs and
/// the mean similarity within a study, within a patient, across patients.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalReidRequest {
    /// Videos with their patient (and optionally study, date): a file (or id) per row.
    pub manifest: PathBuf,
    /// At most this many pairs (a seeded sample beyond).
    #[serde(default = "default_max_pairs")]
    pub max_pairs: usize,
    /// Bootstrap resamples for the 95 % intervals.
    #[serde(default = "default_resamples")]
    pub resamples: usize,
    /// Bootstrap seed.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Keep the exact inputs of the metrics in [`EvalResult::inputs`].
    #[serde(skip)]
    pub dump_inputs: bool,
}

/// Clinical transitions: AUC of the similarity to the earliest study before vs after an event.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalTransitionsRequest {
    /// Events: patient, date, event (type) per row.
    pub manifest: PathBuf,
    /// The studies: a video manifest (file, patient, study, date). Default: the index's studies
    /// (the events' patients are pseudonymised with the index's secret to find them).
    #[serde(default)]
    pub studies: Option<PathBuf>,
    /// Days either side of an event.
    #[serde(default = "default_window")]
    pub window: i64,
    /// Bootstrap resamples for the 95 % intervals.
    #[serde(default = "default_resamples")]
    pub resamples: usize,
    /// Bootstrap seed.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Keep the exact inputs of the metrics in [`EvalResult::inputs`].
    #[serde(skip)]
    pub dump_inputs: bool,
}

/// Cross-modal retrieval over indexed video–report pairs: MCMRR, recall@1/5/10.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalRetrievalRequest {
    /// Only these videos (a file or id per row). Default: every indexed video whose study has a
    /// report.
    #[serde(default)]
    pub manifest: Option<PathBuf>,
    /// Bootstrap resamples for the 95 % intervals.
    #[serde(default = "default_resamples")]
    pub resamples: usize,
    /// Bootstrap seed.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Keep the exact inputs of the metrics in [`EvalResult::inputs`].
    #[serde(skip)]
    pub dump_inputs: bool,
}

/// Below this many positives an AUC row is marked (`few_positives`, a footnote in the
/// Markdown): its figure and interval rest on too few cases to mean much.
pub const FEW_POSITIVES: usize = 10;

/// One line of an evaluation table. As JSON: `task`, `metric`, `n`, the estimate's `value`,
/// `lo`, `hi`, `resamples`, `undefined` (all `null` without one), `paper`, and for a row that
/// separates two classes (AUC) `positives` and `few_positives` (fewer than [`FEW_POSITIVES`]).
#[derive(Clone, Debug, PartialEq)]
pub struct EvalRow {
    /// What is measured.
    pub task: String,
    /// The metric.
    pub metric: String,
    /// Units (inputs, pairs) measured.
    pub n: usize,
    /// The figure with its interval, `None` when undefined.
    pub est: Option<Estimate>,
    /// The paper's figure, where it reports one.
    pub paper: Option<&'static str>,
    /// Positive cases of a row that separates two classes (AUC): labelled present, pairs of one
    /// patient, studies after the event. `None` for other metrics.
    pub positives: Option<usize>,
}

impl EvalRow {
    /// A row with fewer than [`FEW_POSITIVES`] positive cases.
    pub fn few_positives(&self) -> bool {
        self.positives.is_some_and(|p| p < FEW_POSITIVES)
    }
}

impl Serialize for EvalRow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.est.as_ref();
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("task", &self.task)?;
        m.serialize_entry("metric", &self.metric)?;
        m.serialize_entry("n", &self.n)?;
        m.serialize_entry("value", &e.map(|e| e.value))?;
        m.serialize_entry("lo", &e.map(|e| e.lo))?;
        m.serialize_entry("hi", &e.map(|e| e.hi))?;
        m.serialize_entry("resamples", &e.map(|e| e.resamples))?;
        m.serialize_entry("undefined", &e.map(|e| e.undefined))?;
        m.serialize_entry("paper", &self.paper)?;
        if let Some(p) = self.positives {
            m.serialize_entry("positives", &p)?;
            m.serialize_entry("few_positives", &self.few_positives())?;
        }
        m.end()
    }
}

/// What each evaluation reports beside its table.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EvalDetails {
    /// `eval zero-shot`.
    ZeroShot {
        /// The label manifest.
        manifest: String,
        /// The prompt file (its path, or `built-in`).
        prompts: String,
        /// Frames read.
        #[serde(serialize_with = "as_text::serialize")]
        frames: FrameSampling,
        /// Manifest rows of the split.
        inputs: usize,
    },
    /// `eval reid`.
    Reid {
        /// The video manifest.
        manifest: String,
        /// Videos embedded.
        videos: usize,
        /// Whether the pairs are a sample.
        sampled_pairs: bool,
    },
    /// `eval transitions`.
    Transitions {
        /// The events manifest.
        manifest: String,
        /// Events read.
        events: usize,
        /// Events with at least one scored study.
        events_scored: usize,
        /// Studies (visits) considered.
        studies: usize,
        /// Days either side of an event.
        window_days: i64,
    },
    /// `eval retrieval`.
    Retrieval {
        /// Candidate videos.
        videos: usize,
        /// Candidate reports.
        reports: usize,
    },
}

/// An evaluation's answer (`eval … --json`): `eval`, `model`, `rows`, `failed`, `markdown` and
/// the evaluation's details.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalResult {
    /// `zero-shot`, `reid`, `transitions` or `retrieval`.
    pub eval: &'static str,
    /// The model's space name.
    pub model: String,
    /// The table.
    pub rows: Vec<EvalRow>,
    /// Inputs that could not be used.
    pub failed: Vec<Failure>,
    /// The table as Markdown, with a title line (and the note under it).
    pub markdown: String,
    /// What a reader of an empty or thin table should know (e.g. which window would hold
    /// studies); `null` when nothing needs saying.
    pub note: Option<String>,
    /// What the evaluation reports beside its table.
    #[serde(flatten)]
    pub details: EvalDetails,
    /// The exact inputs of the metrics (embeddings, labels, scores), when the request asked for
    /// them: for an independent re-computation (`--dump-inputs`).
    #[serde(skip)]
    pub inputs: Option<Value>,
    /// `eval zero-shot`: every input's readings and labels (`--predictions`).
    #[serde(skip)]
    pub predictions: Vec<Prediction>,
}

/// One input's readings and labels (`eval zero-shot --predictions`, one JSON line each).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    /// The file or id.
    pub input: String,
    /// The indexed video, when the index holds it.
    pub id: Option<String>,
    /// Task → reading.
    pub readings: BTreeMap<String, Reading>,
    /// Task → label (categorical: the class's position).
    pub labels: BTreeMap<String, f64>,
}

fn fmt_num(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// The table as Markdown under `title`; a row with few positives is marked `†` after its `n`,
/// with a footnote under the table.
pub fn markdown(title: &str, rows: &[EvalRow]) -> String {
    let mut s = format!("{title}\n\n| task | metric | n | echovault | 95 % CI | paper |\n|---|---|---:|---:|---|---|\n");
    for l in rows {
        let n = if l.few_positives() { format!("{} †", l.n) } else { l.n.to_string() };
        let (v, ci) = match &l.est {
            Some(e) if e.lo.is_finite() => (fmt_num(e.value), format!("{} – {}", fmt_num(e.lo), fmt_num(e.hi))),
            Some(e) => (fmt_num(e.value), "–".into()),
            None => ("–".into(), "–".into()),
        };
        s.push_str(&format!("| {} | {} | {n} | {v} | {ci} | {} |\n", l.task, l.metric, l.paper.unwrap_or("–")));
    }
    let few: Vec<String> =
        rows.iter().filter(|l| l.few_positives()).map(|l| format!("{} ({})", l.task, l.positives.unwrap_or(0))).collect();
    if !few.is_empty() {
        s.push_str(&format!("\n† fewer than {FEW_POSITIVES} positives: {} — the figure and its interval mean little.\n", few.join(", ")));
    }
    s
}

/// Bootstrap settings of one evaluation.
#[derive(Clone, Copy, Debug)]
struct Boot {
    resamples: usize,
    seed: u64,
}

impl Boot {
    fn estimate(self, n: usize, stat: impl Fn(&[usize]) -> Option<f64>) -> Option<Estimate> {
        bootstrap(n, self.resamples, self.seed, stat)
    }

    fn mean(self, v: &[f64]) -> Option<Estimate> {
        self.estimate(v.len(), |idx| mean(&idx.iter().map(|&i| v[i]).collect::<Vec<_>>()))
    }
}

#[allow(clippy::too_many_arguments)]
fn finish(
    eval: &'static str,
    ctx: &TaskContext<'_>,
    boot: Boot,
    rows: Vec<EvalRow>,
    failed: Vec<Failure>,
    details: EvalDetails,
    inputs: Option<Value>,
    predictions: Vec<Prediction>,
    note: Option<String>,
) -> EvalResult {
    let model = ctx.model().to_owned();
    let title = format!("echovault eval {eval} (model space `{model}`, {} bootstrap resamples, seed {})", boot.resamples, boot.seed);
    let mut markdown = markdown(&title, &rows);
    if let Some(n) = &note {
        markdown.push_str(&format!("\n{n}\n"));
    }
    EvalResult { eval, model, rows, failed, markdown, note, details, inputs, predictions }
}

/// Patient ids for `--dump-inputs`: a raw manifest id is never written, its pseudonymous key is
/// (HMAC-SHA-256 with the index's secret, as `timeline --patient-id` keys an MRN; without an
/// index, with a secret drawn for this run: the dump then tells only which rows share a
/// patient, which is all a re-computation needs).
struct DumpKeys {
    secret: [u8; 32],
    /// `index` or `this run`, written into the dump as `patient_keys`.
    of: &'static str,
}

impl DumpKeys {
    fn new(ctx: &TaskContext<'_>) -> Result<DumpKeys, Error> {
        Ok(match ctx.index {
            Some(index) => DumpKeys { secret: *index.secret()?, of: "index" },
            None => DumpKeys { secret: rand::random(), of: "this run" },
        })
    }

    fn key(&self, raw: &str) -> String {
        crate::pseudonym::patient_key(&self.secret, raw)
    }
}

/// The paper's figure for a zero-shot task, where it reports one.
fn paper_zero_shot(task: &str) -> Option<&'static str> {
    match task {
        "ejection_fraction" => Some("MAE 7.1 % (external)"),
        "pacemaker" | "impella" | "tavr" | "mitraclip" => Some("AUC 0.84–0.97 (devices)"),
        _ => None,
    }
}

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

/// A row's video: an `id` column names an indexed item, else the file column names a file.
enum Input {
    Id(String),
    File(PathBuf),
}

/// Column names that give a row's input: an indexed id or a video file.
const INPUT_COLUMNS: [&str; 7] = ["id", "item", "video_id", "file", "path", "filename", "video"];

/// Column names that give a row's patient.
const PATIENT_COLUMNS: [&str; 4] = ["patient", "patient_id", "patientid", "mrn"];

/// Refuses a manifest in which no row has any column of one of `groups` (each group: the names
/// one needed column goes by): one error naming the file, the column and the columns it has,
/// not one failure per row.
fn require_columns(m: &Manifest, groups: &[&[&str]]) -> Result<(), Error> {
    for names in groups {
        if !m.rows.iter().any(|r| names.iter().any(|n| r.fields.contains_key(*n))) {
            let mut have: Vec<&str> = m.rows.iter().flat_map(|r| r.fields.keys().map(String::as_str)).collect();
            have.sort_unstable();
            have.dedup();
            return Err(Error::Invalid(format!(
                "{}: no row has a {} column (the manifest's columns: {})",
                m.path.display(),
                names.join("/"),
                if have.is_empty() { "none".to_owned() } else { have.join(", ") }
            )));
        }
    }
    Ok(())
}

fn row_input(m: &Manifest, r: &Row) -> Result<Input, Error> {
    if let Some(id) = r.text(&["id", "item", "video_id"]) {
        return Ok(Input::Id(id));
    }
    m.file(r)
        .map(Input::File)
        .ok_or_else(|| Error::Invalid(format!("{}: no file (columns {}) nor id", m.at(r), manifest::FILE_COLUMNS.join("/"))))
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

/// Zero-shot readings against the manifest's labels.
pub fn eval_zero_shot(ctx: &TaskContext<'_>, req: &EvalZeroShotRequest) -> Result<EvalResult, Error> {
    check_resamples(req.resamples)?;
    let m = manifest::read(&req.manifest)?;
    require_columns(&m, &[&INPUT_COLUMNS])?;
    let rows = m.split(req.split.as_deref());
    if rows.is_empty() {
        return Err(Error::Invalid(format!("{}: no rows of split {:?}", req.manifest.display(), req.split)));
    }
    let (file, prompts_name) = prompts::load_or_default(req.prompts.as_deref())?;
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
        if req.task.is_empty() { file.keys().filter(|t| labelled(t)).cloned().collect() } else { prompts::select_tasks(&file, &req.task)? };
    if names.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no column labels any task of the prompt file ({}); columns are matched by task name or the task's `labels`",
            req.manifest.display(),
            file.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let src = ctx.source(req.frames);
    let tasks = embed_tasks(ctx.embedder, &file, &names)?;

    // Per task: (reading number or class, label) per input that has both.
    let mut per_task: BTreeMap<String, Vec<(f64, f64)>> = names.iter().map(|n| (n.clone(), Vec::new())).collect();
    let mut failed = Vec::new();
    let mut predictions = Vec::new();
    let mut dumped = Vec::new();
    for r in &rows {
        let input = match row_input(&m, r) {
            Ok(i) => i,
            Err(e) => {
                failed.push(Failure::new(m.at(r), reason(&e)));
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
                failed.push(Failure::new(input_name(&input), err.to_string()));
                continue;
            }
        };
        let mut readings = BTreeMap::new();
        let mut labels = BTreeMap::new();
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
            readings.insert(name.clone(), reading);
            if let Some(l) = label {
                labels.insert(name.clone(), l);
                if let Some(v) = per_task.get_mut(name) {
                    v.push((value, l));
                }
            }
        }
        if req.dump_inputs {
            dumped.push(json!({ "frames": e.frames, "labels": labels }));
        }
        predictions.push(Prediction { input: input_name(&input), id: e.record.as_ref().map(|x| x.id.0.clone()), readings, labels });
    }
    let boot = Boot { resamples: req.resamples, seed: req.seed };
    let inputs = req.dump_inputs.then(|| {
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
        json!({ "op": "eval_zero_shot", "tasks": tdump, "inputs": dumped, "resamples": boot.resamples, "seed": boot.seed })
    });
    let mut lines = Vec::new();
    for (name, t) in &tasks {
        let pairs = per_task.get(name).map(Vec::as_slice).unwrap_or_default();
        let n = pairs.len();
        let positives = matches!(t, EmbeddedTask::Binary(..)).then(|| pairs.iter().filter(|p| p.1 == 1.0).count());
        let (metric, est) = match t {
            EmbeddedTask::Regression(..) => (
                format!("MAE{}", file[name].unit.as_deref().map(|u| format!(" ({u})")).unwrap_or_default()),
                boot.estimate(n, |idx| {
                    let (p, l): (Vec<f64>, Vec<f64>) = idx.iter().map(|&i| pairs[i]).unzip();
                    mae(&p, &l)
                }),
            ),
            EmbeddedTask::Binary(..) => (
                "AUC".to_owned(),
                boot.estimate(n, |idx| {
                    let pos: Vec<f64> = idx.iter().filter(|&&i| pairs[i].1 == 1.0).map(|&i| pairs[i].0).collect();
                    let neg: Vec<f64> = idx.iter().filter(|&&i| pairs[i].1 == 0.0).map(|&i| pairs[i].0).collect();
                    auc(&pos, &neg)
                }),
            ),
            EmbeddedTask::Categorical(..) => (
                "accuracy".to_owned(),
                boot.estimate(n, |idx| {
                    (!idx.is_empty()).then(|| idx.iter().filter(|&&i| pairs[i].0 == pairs[i].1).count() as f64 / idx.len() as f64)
                }),
            ),
        };
        lines.push(EvalRow { task: name.clone(), metric, n, est, paper: paper_zero_shot(name), positives });
    }
    let details = EvalDetails::ZeroShot {
        manifest: req.manifest.display().to_string(),
        prompts: prompts_name,
        frames: req.frames,
        inputs: rows.len(),
    };
    Ok(finish("zero-shot", ctx, boot, lines, failed, details, inputs, predictions, None))
}

/// Video vectors of a manifest's rows with their patient, study and date.
struct Labelled {
    vectors: Vec<Vec<f32>>,
    patients: Vec<String>,
    studies: Vec<String>,
    dates: Vec<Option<StudyDate>>,
}

/// One row's video: its patient, record (when indexed), vector, name and the row's own date.
type LabelledRow = (String, Option<ItemRecord>, Vec<f32>, String, Option<StudyDate>);

fn labelled_row(m: &Manifest, r: &Row, src: &VideoSource<'_>) -> Result<LabelledRow, Error> {
    let input = row_input(m, r)?;
    let date = match r.text(&["date", "study_date"]) {
        Some(d) => Some(d.parse::<StudyDate>().map_err(|e| Error::Invalid(format!("{}: date: {e}", m.at(r))))?),
        None => None,
    };
    let patient =
        r.text(&["patient", "patient_id", "patientid", "mrn"]).ok_or_else(|| Error::Invalid(format!("{}: no patient column", m.at(r))))?;
    let (rec, v) = match &input {
        Input::Id(id) => {
            let rec = src.item(id)?;
            let v = src
                .stored_vector(&rec.id, Kind::Video)?
                .ok_or_else(|| Error::Invalid(format!("'{id}' has no video vector in this space")))?;
            (Some(rec), v)
        }
        Input::File(p) => src.video_of_file(p)?,
    };
    Ok((patient, rec, v, input_name(&input), date))
}

fn labelled_videos(m: &Manifest, src: &VideoSource<'_>) -> (Labelled, Vec<Failure>) {
    let mut out = Labelled { vectors: Vec::new(), patients: Vec::new(), studies: Vec::new(), dates: Vec::new() };
    let mut failed = Vec::new();
    for r in &m.rows {
        match labelled_row(m, r, src) {
            Ok((patient, rec, v, name, date)) => {
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
            Err(e) => failed.push(Failure::new(m.at(r), reason(&e))),
        }
    }
    (out, failed)
}

/// Re-identification over the manifest's videos.
pub fn eval_reid(ctx: &TaskContext<'_>, req: &EvalReidRequest) -> Result<EvalResult, Error> {
    check_resamples(req.resamples)?;
    if req.max_pairs > MAX_PAIRS {
        return Err(Error::Invalid(format!("max_pairs: at most {MAX_PAIRS}")));
    }
    let m = manifest::read(&req.manifest)?;
    require_columns(&m, &[&INPUT_COLUMNS, &PATIENT_COLUMNS])?;
    let src = ctx.source(FrameSampling::ZERO_SHOT);
    let (l, failed) = labelled_videos(&m, &src);
    let boot = Boot { resamples: req.resamples, seed: req.seed };
    let p = reid_pairs(&l.vectors, &l.patients, &l.studies, req.max_pairs, boot.seed);
    let inputs = if req.dump_inputs {
        let keys = DumpKeys::new(ctx)?;
        let patients: Vec<String> = l.patients.iter().map(|p| keys.key(p)).collect();
        Some(json!({ "op": "eval_reid", "vectors": l.vectors, "patients": patients, "patient_keys": keys.of, "studies": l.studies,
                     "max_pairs": req.max_pairs, "resamples": boot.resamples, "seed": boot.seed }))
    } else {
        None
    };
    // AUC over the pairs of different studies: same patient (1) vs different patients (0).
    let scored: Vec<(f64, bool)> = p.same_patient.iter().map(|&s| (s, true)).chain(p.different.iter().map(|&s| (s, false))).collect();
    let est = boot.estimate(scored.len(), |idx| {
        let pos: Vec<f64> = idx.iter().filter(|&&i| scored[i].1).map(|&i| scored[i].0).collect();
        let neg: Vec<f64> = idx.iter().filter(|&&i| !scored[i].1).map(|&i| scored[i].0).collect();
        auc(&pos, &neg)
    });
    let row = |task: &str, metric: &str, n: usize, est: Option<Estimate>, paper: &'static str| EvalRow {
        task: task.into(),
        metric: metric.into(),
        n,
        est,
        paper: Some(paper),
        positives: None,
    };
    let lines = vec![
        EvalRow { positives: Some(p.same_patient.len()), ..row("same patient vs different patients", "AUC", scored.len(), est, "0.86") },
        row("same study", "mean cosine", p.same_study.len(), boot.mean(&p.same_study), "0.87"),
        row("same patient, other study", "mean cosine", p.same_patient.len(), boot.mean(&p.same_patient), "0.64"),
        row("different patients", "mean cosine", p.different.len(), boot.mean(&p.different), "0.40"),
    ];
    let details = EvalDetails::Reid { manifest: req.manifest.display().to_string(), videos: l.vectors.len(), sampled_pairs: p.sampled };
    Ok(finish("reid", ctx, boot, lines, failed, details, inputs, Vec::new(), None))
}

/// A study's patient, date and video vectors.
type StudyVideos = (String, Option<StudyDate>, Vec<Vec<f32>>);

/// Transitions around the manifest's events, over the studies of a video manifest or of the
/// index (its dated studies, read through the date keys).
pub fn eval_transitions(ctx: &TaskContext<'_>, req: &EvalTransitionsRequest) -> Result<EvalResult, Error> {
    check_resamples(req.resamples)?;
    check_window(req.window)?;
    let ev = manifest::read(&req.manifest)?;
    require_columns(&ev, &[&PATIENT_COLUMNS, &["date", "event_date"]])?;
    let src = ctx.source(FrameSampling::ZERO_SHOT);
    let mut failed = Vec::new();
    // Visits: one per study.
    let (visits, from_index): (Vec<Visit>, bool) = match &req.studies {
        Some(path) => {
            let m = manifest::read(path)?;
            require_columns(&m, &[&INPUT_COLUMNS, &PATIENT_COLUMNS])?;
            let (l, f) = labelled_videos(&m, &src);
            failed.extend(f);
            let mut by_study: BTreeMap<String, StudyVideos> = BTreeMap::new();
            for i in 0..l.vectors.len() {
                let e = by_study.entry(l.studies[i].clone()).or_insert_with(|| (l.patients[i].clone(), l.dates[i], Vec::new()));
                e.2.push(l.vectors[i].clone());
            }
            let mut v = Vec::new();
            for (study, (patient, date, vs)) in by_study {
                match (date.map(StudyDate::days_since_epoch), crate::engine::mean_unit(&vs)) {
                    (Some(day), Some(vector)) => v.push(Visit { patient, day, vector }),
                    _ => failed.push(Failure::new(study, "study without a valid date")),
                }
            }
            (v, false)
        }
        None => {
            let index = ctx.need_index()?;
            // In id order, as the records are stored: the visits' order decides the bootstrap's.
            let mut studies = index.items_by_date(None, None, Some(Kind::Study))?;
            studies.sort_by(|a, b| a.id.cmp(&b.id));
            let mut v = Vec::new();
            for rec in studies {
                let (Some(patient), Some(day)) = (rec.patient.clone(), rec.date.map(StudyDate::days_since_epoch)) else { continue };
                if let Some(vector) = index.get_vector(ctx.embedder.space, Kind::Study, &rec.id)? {
                    v.push(Visit { patient, day, vector });
                }
            }
            (v, true)
        }
    };
    let known: HashSet<&str> = visits.iter().map(|v| v.patient.as_str()).collect();
    let mut events = Vec::new();
    for r in &ev.rows {
        let (Some(patient), Some(date)) = (r.text(&["patient", "patient_id", "patientid", "mrn"]), r.text(&["date", "event_date"])) else {
            failed.push(Failure::new(ev.at(r), "an event needs patient and date"));
            continue;
        };
        let day = match date.parse::<StudyDate>() {
            Ok(d) => d.days_since_epoch(),
            Err(e) => {
                failed.push(Failure::new(ev.at(r), format!("event date: {e}")));
                continue;
            }
        };
        // Index studies carry pseudonymous keys: a raw id is keyed with the index's secret.
        let patient = match (ctx.index, from_index && !known.contains(patient.as_str())) {
            (Some(index), true) => crate::pseudonym::patient_key(index.secret()?, &patient),
            _ => patient,
        };
        let kind = r.text(&["event", "type", "event_type"]).unwrap_or_else(|| "event".into());
        events.push(pairs::Event { patient, day, kind });
    }
    let scored = transition_scores(&visits, &events, req.window);
    let boot = Boot { resamples: req.resamples, seed: req.seed };
    let inputs = if req.dump_inputs {
        // The index's studies carry keys already (and the events were keyed to match them);
        // a studies manifest's and its events' raw ids are keyed here.
        let keys = if from_index { None } else { Some(DumpKeys::new(ctx)?) };
        let key = |p: &str| keys.as_ref().map_or_else(|| p.to_owned(), |k| k.key(p));
        Some(json!({ "op": "eval_transitions",
                "visits": visits.iter().map(|v| json!({ "patient": key(&v.patient), "day": v.day, "vector": v.vector })).collect::<Vec<_>>(),
                "events": events.iter().map(|e| json!({ "patient": key(&e.patient), "day": e.day, "kind": e.kind })).collect::<Vec<_>>(),
                "patient_keys": keys.as_ref().map_or("index", |k| k.of),
                "window": req.window, "resamples": boot.resamples, "seed": boot.seed }))
    } else {
        None
    };
    let kinds: BTreeSet<String> = events.iter().map(|e| e.kind.clone()).collect();
    let mut groups: Vec<(String, Option<String>)> = kinds.iter().map(|k| (k.clone(), Some(k.clone()))).collect();
    if kinds.len() > 1 {
        groups.push(("all events".into(), None));
    }
    let mut lines = Vec::new();
    for (label, kind) in groups {
        let s: Vec<(f64, bool)> =
            scored.iter().filter(|x| kind.as_ref().is_none_or(|k| &events[x.event].kind == k)).map(|x| (x.similarity, x.after)).collect();
        let est = boot.estimate(s.len(), |idx| {
            let before: Vec<f64> = idx.iter().filter(|&&i| !s[i].1).map(|&i| s[i].0).collect();
            let after: Vec<f64> = idx.iter().filter(|&&i| s[i].1).map(|&i| s[i].0).collect();
            auc(&before, &after)
        });
        let paper = kind.as_deref().and_then(paper_transition);
        let positives = Some(s.iter().filter(|x| x.1).count());
        lines.push(EvalRow { task: label, metric: "AUC before vs after".into(), n: s.len(), est, paper, positives });
    }
    let used = scored.iter().map(|s| s.event).collect::<BTreeSet<_>>().len();
    let note = scored.is_empty().then(|| pairs::window_hint(&visits, &events, req.window));
    let details = EvalDetails::Transitions {
        manifest: req.manifest.display().to_string(),
        events: events.len(),
        events_scored: used,
        studies: visits.len(),
        window_days: req.window,
    };
    Ok(finish("transitions", ctx, boot, lines, failed, details, inputs, Vec::new(), note))
}

/// Retrieval between indexed videos and their studies' reports.
pub fn eval_retrieval(ctx: &TaskContext<'_>, req: &EvalRetrievalRequest) -> Result<EvalResult, Error> {
    check_resamples(req.resamples)?;
    let index = ctx.need_index()?;
    let space = ctx.embedder.space;
    let src = ctx.source(FrameSampling::ZERO_SHOT);
    let mut failed = Vec::new();
    let records: Vec<ItemRecord> = match &req.manifest {
        None => index.items(Some(Kind::Video))?,
        Some(p) => {
            let m = manifest::read(p)?;
            require_columns(&m, &[&INPUT_COLUMNS])?;
            let mut v = Vec::new();
            for r in &m.rows {
                let got = row_input(&m, r).and_then(|i| match &i {
                    Input::Id(id) => Ok(Some(src.item(id)?)),
                    Input::File(f) => src.lookup(f),
                });
                match got {
                    Ok(Some(rec)) => v.push(rec),
                    Ok(None) => failed.push(Failure::new(m.at(r), "not in the index (ingest it with its report first)")),
                    Err(e) => failed.push(Failure::new(m.at(r), reason(&e))),
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
        let Some(v) = index.get_vector(space, Kind::Video, &rec.id)? else { continue };
        let r = match report_of.get(&rid.0) {
            Some(&r) => r,
            None => {
                let Some(rv) = index.get_vector(space, Kind::Report, &rid)? else { continue };
                reports.push(rv);
                report_of.insert(rid.0.clone(), reports.len() - 1);
                reports.len() - 1
            }
        };
        videos.push(v);
        truth.push(r);
    }
    if videos.is_empty() {
        return Err(Error::Invalid(format!("no indexed video has a report in space '{}' (ingest with --reports)", ctx.model())));
    }
    let boot = Boot { resamples: req.resamples, seed: req.seed };
    let inputs = req.dump_inputs.then(|| {
        json!({ "op": "eval_retrieval", "videos": videos, "reports": reports, "truth": truth, "resamples": boot.resamples, "seed": boot.seed })
    });
    let ranks = retrieval_ranks(&videos, &reports, &truth);
    let n = videos.len();
    let mut lines = vec![EvalRow {
        task: format!("video ↔ report ({} reports, {} videos)", ranks.reports, ranks.videos),
        metric: "MCMRR".into(),
        n,
        est: boot.estimate(n, |idx| pairs::mcmrr(&ranks, idx)),
        paper: Some("206 (of 21,484)"),
        positives: None,
    }];
    for (dir, rk) in [("video → report", &ranks.video_to_report), ("report → video", &ranks.report_to_video)] {
        lines.push(EvalRow {
            task: dir.into(),
            metric: "mean rank".into(),
            n,
            est: boot.estimate(n, |idx| mean(&idx.iter().map(|&i| rk[i] as f64).collect::<Vec<_>>())),
            paper: None,
            positives: None,
        });
        for k in [1, 5, 10] {
            lines.push(EvalRow {
                task: dir.into(),
                metric: format!("recall@{k}"),
                n,
                est: boot.estimate(n, |idx| recall_at(&idx.iter().map(|&i| rk[i]).collect::<Vec<_>>(), k)),
                paper: None,
                positives: None,
            });
        }
    }
    let details = EvalDetails::Retrieval { videos: ranks.videos, reports: ranks.reports };
    Ok(finish("retrieval", ctx, boot, lines, failed, details, inputs, Vec::new(), None))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn request_sizes_are_bounded() {
        assert!(check_resamples(MAX_RESAMPLES).is_ok());
        assert!(check_resamples(1_000_000_000_000).unwrap_err().to_string().starts_with("resamples:"));
        assert!(check_window(MAX_WINDOW).is_ok() && check_window(0).is_ok());
        assert!(check_window(-1).unwrap_err().to_string().starts_with("window:"));
        assert!(check_window(i64::MAX).unwrap_err().to_string().starts_with("window:"));
    }

    #[test]
    fn rows_serialise_their_estimate_flat_and_null_without_one() {
        let est = Estimate { value: 0.5, lo: 0.25, hi: 0.75, resamples: 10, undefined: 1 };
        let with = serde_json::to_value(EvalRow {
            task: "t".into(),
            metric: "AUC".into(),
            n: 3,
            est: Some(est),
            paper: Some("0.9"),
            positives: None,
        })
        .unwrap();
        assert_eq!(
            with,
            json!({ "task": "t", "metric": "AUC", "n": 3, "value": 0.5, "lo": 0.25, "hi": 0.75, "resamples": 10, "undefined": 1, "paper": "0.9" })
        );
        let without =
            serde_json::to_value(EvalRow { task: "t".into(), metric: "m".into(), n: 0, est: None, paper: None, positives: None }).unwrap();
        assert_eq!(
            without,
            json!({ "task": "t", "metric": "m", "n": 0, "value": null, "lo": null, "hi": null, "resamples": null, "undefined": null, "paper": null })
        );
    }

    #[test]
    fn a_row_with_few_positives_is_marked_in_json_and_markdown() {
        let est = Estimate { value: 0.9, lo: 0.7, hi: 1.0, resamples: 10, undefined: 0 };
        let row = |task: &str, positives| EvalRow {
            task: task.into(),
            metric: "AUC".into(),
            n: 40,
            est: Some(est.clone()),
            paper: None,
            positives,
        };
        let rows = [row("pacemaker", Some(9)), row("valve", Some(10)), row("ef", None)];
        let v: Vec<Value> = rows.iter().map(|r| serde_json::to_value(r).unwrap()).collect();
        assert_eq!((v[0]["positives"].as_u64(), v[0]["few_positives"].as_bool()), (Some(9), Some(true)));
        assert_eq!(v[1]["few_positives"], false);
        assert!(v[2].get("few_positives").is_none(), "{}", v[2]);
        let md = markdown("t", &rows);
        assert!(md.contains("| pacemaker | AUC | 40 † |") && md.contains("| valve | AUC | 40 |"), "{md}");
        assert!(md.contains("† fewer than 10 positives: pacemaker (9)"), "{md}");
        assert!(!markdown("t", &rows[1..]).contains('†'));
    }

    #[test]
    fn requests_take_the_cli_names_and_defaults() {
        let r: EvalReidRequest = serde_json::from_str(r#"{"manifest":"m.jsonl"}"#).unwrap();
        assert_eq!((r.max_pairs, r.resamples, r.seed), (DEFAULT_MAX_PAIRS, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED));
        let z: EvalZeroShotRequest =
            serde_json::from_str(r#"{"manifest":"m.csv","split":"TEST","frames":"0:10:1","task":["pacemaker"]}"#).unwrap();
        assert_eq!(z.frames.to_string(), "0:10:1");
        let e = serde_json::from_str::<EvalTransitionsRequest>(r#"{"manifest":"e.jsonl","windows":3}"#).unwrap_err().to_string();
        assert!(e.contains("unknown field `windows`"), "{e}");
        let e = serde_json::from_str::<EvalRetrievalRequest>(r#"{"dump_inputs":true}"#).unwrap_err().to_string();
        assert!(e.contains("unknown field `dump_inputs`"), "{e}");
        let e = serde_json::from_str::<EvalZeroShotRequest>(r#"{"split":"TEST"}"#).unwrap_err().to_string();
        assert!(e.contains("missing field `manifest`"), "{e}");
    }
}
