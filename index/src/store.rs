//! RocksDB layout: column-family names, tuning, opening, and the format version check.
//!
//! Changing a name or a layout here breaks existing indexes: bump [`FORMAT_VERSION`].

use crate::error::IndexError;
use rocksdb::{ColumnFamilyDescriptor, Options, DB};
use std::path::Path;

/// On-disk format version, written at creation and checked on every open.
pub const FORMAT_VERSION: u32 = 2;

/// Index-wide values: format version, spaces, slot counters, the pseudonymisation secret.
pub const CF_META: &str = "meta";
/// Item id → bincode [`crate::ItemRecord`].
pub const CF_ITEMS: &str = "items";
/// Collection + slot → vector value (see `codec::encode_vector`).
pub const CF_VECTORS: &str = "vectors";
/// Collection + item id → slot (u32 BE).
pub const CF_SLOTS: &str = "slots";
/// HNSW graph snapshots (`snap/` + collection: header and chunks) and tombstones (`dead/` +
/// collection + slot).
pub const CF_GRAPH: &str = "graph";
/// Ingest bookkeeping, keys and values owned by the ingest pipeline (which file was done as
/// which item, SOPInstanceUIDs seen).
pub const CF_INGEST_LOG: &str = "ingest_log";
/// Per-input errors of ingest runs.
pub const CF_ERRORS: &str = "errors";
/// Space + item id → the item's per-frame embeddings (f16, see `codec::encode_frames`). Added
/// after format 2 was released: an older index gains it, empty, on its next open.
pub const CF_FRAMES: &str = "frames";

/// Secondary keys of the items by patient, study and date (layouts in `codec::lookup_keys`),
/// written in the same batch as the records. Added after format 2 was released: an older index
/// gains it on its next writer open, which fills it from the records once and then sets
/// [`KEY_LOOKUP_VERSION`]; until then, look-ups read every record instead.
pub const CF_LOOKUP: &str = "lookup";

/// All column families, in creation order.
pub const COLUMN_FAMILIES: [&str; 9] = [CF_META, CF_ITEMS, CF_VECTORS, CF_SLOTS, CF_GRAPH, CF_INGEST_LOG, CF_ERRORS, CF_FRAMES, CF_LOOKUP];

/// `meta` key holding the format version (u32 BE).
pub const KEY_FORMAT_VERSION: &[u8] = b"format_version";
/// `meta` key holding the 32-byte pseudonymisation secret.
pub const KEY_SECRET: &[u8] = b"patient_secret";
/// `meta` key holding the layout version (u32 BE) of the complete [`CF_LOOKUP`] keys; absent
/// while they are missing or being rebuilt.
pub const KEY_LOOKUP_VERSION: &[u8] = b"lookup_version";
/// The [`CF_LOOKUP`] layout this build writes.
pub const LOOKUP_VERSION: u32 = 1;
/// `meta` key prefix of space records.
pub const KEY_SPACE_PREFIX: &[u8] = b"space/";

/// Write-buffer size per column family: small, so tests and small archives stay light.
const WRITE_BUFFER_BYTES: usize = 32 << 20;

fn options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    o.set_write_buffer_size(WRITE_BUFFER_BYTES);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // Checksums on every read: a flipped byte becomes an error, not a wrong vector.
    o.set_paranoid_checks(true);
    o
}

/// Opens (or creates) the database with every column family, as its one writer. Another
/// process holding it is [`IndexError::Busy`], named from its writer record.
pub fn open_db(path: &Path) -> Result<DB, IndexError> {
    let cfs = COLUMN_FAMILIES.iter().map(|n| ColumnFamilyDescriptor::new(*n, options()));
    DB::open_cf_descriptors(&options(), path, cfs).map_err(|source| {
        // RocksDB's words for a LOCK file another process holds (flock: EAGAIN / EWOULDBLOCK).
        let text = source.to_string();
        if source.kind() == rocksdb::ErrorKind::IOError && text.contains("LOCK") {
            IndexError::Busy { path: path.to_owned(), holder: crate::holder::describe(path) }
        } else {
            IndexError::Storage { path: path.to_owned(), source }
        }
    })
}

/// Opens the database at `path` as a RocksDB secondary instance (its own files in
/// `secondary`, outside the index): it never writes under `path`, works while a writer holds
/// the index, sees what was committed before it opened, and catches up on demand
/// (`try_catch_up_with_primary`). Opens the column families the database has.
pub fn open_secondary(path: &Path, secondary: &Path) -> Result<DB, IndexError> {
    let storage = |source| IndexError::Storage { path: path.to_owned(), source };
    let mut o = Options::default();
    o.set_paranoid_checks(true);
    // Secondary instances keep every table file open: the writer may delete one (compaction)
    // between two catch-ups.
    o.set_max_open_files(-1);
    let cfs = DB::list_cf(&o, path).map_err(storage)?;
    let descriptors = cfs.iter().map(|n| ColumnFamilyDescriptor::new(n.as_str(), o.clone()));
    DB::open_cf_descriptors_as_secondary(&o, path, secondary, descriptors).map_err(storage)
}

/// The patient-key secret of the index at `path`, read without opening it for writing (other
/// processes may hold it) and without loading any graph; `None` when there is no index there.
pub fn peek_secret(path: &Path) -> Result<Option<[u8; 32]>, IndexError> {
    if !path.join("CURRENT").is_file() {
        return Ok(None);
    }
    let storage = |source| IndexError::Storage { path: path.to_owned(), source };
    let db = DB::open_cf_for_read_only(&options(), path, [CF_META], false).map_err(storage)?;
    let cf = db.cf_handle(CF_META).ok_or_else(|| IndexError::Corrupt {
        path: path.to_owned(),
        what: "meta column family",
        detail: "missing".into(),
    })?;
    match db.get_cf(cf, KEY_SECRET).map_err(storage)? {
        Some(s) => Ok(Some(s.as_slice().try_into().map_err(|_| IndexError::Corrupt {
            path: path.to_owned(),
            what: "secret",
            detail: "not 32 bytes".into(),
        })?)),
        None => Ok(None),
    }
}

/// Lets RocksDB salvage a damaged database in place (`RepairDB`): tables it cannot read are
/// set aside (under `lost/`) and the rest re-indexed. Data in unreadable tables is gone; run
/// `Index::repair` afterwards so graphs and mappings agree with what survived.
pub fn salvage(path: &Path) -> Result<(), IndexError> {
    DB::repair(&options(), path).map_err(|source| IndexError::Storage { path: path.to_owned(), source })
}
