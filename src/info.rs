//! What an index holds: item counts per kind, live vectors per collection, recorded ingest
//! errors, its embedding spaces, format version and how its graphs loaded. One function builds
//! it for both faces: `echovault info --json` prints it, `GET /v1/info` answers it.

use crate::error::Error;
use echovault_index::{GraphLoad, Index, FORMAT_VERSION};
use serde::Serialize;
use std::collections::BTreeMap;

/// The contents of an index, as `info --json` prints them.
#[derive(Clone, Debug, Serialize)]
pub struct IndexInfo {
    /// The index directory, as it was opened.
    pub index: String,
    /// On-disk format version.
    pub format_version: u32,
    /// Items per kind (`video`, `report`, `study`).
    pub counts: BTreeMap<String, usize>,
    /// Live vectors per `space/kind`.
    pub vectors: BTreeMap<String, usize>,
    /// Inputs whose last ingest failed.
    pub errors: usize,
    /// Embedding spaces.
    pub spaces: Vec<SpaceSummary>,
    /// How each graph was loaded when the index was opened.
    pub graphs: Vec<GraphLoad>,
}

/// One embedding space.
#[derive(Clone, Debug, Serialize)]
pub struct SpaceSummary {
    /// Its name (the model directory's, or `--space`).
    pub name: String,
    /// Vector dimension.
    pub dim: usize,
}

/// What `index` holds now.
pub fn index_info(index: &Index) -> Result<IndexInfo, Error> {
    let counts = index.counts()?;
    Ok(IndexInfo {
        index: index.path().display().to_string(),
        format_version: FORMAT_VERSION,
        counts: counts.items,
        vectors: counts.vectors,
        errors: counts.errors,
        spaces: index.spaces().into_iter().map(|s| SpaceSummary { name: s.name, dim: s.dim }).collect(),
        graphs: index.graph_loads().to_vec(),
    })
}
