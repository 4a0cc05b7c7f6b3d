//! What an index holds: item counts per kind, live vectors per collection, recorded ingest
//! errors, its embedding spaces, format version and how its graphs loaded; and what a check or
//! repair of it found. One function builds each for both faces: `echovault info --json` and
//! `repair --json` print them, `GET /v1/info` and `POST /v1/repair` answer them.

use crate::error::Error;
use echovault_index::{DamagedTable, GraphLoad, Index, Salvage};
use serde::Serialize;
use std::collections::BTreeMap;

/// The contents of an index, as `info --json` prints them.
#[derive(Clone, Debug, Serialize)]
pub struct IndexInfo {
    /// The index directory, as it was opened.
    pub index: String,
    /// On-disk format version the index is in (an older one until a writer opens it).
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
        format_version: index.format_version()?,
        counts: counts.items,
        vectors: counts.vectors,
        errors: counts.errors,
        spaces: index.spaces().into_iter().map(|s| SpaceSummary { name: s.name, dim: s.dim }).collect(),
        graphs: index.graph_loads().to_vec(),
    })
}

/// What `repair` (or `repair --check`) found, as `repair --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct RepairReport {
    /// Only checked: nothing was changed.
    pub checked_only: bool,
    /// Nothing is wrong.
    pub ok: bool,
    /// Stored vectors per `space/kind` (live and tombstoned).
    pub stored: BTreeMap<String, usize>,
    /// Live vectors per `space/kind`.
    pub live: BTreeMap<String, usize>,
    /// Every inconsistency, one line each.
    pub problems: Vec<String>,
    /// Table files that failed their block checksums (also among `problems`).
    pub damaged: Vec<DamagedTable>,
    /// What the storage salvage did, when the database was damaged (a repair only).
    pub salvage: Option<Salvage>,
    /// The inputs (source paths) whose videos were lost and forgotten: the next `ingest` of the
    /// same export embeds exactly these again (a repair only).
    pub reingest: Vec<String>,
}

impl RepairReport {
    /// A report of nothing yet.
    pub fn empty(checked_only: bool) -> RepairReport {
        RepairReport {
            checked_only,
            ok: true,
            stored: BTreeMap::new(),
            live: BTreeMap::new(),
            problems: Vec::new(),
            damaged: Vec::new(),
            salvage: None,
            reingest: Vec::new(),
        }
    }

    /// Sets `ok` from the problems.
    pub fn settle(mut self) -> RepairReport {
        self.ok = self.problems.is_empty();
        self
    }
}

/// Checks `index` (`check_only`) or repairs it: rebuilds its graphs, slot mappings and
/// secondary keys from what is stored, drops tombstoned vectors, writes fresh snapshots; then
/// audits the ingest log and the videos against each other (`crate::repair::audit`) and, when
/// repairing, forgets the inputs whose videos were lost (listed in `reingest`); then checks. A
/// graph whose snapshot could not be used when the index was opened counts as a problem of a
/// check (repairing fixes it).
pub fn repair(index: &Index, check_only: bool) -> Result<RepairReport, Error> {
    let mut v = if check_only { index.verify()? } else { index.repair()? };
    let mut reingest = Vec::new();
    if v.damaged.is_empty() {
        let audit = crate::repair::audit(index)?;
        if check_only {
            v.problems.extend(audit.problems);
        } else {
            crate::repair::apply(index, &audit)?;
            reingest = audit.reingest.into_iter().collect();
            v = index.verify()?;
            v.problems.extend(crate::repair::audit(index)?.problems);
        }
    }
    if check_only {
        for l in index.graph_loads().iter().filter(|l| l.how == "rebuilt") {
            v.problems.push(format!("{}: graph snapshot unusable ({})", l.collection, l.reason.as_deref().unwrap_or("?")));
        }
    }
    Ok(RepairReport {
        checked_only: check_only,
        ok: v.ok(),
        stored: v.stored,
        live: v.live,
        problems: v.problems,
        damaged: v.damaged,
        salvage: None,
        reingest,
    })
}
