//! Typed identifiers. External ids ([`ItemId`]: SOPInstanceUIDs, content hashes, report ids) never
//! mix with internal HNSW slots ([`Slot`]); the mapping between them lives in `index.rs` only.

use serde::{Deserialize, Serialize};
use std::fmt;

/// External, stable id of an item (video, report or study), chosen by the caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ItemId(pub String);

impl ItemId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ItemId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for ItemId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// Internal position of a vector inside one collection's HNSW graph. Never shown to users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(pub u32);

/// Embedding space: one per model (e.g. `echoclip`, `echoclip-r`), with a fixed dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SpaceId(pub u16);

/// What an item is. Persisted as its `u8` code: changing a code breaks existing indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// One cine: a DICOM instance or a video file.
    Video,
    /// A report text.
    Report,
    /// A study: the pooled embedding of its videos.
    Study,
}

impl Kind {
    /// All kinds, in code order.
    pub const ALL: [Kind; 3] = [Kind::Video, Kind::Report, Kind::Study];

    /// On-disk code (format-defining).
    pub fn code(self) -> u8 {
        match self {
            Kind::Video => 1,
            Kind::Report => 2,
            Kind::Study => 3,
        }
    }

    /// Inverse of [`Kind::code`].
    pub fn from_code(code: u8) -> Option<Kind> {
        match code {
            1 => Some(Kind::Video),
            2 => Some(Kind::Report),
            3 => Some(Kind::Study),
            _ => None,
        }
    }

    /// Lower-case name used in the CLI and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Video => "video",
            Kind::Report => "report",
            Kind::Study => "study",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "video" => Ok(Kind::Video),
            "report" => Ok(Kind::Report),
            "study" => Ok(Kind::Study),
            other => Err(format!("unknown kind '{other}' (expected video, report or study)")),
        }
    }
}
