//! `echovault export --format parquet --out FILE` and `echovault import FILE...`: an index's
//! items and vectors to and from Parquet ([`echovault::exchange`]). Neither loads a model: both
//! run in the front binary.

use super::search::FilterOpts;
use super::{Global, Groups, IndexOpts, SpaceOpts};
use clap::Args;
use echovault::exchange::{export, import, ExportOptions, ImportOptions, VectorType};
use echovault::index::{Index, Kind};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// File format (Parquet is the only one).
    #[arg(long, value_parser = ["parquet"], default_value = "parquet")]
    format: String,
    /// The file to write (replaced if it exists; written under a temporary name beside it and
    /// renamed when complete).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Only items of this kind: video, report or study (repeat for several; default all three).
    #[arg(long, value_name = "KIND")]
    kind: Vec<Kind>,
    /// Also write each video's frame embeddings (column `frame_embeddings`; stored as f16).
    #[arg(long)]
    frames: bool,
    /// Also write each item's ingested path (`source`) and DICOMweb URL; PACS paths often carry
    /// patient names or MRNs, so they are left out by default.
    #[arg(long)]
    with_paths: bool,
    /// Element type of the vectors: auto (as the index stores them), float32 or float16.
    #[arg(long, value_name = "auto|float32|float16", default_value = "auto")]
    vector_type: VectorType,
    #[command(flatten)]
    filter: FilterOpts,
    #[command(flatten)]
    pub index: IndexOpts,
    #[command(flatten)]
    pub space: SpaceOpts,
}

impl ExportArgs {
    pub fn groups(&self) -> Groups<'_> {
        Groups { index: Some(&self.index), space: Some(&self.space), ..Groups::default() }
    }
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Parquet files written by `echovault export` (imported in the order given).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Import patient keys made with another patient-key secret than this index's as they are
    /// (without it such a file is refused): this index cannot key an MRN to them, and a
    /// patient ingested here too would have two keys.
    #[arg(long)]
    foreign_patient_keys: bool,
    #[command(flatten)]
    pub index: IndexOpts,
}

impl ImportArgs {
    pub fn groups(&self) -> Groups<'_> {
        Groups { index: Some(&self.index), ..Groups::default() }
    }
}

pub fn run_export(g: &Global, a: &ExportArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(g.index.is_dir(), "no index at {} (run `echovault ingest` first, or pass --index DIR)", g.index.display());
    let patient_id = a.filter.patient_id()?;
    let mut index = Index::open_reader(&g.index)?;
    if let Some(file) = &g.secret_file {
        index.use_secret_file(file)?;
    }
    let key = match patient_id {
        Some(mrn) => Some(echovault::pseudonym::patient_key(index.secret()?, &mrn)),
        None => None,
    };
    let opts = ExportOptions {
        space: g.space.clone(),
        kinds: a.kind.clone(),
        filter: a.filter.filter(key),
        frames: a.frames,
        with_paths: a.with_paths,
        vector_type: a.vector_type,
        ..ExportOptions::default()
    };
    let s = export(&index, &a.out, &opts)?;
    if g.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "{} rows to {} ({} bytes, {} row groups, {}, {:.0} rows/s)",
            s.rows,
            s.out.display(),
            s.bytes,
            s.row_groups,
            s.vector_type,
            s.rows_per_s
        );
        for (c, n) in &s.collections {
            println!("  {c:<24} {n}");
        }
    }
    Ok(0)
}

pub fn run_import(g: &Global, a: &ImportArgs) -> anyhow::Result<i32> {
    let opts = ImportOptions { secret_file: g.secret_file.clone(), foreign_keys: a.foreign_patient_keys, ..ImportOptions::default() };
    let s = import(&g.index, &a.files, &opts)?;
    if g.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "{} rows from {} files into {}: {} added, {} updated, {} unchanged ({:.0} rows/s)",
            s.rows,
            s.files,
            s.index.display(),
            s.added,
            s.updated,
            s.unchanged,
            s.rows_per_s
        );
        for name in &s.spaces_created {
            println!("  new space {name}");
        }
    }
    Ok(0)
}
