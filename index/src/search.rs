//! Queries, filters and hits.

use crate::date::StudyDate;
use crate::ids::{ItemId, Kind, SpaceId};
use crate::record::ItemRecord;

/// Restrictions on which items a search may return. All set fields must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// Only this pseudonymous patient.
    pub patient: Option<String>,
    /// Only this study.
    pub study: Option<String>,
    /// Only studies dated on or after this day.
    pub since: Option<StudyDate>,
    /// Only studies dated on or before this day.
    pub until: Option<StudyDate>,
    /// Never these items (e.g. the query video itself).
    pub exclude: Vec<ItemId>,
}

impl Filter {
    /// True when no field restricts anything.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }
}

/// A k-nearest-neighbour query in one embedding space and kind.
#[derive(Clone, Debug)]
pub struct Query {
    /// Embedding space to search.
    pub space: SpaceId,
    /// Kind of items to return.
    pub kind: Kind,
    /// Query vector (normalised by the index).
    pub vector: Vec<f32>,
    /// Number of hits wanted.
    pub k: usize,
    /// Restrictions.
    pub filter: Filter,
    /// HNSW search breadth; `None` = the index default.
    pub ef: Option<usize>,
    /// Force exact (brute-force) search.
    pub exact: bool,
}

impl Query {
    /// Unfiltered query with default breadth.
    pub fn new(space: SpaceId, kind: Kind, vector: Vec<f32>, k: usize) -> Self {
        Self { space, kind, vector, k, filter: Filter::default(), ef: None, exact: false }
    }
}

/// One result.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    /// External id.
    pub id: ItemId,
    /// Cosine similarity to the query.
    pub score: f32,
    /// The item's metadata.
    pub record: ItemRecord,
}

/// Dot product (cosine for unit vectors).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
