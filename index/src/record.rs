//! The metadata record stored for every item (DESIGN §3). Encoded with bincode 2 (serde).

use crate::date::StudyDate;
use crate::ids::{ItemId, Kind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Metadata of one item. Patient keys are pseudonymous: the caller hashes raw ids before they
/// reach the index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// External id.
    pub id: ItemId,
    /// Video, report or study.
    pub kind: Kind,
    /// Where it came from (path of the ingested file, or manifest line).
    pub source: String,
    /// Pseudonymous patient key.
    pub patient: Option<String>,
    /// Study id (StudyInstanceUID or the manifest's study id).
    pub study: Option<String>,
    /// Study date (stored as `YYYY-MM-DD`; a stored date that is no day reads as `None`).
    #[serde(deserialize_with = "crate::date::lenient")]
    pub date: Option<StudyDate>,
    /// Report text (reports only).
    pub text: Option<String>,
    /// Number of frames (videos only).
    pub frames: Option<u32>,
    /// Frames per second (videos only).
    pub fps: Option<f64>,
    /// Further metadata (manufacturer, size, content hash...).
    pub extra: BTreeMap<String, String>,
}

impl ItemRecord {
    /// A record with only the required fields set.
    pub fn new(id: impl Into<ItemId>, kind: Kind, source: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            kind,
            source: source.into(),
            patient: None,
            study: None,
            date: None,
            text: None,
            frames: None,
            fps: None,
            extra: BTreeMap::new(),
        }
    }
}
