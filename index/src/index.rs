//! [`Index`]: opening, the format check, atomic batches, and search (graph or exact).
//!
//! The one place where external item ids and internal slots are mapped to each other.

use crate::codec::{self, Collection, Encoding};
use crate::error::IndexError;
use crate::graph::{Graph, SlotMeta};
use crate::ids::{ItemId, Kind, Slot, SpaceId};
use crate::record::ItemRecord;
use crate::search::{dot, Hit, Query};
use crate::store::{self, CF_ERRORS, CF_ITEMS, CF_META, CF_SLOTS, CF_VECTORS};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

/// Searches whose filtered candidate set is at most this large are answered exactly (brute
/// force over the candidates' stored vectors): cheap at this size, and recall stays 1.0 where
/// a filtered graph walk would lose neighbours.
pub const EXACT_SEARCH_MAX_CANDIDATES: usize = 4096;
/// Default HNSW search breadth.
pub const DEFAULT_EF_SEARCH: usize = 96;

/// Vector storage format for new writes.
pub type VectorEncoding = Encoding;

/// How to open an index.
#[derive(Clone, Debug, Default)]
pub struct IndexOptions {
    /// Encoding of vectors written from now on (reads handle both).
    pub encoding: VectorEncoding,
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

    /// Deletes an item and all its vectors.
    pub fn delete_item(&mut self, item: impl Into<ItemId>) {
        self.deletes.push(item.into());
    }

    /// Records an ingest error for `input` (a path); `None` clears it.
    pub fn put_error(&mut self, input: &str, message: Option<&str>) {
        self.raw.push((CF_ERRORS, input.as_bytes().to_vec(), message.map(|m| m.as_bytes().to_vec())));
    }

    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.vectors.is_empty() && self.deletes.is_empty() && self.raw.is_empty()
    }
}

/// An open index directory. Cheap to share across threads (`&Index` is `Sync`): searches run
/// concurrently; commits are serialised.
pub struct Index {
    path: PathBuf,
    db: DB,
    options: IndexOptions,
    spaces: RwLock<BTreeMap<SpaceId, SpaceInfo>>,
    graphs: RwLock<HashMap<Collection, Graph>>,
    next_slot: Mutex<HashMap<Collection, u32>>,
    secret: [u8; 32],
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("path", &self.path).finish_non_exhaustive()
    }
}

fn corrupt(path: &Path, what: &'static str, detail: impl ToString) -> IndexError {
    IndexError::Corrupt { path: path.to_owned(), what, detail: detail.to_string() }
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

impl Index {
    /// Opens the index at `path`, creating it when the directory is absent or empty. Rebuilds the
    /// in-memory graphs from the stored vectors.
    pub fn open(path: impl AsRef<Path>, options: IndexOptions) -> Result<Index, IndexError> {
        let path = path.as_ref().to_owned();
        let db = store::open_db(&path)?;
        let storage = |source| IndexError::Storage { path: path.clone(), source };
        let cf_meta = db.cf_handle(CF_META).ok_or_else(|| corrupt(&path, "column family", CF_META))?;
        let secret = match db.get_cf(cf_meta, store::KEY_FORMAT_VERSION).map_err(storage)? {
            Some(v) => {
                let found = u32::from_be_bytes(v.as_slice().try_into().map_err(|_| corrupt(&path, "format version", "not 4 bytes"))?);
                if found != store::FORMAT_VERSION {
                    return Err(IndexError::FormatVersion { path, found, expected: store::FORMAT_VERSION });
                }
                let s = db.get_cf(cf_meta, store::KEY_SECRET).map_err(storage)?.ok_or_else(|| corrupt(&path, "secret", "missing"))?;
                s.as_slice().try_into().map_err(|_| corrupt(&path, "secret", "not 32 bytes"))?
            }
            None => {
                let cf_items = db.cf_handle(CF_ITEMS).ok_or_else(|| corrupt(&path, "column family", CF_ITEMS))?;
                if db.iterator_cf(cf_items, IteratorMode::Start).next().is_some() {
                    return Err(IndexError::NotAnIndex { path });
                }
                let mut secret = [0u8; 32];
                rand::fill(&mut secret);
                let mut wb = WriteBatch::default();
                wb.put_cf(cf_meta, store::KEY_FORMAT_VERSION, store::FORMAT_VERSION.to_be_bytes());
                wb.put_cf(cf_meta, store::KEY_SECRET, secret);
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                db.write_opt(wb, &wo).map_err(storage)?;
                secret
            }
        };
        let index = Index {
            path,
            db,
            options,
            spaces: RwLock::new(BTreeMap::new()),
            graphs: RwLock::new(HashMap::new()),
            next_slot: Mutex::new(HashMap::new()),
            secret,
        };
        index.load()?;
        Ok(index)
    }

    /// The index directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Per-index secret for pseudonymising patient ids (keyed hash). Never leaves the index.
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    fn storage(&self, source: rocksdb::Error) -> IndexError {
        IndexError::Storage { path: self.path.clone(), source }
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, IndexError> {
        self.db.cf_handle(name).ok_or_else(|| corrupt(&self.path, "column family", name))
    }

    /// Loads spaces and slot counters, and rebuilds every graph from the stored vectors.
    fn load(&self) -> Result<(), IndexError> {
        let cf_meta = self.cf(CF_META)?;
        let mut spaces = BTreeMap::new();
        for kv in self.db.prefix_iterator_cf(cf_meta, store::KEY_SPACE_PREFIX) {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            if !k.starts_with(store::KEY_SPACE_PREFIX) {
                break;
            }
            let (info, _): (SpaceInfo, _) =
                bincode::serde::decode_from_slice(&v, bincode_config()).map_err(|e| corrupt(&self.path, "space record", e))?;
            spaces.insert(info.id, info);
        }
        let mut counters = HashMap::new();
        for kv in self.db.prefix_iterator_cf(cf_meta, b"next_slot/") {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            if !k.starts_with(b"next_slot/") {
                break;
            }
            let c = Collection::from_prefix(&k[b"next_slot/".len()..])
                .ok_or_else(|| corrupt(&self.path, "slot counter key", "bad collection"))?;
            let n = u32::from_be_bytes(v.as_ref().try_into().map_err(|_| corrupt(&self.path, "slot counter", "not 4 bytes"))?);
            counters.insert(c, n);
        }
        // Rebuild graphs: one pass over `vectors`, grouped by collection.
        let cf_vec = self.cf(CF_VECTORS)?;
        let mut pending: HashMap<Collection, Vec<(Slot, Vec<f32>, ItemId)>> = HashMap::new();
        for kv in self.db.iterator_cf(cf_vec, IteratorMode::Start) {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            let (c, slot) = codec::decode_vector_key(&k).ok_or_else(|| corrupt(&self.path, "vector key", format!("{k:?}")))?;
            let (item, vec) = codec::decode_vector(&v).ok_or_else(|| corrupt(&self.path, "vector", format!("slot {}", slot.0)))?;
            pending.entry(c).or_default().push((slot, vec, ItemId(item)));
        }
        let mut graphs = HashMap::new();
        for (c, rows) in pending {
            let ids: Vec<ItemId> = rows.iter().map(|(_, _, id)| id.clone()).collect();
            let records = self.get_items(&ids)?;
            let mut g = Graph::new(rows.len());
            let items = rows.into_iter().zip(records).map(|((slot, v, id), rec)| (slot, v, slot_meta(id, rec.as_ref()))).collect();
            g.insert_many(items);
            graphs.insert(c, g);
        }
        *self.spaces.write().unwrap_or_else(|e| e.into_inner()) = spaces;
        *self.graphs.write().unwrap_or_else(|e| e.into_inner()) = graphs;
        *self.next_slot.lock().unwrap_or_else(|e| e.into_inner()) = counters;
        Ok(())
    }

    /// Registers an embedding space (idempotent for the same name and dimension).
    pub fn ensure_space(&self, name: &str, dim: usize) -> Result<SpaceId, IndexError> {
        let _w = self.next_slot.lock().unwrap_or_else(|e| e.into_inner());
        let mut spaces = self.spaces.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = spaces.values().find(|s| s.name == name) {
            if s.dim != dim {
                return Err(IndexError::SpaceDimension { space: name.to_owned(), existing: s.dim, requested: dim });
            }
            return Ok(s.id);
        }
        let id = SpaceId(spaces.keys().next_back().map_or(1, |s| s.0 + 1));
        let info = SpaceInfo { id, name: name.to_owned(), dim };
        let mut key = store::KEY_SPACE_PREFIX.to_vec();
        key.extend_from_slice(&id.0.to_be_bytes());
        let val = bincode::serde::encode_to_vec(&info, bincode_config()).map_err(|e| corrupt(&self.path, "space record", e))?;
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf(CF_META)?, key, val);
        self.db.write_opt(wb, &wo).map_err(|e| self.storage(e))?;
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

    /// Commits `batch` atomically and durably (one synced RocksDB WriteBatch), then updates the
    /// in-memory graphs. After `Ok`, the changes survive a crash.
    pub fn commit(&self, batch: Batch) -> Result<(), IndexError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut counters = self.next_slot.lock().unwrap_or_else(|e| e.into_inner());
        let spaces = self.spaces.read().unwrap_or_else(|e| e.into_inner()).clone();
        let (cf_items, cf_vec, cf_slots, cf_meta) = (self.cf(CF_ITEMS)?, self.cf(CF_VECTORS)?, self.cf(CF_SLOTS)?, self.cf(CF_META)?);
        let mut wb = WriteBatch::default();
        let mut records: HashMap<ItemId, ItemRecord> = HashMap::new();
        for r in &batch.items {
            let val = bincode::serde::encode_to_vec(r, bincode_config()).map_err(|e| corrupt(&self.path, "item record", e))?;
            wb.put_cf(cf_items, r.id.0.as_bytes(), val);
            records.insert(r.id.clone(), r.clone());
        }
        // Graph changes to apply after the write succeeds.
        let mut kills: Vec<(Collection, Slot)> = Vec::new();
        let mut inserts: HashMap<Collection, Vec<(Slot, Vec<f32>, SlotMeta)>> = HashMap::new();
        let mut new_counters = counters.clone();
        // Slots assigned inside this batch, so a vector put twice in one batch replaces itself.
        let mut assigned: HashMap<(Collection, ItemId), Slot> = HashMap::new();
        for id in &batch.deletes {
            wb.delete_cf(cf_items, id.0.as_bytes());
            for space in spaces.keys() {
                for kind in Kind::ALL {
                    let c = Collection { space: *space, kind };
                    if let Some(old) = self.slot_of(c, id)? {
                        wb.delete_cf(cf_vec, codec::vector_key(c, old));
                        wb.delete_cf(cf_slots, codec::slot_key(c, &id.0));
                        kills.push((c, old));
                    }
                }
            }
        }
        for (space, item, kind, v) in batch.vectors {
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
                wb.delete_cf(cf_vec, codec::vector_key(c, old));
                kills.push((c, old));
            }
            let next = new_counters.entry(c).or_insert(0);
            let slot = Slot(*next);
            *next += 1;
            wb.put_cf(cf_vec, codec::vector_key(c, slot), codec::encode_vector(&item.0, &v, self.options.encoding));
            wb.put_cf(cf_slots, codec::slot_key(c, &item.0), slot.0.to_be_bytes());
            assigned.insert((c, item.clone()), slot);
            inserts.entry(c).or_default().push((slot, v, slot_meta(item, Some(&record))));
        }
        for (c, n) in &new_counters {
            if counters.get(c) != Some(n) {
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
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(wb, &wo).map_err(|e| self.storage(e))?;
        *counters = new_counters;
        // Metadata changes of items whose vectors were not rewritten must reach the filters too.
        let mut graphs = self.graphs.write().unwrap_or_else(|e| e.into_inner());
        for (c, slot) in kills {
            if let Some(g) = graphs.get_mut(&c) {
                g.kill(slot);
            }
        }
        for (c, rows) in inserts {
            graphs.entry(c).or_insert_with(|| Graph::new(rows.len())).insert_many(rows);
        }
        drop(graphs);
        // Records whose vectors were written in this batch already carry fresh filter facts.
        records.retain(|id, _| !assigned.keys().any(|(_, a)| a == id));
        self.refresh_meta(&records)?;
        Ok(())
    }

    /// Re-reads slot metadata for items whose record changed without a new vector.
    fn refresh_meta(&self, records: &HashMap<ItemId, ItemRecord>) -> Result<(), IndexError> {
        if records.is_empty() {
            return Ok(());
        }
        let spaces: Vec<SpaceId> = self.spaces.read().unwrap_or_else(|e| e.into_inner()).keys().copied().collect();
        let mut updates = Vec::new();
        for (id, rec) in records {
            for space in &spaces {
                let c = Collection { space: *space, kind: rec.kind };
                if let Some(slot) = self.slot_of(c, id)? {
                    updates.push((c, slot, slot_meta(id.clone(), Some(rec))));
                }
            }
        }
        let mut graphs = self.graphs.write().unwrap_or_else(|e| e.into_inner());
        for (c, slot, meta) in updates {
            if let Some(g) = graphs.get_mut(&c) {
                g.update_meta(slot, meta);
            }
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
                let (rec, _) =
                    bincode::serde::decode_from_slice(&b, bincode_config()).map_err(|e| corrupt(&self.path, "item record", e))?;
                Ok(Some(rec))
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
        let (_, v) = codec::decode_vector(&b).ok_or_else(|| corrupt(&self.path, "vector", item.0.clone()))?;
        Ok(Some(v))
    }

    /// All item records of one kind (full scan of the items table).
    pub fn items(&self, kind: Option<Kind>) -> Result<Vec<ItemRecord>, IndexError> {
        let mut out = Vec::new();
        for kv in self.db.iterator_cf(self.cf(CF_ITEMS)?, IteratorMode::Start) {
            let (_, v) = kv.map_err(|e| self.storage(e))?;
            let (rec, _): (ItemRecord, _) =
                bincode::serde::decode_from_slice(&v, bincode_config()).map_err(|e| corrupt(&self.path, "item record", e))?;
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
        let spaces = self.spaces.read().unwrap_or_else(|e| e.into_inner()).clone();
        for (c, g) in self.graphs.read().unwrap_or_else(|e| e.into_inner()).iter() {
            let name = spaces.get(&c.space).map_or("?", |s| s.name.as_str());
            counts.vectors.insert(format!("{name}/{}", c.kind), g.live());
        }
        counts.errors = self.errors()?.len();
        Ok(counts)
    }

    /// k nearest items to `q.vector` by cosine, best first. Exact when asked, or when the filtered
    /// candidate set is small (see [`EXACT_SEARCH_MAX_CANDIDATES`]); through the HNSW graph otherwise.
    pub fn search(&self, q: &Query) -> Result<Vec<Hit>, IndexError> {
        let info =
            self.spaces.read().unwrap_or_else(|e| e.into_inner()).get(&q.space).cloned().ok_or(IndexError::UnknownSpace(q.space.0))?;
        if q.vector.len() != info.dim {
            return Err(IndexError::DimensionMismatch { item: "query".into(), space: info.name, expected: info.dim, got: q.vector.len() });
        }
        let v = normalise(&ItemId::from("query"), q.vector.clone())?;
        let c = Collection { space: q.space, kind: q.kind };
        let found: Vec<(Slot, f32, ItemId)> = {
            let graphs = self.graphs.read().unwrap_or_else(|e| e.into_inner());
            let Some(g) = graphs.get(&c) else { return Ok(Vec::new()) };
            let exact_candidates = if q.exact || g.live() <= EXACT_SEARCH_MAX_CANDIDATES {
                Some(g.candidates(&q.filter))
            } else if !q.filter.is_empty() {
                let cands = g.candidates(&q.filter);
                (cands.len() <= EXACT_SEARCH_MAX_CANDIDATES).then_some(cands)
            } else {
                None
            };
            let scored = match exact_candidates {
                Some(cands) => self.exact(c, &v, q.k, &cands)?,
                None => g.search(&v, q.k, q.ef.unwrap_or(DEFAULT_EF_SEARCH), &q.filter),
            };
            scored.into_iter().filter_map(|(s, score)| g.meta(s).map(|m| (s, score, m.item.clone()))).collect()
        };
        let ids: Vec<ItemId> = found.iter().map(|(_, _, id)| id.clone()).collect();
        let records = self.get_items(&ids)?;
        Ok(found.into_iter().zip(records).filter_map(|((_, score, id), rec)| rec.map(|record| Hit { id, score, record })).collect())
    }

    /// Brute force over `cands`, reading their vectors from RocksDB.
    fn exact(&self, c: Collection, q: &[f32], k: usize, cands: &[Slot]) -> Result<Vec<(Slot, f32)>, IndexError> {
        let cf = self.cf(CF_VECTORS)?;
        let keys: Vec<[u8; 7]> = cands.iter().map(|s| codec::vector_key(c, *s)).collect();
        let mut scored = Vec::with_capacity(cands.len());
        for (slot, r) in cands.iter().zip(self.db.multi_get_cf(keys.iter().map(|k| (cf, k.as_slice())))) {
            let Some(b) = r.map_err(|e| self.storage(e))? else { continue };
            let (_, v) = codec::decode_vector(&b).ok_or_else(|| corrupt(&self.path, "vector", format!("slot {}", slot.0)))?;
            scored.push((*slot, dot(q, &v)));
        }
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(k);
        Ok(scored)
    }
}

fn slot_meta(item: ItemId, rec: Option<&ItemRecord>) -> SlotMeta {
    SlotMeta {
        item,
        patient: rec.and_then(|r| r.patient.clone()),
        study: rec.and_then(|r| r.study.clone()),
        date: rec.and_then(|r| r.date.clone()),
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
