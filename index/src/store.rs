//! RocksDB layout: column-family names, tuning, opening, and the format version check.
//!
//! Changing a name or a layout here breaks existing indexes: bump [`FORMAT_VERSION`].

use crate::error::IndexError;
use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, DB};
use std::path::Path;

/// On-disk format version, written at creation and checked on every open.
///
/// - 1: graphs were not snapshotted. Not read by this build (re-create the index).
/// - 2: graph snapshots (`EVHNSW01` topology, header and chunks) and tombstones in
///   [`CF_GRAPH`]. [`CF_FRAMES`] and [`CF_LOOKUP`] were added to it later without a bump, so a
///   format-2 index may lack them.
/// - 3: the layout of 2 with every column family of [`COLUMN_FAMILIES`] part of it ([`CF_FRAMES`]
///   among them; [`CF_LOOKUP`] complete once [`KEY_LOOKUP_VERSION`] is set). Snapshots are
///   those of 2: the crate's own HNSW loads the ones `hnsw_rs` wrote as they are.
///
/// A writer's open upgrades a format-2 index in place (the missing column families are created,
/// then the version is rewritten; nothing else changes); a reader refuses it until a writer has
/// ([`IndexError::FormatUpgradeNeeded`]). Any other version is [`IndexError::FormatVersion`].
pub const FORMAT_VERSION: u32 = 3;

/// The oldest format a writer's open upgrades in place to [`FORMAT_VERSION`].
pub(crate) const OLDEST_UPGRADABLE_FORMAT: u32 = 2;

/// True for an older format that a writer's open upgrades in place.
pub(crate) fn upgradable(found: u32) -> bool {
    (OLDEST_UPGRADABLE_FORMAT..FORMAT_VERSION).contains(&found)
}

/// Whether the column families of [`COLUMN_FAMILIES`] belong in `db`: it stores this build's
/// format or one it upgrades, or no format at all (not yet an index), or has no `meta` (not
/// one of ours at all: the open goes on to make it one, or to say why not). An unreadable
/// version is not ours to add to.
fn layout_is_ours(db: &DB) -> bool {
    let Some(meta) = db.cf_handle(CF_META) else { return true };
    match db.get_cf(meta, KEY_FORMAT_VERSION) {
        Ok(None) => true,
        Ok(Some(v)) => <[u8; 4]>::try_from(v.as_slice()).is_ok_and(|b| {
            let found = u32::from_be_bytes(b);
            found == FORMAT_VERSION || upgradable(found)
        }),
        Err(_) => false,
    }
}

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
/// `meta` key holding, instead of `KEY_SECRET`, the 32-byte fingerprint of a secret kept in a
/// file outside the index (`secret.rs`).
pub const KEY_SECRET_FINGERPRINT: &[u8] = b"patient_secret_fingerprint";
/// `meta` key holding the layout version (u32 BE) of the complete [`CF_LOOKUP`] keys; absent
/// while they are missing or being rebuilt.
pub const KEY_LOOKUP_VERSION: &[u8] = b"lookup_version";
/// The [`CF_LOOKUP`] layout this build writes.
pub const LOOKUP_VERSION: u32 = 1;
/// `meta` key prefix of space records.
pub const KEY_SPACE_PREFIX: &[u8] = b"space/";

/// Ingest-log key prefix under which the engine keeps each space's model probe (the space's
/// name follows; the value is JSON whose `text` embedding has the space's dimension). A
/// salvage that finds a space's record in `meta` lost names it again from these.
pub const LOG_SPACE_PROBE: &str = "model-probe:";

/// Write-buffer size per column family: small, so tests and small archives stay light.
const WRITE_BUFFER_BYTES: usize = 32 << 20;

/// What losing (part of) each column family means to a user, and what `repair` does about it.
pub fn column_family_role(name: &str) -> &'static str {
    match name {
        CF_META => {
            "format version, embedding spaces, slot counters and the patient-key secret: a lost \
             secret means every re-ingested video gets a new patient key"
        }
        CF_ITEMS => "item records: the items in it vanish from every answer until re-ingested",
        CF_VECTORS => "vectors: searches miss the items in it until they are re-ingested",
        CF_SLOTS => "item-to-slot mappings: derivable, `repair` rebuilds them from the vectors",
        CF_GRAPH => {
            "graph snapshots and tombstones: derivable, `repair` rebuilds the graphs (lost \
             tombstones bring back replaced vectors until then)"
        }
        CF_INGEST_LOG => "ingest log: the next ingest re-reads (hashes) the files it forgot",
        CF_ERRORS => "the list of failed inputs: the next ingest lists them again",
        CF_FRAMES => "frame embeddings: zero-shot re-decodes those videos until they are re-ingested",
        CF_LOOKUP => "patient, study and date keys: derivable, `repair` rebuilds them from the records",
        _ => "a column family echovault does not know",
    }
}

/// Capacity of the one block cache every column family of an open database shares. RocksDB
/// otherwise gives each column family its own 32 MiB cache, and an open's full scans (every
/// vector, every record) filled them: hundreds of MiB resident for blocks that are read once.
/// The bulk scans read around the cache ([`bulk_read`]); what is left to cache is the point
/// reads of searches and look-ups (records, slots, secondary keys).
pub(crate) const BLOCK_CACHE_BYTES: usize = 8 << 20;

/// Read-ahead of a bulk scan ([`bulk_read`]).
const BULK_READAHEAD_BYTES: usize = 2 << 20;

/// A new block cache for one open database (see [`BLOCK_CACHE_BYTES`]).
fn block_cache() -> Cache {
    Cache::new_lru_cache(BLOCK_CACHE_BYTES)
}

/// Least bytes of table files worth a read-ahead ([`read_ahead`]).
const READ_AHEAD_MIN_BYTES: u64 = 64 << 20;

/// Asks the kernel to start reading the table files of column family `cf` that hold keys in
/// `[lower, upper)` into the page cache, on a thread of its own, and returns at once: a bulk
/// scan that follows (an open's read of every vector) then finds its blocks read or in flight
/// instead of waiting on one 2 MiB read after another. Nothing when the files are small
/// (under 64 MiB), when they would take more than half the memory available (pages read ahead
/// would be evicted before the scan reached them), or outside Linux. Best effort: a file a
/// compaction removed meanwhile is skipped. Returns the bytes asked for.
pub(crate) fn read_ahead(db: &DB, dir: &Path, cf: &str, lower: &[u8], upper: Option<&[u8]>) -> u64 {
    read_ahead_over(db, dir, cf, lower, upper, READ_AHEAD_MIN_BYTES)
}

/// [`read_ahead`] when the files hold at least `min_bytes`.
pub(crate) fn read_ahead_over(db: &DB, dir: &Path, cf: &str, lower: &[u8], upper: Option<&[u8]>, min_bytes: u64) -> u64 {
    let Ok(files) = db.live_files() else { return 0 };
    let files: Vec<(std::path::PathBuf, u64)> = files
        .into_iter()
        .filter(|f| f.column_family_name == cf)
        .filter(|f| f.end_key.as_deref().is_none_or(|e| e >= lower) && upper.is_none_or(|u| f.start_key.as_deref().is_none_or(|s| s < u)))
        .map(|f| (dir.join(f.name.trim_start_matches('/')), f.size as u64))
        .collect();
    let total: u64 = files.iter().map(|(_, n)| n).sum();
    if total == 0 || total < min_bytes || available_memory().is_none_or(|a| total > a / 2) {
        return 0;
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let spawned = std::thread::Builder::new().name("read-ahead".into()).spawn(move || {
            for (path, _) in files {
                if let Ok(f) = std::fs::File::open(&path) {
                    // SAFETY: advice on a file descriptor this thread holds open; no memory is
                    // passed, and an error return (ignored) changes nothing.
                    #[allow(unsafe_code)]
                    unsafe {
                        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED)
                    };
                }
            }
        });
        if spawned.is_ok() {
            return total;
        }
    }
    0
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Read options of a scan that reads much once (an open's every vector and record, a reader's
/// catch-up, repair and verification): its blocks bypass the block cache instead of evicting
/// what searches use, and, with `range`, the iterator stops at the range's end instead of
/// reading on into the next collection's blocks; it reads ahead in large reads. Checksums are
/// verified as on every read.
pub(crate) fn bulk_read(range: Option<(Vec<u8>, Option<Vec<u8>>)>) -> rocksdb::ReadOptions {
    let mut ro = rocksdb::ReadOptions::default();
    ro.fill_cache(false);
    ro.set_verify_checksums(true);
    // Large sequential reads instead of one read per 4 KiB block (an open at 100k x 512-d
    // spent a good part of its scan in those reads: 0.80-1.30 s -> 0.64-0.72 s, probe, 3 runs).
    ro.set_readahead_size(BULK_READAHEAD_BYTES);
    if let Some((lower, upper)) = range {
        ro.set_iterate_lower_bound(lower);
        if let Some(upper) = upper {
            ro.set_iterate_upper_bound(upper);
        }
    }
    ro
}

/// RocksDB options of every open, its column families' blocks cached in `cache` (one per
/// database). `create` only for a directory that holds no database at all
/// ([`preflight`]): RocksDB would otherwise create a new, empty database beside the files of a
/// damaged one (a missing `CURRENT`), and the next command would answer from it.
fn options(create: bool, cache: &Cache) -> Options {
    let mut o = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    o.set_block_based_table_factory(&table);
    o.create_if_missing(create);
    o.create_missing_column_families(create);
    o.set_write_buffer_size(WRITE_BUFFER_BYTES);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // Checksums on every read: a flipped byte becomes an error, not a wrong vector.
    o.set_paranoid_checks(true);
    // A write-ahead log damaged before its last record fails the open (the index is then
    // damaged: `repair`), instead of silently rolling back to the damage as point-in-time
    // recovery would; a last record cut short by a kill is still dropped quietly.
    o.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
    o
}

/// What a directory holds, judged from its files before RocksDB is asked to open it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Presence {
    /// Absent, empty, or holding no database file: an index may be created there.
    Empty,
    /// A database whose `CURRENT` names a MANIFEST that is there.
    Database,
}

/// File names that only a RocksDB database leaves in a directory.
fn is_database_file(name: &str) -> bool {
    name.starts_with("MANIFEST-")
        || name.starts_with("OPTIONS-")
        || name.ends_with(".sst")
        || name.ends_with(".log")
        || name.ends_with(".blob")
        || name == "IDENTITY"
        || name == crate::holder::HOLDER_FILE
}

/// Looks at `path` before any open: [`Presence::Empty`] (nothing there, or no database file),
/// [`Presence::Database`], or [`IndexError::Damaged`] when the files of a database are there but
/// its `CURRENT` is missing, does not name a MANIFEST, or names one that is missing or empty.
pub(crate) fn preflight(path: &Path) -> Result<Presence, IndexError> {
    if path.join(SALVAGE_MARK).exists() {
        return Err(IndexError::Damaged {
            path: path.to_owned(),
            detail: format!("a repair was interrupted ({SALVAGE_MARK} is there): run it again to finish"),
        });
    }
    preflight_files(path)
}

/// The file a salvage keeps in the index directory while it rewrites column families (see
/// `damage::salvage`): while it is there, no open but the salvage's own proceeds.
pub(crate) const SALVAGE_MARK: &str = "echovault-salvage.json";

/// [`preflight`] without the look for an interrupted salvage (the salvage's own open).
pub(crate) fn preflight_files(path: &Path) -> Result<Presence, IndexError> {
    let damaged = |detail: String| IndexError::Damaged { path: path.to_owned(), detail };
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Presence::Empty),
        Err(source) => return Err(IndexError::Io { path: path.to_owned(), source }),
    };
    let names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    if !names.iter().any(|n| n == "CURRENT") {
        return match names.iter().filter(|n| is_database_file(n)).min() {
            Some(f) => Err(damaged(format!("CURRENT is missing, {f} and the other database files are there"))),
            None => Ok(Presence::Empty),
        };
    }
    let current = path.join("CURRENT");
    let text = std::fs::read(&current).map_err(|source| IndexError::Io { path: current.clone(), source })?;
    let name = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| t.strip_suffix('\n'))
        .filter(|n| n.strip_prefix("MANIFEST-").is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())));
    let Some(name) = name else {
        return Err(damaged(format!("CURRENT does not name a MANIFEST ({} bytes)", text.len())));
    };
    match std::fs::metadata(path.join(name)) {
        Ok(m) if m.len() > 0 => Ok(Presence::Database),
        Ok(_) => Err(damaged(format!("CURRENT names {name}, which is empty"))),
        Err(_) => Err(damaged(format!("CURRENT names {name}, which is missing"))),
    }
}

/// The file beside the database that records the sequence numbers of the last committed and
/// the last synced batch (see [`SequenceMark`]): an open whose database ends before the synced
/// one lost batches that had reached the disk.
pub(crate) const SEQUENCE_MARK: &str = "echovault-sequence";

/// `SEQUENCE_MARK`'s check words (each number XOR its word follows the number): a torn or
/// foreign file reads as no mark; a mark of 16 bytes (from before the synced number) has only
/// the committed one.
const SEQUENCE_CHECK: u64 = u64::from_be_bytes(*b"echovaul");
const SYNCED_CHECK: u64 = u64::from_be_bytes(*b"evsynced");

/// The writer's handle on [`SEQUENCE_MARK`], two numbers, neither write synced:
/// - bytes 0..16, after each commit: the database's latest sequence number (committed);
/// - bytes 16..32, after the write-ahead log is synced (a synced commit, [`crate::Index::sync`],
///   a salvage): the latest sequence number the sync covers (synced).
///
/// RocksDB's recovery drops a write-ahead log's tail quietly where the log is cut (at a record
/// boundary, or in a record: a kill's torn last record looks the same), so without it an open
/// would answer from an index that silently lost committed batches. A database that ends
/// before the synced number lost what had reached the disk: damaged. One that ends between
/// the two lost only buffered commits, which a power cut may take (a warning; a rerun of the
/// ingest redoes them): the mark's page can reach the disk before the log's tail does. A mark
/// lost in a power cut only misses a report.
#[derive(Debug)]
pub(crate) struct SequenceMark {
    file: std::fs::File,
}

impl SequenceMark {
    /// Opens (creating) the mark of the index at `path`.
    pub(crate) fn open(path: &Path) -> std::io::Result<SequenceMark> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path.join(SEQUENCE_MARK))?;
        Ok(SequenceMark { file })
    }

    /// Records `seq` as the last committed sequence number (a failure is logged: the commit
    /// stands, only a later report of a lost tail could be missed).
    pub(crate) fn note(&self, seq: u64) {
        self.write(0, &number_bytes(seq, SEQUENCE_CHECK));
    }

    /// Records `seq` as the last synced sequence number (every batch up to it is on disk).
    pub(crate) fn note_synced(&self, seq: u64) {
        self.write(16, &number_bytes(seq, SYNCED_CHECK));
    }

    /// Records `seq` as both the last committed and the last synced sequence number (after a
    /// synced commit).
    pub(crate) fn note_both(&self, seq: u64) {
        self.write(0, &mark_bytes(seq));
    }

    fn write(&self, at: u64, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        if let Err(e) = self.file.write_all_at(bytes, at) {
            tracing::warn!(error = %e, "the index's sequence mark was not written: a cut write-ahead log could go unreported");
        }
    }
}

fn number_bytes(seq: u64, check: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b[8..].copy_from_slice(&(seq ^ check).to_le_bytes());
    b
}

/// The whole mark: `seq` committed and synced.
fn mark_bytes(seq: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..16].copy_from_slice(&number_bytes(seq, SEQUENCE_CHECK));
    b[16..].copy_from_slice(&number_bytes(seq, SYNCED_CHECK));
    b
}

/// What [`SequenceMark`] recorded: each number `None` where it is not there or does not read
/// back whole.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sequence {
    pub(crate) committed: Option<u64>,
    pub(crate) synced: Option<u64>,
}

fn read_number(b: &[u8], at: usize, check: u64) -> Option<u64> {
    let seq = u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?);
    let word = u64::from_le_bytes(b.get(at + 8..at + 16)?.try_into().ok()?);
    (word == seq ^ check).then_some(seq)
}

/// The sequence numbers [`SequenceMark`] recorded for the index at `path` (none where there is
/// no mark: an index from before it).
pub(crate) fn read_sequence_mark(path: &Path) -> Sequence {
    let Ok(b) = std::fs::read(path.join(SEQUENCE_MARK)) else { return Sequence::default() };
    Sequence { committed: read_number(&b, 0, SEQUENCE_CHECK), synced: read_number(&b, 16, SYNCED_CHECK) }
}

/// Writes `seq` as the mark, committed and synced, synced (a salvage: what it ends with is the
/// index now).
pub(crate) fn write_sequence_mark(path: &Path, seq: u64) -> Result<(), IndexError> {
    let io = |source| IndexError::Io { path: path.join(SEQUENCE_MARK), source };
    let mark = SequenceMark::open(path).map_err(io)?;
    use std::os::unix::fs::FileExt;
    mark.file.write_all_at(&mark_bytes(seq), 0).map_err(io)?;
    mark.file.sync_all().map_err(io)
}

/// What an open of a database lost, judged from its latest sequence number and the mark read
/// before the open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Rollback {
    /// The database ends before the synced number: batches on disk were lost (damaged).
    Cut(String),
    /// It ends between the synced and the committed number: only buffered commits, not yet
    /// synced, were lost (a power cut may do that; a warning).
    Unsynced(String),
}

/// What an open of `db` lost, when its latest sequence number is behind `mark` (read before
/// the open): [`Rollback::Cut`] behind the synced number, [`Rollback::Unsynced`] behind only
/// the committed one.
pub(crate) fn rolled_back(db: &DB, mark: Sequence) -> Option<Rollback> {
    rollback_of(db.latest_sequence_number(), mark)
}

pub(crate) fn rollback_of(now: u64, mark: Sequence) -> Option<Rollback> {
    let committed = mark.committed.unwrap_or(0).max(mark.synced.unwrap_or(0));
    if let Some(synced) = mark.synced.filter(|&s| now < s) {
        let buffered = if committed > synced { format!(", and {} buffered after them", committed - synced) } else { String::new() };
        return Some(Rollback::Cut(format!(
            "the write-ahead log was cut: the last {} committed updates synced to disk (sequence numbers {} to {synced}) were rolled back{buffered}",
            synced - now,
            now + 1
        )));
    }
    (now < committed).then(|| {
        Rollback::Unsynced(format!(
            "the last {} committed updates (sequence numbers {} to {committed}) had not been synced to disk and were lost (a power cut or system crash); \
             what was synced is whole, and a rerun of the ingest redoes the rest",
            committed - now,
            now + 1
        ))
    })
}

/// The damage in what an open lost ([`Rollback::Cut`]); a loss of buffered commits only is
/// logged as a warning and is no damage.
pub(crate) fn cut_or_warn(rollback: Option<Rollback>) -> Option<String> {
    match rollback? {
        Rollback::Cut(detail) => Some(detail),
        Rollback::Unsynced(detail) => {
            tracing::warn!("{detail}");
            None
        }
    }
}

/// The error of a failed open: [`IndexError::Busy`] for a LOCK another process holds,
/// [`IndexError::Damaged`] for corruption or a missing database file, else
/// [`IndexError::Storage`].
pub(crate) fn open_error(path: &Path, source: rocksdb::Error) -> IndexError {
    let text = source.to_string();
    match source.kind() {
        // RocksDB's words for a LOCK file another process holds (flock: EAGAIN / EWOULDBLOCK).
        rocksdb::ErrorKind::IOError if text.contains("LOCK") => {
            IndexError::Busy { path: path.to_owned(), holder: crate::holder::describe(path) }
        }
        rocksdb::ErrorKind::Corruption => IndexError::Damaged { path: path.to_owned(), detail: text },
        rocksdb::ErrorKind::IOError | rocksdb::ErrorKind::NotFound if text.contains("No such file") => {
            IndexError::Damaged { path: path.to_owned(), detail: text }
        }
        _ => IndexError::Storage { path: path.to_owned(), source },
    }
}

/// The error of a failed read or write: a checksum mismatch or other corruption is
/// [`IndexError::Damaged`] (what to do: `repair`), anything else [`IndexError::Storage`].
pub(crate) fn access_error(path: &Path, source: rocksdb::Error) -> IndexError {
    match source.kind() {
        rocksdb::ErrorKind::Corruption => IndexError::Damaged { path: path.to_owned(), detail: source.to_string() },
        _ => IndexError::Storage { path: path.to_owned(), source },
    }
}

/// Checks that every table file the MANIFEST lists is there at its size: RocksDB opens a
/// missing or truncated table only when a read first needs it.
/// A compaction the open itself scheduled may replace a table between the listing and the
/// look, so a problem counts only when a fresh listing still shows it after a few tries.
pub(crate) fn check_files(db: &DB, path: &Path) -> Result<(), IndexError> {
    const TRIES: u64 = 4;
    let mut attempt = 0;
    loop {
        let Some(detail) = first_bad_file(db, path)? else { return Ok(()) };
        attempt += 1;
        if attempt == TRIES {
            return Err(IndexError::Damaged { path: path.to_owned(), detail });
        }
        std::thread::sleep(std::time::Duration::from_millis(50 * attempt));
    }
}

/// The first table the MANIFEST lists that is missing or not at its size.
fn first_bad_file(db: &DB, path: &Path) -> Result<Option<String>, IndexError> {
    let live = db.live_files().map_err(|e| open_error(path, e))?;
    for f in live {
        let name = f.name.trim_start_matches('/');
        let detail = match std::fs::metadata(path.join(name)) {
            Err(e) => format!("table {name} of `{}` cannot be read: {e}", f.column_family_name),
            Ok(m) if m.len() != f.size as u64 => {
                format!("table {name} of `{}` has {} bytes, the MANIFEST says {}", f.column_family_name, m.len(), f.size)
            }
            Ok(_) => continue,
        };
        return Ok(Some(detail));
    }
    Ok(None)
}

/// Opens (or, in a directory without a database, creates) the database, as its one writer.
/// Another process holding it is [`IndexError::Busy`], named from its writer record; a damaged
/// one is [`IndexError::Damaged`], and nothing is created over it.
///
/// The column families the database has are opened as they are. With `writes`, those of
/// [`COLUMN_FAMILIES`] that are missing are then created (empty), but only where the stored
/// format is this build's or one it upgrades ([`upgradable`]), or the database is not yet an
/// index: an open that writes nothing (passive) leaves an older index's layout alone, and no
/// open adds to an index of a format it does not know (the format check then says so).
pub fn open_db(path: &Path, writes: bool) -> Result<DB, IndexError> {
    let create = preflight(path)? == Presence::Empty;
    let mark = if create {
        // A mark without a database is left over from one that is gone.
        let _ = std::fs::remove_file(path.join(SEQUENCE_MARK));
        Sequence::default()
    } else {
        read_sequence_mark(path)
    };
    let cache = block_cache();
    // A listing that fails (the open will say why, or that another process holds the index)
    // falls back to every column family of ours.
    let listed = if create { None } else { DB::list_cf(&Options::default(), path).ok().filter(|l| !l.is_empty()) };
    let names: Vec<String> = match &listed {
        Some(l) => l.clone(),
        None => COLUMN_FAMILIES.iter().map(|n| n.to_string()).collect(),
    };
    let cfs = names.iter().map(|n| ColumnFamilyDescriptor::new(n, options(false, &cache)));
    let mut opts = options(create, &cache);
    opts.create_missing_column_families(create || listed.is_none());
    let mut db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| {
        // Creating in a place that cannot hold it (a missing parent, no permission) is a
        // storage error, not damage: there was nothing to damage.
        if create {
            IndexError::Storage { path: path.to_owned(), source: e }
        } else {
            open_error(path, e)
        }
    })?;
    let missing: Vec<&str> = COLUMN_FAMILIES.iter().copied().filter(|n| db.cf_handle(n).is_none()).collect();
    if writes && !missing.is_empty() && layout_is_ours(&db) {
        for name in missing {
            db.create_cf(name, &options(false, &cache)).map_err(|e| open_error(path, e))?;
        }
    }
    check_files(&db, path)?;
    if let Some(detail) = cut_or_warn(rolled_back(&db, mark)) {
        return Err(IndexError::Damaged { path: path.to_owned(), detail });
    }
    Ok(db)
}

/// Opens the database at `path` as a RocksDB secondary instance (its own files in
/// `secondary`, outside the index): it never writes under `path`, works while a writer holds
/// the index, sees what was committed before it opened, and catches up on demand
/// (`try_catch_up_with_primary`). Opens the column families the database has.
pub fn open_secondary(path: &Path, secondary: &Path) -> Result<DB, IndexError> {
    if preflight(path)? == Presence::Empty {
        return Err(IndexError::Missing { path: path.to_owned() });
    }
    // A secondary instance opens around a missing or unreadable table (the writer may have just
    // deleted it) and around a damaged write-ahead log, answering without them: a read-only
    // open first, which fails on either, so that no reader answers over damage.
    let cfs = DB::list_cf(&Options::default(), path).map_err(|e| open_error(path, e))?;
    let names: Vec<&str> = cfs.iter().map(String::as_str).collect();
    // A writer's compaction may delete a table between the MANIFEST read and the table's open
    // (or its size check): damage that goes away on a second look was not damage.
    let mut looks = 0;
    loop {
        match open_read_only(path, &names, secondary) {
            Ok(db) => break drop(db),
            Err(IndexError::Damaged { .. }) if looks < GATE_RETRIES => {
                looks += 1;
                std::thread::sleep(GATE_RETRY_PAUSE);
            }
            Err(e) => return Err(e),
        }
    }
    let mut o = options(false, &block_cache());
    // Secondary instances keep every table file open: the writer may delete one (compaction)
    // between two catch-ups.
    o.set_max_open_files(-1);
    let descriptors = cfs.iter().map(|n| ColumnFamilyDescriptor::new(n.as_str(), o.clone()));
    // No size check here: the gate did it, and the writer may delete tables from now on.
    DB::open_cf_descriptors_as_secondary(&o, path, secondary, descriptors).map_err(|e| open_error(path, e))
}

/// How many more times a reader's gate looks at an index that seemed damaged, and the pause
/// between looks (a writer's compaction replaces tables within milliseconds).
const GATE_RETRIES: usize = 2;
const GATE_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Opens `cfs` of the database at `path` read-only, its info log in `log_dir` (outside the
/// index: a read-only open would otherwise rotate the index's `LOG`, which fails on read-only
/// media and changes the directory).
pub(crate) fn open_read_only(path: &Path, cfs: &[&str], log_dir: &Path) -> Result<DB, IndexError> {
    let db = open_read_only_unchecked(path, cfs, log_dir)?;
    check_files(&db, path)?;
    Ok(db)
}

/// [`open_read_only`] without the look at the table files: for the table check, which names
/// each missing or cut table itself (with what it held) instead of failing at the first.
pub(crate) fn open_read_only_unchecked(path: &Path, cfs: &[&str], log_dir: &Path) -> Result<DB, IndexError> {
    if preflight(path)? == Presence::Empty {
        return Err(IndexError::Missing { path: path.to_owned() });
    }
    let mut o = options(false, &block_cache());
    o.set_db_log_dir(log_dir);
    // RocksDB's own look at the table files (sizes) stops the open at the first bad one; every
    // read still verifies its blocks' checksums.
    o.set_paranoid_checks(false);
    // The mark before the open: a writer commits on meanwhile, and what it committed before the
    // mark was read is in the log this open replays — unless a flush moved it into a table and
    // deleted the log between this open's MANIFEST read and its look for logs: a database behind
    // its mark is looked at again before it counts as cut.
    let mut looks = 0;
    loop {
        let mark = read_sequence_mark(path);
        let db = DB::open_cf_for_read_only(&o, path, cfs.iter().copied(), false).map_err(|e| open_error(path, e))?;
        let rollback = rolled_back(&db, mark);
        if rollback.is_some() && looks < GATE_RETRIES {
            looks += 1;
            drop(db);
            std::thread::sleep(GATE_RETRY_PAUSE);
            continue;
        }
        return match cut_or_warn(rollback) {
            None => Ok(db),
            Some(detail) => Err(IndexError::Damaged { path: path.to_owned(), detail }),
        };
    }
}

/// A temporary directory for the files a read of the index needs beside it (outside it).
pub(crate) fn scratch_outside(prefix: &str) -> Result<tempfile::TempDir, IndexError> {
    tempfile::Builder::new().prefix(prefix).tempdir().map_err(|source| IndexError::Io { path: std::env::temp_dir(), source })
}

/// The patient-key secret of the index at `path`, read without opening it for writing (other
/// processes may hold it), without loading any graph and without writing under `path`; `None`
/// when there is no index there.
pub fn peek_secret(path: &Path) -> Result<Option<[u8; 32]>, IndexError> {
    if preflight(path)? == Presence::Empty {
        return Ok(None);
    }
    let storage = |source| access_error(path, source);
    let logs = scratch_outside("echovault-peek-")?;
    let db = open_read_only(path, &[CF_META], logs.path())?;
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

/// Lets RocksDB rebuild a database that does not open (`RepairDB`): a new MANIFEST from the
/// table files and write-ahead logs there; tables it cannot read whole are set aside under
/// `lost/`. Data in those tables is gone; [`crate::salvage`] runs this only where the database
/// does not open, then `Index::repair` makes graphs and mappings agree with what survived.
pub(crate) fn rocksdb_repair(path: &Path) -> Result<(), IndexError> {
    DB::repair(&options(false, &block_cache()), path).map_err(|source| IndexError::Storage { path: path.to_owned(), source })
}

/// Opens the database for [`crate::salvage`]: as [`open_db`], with no writer record; with
/// `skip_damaged_wal`, every write-ahead-log record that reads back is replayed and the damaged
/// ones skipped (RocksDB's repair would keep only the default column family's).
pub(crate) fn open_for_salvage(path: &Path, skip_damaged_wal: bool) -> Result<DB, IndexError> {
    if preflight_files(path)? == Presence::Empty {
        return Err(IndexError::Missing { path: path.to_owned() });
    }
    let cache = block_cache();
    let mut o = options(false, &cache);
    // A salvage rebuilds the index: ours that are missing are created (empty).
    o.create_missing_column_families(true);
    if skip_damaged_wal {
        o.set_wal_recovery_mode(rocksdb::DBRecoveryMode::SkipAnyCorruptedRecord);
    }
    // Ours, and any a salvage left (its staging column families), which must be opened too.
    let mut names: Vec<String> = COLUMN_FAMILIES.iter().map(|n| (*n).to_owned()).collect();
    for n in DB::list_cf(&Options::default(), path).unwrap_or_default() {
        if n != "default" && !names.contains(&n) {
            names.push(n);
        }
    }
    let cfs = names.iter().map(|n| ColumnFamilyDescriptor::new(n.as_str(), options(false, &cache)));
    let db = DB::open_cf_descriptors(&o, path, cfs).map_err(|e| open_error(path, e))?;
    check_files(&db, path)?;
    Ok(db)
}

/// Options for a column family re-created by a salvage (its blocks in a cache of their own:
/// a salvage is a one-off pass).
pub(crate) fn column_family_options() -> Options {
    options(false, &block_cache())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// Behind the synced number is damage; behind only the committed one (buffered commits a
    /// power cut took) is a warning; a mark from before the synced number (16 bytes) has only
    /// the committed one, and a torn synced half reads as none.
    #[test]
    fn a_database_is_cut_only_behind_the_synced_number() {
        let mark = |committed, synced| Sequence { committed, synced };
        assert_eq!(rollback_of(10, mark(Some(10), Some(10))), None);
        assert_eq!(rollback_of(12, mark(Some(10), Some(8))), None);
        let Some(Rollback::Unsynced(w)) = rollback_of(8, mark(Some(10), Some(8))) else { panic!() };
        assert!(w.contains("the last 2 committed updates (sequence numbers 9 to 10) had not been synced"), "{w}");
        let Some(Rollback::Cut(d)) = rollback_of(5, mark(Some(10), Some(8))) else { panic!() };
        assert!(d.contains("was cut") && d.contains("last 3 committed updates synced") && d.contains("2 buffered after them"), "{d}");
        assert!(matches!(rollback_of(5, mark(Some(10), None)), Some(Rollback::Unsynced(_))));
        assert!(matches!(rollback_of(5, mark(None, Some(6))), Some(Rollback::Cut(_))));

        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_sequence_mark(dir.path()), Sequence::default());
        std::fs::write(dir.path().join(SEQUENCE_MARK), number_bytes(7, SEQUENCE_CHECK)).unwrap();
        assert_eq!(read_sequence_mark(dir.path()), mark(Some(7), None), "a mark of 16 bytes");
        let m = SequenceMark::open(dir.path()).unwrap();
        m.note_synced(6);
        assert_eq!(read_sequence_mark(dir.path()), mark(Some(7), Some(6)));
        m.note(9);
        assert_eq!(read_sequence_mark(dir.path()), mark(Some(9), Some(6)));
        m.note_both(11);
        assert_eq!(read_sequence_mark(dir.path()), mark(Some(11), Some(11)));
        let mut b = std::fs::read(dir.path().join(SEQUENCE_MARK)).unwrap();
        b[20] ^= 1;
        std::fs::write(dir.path().join(SEQUENCE_MARK), &b).unwrap();
        assert_eq!(read_sequence_mark(dir.path()), mark(Some(11), None), "a torn synced number");
    }
}
