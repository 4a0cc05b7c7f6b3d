//! Opening an index: the format check, creating a new one, loading every graph (snapshot and
//! replay, or a rebuild from the stored vectors).

use super::{
    bincode_config, corrupt, renormalise, slot_meta, snapshot_due, synced, GraphLoad, Index, IndexOptions, SnapshotHeader, SpaceInfo,
    Stored, Writer, SNAPSHOT_CHUNK,
};
use crate::codec::{self, Collection, Encoding};
use crate::error::IndexError;
use crate::graph::{Graph, SCRATCH_PREFIX};
use crate::ids::{ItemId, Slot, SpaceId};
use crate::secret::SecretState;
use crate::snapshot;
use crate::store::{self, CF_GRAPH, CF_ITEMS, CF_META, CF_VECTORS};
use rocksdb::{IteratorMode, WriteBatch, DB};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// The secret of the index in `db` (stored, or the fingerprint of an outside one) after checking
/// its format version; `None` when it has none (a new database, or one that is not an index).
///
/// Writes nothing: the check of readers and passive opens. A format-2 index whose column
/// families are all there has the layout of this format and is read as it is; one that lacks
/// any is [`IndexError::FormatUpgradeNeeded`] (a writer's open upgrades it, see
/// [`check_format_or_upgrade`]); any other version is [`IndexError::FormatVersion`].
pub(crate) fn check_format(db: &DB, path: &Path) -> Result<Option<SecretState>, IndexError> {
    let Some(found) = stored_format(db, path)? else { return Ok(None) };
    if found != store::FORMAT_VERSION {
        if !upgradable(found) {
            return Err(IndexError::FormatVersion { path: path.to_owned(), found, expected: store::FORMAT_VERSION });
        }
        if store::COLUMN_FAMILIES.iter().any(|name| db.cf_handle(name).is_none()) {
            return Err(IndexError::FormatUpgradeNeeded { path: path.to_owned(), found, expected: store::FORMAT_VERSION });
        }
        tracing::debug!(found, "a format-{found} index with every column family of format {} read as it is", store::FORMAT_VERSION);
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
    if found == store::FORMAT_VERSION || !upgradable(found) {
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

/// True for an older format that a writer's open upgrades in place.
fn upgradable(found: u32) -> bool {
    (store::OLDEST_UPGRADABLE_FORMAT..store::FORMAT_VERSION).contains(&found)
}

/// The format version stored in `db`'s `meta`; `None` when there is none.
fn stored_format(db: &DB, path: &Path) -> Result<Option<u32>, IndexError> {
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

impl Index {
    /// Opens the index at `path`, creating it when the directory is absent or empty. Loads every
    /// graph from its snapshot and replays the vectors written after it; rebuilds (and
    /// re-snapshots) a graph whose snapshot is missing, stale or corrupt. [`Index::graph_loads`]
    /// says what happened. An index of an older format that this build upgrades is upgraded in
    /// place first, unless the open is passive (see [`crate::FORMAT_VERSION`]).
    pub fn open(path: impl AsRef<Path>, options: IndexOptions) -> Result<Index, IndexError> {
        let path = path.as_ref().to_owned();
        let db = store::open_db(&path)?;
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
            Err(why) => (Graph::new(info.dim, stored.half(self.new_half())), "rebuilt", Some(why), 0),
        };
        // Records give the filter facts of every live slot.
        let live: Vec<(Slot, &ItemId, &[f32])> = stored.live().collect();
        let ids: Vec<ItemId> = live.iter().map(|(_, id, _)| (*id).clone()).collect();
        let records = self.get_items(&ids)?;
        if how == "rebuilt" {
            let rows: Vec<(Slot, &[f32])> = live.iter().map(|(s, _, v)| (*s, *v)).collect();
            g.insert_hidden(&rows);
        } else {
            // Replay every vector written after the snapshot, tombstoned ones too (hidden):
            // the next snapshot must hold every stored slot below its coverage.
            let rows: Vec<(Slot, &[f32])> = stored.from(g.covered as usize).collect();
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
        let precision = if g.is_half() { "f16" } else { "f32" };
        let load = GraphLoad { collection: name, how, reason, replayed, live: g.live(), millis: 0, precision };
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
    pub(super) fn read_collection(&self, c: Collection, dim: usize) -> Result<Stored, IndexError> {
        let mut stored = Stored::new(dim);
        let prefix = c.prefix();
        for kv in self.db.prefix_iterator_cf(self.cf(CF_VECTORS)?, prefix) {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let (_, slot) = codec::decode_vector_key(&k).ok_or_else(|| corrupt(&self.path, "vector key", format!("{k:?}")))?;
            // The decoded row is freed at once and its chunk reused by the next: no per-row heap.
            let (item, mut vec) = codec::decode_vector(&v).ok_or_else(|| corrupt(&self.path, "vector", format!("slot {}", slot.0)))?;
            if vec.len() != dim {
                return Err(corrupt(&self.path, "vector", format!("slot {} has dimension {}, space has {dim}", slot.0, vec.len())));
            }
            renormalise(&mut vec);
            if v.first() != Some(&Encoding::F16.code()) {
                stored.f32_rows += 1;
            }
            stored.push(slot, ItemId(item), &vec);
        }
        let dprefix = codec::dead_prefix(c);
        for kv in self.db.prefix_iterator_cf(self.cf(CF_GRAPH)?, &dprefix) {
            let (k, _) = kv.map_err(|e| self.storage(e))?;
            if !k.starts_with(&dprefix) {
                break;
            }
            let s = codec::decode_dead_key(&k).ok_or_else(|| corrupt(&self.path, "tombstone key", format!("{k:?}")))?;
            stored.dead.insert(s.0);
        }
        Ok(stored)
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
        let below = stored.count_below(h.covered as usize);
        if below != topo.len() || topo.slots().any(|s| s >= h.covered || stored.vector(Slot(s)).is_none()) {
            return Err(format!("stale snapshot: {} nodes, {below} stored vectors below slot {}", topo.len(), h.covered));
        }
        if topo.is_empty() {
            let mut g = Graph::new(dim, stored.half(self.new_half()));
            g.covered = h.covered;
            let replay = stored.from(h.covered as usize).count();
            return Ok((g, replay));
        }
        // Filled straight from the snapshot: searchable and insertable at once.
        let mut g = Graph::from_snapshot(topo, stored.half(self.new_half()), |s| stored.vector(s));
        g.covered = h.covered;
        let replay = stored.from(h.covered as usize).count();
        Ok((g, replay))
    }
}
