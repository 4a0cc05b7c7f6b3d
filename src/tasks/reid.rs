//! `reid` as a library call: patient re-identification, the indexed studies of other dates most
//! like a video file, an indexed video or an indexed study, each marked whether it is the query's
//! own patient.

use super::context::TaskContext;
use crate::error::Error;
use crate::ingest::study_id;
use crate::media::dicom::{is_dicom, DicomCine};
use echovault_index::{Filter, ItemId, Kind, Query, StudyDate};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Candidates shown when the request gives no `k`.
pub const DEFAULT_K: usize = 10;
/// The most candidates a request may ask for.
pub const MAX_K: usize = 10_000;

/// What to re-identify: exactly one of `video`, `id`, `video_id`, `study_id` (`video` is a path
/// of the reader's, the server's, own; `id` an indexed video or study, whichever the index holds
/// under it).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReidRequest {
    /// A video file (DICOM, AVI, MP4).
    pub video: Option<PathBuf>,
    /// An indexed video id, or a study (its id or StudyInstanceUID): the CLI's `--id`.
    pub id: Option<String>,
    /// An indexed video.
    pub video_id: Option<String>,
    /// An indexed study (its StudyInstanceUID or study id).
    pub study_id: Option<String>,
    /// Candidates to return.
    pub k: usize,
    /// Also return studies of the query's own date.
    pub same_date: bool,
}

impl Default for ReidRequest {
    fn default() -> Self {
        ReidRequest { video: None, id: None, video_id: None, study_id: None, k: DEFAULT_K, same_date: false }
    }
}

impl ReidRequest {
    /// Checks `k` and that exactly one query is given; the error names the field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.k == 0 {
            return Err(Error::Invalid("k: must be at least 1".into()));
        }
        if self.k > MAX_K {
            return Err(Error::Invalid(format!("k: at most {MAX_K}")));
        }
        let given = [self.video.is_some(), self.id.is_some(), self.video_id.is_some(), self.study_id.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(Error::Invalid("give exactly one of video, id, video_id, study_id".into()));
        }
        Ok(())
    }
}

/// The query as the answer echoes it: `{"video": …}`, `{"video_id": …}` or `{"study_id": …}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReidQuery {
    /// A video file's path.
    Video(String),
    /// An indexed video's id.
    VideoId(String),
    /// A study id as given.
    StudyId(String),
}

/// One candidate study.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReidCandidate {
    /// Its study id.
    pub study: Option<String>,
    /// Its item id (`study:…`).
    pub id: String,
    /// Its pseudonymous patient key.
    pub patient: Option<String>,
    /// Its date.
    pub date: Option<StudyDate>,
    /// Cosine similarity to the query.
    pub score: f32,
    /// Whether it is the query's patient (`None` when either patient is unknown).
    pub same_patient: Option<bool>,
}

/// A re-identification's answer (`reid --json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReidResult {
    /// The query.
    pub query: ReidQuery,
    /// The query's own study, when known.
    pub study: Option<String>,
    /// The query's date, when known.
    pub date: Option<StudyDate>,
    /// The query's pseudonymous patient key, when known.
    pub patient: Option<String>,
    /// The space searched.
    pub space: String,
    /// The candidates, best first.
    pub candidates: Vec<ReidCandidate>,
}

/// The studies most like the query in the context's space, the query's own study left out and,
/// unless `same_date`, the studies of its date too.
pub fn reid(ctx: &TaskContext<'_>, req: &ReidRequest) -> Result<ReidResult, Error> {
    req.validate()?;
    let index = ctx.need_index()?;
    let space = ctx.model();
    let src = ctx.source(crate::media::FrameSampling::ZERO_SHOT);
    // `id`: a video the index holds under it, else a study.
    let (video_id, study) = match &req.id {
        Some(id) if !id.starts_with("study:") && index.get_item(&ItemId::from(id.as_str()))?.is_some_and(|r| r.kind == Kind::Video) => {
            (Some(id.clone()), None)
        }
        Some(id) => (None, Some(id.clone())),
        None => (req.video_id.clone(), req.study_id.clone()),
    };
    let (query, rec, v) = if let Some(p) = &req.video {
        let (rec, v) = src.video_of_file(p)?;
        (ReidQuery::Video(p.display().to_string()), rec, v)
    } else if let Some(id) = &video_id {
        let rec = src.item(id)?;
        let v = src
            .stored_vector(&rec.id, Kind::Video)?
            .ok_or_else(|| Error::Invalid(format!("video '{id}' has no vector in space '{space}'")))?;
        (ReidQuery::VideoId(id.clone()), Some(rec), v)
    } else {
        let s = study.unwrap_or_default();
        let id = if s.starts_with("study:") { s.clone() } else { study_id(&s) };
        let rec = src.item(&id)?;
        let v = src
            .stored_vector(&rec.id, Kind::Study)?
            .ok_or_else(|| Error::Invalid(format!("study '{s}' has no vector in space '{space}'")))?;
        (ReidQuery::StudyId(s), Some(rec), v)
    };
    // A DICOM file the index does not hold still says whose study it is (the patient keyed with
    // this index's secret, as ingest would store it).
    let header = match (&rec, &req.video) {
        (None, Some(p)) if is_dicom(p) => DicomCine::open(p).ok().map(|c| c.info().clone()),
        _ => None,
    };
    let own_study = rec.as_ref().and_then(|r| r.study.clone()).or_else(|| header.as_ref().and_then(|h| h.study_uid.clone()));
    let own_date: Option<StudyDate> =
        rec.as_ref().and_then(|r| r.date).or_else(|| header.as_ref().and_then(|h| h.study_date.as_deref()?.parse().ok()));
    let own_patient = match (rec.as_ref().and_then(|r| r.patient.clone()), header.as_ref().and_then(|h| h.patient_id.as_ref())) {
        (Some(key), _) => Some(key),
        (None, Some(id)) => Some(crate::pseudonym::patient_key(index.secret()?, id.expose())),
        (None, None) => None,
    };
    let mut filter = Filter::default();
    if let Some(s) = &own_study {
        filter.exclude.push(ItemId(study_id(s)));
    }
    // Over-fetch: same-date studies are dropped after the search.
    let mut q = Query::new(ctx.embedder.space, Kind::Study, v, req.k.saturating_mul(4).saturating_add(16));
    q.filter = filter;
    let candidates = index
        .search(&q)?
        .into_iter()
        .filter(|h| req.same_date || own_date.is_none() || h.record.date != own_date)
        .take(req.k)
        .map(|h| ReidCandidate {
            same_patient: own_patient.as_ref().and_then(|p| h.record.patient.as_ref().map(|q| p == q)),
            study: h.record.study,
            id: h.id.0,
            patient: h.record.patient,
            date: h.record.date,
            score: h.score,
        })
        .collect();
    Ok(ReidResult { query, study: own_study, date: own_date, patient: own_patient, space: space.to_owned(), candidates })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_is_bounded() {
        let base = ReidRequest { study_id: Some("s".into()), ..ReidRequest::default() };
        assert!(base.validate().is_ok());
        assert!(ReidRequest { k: MAX_K, ..base.clone() }.validate().is_ok());
        for k in [0, MAX_K + 1, 1_000_000_000_000, usize::MAX] {
            assert!(ReidRequest { k, ..base.clone() }.validate().unwrap_err().to_string().starts_with("k:"), "{k}");
        }
    }
}
