//! Upkeep: checkpoints (snapshots), rebuilds, repair, verification, table checks, compaction,
//! and moving the secret out of the index.

use super::{
    bincode_config, corrupt, rebuild_due, slot_meta, snapshot_due, synced, Index, SnapshotHeader, Verification, Writer, SNAPSHOT_CHUNK,
};
use crate::codec::{self, Collection};
use crate::error::IndexError;
use crate::graph::Graph;
use crate::ids::{ItemId, Slot, SpaceId};
use crate::secret::SecretState;
use crate::snapshot;
use crate::store::{self, CF_FRAMES, CF_GRAPH, CF_META, CF_SLOTS, CF_VECTORS};
use rocksdb::{IteratorMode, WriteBatch};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// Write buffers a checkpoint flushes to table files once they hold more than this: above it,
/// replaying the log would cost an open a noticeable time; below it, flushing would only add
/// small table files.
pub const FLUSH_AT_CHECKPOINT_BYTES: u64 = 16 << 20;

/// [`Index::verify`] lists at most this many secondary-key problems (then counts the rest).
const VERIFY_LOOKUP_LINES: usize = 100;

impl Index {
    /// Writes a fresh snapshot of every graph that changed since its last one, so the next open
    /// replays nothing. Graphs with more tombstones than live vectors are rebuilt instead.
    /// Commits do this on their own from time to time; call it at the end of a bulk load.
    /// Then, when the write buffers hold more than [`FLUSH_AT_CHECKPOINT_BYTES`], they go to
    /// table files, so the next open has no long write-ahead log to replay (a 1M-vector
    /// graph's snapshot is ~140 MB of one: 0.6 s of an open); a small tail stays in the log.
    pub fn checkpoint(&self) -> Result<(), IndexError> {
        self.writable("a checkpoint")?;
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let all: Vec<Collection> = writer.next_slot.keys().copied().collect();
        self.checkpoint_locked(&mut writer, &all, true)?;
        self.flush_if_over(FLUSH_AT_CHECKPOINT_BYTES)
    }

    /// Flushes every column family's write buffer when together they hold more than `bytes`.
    pub(crate) fn flush_if_over(&self, bytes: u64) -> Result<(), IndexError> {
        let mut held = 0u64;
        for name in store::COLUMN_FAMILIES {
            held +=
                self.db.property_int_value_cf(self.cf(name)?, "rocksdb.cur-size-all-mem-tables").map_err(|e| self.storage(e))?.unwrap_or(0);
        }
        if held > bytes {
            for name in store::COLUMN_FAMILIES {
                self.db.flush_cf(self.cf(name)?).map_err(|e| self.storage(e))?;
            }
        }
        Ok(())
    }

    pub(super) fn checkpoint_locked(&self, writer: &mut Writer, which: &[Collection], force: bool) -> Result<(), IndexError> {
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
        let mut g = Graph::new(dim, stored.half(self.new_half()));
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

    /// Stores `g`'s topology as `c`'s snapshot covering slots below `next`, replacing the previous
    /// one in one atomic write. With `vacuum`, also deletes those tombstoned vectors (which `g`,
    /// freshly rebuilt, does not hold). The caller holds the writer lock (no insert runs).
    pub(super) fn write_snapshot(&self, c: Collection, next: u32, g: &Graph, vacuum: Option<&HashSet<u32>>) -> Result<(), IndexError> {
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
            out.stored.insert(name.clone(), stored.count());
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
}
