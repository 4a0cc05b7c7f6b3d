//! Readers: [`Index::open_reader`] opens an index without ever writing to it — a RocksDB
//! secondary instance whose own files live in a temporary directory outside the index (removed
//! when the reader closes) — so searches and look-ups run while another process writes.
//!
//! A reader sees every batch committed before it opened; [`Index::refresh`] catches up with
//! what was committed since: new vectors are inserted into its in-memory graphs, tombstoned
//! ones hidden, and a collection that the writer rebuilt (its generation in `meta` changed) is
//! loaded again from its snapshot. Nothing a reader does writes under the index directory.

use crate::codec::{self, Collection};
use crate::error::IndexError;
use crate::graph::{Graph, SlotMeta};
use crate::ids::{ItemId, Slot};
use crate::index::{corrupt, slot_meta, Index};
use crate::store::{self, CF_GRAPH, CF_META, CF_VECTORS};
use rocksdb::{Direction, IteratorMode};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

/// What a reader keeps beside the database.
#[derive(Debug)]
pub(crate) struct ReaderState {
    /// The secondary instance's own directory (outside the index), held so that it is removed
    /// when the reader closes.
    _dir: tempfile::TempDir,
    /// Rebuild generations of the collections and the facts generation, as last read.
    seen: Mutex<Generations>,
}

/// The writer's counters of changes a reader cannot follow slot by slot.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Generations {
    /// Per collection: how many times its graph was rebuilt and its dead vectors vacuumed.
    rebuilt: HashMap<Collection, u64>,
    /// How many commits changed the filter facts (patient, study, date) of an existing slot
    /// without writing a new vector.
    facts: u64,
}

/// `meta` key of a collection's rebuild generation (u64 BE).
pub(crate) fn generation_key(c: Collection) -> Vec<u8> {
    let mut k = b"generation/".to_vec();
    k.extend_from_slice(&c.prefix());
    k
}

/// `meta` key of the facts generation (u64 BE).
pub(crate) const KEY_FACTS_GENERATION: &[u8] = b"facts_generation";

impl ReaderState {
    pub(crate) fn new(dir: tempfile::TempDir) -> ReaderState {
        ReaderState { _dir: dir, seen: Mutex::new(Generations::default()) }
    }
}

/// New vectors and tombstones of one collection since a reader last caught up.
struct Delta {
    c: Collection,
    reveal: Vec<(Slot, SlotMeta)>,
    kill: Vec<Slot>,
}

impl Index {
    /// Opens the index at `path` for reading only (see the module header). Fails with
    /// [`IndexError::Missing`] when there is no index there; every write method of the handle
    /// returns [`IndexError::ReadOnly`].
    pub fn open_reader(path: impl AsRef<Path>) -> Result<Index, IndexError> {
        let path = path.as_ref().to_owned();
        let dir = store::scratch_outside("echovault-reader-")?;
        let db = store::open_secondary(&path, dir.path())?;
        let secret = crate::index::check_format(&db, &path)?.ok_or_else(|| IndexError::NotAnIndex { path: path.clone() })?;
        let mut index = Index::assemble(path, db, secret, Some(ReaderState::new(dir)), None);
        index.lookups.store(index.read_lookups_ready()?, std::sync::atomic::Ordering::Release);
        *index.reader_state()?.seen.lock().unwrap_or_else(|e| e.into_inner()) = index.read_generations()?;
        index.loads = index.load()?;
        Ok(index)
    }

    /// True for a handle from [`Index::open_reader`].
    pub fn is_reader(&self) -> bool {
        self.reader.is_some()
    }

    fn reader_state(&self) -> Result<&ReaderState, IndexError> {
        self.reader.as_ref().ok_or_else(|| corrupt(&self.path, "reader state", "not a reader"))
    }

    /// Catches a reader up with every batch committed since it opened or last refreshed: after
    /// `Ok`, searches and look-ups see them. Returns whether anything changed. A writer is
    /// always current: `Ok(false)`.
    pub fn refresh(&self) -> Result<bool, IndexError> {
        let Some(state) = &self.reader else { return Ok(false) };
        // One refresh at a time: the writer lock stands for "the slots this handle has seen".
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let before = self.db.latest_sequence_number();
        self.db.try_catch_up_with_primary().map_err(|e| self.storage(e))?;
        if self.db.latest_sequence_number() == before {
            return Ok(false);
        }
        self.lookups.store(self.read_lookups_ready()?, std::sync::atomic::Ordering::Release);
        let spaces = self.read_spaces()?;
        let counters = self.read_counters()?;
        let now = self.read_generations()?;
        let mut seen = state.seen.lock().unwrap_or_else(|e| e.into_inner());
        *self.spaces.write().unwrap_or_else(|e| e.into_inner()) = spaces.clone();
        let mut reloaded: Vec<(Collection, Graph)> = Vec::new();
        let mut deltas: Vec<Delta> = Vec::new();
        for (&c, &next) in &counters {
            let Some(info) = spaces.get(&c.space) else { return Err(corrupt(&self.path, "slot counter", "unknown space")) };
            let known = writer.next_slot.get(&c).copied();
            let has_graph = self.graphs.read().unwrap_or_else(|e| e.into_inner()).contains_key(&c);
            let rebuilt = now.rebuilt.get(&c) != seen.rebuilt.get(&c);
            match known {
                Some(known) if has_graph && !rebuilt && next >= known => {
                    if let Some(d) = self.catch_up_collection(c, info.dim, known)? {
                        deltas.push(d);
                    }
                }
                _ => reloaded.push((c, self.load_collection(c, info, next)?.0)),
            }
        }
        let facts = if now.facts != seen.facts { self.current_facts(&reloaded)? } else { Vec::new() };
        // Reveal under the exclusive lock: a search sees the whole catch-up or none of it.
        let mut graphs = self.graphs.write().unwrap_or_else(|e| e.into_inner());
        for d in deltas {
            if let Some(g) = graphs.get_mut(&d.c) {
                for (slot, meta) in d.reveal {
                    g.set_meta(slot, meta);
                }
                for slot in d.kill {
                    g.kill(slot);
                }
            }
        }
        for (c, slot, meta) in facts {
            if let Some(g) = graphs.get_mut(&c) {
                g.update_meta(slot, meta);
            }
        }
        for (c, g) in reloaded {
            graphs.insert(c, g);
        }
        writer.next_slot = counters;
        *seen = now;
        Ok(true)
    }

    /// Inserts (hidden) the vectors of `c` stored at or above slot `known`, and returns what to
    /// reveal and what to kill: those of them that are live, and the slots tombstoned since.
    fn catch_up_collection(&self, c: Collection, dim: usize, known: u32) -> Result<Option<Delta>, IndexError> {
        let prefix = c.prefix();
        let mut rows: Vec<(Slot, ItemId, Vec<f32>)> = Vec::new();
        let start = codec::vector_key(c, Slot(known));
        // Read once (a writer's rebuild may have added many): around the block cache.
        let ro = store::bulk_read(Some((start.to_vec(), codec::prefix_end(&prefix))));
        for kv in self.db.iterator_cf_opt(self.cf(CF_VECTORS)?, ro, IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let mut vec = Vec::with_capacity(dim);
            let (slot, item, _) = self.decode_row(c, &k, &v, dim, &mut vec)?;
            rows.push((slot, ItemId(item.to_owned()), vec));
        }
        let dead = self.dead_slots(c)?;
        let graphs = self.graphs.read().unwrap_or_else(|e| e.into_inner());
        let Some(g) = graphs.get(&c) else { return Ok(None) };
        let kill: Vec<Slot> = dead.iter().map(|s| Slot(*s)).filter(|s| s.0 < known && g.meta(*s).is_some()).collect();
        if rows.is_empty() && kill.is_empty() {
            return Ok(None);
        }
        let hidden: Vec<(Slot, &[f32])> = rows.iter().map(|(s, _, v)| (*s, v.as_slice())).collect();
        g.insert_hidden(&hidden);
        let live: Vec<&(Slot, ItemId, Vec<f32>)> = rows.iter().filter(|(s, _, _)| !dead.contains(&s.0)).collect();
        let ids: Vec<ItemId> = live.iter().map(|(_, id, _)| id.clone()).collect();
        let records = self.get_items(&ids)?;
        let reveal = live.iter().zip(&records).map(|((s, id, _), rec)| (*s, slot_meta(id.clone(), rec.as_ref()))).collect();
        Ok(Some(Delta { c, reveal, kill }))
    }

    /// The tombstoned slots of `c`.
    fn dead_slots(&self, c: Collection) -> Result<HashSet<u32>, IndexError> {
        let mut dead = HashSet::new();
        let prefix = codec::dead_prefix(c);
        let ro = store::bulk_read(Some((prefix.clone(), codec::prefix_end(&prefix))));
        for kv in self.db.iterator_cf_opt(self.cf(CF_GRAPH)?, ro, IteratorMode::Start) {
            let (k, _) = kv.map_err(|e| self.storage(e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            dead.insert(codec::decode_dead_key(&k).ok_or_else(|| corrupt(&self.path, "tombstone key", format!("{k:?}")))?.0);
        }
        Ok(dead)
    }

    /// The filter facts of every live slot of the graphs not in `reloaded`, read afresh from
    /// the records (after commits that changed records without new vectors: rare).
    fn current_facts(&self, reloaded: &[(Collection, Graph)]) -> Result<Vec<(Collection, Slot, SlotMeta)>, IndexError> {
        let fresh: HashSet<Collection> = reloaded.iter().map(|(c, _)| *c).collect();
        let live: Vec<(Collection, Slot, ItemId)> = {
            let graphs = self.graphs.read().unwrap_or_else(|e| e.into_inner());
            graphs
                .iter()
                .filter(|(c, _)| !fresh.contains(c))
                .flat_map(|(c, g)| g.live_slots().map(move |(s, m)| (*c, s, m.item.clone())))
                .collect()
        };
        let ids: Vec<ItemId> = live.iter().map(|(_, _, id)| id.clone()).collect();
        let records = self.get_items(&ids)?;
        Ok(live.into_iter().zip(records).map(|((c, s, id), rec)| (c, s, slot_meta(id, rec.as_ref()))).collect())
    }

    /// The writer's rebuild and facts generations, read from `meta`.
    pub(crate) fn read_generations(&self) -> Result<Generations, IndexError> {
        let cf = self.cf(CF_META)?;
        let mut out = Generations::default();
        let u64_of = |v: &[u8]| v.try_into().map(u64::from_be_bytes).map_err(|_| corrupt(&self.path, "generation", "not 8 bytes"));
        for kv in self.db.prefix_iterator_cf(cf, b"generation/") {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            if !k.starts_with(b"generation/") {
                break;
            }
            let c = Collection::from_prefix(&k[b"generation/".len()..])
                .ok_or_else(|| corrupt(&self.path, "generation key", "bad collection"))?;
            out.rebuilt.insert(c, u64_of(&v)?);
        }
        if let Some(v) = self.db.get_cf(cf, KEY_FACTS_GENERATION).map_err(|e| self.storage(e))? {
            out.facts = u64_of(&v)?;
        }
        Ok(out)
    }

    /// Refuses a write on a reader.
    pub(crate) fn writable(&self, op: &'static str) -> Result<(), IndexError> {
        match self.reader {
            Some(_) => Err(IndexError::ReadOnly { path: self.path.clone(), op }),
            None => Ok(()),
        }
    }
}
