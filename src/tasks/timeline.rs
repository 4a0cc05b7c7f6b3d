//! `timeline` as a library call: a patient's studies in date order, each with its similarity to
//! the previous study or, around an event, to the earliest study in the window; drops flagged.
//! Reads only the patient's own records (the index's patient keys), never every record.

use super::context::TaskContext;
use super::pairs::{self, Visit};
use crate::error::Error;
use echovault_index::{ItemRecord, Kind, StudyDate};
use serde::{Deserialize, Serialize};

/// Days either side of the event when the request gives none.
pub const DEFAULT_WINDOW: i64 = 200;
/// How far below the timeline's median a flagged similarity lies when the request gives none.
pub const DEFAULT_DROP: f64 = 0.1;

/// Whose timeline (exactly one of `patient`, `patient_id`), named as the CLI's flags.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimelineRequest {
    /// Pseudonymous patient key (as search and reid show it).
    pub patient: Option<String>,
    /// The patient's own id (MRN): pseudonymised with the index's secret, never returned.
    pub patient_id: Option<String>,
    /// An event day: compare the studies in the window around it with the earliest of them.
    pub event: Option<StudyDate>,
    /// Days either side of the event.
    pub window: i64,
    /// Flag a study whose similarity lies this far below the timeline's median.
    pub drop: f64,
}

impl Default for TimelineRequest {
    fn default() -> Self {
        TimelineRequest { patient: None, patient_id: None, event: None, window: DEFAULT_WINDOW, drop: DEFAULT_DROP }
    }
}

/// One study of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelineStudy {
    /// Its study id.
    pub study: Option<String>,
    /// Its date.
    pub date: Option<StudyDate>,
    /// Similarity to its reference (`None` for the first).
    pub similarity: Option<f64>,
    /// The date of the study it is compared with.
    pub reference: Option<StudyDate>,
    /// Dated on or after the event (`None` without an event).
    pub after_event: Option<bool>,
    /// Its similarity lies more than `drop` below the timeline's median.
    pub flagged: bool,
}

/// A timeline's answer (`timeline --json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelineResult {
    /// The pseudonymous patient key.
    pub patient: String,
    /// The event day, when given.
    pub event: Option<StudyDate>,
    /// Days either side of the event.
    pub window_days: i64,
    /// The space whose study vectors are compared.
    pub space: String,
    /// The studies, in date order.
    pub studies: Vec<TimelineStudy>,
    /// The patient's studies without a date, left out.
    pub undated: usize,
}

/// The patient's timeline in the context's space.
pub fn timeline(ctx: &TaskContext<'_>, req: &TimelineRequest) -> Result<TimelineResult, Error> {
    super::eval::check_window(req.window)?;
    let index = ctx.need_index()?;
    let key = match (&req.patient, &req.patient_id) {
        (Some(k), None) => k.clone(),
        (None, Some(raw)) => crate::pseudonym::patient_key(index.secret()?, raw),
        _ => return Err(Error::Invalid("give patient or patient_id (one of them)".into())),
    };
    let event = req.event.map(StudyDate::days_since_epoch);
    let mut studies: Vec<(i64, ItemRecord, Vec<f32>)> = Vec::new();
    let mut undated = 0;
    for rec in index.items_by_patient(&key)? {
        if rec.kind != Kind::Study {
            continue;
        }
        let Some(day) = rec.date.map(StudyDate::days_since_epoch) else {
            undated += 1;
            continue;
        };
        if let Some(v) = index.get_vector(ctx.embedder.space, Kind::Study, &rec.id)? {
            studies.push((day, rec, v));
        }
    }
    if studies.is_empty() {
        return Err(Error::Invalid(format!("no dated studies of this patient in space '{}'", ctx.model())));
    }
    studies.sort_by(|x, y| (x.0, &x.1.id).cmp(&(y.0, &y.1.id)));
    let visits: Vec<Visit> = studies.iter().map(|(d, _, v)| Visit { patient: key.clone(), day: *d, vector: v.clone() }).collect();
    let rows = pairs::timeline(&visits, event, req.window, req.drop);
    let out = rows
        .iter()
        .map(|r| {
            let (day, s, _) = &studies[r.visit];
            TimelineStudy {
                study: s.study.clone(),
                date: s.date,
                similarity: r.similarity,
                reference: r.reference.and_then(|i| studies[i].1.date),
                after_event: event.map(|e| *day >= e),
                flagged: r.flagged,
            }
        })
        .collect();
    Ok(TimelineResult { patient: key, event: req.event, window_days: req.window, space: ctx.model().to_owned(), studies: out, undated })
}
