//! Reading: records, vectors, frames, logs, errors, counts, and search (graph or exact).

use super::{
    corrupt, normalise, renormalise, Counts, Index, SpaceInfo, DEFAULT_EF_SEARCH, EXACT_SEARCH_MAX_CANDIDATES, EXACT_SEARCH_MAX_WORK,
    MAX_EF_SEARCH,
};
use crate::codec::{self, Collection};
use crate::error::IndexError;
use crate::graph::Graph;
use crate::ids::{ItemId, Kind, Slot, SpaceId};
use crate::record::ItemRecord;
use crate::search::{dot, Hit, Query};
use crate::store::{self, CF_ERRORS, CF_FRAMES, CF_INGEST_LOG, CF_ITEMS, CF_SLOTS, CF_VECTORS};
use rocksdb::IteratorMode;
use std::collections::HashMap;

/// How a search may proceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Exact for small candidate sets, the graph otherwise.
    Auto,
    /// Always the (filtered) graph walk: for measurements.
    Graph,
}

impl Index {
    /// All registered spaces.
    pub fn spaces(&self) -> Vec<SpaceInfo> {
        self.spaces.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// The space called `name`, if registered.
    pub fn space(&self, name: &str) -> Option<SpaceInfo> {
        self.spaces().into_iter().find(|s| s.name == name)
    }

    pub(super) fn slot_of(&self, c: Collection, item: &ItemId) -> Result<Option<Slot>, IndexError> {
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

    /// All item records of one kind (full scan of the items table, around the block cache).
    pub fn items(&self, kind: Option<Kind>) -> Result<Vec<ItemRecord>, IndexError> {
        let mut out = Vec::new();
        for kv in self.db.iterator_cf_opt(self.cf(CF_ITEMS)?, store::bulk_read(None), IteratorMode::Start) {
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

/// Candidate count up to which a search is exact (see [`EXACT_SEARCH_MAX_WORK`]).
fn exact_limit(dim: usize) -> usize {
    (EXACT_SEARCH_MAX_WORK / dim.max(1)).max(EXACT_SEARCH_MAX_CANDIDATES)
}
