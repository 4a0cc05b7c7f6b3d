//! `zero-shot` as a library call: the readings (LVEF, devices, …) of video files or indexed
//! videos from a prompt file's tasks, optionally kept in the indexed videos' records
//! (`zero_shot.TASK`, `zero_shot.model`).

use super::context::{as_text, reason, Failure, TaskContext};
use super::prompts::{self, PromptFile};
use super::source::embed_tasks;
use super::zeroshot::{read, Reading};
use crate::error::Error;
use crate::media::FrameSampling;
use echovault_index::Kind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What to read. As JSON, fields are named as the CLI's flags (`id` or `ids`); paths are the
/// reader's (the server's) own.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZeroShotRequest {
    /// Video files (DICOM, AVI, MP4); files the index holds use their stored frame embeddings.
    pub videos: Vec<PathBuf>,
    /// Indexed video ids.
    #[serde(alias = "id")]
    pub ids: Vec<String>,
    /// Every video in the index.
    pub all_indexed: bool,
    /// Tasks to read (none or `all`: every task of the prompt file).
    pub task: Vec<String>,
    /// Prompt file (default: the built-in prompts).
    pub prompts: Option<PathBuf>,
    /// Frames read: `zero-shot`, `all` or `START:END:STEP`.
    #[serde(with = "as_text")]
    pub frames: FrameSampling,
    /// Keep the readings in the indexed videos' records.
    pub store: bool,
}

impl Default for ZeroShotRequest {
    fn default() -> Self {
        ZeroShotRequest {
            videos: Vec::new(),
            ids: Vec::new(),
            all_indexed: false,
            task: Vec::new(),
            prompts: None,
            frames: FrameSampling::ZERO_SHOT,
            store: false,
        }
    }
}

impl ZeroShotRequest {
    /// Whether the request reads the index (ids, every indexed video, stored readings).
    pub fn needs_index(&self) -> bool {
        !self.ids.is_empty() || self.all_indexed || self.store
    }
}

/// The readings of one video.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VideoReadings {
    /// The file or id as given.
    pub input: String,
    /// The indexed video, when the index holds it.
    pub id: Option<String>,
    /// Frames read.
    pub frames: usize,
    /// Task → reading.
    pub readings: BTreeMap<String, Reading>,
}

/// A zero-shot run's answer (`zero-shot --json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ZeroShotResult {
    /// The model's space name.
    pub model: String,
    /// The prompt file (its path, or `built-in`).
    pub prompts: String,
    /// Frames read.
    #[serde(serialize_with = "as_text::serialize")]
    pub frames: FrameSampling,
    /// The tasks read, in order.
    pub tasks: Vec<String>,
    /// Per input read.
    pub results: Vec<VideoReadings>,
    /// Inputs that could not be read.
    pub failed: Vec<Failure>,
    /// Indexed videos whose readings were kept.
    pub stored: usize,
    /// Task → unit, for the tasks whose prompt file gives one.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub units: BTreeMap<String, String>,
}

/// A prompt file's tasks (`zero-shot --list-tasks --json`).
#[derive(Clone, Debug, Serialize)]
pub struct TaskList {
    /// The prompt file (its path, or `built-in`).
    pub prompts: String,
    /// Its tasks.
    pub tasks: PromptFile,
}

/// The tasks of the prompt file at `prompts` (default: the built-in one).
pub fn list_tasks(prompts: Option<&std::path::Path>) -> Result<TaskList, Error> {
    let (tasks, prompts) = prompts::load_or_default(prompts)?;
    Ok(TaskList { prompts, tasks })
}

/// The value a reading is kept as in a record: the score, the value, or the class.
pub fn stored_value(r: &Reading) -> String {
    match r {
        Reading::Binary { score, .. } => format!("{score:.6}"),
        Reading::Regression { value } => prompts::format_value(*value),
        Reading::Categorical { class, .. } => class.clone(),
    }
}

/// Reads the request's videos with the context's model: files first, then ids (then every
/// indexed video). An input that cannot be read is a [`Failure`], not an error.
pub fn zero_shot(ctx: &TaskContext<'_>, req: &ZeroShotRequest) -> Result<ZeroShotResult, Error> {
    let (file, prompts_name) = prompts::load_or_default(req.prompts.as_deref())?;
    let names = prompts::select_tasks(&file, &req.task)?;
    if req.needs_index() {
        ctx.need_index()?;
    }
    let src = ctx.source(req.frames);
    let tasks = embed_tasks(ctx.embedder, &file, &names)?;

    let mut inputs: Vec<(String, Result<super::source::Embedded, Error>)> = Vec::new();
    for p in &req.videos {
        inputs.push((p.display().to_string(), src.frames_of_file(p)));
    }
    let mut ids = req.ids.clone();
    if req.all_indexed {
        if let Some(index) = ctx.index {
            ids.extend(index.items(Some(Kind::Video))?.into_iter().map(|r| r.id.0));
        }
    }
    for id in &ids {
        inputs.push((id.clone(), src.item(id).and_then(|r| src.frames_of_item(&r))));
    }

    let mut results = Vec::new();
    let mut failed = Vec::new();
    let mut batch = ctx.index.map(|i| i.batch());
    for (input, got) in inputs {
        let e = match got {
            Ok(e) => e,
            Err(err) => {
                failed.push(Failure::new(input, reason(&err)));
                continue;
            }
        };
        let mut readings = BTreeMap::new();
        let mut record = e.record.clone();
        for (name, t) in &tasks {
            let Some(r) = read(&e.frames, t) else { continue };
            if let Some(rec) = record.as_mut() {
                rec.extra.insert(format!("zero_shot.{name}"), stored_value(&r));
            }
            readings.insert(name.clone(), r);
        }
        if let (true, Some(mut rec), Some(b)) = (req.store, record, batch.as_mut()) {
            rec.extra.insert("zero_shot.model".into(), ctx.model().to_owned());
            b.put_item(rec);
        }
        results.push(VideoReadings { input, id: e.record.as_ref().map(|r| r.id.0.clone()), frames: e.frames.len(), readings });
    }
    let mut stored = 0;
    if let (true, Some(index), Some(b)) = (req.store, ctx.index, batch) {
        stored = results.iter().filter(|r| r.id.is_some()).count();
        if !b.is_empty() {
            index.commit(b)?;
        }
    }
    let units = names.iter().filter_map(|n| Some((n.clone(), file.get(n)?.unit.clone()?))).collect();
    Ok(ZeroShotResult {
        model: ctx.model().to_owned(),
        prompts: prompts_name,
        frames: req.frames,
        tasks: names,
        results,
        failed,
        stored,
        units,
    })
}
