//! Where the tasks get their embeddings: the index when it holds the video (stored frame and
//! video embeddings of the model's space), else the file itself, decoded and embedded.

use super::prompts::{Expanded, PromptTask};
use super::zeroshot::EmbeddedTask;
use crate::engine::Embedder;
use crate::error::Error;
use crate::media::FrameSampling;
use echovault_index::{Index, ItemId, ItemRecord, Kind};
use std::path::{Path, PathBuf};

/// Embeddings of videos by file or by indexed id, for one model.
#[derive(Debug)]
pub struct VideoSource<'a> {
    /// The model (and its space in the index).
    pub embedder: &'a Embedder,
    /// The index, when there is one.
    pub index: Option<&'a Index>,
    /// Frames zero-shot readings use.
    pub zero_shot_frames: FrameSampling,
    /// Frames a video embedding of an unindexed file averages (the ingest default: all).
    pub video_frames: FrameSampling,
    /// Frame bound, crop and mask for files (their sampling is `zero_shot_frames` or
    /// `video_frames`); the default bound, no crop, no mask unless set.
    pub read: crate::media::ReadOptions,
}

/// A video's embeddings and where they came from.
#[derive(Clone, Debug)]
pub struct Embedded {
    /// The index record, when the index holds the video.
    pub record: Option<ItemRecord>,
    /// Unit frame embeddings (zero-shot selection).
    pub frames: Vec<Vec<f32>>,
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_owned())
}

impl<'a> VideoSource<'a> {
    /// A source over `embedder` and, optionally, an index.
    pub fn new(embedder: &'a Embedder, index: Option<&'a Index>, zero_shot_frames: FrameSampling, video_frames: FrameSampling) -> Self {
        VideoSource { embedder, index, zero_shot_frames, video_frames, read: crate::media::ReadOptions::new(video_frames) }
    }

    /// The indexed video ingested from `path`, if any: the record of the file's content id
    /// (what ingest names a video by) whose source is this path. A file changed since it was
    /// ingested is not indexed (its content is read instead); an unreadable one neither (reading
    /// it then says why). Reads one record, never every one.
    pub fn lookup(&self, path: &Path) -> Result<Option<ItemRecord>, Error> {
        let Some(index) = self.index else { return Ok(None) };
        let Ok(id) = crate::ingest::content_id(path) else { return Ok(None) };
        Ok(index.get_item(&ItemId(id))?.filter(|rec| rec.kind == Kind::Video && canonical(Path::new(&rec.source)) == canonical(path)))
    }

    /// An indexed item by id.
    pub fn item(&self, id: &str) -> Result<ItemRecord, Error> {
        let index = self.index.ok_or_else(|| Error::Invalid(format!("item '{id}': no index to look it up in")))?;
        index.get_item(&ItemId::from(id))?.ok_or_else(|| Error::Invalid(format!("no item '{id}' in the index")))
    }

    /// The stored frame embeddings of an indexed video that the zero-shot sampling selects.
    /// Ingest records which frames it stored (`sampling`); a record without it (an index from
    /// before that) is taken as every frame only when it stored as many rows as the video has
    /// frames, else all its rows are used as they are. `None` when the space lacks them; an
    /// error when the sampling selects none of the stored frames.
    pub fn stored_frames(&self, rec: &ItemRecord) -> Result<Option<Vec<Vec<f32>>>, Error> {
        let Some(index) = self.index else { return Ok(None) };
        let Some(rows) = index.get_frames(self.embedder.space, &rec.id)? else { return Ok(None) };
        let stored: Option<FrameSampling> = match rec.extra.get("sampling") {
            Some(s) => s.parse().ok(),
            None => (rec.frames == Some(rows.len() as u32)).then_some(FrameSampling::ALL),
        };
        let Some(stored) = stored else { return Ok(Some(rows)) };
        let picked: Vec<Vec<f32>> = rows
            .iter()
            .enumerate()
            .filter(|(r, _)| self.zero_shot_frames.selects(stored.frame_of_row(*r)))
            .map(|(_, f)| f.clone())
            .collect();
        if picked.is_empty() {
            return Err(Error::Invalid(format!(
                "item '{}': the index stores frames {stored} of it, of which --frames {} selects none (read the file instead)",
                rec.id, self.zero_shot_frames
            )));
        }
        Ok(Some(picked))
    }

    /// Study id and date a file carries itself (DICOM StudyInstanceUID and StudyDate; a
    /// StudyDate that is no day counts as none).
    pub fn file_facts(path: &Path) -> (Option<String>, Option<echovault_index::StudyDate>) {
        if !crate::media::dicom::is_dicom(path) {
            return (None, None);
        }
        match crate::media::dicom::DicomCine::open(path) {
            Ok(c) => (c.info().study_uid.clone(), c.info().study_date.as_deref().and_then(|d| d.parse().ok())),
            Err(_) => (None, None),
        }
    }

    /// A file's frames that `sampling` selects, decoded and embedded as ingest does (frame by
    /// frame at the model's input size, at most `read.max_frames` frames, thinned evenly).
    fn embed_file(&self, path: &Path, sampling: FrameSampling) -> Result<crate::engine::VideoEmbedding, Error> {
        let read = crate::media::ReadOptions { sampling, ..self.read };
        let e = self.embedder;
        Ok(crate::engine::embed_video(&e.model, &e.preprocess, path, &read, e.frame_batch)?.embedding)
    }

    /// Frame embeddings of an indexed video.
    pub fn frames_of_item(&self, rec: &ItemRecord) -> Result<Embedded, Error> {
        let frames = self.stored_frames(rec)?.ok_or_else(|| {
            Error::Invalid(format!(
                "item '{}' has no frame embeddings in space '{}' (ingest it with this model)",
                rec.id, self.embedder.space_name
            ))
        })?;
        Ok(Embedded { record: Some(rec.clone()), frames })
    }

    /// Frame embeddings of a file: stored ones when the index holds it, else decoded and embedded.
    pub fn frames_of_file(&self, path: &Path) -> Result<Embedded, Error> {
        if let Some(rec) = self.lookup(path)? {
            if let Some(frames) = self.stored_frames(&rec)? {
                return Ok(Embedded { record: Some(rec), frames });
            }
        }
        let e = self.embed_file(path, self.zero_shot_frames)?;
        Ok(Embedded { record: None, frames: e.frames })
    }

    /// The video embedding of a file: the stored one when indexed, else all frames of
    /// `video_frames` embedded and averaged.
    pub fn video_of_file(&self, path: &Path) -> Result<(Option<ItemRecord>, Vec<f32>), Error> {
        if !std::fs::metadata(path).map_err(|e| Error::io(path, e))?.is_file() {
            return Err(Error::Invalid(format!("{}: not a regular file", path.display())));
        }
        if let Some(rec) = self.lookup(path)? {
            if let Some(v) = self.stored_vector(&rec.id, Kind::Video)? {
                return Ok((Some(rec), v));
            }
        }
        let e = self.embed_file(path, self.video_frames)?;
        Ok((None, e.video))
    }

    /// A stored vector of the model's space.
    pub fn stored_vector(&self, id: &ItemId, kind: Kind) -> Result<Option<Vec<f32>>, Error> {
        match self.index {
            Some(index) => Ok(index.get_vector(self.embedder.space, kind, id)?),
            None => Ok(None),
        }
    }
}

/// Embeds a task's prompts with the model.
pub fn embed_task(embedder: &Embedder, task: &PromptTask) -> Result<EmbeddedTask, Error> {
    let texts = |ts: &[String]| -> Result<Vec<Vec<f32>>, Error> {
        let refs: Vec<&str> = ts.iter().map(String::as_str).collect();
        embedder.embed_texts(&refs)
    };
    Ok(match task.expand().map_err(Error::Invalid)? {
        Expanded::Binary(p) => EmbeddedTask::Binary(texts(&p)?, task.threshold),
        Expanded::Regression(p, v) => EmbeddedTask::Regression(texts(&p)?, v),
        Expanded::Categorical(classes) => {
            EmbeddedTask::Categorical(classes.into_iter().map(|(c, p)| Ok((c, texts(&p)?))).collect::<Result<_, Error>>()?)
        }
    })
}

/// Embeds the prompts of the tasks `names` of `file`, in that order.
pub fn embed_tasks(embedder: &Embedder, file: &super::prompts::PromptFile, names: &[String]) -> Result<Vec<(String, EmbeddedTask)>, Error> {
    names
        .iter()
        .map(|n| {
            let task = file.get(n).ok_or_else(|| Error::Invalid(format!("no task '{n}' in the prompt file")))?;
            let e = embed_task(embedder, task).map_err(|e| super::context::within(format!("embedding the prompts of task '{n}'"), &e))?;
            Ok((n.clone(), e))
        })
        .collect()
}
