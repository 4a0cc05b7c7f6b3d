//! Opening an index: the format check, creating a new one, loading every graph (snapshot and
//! replay, or a rebuild from the stored vectors).

use super::{
    bincode_config, corrupt, renormalise, slot_meta, snapshot_due, synced, GraphLoad, Index, IndexOptions, SnapshotHeader, SpaceInfo,
    Stored, StoredRows, Writer, SNAPSHOT_CHUNK,
};
use crate::codec::{self, Collection, Encoding};
use crate::error::IndexError;
use crate::graph::{Graph, SlotMeta, SCRATCH_PREFIX};
use crate::ids::{ItemId, Slot, SpaceId};
use crate::secret::SecretState;
use crate::snapshot;
use crate::store::{self, CF_GRAPH, CF_ITEMS, CF_LOOKUP, CF_META, CF_SLOTS, CF_VECTORS};
use rocksdb::{IteratorMode, WriteBatch, DB};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// Records read per batch while a collection loads (bounds what is held besides the graph).
const RECORD_CHUNK: usize = 4096;
/// A collection's records are read by one scan of all records when it has at least one in
/// this many of them (else by point reads).
const SCAN_ITEMS_FRACTION: u64 = 8;
/// Records stepped over before the mappings' merge seeks instead (see `facts_by_slot`).
const RECORD_STEPS: usize = 8;
/// Collections with at least this many slots are read by several threads.
const PARALLEL_READ_MIN: u64 = 16384;
/// Most threads reading one collection's vectors.
const MAX_READ_THREADS: usize = 4;

/// Milliseconds per step of a collection's load ([`GraphLoad::phases_ms`]).
type PhaseList = Vec<(&'static str, u64)>;

/// How a collection's graph came up.
enum Loaded {
    /// From the snapshot, then `replayed` newer vectors inserted.
    Snapshot { replayed: usize },
    /// Rebuilt from the stored vectors, for the reason given.
    Rebuilt { why: String },
}

/// What one thread of [`Index::load_direct`] read.
#[derive(Default)]
struct Placed {
    /// Slot and item of every stored vector read, ascending.
    items: SlotIds,
    /// Vectors from the snapshot's coverage on (to replay).
    later: StoredRows,
    /// Vectors stored into their nodes.
    placed: usize,
    /// A row the skeleton cannot take as it is (stale snapshot, or an f32 row in a collection
    /// guessed f16): the read stopped.
    mismatch: bool,
}

/// Slots and their item ids, the ids held in one buffer (a million small strings allocated
/// and freed one by one cost a direct load a tenth of a second; the ids are only compared).
#[derive(Default)]
struct SlotIds {
    slots: Vec<u32>,
    /// End of each id in `text`.
    ends: Vec<usize>,
    text: String,
}

impl SlotIds {
    fn push(&mut self, slot: u32, id: &str) {
        self.text.push_str(id);
        self.slots.push(slot);
        self.ends.push(self.text.len());
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn id(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }

    /// Each slot and id, in order.
    fn iter(&self) -> impl Iterator<Item = (u32, &str)> + '_ {
        self.slots.iter().enumerate().map(|(i, s)| (*s, self.id(i)))
    }
}

/// Appends the components `data` (stored as `enc`) to `out`, made unit length.
fn push_unit(enc: Encoding, data: &[u8], out: &mut Vec<f32>) {
    let at = out.len();
    codec::decode_components(enc, data, out);
    renormalise(&mut out[at..]);
}

/// Whether `facts` (in any order) name exactly the slots of `live`, each with
/// its item id: the item-to-slot mappings agree with the stored vectors.
fn facts_agree(facts: &[(u32, SlotMeta)], live: &SlotIds) -> bool {
    if facts.len() != live.len() {
        return false;
    }
    let Some(&top) = live.slots.iter().max() else { return true };
    // Position in `live` of each slot; taken (MAX) once a fact matched it, so a slot named
    // twice fails.
    let mut at = vec![u32::MAX; top as usize + 1];
    for (i, s) in live.slots.iter().enumerate() {
        at[*s as usize] = i as u32;
    }
    facts.iter().all(|(s, m)| match at.get_mut(*s as usize) {
        Some(p) if *p != u32::MAX && live.id(*p as usize) == m.item.as_str() => {
            *p = u32::MAX;
            true
        }
        _ => false,
    })
}

/// Where a snapshot load spent its time (part of [`GraphLoad::phases_ms`]).
#[derive(Default)]
struct PhaseTimes {
    read: std::time::Duration,
    check: std::time::Duration,
    decode: std::time::Duration,
    fill: std::time::Duration,
}

impl PhaseTimes {
    /// The snapshot's read, check and decode, in milliseconds.
    fn snapshot_ms(&self) -> [(&'static str, u64); 3] {
        [("snapshot_read", ms(self.read)), ("snapshot_check", ms(self.check)), ("snapshot_decode", ms(self.decode))]
    }
}

/// Whole milliseconds of `d`.
fn ms(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}

/// The secret of the index in `db` (stored, or the fingerprint of an outside one) after checking
/// its format version; `None` when it has none (a new database, or one that is not an index).
///
/// Writes nothing: the check of readers and passive opens. A format-2 index whose column
/// families are all there has the layout of this format and is read as it is; one that lacks
/// any is [`IndexError::FormatUpgradeNeeded`] (a writer's open upgrades it, see
/// [`check_format_or_upgrade`]); any other version is [`IndexError::FormatVersion`]. An index
/// of this format that lacks one (but `lookup`, whose look-ups then scan) is
/// [`IndexError::Damaged`].
pub(crate) fn check_format(db: &DB, path: &Path) -> Result<Option<SecretState>, IndexError> {
    let Some(found) = stored_format(db, path)? else { return Ok(None) };
    if found != store::FORMAT_VERSION {
        if !store::upgradable(found) {
            return Err(IndexError::FormatVersion { path: path.to_owned(), found, expected: store::FORMAT_VERSION });
        }
        if store::COLUMN_FAMILIES.iter().any(|name| db.cf_handle(name).is_none()) {
            return Err(IndexError::FormatUpgradeNeeded { path: path.to_owned(), found, expected: store::FORMAT_VERSION });
        }
        tracing::debug!(found, "a format-{found} index with every column family of format {} read as it is", store::FORMAT_VERSION);
    } else if let Some(name) = store::COLUMN_FAMILIES.iter().find(|name| **name != CF_LOOKUP && db.cf_handle(name).is_none()) {
        // Every index of this format was created with all of them (or upgraded to have them);
        // look-ups without their column family read every record (as before its keys exist).
        return Err(IndexError::Damaged {
            path: path.to_owned(),
            detail: format!("column family `{name}` is missing (an open as the index's writer creates it, empty)"),
        });
    }
    read_secret(db, path).map(Some)
}

/// A writer's [`check_format`]: an index of an older format that this build upgrades
/// ([`store::OLDEST_UPGRADABLE_FORMAT`] on) is upgraded in place first. Its layout differs from
/// this format's only by column families that [`store::open_db`] has just created where they were
/// missing (empty: `frames`, and `lookup`, which the open then fills from the records); what is
/// left is rewriting the version (one synced write), said in the log.
fn check_format_or_upgrade(db: &DB, path: &Path) -> Result<Option<SecretState>, IndexError> {
    let Some(found) = stored_format(db, path)? else { return Ok(None) };
    if found == store::FORMAT_VERSION || !store::upgradable(found) {
        return check_format(db, path);
    }
    // Nothing is written to an index whose secret does not read.
    let secret = read_secret(db, path)?;
    let storage = |source| store::access_error(path, source);
    for name in store::COLUMN_FAMILIES {
        db.cf_handle(name).ok_or_else(|| corrupt(path, "column family", name))?;
    }
    let cf_meta = db.cf_handle(CF_META).ok_or_else(|| corrupt(path, "column family", CF_META))?;
    let mut wb = WriteBatch::default();
    wb.put_cf(cf_meta, store::KEY_FORMAT_VERSION, store::FORMAT_VERSION.to_be_bytes());
    db.write_opt(wb, &synced()).map_err(storage)?;
    tracing::info!(
        path = %path.display(),
        from = found,
        to = store::FORMAT_VERSION,
        "index upgraded in place to format {}: its missing column families were created (empty), the version rewritten",
        store::FORMAT_VERSION
    );
    Ok(Some(secret))
}

/// The format version stored in `db`'s `meta`; `None` when there is none.
pub(super) fn stored_format(db: &DB, path: &Path) -> Result<Option<u32>, IndexError> {
    let cf_meta = db.cf_handle(CF_META).ok_or_else(|| corrupt(path, "column family", CF_META))?;
    let Some(v) = db.get_cf(cf_meta, store::KEY_FORMAT_VERSION).map_err(|source| store::access_error(path, source))? else {
        return Ok(None);
    };
    let found = u32::from_be_bytes(v.as_slice().try_into().map_err(|_| corrupt(path, "format version", "not 4 bytes"))?);
    Ok(Some(found))
}

/// The secret of the index in `db`: stored, or the fingerprint of one kept outside.
fn read_secret(db: &DB, path: &Path) -> Result<SecretState, IndexError> {
    let storage = |source| store::access_error(path, source);
    let cf_meta = db.cf_handle(CF_META).ok_or_else(|| corrupt(path, "column family", CF_META))?;
    let bytes32 = |v: Vec<u8>, what: &'static str| -> Result<[u8; 32], IndexError> {
        v.as_slice().try_into().map_err(|_| corrupt(path, what, "not 32 bytes"))
    };
    if let Some(s) = db.get_cf(cf_meta, store::KEY_SECRET).map_err(storage)? {
        return Ok(SecretState::Stored(bytes32(s, "secret")?));
    }
    let f = db.get_cf(cf_meta, store::KEY_SECRET_FINGERPRINT).map_err(storage)?.ok_or_else(|| corrupt(path, "secret", "missing"))?;
    Ok(SecretState::Outside { fingerprint: bytes32(f, "secret fingerprint")?, given: None })
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

/// Hands the heap the open freed back to the system. The open's reads run on several threads,
/// each allocating in its own malloc arena (rows decoded, records, read buffers); what they
/// free stays mapped in those arenas unless trimmed, and was measured as tens of MB at 100k
/// vectors, varying from run to run (`evindex probe`). glibc only; elsewhere a no-op.
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free heap pages to the system; it touches no live
    // allocation and is safe to call from any thread at any time.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Index {
    /// Opens the index at `path`, creating it when the directory is absent or empty. Loads every
    /// graph from its snapshot and replays the vectors written after it; rebuilds (and
    /// re-snapshots) a graph whose snapshot is missing, stale or corrupt. [`Index::graph_loads`]
    /// says what happened. An index of an older format that this build upgrades is upgraded in
    /// place first, unless the open is passive (see [`crate::FORMAT_VERSION`]).
    pub fn open(path: impl AsRef<Path>, options: IndexOptions) -> Result<Index, IndexError> {
        let path = path.as_ref().to_owned();
        let db = store::open_db(&path, !options.passive_open)?;
        // A passive open writes nothing, so it upgrades no format (it reads a format-2 index as it is).
        let checked = if options.passive_open { check_format(&db, &path)? } else { check_format_or_upgrade(&db, &path)? };
        let secret = match checked {
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
        release_freed_heap();
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
        // Every vector of the collection is about to be read: the kernel reads its table files
        // ahead while the snapshot loads (a cold open otherwise waits on each read in turn).
        let prefix = c.prefix();
        let end = codec::prefix_end(&prefix);
        store::read_ahead(&self.db, &self.path, CF_VECTORS, &prefix, end.as_deref());
        match self.load_direct(c, info, next)? {
            Some((g, replayed, phases_ms)) => self.finish_load(c, info, next, g, Loaded::Snapshot { replayed }, phases_ms, t0),
            None => self.load_stored(c, info, next, t0),
        }
    }

    /// The usual open of a collection: its snapshot's links, with every stored vector decoded
    /// straight into its node (one copy of the vectors, never two), then the vectors written
    /// after the snapshot inserted. `None` (nothing kept) when the snapshot is missing, empty,
    /// stale or ignored, or the collection mixes f32 and f16 rows in an order that was not
    /// guessed: [`Index::load_stored`] then loads it, and says why where it rebuilds.
    fn load_direct(&self, c: Collection, info: &SpaceInfo, next: u32) -> Result<Option<(Graph, usize, PhaseList)>, IndexError> {
        std::thread::scope(|s| {
            // The records of the live items, found through the item-to-slot mappings, are read
            // beside the snapshot and the vectors (on the core the snapshot's read leaves idle).
            let records = s.spawn(|| {
                let t = std::time::Instant::now();
                (self.facts_by_slot(c), t.elapsed())
            });
            self.load_direct_beside(c, info, next, || records.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        })
    }

    /// The filter facts of every item `c` maps to a slot, with its slot, in item order: the
    /// item-to-slot mappings (one per live vector) merged with one scan of the records.
    fn facts_by_slot(&self, c: Collection) -> Result<Vec<(u32, SlotMeta)>, IndexError> {
        let prefix = c.prefix();
        let mut slots =
            self.db.raw_iterator_cf_opt(self.cf(CF_SLOTS)?, store::bulk_read(Some((prefix.to_vec(), codec::prefix_end(&prefix)))));
        slots.seek_to_first();
        let mut records = self.db.raw_iterator_cf_opt(self.cf(CF_ITEMS)?, store::bulk_read(None));
        let (mut out, mut names, mut started) = (Vec::new(), HashSet::new(), false);
        while let (Some(k), Some(v)) = (slots.key(), slots.value()) {
            let id = k.get(prefix.len()..).unwrap_or_default();
            let slot = <[u8; 4]>::try_from(v).map_err(|_| corrupt(&self.path, "slot mapping", format!("{} bytes", v.len())))?;
            // Step to the record; seek when it is further than a few records on (the items of
            // other collections in between: a small collection among many items).
            let mut steps = 0;
            while !started || records.key().is_some_and(|r| r < id) {
                if steps == RECORD_STEPS || !started {
                    records.seek(id);
                    started = true;
                    break;
                }
                records.next();
                steps += 1;
            }
            let item = ItemId(String::from_utf8(id.to_vec()).map_err(|_| corrupt(&self.path, "slot mapping", "item id is not UTF-8"))?);
            let meta = match (records.key(), records.value()) {
                (Some(r), Some(b)) if r == id => self.record_facts(item, b, &mut names)?,
                _ => slot_meta(item, None),
            };
            out.push((u32::from_be_bytes(slot), meta));
            slots.next();
        }
        slots.status().map_err(|e| self.storage(e))?;
        records.status().map_err(|e| self.storage(e))?;
        Ok(out)
    }

    /// [`Index::load_direct`], given the thread reading the records.
    fn load_direct_beside(
        &self,
        c: Collection,
        info: &SpaceInfo,
        next: u32,
        records: impl FnOnce() -> (Result<Vec<(u32, SlotMeta)>, IndexError>, std::time::Duration),
    ) -> Result<Option<(Graph, usize, PhaseList)>, IndexError> {
        let mut phases = PhaseTimes::default();
        let Ok((covered, topo)) = self.read_topology(c, info.dim, next, &mut phases) else { return Ok(None) };
        if topo.is_empty() {
            return Ok(None);
        }
        // The graph's precision: f16 only when every stored vector is; guessed from the first
        // and checked on every row read.
        let Some(half) = self.first_row_is_f16(c)? else { return Ok(None) };
        let t = std::time::Instant::now();
        let mut g = Graph::skeleton(&topo, half);
        phases.fill = t.elapsed();
        let nodes = topo.len();
        drop(topo);
        let t = std::time::Instant::now();
        let parts = self.read_ranges(c, |ro| self.read_placed(c, info.dim, ro, &g, covered, half))?;
        let t_read = t.elapsed();
        if parts.iter().any(|p| p.mismatch) || parts.iter().map(|p| p.placed).sum::<usize>() != nodes {
            return Ok(None);
        }
        let dead = self.read_dead(c)?;
        let t = std::time::Instant::now();
        // Replay every vector written after the snapshot, tombstoned ones too (hidden): the
        // next snapshot must hold every stored slot below its coverage.
        let later: Vec<(Slot, &[f32])> = parts
            .iter()
            .flat_map(|p| p.later.slots.iter().enumerate().map(move |(i, s)| (Slot(*s), &p.later.data[i * info.dim..(i + 1) * info.dim])))
            .collect();
        g.insert_hidden(&later);
        let replayed = later.len();
        drop(later);
        g.covered = covered;
        g.pending = replayed;
        let t_insert = t.elapsed();
        let mut live = SlotIds::default();
        for p in &parts {
            for (s, id) in p.items.iter().filter(|(s, _)| !dead.contains(s)) {
                live.push(s, id);
            }
        }
        drop(parts);
        let t = std::time::Instant::now();
        let (facts, t_meta) = records();
        // The mappings are derivable (repair rebuilds them): used only where they name exactly
        // the live slots and their items, else the records are read by the vectors' item ids.
        let metas: Vec<(u32, SlotMeta)> = match facts {
            Ok(f) if facts_agree(&f, &live) => f,
            found => {
                let why = found.err().map_or_else(|| "they name other slots or items".to_owned(), |e| e.to_string());
                tracing::info!(collection = %format!("{}/{}", info.name, c.kind), reason = %why, "item-to-slot mappings not used: records read by the vectors' ids");
                let ids: Vec<ItemId> = live.iter().map(|(_, id)| ItemId(id.to_owned())).collect();
                let metas = self.live_metas(&ids.iter().collect::<Vec<_>>())?;
                live.slots.iter().zip(ids).zip(metas).map(|((slot, item), meta)| (*slot, SlotMeta { item, ..meta })).collect()
            }
        };
        let t_wait = t.elapsed();
        let t = std::time::Instant::now();
        for (slot, meta) in metas {
            g.set_meta(Slot(slot), meta);
        }
        let t_set = t.elapsed();
        let mut phases_ms = phases.snapshot_ms().to_vec();
        phases_ms.extend([
            ("links", ms(phases.fill)),
            ("read_vectors", ms(t_read)),
            ("insert", ms(t_insert)),
            ("records", ms(t_meta)),
            ("records_wait", ms(t_wait)),
            ("set_meta", ms(t_set)),
        ]);
        Ok(Some((g, replayed, phases_ms)))
    }

    /// The vectors of `c` that the bounds of `ro` cover, each stored into its node of `g` (a
    /// [`Graph::skeleton`] of the snapshot covering slots below `covered`), the ones from
    /// `covered` on kept for the replay.
    fn read_placed(
        &self,
        c: Collection,
        dim: usize,
        ro: rocksdb::ReadOptions,
        g: &Graph,
        covered: u32,
        half: bool,
    ) -> Result<Placed, IndexError> {
        let mut out = Placed::default();
        let mut v: Vec<f32> = Vec::with_capacity(dim);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_VECTORS)?, ro);
        it.seek_to_first();
        while let (Some(k), Some(bytes)) = (it.key(), it.value()) {
            let slot = self.vector_slot(c, k)?;
            let (item, enc, data) = self.split_row(slot, bytes, dim)?;
            if half && enc == Encoding::F32 {
                // An f32 row in a collection guessed all f16: loaded the general way.
                out.mismatch = true;
                return Ok(out);
            }
            if slot.0 < covered {
                let stored = if enc == Encoding::F32 && !half {
                    g.set_vector_le(slot, data)
                } else {
                    v.clear();
                    push_unit(enc, data, &mut v);
                    g.set_vector(slot, &v)
                };
                if !stored {
                    // Below the snapshot's coverage but none of its nodes: stale.
                    out.mismatch = true;
                    return Ok(out);
                }
                out.placed += 1;
            } else {
                out.later.slots.push(slot.0);
                push_unit(enc, data, &mut out.later.data);
            }
            out.items.push(slot.0, item);
            it.next();
        }
        it.status().map_err(|e| self.storage(e))?;
        Ok(out)
    }

    /// The slot, item and components of stored vector `(k, bytes)` of collection `c`: the
    /// components (f16 ones widened) appended to `out`, made unit length; the encoding they
    /// were stored in.
    pub(crate) fn decode_row<'b>(
        &self,
        c: Collection,
        k: &[u8],
        bytes: &'b [u8],
        dim: usize,
        out: &mut Vec<f32>,
    ) -> Result<(Slot, &'b str, Encoding), IndexError> {
        let slot = self.vector_slot(c, k)?;
        let (item, enc, data) = self.split_row(slot, bytes, dim)?;
        push_unit(enc, data, out);
        Ok((slot, item, enc))
    }

    /// The slot of vector key `k` of collection `c`.
    fn vector_slot(&self, c: Collection, k: &[u8]) -> Result<Slot, IndexError> {
        match codec::decode_vector_key(k) {
            Some((kc, slot)) if kc == c => Ok(slot),
            _ => Err(corrupt(&self.path, "vector key", format!("{k:?}"))),
        }
    }

    /// The item, encoding and component bytes of stored vector `bytes` of `slot`, checked to
    /// be `dim` components.
    fn split_row<'b>(&self, slot: Slot, bytes: &'b [u8], dim: usize) -> Result<(&'b str, Encoding, &'b [u8]), IndexError> {
        let (item, enc, data) = codec::split_vector(bytes).ok_or_else(|| corrupt(&self.path, "vector", format!("slot {}", slot.0)))?;
        let n = data.len() / enc.width();
        if n != dim {
            return Err(corrupt(&self.path, "vector", format!("slot {} has dimension {n}, space has {dim}", slot.0)));
        }
        Ok((item, enc, data))
    }

    /// Whether the first stored vector of `c` is f16 (`None` when it has none).
    fn first_row_is_f16(&self, c: Collection) -> Result<Option<bool>, IndexError> {
        let prefix = c.prefix();
        let mut it =
            self.db.raw_iterator_cf_opt(self.cf(CF_VECTORS)?, store::bulk_read(Some((prefix.to_vec(), codec::prefix_end(&prefix)))));
        it.seek_to_first();
        let first = it.value().map(|v| v.first() == Some(&Encoding::F16.code()));
        it.status().map_err(|e| self.storage(e))?;
        Ok(first)
    }

    /// [`Index::load_collection`] from every stored vector read into memory first: the snapshot
    /// checked against them, or the graph rebuilt from them.
    fn load_stored(&self, c: Collection, info: &SpaceInfo, next: u32, t0: std::time::Instant) -> Result<(Graph, GraphLoad), IndexError> {
        let mut stored = self.read_collection(c, info.dim)?;
        let t_read = t0.elapsed();
        let mut phases = PhaseTimes::default();
        let live: Vec<(Slot, u32)> = stored.live_rows().collect();
        // The records (filter facts of every live slot) are read beside the snapshot's load.
        let t2 = std::time::Instant::now();
        let mut t_meta = std::time::Duration::ZERO;
        let (restored, metas) = std::thread::scope(|s| {
            let metas = s.spawn(|| {
                let ids: Vec<&ItemId> = live.iter().map(|(_, r)| stored.item(*r as usize)).collect();
                let metas = self.live_metas(&ids);
                (metas, t2.elapsed())
            });
            let restored = self.restore(c, info.dim, next, &stored, &mut phases);
            let (metas, took) = metas.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            t_meta = took;
            (restored, metas)
        });
        let metas = metas?;
        let (mut g, loaded) = match restored {
            Ok((g, replayed)) => (g, Loaded::Snapshot { replayed }),
            Err(why) => (Graph::new(info.dim, stored.half(self.new_half())), Loaded::Rebuilt { why }),
        };
        let t1 = std::time::Instant::now();
        if let Loaded::Rebuilt { .. } = loaded {
            let rows: Vec<(Slot, &[f32])> = live.iter().map(|(s, r)| (*s, stored.row(*r as usize))).collect();
            g.insert_hidden(&rows);
        } else {
            // Replay every vector written after the snapshot, tombstoned ones too (hidden):
            // the next snapshot must hold every stored slot below its coverage.
            let rows: Vec<(Slot, &[f32])> = stored.from(g.covered as usize).collect();
            g.insert_hidden(&rows);
            g.pending = rows.len();
        }
        let t_insert = t1.elapsed();
        let t3 = std::time::Instant::now();
        for ((slot, row), mut meta) in live.iter().zip(metas) {
            meta.item = stored.take_item(*row as usize);
            g.set_meta(*slot, meta);
        }
        let t_set = t3.elapsed();
        drop(live);
        let mut phases_ms = vec![("read_vectors", ms(t_read))];
        phases_ms.extend(phases.snapshot_ms());
        phases_ms.extend([("fill", ms(phases.fill)), ("records", ms(t_meta)), ("insert", ms(t_insert)), ("set_meta", ms(t_set))]);
        if let Loaded::Rebuilt { why } = &loaded {
            tracing::info!(collection = %format!("{}/{}", info.name, c.kind), reason = %why, "graph rebuilt from the stored vectors");
            if !(self.options.passive_open || self.is_reader()) {
                // Persist the rebuilt graph and drop the tombstoned vectors it no longer holds.
                self.write_snapshot(c, next, &g, Some(&stored.dead))?;
                (g.covered, g.pending) = (next, 0);
            }
        }
        self.finish_load(c, info, next, g, loaded, phases_ms, t0)
    }

    /// The [`GraphLoad`] of a loaded collection; on a writer, a snapshot is written when the
    /// replay was long or one is due.
    #[allow(clippy::too_many_arguments)]
    fn finish_load(
        &self,
        c: Collection,
        info: &SpaceInfo,
        next: u32,
        mut g: Graph,
        loaded: Loaded,
        phases_ms: PhaseList,
        t0: std::time::Instant,
    ) -> Result<(Graph, GraphLoad), IndexError> {
        let collection = format!("{}/{}", info.name, c.kind);
        tracing::debug!(collection = %collection, live = g.live(), phases_ms = ?phases_ms, "collection loaded");
        let (how, reason, replayed) = match loaded {
            Loaded::Snapshot { replayed } => ("snapshot", None, replayed),
            Loaded::Rebuilt { why } => ("rebuilt", Some(why), 0),
        };
        let writes = !(self.options.passive_open || self.is_reader());
        if writes && how == "snapshot" && (replayed >= 1024 || snapshot_due(&g)) {
            self.write_snapshot(c, next, &g, None)?;
            (g.covered, g.pending) = (next, 0);
        }
        let precision = if g.is_half() { "f16" } else { "f32" };
        let (live, millis) = (g.live(), t0.elapsed().as_millis() as u64);
        Ok((g, GraphLoad { collection, how, reason, replayed, live, millis, precision, phases_ms }))
    }

    /// The filter facts of the item of each of `live`, from the records; their item ids are
    /// left empty, for the caller to move in. Where the collection's
    /// items are a good part of all items, one ordered scan of the records (around the block
    /// cache) merged with the sorted ids; else point reads in sorted batches.
    fn live_metas(&self, live: &[&ItemId]) -> Result<Vec<SlotMeta>, IndexError> {
        let cf = self.cf(CF_ITEMS)?;
        let mut metas: Vec<SlotMeta> = live.iter().map(|_| slot_meta(ItemId(String::new()), None)).collect();
        let items = self.db.property_int_value_cf(cf, "rocksdb.estimate-num-keys").ok().flatten().unwrap_or(u64::MAX);
        if (live.len() as u64).saturating_mul(SCAN_ITEMS_FRACTION) < items {
            let ro = store::bulk_read(None);
            let mut names = HashSet::new();
            for (n, chunk) in live.chunks(RECORD_CHUNK).enumerate() {
                let keys: Vec<&str> = chunk.iter().map(|i| i.as_str()).collect();
                for (i, r) in self.db.batched_multi_get_cf_opt(cf, keys.iter(), false, &ro).into_iter().enumerate() {
                    if let Some(b) = r.map_err(|e| self.storage(e))? {
                        metas[n * RECORD_CHUNK + i] = self.record_facts(ItemId(String::new()), &b, &mut names)?;
                    }
                }
            }
            return Ok(metas);
        }
        // Large collections: the sorted ids in one run per thread, each merged with its own scan.
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).clamp(1, MAX_READ_THREADS);
        let runs = if (live.len() as u64) < PARALLEL_READ_MIN { 1 } else { threads };
        for (i, meta) in self.scan_metas(live, runs)? {
            metas[i as usize] = meta;
        }
        Ok(metas)
    }

    /// The facts of each of `live` that has a record (by its index in `live`), read by `runs`
    /// threads each merging its run of the sorted ids with one scan of the records.
    fn scan_metas(&self, live: &[&ItemId], runs: usize) -> Result<Vec<(u32, SlotMeta)>, IndexError> {
        let mut order: Vec<u32> = (0..live.len() as u32).collect();
        order.sort_unstable_by(|a, b| live[*a as usize].cmp(live[*b as usize]));
        let scan = |run: &[u32]| self.merge_records(live, run);
        let found: Vec<Vec<(u32, SlotMeta)>> = if runs <= 1 || order.len() < 2 {
            vec![scan(&order)?]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = order.chunks(order.len().div_ceil(runs)).map(|run| s.spawn(move || scan(run))).collect();
                handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect::<Result<Vec<_>, _>>()
            })?
        };
        Ok(found.into_iter().flatten().collect())
    }

    /// The facts of `live[i]` for each `i` of `run` (ordered by id) that has a record: one scan
    /// of the records from the first id of the run on, merged with it.
    fn merge_records(&self, live: &[&ItemId], run: &[u32]) -> Result<Vec<(u32, SlotMeta)>, IndexError> {
        let id = |i: u32| live[i as usize].as_str().as_bytes();
        let mut found = Vec::with_capacity(run.len());
        let mut names = HashSet::new();
        let Some(&first) = run.first() else { return Ok(found) };
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_ITEMS)?, store::bulk_read(Some((id(first).to_vec(), None))));
        it.seek_to_first();
        let mut next = run.iter().peekable();
        while let (Some(k), Some(&&i)) = (it.key(), next.peek()) {
            match k.cmp(id(i)) {
                std::cmp::Ordering::Less => it.next(),
                std::cmp::Ordering::Equal => {
                    let v = it.value().ok_or_else(|| corrupt(&self.path, "item record", "no value"))?;
                    found.push((i, self.record_facts(ItemId(String::new()), v, &mut names)?));
                    next.next();
                }
                // No record for this id.
                std::cmp::Ordering::Greater => {
                    next.next();
                }
            }
        }
        it.status().map_err(|e| self.storage(e))?;
        Ok(found)
    }

    /// Every stored vector of `c` (f16 ones re-normalised in f32) and its tombstones. Large
    /// collections are read in parallel, one range of slots per thread, around the block cache.
    pub(super) fn read_collection(&self, c: Collection, dim: usize) -> Result<Stored, IndexError> {
        let mut stored = Stored::from_parts(dim, self.read_ranges(c, |ro| self.read_rows(c, dim, ro))?);
        stored.dead = self.read_dead(c)?;
        Ok(stored)
    }

    /// [`Index::read_collection`] in `parts` ranges of slots below `top`.
    #[cfg(test)]
    fn read_collection_in(&self, c: Collection, dim: usize, top: u64, parts: u64) -> Result<Stored, IndexError> {
        let mut stored = Stored::from_parts(dim, self.read_ranges_in(c, top, parts, |ro| self.read_rows(c, dim, ro))?);
        stored.dead = self.read_dead(c)?;
        Ok(stored)
    }

    /// `read` over the vectors of `c`, in ranges of slots read by one thread each (one range
    /// for a small collection), around the block cache: what each returned, in slot order.
    fn read_ranges<T: Send>(
        &self,
        c: Collection,
        read: impl Fn(rocksdb::ReadOptions) -> Result<T, IndexError> + Sync,
    ) -> Result<Vec<T>, IndexError> {
        let prefix = c.prefix();
        // The highest stored slot bounds the ranges (one seek).
        let mut last =
            self.db.raw_iterator_cf_opt(self.cf(CF_VECTORS)?, store::bulk_read(Some((prefix.to_vec(), codec::prefix_end(&prefix)))));
        last.seek_to_last();
        let top = match last.key() {
            Some(k) => self.vector_slot(c, k)?.0 as u64 + 1,
            None => {
                last.status().map_err(|e| self.storage(e))?;
                0
            }
        };
        drop(last);
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).clamp(1, MAX_READ_THREADS);
        let parts = if top < PARALLEL_READ_MIN { 1 } else { threads as u64 };
        self.read_ranges_in(c, top, parts, read)
    }

    /// [`Index::read_ranges`] in `parts` ranges of slots below `top` (the last one open-ended).
    fn read_ranges_in<T: Send>(
        &self,
        c: Collection,
        top: u64,
        parts: u64,
        read: impl Fn(rocksdb::ReadOptions) -> Result<T, IndexError> + Sync,
    ) -> Result<Vec<T>, IndexError> {
        let prefix = c.prefix();
        let end = codec::prefix_end(&prefix);
        let parts = parts.max(1);
        // Range i: slots [top * i / parts, top * (i + 1) / parts); the last one open-ended.
        let bound = |i: u64| (i < parts).then(|| codec::vector_key(c, Slot((top * i / parts) as u32)).to_vec());
        let range = |i: u64| {
            let lower = if i == 0 { prefix.to_vec() } else { bound(i).unwrap_or_else(|| prefix.to_vec()) };
            let upper = if i + 1 < parts { bound(i + 1) } else { end.clone() };
            store::bulk_read(Some((lower, upper)))
        };
        if parts == 1 {
            return Ok(vec![read(range(0))?]);
        }
        std::thread::scope(|s| {
            let (read, range) = (&read, &range);
            let handles: Vec<_> = (0..parts).map(|i| s.spawn(move || read(range(i)))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect::<Result<Vec<_>, _>>()
        })
    }

    /// The tombstoned slots of `c`.
    fn read_dead(&self, c: Collection) -> Result<HashSet<u32>, IndexError> {
        let mut dead = HashSet::new();
        let dprefix = codec::dead_prefix(c);
        let ro = store::bulk_read(Some((dprefix.clone(), codec::prefix_end(&dprefix))));
        for kv in self.db.iterator_cf_opt(self.cf(CF_GRAPH)?, ro, IteratorMode::Start) {
            let (k, _) = kv.map_err(|e| self.storage(e))?;
            if !k.starts_with(&dprefix) {
                break;
            }
            let s = codec::decode_dead_key(&k).ok_or_else(|| corrupt(&self.path, "tombstone key", format!("{k:?}")))?;
            dead.insert(s.0);
        }
        Ok(dead)
    }

    /// The vectors of `c` that the bounds of `ro` cover, decoded straight into one buffer.
    fn read_rows(&self, c: Collection, dim: usize, ro: rocksdb::ReadOptions) -> Result<StoredRows, IndexError> {
        let mut rows = StoredRows::default();
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_VECTORS)?, ro);
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let (slot, item, enc) = self.decode_row(c, k, v, dim, &mut rows.data)?;
            rows.f32_rows += usize::from(enc == Encoding::F32);
            rows.slots.push(slot.0);
            rows.items.push(ItemId(item.to_owned()));
            it.next();
        }
        it.status().map_err(|e| self.storage(e))?;
        Ok(rows)
    }

    /// Loads `c`'s snapshot and checks it against the stored vectors. Returns the graph (nodes
    /// not yet visible) and how many newer vectors must be replayed, or why it cannot be used.
    /// `c`'s snapshot, read and checked against its header and checksum: the slots it covers
    /// (every stored vector below is one of its nodes when it is up to date) and its topology;
    /// or why it cannot be used.
    fn read_topology(&self, c: Collection, dim: usize, next: u32, phases: &mut PhaseTimes) -> Result<(u32, snapshot::Topology), String> {
        let t = std::time::Instant::now();
        let cf = self.cf(CF_GRAPH).map_err(|e| e.to_string())?;
        if self.options.ignore_snapshots {
            return Err("snapshots ignored by option".into());
        }
        // Read once: around the block cache.
        let ro = store::bulk_read(None);
        let Some(h) = self.db.get_cf_opt(cf, codec::snapshot_header_key(c), &ro).map_err(|e| format!("reading the snapshot: {e}"))? else {
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
            // Pinned: copied once, into the blob.
            let chunk =
                self.db.get_pinned_cf_opt(cf, codec::snapshot_chunk_key(c, i), &ro).map_err(|e| format!("reading the snapshot: {e}"))?;
            blob.extend_from_slice(&chunk.ok_or_else(|| format!("snapshot chunk {i} missing"))?);
        }
        phases.read = t.elapsed();
        let t = std::time::Instant::now();
        if blob.len() as u64 != h.bytes || <[u8; 32]>::from(Sha256::digest(&blob)) != h.sha256 {
            return Err("snapshot checksum mismatch".into());
        }
        phases.check = t.elapsed();
        let t = std::time::Instant::now();
        let topo = snapshot::decode(&blob).map_err(|e| format!("snapshot: {e}"))?;
        drop(blob);
        phases.decode = t.elapsed();
        if topo.params.dim as usize != dim || topo.len() as u64 != h.nodes {
            return Err("snapshot does not match its header".into());
        }
        Ok((h.covered, topo))
    }

    fn restore(&self, c: Collection, dim: usize, next: u32, stored: &Stored, phases: &mut PhaseTimes) -> Result<(Graph, usize), String> {
        let (covered, topo) = self.read_topology(c, dim, next, phases)?;
        // Stale when the stored vectors below `covered` are not exactly the snapshot's nodes.
        let below = stored.count_below(covered as usize);
        if below != topo.len() || topo.slots().any(|s| s >= covered || stored.vector(Slot(s)).is_none()) {
            return Err(format!("stale snapshot: {} nodes, {below} stored vectors below slot {}", topo.len(), covered));
        }
        if topo.is_empty() {
            let mut g = Graph::new(dim, stored.half(self.new_half()));
            g.covered = covered;
            let replay = stored.from(covered as usize).count();
            return Ok((g, replay));
        }
        // Filled straight from the snapshot: searchable and insertable at once.
        let t = std::time::Instant::now();
        let mut g = Graph::from_snapshot(topo, stored.half(self.new_half()), |s| stored.vector(s));
        phases.fill = t.elapsed();
        g.covered = covered;
        let replay = stored.from(covered as usize).count();
        Ok((g, replay))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ids::Kind;
    use crate::record::ItemRecord;
    use crate::search::{Filter, Query};
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use std::sync::Arc;

    const DIM: usize = 128;
    /// The fixture's live videos: 1500, less the 137 deleted.
    const LIVE_VIDEOS: usize = 1363;

    fn unit(rng: &mut StdRng) -> Vec<f32> {
        let v: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    /// 1500 videos (10 patients, 30 studies, 20 days) and 40 reports whose ids sort among
    /// theirs, both embedded; some videos re-embedded (their old slots dead), some deleted; all
    /// flushed into table files. Returns the space.
    fn fixture(index: &Index) -> SpaceId {
        let mut rng = StdRng::seed_from_u64(21);
        let space = index.ensure_space("s", DIM).unwrap();
        let mut b = index.batch();
        for i in 0..1500 {
            let id = format!("i{i:05}");
            let mut r = ItemRecord::new(id.as_str(), Kind::Video, "");
            r.patient = Some(format!("p{}", i % 10));
            r.study = Some(format!("s{}", i % 30));
            r.date = Some(format!("2021-03-{:02}", 1 + i % 20).parse().unwrap());
            b.put_item(r);
            b.put_vector(space, id.as_str(), Kind::Video, unit(&mut rng));
        }
        for i in 0..40 {
            let id = format!("i{:05}r", i * 37);
            let mut r = ItemRecord::new(id.as_str(), Kind::Report, "");
            r.patient = Some(format!("p{}", i % 10));
            b.put_item(r);
            b.put_vector(space, id.as_str(), Kind::Report, unit(&mut rng));
        }
        index.commit(b).unwrap();
        let mut b = index.batch();
        for i in (0..1500).step_by(7) {
            b.put_vector(space, format!("i{i:05}").as_str(), Kind::Video, unit(&mut rng));
        }
        for i in (3..1500).step_by(11) {
            b.delete_item(format!("i{i:05}").as_str());
        }
        index.commit(b).unwrap();
        index.compact().unwrap();
        space
    }

    fn filters() -> Vec<Filter> {
        let day = |d: &str| Some(d.parse().unwrap());
        vec![
            Filter::default(),
            Filter { patient: Some("p3".into()), ..Filter::default() },
            Filter { study: Some("s7".into()), ..Filter::default() },
            Filter { since: day("2021-03-05"), until: day("2021-03-09"), ..Filter::default() },
            Filter { patient: Some("p4".into()), since: day("2021-03-10"), ..Filter::default() },
            Filter { patient: Some("nobody".into()), ..Filter::default() },
        ]
    }

    /// Every answer of `filters` for both kinds: the ids of all candidates, exactly.
    fn answers(index: &Index, space: SpaceId) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for kind in [Kind::Video, Kind::Report] {
            for f in filters() {
                let mut q = Query::new(space, kind, vec![1.0; DIM], 5000);
                q.exact = true;
                q.filter = f;
                let mut ids: Vec<String> = index.search_ids(&q).unwrap().into_iter().map(|(id, _)| id.0).collect();
                ids.sort();
                out.push(ids);
            }
        }
        out
    }

    /// An open reads every vector, record and snapshot around the block cache, and all column
    /// families share one cache (RocksDB's default is a 32 MiB cache each).
    #[test]
    fn an_open_reads_around_one_shared_block_cache() {
        let dir = tempfile::tempdir().unwrap();
        fixture(&Index::open(dir.path(), IndexOptions::default()).unwrap());
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let videos = index.graph_loads().iter().find(|l| l.collection == "s/video").unwrap();
        assert_eq!(videos.live, LIVE_VIDEOS);
        for name in store::COLUMN_FAMILIES {
            let capacity = index.db.property_int_value_cf(index.cf(name).unwrap(), "rocksdb.block-cache-capacity").unwrap();
            assert_eq!(capacity, Some(store::BLOCK_CACHE_BYTES as u64), "{name}");
        }
        let usage = index.db.property_int_value("rocksdb.block-cache-usage").unwrap().unwrap();
        // The vectors alone are 1500 x 512 bytes.
        assert!(usage < 128 << 10, "block cache holds {usage} bytes after the open");
    }

    /// Filter facts come from the records however they are read (one merged scan for the videos,
    /// point reads for the few reports): every filter answers as it did before the reopen.
    #[test]
    fn filters_answer_alike_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
            let space = fixture(&index);
            answers(&index, space)
        };
        assert!(before[1].len() > 100 && before[2].len() > 10 && !before[4].is_empty() && before[5].is_empty(), "{before:?}");
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = index.space("s").unwrap().id;
        assert_eq!(answers(&index, space), before);
        let reader = Index::open_reader(dir.path()).unwrap();
        assert_eq!(answers(&reader, space), before);
    }

    /// A checkpoint flushes the write buffers once they are large (a big snapshot would be a
    /// long log for the next open to replay) and leaves a small tail in the log.
    #[test]
    fn a_checkpoint_flushes_large_write_buffers_only() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = fixture(&index);
        let mut b = index.batch();
        b.put_item(ItemRecord::new("late", Kind::Video, ""));
        b.put_vector(space, "late", Kind::Video, vec![1.0; DIM]);
        index.commit(b).unwrap();
        let buffered =
            |name: &'static str| index.db.property_int_value_cf(index.cf(name).unwrap(), "rocksdb.num-entries-active-mem-table").unwrap();
        assert!(buffered(CF_VECTORS) > Some(0) && buffered(CF_ITEMS) > Some(0));
        index.checkpoint().unwrap();
        assert!(buffered(CF_VECTORS) > Some(0), "a small tail is left in the log");
        index.flush_if_over(u64::MAX).unwrap();
        assert!(buffered(CF_VECTORS) > Some(0));
        index.flush_if_over(0).unwrap();
        for name in store::COLUMN_FAMILIES {
            assert_eq!(buffered(name), Some(0), "{name}");
        }
        drop(index);
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        assert_eq!(index.search_ids(&Query::new(space, Kind::Video, vec![1.0; DIM], 1)).unwrap()[0].0 .0, "late");
    }

    /// The usual open (the snapshot's links, every vector decoded straight into its node) gives
    /// the graph that reading every stored vector first gives: the same nodes and vectors (bit
    /// for bit), live slots and facts, replay and answers; with vectors written, re-embedded
    /// and deleted after the snapshot.
    #[test]
    fn a_direct_load_is_the_stored_load() {
        let dir = tempfile::tempdir().unwrap();
        {
            let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
            let space = fixture(&index);
            index.checkpoint().unwrap();
            let mut rng = StdRng::seed_from_u64(5);
            let mut b = index.batch();
            // Re-embeddings of items the fixture kept (it deleted every 11th from 3 on).
            for i in (0..1500).step_by(13).filter(|i| i % 11 != 3) {
                b.put_vector(space, format!("i{i:05}").as_str(), Kind::Video, unit(&mut rng));
            }
            for i in 1500..1600 {
                let id = format!("i{i:05}");
                b.put_item(ItemRecord::new(id.as_str(), Kind::Video, ""));
                b.put_vector(space, id.as_str(), Kind::Video, unit(&mut rng));
            }
            index.commit(b).unwrap();
            let mut b = index.batch();
            for i in (5..1600).step_by(17).filter(|i| i % 11 != 3) {
                b.delete_item(format!("i{i:05}").as_str());
            }
            index.commit(b).unwrap();
        }
        // Passive: nothing written, so both loads see the same snapshot.
        let index = Index::open(dir.path(), IndexOptions { passive_open: true, ..IndexOptions::default() }).unwrap();
        let space = index.space("s").unwrap().id;
        let load = index.graph_loads().iter().find(|l| l.collection == "s/video").unwrap().clone();
        assert_eq!(load.how, "snapshot");
        assert!(load.phases_ms.iter().any(|(p, _)| *p == "links"), "the open did not load directly: {load:?}");
        let c = Collection { space, kind: Kind::Video };
        let info = index.read_spaces().unwrap()[&space].clone();
        let next = index.read_counters().unwrap()[&c];
        let decoded = index.records_decoded();
        let (direct, replayed, _) = index.load_direct(c, &info, next).unwrap().unwrap();
        // Each live item's record read once: through the item-to-slot mappings.
        assert_eq!(index.records_decoded() - decoded, direct.live() as u64);
        let (stored, stored_load) = index.load_stored(c, &info, next, std::time::Instant::now()).unwrap();
        assert_eq!(stored_load.how, "snapshot");
        assert!(replayed > 100, "{replayed}");
        assert_eq!((replayed, direct.covered, direct.pending), (stored_load.replayed, stored.covered, stored.pending));
        assert_eq!(direct.live(), load.live);
        let slots = stored.node_slots();
        assert_eq!(direct.node_slots(), slots);
        let facts = |g: &Graph| -> Vec<String> { g.live_slots().map(|(s, m)| format!("{s:?} {m:?}")).collect() };
        assert_eq!(facts(&direct), facts(&stored));
        let mut rng = StdRng::seed_from_u64(8);
        for _ in 0..3 {
            let q = unit(&mut rng);
            let bits = |g: &Graph| -> Vec<(Slot, u32)> { g.score(&q, &slots).0.into_iter().map(|(s, x)| (s, x.to_bits())).collect() };
            assert_eq!(bits(&direct), bits(&stored));
        }
        // The reports: a small collection whose items sit among the videos' (the mappings'
        // merge seeks over them).
        let r = Collection { space, kind: Kind::Report };
        let decoded = index.records_decoded();
        let (reports, _, _) = index.load_direct(r, &info, index.read_counters().unwrap()[&r]).unwrap().unwrap();
        assert_eq!((reports.live() as u64, index.records_decoded() - decoded), (40, 40));
        let (reports_stored, _) = index.load_stored(r, &info, index.read_counters().unwrap()[&r], std::time::Instant::now()).unwrap();
        assert_eq!(facts(&reports), facts(&reports_stored));
        assert!(facts(&reports).iter().all(|f| f.contains("Some(\"p")), "{:?}", facts(&reports));
        // Mappings that disagree with the vectors (one missing, one naming another slot) are
        // not trusted: the records are read by the vectors' item ids, with the same facts.
        let cf = index.cf(CF_SLOTS).unwrap();
        index.db.delete_cf(cf, codec::slot_key(c, "i00001")).unwrap();
        index.db.put_cf(cf, codec::slot_key(c, "i00002"), 7u32.to_be_bytes()).unwrap();
        let decoded = index.records_decoded();
        let (again, _, _) = index.load_direct(c, &info, next).unwrap().unwrap();
        assert!(index.records_decoded() - decoded > again.live() as u64);
        assert_eq!(facts(&again), facts(&stored));
    }

    /// The records of a collection read by any number of threads (each merging its run of the
    /// sorted ids with its own scan) are the same facts, found for every live item.
    #[test]
    fn records_read_alike_in_any_number_of_runs() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = fixture(&index);
        let stored = index.read_collection(Collection { space, kind: Kind::Video }, DIM).unwrap();
        let live: Vec<&ItemId> = stored.live().map(|(_, id, _)| id).collect();
        assert_eq!(live.len(), LIVE_VIDEOS);
        let facts = |runs: usize| -> Vec<String> {
            let mut f: Vec<String> =
                index.scan_metas(&live, runs).unwrap().into_iter().map(|(i, m)| format!("{} {m:?}", live[i as usize].0)).collect();
            f.sort();
            f
        };
        let one = facts(1);
        assert_eq!(one.len(), LIVE_VIDEOS, "a fact for every live item");
        assert!(one.iter().all(|f| f.contains("Some(\"p")), "{:?}", &one[..3]);
        for runs in [2, 3, 4, 7, 5000] {
            assert_eq!(facts(runs), one, "{runs} runs");
        }
        assert!(index.scan_metas(&[], 4).unwrap().is_empty());
    }

    /// The facts an open reads of a record (its leading fields, borrowed) are those of the
    /// whole record decoded, with every field set or none, and names shared between records.
    #[test]
    fn record_facts_are_the_whole_records_facts() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let mut full = ItemRecord::new("v1", Kind::Video, "/exports/a/1.dcm");
        full.patient = Some("pk-1".into());
        full.study = Some("1.2.840.1".into());
        full.date = Some("2021-03-04".parse().unwrap());
        full.text = Some("dilated".into());
        full.frames = Some(40);
        full.fps = Some(29.97);
        full.extra.insert("manufacturer".into(), "X".into());
        let mut second = full.clone();
        second.id = ItemId("v2".into());
        let bare = ItemRecord::new("r1", Kind::Report, "");
        let mut names = HashSet::new();
        let mut metas = Vec::new();
        for rec in [&full, &second, &bare] {
            let b = bincode::serde::encode_to_vec(rec, bincode_config()).unwrap();
            let whole = slot_meta(rec.id.clone(), Some(&index.decode_record(&b).unwrap()));
            let facts = index.record_facts(rec.id.clone(), &b, &mut names).unwrap();
            assert_eq!(format!("{facts:?}"), format!("{whole:?}"));
            metas.push(facts);
        }
        assert_eq!((metas[0].date, metas[2].patient.clone()), (full.date, None));
        // One copy of each name.
        assert!(Arc::ptr_eq(metas[0].patient.as_ref().unwrap(), metas[1].patient.as_ref().unwrap()));
        assert_eq!(names.len(), 2);
        assert!(index.record_facts(ItemId("x".into()), &[0xff, 0xff], &mut names).is_err());
    }

    /// The read-ahead of an open asks for the table files holding the collection's vectors,
    /// and for nothing when none hold them or they are under the threshold.
    #[test]
    fn an_open_reads_ahead_the_files_of_its_collection_only() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = fixture(&index);
        let videos = Collection { space, kind: Kind::Video }.prefix();
        let all: u64 = index.db.live_files().unwrap().iter().filter(|f| f.column_family_name == CF_VECTORS).map(|f| f.size as u64).sum();
        let asked = store::read_ahead_over(&index.db, &index.path, CF_VECTORS, &videos, codec::prefix_end(&videos).as_deref(), 0);
        assert!(asked > 0 && asked <= all, "asked {asked} of {all}");
        let past = [0xff_u8; 8];
        assert_eq!(store::read_ahead_over(&index.db, &index.path, CF_VECTORS, &past, None, 0), 0, "no file holds keys past the last");
        assert_eq!(store::read_ahead_over(&index.db, &index.path, CF_VECTORS, &videos, None, all + 1), 0, "under the threshold");
        assert!(store::read_ahead_over(&index.db, &index.path, CF_SLOTS, &videos, None, 0) > 0, "another column family");
    }

    /// The mappings agree with the vectors only when they name each live slot once, with its
    /// item, in whatever order.
    #[test]
    fn mappings_agree_only_slot_for_slot_and_item_for_item() {
        let mut live = SlotIds::default();
        for (s, id) in [(0, "a"), (3, "bb"), (4, ""), (9, "d")] {
            live.push(s, id);
        }
        assert_eq!(live.iter().collect::<Vec<_>>(), [(0, "a"), (3, "bb"), (4, ""), (9, "d")]);
        let facts = |pairs: &[(u32, &str)]| -> Vec<(u32, SlotMeta)> {
            pairs.iter().map(|(s, id)| (*s, slot_meta(ItemId((*id).to_owned()), None))).collect()
        };
        assert!(facts_agree(&facts(&[(0, "a"), (3, "bb"), (4, ""), (9, "d")]), &live));
        assert!(facts_agree(&facts(&[(9, "d"), (0, "a"), (4, ""), (3, "bb")]), &live), "any order");
        assert!(!facts_agree(&facts(&[(0, "a"), (3, "bb"), (4, "")]), &live), "one missing");
        assert!(!facts_agree(&facts(&[(0, "a"), (3, "bb"), (4, ""), (9, "d"), (10, "e")]), &live), "one more");
        assert!(!facts_agree(&facts(&[(0, "a"), (3, "bb"), (3, "bb"), (9, "d")]), &live), "a slot twice");
        assert!(!facts_agree(&facts(&[(0, "a"), (3, "b"), (4, ""), (9, "d")]), &live), "another item");
        assert!(!facts_agree(&facts(&[(0, "a"), (3, "bb"), (5, ""), (9, "d")]), &live), "another slot");
        assert!(!facts_agree(&facts(&[(0, "a"), (3, "bb"), (4, ""), (12, "d")]), &live), "a slot past the last");
        assert!(facts_agree(&[], &SlotIds::default()));
    }

    /// A collection read in any number of slot ranges (threads) is the same rows.
    #[test]
    fn a_collection_reads_alike_in_any_number_of_parts() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = fixture(&index);
        let c = Collection { space, kind: Kind::Video };
        let next = index.read_counters().unwrap()[&c];
        let one = index.read_collection_in(c, DIM, u64::from(next), 1).unwrap();
        let rows =
            |s: &Stored| -> Vec<(Slot, String, Vec<f32>)> { s.live().map(|(slot, id, v)| (slot, id.0.clone(), v.to_vec())).collect() };
        assert_eq!(one.live().count(), LIVE_VIDEOS);
        assert!(!one.dead.is_empty());
        for (top, parts) in [(u64::from(next), 2), (u64::from(next), 3), (u64::from(next), 7), (100, 4), (u64::from(next) * 3, 5)] {
            let many = index.read_collection_in(c, DIM, top, parts).unwrap();
            assert_eq!(many.extent(), one.extent());
            assert_eq!(many.count(), one.count());
            assert_eq!(many.dead, one.dead);
            assert_eq!(rows(&many), rows(&one), "{parts} parts below {top}");
            for s in 0..next {
                assert_eq!(many.vector(Slot(s)), one.vector(Slot(s)));
            }
        }
    }
}
