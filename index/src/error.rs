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
    /// The directory holds an index written by an on-disk format this build neither reads nor
    /// upgrades (older than the oldest it upgrades, or newer than its own).
    #[error(
        "index at {path} has format version {found}, this echovault reads version {expected}{}; \
         re-create it with `echovault ingest` into a new --index directory (`echovault repair` does not change a \
         format version)",
        written_by(.found, .expected)
    )]
    FormatVersion {
        /// The index directory.
        path: PathBuf,
        /// Version found on disk.
        found: u32,
        /// Version this build reads and writes.
        expected: u32,
    },
    /// A reader found an index of an older format that only a writer's open upgrades (in place,
    /// see `store::FORMAT_VERSION`).
    #[error(
        "index at {path} has format version {found}, this echovault reads version {expected} once a writer has \
         upgraded it in place: run `echovault repair --index {path}` (or any `echovault ingest` into it) once, then \
         read it again"
    )]
    FormatUpgradeNeeded {
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
    /// The database files of an index are damaged (`CURRENT` or a MANIFEST missing or
    /// unreadable, a table file missing, truncated or failing its checksum): nothing is opened,
    /// and nothing is created over it.
    #[error("this index is damaged ({detail}): run `echovault repair --index {path}`")]
    Damaged {
        /// The index directory.
        path: PathBuf,
        /// What is damaged, in RocksDB's or our words.
        detail: String,
    },
    /// The patient-key secret of a damaged index is lost; salvaging it needs a new one.
    #[error(
        "the patient-key secret of the index at {path} is lost (its `meta` table is damaged): a new secret gives every \
         re-ingested video a new patient key, so a patient's earlier and later videos no longer match; nothing was \
         changed — run `echovault repair --new-secret` to accept that"
    )]
    SecretLost {
        /// The index directory.
        path: PathBuf,
    },
    /// The index keeps its patient-key secret in a file outside it, and none was given.
    #[error(
        "the index at {path} keeps its patient-key secret outside it: pass --secret-file FILE (or set \
         ECHOVAULT_SECRET_FILE) to key patient ids"
    )]
    SecretNeeded {
        /// The index directory.
        path: PathBuf,
    },
    /// The secret file given is not the one the index's fingerprint was made from.
    #[error(
        "{file} does not hold the patient-key secret of the index at {path} (its fingerprint differs): patient keys \
         made with it would match none already stored — give the secret file this index was created with"
    )]
    SecretMismatch {
        /// The index directory.
        path: PathBuf,
        /// The secret file given.
        file: PathBuf,
    },
    /// A secret file was given for an index that stores its own, different secret.
    #[error(
        "the index at {path} stores its own patient-key secret and {file} holds another: drop --secret-file, or \
         move the stored secret out with `echovault repair --export-secret FILE`"
    )]
    SecretStored {
        /// The index directory.
        path: PathBuf,
        /// The secret file given.
        file: PathBuf,
    },
    /// A patient-key secret file could not be read, written or used.
    #[error("patient-key secret file {file}: {detail}")]
    SecretFile {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        detail: String,
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
    /// There is no index in the directory a reader was pointed at.
    #[error("no index at {path} (run `echovault ingest` first, or pass --index DIR)")]
    Missing {
        /// The directory.
        path: PathBuf,
    },
    /// A write was asked of an index opened for reading ([`crate::Index::open_reader`]).
    #[error("index {path} is open for reading only: {op} needs the writer (`echovault ingest`, `repair` or `serve`)")]
    ReadOnly {
        /// The index directory.
        path: PathBuf,
        /// What was asked.
        op: &'static str,
    },
    /// Another process holds the index's writer lock.
    #[error(
        "index {path} is being written by another process ({holder}); wait for it to finish, \
         or read it meanwhile (search, info and the other read commands work while it writes)"
    )]
    Busy {
        /// The index directory.
        path: PathBuf,
        /// Who, as far as its writer record says (pid, command, since when), or why unknown.
        holder: String,
    },
    /// A file of the index's own (the writer record, a reader's secondary directory) could not
    /// be written or read.
    #[error("I/O error at {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Who wrote an index of format `found`, for [`IndexError::FormatVersion`].
fn written_by(found: &u32, expected: &u32) -> &'static str {
    if found > expected {
        " (it was written by a newer echovault)"
    } else {
        " (it was written by an older echovault)"
    }
}
