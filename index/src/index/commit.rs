//! Writing: embedding spaces and atomic batches (plan, write, reveal).

use super::{
    bincode_config, corrupt, normalise, rebuild_due, slot_meta, snapshot_due, synced, Batch, Durability, Index, SpaceInfo, Writer,
};
use crate::codec::{self, Collection};
use crate::error::IndexError;
use crate::graph::{Graph, SlotMeta};
use crate::ids::{ItemId, Kind, Slot, SpaceId};
use crate::record::ItemRecord;
use crate::store::{self, CF_FRAMES, CF_GRAPH, CF_ITEMS, CF_META, CF_SLOTS, CF_VECTORS};
use rocksdb::{WriteBatch, WriteOptions};
use std::collections::{HashMap, HashSet};

impl Index {
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
    ///
    /// Three steps under the writer lock: [`Index::plan`] decides every key and graph change
    /// without changing anything; the new vectors go into their graphs as hidden nodes (searches
    /// go on); then, under the graphs' exclusive lock, [`Index::write`] stores the batch and
    /// [`reveal`] makes it visible, so a search sees the whole batch or none of it.
    pub fn commit_with(&self, batch: Batch, durability: Durability) -> Result<(), IndexError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.writable("a commit")?;
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let Plan { wb, next_slot, dims, changes } = self.plan(&writer, batch)?;
        self.insert_hidden(&changes.inserts, &dims);
        // Store and reveal under the exclusive lock: a search sees the whole batch or none of it.
        let mut graphs = self.graphs.write().unwrap_or_else(|e| e.into_inner());
        self.write(&mut writer, wb, next_slot, &changes, durability)?;
        reveal(&mut graphs, changes);
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

    /// Step 1 of a commit: validates `batch` (known spaces and items, dimensions, finite
    /// non-zero vectors), normalises its vectors, issues their slots and decides every key the
    /// write changes and every graph change that follows it. Reads the database; changes
    /// nothing, in memory or on disk: an `Err` leaves the index as it was.
    fn plan(&self, writer: &Writer, batch: Batch) -> Result<Plan, IndexError> {
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
        let mut changes = Changes::default();
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
                        changes.kills.push((c, old));
                    }
                }
            }
        }
        let mut encodings: HashMap<Collection, codec::Encoding> = HashMap::new();
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
                changes.kills.push((c, old));
            }
            let next = new_counters.entry(c).or_insert(0);
            let slot = Slot(*next);
            *next = next.checked_add(1).ok_or_else(|| corrupt(&self.path, "slot counter", "exhausted (2^32 vectors written)"))?;
            let encoding = *encodings.entry(c).or_insert_with(|| {
                let graphs = self.graphs.read().unwrap_or_else(|e| e.into_inner());
                self.write_encoding(c, &graphs)
            });
            wb.put_cf(cf_vec, codec::vector_key(c, slot), codec::encode_vector(&item.0, &v, encoding));
            wb.put_cf(cf_slots, codec::slot_key(c, &item.0), slot.0.to_be_bytes());
            assigned.insert((c, item.clone()), slot);
            changes.inserts.entry(c).or_default().push((slot, v, slot_meta(item, Some(&record))));
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
        for (id, rec) in &records {
            for space in spaces.keys() {
                let c = Collection { space: *space, kind: rec.kind };
                if let Some(slot) = self.slot_of(c, id)? {
                    changes.updates.push((c, slot, slot_meta(id.clone(), Some(rec))));
                }
            }
        }
        if !changes.updates.is_empty() {
            // Readers re-read the filter facts of their graphs after such a commit.
            self.bump(&mut wb, crate::reader::KEY_FACTS_GENERATION)?;
        }
        let dims = changes.inserts.keys().map(|c| (*c, spaces.get(&c.space).map_or(0, |s| s.dim))).collect();
        Ok(Plan { wb, next_slot: new_counters, dims, changes })
    }

    /// Between plan and write: inserts the planned vectors into their graphs (created when
    /// missing) as hidden nodes — no metadata, so no search returns them — while searches go on.
    /// Should the write fail, they stay hidden and their graphs are rebuilt at the next
    /// checkpoint (see [`Index::write`]).
    fn insert_hidden(&self, inserts: &Inserts, dims: &HashMap<Collection, usize>) {
        {
            let mut graphs = self.graphs.write().unwrap_or_else(|e| e.into_inner());
            for c in inserts.keys() {
                if !graphs.contains_key(c) {
                    // Held in the precision its vectors were just written in (`plan`).
                    let half = self.write_encoding(*c, &graphs) == codec::Encoding::F16;
                    let dim = dims.get(c).copied().unwrap_or(0);
                    graphs.insert(*c, Graph::new(dim, half));
                }
            }
        }
        let graphs = self.graphs.read().unwrap_or_else(|e| e.into_inner());
        for (c, rows) in inserts {
            if let Some(g) = graphs.get(c) {
                let rows: Vec<(Slot, &[f32])> = rows.iter().map(|(s, v, _)| (*s, v.as_slice())).collect();
                g.insert_hidden(&rows);
            }
        }
    }

    /// Step 2 of a commit: stores the planned batch in one RocksDB write with `durability`, and
    /// notes its sequence number in the mark (a synced write also counts as synced). The caller
    /// holds the graphs' exclusive lock from here to [`reveal`]. On `Err` nothing was stored:
    /// the planned slots are never issued again in this process, and the graphs holding hidden
    /// nodes for them are rebuilt at the next checkpoint.
    fn write(
        &self,
        writer: &mut Writer,
        wb: WriteBatch,
        next_slot: HashMap<Collection, u32>,
        changes: &Changes,
        durability: Durability,
    ) -> Result<(), IndexError> {
        let wo = match durability {
            Durability::Synced => synced(),
            Durability::Buffered => WriteOptions::default(),
        };
        if let Err(e) = self.db.write_opt(wb, &wo) {
            // The hidden nodes were never stored: never reuse their slots in this process, and
            // rebuild those graphs at the next checkpoint.
            writer.poisoned.extend(changes.inserts.keys().copied());
            writer.next_slot = next_slot;
            return Err(self.storage(e));
        }
        if let Some(m) = &self.sequence {
            // A synced commit synced every batch before it too.
            match durability {
                Durability::Synced => m.note_both(self.db.latest_sequence_number()),
                Durability::Buffered => m.note(self.db.latest_sequence_number()),
            }
        }
        writer.next_slot = next_slot;
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

    /// Adds to `wb` the increment of the u64 counter at `key` in `meta`.
    pub(super) fn bump(&self, wb: &mut WriteBatch, key: &[u8]) -> Result<(), IndexError> {
        let cf = self.cf(CF_META)?;
        let n = match self.db.get_cf(cf, key).map_err(|e| self.storage(e))? {
            Some(v) => u64::from_be_bytes(v.as_slice().try_into().map_err(|_| corrupt(&self.path, "generation", "not 8 bytes"))?),
            None => 0,
        };
        wb.put_cf(cf, key, (n + 1).to_be_bytes());
        Ok(())
    }
}

/// What [`Index::plan`] decided for one batch.
struct Plan {
    /// Every key the batch changes, for one atomic write.
    wb: WriteBatch,
    /// Slot counters once the batch is stored.
    next_slot: HashMap<Collection, u32>,
    /// Vector dimension of each collection that gains vectors (for a graph created for them).
    dims: HashMap<Collection, usize>,
    /// What the graphs do once it is stored.
    changes: Changes,
}

/// New vectors (normalised) with their filter facts, per collection.
type Inserts = HashMap<Collection, Vec<(Slot, Vec<f32>, SlotMeta)>>;

/// The graph side of a planned batch.
#[derive(Default)]
struct Changes {
    /// New vectors (normalised) with their filter facts, per collection.
    inserts: Inserts,
    /// Slots of replaced and deleted vectors.
    kills: Vec<(Collection, Slot)>,
    /// New filter facts of slots whose item record changed without a new vector.
    updates: Vec<(Collection, Slot, SlotMeta)>,
}

/// Step 3 of a commit, under the graphs' exclusive lock held since before the write: gives the
/// hidden nodes their metadata (they become searchable), hides the killed slots and updates the
/// filter facts. Reveal first, then kill: a vector put twice in one batch kills its own first
/// slot.
fn reveal(graphs: &mut HashMap<Collection, Graph>, changes: Changes) {
    for (c, rows) in changes.inserts {
        if let Some(g) = graphs.get_mut(&c) {
            g.pending += rows.len();
            for (slot, _, meta) in rows {
                g.set_meta(slot, meta);
            }
        }
    }
    for (c, slot) in changes.kills {
        if let Some(g) = graphs.get_mut(&c) {
            g.kill(slot);
        }
    }
    for (c, slot, meta) in changes.updates {
        if let Some(g) = graphs.get_mut(&c) {
            g.update_meta(slot, meta);
        }
    }
}
