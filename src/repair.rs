//! `echovault repair`: the index's own check and repair (see `echovault_index`), the storage
//! salvage before it where the database is damaged, and the audit of what the ingest pipeline
//! keeps beside the items: each ingest-log entry's video must still have its record, a vector
//! and frame embeddings in every space it was embedded in; each study its vector from the videos
//! that survived. A repair forgets the inputs whose video lost any of them (the record, its
//! vectors and frames deleted with its log entries), so the next `ingest` of the same export
//! embeds exactly those again — and lists them. A video that lost only its frames while its
//! source file is gone is kept (searchable) and marked instead: no ingest could bring it back.

use crate::engine::mean_unit;
use crate::error::Error;
use crate::info::RepairReport;
use crate::ingest::study_id;
use echovault_index::{Index, IndexError, IndexOptions, ItemId, Kind};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Ingest-log key prefixes written by the pipeline (`ingest::pipeline`): a file's path → its
/// entry (JSON with the item id), a SOPInstanceUID → the item id.
const LOG_FILE: &str = "file:";
const LOG_SOP: &str = "sop:";

/// The part of a `file:` entry the audit reads (the pipeline's `LogEntry`).
#[derive(Deserialize)]
struct Logged {
    id: String,
}

/// What the audit found.
#[derive(Debug, Default)]
pub struct Audit {
    /// One line per kind of problem.
    pub problems: Vec<String>,
    /// Videos and reports to delete (their record survived, a vector or frames did not).
    broken: BTreeSet<ItemId>,
    /// Log keys to remove (their video is gone or broken).
    stale_log: Vec<String>,
    /// The inputs the next ingest will embed again: a source path (or a log key) per video.
    pub reingest: BTreeSet<String>,
    /// Studies whose vector must be computed again from their surviving videos.
    studies: BTreeSet<String>,
    /// Videos that lost only their frame embeddings while their source file is gone: deleting
    /// them would lose a searchable video for good (no ingest can bring it back), so they are
    /// kept and marked ([`FRAMES_LOST`]).
    keep_without_frames: BTreeSet<ItemId>,
}

/// The record field that marks a video kept without its frame embeddings (its source was gone
/// when a repair found them lost): the audit no longer counts it as a problem.
pub const FRAMES_LOST: &str = "frames_lost";

/// Audits the ingest log and the videos of `index` against each other.
pub fn audit(index: &Index) -> Result<Audit, Error> {
    let mut a = Audit::default();
    let spaces = index.spaces();
    // The log before the items: a video and its log entries are written in one batch, so every
    // entry read here has its video in the item read after it, even while an ingest job writes
    // (read the other way round, a video committed in between would look lost).
    let log: Vec<(String, Vec<u8>)> = index.log_entries(LOG_FILE)?.into_iter().chain(index.log_entries(LOG_SOP)?).collect();
    let videos = index.items(Some(Kind::Video))?;
    let (mut no_vector, mut no_frames) = (0usize, 0usize);
    for rec in &videos {
        let mut with_vector = BTreeSet::new();
        let mut with_frames = BTreeSet::new();
        for s in &spaces {
            if index.get_vector(s.id, Kind::Video, &rec.id)?.is_some() {
                with_vector.insert(s.id);
            }
            if index.get_frames(s.id, &rec.id)?.is_some() {
                with_frames.insert(s.id);
            }
        }
        let lost_vector = with_vector.is_empty() || !with_frames.is_subset(&with_vector);
        let lost_frames = !with_vector.is_subset(&with_frames) && !rec.extra.contains_key(FRAMES_LOST);
        if lost_frames && !lost_vector && !Path::new(&rec.source).is_file() {
            a.keep_without_frames.insert(rec.id.clone());
            continue;
        }
        if lost_vector || lost_frames {
            no_vector += usize::from(lost_vector);
            no_frames += usize::from(lost_frames && !lost_vector);
            a.broken.insert(rec.id.clone());
            a.reingest.insert(rec.source.clone());
            if let Some(study) = &rec.study {
                a.studies.insert(study.clone());
            }
        }
    }
    if no_vector > 0 {
        a.problems.push(format!("{no_vector} videos lost their vector: searches miss them until they are ingested again"));
    }
    // Reports: each needs its vector in some space (the ingest embeds a report in every space
    // that lacks it, and re-embeds one whose record is gone: no log entry to forget). One that
    // lost every vector is deleted, and its report manifest listed for the next ingest.
    let mut reports_lost = 0usize;
    for rec in index.items(Some(Kind::Report))? {
        let mut any = false;
        for s in &spaces {
            any |= index.get_vector(s.id, Kind::Report, &rec.id)?.is_some();
        }
        if !any {
            reports_lost += 1;
            a.broken.insert(rec.id.clone());
            a.reingest.insert(rec.source.clone());
        }
    }
    if reports_lost > 0 {
        a.problems.push(format!(
            "{reports_lost} reports lost their vector: text searches miss them until their report manifest is ingested again"
        ));
    }
    if !a.keep_without_frames.is_empty() {
        a.problems.push(format!(
            "{} videos lost their frame embeddings and their source files are gone: `repair` keeps them searchable (marked {FRAMES_LOST}); zero-shot cannot read them",
            a.keep_without_frames.len()
        ));
    }
    if no_frames > 0 {
        a.problems.push(format!("{no_frames} videos lost their frame embeddings: zero-shot re-decodes them until they are ingested again"));
    }
    let known: BTreeSet<&ItemId> = videos.iter().map(|r| &r.id).collect();
    let mut gone = 0usize;
    for (key, value) in log {
        let id = if key.starts_with(LOG_FILE) {
            serde_json::from_slice::<Logged>(&value).ok().map(|l| ItemId(l.id))
        } else {
            String::from_utf8(value).ok().map(ItemId)
        };
        let Some(id) = id else { continue };
        if !known.contains(&id) || a.broken.contains(&id) {
            gone += usize::from(!known.contains(&id));
            if let Some(path) = key.strip_prefix(LOG_FILE) {
                a.reingest.insert(path.to_owned());
            }
            a.stale_log.push(key);
        }
    }
    if gone > 0 {
        a.problems.push(format!(
            "{gone} ingest-log entries name videos the index lost: the next ingest would skip those files; `repair` forgets them"
        ));
    }
    // Studies whose vector is missing while videos of theirs survive.
    let mut members: BTreeMap<&str, usize> = BTreeMap::new();
    for rec in &videos {
        if let Some(s) = &rec.study {
            *members.entry(s.as_str()).or_default() += 1;
        }
    }
    let mut studies_without = 0usize;
    for study in members.keys() {
        for s in &spaces {
            if index.get_vector(s.id, Kind::Study, &ItemId(study_id(study)))?.is_none()
                && videos
                    .iter()
                    .any(|r| r.study.as_deref() == Some(*study) && index.get_vector(s.id, Kind::Video, &r.id).ok().flatten().is_some())
            {
                studies_without += 1;
                a.studies.insert((*study).to_owned());
                break;
            }
        }
    }
    if studies_without > 0 {
        a.problems.push(format!("{studies_without} studies lost their vector: `repair` computes it again from their videos"));
    }
    Ok(a)
}

/// Applies `a` to `index`: deletes the broken videos, forgets their log entries and those of
/// lost videos, and computes each affected study's vector again from the videos that remain
/// (deleting a study none remain of). One batch.
pub fn apply(index: &Index, a: &Audit) -> Result<(), Error> {
    let mut b = index.batch();
    for id in &a.broken {
        b.delete_item(id.clone());
    }
    for id in &a.keep_without_frames {
        if let Some(mut rec) = index.get_item(id)? {
            rec.extra.insert(FRAMES_LOST.into(), "source missing at repair".into());
            b.put_item(rec);
        }
    }
    for key in &a.stale_log {
        b.put_log(key, None);
    }
    let videos = index.items(Some(Kind::Video))?;
    for study in &a.studies {
        let sid = ItemId(study_id(study));
        let remaining: Vec<&ItemId> =
            videos.iter().filter(|r| r.study.as_deref() == Some(study.as_str()) && !a.broken.contains(&r.id)).map(|r| &r.id).collect();
        if remaining.is_empty() {
            b.delete_item(sid);
            continue;
        }
        for s in index.spaces() {
            let mut vs = Vec::new();
            for id in &remaining {
                if let Some(v) = index.get_vector(s.id, Kind::Video, id)? {
                    vs.push(v);
                }
            }
            if let (Some(mean), Some(_)) = (mean_unit(&vs), index.get_item(&sid)?) {
                b.put_vector(s.id, sid.clone(), Kind::Study, mean);
            }
        }
    }
    index.commit(b)?;
    Ok(())
}

/// `repair --check` of the index at `path`: the table files first (they are checked even where
/// the index does not open), then the index's own check and the ingest-log audit. Changes
/// nothing, writes nothing under `path`.
pub fn check_path(path: &Path) -> Result<RepairReport, Error> {
    let mut report = RepairReport::empty(true);
    match echovault_index::check_storage(path) {
        Err(IndexError::Damaged { detail, .. }) if detail.starts_with("the write-ahead log was cut") => {
            report.problems.push(format!(
                "{detail}: their ingest-log entries went with them, so the next ingest embeds those inputs again; `repair` \
                 records the loss and checks the rest"
            ));
            return Ok(report.settle());
        }
        Err(IndexError::Damaged { detail, .. }) => {
            report.problems.push(format!("the database does not open ({detail}): `repair` rebuilds it from its files"));
            return Ok(report.settle());
        }
        Err(e) => return Err(e.into()),
        Ok(damaged) if !damaged.is_empty() => {
            for d in &damaged {
                report.problems.push(d.describe());
            }
            report.damaged = damaged;
            return Ok(report.settle());
        }
        Ok(_) => {}
    }
    let index = Index::open_reader(path)?;
    crate::info::repair(&index, true)
}

/// `repair` of the index at `path`: salvages its storage where it is damaged (a lost patient-key
/// secret is refused unless `new_secret`), opens it as the writer, rebuilds what is derivable,
/// forgets what was lost so the next ingest embeds it again, then checks the result.
///
/// Inputs whose batches a damaged or cut write-ahead log lost leave no ingest-log entry to
/// find: their `file:` keys are read from the log's bytes before the salvage replays it, and
/// those the salvaged log lacks are listed too (a cut's lost tail is gone with its names: the
/// salvage says how many updates it rolled back, and the next ingest embeds them, unlisted).
pub fn repair_path(path: &Path, new_secret: bool) -> Result<RepairReport, Error> {
    let in_wal = echovault_index::wal_keys(path, LOG_FILE.as_bytes())?;
    let salvage = echovault_index::salvage(path, new_secret)?;
    let index = Index::open(path, IndexOptions { writer: Some("echovault repair".into()), ..IndexOptions::default() })?;
    let mut report = crate::info::repair(&index, false)?;
    if salvage.wal_damaged.is_some() || salvage.rolled_back.is_some() || salvage.rocksdb_repair.is_some() {
        let mut lost = 0usize;
        let mut listed: BTreeSet<String> = report.reingest.iter().cloned().collect();
        for key in &in_wal {
            if index.get_log(key)?.is_none() {
                lost += 1;
                listed.insert(key[LOG_FILE.len()..].to_owned());
            }
        }
        if lost > 0 {
            tracing::warn!("{lost} inputs were lost with the write-ahead log's damaged records: the next ingest embeds them again");
        }
        report.reingest = listed.into_iter().collect();
    }
    report.salvage = (!salvage.clean()).then_some(salvage);
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use echovault_index::ItemRecord;

    /// A video that lost its frames is deleted for re-ingest while its source can be read again,
    /// and kept (marked, no longer a problem) when its source is gone.
    #[test]
    fn a_video_whose_frames_and_source_are_gone_is_kept_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path().join("idx"), IndexOptions::default()).unwrap();
        let space = index.ensure_space("m", 2).unwrap();
        let present = dir.path().join("present.avi");
        std::fs::write(&present, b"x").unwrap();
        let mut b = index.batch();
        for (id, source) in [("v-present", present.clone()), ("v-gone", dir.path().join("gone.avi"))] {
            b.put_item(ItemRecord::new(ItemId::from(id), Kind::Video, source.to_str().unwrap()));
            b.put_vector(space, ItemId::from(id), Kind::Video, vec![1.0, 0.0]);
        }
        index.commit(b).unwrap();
        let a = audit(&index).unwrap();
        assert_eq!(a.broken.iter().map(|i| i.0.as_str()).collect::<Vec<_>>(), ["v-present"]);
        assert_eq!(a.keep_without_frames.iter().map(|i| i.0.as_str()).collect::<Vec<_>>(), ["v-gone"]);
        assert!(a.reingest.contains(present.to_str().unwrap()) && a.reingest.len() == 1, "{:?}", a.reingest);
        apply(&index, &a).unwrap();
        assert!(index.get_item(&ItemId::from("v-present")).unwrap().is_none(), "deleted: the next ingest embeds it again");
        let kept = index.get_item(&ItemId::from("v-gone")).unwrap().unwrap();
        assert!(kept.extra.contains_key(FRAMES_LOST), "{kept:?}");
        assert!(index.get_vector(space, Kind::Video, &ItemId::from("v-gone")).unwrap().is_some(), "still searchable");
        let again = audit(&index).unwrap();
        assert!(again.problems.is_empty(), "{:?}", again.problems);
    }

    /// A report whose vector is gone is a problem; the repair deletes it (so the index checks
    /// clean) and lists its report manifest; a whole report is left alone.
    #[test]
    fn a_report_that_lost_its_vector_is_found_deleted_and_its_manifest_listed() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path().join("idx"), IndexOptions::default()).unwrap();
        let space = index.ensure_space("m", 2).unwrap();
        let mut b = index.batch();
        for id in ["r-whole", "r-lost"] {
            let mut rec = ItemRecord::new(ItemId::from(id), Kind::Report, "/export/reports.jsonl");
            rec.text = Some("dilated left ventricle".into());
            b.put_item(rec);
        }
        // As a lost `vectors` table leaves it: the record without its vector.
        b.put_vector(space, ItemId::from("r-whole"), Kind::Report, vec![0.0, 1.0]);
        index.commit(b).unwrap();
        let a = audit(&index).unwrap();
        assert!(a.problems.iter().any(|p| p.starts_with("1 reports lost their vector")), "{:?}", a.problems);
        assert_eq!(a.reingest.iter().collect::<Vec<_>>(), ["/export/reports.jsonl"]);
        apply(&index, &a).unwrap();
        assert!(index.get_item(&ItemId::from("r-lost")).unwrap().is_none());
        assert!(index.get_item(&ItemId::from("r-whole")).unwrap().is_some());
        assert!(audit(&index).unwrap().problems.is_empty());
    }
}
