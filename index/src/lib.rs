//! `echovault-index`: the vector store behind echovault.
//!
//! RocksDB is the source of truth (items, vectors, slot mappings, tombstones, format version);
//! the HNSW graphs (our own, `hnswlib`'s algorithm, one per embedding space and kind, each
//! vector held once) are an in-memory cache whose topology is snapshotted into RocksDB: opening
//! fills the graph from it without a rebuild and replays the vectors written after it; a
//! missing, stale or corrupt snapshot means a rebuild from the stored vectors, never a failure.
//! This crate knows vectors, ids and metadata — never models, so it builds and tests without
//! LibTorch.
//!
//! One process writes ([`Index::open`]; a second writer gets [`IndexError::Busy`] naming the
//! first); any number read beside it ([`Index::open_reader`], which never writes, and
//! [`Index::refresh`] to catch up). Look-ups by patient, study and date
//! ([`Index::items_by_patient`], …) read secondary keys kept with the records.
//!
//! ```no_run
//! use echovault_index::{Index, IndexOptions, ItemRecord, Kind, Query};
//! # fn main() -> Result<(), echovault_index::IndexError> {
//! let index = Index::open("./echovault-index", IndexOptions::default())?;
//! let space = index.ensure_space("echoclip", 512)?;
//! let mut batch = index.batch();
//! batch.put_item(ItemRecord::new("video-1", Kind::Video, "a4c.avi"));
//! batch.put_vector(space, "video-1", Kind::Video, vec![0.0; 512]);
//! index.commit(batch)?;
//! let hits = index.search(&Query::new(space, Kind::Video, vec![0.0; 512], 10))?;
//! # let _ = hits; Ok(()) }
//! ```

mod codec;
mod damage;
mod date;
mod error;
mod exchange;
mod graph;
mod hnsw;
mod holder;
mod ids;
mod index;
mod lookup;
mod reader;
mod record;
mod search;
mod secret;
mod snapshot;
mod store;
mod walk;

pub use damage::{check_storage, salvage, table_files, wal_keys, DamagedTable, Rewritten, Salvage};
pub use date::{DateError, StudyDate};
pub use error::IndexError;
pub use exchange::{ExportRow, ExportRows};
pub use ids::{ItemId, Kind, Slot, SpaceId};
pub use index::{
    Batch, Counts, Durability, GraphLoad, Index, IndexOptions, SpaceInfo, VectorEncoding, Verification, DEFAULT_EF_SEARCH,
    EXACT_SEARCH_MAX_CANDIDATES, EXACT_SEARCH_MAX_WORK, MAX_EF_SEARCH,
};
pub use record::ItemRecord;
pub use search::{Filter, Hit, Query};
pub use secret::{fingerprint as secret_fingerprint, read_secret_file};
pub use store::{column_family_role, peek_secret, FORMAT_VERSION};

/// Result type of this crate.
pub type Result<T, E = IndexError> = std::result::Result<T, E>;
