//! [`Index`]: the handle, its public types and the small helpers every part shares. The work is
//! split by concern:
//!
//! - `open`: opening (format check, creation, graph snapshots, replay, rebuild);
//! - `commit`: embedding spaces and atomic batches;
//! - `query`: reads (records, vectors, logs, counts) and search (graph or exact);
//! - `maintenance`: checkpoints, rebuilds, repair, verification,
//!   compaction, moving the secret out.
//!
//! The one place where external item ids and internal slots are mapped to each other.

mod commit;
mod maintenance;
mod open;
mod query;

pub(crate) use open::check_format;

use crate::codec::{Collection, Encoding};
use crate::error::IndexError;
use crate::graph::{Graph, SlotMeta};
use crate::ids::{ItemId, Kind, Slot, SpaceId};
use crate::record::ItemRecord;
use crate::secret::SecretState;
use crate::store::{self, CF_ERRORS, CF_INGEST_LOG};
use rocksdb::{WriteOptions, DB};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Searches whose filtered candidate set is at most this large are answered exactly (brute
/// force over the candidates' vectors, from memory): cheap at this size, and recall stays 1.0
/// where a filtered graph walk would lose neighbours.
pub const EXACT_SEARCH_MAX_CANDIDATES: usize = 4096;
/// ... or when scoring them costs at most this many multiply-adds (candidates × dimension:
/// 80k candidates at 50-d, 8k at 512-d): exact scoring reads the in-memory vectors, which is
/// faster than a filtered walk up to about there (`evindex bench --filters`).
pub const EXACT_SEARCH_MAX_WORK: usize = 1 << 22;
/// Default HNSW search breadth.
pub const DEFAULT_EF_SEARCH: usize = 96;
/// Upper bound of the search breadth: a larger `ef` is clamped to it (the result count `k` is not).
pub const MAX_EF_SEARCH: usize = 4096;

/// Vector storage format for new writes.
pub type VectorEncoding = Encoding;

/// How to open an index.
#[derive(Clone, Debug, Default)]
pub struct IndexOptions {
    /// Encoding of vectors written from now on (reads handle both). `None` (the default): each
    /// collection's vectors are written in the precision its graph holds them in — f16 when
    /// every vector stored in it is f16 — and a new collection's in that of the other
    /// collections of its space that hold vectors, else f32 ([`Index::space_precision`]); so a
    /// space filled in f16 stays f16 whoever writes to it next. `Some(e)`: written as `e`
    /// (an f32 vector written into an f16 collection makes the next open hold it as f32:
    /// nothing stored is rounded by an open).
    pub encoding: Option<VectorEncoding>,
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
    /// How the graph holds the vectors in memory: `f32`, or `f16` when every stored vector
    /// of the collection is f16 (half the memory).
    pub precision: &'static str,
    /// Milliseconds of each step of the load, in order (some overlap: the records are read
    /// while the snapshot loads): where an open's time goes, for `info` and the benchmarks.
    pub phases_ms: Vec<(&'static str, u64)>,
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

/// The stored vectors of one collection, by slot. The components of every row sit in a few
/// contiguous buffers (one per range of slots read, see [`StoredRows`]): large allocations,
/// which malloc maps on their own and hands back to the system when they are dropped. (A
/// `Vec<f32>` per row, 2 KB at 512-d, is small-chunk heap: freed after the open, it stayed
/// resident between the ids and filter facts kept, about as much memory again as the graph.)
struct Stored {
    dim: usize,
    /// The rows, part after part: the parts hold ascending, disjoint ranges of slots.
    parts: Vec<StoredRows>,
    /// First row of each part.
    starts: Vec<u32>,
    /// Row of each slot below the highest stored one; `NO_ROW` where none is stored.
    at: Vec<u32>,
    dead: HashSet<u32>,
}

/// The rows of one range of slots, in ascending slot order.
#[derive(Default)]
struct StoredRows {
    /// `dim` components per row.
    data: Vec<f32>,
    /// Slot of each row.
    slots: Vec<u32>,
    /// Item of each row.
    items: Vec<ItemId>,
    /// Rows stored as f32 (the others are f16).
    f32_rows: usize,
}

const NO_ROW: u32 = u32::MAX;

impl Stored {
    /// The rows read in `parts` (ascending, disjoint ranges of slots; a slot stored twice keeps
    /// the later row).
    fn from_parts(dim: usize, parts: Vec<StoredRows>) -> Self {
        let extent = parts.iter().filter_map(|p| p.slots.last()).max().map_or(0, |s| *s as usize + 1);
        let mut at = vec![NO_ROW; extent];
        let mut starts = Vec::with_capacity(parts.len());
        let mut row = 0u32;
        for p in &parts {
            starts.push(row);
            for s in &p.slots {
                at[*s as usize] = row;
                row += 1;
            }
        }
        Self { dim, parts, starts, at, dead: HashSet::new() }
    }
    /// True when the collection's graph should hold its vectors as IEEE halves: every stored
    /// row is f16 (so nothing is lost), or nothing is stored yet and `new_half` (the encoding
    /// new vectors will be written in) says so.
    fn half(&self, new_half: bool) -> bool {
        if self.parts.iter().all(|p| p.slots.is_empty()) {
            new_half
        } else {
            self.parts.iter().all(|p| p.f32_rows == 0)
        }
    }
    /// Part and index in it of row `r`.
    fn locate(&self, r: usize) -> (usize, usize) {
        let p = self.starts.partition_point(|s| *s as usize <= r) - 1;
        (p, r - self.starts[p] as usize)
    }
    fn row(&self, r: usize) -> &[f32] {
        let (p, i) = self.locate(r);
        &self.parts[p].data[i * self.dim..(i + 1) * self.dim]
    }
    /// The item of row `r`.
    fn item(&self, r: usize) -> &ItemId {
        let (p, i) = self.locate(r);
        &self.parts[p].items[i]
    }
    /// Moves the item of row `r` out (an empty id is left).
    fn take_item(&mut self, r: usize) -> ItemId {
        let (p, i) = self.locate(r);
        std::mem::replace(&mut self.parts[p].items[i], ItemId(String::new()))
    }
    /// One past the highest stored slot (0 when none is).
    #[cfg(test)]
    fn extent(&self) -> usize {
        self.at.len()
    }
    /// How many slots hold a vector.
    fn count(&self) -> usize {
        self.at.iter().filter(|r| **r != NO_ROW).count()
    }
    /// How many slots below `end` hold a vector.
    fn count_below(&self, end: usize) -> usize {
        self.at.iter().take(end).filter(|r| **r != NO_ROW).count()
    }
    fn vector(&self, s: Slot) -> Option<&[f32]> {
        match self.at.get(s.0 as usize) {
            Some(&r) if r != NO_ROW => Some(self.row(r as usize)),
            _ => None,
        }
    }
    /// Every stored slot from `start` on (tombstoned ones too), ascending.
    fn from(&self, start: usize) -> impl Iterator<Item = (Slot, &[f32])> {
        self.at.iter().enumerate().skip(start).filter(|(_, r)| **r != NO_ROW).map(|(i, r)| (Slot(i as u32), self.row(*r as usize)))
    }
    /// Every stored slot not tombstoned and its row, ascending.
    fn live_rows(&self) -> impl Iterator<Item = (Slot, u32)> + '_ {
        self.at.iter().enumerate().filter(|(i, r)| **r != NO_ROW && !self.dead.contains(&(*i as u32))).map(|(i, r)| (Slot(i as u32), *r))
    }
    /// Every stored slot not tombstoned, ascending.
    fn live(&self) -> impl Iterator<Item = (Slot, &ItemId, &[f32])> {
        self.live_rows().map(|(s, r)| (s, self.item(r as usize), self.row(r as usize)))
    }
}

impl Index {
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

    /// The filter facts of record `b` (patient, study, date), read without decoding the rest
    /// of it and without allocating a name `names` already holds: what an open reads of every
    /// live item. The names are taken from `names` (added when new).
    pub(crate) fn record_facts(&self, item: ItemId, b: &[u8], names: &mut HashSet<Arc<str>>) -> Result<SlotMeta, IndexError> {
        self.decoded.fetch_add(1, Ordering::Relaxed);
        let (f, _): (RecordFacts<'_>, _) =
            bincode::serde::borrow_decode_from_slice(b, bincode_config()).map_err(|e| corrupt(&self.path, "item record", e))?;
        let mut name = |n: Option<&str>| n.map(|n| crate::graph::interned(names, n));
        Ok(SlotMeta { item, patient: name(f.patient), study: name(f.study), date: f.date })
    }

    /// The on-disk format version the index is in now: [`crate::FORMAT_VERSION`] once a writer
    /// has opened it, an older one where only readers and passive opens have (they upgrade
    /// nothing).
    pub fn format_version(&self) -> Result<u32, IndexError> {
        open::stored_format(&self.db, &self.path)?.ok_or_else(|| corrupt(&self.path, "format version", "missing"))
    }

    /// How many item records this handle has decoded since it opened (opening decodes those of
    /// every live vector). For tests and measurements of what a read touches.
    pub fn records_decoded(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }

    pub(crate) fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, IndexError> {
        self.db.cf_handle(name).ok_or_else(|| corrupt(&self.path, "column family", name))
    }

    /// True when a collection that holds no vector yet is loaded as halves: vectors are
    /// written as f16 from now on.
    fn new_half(&self) -> bool {
        self.options.encoding == Some(Encoding::F16)
    }

    /// The encoding vectors of `c` are written in (see [`IndexOptions::encoding`]), given the
    /// graphs.
    fn write_encoding(&self, c: Collection, graphs: &HashMap<Collection, Graph>) -> Encoding {
        if let Some(e) = self.options.encoding {
            return e;
        }
        let held = match graphs.get(&c) {
            Some(g) => Some(g.is_half()),
            None => held_half(c.space, graphs),
        };
        if held == Some(true) {
            Encoding::F16
        } else {
            Encoding::F32
        }
    }

    /// The precision the graphs of `space` that hold vectors hold them in: f16 when every one
    /// of them holds halves, f32 when one holds f32; `None` when none holds a vector (a new
    /// space). What an index opened with the default [`IndexOptions::encoding`] writes in.
    pub fn space_precision(&self, space: SpaceId) -> Option<VectorEncoding> {
        let graphs = self.graphs.read().unwrap_or_else(|e| e.into_inner());
        held_half(space, &graphs).map(|half| if half { Encoding::F16 } else { Encoding::F32 })
    }

    fn collection_name(&self, c: Collection) -> String {
        let spaces = self.spaces.read().unwrap_or_else(|e| e.into_inner());
        format!("{}/{}", spaces.get(&c.space).map_or("?", |s| s.name.as_str()), c.kind)
    }
}

/// Whether the graphs of `space` that hold vectors hold them as halves (all of them), or
/// `None` when none holds a vector.
fn held_half(space: SpaceId, graphs: &HashMap<Collection, Graph>) -> Option<bool> {
    let mut held = graphs.iter().filter(|(c, g)| c.space == space && g.nodes() > 0).map(|(_, g)| g.is_half()).peekable();
    held.peek()?;
    Some(held.all(|h| h))
}

/// Restores unit length after an f16 round trip (a no-op for f32 vectors, which are stored
/// normalised): still needed, since the graph takes the dot product of unit vectors as their
/// cosine, so a vector off unit length would rank and score wrongly (scores above 1 among them).
pub(crate) fn renormalise(v: &mut [f32]) {
    if let Some(norm) = crate::walk::off_unit(v) {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The leading fields of an [`ItemRecord`] as bincode lays them out, up to the last that a
/// search filters on, borrowed from the stored bytes (the rest is not read).
#[derive(Deserialize)]
struct RecordFacts<'a> {
    #[serde(borrow)]
    _id: &'a str,
    _kind: Kind,
    #[serde(borrow)]
    _source: &'a str,
    #[serde(borrow)]
    patient: Option<&'a str>,
    #[serde(borrow)]
    study: Option<&'a str>,
    #[serde(deserialize_with = "crate::date::lenient")]
    date: Option<crate::date::StudyDate>,
}

pub(crate) fn slot_meta(item: ItemId, rec: Option<&ItemRecord>) -> SlotMeta {
    SlotMeta {
        item,
        patient: rec.and_then(|r| r.patient.as_deref()).map(Into::into),
        study: rec.and_then(|r| r.study.as_deref()).map(Into::into),
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
