//! One HNSW graph (`hnsw_rs`, dot product on unit vectors = cosine) per collection, plus the
//! per-slot facts that searches filter on. A cache of what RocksDB holds: rebuilt on open.

use crate::ids::{ItemId, Slot};
use crate::search::Filter;
use anndists::dist::DistDot;
use hnsw_rs::hnsw::Hnsw;

/// Max neighbours per node (hnsw `M`).
pub const HNSW_M: usize = 16;
/// Candidate list size while building (hnsw `efConstruction`).
pub const HNSW_EF_CONSTRUCTION: usize = 200;
/// `hnsw_rs` only dumps graphs built with exactly 16 layers; keep it so snapshots stay possible.
const HNSW_MAX_LAYER: usize = 16;

/// What a filter needs to know about a slot without reading RocksDB.
#[derive(Clone, Debug)]
pub struct SlotMeta {
    /// External id of the item the slot holds.
    pub item: ItemId,
    /// Pseudonymous patient key.
    pub patient: Option<String>,
    /// Study id.
    pub study: Option<String>,
    /// Study date, `YYYY-MM-DD`.
    pub date: Option<String>,
}

impl SlotMeta {
    /// True when the slot passes `f`.
    pub fn matches(&self, f: &Filter) -> bool {
        fn eq(want: &Option<String>, have: &Option<String>) -> bool {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        }
        if !eq(&f.patient, &self.patient) || !eq(&f.study, &self.study) {
            return false;
        }
        if f.since.is_some() || f.until.is_some() {
            let Some(d) = self.date.as_deref() else { return false };
            if f.since.as_deref().is_some_and(|s| d < s) || f.until.as_deref().is_some_and(|u| d > u) {
                return false;
            }
        }
        !f.exclude.contains(&self.item)
    }
}

/// A collection's graph and slot table. Slots are never reused: a replaced or deleted vector
/// leaves a dead slot (a tombstone) that searches skip.
pub struct Graph {
    hnsw: Hnsw<'static, f32, DistDot>,
    slots: Vec<Option<SlotMeta>>,
    live: usize,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph").field("slots", &self.slots.len()).field("live", &self.live).finish()
    }
}

impl Graph {
    /// An empty graph sized for about `capacity` vectors.
    pub fn new(capacity: usize) -> Self {
        let hnsw = Hnsw::new(HNSW_M, capacity.max(1024), HNSW_MAX_LAYER, HNSW_EF_CONSTRUCTION, DistDot);
        Self { hnsw, slots: Vec::new(), live: 0 }
    }

    /// Inserts many unit vectors (multi-threaded).
    pub fn insert_many(&mut self, items: Vec<(Slot, Vec<f32>, SlotMeta)>) {
        let refs: Vec<(&Vec<f32>, usize)> = items.iter().map(|(s, v, _)| (v, s.0 as usize)).collect();
        if refs.len() > 64 {
            self.hnsw.parallel_insert(&refs);
        } else {
            refs.iter().for_each(|(v, id)| self.hnsw.insert((v.as_slice(), *id)));
        }
        for (slot, _, meta) in items {
            self.set_meta(slot, meta);
        }
    }

    fn set_meta(&mut self, slot: Slot, meta: SlotMeta) {
        let i = slot.0 as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        if self.slots[i].is_none() {
            self.live += 1;
        }
        self.slots[i] = Some(meta);
    }

    /// Marks a slot dead (its vector was replaced or deleted).
    pub fn kill(&mut self, slot: Slot) {
        if let Some(s) = self.slots.get_mut(slot.0 as usize) {
            if s.take().is_some() {
                self.live -= 1;
            }
        }
    }

    /// Number of live vectors.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Facts about a live slot.
    pub fn meta(&self, slot: Slot) -> Option<&SlotMeta> {
        self.slots.get(slot.0 as usize).and_then(Option::as_ref)
    }

    /// Live slots passing `filter`, in slot order.
    pub fn candidates(&self, filter: &Filter) -> Vec<Slot> {
        self.slots.iter().enumerate().filter_map(|(i, m)| m.as_ref().filter(|m| m.matches(filter)).map(|_| Slot(i as u32))).collect()
    }

    /// Approximate k nearest live slots passing `filter`, as (slot, cosine), best first.
    pub fn search(&self, q: &[f32], k: usize, ef: usize, filter: &Filter) -> Vec<(Slot, f32)> {
        let pass = |id: &usize| self.slots.get(*id).and_then(Option::as_ref).is_some_and(|m| m.matches(filter));
        let found = self.hnsw.search_filter(q, k, ef.max(k), Some(&pass));
        found.into_iter().map(|n| (Slot(n.d_id as u32), 1.0 - n.distance)).collect()
    }
}

impl Graph {
    /// Replaces the filter facts of a live slot (its record changed, its vector did not).
    pub fn update_meta(&mut self, slot: Slot, meta: SlotMeta) {
        if let Some(s) = self.slots.get_mut(slot.0 as usize) {
            if s.is_some() {
                *s = Some(meta);
            }
        }
    }
}
