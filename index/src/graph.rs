//! One HNSW graph (`hnsw_rs`, dot product on unit vectors = cosine) per collection, plus the
//! per-slot facts that searches filter on. A cache of what RocksDB holds: reloaded from its
//! snapshot on open (see `snapshot`), or rebuilt from the stored vectors.

use crate::ids::{ItemId, Slot};
use crate::search::Filter;
use anndists::dist::DistDot;
use hnsw_rs::hnsw::Hnsw;

/// Max neighbours per node (hnsw `M`).
pub const HNSW_M: usize = 16;
/// Candidate list size while building (hnsw `efConstruction`).
pub const HNSW_EF_CONSTRUCTION: usize = 200;
/// `hnsw_rs`'s layer count (its maximum); snapshots reproduce graphs built with it.
const HNSW_MAX_LAYER: usize = crate::snapshot::HNSW_LAYERS;

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
/// leaves a dead slot (a tombstone) that searches skip until a rebuild drops it. A slot is
/// visible to searches only once its metadata is set, so a vector can be put into the graph
/// before the write that stores it is acknowledged.
pub struct Graph {
    hnsw: Hnsw<'static, f32, DistDot>,
    slots: Vec<Option<SlotMeta>>,
    live: usize,
    dim: usize,
    /// Slots below this are in the stored snapshot (0: no snapshot).
    pub covered: u32,
    /// Vectors inserted since the stored snapshot was written.
    pub pending: usize,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph").field("slots", &self.slots.len()).field("live", &self.live).finish()
    }
}

impl Graph {
    /// An empty graph sized for about `capacity` vectors.
    pub fn new(dim: usize, capacity: usize) -> Self {
        let hnsw = Hnsw::new(HNSW_M, capacity.max(1024), HNSW_MAX_LAYER, HNSW_EF_CONSTRUCTION, DistDot);
        Self::from_hnsw(hnsw, dim)
    }

    /// Wraps a graph reloaded from a snapshot; every node is invisible until [`Graph::set_meta`].
    pub fn from_hnsw(hnsw: Hnsw<'static, f32, DistDot>, dim: usize) -> Self {
        Self { hnsw, slots: Vec::new(), live: 0, dim, covered: 0, pending: 0 }
    }

    /// Puts vectors into the graph without making them visible (`&self`: `hnsw_rs` inserts
    /// concurrently with searches). [`Graph::set_meta`] reveals them.
    pub fn insert_hidden(&self, rows: &[(Slot, &[f32])]) {
        if rows.len() > 64 {
            let refs: Vec<(&[f32], usize)> = rows.iter().map(|(s, v)| (*v, s.0 as usize)).collect();
            self.hnsw.parallel_insert_slice(&refs);
        } else {
            rows.iter().for_each(|(s, v)| self.hnsw.insert_slice((v, s.0 as usize)));
        }
    }

    /// Makes a slot visible to searches with the facts filters need.
    pub fn set_meta(&mut self, slot: Slot, meta: SlotMeta) {
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

    /// Number of graph nodes, live or dead.
    pub fn nodes(&self) -> usize {
        self.hnsw.get_nb_point()
    }

    /// The slot of every graph node.
    pub fn node_slots(&self) -> Vec<Slot> {
        let pi = self.hnsw.get_point_indexation();
        (0..HNSW_MAX_LAYER).flat_map(|l| pi.get_layer_iterator(l).map(|p| Slot(p.get_origin_id() as u32))).collect()
    }

    /// Live slots with their facts.
    pub fn live_slots(&self) -> impl Iterator<Item = (Slot, &SlotMeta)> {
        self.slots.iter().enumerate().filter_map(|(i, m)| m.as_ref().map(|m| (Slot(i as u32), m)))
    }

    /// The graph's topology, for a snapshot.
    pub fn topology(&self) -> crate::snapshot::Topology {
        crate::snapshot::capture(&self.hnsw, self.dim)
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
        // hnsw_rs's filtered walk never takes its early exit (it explores until the candidate
        // heap runs dry): without a filter, walk unfiltered for k + (dead and hidden nodes)
        // results and drop those, which gives the same answer far faster.
        let invisible = self.nodes().saturating_sub(self.live);
        if filter.is_empty() && invisible <= ef.max(k) {
            let want = k + invisible;
            let found = self.hnsw.search(q, want, ef.max(want));
            let kept: Vec<(Slot, f32)> =
                found.into_iter().filter(|n| pass(&n.d_id)).take(k).map(|n| (Slot(n.d_id as u32), 1.0 - n.distance)).collect();
            if kept.len() >= k.min(self.live) {
                return kept;
            }
        }
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
