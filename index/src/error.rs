//! The one error type of `echovault-index`; each message says what to do about it.

use std::path::PathBuf;

/// Everything that can go wrong in the index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// RocksDB refused an operation (I/O, corruption, lock held by another process...).
    #[error("index storage error at {path}: {source}")]
    Storage {
        /// The index directory.
        path: PathBuf,
        /// RocksDB's own error.
        #[source]
        source: rocksdb::Error,
    },
    /// The directory holds an index written by another on-disk format.
    #[error(
        "index at {path} has format version {found}, this echovault reads version {expected}; \
         re-create it with `echovault ingest` into a new --index directory"
    )]
    FormatVersion {
        /// The index directory.
        path: PathBuf,
        /// Version found on disk.
        found: u32,
        /// Version this build reads and writes.
        expected: u32,
    },
    /// The directory exists and is a RocksDB database, but not an echovault index.
    #[error("{path} is not an echovault index (no format version); point --index at another directory")]
    NotAnIndex {
        /// The directory.
        path: PathBuf,
    },
    /// A vector's length does not match its embedding space.
    #[error("vector for {item} has dimension {got}, embedding space '{space}' has dimension {expected}")]
    DimensionMismatch {
        /// Item the vector belongs to.
        item: String,
        /// Name of the embedding space.
        space: String,
        /// Space dimension.
        expected: usize,
        /// Vector length given.
        got: usize,
    },
    /// A space was registered again with another dimension.
    #[error("embedding space '{space}' exists with dimension {existing}, cannot re-register it with {requested}")]
    SpaceDimension {
        /// Name of the embedding space.
        space: String,
        /// Dimension on disk.
        existing: usize,
        /// Dimension asked for.
        requested: usize,
    },
    /// A space id that this index never issued.
    #[error("unknown embedding space id {0}")]
    UnknownSpace(u16),
    /// A vector contains NaN or infinity, or is all zeros (cosine is undefined).
    #[error("vector for {item} is not usable: {reason}")]
    BadVector {
        /// Item the vector belongs to.
        item: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A stored value could not be decoded: the index is damaged.
    #[error("corrupt {what} in index at {path}: {detail}; run `echovault repair`")]
    Corrupt {
        /// The index directory.
        path: PathBuf,
        /// Which record.
        what: &'static str,
        /// Decoder message.
        detail: String,
    },
    /// A vector was written for an item the same batch and the index do not know.
    #[error("vector for unknown item {0}: put the item record first")]
    UnknownItem(String),
}
