//! `echovault import FILE...`: an index built or extended from Parquet exports, no model
//! loaded. Every file is checked (columns, metadata, each space's model identity, the secret
//! its patient keys were made with) before anything is written; rows then go in batches, and a
//! row the index already holds as it is changes nothing.

use super::{col, identity, keys, probe_cosines, SpaceMeta, FORMAT, PATH_EXTRAS};
use crate::engine::{origin_key, probe_key, ModelOrigin, PROBE_MIN_COSINE};
use crate::error::Error;
use crate::repair::FRAMES_LOST;
use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float16Type, Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use echovault_index::{Durability, Index, IndexOptions, ItemRecord, Kind, SpaceId, StudyDate, VectorEncoding};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The ingest log's key of a SOPInstanceUID (as ingest writes it: `sop:UID` → the video's id),
/// through which ingest treats files with one SOPInstanceUID as one video.
const LOG_SOP: &str = "sop:";

/// The `frames_lost` note of a video imported without its frame embeddings.
const IMPORTED_WITHOUT_FRAMES: &str = "imported without frame embeddings";

/// The largest vector dimension a file may declare.
const MAX_DIM: usize = 65536;

/// How to import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The patient-key secret kept outside the index (`--secret-file`).
    pub secret_file: Option<PathBuf>,
    /// Accept patient keys made with another secret than the index's.
    pub foreign_keys: bool,
    /// Rows read and committed at a time, at most.
    pub batch_rows: usize,
    /// Bytes of decoded rows (vectors and frame embeddings, as the file's row groups record
    /// their uncompressed size) read and committed at a time, about: with frame embeddings a
    /// row is ~0.3 MB (150 frames × 512-d), so rows alone would not bound memory.
    pub batch_bytes: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions { secret_file: None, foreign_keys: false, batch_rows: 2048, batch_bytes: 64 << 20 }
    }
}

/// What an import did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ImportSummary {
    /// The index.
    pub index: PathBuf,
    /// Files read.
    pub files: usize,
    /// Rows read (one per item and space).
    pub rows: u64,
    /// Rows whose item had no vector in that space and kind.
    pub added: u64,
    /// Rows that changed what the index held (record, vector or frame embeddings).
    pub updated: u64,
    /// Rows the index held as they are.
    pub unchanged: u64,
    /// Spaces the import created.
    pub spaces_created: Vec<String>,
    /// Wall time.
    pub seconds: f64,
    /// Rows per second.
    pub rows_per_s: f64,
}

/// One file's metadata, checked.
#[derive(Debug)]
struct FileInfo {
    path: PathBuf,
    spaces: Vec<SpaceMeta>,
    secret: Option<String>,
    /// Rows with a patient key (`None`: not recorded, counted as some).
    patient_keys: Option<u64>,
    float16: bool,
    with_paths: bool,
    /// The largest uncompressed bytes per row of any of its row groups.
    row_bytes: u64,
}

impl FileInfo {
    fn has_patient_keys(&self) -> bool {
        self.patient_keys.is_none_or(|n| n > 0)
    }
}

/// Imports `files` into the index at `dir` (created when absent).
pub fn import(dir: &Path, files: &[PathBuf], opts: &ImportOptions) -> Result<ImportSummary, Error> {
    let t0 = Instant::now();
    let infos: Vec<FileInfo> = files.iter().map(PathBuf::as_path).map(read_info).collect::<Result<_, _>>()?;
    check_files_agree(&infos)?;
    let is_new = !dir.exists() || std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.next().is_none();
    if is_new && !opts.foreign_keys {
        // Checked before the index is created: a new index's own secret would be a new one.
        let target = match &opts.secret_file {
            Some(f) if f.exists() => Some(hex::encode(echovault_index::secret_fingerprint(&echovault_index::read_secret_file(f)?))),
            _ => None,
        };
        for f in &infos {
            check_secret(f, target.as_deref(), dir, is_new)?;
        }
    }
    let encoding = if infos.iter().all(|f| f.float16) { VectorEncoding::F16 } else { VectorEncoding::F32 };
    let index = Index::open(
        dir,
        IndexOptions {
            writer: Some("echovault import".into()),
            secret_file: opts.secret_file.clone(),
            encoding: Some(encoding),
            ..IndexOptions::default()
        },
    )?;
    if !opts.foreign_keys {
        let target = index.secret_fingerprint()?.map(hex::encode);
        for f in &infos {
            check_secret(f, target.as_deref(), dir, false)?;
        }
    }
    let mut summary = ImportSummary { index: dir.to_owned(), files: files.len(), ..ImportSummary::default() };
    let mut space_ids: HashMap<String, SpaceId> = HashMap::new();
    for f in &infos {
        for s in &f.spaces {
            // Every file is checked against the space as the files before it left it.
            let (id, created) = space_for(&index, f, s)?;
            if created {
                summary.spaces_created.push(s.name.clone());
            }
            space_ids.insert(s.name.clone(), id);
        }
    }
    let tolerance = if encoding == VectorEncoding::F16 { 2e-3 } else { 1e-5 };
    let mut changed = false;
    for f in &infos {
        let file = std::fs::File::open(&f.path).map_err(|e| Error::io(&f.path, e))?;
        let rows_at_a_time = (opts.batch_bytes as u64 / f.row_bytes.max(1)).clamp(1, opts.batch_rows.max(1) as u64) as usize;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.with_batch_size(rows_at_a_time).build())
            .map_err(|e| bad(&f.path, e))?;
        let mut first_row = 0u64;
        for batch in reader {
            let batch = batch.map_err(|e| bad(&f.path, e))?;
            let rows = read_rows(&batch, f, first_row)?;
            let n = rows.len() as u64;
            let mut b = index.batch();
            for row in rows {
                let space = *space_ids.get(&row.space).ok_or_else(|| {
                    bad(&f.path, format!("row {}: space '{}' is not among the file's spaces (echovault.spaces)", row.number, row.space))
                })?;
                match apply_row(&index, &mut b, f, space, row, tolerance)? {
                    Outcome::Added => summary.added += 1,
                    Outcome::Updated => summary.updated += 1,
                    Outcome::Unchanged => summary.unchanged += 1,
                }
            }
            if !b.is_empty() {
                changed = true;
                index.commit_with(b, Durability::Buffered).map_err(|e| {
                    Error::Invalid(format!("{}: rows {first_row}–{}: {e}", f.path.display(), first_row + n.saturating_sub(1)))
                })?;
            }
            first_row += n;
            summary.rows += n;
        }
    }
    index.sync()?;
    if changed {
        index.checkpoint()?;
    }
    summary.seconds = t0.elapsed().as_secs_f64();
    summary.rows_per_s = summary.rows as f64 / summary.seconds.max(1e-9);
    Ok(summary)
}

/// An error about one file.
fn bad(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: {e}", path.display()))
}

/// Reads and checks a file's metadata and columns (its footer only).
fn read_info(path: &Path) -> Result<FileInfo, Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(path, format!("not a readable Parquet file: {e}")))?;
    let kv: BTreeMap<String, String> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| kv.iter().filter_map(|k| Some((k.key.clone(), k.value.clone()?))).collect())
        .unwrap_or_default();
    match kv.get(keys::FORMAT) {
        Some(f) if f == FORMAT => {}
        Some(f) => return Err(bad(path, format!("format '{f}', this echovault reads '{FORMAT}'"))),
        None => return Err(bad(path, format!("not an echovault export (no {} metadata): write it with `echovault export`", keys::FORMAT))),
    }
    let spaces: Vec<SpaceMeta> = kv
        .get(keys::SPACES)
        .ok_or_else(|| bad(path, format!("no {} metadata", keys::SPACES)))
        .and_then(|s| serde_json::from_str(s).map_err(|e| bad(path, format!("{}: {e}", keys::SPACES))))?;
    if spaces.is_empty() {
        return Err(bad(path, "names no embedding space"));
    }
    if let Some(s) = spaces.iter().find(|s| !(1..=MAX_DIM).contains(&s.dim)) {
        return Err(bad(path, format!("space '{}' is {}-d in {}: a dimension is 1 to {MAX_DIM}", s.name, s.dim, keys::SPACES)));
    }
    let schema = builder.schema();
    let dim = spaces[0].dim;
    if let Some(s) = spaces.iter().find(|s| s.dim != dim) {
        return Err(bad(
            path,
            format!("spaces of different dimensions in one vector column ('{}' {dim}-d, '{}' {}-d)", spaces[0].name, s.name, s.dim),
        ));
    }
    for c in [col::ID, col::KIND, col::SPACE, col::VECTOR] {
        if schema.column_with_name(c).is_none() {
            return Err(bad(path, format!("no `{c}` column")));
        }
    }
    if let Ok(f) = schema.field_with_name(col::VECTOR) {
        if let DataType::FixedSizeList(_, n) = f.data_type() {
            if *n as usize != dim {
                return Err(bad(path, format!("`vector` holds {n} values a row, the space '{}' is {dim}-d", spaces[0].name)));
            }
        }
    }
    let patient_keys = match kv.get(keys::PATIENT_KEYS) {
        Some(n) => Some(n.parse().map_err(|_| bad(path, format!("{}: not a count: {n}", keys::PATIENT_KEYS)))?),
        None => None,
    };
    let float16 = match schema.field_with_name(col::VECTOR).map(|f| f.data_type().clone()) {
        Ok(DataType::FixedSizeList(f, _)) | Ok(DataType::List(f)) | Ok(DataType::LargeList(f)) => *f.data_type() == DataType::Float16,
        _ => false,
    };
    let row_bytes = builder
        .metadata()
        .row_groups()
        .iter()
        .filter(|g| g.num_rows() > 0)
        .map(|g| u64::try_from(g.total_byte_size()).unwrap_or(0) / g.num_rows() as u64)
        .max()
        .unwrap_or(0)
        .max(dim as u64 * 4);
    Ok(FileInfo {
        path: path.to_owned(),
        spaces,
        secret: kv.get(keys::SECRET).cloned(),
        patient_keys,
        float16,
        with_paths: schema.column_with_name(col::SOURCE).is_some(),
        row_bytes,
    })
}

/// Two files that name one space must agree on its dimension and model.
fn check_files_agree(infos: &[FileInfo]) -> Result<(), Error> {
    let mut seen: HashMap<&str, (&FileInfo, &SpaceMeta)> = HashMap::new();
    for f in infos {
        for s in &f.spaces {
            let Some((g, t)) = seen.get(s.name.as_str()) else {
                seen.insert(&s.name, (f, s));
                continue;
            };
            let same = s.dim == t.dim
                && match (&s.probe, &t.probe) {
                    (Some(a), Some(b)) => {
                        let (ct, ci) = probe_cosines(a, b);
                        ct >= PROBE_MIN_COSINE && ci >= PROBE_MIN_COSINE
                    }
                    // Probes cannot be compared: known checkpoints must agree.
                    _ => match (&s.model, &t.model) {
                        (Some(a), Some(b)) => a.checkpoint == b.checkpoint,
                        _ => s.probe.is_none() && t.probe.is_none(),
                    },
                };
            if !same {
                return Err(Error::Invalid(format!(
                    "{} and {} hold space '{}' from different models ({}-d, {}; {}-d, {}): import them into different indexes",
                    g.path.display(),
                    f.path.display(),
                    s.name,
                    t.dim,
                    identity(t.model.as_ref()),
                    s.dim,
                    identity(s.model.as_ref())
                )));
            }
        }
    }
    Ok(())
}

fn same_checkpoint(a: Option<&ModelOrigin>, b: Option<&ModelOrigin>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a.checkpoint == b.checkpoint)
}

/// Patient keys of `f` must have been made with the secret whose fingerprint is `target`.
fn check_secret(f: &FileInfo, target: Option<&str>, dir: &Path, is_new: bool) -> Result<(), Error> {
    if !f.has_patient_keys() || (f.secret.is_some() && f.secret.as_deref() == target) {
        return Ok(());
    }
    let short = |s: Option<&str>| s.map_or("none".to_owned(), |s| format!("{}…", s.chars().take(12).collect::<String>()));
    let theirs = if is_new && target.is_none() { "the new secret it would be created with".to_owned() } else { short(target) };
    Err(Error::Invalid(format!(
        "{}: its patient keys were made with another patient-key secret (fingerprint {}) than index {}'s ({theirs}): one patient \
         would have two keys, and this index could not key an MRN to them. Import into an index that uses the exporting index's \
         secret (--secret-file FILE: `echovault repair --export-secret FILE` moves an index's secret out), or pass \
         --foreign-patient-keys to keep these keys as they are",
        f.path.display(),
        short(f.secret.as_deref()),
        dir.display()
    )))
}

/// The index's space for `s` (created, with its model identity, when absent), checked against
/// the file's model identity as ingest checks a model: dimension, probe embeddings.
fn space_for(index: &Index, f: &FileInfo, s: &SpaceMeta) -> Result<(SpaceId, bool), Error> {
    let existing = index.space(&s.name);
    let created = existing.is_none();
    if let Some(have) = &existing {
        if have.dim != s.dim {
            return Err(bad(
                &f.path,
                format!("space '{}' is {}-d, index {}'s space '{}' is {}-d", s.name, s.dim, index.path().display(), s.name, have.dim),
            ));
        }
    }
    let held_probe: Option<serde_json::Value> = index.get_log(&probe_key(&s.name))?.and_then(|b| serde_json::from_slice(&b).ok());
    let held_model: Option<ModelOrigin> = index.get_log(&origin_key(&s.name))?.and_then(|b| serde_json::from_slice(&b).ok());
    let mismatch = |why: String| {
        bad(
            &f.path,
            format!(
                "space '{}' was embedded by another model than the one that filled space '{}' of index {} ({why}): file: {}; index: {}. \
                 Import it into another index",
                s.name,
                s.name,
                index.path().display(),
                identity(s.model.as_ref()),
                identity(held_model.as_ref())
            ),
        )
    };
    match (&s.probe, &held_probe) {
        (Some(a), Some(b)) => {
            let (ct, ci) = probe_cosines(a, b);
            if ct < PROBE_MIN_COSINE || ci < PROBE_MIN_COSINE {
                return Err(mismatch(format!("probe embeddings differ: cosine {ct:.3} text, {ci:.3} image")));
            }
        }
        (None, Some(_)) if !same_checkpoint(s.model.as_ref(), held_model.as_ref()) => {
            return Err(mismatch("the file carries no model probe to check".into()));
        }
        // No probe on one side or both: checkpoints, where both are known, must agree.
        (_, None) | (None, _) => {
            if let (Some(a), Some(b)) = (&s.model, &held_model) {
                if a.checkpoint != b.checkpoint {
                    return Err(mismatch("their checkpoints differ, and there is no model probe on both sides to compare".into()));
                }
            }
        }
    }
    let id = index.ensure_space(&s.name, s.dim)?;
    let mut b = index.batch();
    if let (Some(p), None) = (&s.probe, &held_probe) {
        b.put_log(&probe_key(&s.name), Some(&serde_json::to_vec(p).map_err(|e| Error::Invalid(format!("model probe: {e}")))?));
    }
    if let (Some(m), None) = (&s.model, &held_model) {
        b.put_log(&origin_key(&s.name), Some(&serde_json::to_vec(m).map_err(|e| Error::Invalid(format!("model origin: {e}")))?));
    }
    if !b.is_empty() {
        index.commit(b)?;
    }
    Ok((id, created))
}

/// One row of a file.
#[derive(Debug)]
struct Row {
    number: u64,
    space: String,
    record: ItemRecord,
    vector: Vec<f32>,
    frames: Option<Vec<Vec<f32>>>,
}

enum Outcome {
    Added,
    Updated,
    Unchanged,
}

/// Adds to `b` what the index lacks of `row`.
fn apply_row(index: &Index, b: &mut echovault_index::Batch, f: &FileInfo, space: SpaceId, row: Row, tol: f32) -> Result<Outcome, Error> {
    let mut rec = row.record;
    let id = rec.id.clone();
    let kind = rec.kind;
    let old = index.get_item(&id)?;
    if !f.with_paths {
        // A file without paths keeps the paths the index knows.
        match &old {
            Some(o) => {
                rec.source = o.source.clone();
                for k in PATH_EXTRAS {
                    if let Some(v) = o.extra.get(k) {
                        rec.extra.insert(k.to_owned(), v.clone());
                    }
                }
            }
            None => rec.source = format!("imported from {}", f.path.display()),
        }
    }
    let held_frames = if kind == Kind::Video { index.get_frames(space, &id)? } else { None };
    let frames = row
        .frames
        .map(|fs| fs.into_iter().map(|v| v.into_iter().map(|x| half::f16::from_f32(x).to_f32()).collect()).collect::<Vec<Vec<f32>>>());
    if kind == Kind::Video && frames.is_none() && held_frames.is_none() {
        // Searchable, but zero-shot has no frames to read, and `repair` must not count it lost.
        rec.extra.entry(FRAMES_LOST.to_owned()).or_insert_with(|| IMPORTED_WITHOUT_FRAMES.to_owned());
    } else if frames.is_some() && rec.extra.get(FRAMES_LOST).is_some_and(|v| v == IMPORTED_WITHOUT_FRAMES) {
        rec.extra.remove(FRAMES_LOST);
    }
    let mut v = row.vector;
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    let held = index.get_vector(space, kind, &id)?;
    let vector_changed = held.as_ref().is_none_or(|h| h.len() != v.len() || h.iter().zip(&v).any(|(a, b)| (a - b).abs() > tol));
    let record_changed = old.as_ref() != Some(&rec);
    let frames_changed = frames.as_ref().is_some_and(|fs| held_frames.as_ref() != Some(fs));
    let sop = match rec.extra.get("sop_uid").filter(|_| kind == Kind::Video) {
        Some(uid) => {
            let key = format!("{LOG_SOP}{uid}");
            (index.get_log(&key)?.as_deref() != Some(id.as_str().as_bytes())).then_some(key)
        }
        None => None,
    };
    let outcome = match (held.is_some(), vector_changed || record_changed || frames_changed || sop.is_some()) {
        (false, _) => Outcome::Added,
        (true, true) => Outcome::Updated,
        (true, false) => Outcome::Unchanged,
    };
    if record_changed {
        b.put_item(rec);
    }
    if vector_changed {
        b.put_vector(space, id.clone(), kind, v);
    }
    if let (true, Some(fs)) = (frames_changed, frames) {
        b.put_frames(space, id.clone(), fs);
    }
    if let Some(key) = sop {
        b.put_log(&key, Some(id.as_str().as_bytes()));
    }
    Ok(outcome)
}

/// The rows of one record batch (`first` is the first one's number in the file).
fn read_rows(batch: &RecordBatch, f: &FileInfo, first: u64) -> Result<Vec<Row>, Error> {
    let p = &f.path;
    let column = |name: &str| batch.column_by_name(name);
    let need = |name: &str| column(name).ok_or_else(|| bad(p, format!("no `{name}` column")));
    let ids = Strings::of(need(col::ID)?, p, col::ID)?;
    let kinds = Strings::of(need(col::KIND)?, p, col::KIND)?;
    let spaces = Strings::of(need(col::SPACE)?, p, col::SPACE)?;
    let opt_strings = |name: &str| column(name).map(|a| Strings::of(a, p, name)).transpose();
    let (study, patient, text, source) =
        (opt_strings(col::STUDY)?, opt_strings(col::PATIENT)?, opt_strings(col::TEXT)?, opt_strings(col::SOURCE)?);
    let vectors = need(col::VECTOR)?;
    let frames = column(col::FRAMES);
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let number = first + i as u64;
        let at = |what: &str| bad(p, format!("row {number}: {what}"));
        let id = ids.get(i).ok_or_else(|| at("no id"))?;
        let kind: Kind = kinds.get(i).ok_or_else(|| at("no kind"))?.parse().map_err(|e: String| at(&e))?;
        let space = spaces.get(i).ok_or_else(|| at("no space"))?.to_owned();
        let mut rec = ItemRecord::new(id, kind, source.as_ref().and_then(|s| s.get(i)).unwrap_or_default());
        rec.study = study.as_ref().and_then(|s| s.get(i)).map(str::to_owned);
        rec.patient = patient.as_ref().and_then(|s| s.get(i)).map(str::to_owned);
        rec.text = text.as_ref().and_then(|s| s.get(i)).map(str::to_owned);
        rec.date = match column(col::DATE) {
            Some(a) => date_at(a, i).map_err(|e| at(&e))?,
            None => None,
        };
        rec.frames = match column(col::NUM_FRAMES) {
            Some(a) => int_at(a, i)
                .map_err(|e| at(&e))?
                .map(|n| u32::try_from(n).map_err(|_| at(&format!("num_frames {n} out of range"))))
                .transpose()?,
            None => None,
        };
        rec.fps = match column(col::FPS) {
            Some(a) => float_at(a, i).map_err(|e| at(&e))?,
            None => None,
        };
        if let Some(a) = column(col::EXTRA) {
            rec.extra = extra_at(a, i).map_err(|e| at(&e))?;
        }
        if vectors.is_null(i) {
            return Err(at("no vector"));
        }
        let vector = list_at(vectors, i).map_err(|e| at(&format!("vector: {e}")))?;
        let dim = f.spaces.first().map_or(0, |s| s.dim);
        if vector.len() != dim {
            return Err(at(&format!("a {}-d vector, the file's spaces are {dim}-d", vector.len())));
        }
        let frames = match frames {
            Some(a) if !a.is_null(i) => Some(frames_at(a, i).map_err(|e| at(&format!("frame_embeddings: {e}")))?),
            _ => None,
        };
        if let Some(n) = frames.iter().flatten().map(Vec::len).find(|n| *n != dim) {
            return Err(at(&format!("a {n}-d frame embedding, the file's spaces are {dim}-d")));
        }
        out.push(Row { number, space, record: rec, vector, frames });
    }
    Ok(out)
}

/// A string column of any of Arrow's string layouts.
enum Strings<'a> {
    Small(&'a arrow_array::StringArray),
    Large(&'a arrow_array::LargeStringArray),
    View(&'a arrow_array::StringViewArray),
}

impl<'a> Strings<'a> {
    fn of(a: &'a ArrayRef, p: &Path, name: &str) -> Result<Strings<'a>, Error> {
        if let Some(s) = a.as_string_opt::<i32>() {
            Ok(Strings::Small(s))
        } else if let Some(s) = a.as_string_opt::<i64>() {
            Ok(Strings::Large(s))
        } else if let Some(s) = a.as_string_view_opt() {
            Ok(Strings::View(s))
        } else {
            Err(bad(p, format!("column `{name}` is {}, not strings", a.data_type())))
        }
    }

    fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Strings::Small(s) => (!s.is_null(i)).then(|| s.value(i)),
            Strings::Large(s) => (!s.is_null(i)).then(|| s.value(i)),
            Strings::View(s) => (!s.is_null(i)).then(|| s.value(i)),
        }
    }
}

fn date_at(a: &ArrayRef, i: usize) -> Result<Option<StudyDate>, String> {
    if a.is_null(i) {
        return Ok(None);
    }
    if let Some(d) = a.as_primitive_opt::<Date32Type>() {
        return StudyDate::from_days_since_epoch(i64::from(d.value(i)))
            .map(Some)
            .ok_or_else(|| format!("date {} out of range", d.value(i)));
    }
    if let Some(s) = a.as_string_opt::<i32>() {
        return s.value(i).parse().map(Some).map_err(|e| format!("date: {e}"));
    }
    Err(format!("column `date` is {}, not date32", a.data_type()))
}

fn int_at(a: &ArrayRef, i: usize) -> Result<Option<i128>, String> {
    if a.is_null(i) {
        return Ok(None);
    }
    let v = if let Some(x) = a.as_primitive_opt::<UInt32Type>() {
        i128::from(x.value(i))
    } else if let Some(x) = a.as_primitive_opt::<Int32Type>() {
        i128::from(x.value(i))
    } else if let Some(x) = a.as_primitive_opt::<Int64Type>() {
        i128::from(x.value(i))
    } else if let Some(x) = a.as_primitive_opt::<UInt64Type>() {
        i128::from(x.value(i))
    } else {
        return Err(format!("column `num_frames` is {}, not integers", a.data_type()));
    };
    Ok(Some(v))
}

fn float_at(a: &ArrayRef, i: usize) -> Result<Option<f64>, String> {
    if a.is_null(i) {
        return Ok(None);
    }
    if let Some(x) = a.as_primitive_opt::<Float64Type>() {
        Ok(Some(x.value(i)))
    } else if let Some(x) = a.as_primitive_opt::<Float32Type>() {
        Ok(Some(f64::from(x.value(i))))
    } else {
        Err(format!("column `fps` is {}, not floats", a.data_type()))
    }
}

fn extra_at(a: &ArrayRef, i: usize) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    if a.is_null(i) {
        return Ok(out);
    }
    let m = a.as_map_opt().ok_or_else(|| format!("column `extra` is {}, not a map of strings", a.data_type()))?;
    let entries = m.value(i);
    let (Some(keys), Some(values)) = (entries.columns().first(), entries.columns().get(1)) else {
        return Err("column `extra` is not a map of strings".into());
    };
    let (k, v) = (keys.as_string_opt::<i32>(), values.as_string_opt::<i32>());
    let (Some(k), Some(v)) = (k, v) else { return Err("column `extra` is not a map of strings".into()) };
    for j in 0..k.len() {
        if !k.is_null(j) && !v.is_null(j) {
            out.insert(k.value(j).to_owned(), v.value(j).to_owned());
        }
    }
    Ok(out)
}

/// Start and end of list `i` (checked: offsets from a file).
fn offsets<O: Copy + TryInto<usize>>(o: &[O], i: usize) -> Result<(usize, usize), String> {
    let at = |j: usize| o.get(j).and_then(|x| (*x).try_into().ok()).ok_or_else(|| "offsets out of range".to_owned());
    let (a, b) = (at(i)?, at(i + 1)?);
    if b < a {
        return Err("offsets out of order".into());
    }
    Ok((a, b))
}

/// Row `i` of a list (fixed-size or not) of floats.
fn list_at(a: &dyn Array, i: usize) -> Result<Vec<f32>, String> {
    let (values, start, len) = if let Some(l) = a.as_fixed_size_list_opt() {
        (l.values().clone(), l.value_offset_at(i), l.value_length() as usize)
    } else if let Some(l) = a.as_list_opt::<i32>() {
        let o = l.value_offsets();
        let (a, b) = offsets(o, i)?;
        (l.values().clone(), a, b - a)
    } else if let Some(l) = a.as_list_opt::<i64>() {
        let o = l.value_offsets();
        let (a, b) = offsets(o, i)?;
        (l.values().clone(), a, b - a)
    } else {
        return Err(format!("{} is not a list of floats", a.data_type()));
    };
    if start.checked_add(len).is_none_or(|end| end > values.len()) {
        return Err("offsets out of range".into());
    }
    if values.null_count() > 0 && (start..start + len).any(|j| values.is_null(j)) {
        return Err("a null value".into());
    }
    let v: Vec<f32> = if let Some(x) = values.as_primitive_opt::<Float32Type>() {
        x.values().get(start..start + len).ok_or("offsets out of range")?.to_vec()
    } else if let Some(x) = values.as_primitive_opt::<Float16Type>() {
        x.values().get(start..start + len).ok_or("offsets out of range")?.iter().map(|h| h.to_f32()).collect()
    } else if let Some(x) = values.as_primitive_opt::<Float64Type>() {
        x.values().get(start..start + len).ok_or("offsets out of range")?.iter().map(|d| *d as f32).collect()
    } else {
        return Err(format!("values are {}, not floats", values.data_type()));
    };
    Ok(v)
}

/// Row `i` of a list of float lists (a video's frame embeddings).
fn frames_at(a: &ArrayRef, i: usize) -> Result<Vec<Vec<f32>>, String> {
    let (inner, start, end) = if let Some(l) = a.as_list_opt::<i32>() {
        let o = l.value_offsets();
        let (a, b) = offsets(o, i)?;
        (l.values().clone(), a, b)
    } else if let Some(l) = a.as_list_opt::<i64>() {
        let o = l.value_offsets();
        let (a, b) = offsets(o, i)?;
        (l.values().clone(), a, b)
    } else {
        return Err(format!("{} is not a list of vectors", a.data_type()));
    };
    if end > inner.len() {
        return Err("offsets out of range".into());
    }
    (start..end).map(|j| if inner.is_null(j) { Err("a null frame".to_owned()) } else { list_at(inner.as_ref(), j) }).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_new_index_without_the_exporting_secret_is_refused_when_the_file_has_keys() {
        let f = |keys: Option<u64>, secret: Option<&str>| FileInfo {
            path: PathBuf::from("a.parquet"),
            spaces: vec![],
            secret: secret.map(str::to_owned),
            patient_keys: keys,
            float16: false,
            with_paths: false,
            row_bytes: 4,
        };
        let dir = Path::new("idx");
        assert!(check_secret(&f(Some(0), Some("aa")), None, dir, true).is_ok(), "no keys: nothing to mix");
        assert!(check_secret(&f(Some(3), Some("aa")), Some("aa"), dir, false).is_ok());
        let e = check_secret(&f(Some(3), Some("aa")), None, dir, true).unwrap_err().to_string();
        assert!(e.contains("a.parquet") && e.contains("--secret-file") && e.contains("--foreign-patient-keys"), "{e}");
        assert!(check_secret(&f(None, Some("aa")), Some("bb"), dir, false).is_err(), "an unknown count counts as keys");
        assert!(check_secret(&f(Some(1), None), Some("bb"), dir, false).is_err(), "keys without a recorded secret");
    }
}
