//! [`Index`]: opening (graph snapshots, replay, rebuild), the format check, atomic batches,
//! checkpoints, repair and verification, and search (graph or exact).
//!
//! The one place where external item ids and internal slots are mapped to each other.

use crate::codec::{self, Collection, Encoding};
use crate::error::IndexError;
use crate::graph::{Graph, SlotMeta, SCRATCH_PREFIX};
use crate::ids::{ItemId, Kind, Slot, SpaceId};
use crate::record::ItemRecord;
use crate::search::{dot, Hit, Query};
use crate::secret::SecretState;
use crate::snapshot;
use crate::store::{self, CF_ERRORS, CF_FRAMES, CF_GRAPH, CF_INGEST_LOG, CF_ITEMS, CF_META, CF_SLOTS, CF_VECTORS};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// Searches whose filtered candidate set is at most this large are answered exactly (brute
/// force over the candidates' vectors, from memory): cheap at this size, and recall stays 1.0
/// where a filtered graph walk would lose neighbours.
pub const EXACT_SEARCH_MAX_CANDIDATES: usize = 4096;
/// ... or when scoring them costs at most this many multiply-adds (candidates × dimension:
/// 80k candidates at 50-d, 8k at 512-d): exact scoring reads the in-memory vectors, which is
/// faster than a filtered walk up to about there (`evindex bench --filters`).
pub const EXACT_SEARCH_MAX_WORK: usize = 1 << 22;
/// [`Index::verify`] lists at most this many secondary-key problems (then counts the rest).
const VERIFY_LOOKUP_LINES: usize = 100;
/// Default HNSW search breadth.
pub const DEFAULT_EF_SEARCH: usize = 96;
/// Upper bound of the search breadth: a larger `ef` is clamped to it (the result count `k` is not).
pub const MAX_EF_SEARCH: usize = 4096;

/// Vector storage format for new writes.
pub type VectorEncoding = Encoding;

/// How to open an index.
#[derive(Clone, Debug, Default)]
pub struct IndexOptions {
    /// Encoding of vectors written from now on (reads handle both).
    pub encoding: VectorEncoding,
    /// Rebuild every graph from the stored vectors instead of loading its snapshot (then store
    /// a fresh snapshot). For measurements and for distrust; `repair` does the same and more.
    pub ignore_snapshots: bool,
    /// Write nothing while opening: a graph rebuilt because its snapshot was missing, stale or
    /// corrupt stays in memory (see [`Index::graph_loads`]) instead of being re-snapshotted.
    /// For tests and tools that look at an index no other process writes; commands that only
    /// read use [`Index::open_reader`], which works beside a writer.
    pub passive_open: bool,
    /// Who writes (e.g. `echovault ingest`), for the writer record that a second writer's
    /// [`IndexError::Busy`] quotes; `None`: the program's file name.
    pub writer: Option<String>,
    /// The patient-key secret is kept in this file, outside the index (see
    /// [`Index::use_secret_file`]). A new index then stores only its fingerprint, and the file
    /// is written with a new secret when it does not exist. `None`: a new index stores its
    /// secret; an index whose secret is outside opens without it ([`Index::secret`] is then an
    /// error).
    pub secret_file: Option<PathBuf>,
}

/// How a search may proceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Exact for small candidate sets, the graph otherwise.
    Auto,
    /// Always the (filtered) graph walk: for measurements.
    Graph,
}

/// A registered embedding space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceInfo {
    /// Id used in keys.
    pub id: SpaceId,
    /// Name, e.g. `echoclip`.
    pub name: String,
    /// Vector dimension.
    pub dim: usize,
}

/// Item and vector counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Items per kind.
    pub items: BTreeMap<String, usize>,
    /// Live vectors per `space/kind`.
    pub vectors: BTreeMap<String, usize>,
    /// Recorded ingest errors.
    pub errors: usize,
}

/// A set of changes committed atomically by [`Index::commit`].
#[derive(Debug, Default)]
pub struct Batch {
    items: Vec<ItemRecord>,
    vectors: Vec<(SpaceId, ItemId, Kind, Vec<f32>)>,
    deletes: Vec<ItemId>,
    frames: Vec<(SpaceId, ItemId, Vec<Vec<f32>>)>,
    raw: Vec<RawWrite>,
}

/// A put (`Some`) or delete (`None`) of one key in a named column family.
type RawWrite = (&'static str, Vec<u8>, Option<Vec<u8>>);

impl Batch {
    /// Inserts or replaces an item's metadata.
    pub fn put_item(&mut self, record: ItemRecord) {
        self.items.push(record);
    }

    /// Inserts or replaces the vector of `item` in `space` (normalised on commit).
    pub fn put_vector(&mut self, space: SpaceId, item: impl Into<ItemId>, kind: Kind, v: Vec<f32>) {
        self.vectors.push((space, item.into(), kind, v));
    }

    /// Deletes an item and all its vectors. Deletes apply after the batch's puts: an item both
    /// put and deleted in one batch ends up deleted.
    pub fn delete_item(&mut self, item: impl Into<ItemId>) {
        self.deletes.push(item.into());
    }

    /// Stores the per-frame embeddings of `item` in `space` (as f16; replaces earlier ones). The
    /// item must exist or be put in the same batch; deleting it drops them.
    pub fn put_frames(&mut self, space: SpaceId, item: impl Into<ItemId>, frames: Vec<Vec<f32>>) {
        self.frames.push((space, item.into(), frames));
    }

    /// Writes (`Some`) or removes (`None`) one ingest-log entry. Keys and values belong to the
    /// caller (the ingest pipeline); they commit atomically with the rest of the batch.
    pub fn put_log(&mut self, key: &str, value: Option<&[u8]>) {
        self.raw.push((CF_INGEST_LOG, key.as_bytes().to_vec(), value.map(<[u8]>::to_vec)));
    }

    /// Records an ingest error for `input` (a path); `None` clears it.
    pub fn put_error(&mut self, input: &str, message: Option<&str>) {
        self.raw.push((CF_ERRORS, input.as_bytes().to_vec(), message.map(|m| m.as_bytes().to_vec())));
    }

    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.vectors.is_empty() && self.deletes.is_empty() && self.frames.is_empty() && self.raw.is_empty()
    }
}

/// How one collection's graph came up when the index opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GraphLoad {
    /// `space/kind`.
    pub collection: String,
    /// `snapshot` (loaded, then `replayed` newer vectors inserted) or `rebuilt`.
    pub how: &'static str,
    /// Why the graph was rebuilt (missing, stale or corrupt snapshot), if it was.
    pub reason: Option<String>,
    /// Vectors written after the snapshot and inserted on open.
    pub replayed: usize,
    /// Live vectors.
    pub live: usize,
    /// Milliseconds spent.
    pub millis: u64,
}

/// What [`Index::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Stored vectors per `space/kind` (live and tombstoned).
    pub stored: BTreeMap<String, usize>,
    /// Live vectors per `space/kind`.
    pub live: BTreeMap<String, usize>,
    /// Every inconsistency, one line each; empty when the index is sound.
    pub problems: Vec<String>,
    /// Table files that failed their checksums (also among `problems`).
    pub damaged: Vec<crate::DamagedTable>,
}

impl Verification {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Snapshot bookkeeping in `graph`: one header per collection.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SnapshotHeader {
    covered: u32,
    nodes: u64,
    bytes: u64,
    chunks: u32,
    sha256: [u8; 32],
}

/// Snapshot chunk size: well under RocksDB's comfortable value sizes.
const SNAPSHOT_CHUNK: usize = 4 << 20;

/// A graph is re-snapshotted once this many vectors were inserted since its last snapshot
/// (bounded replay work on open): an eighth of its size, at least 4096, at most 65536.
fn snapshot_due(g: &Graph) -> bool {
    g.pending >= (g.live() / 8).clamp(4096, 65536)
}

/// A graph is rebuilt (tombstones dropped) instead of snapshotted once it holds more dead nodes
/// than live ones.
fn rebuild_due(g: &Graph) -> bool {
    let dead = g.nodes().saturating_sub(g.live());
    dead > g.live().max(1024)
}

/// State owned by the single writer: slot counters and graphs whose in-memory state may hold
/// nodes that a failed write never stored.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    /// Per collection, the next slot to issue (a reader: the slots it has seen).
    pub(crate) next_slot: HashMap<Collection, u32>,
    poisoned: HashSet<Collection>,
}

/// An open index directory. Cheap to share across threads (`&Index` is `Sync`): searches run
/// concurrently with each other and with a writer; commits are serialised. A search sees every
/// batch committed before it started, or not, whole: a commit stores its batch and makes it
/// visible in the graphs under one exclusive lock.
pub struct Index {
    pub(crate) path: PathBuf,
    /// The writer record (before `db`: removed while the lock is still held).
    _holder: Option<crate::holder::Holder>,
    pub(crate) db: DB,
    options: IndexOptions,
    /// The secondary keys are complete (see `lookup`).
    pub(crate) lookups: AtomicBool,
    /// Item records decoded since the open (see [`Index::records_decoded`]).
    decoded: AtomicU64,
    pub(crate) spaces: RwLock<BTreeMap<SpaceId, SpaceInfo>>,
    pub(crate) graphs: RwLock<HashMap<Collection, Graph>>,
    pub(crate) writer: Mutex<Writer>,
    secret: SecretState,
    pub(crate) loads: Vec<GraphLoad>,
    /// Set on a reader (after `db`: its directory outlives the secondary instance).
    pub(crate) reader: Option<crate::reader::ReaderState>,
    /// The writer's record of its last committed sequence number (see `store::SequenceMark`).
    sequence: Option<store::SequenceMark>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("path", &self.path).finish_non_exhaustive()
    }
}

/// The secret of the index in `db` (stored, or the fingerprint of an outside one) after checking
/// its format version; `None` when it has none (a new database, or one that is not an index).
pub(crate) fn check_format(db: &DB, path: &Path) -> Result<Option<SecretState>, IndexError> {
    let storage = |source| store::access_error(path, source);
    let cf_meta = db.cf_handle(CF_META).ok_or_else(|| corrupt(path, "column family", CF_META))?;
    let Some(v) = db.get_cf(cf_meta, store::KEY_FORMAT_VERSION).map_err(storage)? else { return Ok(None) };
    let found = u32::from_be_bytes(v.as_slice().try_into().map_err(|_| corrupt(path, "format version", "not 4 bytes"))?);
    if found != store::FORMAT_VERSION {
        return Err(IndexError::FormatVersion { path: path.to_owned(), found, expected: store::FORMAT_VERSION });
    }
    let bytes32 = |v: Vec<u8>, what: &'static str| -> Result<[u8; 32], IndexError> {
        v.as_slice().try_into().map_err(|_| corrupt(path, what, "not 32 bytes"))
    };
    if let Some(s) = db.get_cf(cf_meta, store::KEY_SECRET).map_err(storage)? {
        return Ok(Some(SecretState::Stored(bytes32(s, "secret")?)));
    }
    let f = db.get_cf(cf_meta, store::KEY_SECRET_FINGERPRINT).map_err(storage)?.ok_or_else(|| corrupt(path, "secret", "missing"))?;
    Ok(Some(SecretState::Outside { fingerprint: bytes32(f, "secret fingerprint")?, given: None }))
}

/// Makes the empty database `db` an index: format version, a new secret (or, with
/// `secret_file`, the fingerprint of the secret there — a new one written to it when it does
/// not exist), complete (empty) secondary keys. Refuses a database that holds items but no
/// format version.
fn create(db: &DB, path: &Path, secret_file: Option<&Path>) -> Result<SecretState, IndexError> {
    let storage = |source| store::access_error(path, source);
    let cf_meta = db.cf_handle(CF_META).ok_or_else(|| corrupt(path, "column family", CF_META))?;
    let cf_items = db.cf_handle(CF_ITEMS).ok_or_else(|| corrupt(path, "column family", CF_ITEMS))?;
    if db.iterator_cf(cf_items, IteratorMode::Start).next().is_some() {
        return Err(IndexError::NotAnIndex { path: path.to_owned() });
    }
    let mut wb = WriteBatch::default();
    wb.put_cf(cf_meta, store::KEY_FORMAT_VERSION, store::FORMAT_VERSION.to_be_bytes());
    let state = match secret_file {
        None => {
            let mut secret = [0u8; 32];
            rand::fill(&mut secret);
            wb.put_cf(cf_meta, store::KEY_SECRET, secret);
            SecretState::Stored(secret)
        }
        Some(file) => {
            crate::secret::check_outside(path, file)?;
            let secret = if file.exists() {
                crate::secret::read_secret_file(file)?
            } else {
                let mut secret = [0u8; 32];
                rand::fill(&mut secret);
                crate::secret::write_secret_file(file, &secret)?;
                secret
            };
            let fingerprint = crate::secret::fingerprint(&secret);
            wb.put_cf(cf_meta, store::KEY_SECRET_FINGERPRINT, fingerprint);
            SecretState::Outside { fingerprint, given: Some(secret) }
        }
    };
    wb.put_cf(cf_meta, store::KEY_LOOKUP_VERSION, store::LOOKUP_VERSION.to_be_bytes());
    db.write_opt(wb, &synced()).map_err(storage)?;
    Ok(state)
}

/// This program's file name (the default writer label).
fn program_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "an unnamed program".into())
}

pub(crate) fn corrupt(path: &Path, what: &'static str, detail: impl ToString) -> IndexError {
    IndexError::Corrupt { path: path.to_owned(), what, detail: detail.to_string() }
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// How a commit reaches the disk (see [`Index::commit_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Synced to disk before the commit returns.
    #[default]
    Synced,
    /// Written to the operating system; synced by a later synced commit or [`Index::sync`].
    Buffered,
}

pub(crate) fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

/// The stored vectors of one collection, by slot.
struct Stored {
    rows: Vec<Option<(ItemId, Vec<f32>)>>,
    dead: HashSet<u32>,
}

impl Stored {
    fn vector(&self, s: Slot) -> Option<&[f32]> {
        self.rows.get(s.0 as usize).and_then(Option::as_ref).map(|(_, v)| v.as_slice())
    }
    fn live(&self) -> impl Iterator<Item = (Slot, &ItemId, &Vec<f32>)> {
        self.rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|(id, v)| (Slot(i as u32), id, v)))
            .filter(|(s, _, _)| !self.dead.contains(&s.0))
    }
}

impl Index {
    /// Opens the index at `path`, creating it when the directory is absent or empty. Loads every
    /// graph from its snapshot and replays the vectors written after it; rebuilds (and
    /// re-snapshots) a graph whose snapshot is missing, stale or corrupt. [`Index::graph_loads`]
    /// says what happened.
    pub fn open(path: impl AsRef<Path>, options: IndexOptions) -> Result<Index, IndexError> {
        let path = path.as_ref().to_owned();
        let db = store::open_db(&path)?;
        let secret = match check_format(&db, &path)? {
            Some(mut secret) => {
                if let Some(file) = &options.secret_file {
                    secret.give(&path, file)?;
                }
                secret
            }
            None => create(&db, &path, options.secret_file.as_deref())?,
        };
        // Scratch directories of graph loads that a crash interrupted (RocksDB's lock, held now,
        // means no other process is loading).
        if let Ok(entries) = std::fs::read_dir(&path) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let label = options.writer.clone().unwrap_or_else(program_name);
        let holder = match crate::holder::Holder::record(&path, &label) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "no writer record: a second writer will not be told who writes");
                None
            }
        };
        let sequence = match store::SequenceMark::open(&path) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(error = %e, "no sequence mark: a cut write-ahead log would go unreported");
                None
            }
        };
        let mut index = Index::assemble(path, db, secret, None, holder);
        index.options = options;
        if let Some(m) = &sequence {
            // The committed number only: the synced one stands until the next sync (a database
            // behind a lost buffered tail is at it or past it, else the open failed).
            m.note(index.db.latest_sequence_number());
        }
        index.sequence = sequence;
        if index.read_lookups_ready()? {
            index.lookups.store(true, Ordering::Release);
        } else if !index.options.passive_open {
            // An index from before the secondary keys: fill them once.
            index.rebuild_lookups()?;
        }
        index.loads = index.load()?;
        Ok(index)
    }

    /// An index handle over an open database, nothing loaded yet.
    pub(crate) fn assemble(
        path: PathBuf,
        db: DB,
        secret: SecretState,
        reader: Option<crate::reader::ReaderState>,
        holder: Option<crate::holder::Holder>,
    ) -> Index {
        Index {
            path,
            _holder: holder,
            db,
            options: IndexOptions::default(),
            lookups: AtomicBool::new(false),
            decoded: AtomicU64::new(0),
            spaces: RwLock::new(BTreeMap::new()),
            graphs: RwLock::new(HashMap::new()),
            writer: Mutex::new(Writer::default()),
            secret,
            loads: Vec::new(),
            reader,
            sequence: None,
        }
    }

    /// The index directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Per-index secret for pseudonymising patient ids (keyed hash): the one stored in the
    /// index, or the one handed over from a file outside it ([`IndexOptions::secret_file`],
    /// [`Index::use_secret_file`]). [`IndexError::SecretNeeded`] when the index keeps its
    /// secret outside and none was handed over.
    pub fn secret(&self) -> Result<&[u8; 32], IndexError> {
        self.secret.get(&self.path)
    }

    /// True when the index keeps only the fingerprint of a secret held in a file outside it.
    pub fn secret_is_outside(&self) -> bool {
        matches!(self.secret, SecretState::Outside { .. })
    }

    /// Hands over the patient-key secret in `file` (a reader, or a writer opened without
    /// [`IndexOptions::secret_file`]). Refused when the file is inside the index directory,
    /// is not 64 hex digits, does not match the index's fingerprint
    /// ([`IndexError::SecretMismatch`]), or holds another secret than the one the index stores
    /// ([`IndexError::SecretStored`]); a file with the stored secret is accepted.
    pub fn use_secret_file(&mut self, file: &Path) -> Result<(), IndexError> {
        self.secret.give(&self.path, file)
    }

    /// Moves the stored patient-key secret out of the index: writes it to the new file `file`
    /// (mode 0600, synced; an existing file is refused unless it holds this secret already, as
    /// an export cut short between the file and `meta` leaves it), then replaces it in `meta` by its
    /// fingerprint (one synced write). Patient keys stay the same; from then on commands that
    /// key patient ids need the file. Refused for a reader and for an index whose secret is
    /// already outside.
    pub fn export_secret(&mut self, file: &Path) -> Result<(), IndexError> {
        if self.is_reader() {
            return Err(IndexError::ReadOnly { path: self.path.clone(), op: "moving the secret out" });
        }
        let SecretState::Stored(secret) = self.secret else {
            return Err(IndexError::SecretFile {
                file: file.to_owned(),
                detail: format!("the index at {} keeps no secret of its own to move out: it is already outside", self.path.display()),
            });
        };
        crate::secret::check_outside(&self.path, file)?;
        if std::fs::symlink_metadata(file).is_ok() && crate::secret::read_secret_file(file).is_ok_and(|s| s == secret) {
            // An earlier export wrote the file (synced) and stopped before `meta` changed: the
            // file is this secret already, so the export goes on from there.
            tracing::info!(file = %file.display(), "the secret file already holds this index's secret (an earlier export was cut short): kept");
        } else {
            crate::secret::write_secret_file(file, &secret)?;
        }
        let fingerprint = crate::secret::fingerprint(&secret);
        let cf_meta = self.cf(CF_META)?;
        let mut wb = WriteBatch::default();
        wb.put_cf(cf_meta, store::KEY_SECRET_FINGERPRINT, fingerprint);
        wb.delete_cf(cf_meta, store::KEY_SECRET);
        self.db.write_opt(wb, &synced()).map_err(|e| self.storage(e))?;
        self.secret = SecretState::Outside { fingerprint, given: Some(secret) };
        // The deleted secret must not linger in the write-ahead log or an older table: every
        // memtable is flushed (the logs holding the old value become obsolete and are deleted)
        // and `meta` is compacted (the delete drops the old value at the bottom level).
        for name in store::COLUMN_FAMILIES {
            self.db.flush_cf(self.cf(name)?).map_err(|e| self.storage(e))?;
        }
        self.db.compact_range_cf(self.cf(CF_META)?, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// How each graph came up at open.
    pub fn graph_loads(&self) -> &[GraphLoad] {
        &self.loads
    }

    pub(crate) fn storage(&self, source: rocksdb::Error) -> IndexError {
        store::access_error(&self.path, source)
    }

    /// Decodes a stored item record.
    pub(crate) fn decode_record(&self, b: &[u8]) -> Result<ItemRecord, IndexError> {
        self.decoded.fetch_add(1, Ordering::Relaxed);
        let (rec, _) = bincode::serde::decode_from_slice(b, bincode_config()).map_err(|e| corrupt(&self.path, "item record", e))?;
        Ok(rec)
    }

    /// How many item records this handle has decoded since it opened (opening decodes those of
    /// every live vector). For tests and measurements of what a read touches.
    pub fn records_decoded(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }

    pub(crate) fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, IndexError> {
        self.db.cf_handle(name).ok_or_else(|| corrupt(&self.path, "column family", name))
    }

    fn collection_name(&self, c: Collection) -> String {
        let spaces = self.spaces.read().unwrap_or_else(|e| e.into_inner());
        format!("{}/{}", spaces.get(&c.space).map_or("?", |s| s.name.as_str()), c.kind)
    }

    /// Loads spaces and slot counters, then every collection's graph (from its snapshot, or
    /// rebuilt when the snapshot cannot be used).
    pub(crate) fn load(&self) -> Result<Vec<GraphLoad>, IndexError> {
        let spaces = self.read_spaces()?;
        let counters = self.read_counters()?;
        *self.spaces.write().unwrap_or_else(|e| e.into_inner()) = spaces.clone();
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        writer.next_slot = counters.clone();
        writer.poisoned.clear();
        let mut graphs = HashMap::new();
        let mut loads = Vec::new();
        for (&c, &next) in &counters {
            let Some(info) = spaces.get(&c.space) else { return Err(corrupt(&self.path, "slot counter", "unknown space")) };
            let (g, load) = self.load_collection(c, info, next)?;
            graphs.insert(c, g);
            loads.push(load);
        }
        *self.graphs.write().unwrap_or_else(|e| e.into_inner()) = graphs;
        loads.sort_by(|a, b| a.collection.cmp(&b.collection));
        Ok(loads)
    }

    /// The registered spaces, read from `meta`.
    pub(crate) fn read_spaces(&self) -> Result<BTreeMap<SpaceId, SpaceInfo>, IndexError> {
        let mut spaces = BTreeMap::new();
        for kv in self.db.prefix_iterator_cf(self.cf(CF_META)?, store::KEY_SPACE_PREFIX) {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            if !k.starts_with(store::KEY_SPACE_PREFIX) {
                break;
            }
            let (info, _): (SpaceInfo, _) =
                bincode::serde::decode_from_slice(&v, bincode_config()).map_err(|e| corrupt(&self.path, "space record", e))?;
            spaces.insert(info.id, info);
        }
        Ok(spaces)
    }

    /// Every collection's next free slot, read from `meta`.
    pub(crate) fn read_counters(&self) -> Result<HashMap<Collection, u32>, IndexError> {
        let mut counters = HashMap::new();
        for kv in self.db.prefix_iterator_cf(self.cf(CF_META)?, b"next_slot/") {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            if !k.starts_with(b"next_slot/") {
                break;
            }
            let c = Collection::from_prefix(&k[b"next_slot/".len()..])
                .ok_or_else(|| corrupt(&self.path, "slot counter key", "bad collection"))?;
            let n = u32::from_be_bytes(v.as_ref().try_into().map_err(|_| corrupt(&self.path, "slot counter", "not 4 bytes"))?);
            counters.insert(c, n);
        }
        Ok(counters)
    }

    /// Loads one collection's graph: from its snapshot plus the vectors written after it, or
    /// rebuilt from the stored vectors when the snapshot cannot be used (then, on a writer,
    /// snapshotted again).
    pub(crate) fn load_collection(&self, c: Collection, info: &SpaceInfo, next: u32) -> Result<(Graph, GraphLoad), IndexError> {
        let t0 = std::time::Instant::now();
        let stored = self.read_collection(c, info.dim)?;
        let (mut g, how, reason, replayed) = match self.restore(c, info.dim, next, &stored) {
            Ok((g, replay)) => (g, "snapshot", None, replay),
            Err(why) => (Graph::new(info.dim, stored.rows.len()), "rebuilt", Some(why), 0),
        };
        // Records give the filter facts of every live slot.
        let live: Vec<(Slot, &ItemId, &Vec<f32>)> = stored.live().collect();
        let ids: Vec<ItemId> = live.iter().map(|(_, id, _)| (*id).clone()).collect();
        let records = self.get_items(&ids)?;
        if how == "rebuilt" {
            let rows: Vec<(Slot, &[f32])> = live.iter().map(|(s, _, v)| (*s, v.as_slice())).collect();
            g.insert_hidden(&rows);
        } else {
            // Replay every vector written after the snapshot, tombstoned ones too (hidden):
            // the next snapshot must hold every stored slot below its coverage.
            let covered = g.covered as usize;
            let rows: Vec<(Slot, &[f32])> = stored
                .rows
                .iter()
                .enumerate()
                .skip(covered)
                .filter_map(|(i, r)| r.as_ref().map(|(_, v)| (Slot(i as u32), v.as_slice())))
                .collect();
            g.insert_hidden(&rows);
            g.pending = rows.len();
        }
        for ((slot, id, _), rec) in live.iter().zip(&records) {
            g.set_meta(*slot, slot_meta((*id).clone(), rec.as_ref()));
        }
        let name = format!("{}/{}", info.name, c.kind);
        if let Some(r) = &reason {
            tracing::info!(collection = %name, reason = %r, "graph rebuilt from the stored vectors");
        }
        let load = GraphLoad { collection: name, how, reason, replayed, live: g.live(), millis: 0 };
        if self.options.passive_open || self.is_reader() {
            // Nothing written: a rebuilt graph lives in memory only.
        } else if how == "rebuilt" {
            // Persist the rebuilt graph and drop the tombstoned vectors it no longer holds.
            self.write_snapshot(c, next, &g, Some(&stored.dead))?;
            (g.covered, g.pending) = (next, 0);
        } else if replayed >= 1024 || snapshot_due(&g) {
            self.write_snapshot(c, next, &g, None)?;
            (g.covered, g.pending) = (next, 0);
        }
        Ok((g, GraphLoad { millis: t0.elapsed().as_millis() as u64, ..load }))
    }

    /// Every stored vector of `c` (f16 ones re-normalised in f32) and its tombstones.
    fn read_collection(&self, c: Collection, dim: usize) -> Result<Stored, IndexError> {
        let mut rows: Vec<Option<(ItemId, Vec<f32>)>> = Vec::new();
        let prefix = c.prefix();
        for kv in self.db.prefix_iterator_cf(self.cf(CF_VECTORS)?, prefix) {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let (_, slot) = codec::decode_vector_key(&k).ok_or_else(|| corrupt(&self.path, "vector key", format!("{k:?}")))?;
            let (item, mut vec) = codec::decode_vector(&v).ok_or_else(|| corrupt(&self.path, "vector", format!("slot {}", slot.0)))?;
            if vec.len() != dim {
                return Err(corrupt(&self.path, "vector", format!("slot {} has dimension {}, space has {dim}", slot.0, vec.len())));
            }
            renormalise(&mut vec);
            let i = slot.0 as usize;
            if rows.len() <= i {
                rows.resize_with(i + 1, || None);
            }
            rows[i] = Some((ItemId(item), vec));
        }
        let mut dead = HashSet::new();
        let dprefix = codec::dead_prefix(c);
        for kv in self.db.prefix_iterator_cf(self.cf(CF_GRAPH)?, &dprefix) {
            let (k, _) = kv.map_err(|e| self.storage(e))?;
            if !k.starts_with(&dprefix) {
                break;
            }
            let s = codec::decode_dead_key(&k).ok_or_else(|| corrupt(&self.path, "tombstone key", format!("{k:?}")))?;
            dead.insert(s.0);
        }
        Ok(Stored { rows, dead })
    }

    /// Loads `c`'s snapshot and checks it against the stored vectors. Returns the graph (nodes
    /// not yet visible) and how many newer vectors must be replayed, or why it cannot be used.
    fn restore(&self, c: Collection, dim: usize, next: u32, stored: &Stored) -> Result<(Graph, usize), String> {
        let cf = self.cf(CF_GRAPH).map_err(|e| e.to_string())?;
        if self.options.ignore_snapshots {
            return Err("snapshots ignored by option".into());
        }
        let Some(h) = self.db.get_cf(cf, codec::snapshot_header_key(c)).map_err(|e| format!("reading the snapshot: {e}"))? else {
            return Err("no snapshot".into());
        };
        let (h, _): (SnapshotHeader, _) =
            bincode::serde::decode_from_slice(&h, bincode_config()).map_err(|e| format!("snapshot header: {e}"))?;
        if h.covered > next {
            return Err(format!("snapshot covers slots up to {}, the index only issued {next}", h.covered));
        }
        // The header is not checksummed itself: never allocate on its word.
        if h.bytes > u64::from(h.chunks) * SNAPSHOT_CHUNK as u64 || h.chunks > 1 << 20 {
            return Err("snapshot header: impossible size".into());
        }
        let mut blob = Vec::with_capacity(h.bytes.min(SNAPSHOT_CHUNK as u64) as usize);
        for i in 0..h.chunks {
            let chunk = self.db.get_cf(cf, codec::snapshot_chunk_key(c, i)).map_err(|e| format!("reading the snapshot: {e}"))?;
            blob.extend_from_slice(&chunk.ok_or_else(|| format!("snapshot chunk {i} missing"))?);
        }
        if blob.len() as u64 != h.bytes || <[u8; 32]>::from(Sha256::digest(&blob)) != h.sha256 {
            return Err("snapshot checksum mismatch".into());
        }
        let topo = snapshot::decode(&blob).map_err(|e| format!("snapshot: {e}"))?;
        if topo.params.dim as usize != dim || topo.len() as u64 != h.nodes {
            return Err("snapshot does not match its header".into());
        }
        // Stale when the stored vectors below `covered` are not exactly the snapshot's nodes.
        let below = stored.rows.iter().take(h.covered as usize).filter(|r| r.is_some()).count();
        if below != topo.len() || topo.slots().any(|s| s >= h.covered || stored.vector(Slot(s)).is_none()) {
            return Err(format!("stale snapshot: {} nodes, {below} stored vectors below slot {}", topo.len(), h.covered));
        }
        if topo.is_empty() {
            let mut g = Graph::new(dim, stored.rows.len());
            g.covered = h.covered;
            let replay = stored.rows.iter().skip(h.covered as usize).filter(|r| r.is_some()).count();
            return Ok((g, replay));
        }
        // Searchable at once from the snapshot; hnsw_rs reloads it on the first insert.
        let mut g = Graph::from_snapshot(topo, dim, |s| stored.vector(s), self.scratch_dir());
        g.covered = h.covered;
        let replay = stored.rows.iter().skip(h.covered as usize).filter(|r| r.is_some()).count();
        Ok((g, replay))
    }

    /// Stores `g`'s topology as `c`'s snapshot covering slots below `next`, replacing the previous
    /// one in one atomic write. With `vacuum`, also deletes those tombstoned vectors (which `g`,
    /// freshly rebuilt, does not hold). The caller holds the writer lock (no insert runs).
    fn write_snapshot(&self, c: Collection, next: u32, g: &Graph, vacuum: Option<&HashSet<u32>>) -> Result<(), IndexError> {
        self.write_snapshot_with(c, next, g, vacuum, WriteBatch::default())
    }

    /// [`Index::write_snapshot`], adding the caller's own changes to the same atomic write.
    fn write_snapshot_with(
        &self,
        c: Collection,
        next: u32,
        g: &Graph,
        vacuum: Option<&HashSet<u32>>,
        mut wb: WriteBatch,
    ) -> Result<(), IndexError> {
        let cf = self.cf(CF_GRAPH)?;
        let blob = snapshot::encode(&g.topology());
        let chunks: Vec<&[u8]> = blob.chunks(SNAPSHOT_CHUNK).collect();
        let header = SnapshotHeader {
            covered: next,
            nodes: g.nodes() as u64,
            bytes: blob.len() as u64,
            chunks: chunks.len() as u32,
            sha256: Sha256::digest(&blob).into(),
        };
        wb.delete_range_cf(cf, codec::snapshot_chunk_key(c, 0), codec::snapshot_chunk_key(c, u32::MAX));
        for (i, chunk) in chunks.iter().enumerate() {
            wb.put_cf(cf, codec::snapshot_chunk_key(c, i as u32), chunk);
        }
        let hv = bincode::serde::encode_to_vec(&header, bincode_config()).map_err(|e| corrupt(&self.path, "snapshot header", e))?;
        wb.put_cf(cf, codec::snapshot_header_key(c), hv);
        // The counter on disk must never be behind what the snapshot covers (it can be, in
        // memory, after a failed write).
        wb.put_cf(self.cf(CF_META)?, codec::next_slot_key(c), next.to_be_bytes());
        if let Some(dead) = vacuum {
            let cf_vec = self.cf(CF_VECTORS)?;
            for &s in dead {
                wb.delete_cf(cf_vec, codec::vector_key(c, Slot(s)));
                wb.delete_cf(cf, codec::dead_key(c, Slot(s)));
            }
            // Readers cannot follow a vacuum slot by slot: they reload this collection.
            self.bump(&mut wb, &crate::reader::generation_key(c))?;
        }
        self.db.write_opt(wb, &synced()).map_err(|e| self.storage(e))
    }

    /// Adds to `wb` the increment of the u64 counter at `key` in `meta`.
    fn bump(&self, wb: &mut WriteBatch, key: &[u8]) -> Result<(), IndexError> {
        let cf = self.cf(CF_META)?;
        let n = match self.db.get_cf(cf, key).map_err(|e| self.storage(e))? {
            Some(v) => u64::from_be_bytes(v.as_slice().try_into().map_err(|_| corrupt(&self.path, "generation", "not 8 bytes"))?),
            None => 0,
        };
        wb.put_cf(cf, key, (n + 1).to_be_bytes());
        Ok(())
    }

    /// Writes a fresh snapshot of every graph that changed since its last one, so the next open
    /// replays nothing. Graphs with more tombstones than live vectors are rebuilt instead.
    /// Commits do this on their own from time to time; call it at the end of a bulk load.
    pub fn checkpoint(&self) -> Result<(), IndexError> {
        self.writable("a checkpoint")?;
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let all: Vec<Collection> = writer.next_slot.keys().copied().collect();
        self.checkpoint_locked(&mut writer, &all, true)
    }

    fn checkpoint_locked(&self, writer: &mut Writer, which: &[Collection], force: bool) -> Result<(), IndexError> {
        for &c in which {
            let next = writer.next_slot.get(&c).copied().unwrap_or(0);
            let (changed, rebuild) = {
                let graphs = self.graphs.read().unwrap_or_else(|e| e.into_inner());
                let Some(g) = graphs.get(&c) else { continue };
                let changed = g.covered != next || g.pending > 0;
                (changed && (force || snapshot_due(g)), writer.poisoned.contains(&c) || rebuild_due(g))
            };
            if rebuild {
                self.rebuild_locked(writer, c)?;
            } else if changed {
                // Only commits insert, and they wait for the writer lock we hold: searches go on
                // while the topology is captured and written.
                {
                    let graphs = self.graphs.read().unwrap_or_else(|e| e.into_inner());
                    if let Some(g) = graphs.get(&c) {
                        self.write_snapshot(c, next, g, None)?;
                    }
                }
                if let Some(g) = self.graphs.write().unwrap_or_else(|e| e.into_inner()).get_mut(&c) {
                    (g.covered, g.pending) = (next, 0);
                }
            }
        }
        Ok(())
    }

    /// Rebuilds `c`'s graph from its live stored vectors, drops its tombstones and snapshots it.
    /// Also mends what only damage leaves behind: vectors whose item record is gone become
    /// tombstones, and slot mappings that point at no live vector are deleted (the item is then
    /// simply not embedded, and the next ingest embeds it again).
    fn rebuild_locked(&self, writer: &mut Writer, c: Collection) -> Result<(), IndexError> {
        let dim = self
            .spaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&c.space)
            .map(|s| s.dim)
            .ok_or(IndexError::UnknownSpace(c.space.0))?;
        let next = writer.next_slot.get(&c).copied().unwrap_or(0);
        let mut stored = self.read_collection(c, dim)?;
        let ids: Vec<(Slot, ItemId)> = stored.live().map(|(s, id, _)| (s, id.clone())).collect();
        let records = self.get_items(&ids.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>())?;
        let mut metas = Vec::with_capacity(ids.len());
        for ((slot, id), rec) in ids.into_iter().zip(records) {
            match rec {
                Some(rec) => metas.push((slot, slot_meta(id, Some(&rec)))),
                None => {
                    tracing::warn!(slot = slot.0, "vector without an item record dropped");
                    stored.dead.insert(slot.0);
                }
            }
        }
        let mut wb = WriteBatch::default();
        let cf_slots = self.cf(CF_SLOTS)?;
        let prefix = c.prefix();
        let mut mapped: HashMap<ItemId, u32> = HashMap::new();
        for kv in self.db.prefix_iterator_cf(cf_slots, prefix) {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let slot = <[u8; 4]>::try_from(v.as_ref()).map(u32::from_be_bytes).ok();
            if slot.is_none_or(|s| stored.dead.contains(&s) || stored.vector(Slot(s)).is_none()) {
                wb.delete_cf(cf_slots, k);
            } else if let Some(s) = slot {
                mapped.insert(ItemId(String::from_utf8_lossy(&k[3..]).into_owned()), s);
            }
        }
        // One live vector per item (damage can lose a tombstone): the one its mapping names,
        // else the newest; the others become tombstones. A live vector without its mapping
        // (damage can lose mappings) gets it back.
        let mut newest: HashMap<ItemId, u32> = HashMap::new();
        for (slot, meta) in &metas {
            let e = newest.entry(meta.item.clone()).or_insert(slot.0);
            *e = match mapped.get(&meta.item) {
                Some(m) => *m,
                None => (*e).max(slot.0),
            };
        }
        metas.retain(|(slot, meta)| {
            let keep = newest.get(&meta.item) == Some(&slot.0);
            if !keep {
                tracing::warn!(slot = slot.0, item = %meta.item, "second live vector of an item dropped");
                stored.dead.insert(slot.0);
            }
            keep
        });
        for (id, s) in &newest {
            if mapped.get(id) != Some(s) {
                wb.put_cf(cf_slots, codec::slot_key(c, &id.0), s.to_be_bytes());
            }
        }
        let mut g = Graph::new(dim, metas.len());
        let rows: Vec<(Slot, &[f32])> = metas.iter().filter_map(|(s, _)| stored.vector(*s).map(|v| (*s, v))).collect();
        g.insert_hidden(&rows);
        for (slot, meta) in metas {
            g.set_meta(slot, meta);
        }
        self.write_snapshot_with(c, next, &g, Some(&stored.dead), wb)?;
        (g.covered, g.pending) = (next, 0);
        self.graphs.write().unwrap_or_else(|e| e.into_inner()).insert(c, g);
        writer.poisoned.remove(&c);
        Ok(())
    }

    /// Rebuilds every graph from the stored vectors, physically drops tombstoned vectors, writes
    /// fresh snapshots and rebuilds the secondary keys from the records; then checks the
    /// result. The cure for a graph that a snapshot could not restore, and the way to reclaim
    /// the space of deleted and replaced vectors.
    pub fn repair(&self) -> Result<Verification, IndexError> {
        self.writable("repair")?;
        {
            let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let all: Vec<Collection> = writer.next_slot.keys().copied().collect();
            for c in all {
                self.rebuild_locked(&mut writer, c)?;
            }
            self.rebuild_lookups()?;
            let orphans = self.orphan_frames()?;
            if !orphans.is_empty() {
                let cf = self.cf(CF_FRAMES)?;
                let mut wb = WriteBatch::default();
                for (space, id) in &orphans {
                    wb.delete_cf(cf, codec::frames_key(*space, &id.0));
                }
                self.db.write_opt(wb, &synced()).map_err(|e| self.storage(e))?;
            }
        }
        self.verify()
    }

    /// Checks that graphs, vectors, slot mappings, tombstones and item records agree: no ghost
    /// vector (in a graph, not stored), none missing (stored, not in its graph), every mapping
    /// pointing at the live vector of its item, every live vector's item present, the secondary
    /// keys (patient, study, date) exactly those of the records. Reads everything; holds off
    /// writers while it runs.
    pub fn verify(&self) -> Result<Verification, IndexError> {
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let graphs = self.graphs.read().unwrap_or_else(|e| e.into_inner());
        let spaces = self.spaces.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = Verification::default();
        // Every block's checksum first: the consistency checks below read through the tables.
        let damaged = self.check_tables()?;
        if !damaged.is_empty() {
            for d in &damaged {
                out.problems.push(d.describe());
            }
            out.problems
                .push("the records, vectors and mappings are checked once `echovault repair` has salvaged the damaged tables".into());
            out.damaged = damaged;
            return Ok(out);
        }
        let cf_slots = self.cf(CF_SLOTS)?;
        for (&c, _) in writer.next_slot.iter() {
            let Some(info) = spaces.get(&c.space) else {
                out.problems.push(format!("slot counter for unknown space {}", c.space.0));
                continue;
            };
            let name = format!("{}/{}", info.name, c.kind);
            let stored = self.read_collection(c, info.dim)?;
            let live: BTreeMap<u32, &ItemId> = stored.live().map(|(s, id, _)| (s.0, id)).collect();
            let mut per_item: HashMap<&ItemId, usize> = HashMap::new();
            for id in live.values() {
                *per_item.entry(*id).or_default() += 1;
            }
            let mut twice: Vec<&&ItemId> = per_item.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
            twice.sort();
            for id in twice.iter().take(VERIFY_LOOKUP_LINES) {
                out.problems.push(format!(
                    "{name}: {id} has {} live vectors (a tombstone is lost): searches return it more than once",
                    per_item[**id]
                ));
            }
            out.stored.insert(name.clone(), stored.rows.iter().filter(|r| r.is_some()).count());
            out.live.insert(name.clone(), live.len());
            let Some(g) = graphs.get(&c) else {
                if !live.is_empty() {
                    out.problems.push(format!("{name}: {} live vectors but no graph", live.len()));
                }
                continue;
            };
            let nodes: HashSet<u32> = g.node_slots().into_iter().map(|s| s.0).collect();
            for (s, m) in g.live_slots() {
                match live.get(&s.0) {
                    None => out.problems.push(format!("{name}: ghost vector: slot {} ({}) is live in the graph, not stored", s.0, m.item)),
                    Some(id) if **id != m.item => {
                        out.problems.push(format!("{name}: slot {} is {} in the graph, {} stored", s.0, m.item, id))
                    }
                    Some(_) => {}
                }
                if !nodes.contains(&s.0) {
                    out.problems.push(format!("{name}: slot {} is live but not a graph node", s.0));
                }
            }
            for (s, id) in &live {
                if g.meta(Slot(*s)).is_none() {
                    out.problems.push(format!("{name}: missing vector: slot {s} ({id}) is stored, not live in the graph"));
                }
                match self.db.get_cf(cf_slots, codec::slot_key(c, &id.0)).map_err(|e| self.storage(e))? {
                    Some(b) if b.as_slice() == s.to_be_bytes() => {}
                    _ => out.problems.push(format!("{name}: item {id} does not map to its live slot {s}")),
                }
            }
            for s in &stored.dead {
                if stored.vector(Slot(*s)).is_none() && g.covered > *s && nodes.contains(s) {
                    out.problems.push(format!("{name}: tombstoned slot {s} is a graph node without its vector"));
                }
            }
            let prefix = c.prefix();
            for kv in self.db.prefix_iterator_cf(cf_slots, prefix) {
                let (k, v) = kv.map_err(|e| self.storage(e))?;
                if !k.starts_with(&prefix) {
                    break;
                }
                let slot = v.as_ref().try_into().map(u32::from_be_bytes).unwrap_or(u32::MAX);
                if !live.contains_key(&slot) {
                    out.problems
                        .push(format!("{name}: mapping {} points at slot {slot}, which is not live", String::from_utf8_lossy(&k[3..])));
                }
            }
            let ids: Vec<ItemId> = live.values().map(|id| (*id).clone()).collect();
            for (id, rec) in ids.iter().zip(self.get_items(&ids)?) {
                if rec.is_none() {
                    out.problems.push(format!("{name}: live vector of {id}, which has no item record"));
                }
            }
        }
        out.problems.extend(self.verify_lookups(VERIFY_LOOKUP_LINES)?);
        let orphans = self.orphan_frames()?;
        if !orphans.is_empty() {
            out.problems.push(format!("frame embeddings of {} items that have no record (first: {})", orphans.len(), orphans[0].1));
        }
        Ok(out)
    }

    /// Reads every table file with its block checksums verified (see [`crate::damage`]): the
    /// damaged ones, named with their column family and what losing them means.
    pub fn check_tables(&self) -> Result<Vec<crate::DamagedTable>, IndexError> {
        crate::damage::check_tables(&self.db, &self.path)
    }

    /// `(space, item)` of stored frame embeddings whose item has no record.
    fn orphan_frames(&self) -> Result<Vec<(SpaceId, ItemId)>, IndexError> {
        let mut keys = Vec::new();
        for kv in self.db.iterator_cf(self.cf(CF_FRAMES)?, IteratorMode::Start) {
            let (k, _) = kv.map_err(|e| self.storage(e))?;
            if k.len() < 2 {
                continue;
            }
            let space = SpaceId(u16::from_be_bytes([k[0], k[1]]));
            keys.push((space, ItemId(String::from_utf8_lossy(&k[2..]).into_owned())));
        }
        let ids: Vec<ItemId> = keys.iter().map(|(_, id)| id.clone()).collect();
        let records = self.get_items(&ids)?;
        Ok(keys.into_iter().zip(records).filter(|(_, r)| r.is_none()).map(|(k, _)| k).collect())
    }

    /// Registers an embedding space (idempotent for the same name and dimension).
    pub fn ensure_space(&self, name: &str, dim: usize) -> Result<SpaceId, IndexError> {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut spaces = self.spaces.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = spaces.values().find(|s| s.name == name) {
            if s.dim != dim {
                return Err(IndexError::SpaceDimension { space: name.to_owned(), existing: s.dim, requested: dim });
            }
            return Ok(s.id);
        }
        self.writable("registering an embedding space")?;
        let id = SpaceId(spaces.keys().next_back().map_or(1, |s| s.0 + 1));
        let info = SpaceInfo { id, name: name.to_owned(), dim };
        let mut key = store::KEY_SPACE_PREFIX.to_vec();
        key.extend_from_slice(&id.0.to_be_bytes());
        let val = bincode::serde::encode_to_vec(&info, bincode_config()).map_err(|e| corrupt(&self.path, "space record", e))?;
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf(CF_META)?, key, val);
        self.db.write_opt(wb, &synced()).map_err(|e| self.storage(e))?;
        spaces.insert(id, info);
        Ok(id)
    }

    /// All registered spaces.
    pub fn spaces(&self) -> Vec<SpaceInfo> {
        self.spaces.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// The space called `name`, if registered.
    pub fn space(&self, name: &str) -> Option<SpaceInfo> {
        self.spaces().into_iter().find(|s| s.name == name)
    }

    /// A new, empty batch.
    pub fn batch(&self) -> Batch {
        Batch::default()
    }

    /// Commits `batch` atomically and durably (one synced RocksDB WriteBatch). After `Ok`, the
    /// changes survive a crash; searches see all of them or none.
    ///
    /// Replaced and deleted vectors become tombstones: their slots are marked dead and their
    /// vectors stay stored (the graph snapshot may still route through them) until a rebuild.
    pub fn commit(&self, batch: Batch) -> Result<(), IndexError> {
        self.commit_with(batch, Durability::Synced)
    }

    /// Commits `batch` atomically with the given durability: [`Durability::Buffered`] hands the
    /// write to the operating system (it survives the process being killed, not a power cut,
    /// until the next synced commit or [`Index::sync`]); searches see it at once either way.
    pub fn commit_with(&self, batch: Batch, durability: Durability) -> Result<(), IndexError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.writable("a commit")?;
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let spaces = self.spaces.read().unwrap_or_else(|e| e.into_inner()).clone();
        let (cf_items, cf_vec, cf_slots, cf_meta, cf_graph) =
            (self.cf(CF_ITEMS)?, self.cf(CF_VECTORS)?, self.cf(CF_SLOTS)?, self.cf(CF_META)?, self.cf(CF_GRAPH)?);
        let mut wb = WriteBatch::default();
        // Deletes apply last: an item deleted and put in the same batch ends up deleted.
        let deleted: HashSet<ItemId> = batch.deletes.iter().cloned().collect();
        let mut records: HashMap<ItemId, ItemRecord> = HashMap::new();
        for r in batch.items.iter().filter(|r| !deleted.contains(&r.id)) {
            let val = bincode::serde::encode_to_vec(r, bincode_config()).map_err(|e| corrupt(&self.path, "item record", e))?;
            wb.put_cf(cf_items, r.id.0.as_bytes(), val);
            records.insert(r.id.clone(), r.clone());
        }
        self.lookup_changes(&mut wb, &records, &deleted)?;
        // Graph changes to apply once the write succeeds.
        let mut kills: Vec<(Collection, Slot)> = Vec::new();
        let mut inserts: HashMap<Collection, Vec<(Slot, Vec<f32>, SlotMeta)>> = HashMap::new();
        let mut new_counters = writer.next_slot.clone();
        // Slots assigned inside this batch, so a vector put twice in one batch replaces itself.
        let mut assigned: HashMap<(Collection, ItemId), Slot> = HashMap::new();
        let cf_frames = self.cf(CF_FRAMES)?;
        for (space, item, frames) in batch.frames.iter().filter(|(_, id, _)| !deleted.contains(id)) {
            let info = spaces.get(space).ok_or(IndexError::UnknownSpace(space.0))?;
            if let Some(f) = frames.iter().find(|f| f.len() != info.dim) {
                return Err(IndexError::DimensionMismatch {
                    item: item.0.clone(),
                    space: info.name.clone(),
                    expected: info.dim,
                    got: f.len(),
                });
            }
            if !records.contains_key(item) && self.get_item(item)?.is_none() {
                return Err(IndexError::UnknownItem(item.0.clone()));
            }
            let value = codec::encode_frames(frames).ok_or_else(|| corrupt(&self.path, "frame embeddings", item.0.clone()))?;
            wb.put_cf(cf_frames, codec::frames_key(*space, &item.0), value);
        }
        for id in &deleted {
            wb.delete_cf(cf_items, id.0.as_bytes());
            for space in spaces.keys() {
                wb.delete_cf(cf_frames, codec::frames_key(*space, &id.0));
                for kind in Kind::ALL {
                    let c = Collection { space: *space, kind };
                    if let Some(old) = self.slot_of(c, id)? {
                        wb.put_cf(cf_graph, codec::dead_key(c, old), []);
                        wb.delete_cf(cf_slots, codec::slot_key(c, &id.0));
                        kills.push((c, old));
                    }
                }
            }
        }
        for (space, item, kind, v) in batch.vectors.into_iter().filter(|(_, id, _, _)| !deleted.contains(id)) {
            let info = spaces.get(&space).ok_or(IndexError::UnknownSpace(space.0))?;
            if v.len() != info.dim {
                return Err(IndexError::DimensionMismatch { item: item.0, space: info.name.clone(), expected: info.dim, got: v.len() });
            }
            let v = normalise(&item, v)?;
            let c = Collection { space, kind };
            let record = match records.get(&item) {
                Some(r) => Some(r.clone()),
                None => self.get_item(&item)?,
            };
            let Some(record) = record else { return Err(IndexError::UnknownItem(item.0)) };
            let previous = match assigned.get(&(c, item.clone())) {
                Some(s) => Some(*s),
                None => self.slot_of(c, &item)?,
            };
            if let Some(old) = previous {
                wb.put_cf(cf_graph, codec::dead_key(c, old), []);
                kills.push((c, old));
            }
            let next = new_counters.entry(c).or_insert(0);
            let slot = Slot(*next);
            *next = next.checked_add(1).ok_or_else(|| corrupt(&self.path, "slot counter", "exhausted (2^32 vectors written)"))?;
            wb.put_cf(cf_vec, codec::vector_key(c, slot), codec::encode_vector(&item.0, &v, self.options.encoding));
            wb.put_cf(cf_slots, codec::slot_key(c, &item.0), slot.0.to_be_bytes());
            assigned.insert((c, item.clone()), slot);
            inserts.entry(c).or_default().push((slot, v, slot_meta(item, Some(&record))));
        }
        for (c, n) in &new_counters {
            if writer.next_slot.get(c) != Some(n) {
                wb.put_cf(cf_meta, codec::next_slot_key(*c), n.to_be_bytes());
            }
        }
        for (cf, k, v) in batch.raw {
            let cf = self.cf(cf)?;
            match v {
                Some(v) => wb.put_cf(cf, k, v),
                None => wb.delete_cf(cf, k),
            }
        }
        // Filter facts of items whose record changed without a new vector.
        let with_vector: HashSet<&ItemId> = assigned.keys().map(|(_, a)| a).collect();
        records.retain(|id, _| !with_vector.contains(id));
        let mut updates = Vec::new();
        for (id, rec) in &records {
            for space in spaces.keys() {
                let c = Collection { space: *space, kind: rec.kind };
                if let Some(slot) = self.slot_of(c, id)? {
                    updates.push((c, slot, slot_meta(id.clone(), Some(rec))));
                }
            }
        }
        if !updates.is_empty() {
            // Readers re-read the filter facts of their graphs after such a commit.
            self.bump(&mut wb, crate::reader::KEY_FACTS_GENERATION)?;
        }
        // New vectors go into the graphs first, invisible (no metadata yet); searches go on.
        {
            let mut graphs = self.graphs.write().unwrap_or_else(|e| e.into_inner());
            for (c, rows) in &inserts {
                let dim = spaces.get(&c.space).map_or(0, |s| s.dim);
                graphs.entry(*c).or_insert_with(|| Graph::new(dim, rows.len()));
            }
        }
        {
            let graphs = self.graphs.read().unwrap_or_else(|e| e.into_inner());
            for (c, rows) in &inserts {
                if let Some(g) = graphs.get(c) {
                    let rows: Vec<(Slot, &[f32])> = rows.iter().map(|(s, v, _)| (*s, v.as_slice())).collect();
                    g.insert_hidden(&rows);
                }
            }
        }
        // Store and reveal under the exclusive lock: a search sees the whole batch or none of it.
        let mut graphs = self.graphs.write().unwrap_or_else(|e| e.into_inner());
        let wo = match durability {
            Durability::Synced => synced(),
            Durability::Buffered => WriteOptions::default(),
        };
        if let Err(e) = self.db.write_opt(wb, &wo) {
            // The hidden nodes were never stored: never reuse their slots in this process, and
            // rebuild those graphs at the next checkpoint.
            writer.poisoned.extend(inserts.keys().copied());
            writer.next_slot = new_counters;
            return Err(self.storage(e));
        }
        if let Some(m) = &self.sequence {
            // A synced commit synced every batch before it too.
            match durability {
                Durability::Synced => m.note_both(self.db.latest_sequence_number()),
                Durability::Buffered => m.note(self.db.latest_sequence_number()),
            }
        }
        writer.next_slot = new_counters;
        // Reveal first, then kill: a vector put twice in one batch kills its own first slot.
        for (c, rows) in inserts {
            if let Some(g) = graphs.get_mut(&c) {
                g.pending += rows.len();
                for (slot, _, meta) in rows {
                    g.set_meta(slot, meta);
                }
            }
        }
        for (c, slot) in kills {
            if let Some(g) = graphs.get_mut(&c) {
                g.kill(slot);
            }
        }
        for (c, slot, meta) in updates {
            if let Some(g) = graphs.get_mut(&c) {
                g.update_meta(slot, meta);
            }
        }
        drop(graphs);
        let due: Vec<Collection> = {
            let graphs = self.graphs.read().unwrap_or_else(|e| e.into_inner());
            graphs.iter().filter(|(_, g)| snapshot_due(g) || rebuild_due(g)).map(|(c, _)| *c).collect()
        };
        if !due.is_empty() {
            self.checkpoint_locked(&mut writer, &due, false)?;
        }
        Ok(())
    }

    /// Syncs every buffered commit to disk.
    pub fn sync(&self) -> Result<(), IndexError> {
        self.writable("a sync")?;
        // Every batch up to this number was written to the log before the sync starts.
        let seq = self.db.latest_sequence_number();
        self.db.flush_wal(true).map_err(|e| self.storage(e))?;
        if let Some(m) = &self.sequence {
            m.note_synced(seq);
        }
        Ok(())
    }

    fn slot_of(&self, c: Collection, item: &ItemId) -> Result<Option<Slot>, IndexError> {
        let v = self.db.get_cf(self.cf(CF_SLOTS)?, codec::slot_key(c, &item.0)).map_err(|e| self.storage(e))?;
        v.map(|b| b.as_slice().try_into().map(|a| Slot(u32::from_be_bytes(a))).map_err(|_| corrupt(&self.path, "slot", "not 4 bytes")))
            .transpose()
    }

    /// The record of `item`, if present.
    pub fn get_item(&self, item: &ItemId) -> Result<Option<ItemRecord>, IndexError> {
        Ok(self.get_items(std::slice::from_ref(item))?.pop().flatten())
    }

    /// Records of many items (one RocksDB multi-get).
    pub fn get_items(&self, items: &[ItemId]) -> Result<Vec<Option<ItemRecord>>, IndexError> {
        let cf = self.cf(CF_ITEMS)?;
        self.db
            .multi_get_cf(items.iter().map(|i| (cf, i.0.as_bytes())))
            .into_iter()
            .map(|r| {
                let Some(b) = r.map_err(|e| self.storage(e))? else { return Ok(None) };
                self.decode_record(&b).map(Some)
            })
            .collect()
    }

    /// The stored (unit) vector of `item` in `space`.
    pub fn get_vector(&self, space: SpaceId, kind: Kind, item: &ItemId) -> Result<Option<Vec<f32>>, IndexError> {
        let c = Collection { space, kind };
        let Some(slot) = self.slot_of(c, item)? else { return Ok(None) };
        let Some(b) = self.db.get_cf(self.cf(CF_VECTORS)?, codec::vector_key(c, slot)).map_err(|e| self.storage(e))? else {
            return Ok(None);
        };
        let (_, mut v) = codec::decode_vector(&b).ok_or_else(|| corrupt(&self.path, "vector", item.0.clone()))?;
        renormalise(&mut v);
        Ok(Some(v))
    }

    /// The stored per-frame embeddings of `item` in `space` (f16 precision), in frame order.
    pub fn get_frames(&self, space: SpaceId, item: &ItemId) -> Result<Option<Vec<Vec<f32>>>, IndexError> {
        let Some(b) = self.db.get_cf(self.cf(CF_FRAMES)?, codec::frames_key(space, &item.0)).map_err(|e| self.storage(e))? else {
            return Ok(None);
        };
        codec::decode_frames(&b).map(Some).ok_or_else(|| corrupt(&self.path, "frame embeddings", item.0.clone()))
    }

    /// One ingest-log value (see [`Batch::put_log`]).
    pub fn get_log(&self, key: &str) -> Result<Option<Vec<u8>>, IndexError> {
        self.db.get_cf(self.cf(CF_INGEST_LOG)?, key.as_bytes()).map_err(|e| self.storage(e))
    }

    /// Every ingest-log entry whose key starts with `prefix`, in key order (see
    /// [`Batch::put_log`]).
    pub fn log_entries(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, IndexError> {
        let mut out = Vec::new();
        for kv in self.db.prefix_iterator_cf(self.cf(CF_INGEST_LOG)?, prefix.as_bytes()) {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// All item records of one kind (full scan of the items table).
    pub fn items(&self, kind: Option<Kind>) -> Result<Vec<ItemRecord>, IndexError> {
        let mut out = Vec::new();
        for kv in self.db.iterator_cf(self.cf(CF_ITEMS)?, IteratorMode::Start) {
            let (_, v) = kv.map_err(|e| self.storage(e))?;
            let rec = self.decode_record(&v)?;
            if kind.is_none_or(|k| rec.kind == k) {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Recorded ingest errors as (input, message).
    pub fn errors(&self) -> Result<Vec<(String, String)>, IndexError> {
        let mut out = Vec::new();
        for kv in self.db.iterator_cf(self.cf(CF_ERRORS)?, IteratorMode::Start) {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            out.push((String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned()));
        }
        Ok(out)
    }

    /// Item counts per kind, live vector counts per space and kind, error count.
    pub fn counts(&self) -> Result<Counts, IndexError> {
        let mut counts = Counts::default();
        for k in Kind::ALL {
            counts.items.insert(k.as_str().to_owned(), 0);
        }
        for rec in self.items(None)? {
            *counts.items.entry(rec.kind.as_str().to_owned()).or_default() += 1;
        }
        let live: Vec<(Collection, usize)> =
            self.graphs.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(c, g)| (*c, g.live())).collect();
        for (c, n) in live {
            counts.vectors.insert(self.collection_name(c), n);
        }
        counts.errors = self.errors()?.len();
        Ok(counts)
    }

    /// On-disk size of the index's RocksDB files (SST and blob files, after compaction settles)
    /// and of its live memtables, in bytes.
    pub fn disk_bytes(&self) -> Result<u64, IndexError> {
        let mut total = 0u64;
        for name in store::COLUMN_FAMILIES {
            let cf = self.cf(name)?;
            for prop in ["rocksdb.total-sst-files-size", "rocksdb.size-all-mem-tables"] {
                total += self.db.property_int_value_cf(cf, prop).map_err(|e| self.storage(e))?.unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// Flushes memtables and compacts every column family (what a bulk load ends with; also
    /// makes [`Index::disk_bytes`] meaningful).
    pub fn compact(&self) -> Result<(), IndexError> {
        self.writable("a compaction")?;
        for name in store::COLUMN_FAMILIES {
            let cf = self.cf(name)?;
            self.db.flush_cf(cf).map_err(|e| self.storage(e))?;
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// k nearest items to `q.vector` by cosine, best first. Exact when asked, or when the filtered
    /// candidate set is small (see [`EXACT_SEARCH_MAX_WORK`]); through the HNSW graph
    /// otherwise (nodes outside the filter are walked through but never counted as results).
    pub fn search(&self, q: &Query) -> Result<Vec<Hit>, IndexError> {
        // Hold the shared lock across the graph walk and the record reads: no commit lands between.
        let graphs = self.graphs.read().unwrap_or_else(|e| e.into_inner());
        let found = self.search_in(&graphs, q, Mode::Auto)?;
        let ids: Vec<ItemId> = found.iter().map(|(id, _)| id.clone()).collect();
        let records = self.get_items(&ids)?;
        Ok(found.into_iter().zip(records).filter_map(|((id, score), rec)| rec.map(|record| Hit { id, score, record })).collect())
    }

    /// [`Index::search`] without reading the hits' records: ids and cosines only.
    pub fn search_ids(&self, q: &Query) -> Result<Vec<(ItemId, f32)>, IndexError> {
        let graphs = self.graphs.read().unwrap_or_else(|e| e.into_inner());
        self.search_in(&graphs, q, Mode::Auto)
    }

    /// The filtered HNSW walk alone, at the query's breadth, even where [`Index::search`] would
    /// search exactly. For measuring what those rules buy (`evindex bench`).
    pub fn search_graph_filtered(&self, q: &Query) -> Result<Vec<(ItemId, f32)>, IndexError> {
        let graphs = self.graphs.read().unwrap_or_else(|e| e.into_inner());
        self.search_in(&graphs, q, Mode::Graph)
    }

    fn search_in(&self, graphs: &HashMap<Collection, Graph>, q: &Query, mode: Mode) -> Result<Vec<(ItemId, f32)>, IndexError> {
        let info =
            self.spaces.read().unwrap_or_else(|e| e.into_inner()).get(&q.space).cloned().ok_or(IndexError::UnknownSpace(q.space.0))?;
        if q.vector.len() != info.dim {
            return Err(IndexError::DimensionMismatch { item: "query".into(), space: info.name, expected: info.dim, got: q.vector.len() });
        }
        let v = normalise(&ItemId::from("query"), q.vector.clone())?;
        let c = Collection { space: q.space, kind: q.kind };
        let Some(g) = graphs.get(&c) else { return Ok(Vec::new()) };
        let ef = q.ef.unwrap_or(DEFAULT_EF_SEARCH).clamp(1, MAX_EF_SEARCH);
        let (exact_candidates, ef) = if mode == Mode::Graph {
            (None, ef)
        } else if q.exact || g.live() <= exact_limit(info.dim) {
            (Some(self.candidates(g, c, &q.filter)?), ef)
        } else if !q.filter.is_empty() {
            let cands = self.candidates(g, c, &q.filter)?;
            let n = cands.len();
            // Above the threshold the walk goes through rejected nodes and counts only the
            // accepted ones; a selective filter still thins the accepted neighbourhood the
            // walk sees, so its breadth grows with 1/√selectivity (at most 4×).
            if n <= exact_limit(info.dim) {
                (Some(cands), ef)
            } else {
                let widen = (g.live() as f64 / n as f64).sqrt().clamp(1.0, 4.0);
                (None, ((ef as f64 * widen).ceil() as usize).min(MAX_EF_SEARCH.max(ef)))
            }
        } else {
            (None, ef)
        };
        let scored = match exact_candidates {
            Some(cands) => self.exact(g, c, &v, q.k, &cands)?,
            None => g.search(&v, q.k, ef, &q.filter),
        };
        Ok(scored.into_iter().filter_map(|(s, score)| g.meta(s).map(|m| (m.item.clone(), score))).collect())
    }

    /// Brute force over `cands`: the graph's in-memory vectors, RocksDB for any it lacks.
    fn exact(&self, g: &Graph, c: Collection, q: &[f32], k: usize, cands: &[Slot]) -> Result<Vec<(Slot, f32)>, IndexError> {
        let (mut scored, missing) = g.score(q, cands);
        let cands = missing.as_slice();
        let cf = self.cf(CF_VECTORS)?;
        let keys: Vec<[u8; 7]> = cands.iter().map(|s| codec::vector_key(c, *s)).collect();
        scored.reserve(cands.len());
        for (slot, r) in cands.iter().zip(self.db.multi_get_cf(keys.iter().map(|k| (cf, k.as_slice())))) {
            let Some(b) = r.map_err(|e| self.storage(e))? else { continue };
            let (_, mut v) = codec::decode_vector(&b).ok_or_else(|| corrupt(&self.path, "vector", format!("slot {}", slot.0)))?;
            renormalise(&mut v);
            scored.push((*slot, dot(q, &v)));
        }
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(k);
        Ok(scored)
    }
}

/// Restores unit length after an f16 round trip (a no-op for f32 vectors, which are stored
/// normalised): `hnsw_rs`'s dot distance asserts `a·b ≤ 1.000002`.
pub(crate) fn renormalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && (norm - 1.0).abs() > 1e-6 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Candidate count up to which a search is exact (see [`EXACT_SEARCH_MAX_WORK`]).
fn exact_limit(dim: usize) -> usize {
    (EXACT_SEARCH_MAX_WORK / dim.max(1)).max(EXACT_SEARCH_MAX_CANDIDATES)
}

pub(crate) fn slot_meta(item: ItemId, rec: Option<&ItemRecord>) -> SlotMeta {
    SlotMeta {
        item,
        patient: rec.and_then(|r| r.patient.clone()),
        study: rec.and_then(|r| r.study.clone()),
        date: rec.and_then(|r| r.date),
    }
}

fn normalise(item: &ItemId, mut v: Vec<f32>) -> Result<Vec<f32>, IndexError> {
    if v.iter().any(|x| !x.is_finite()) {
        return Err(IndexError::BadVector { item: item.0.clone(), reason: "contains NaN or infinity" });
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        return Err(IndexError::BadVector { item: item.0.clone(), reason: "all zeros (no direction)" });
    }
    v.iter_mut().for_each(|x| *x /= norm);
    Ok(v)
}
