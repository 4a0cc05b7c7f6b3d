//! What a task runs with: the model it uses (picked as the paper found best), the index when
//! there is one, and the inputs it could not use, each with its reason.

use super::source::VideoSource;
use crate::engine::{template_vocab_for, Embedder, Engine, TemplateVocabArg};
use crate::error::Error;
use crate::media::FrameSampling;
use echovault_index::Index;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::PathBuf;

/// Which of several models a task uses, as the paper found best: zero-shot readings with
/// EchoCLIP (CLIP BPE), similarity and retrieval with EchoCLIP-R (a model tokenising with a
/// template vocabulary). With one model, that one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefer {
    /// Zero-shot readings: the first CLIP-BPE model.
    ZeroShot,
    /// Re-identification, timelines, transitions, retrieval: the first template-tokenizer model.
    Similarity,
}

/// The position in `models` (primary first) of the model a task of `prefer` uses; `given_vocab`
/// is `--template-vocab`, which makes a model a template-tokenizer one.
pub fn pick(models: &[PathBuf], given_vocab: Option<&TemplateVocabArg>, prefer: Prefer) -> usize {
    let template = |d: &PathBuf| template_vocab_for(d, given_vocab, models.len() == 1).is_some();
    models.iter().position(|d| template(d) == (prefer == Prefer::Similarity)).unwrap_or(0)
}

/// One model (and its space) and, when there is one, the index.
#[derive(Clone, Copy, Debug)]
pub struct TaskContext<'a> {
    /// The model the task embeds with and whose space it reads.
    pub embedder: &'a Embedder,
    /// The index, when there is one.
    pub index: Option<&'a Index>,
    /// Frames a video embedding of an unindexed file averages (the ingest default: all).
    pub video_frames: FrameSampling,
    /// How files are read besides their sampling: frame bound (`--max-frames`) and mask.
    pub read: crate::media::ReadOptions,
}

impl<'a> TaskContext<'a> {
    /// The engine's model at `model` (an index into its embedders; the primary when out of
    /// range) and its index.
    pub fn of_engine(engine: &'a Engine, model: usize) -> TaskContext<'a> {
        let embedder = engine.embedders.get(model).unwrap_or(&engine.embedders[0]);
        TaskContext { embedder, index: Some(&engine.index), video_frames: engine.sampling, read: engine.read_options() }
    }

    /// The index, for tasks that need one.
    pub fn need_index(&self) -> Result<&'a Index, Error> {
        self.index.ok_or_else(|| Error::Invalid("no index".into()))
    }

    /// Embeddings of videos by file or id, zero-shot readings taking the frames `zero_shot`.
    pub fn source(&self, zero_shot: FrameSampling) -> VideoSource<'a> {
        VideoSource { read: self.read, ..VideoSource::new(self.embedder, self.index, zero_shot, self.video_frames) }
    }

    /// The name of the model's space.
    pub fn model(&self) -> &'a str {
        &self.embedder.space_name
    }
}

/// An input a task could not use. As JSON: `{"input": …, "reason": …}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The file, id or manifest row (`FILE:LINE`).
    pub input: String,
    /// Why.
    pub reason: String,
}

impl Failure {
    /// A failure of `input`; a reason that starts by naming the input again drops that prefix
    /// (`{"input": "a.avi", "reason": "a.avi: …"}` would print as `a.avi: a.avi: …`).
    pub fn new(input: impl Into<String>, reason: impl Into<String>) -> Failure {
        let (input, reason) = (input.into(), reason.into());
        let reason = match reason.strip_prefix(input.as_str()).and_then(|r| r.strip_prefix(": ")) {
            Some(rest) if !rest.is_empty() => rest.to_owned(),
            _ => reason,
        };
        Failure { input, reason }
    }
}

/// An error with its causes, `outer: cause: …` (as the CLI prints errors); a cause whose text
/// the message already holds (`path: No such file…` over the io error itself) is not repeated.
pub fn reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// `context: error with its causes`, as one [`Error::Invalid`].
pub(crate) fn within(context: impl std::fmt::Display, e: &Error) -> Error {
    Error::Invalid(format!("{context}: {}", reason(e)))
}

/// Serde for a field written as text (`FrameSampling`): `Display` out, `FromStr` in.
pub(crate) mod as_text {
    use super::*;

    pub fn serialize<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}
