//! `echovault export --format parquet`: the index's items, collection by collection, streamed
//! into row groups (see the module documentation of [`crate::exchange`] for the layout).

use super::{col, keys, SpaceMeta, FORMAT, PATH_EXTRAS};
use crate::engine::{origin_key, probe_key, ModelOrigin};
use crate::error::Error;
use arrow_array::builder::{
    Date32Builder, FixedSizeListBuilder, Float16Builder, Float32Builder, Float64Builder, ListBuilder, MapBuilder, StringBuilder,
    UInt32Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Field, Schema, SchemaRef};
use echovault_index::{ExportRow, Filter, Index, Kind, SpaceInfo, VectorEncoding};
use half::f16;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The element type of the `vector` (and `frame_embeddings`) column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VectorType {
    /// As the index stores the vectors: float16 when the first exported vector is stored as
    /// f16, else float32; frame embeddings (stored as f16) as float16.
    #[default]
    Auto,
    /// float32 (frame embeddings widened exactly).
    F32,
    /// float16 (vectors stored as f32 rounded to the nearest half).
    F16,
}

impl std::str::FromStr for VectorType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(VectorType::Auto),
            "float32" | "f32" => Ok(VectorType::F32),
            "float16" | "f16" => Ok(VectorType::F16),
            other => Err(format!("unknown vector type '{other}' (expected auto, float32 or float16)")),
        }
    }
}

/// What to export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Only this space (`None`: every space; they must share a dimension).
    pub space: Option<String>,
    /// The kinds exported (empty: all three).
    pub kinds: Vec<Kind>,
    /// The items exported, as a search's filter.
    pub filter: Filter,
    /// Write each video's frame embeddings.
    pub frames: bool,
    /// Write the ingested paths (`source`, and the `url` / `wado_url` extras).
    pub with_paths: bool,
    /// The vectors' element type.
    pub vector_type: VectorType,
    /// Rows read from the index and handed to the writer at a time, at most.
    pub chunk_rows: usize,
    /// Bytes of vectors and frame embeddings read from the index and handed to the writer at
    /// a time, about (a chunk is sized by the largest row seen so far; with `frames` a video
    /// of 150 frames × 512-d is ~0.3 MB, so rows alone would not bound memory).
    pub chunk_bytes: usize,
    /// A row group is closed once its encoded size reaches this many bytes.
    pub row_group_bytes: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            space: None,
            kinds: Vec::new(),
            filter: Filter::default(),
            frames: false,
            with_paths: false,
            vector_type: VectorType::Auto,
            chunk_rows: 4096,
            chunk_bytes: 64 << 20,
            row_group_bytes: 64 << 20,
        }
    }
}

/// What an export wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportSummary {
    /// The file.
    pub out: PathBuf,
    /// Rows written.
    pub rows: u64,
    /// Rows per `space/kind`.
    pub collections: BTreeMap<String, u64>,
    /// Rows that carry a patient key.
    pub patient_keys: u64,
    /// `float32` or `float16`.
    pub vector_type: &'static str,
    /// Whether frame embeddings were written.
    pub frames: bool,
    /// Whether paths were written.
    pub with_paths: bool,
    /// Row groups written.
    pub row_groups: usize,
    /// File size.
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
    /// Rows per second.
    pub rows_per_s: f64,
}

/// Writes the items of `index` that `opts` selects to the Parquet file `out` (through a
/// temporary file beside it, renamed at the end: a failed or killed export leaves no half file).
pub fn export(index: &Index, out: &Path, opts: &ExportOptions) -> Result<ExportSummary, Error> {
    let t0 = Instant::now();
    let spaces = chosen_spaces(index, opts.space.as_deref())?;
    let dim = spaces[0].dim;
    let kinds: Vec<Kind> = if opts.kinds.is_empty() { Kind::ALL.to_vec() } else { opts.kinds.clone() };
    let float16 = match opts.vector_type {
        VectorType::F32 => false,
        VectorType::F16 => true,
        VectorType::Auto => first_encoding(index, &spaces, &kinds, &opts.filter)? == Some(VectorEncoding::F16),
    };
    let mut metas = Vec::new();
    for s in &spaces {
        let probe = match index.get_log(&probe_key(&s.name))? {
            Some(b) => Some(
                serde_json::from_slice(&b)
                    .map_err(|e| Error::Invalid(format!("model probe of space '{}' in {}: {e}", s.name, index.path().display())))?,
            ),
            None => None,
        };
        let model: Option<ModelOrigin> = index.get_log(&origin_key(&s.name))?.and_then(|b| serde_json::from_slice(&b).ok());
        metas.push(SpaceMeta { name: s.name.clone(), dim: s.dim, probe, model });
    }
    let mut cols = Columns::new(dim, float16, opts.frames, opts.with_paths, chunk_len(opts, 4 * dim));
    let schema = cols.schema();
    let tmp = partial_path(out);
    let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = (|| {
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(properties(opts.row_group_bytes)))
            .map_err(|e| Error::Invalid(format!("{}: {e}", out.display())))?;
        let kv = |k: &str, v: String| KeyValue::new(k.to_owned(), v);
        writer.append_key_value_metadata(kv(keys::FORMAT, FORMAT.to_owned()));
        let spaces_json = serde_json::to_string(&metas).map_err(|e| Error::Invalid(format!("space metadata: {e}")))?;
        writer.append_key_value_metadata(kv(keys::SPACES, spaces_json));
        if let Some(fp) = index.secret_fingerprint()? {
            writer.append_key_value_metadata(kv(keys::SECRET, hex::encode(fp)));
        }
        writer.append_key_value_metadata(kv(keys::VECTOR_TYPE, if float16 { "float16" } else { "float32" }.to_owned()));
        writer.append_key_value_metadata(kv(keys::WITH_PATHS, opts.with_paths.to_string()));
        let mut summary = ExportSummary {
            out: out.to_owned(),
            rows: 0,
            collections: BTreeMap::new(),
            patient_keys: 0,
            vector_type: if float16 { "float16" } else { "float32" },
            frames: opts.frames,
            with_paths: opts.with_paths,
            row_groups: 0,
            bytes: 0,
            seconds: 0.0,
            rows_per_s: 0.0,
        };
        let write = |writer: &mut ArrowWriter<std::fs::File>, cols: &mut Columns| -> Result<(), Error> {
            let batch =
                RecordBatch::try_new(schema.clone(), cols.finish()).map_err(|e| Error::Invalid(format!("{}: {e}", out.display())))?;
            writer.write(&batch).map_err(|e| Error::Invalid(format!("writing {}: {e}", out.display())))
        };
        // The largest row seen (4 bytes a value); before any, a video of 256 frames is assumed.
        let mut row_bytes = 4 * dim * if opts.frames { 257 } else { 1 };
        let mut cols_bytes = 0usize;
        for (s, meta) in spaces.iter().zip(&metas) {
            let model = meta.model.as_ref().map(|m| m.checkpoint.as_str());
            for &kind in &kinds {
                let mut rows = index.export_rows(s.id, kind, &opts.filter, opts.frames)?;
                let mut n = 0u64;
                while let Some(chunk) = rows.next_chunk(chunk_len(opts, row_bytes))? {
                    for row in &chunk {
                        summary.patient_keys += u64::from(row.record.patient.is_some());
                        let bytes = 4 * (row.vector.len() + row.frames.iter().flatten().map(Vec::len).sum::<usize>());
                        row_bytes = row_bytes.max(bytes);
                        cols.push(row, &s.name, model)?;
                        cols_bytes += bytes;
                        n += 1;
                        if cols.len() >= opts.chunk_rows || cols_bytes >= opts.chunk_bytes {
                            write(&mut writer, &mut cols)?;
                            cols_bytes = 0;
                        }
                    }
                }
                summary.rows += n;
                summary.collections.insert(format!("{}/{}", s.name, kind), n);
            }
        }
        if cols.len() > 0 {
            write(&mut writer, &mut cols)?;
        }
        writer.append_key_value_metadata(kv(keys::ROWS, summary.rows.to_string()));
        writer.append_key_value_metadata(kv(keys::PATIENT_KEYS, summary.patient_keys.to_string()));
        let meta = writer.close().map_err(|e| Error::Invalid(format!("writing {}: {e}", out.display())))?;
        summary.row_groups = meta.num_row_groups();
        Ok(summary)
    })();
    let mut summary = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    summary.bytes = std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    summary.seconds = t0.elapsed().as_secs_f64();
    summary.rows_per_s = summary.rows as f64 / summary.seconds.max(1e-9);
    Ok(summary)
}

/// Rows to read from the index next: `chunk_rows`, fewer where rows of `row_bytes` would pass
/// `chunk_bytes` (one at least).
fn chunk_len(opts: &ExportOptions, row_bytes: usize) -> usize {
    (opts.chunk_bytes / row_bytes.max(1)).clamp(1, opts.chunk_rows.max(1))
}

/// `FILE.partial-PID` beside `out`.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".partial-{}", std::process::id()));
    out.with_file_name(name)
}

/// Snappy pages; dictionaries only for the repetitive string columns (a vector never repeats).
fn properties(row_group_bytes: usize) -> WriterProperties {
    let mut p = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_enabled(false)
        .set_max_row_group_bytes(Some(row_group_bytes.max(1)));
    for c in [col::KIND, col::SPACE, col::MODEL, col::STUDY, col::PATIENT] {
        p = p.set_column_dictionary_enabled(ColumnPath::from(c), true);
    }
    p.build()
}

/// The spaces exported: the one named, or all (which must share a dimension: one vector column).
fn chosen_spaces(index: &Index, name: Option<&str>) -> Result<Vec<SpaceInfo>, Error> {
    let all = index.spaces();
    let listed = || all.iter().map(|s| format!("'{}' ({}-d)", s.name, s.dim)).collect::<Vec<_>>().join(", ");
    if all.is_empty() {
        return Err(Error::Invalid(format!("index {} holds no embedding space (nothing ingested yet)", index.path().display())));
    }
    match name {
        Some(n) => match all.iter().find(|s| s.name == n) {
            Some(s) => Ok(vec![s.clone()]),
            None => Err(Error::Invalid(format!("index {} holds no embedding space '{n}'; it holds {}", index.path().display(), listed()))),
        },
        None if all.iter().any(|s| s.dim != all[0].dim) => Err(Error::Invalid(format!(
            "index {} holds embedding spaces of different dimensions ({}): export each into its own file with --space NAME",
            index.path().display(),
            listed()
        ))),
        None => Ok(all),
    }
}

/// How the first exported vector is stored (`None`: nothing to export).
fn first_encoding(index: &Index, spaces: &[SpaceInfo], kinds: &[Kind], filter: &Filter) -> Result<Option<VectorEncoding>, Error> {
    for s in spaces {
        for &k in kinds {
            if let Some(row) = index.export_rows(s.id, k, filter, false)?.next_chunk(1)?.and_then(|c| c.into_iter().next()) {
                return Ok(Some(row.encoding));
            }
        }
    }
    Ok(None)
}

/// A list of float vectors of one dimension, float32 or float16.
#[derive(Debug)]
enum Vectors {
    F32(FixedSizeListBuilder<Float32Builder>),
    F16(FixedSizeListBuilder<Float16Builder>),
}

impl Vectors {
    fn new(dim: usize, float16: bool, cap: usize) -> Vectors {
        if float16 {
            Vectors::F16(FixedSizeListBuilder::with_capacity(Float16Builder::with_capacity(cap * dim), dim as i32, cap))
        } else {
            Vectors::F32(FixedSizeListBuilder::with_capacity(Float32Builder::with_capacity(cap * dim), dim as i32, cap))
        }
    }

    fn push(&mut self, v: &[f32]) {
        match self {
            Vectors::F32(b) => {
                b.values().append_slice(v);
                b.append(true);
            }
            Vectors::F16(b) => {
                v.iter().for_each(|x| b.values().append_value(f16::from_f32(*x)));
                b.append(true);
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Vectors::F32(b) => Arc::new(b.finish()),
            Vectors::F16(b) => Arc::new(b.finish()),
        }
    }
}

/// A video's frame embeddings: a list of vectors per row.
#[derive(Debug)]
enum FrameLists {
    F32(ListBuilder<FixedSizeListBuilder<Float32Builder>>),
    F16(ListBuilder<FixedSizeListBuilder<Float16Builder>>),
}

impl FrameLists {
    fn new(dim: usize, float16: bool) -> FrameLists {
        if float16 {
            FrameLists::F16(ListBuilder::new(FixedSizeListBuilder::new(Float16Builder::new(), dim as i32)))
        } else {
            FrameLists::F32(ListBuilder::new(FixedSizeListBuilder::new(Float32Builder::new(), dim as i32)))
        }
    }

    fn push(&mut self, frames: Option<&[Vec<f32>]>) {
        match (self, frames) {
            (FrameLists::F32(b), Some(fs)) => {
                for f in fs {
                    b.values().values().append_slice(f);
                    b.values().append(true);
                }
                b.append(true);
            }
            (FrameLists::F16(b), Some(fs)) => {
                for f in fs {
                    f.iter().for_each(|x| b.values().values().append_value(f16::from_f32(*x)));
                    b.values().append(true);
                }
                b.append(true);
            }
            (FrameLists::F32(b), None) => b.append_null(),
            (FrameLists::F16(b), None) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            FrameLists::F32(b) => Arc::new(b.finish()),
            FrameLists::F16(b) => Arc::new(b.finish()),
        }
    }
}

/// The column builders of one record batch.
#[derive(Debug)]
struct Columns {
    dim: usize,
    rows: usize,
    id: StringBuilder,
    kind: StringBuilder,
    space: StringBuilder,
    model: StringBuilder,
    study: StringBuilder,
    patient: StringBuilder,
    date: Date32Builder,
    num_frames: UInt32Builder,
    fps: Float64Builder,
    text: StringBuilder,
    extra: MapBuilder<StringBuilder, StringBuilder>,
    vector: Vectors,
    frames: Option<FrameLists>,
    source: Option<StringBuilder>,
    with_paths: bool,
}

impl Columns {
    fn new(dim: usize, float16: bool, frames: bool, with_paths: bool, cap: usize) -> Columns {
        Columns {
            dim,
            rows: 0,
            id: StringBuilder::new(),
            kind: StringBuilder::new(),
            space: StringBuilder::new(),
            model: StringBuilder::new(),
            study: StringBuilder::new(),
            patient: StringBuilder::new(),
            date: Date32Builder::new(),
            num_frames: UInt32Builder::new(),
            fps: Float64Builder::new(),
            text: StringBuilder::new(),
            extra: MapBuilder::new(None, StringBuilder::new(), StringBuilder::new()),
            vector: Vectors::new(dim, float16, cap),
            frames: frames.then(|| FrameLists::new(dim, float16)),
            source: with_paths.then(StringBuilder::new),
            with_paths,
        }
    }

    fn len(&self) -> usize {
        self.rows
    }

    /// The schema, from the types the builders make (an empty batch's).
    fn schema(&mut self) -> SchemaRef {
        let arrays = self.finish();
        let fields: Vec<Field> =
            self.names().into_iter().zip(&arrays).map(|((name, nullable), a)| Field::new(name, a.data_type().clone(), nullable)).collect();
        Arc::new(Schema::new(fields))
    }

    /// Column names and whether each may be null, in column order.
    fn names(&self) -> Vec<(&'static str, bool)> {
        let mut n = vec![
            (col::ID, false),
            (col::KIND, false),
            (col::SPACE, false),
            (col::MODEL, true),
            (col::STUDY, true),
            (col::PATIENT, true),
            (col::DATE, true),
            (col::NUM_FRAMES, true),
            (col::FPS, true),
            (col::TEXT, true),
            (col::EXTRA, false),
            (col::VECTOR, false),
        ];
        if self.frames.is_some() {
            n.push((col::FRAMES, true));
        }
        if self.source.is_some() {
            n.push((col::SOURCE, false));
        }
        n
    }

    fn push(&mut self, row: &ExportRow, space: &str, model: Option<&str>) -> Result<(), Error> {
        let r = &row.record;
        if row.vector.len() != self.dim {
            return Err(Error::Invalid(format!(
                "item {} of space '{space}' has a {}-d vector, the space {}-d: run `echovault repair --check`",
                r.id,
                row.vector.len(),
                self.dim
            )));
        }
        self.id.append_value(r.id.as_str());
        self.kind.append_value(r.kind.as_str());
        self.space.append_value(space);
        self.model.append_option(model);
        self.study.append_option(r.study.as_deref());
        self.patient.append_option(r.patient.as_deref());
        self.date.append_option(r.date.map(|d| d.days_since_epoch() as i32));
        self.num_frames.append_option(r.frames);
        self.fps.append_option(r.fps);
        self.text.append_option(r.text.as_deref());
        for (k, v) in &r.extra {
            if self.with_paths || !PATH_EXTRAS.contains(&k.as_str()) {
                self.extra.keys().append_value(k);
                self.extra.values().append_value(v);
            }
        }
        self.extra.append(true).map_err(|e| Error::Invalid(format!("extra of {}: {e}", r.id)))?;
        self.vector.push(&row.vector);
        let dim = self.dim;
        if let Some(f) = &mut self.frames {
            if let Some(got) = row.frames.iter().flatten().map(Vec::len).find(|n| *n != dim) {
                return Err(Error::Invalid(format!("item {} of space '{space}' has {got}-d frame embeddings, the space {dim}-d", r.id)));
            }
            f.push(row.frames.as_deref());
        }
        if let Some(s) = &mut self.source {
            s.append_value(&r.source);
        }
        self.rows += 1;
        Ok(())
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        self.rows = 0;
        let mut a: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.space.finish()),
            Arc::new(self.model.finish()),
            Arc::new(self.study.finish()),
            Arc::new(self.patient.finish()),
            Arc::new(self.date.finish()),
            Arc::new(self.num_frames.finish()),
            Arc::new(self.fps.finish()),
            Arc::new(self.text.finish()),
            Arc::new(self.extra.finish()),
            self.vector.finish(),
        ];
        if let Some(f) = &mut self.frames {
            a.push(f.finish());
        }
        if let Some(s) = &mut self.source {
            a.push(Arc::new(s.finish()));
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_bounded_by_bytes_as_well_as_rows() {
        let opts = ExportOptions::default();
        // 512-d f32 vectors alone: the row bound.
        assert_eq!(chunk_len(&opts, 4 * 512), 4096);
        // With 150 frames each (~0.3 MB a row), 64 MiB hold 217 rows, not 4,096 (1.26 GB).
        assert_eq!(chunk_len(&opts, 4 * 512 * 151), 217);
        // A row larger than the bound is still read, one at a time.
        assert_eq!(chunk_len(&opts, 1 << 30), 1);
    }
}
