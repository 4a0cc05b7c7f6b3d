//! One HNSW graph ([`crate::hnsw::Hnsw`], dot product on unit vectors = cosine) per collection,
//! plus the per-slot facts that searches filter on. A cache of what RocksDB holds: reloaded
//! from its snapshot on open (see `snapshot`), or rebuilt from the stored vectors.

use crate::date::StudyDate;
use crate::hnsw::Hnsw;
use crate::ids::{ItemId, Slot};
use crate::search::Filter;
use crate::snapshot::Topology;
use std::collections::HashSet;
use std::sync::Arc;

/// Max neighbours per node (hnsw `M`; `2M` on layer 0).
pub const HNSW_M: usize = 16;
/// Candidate list size while building (hnsw `efConstruction`).
pub const HNSW_EF_CONSTRUCTION: usize = 200;

/// What a filter needs to know about a slot without reading RocksDB. Held per live slot, so
/// kept small: a patient's or a study's many slots share one copy of its key (see
/// [`Graph::set_meta`]).
#[derive(Clone, Debug)]
pub struct SlotMeta {
    /// External id of the item the slot holds.
    pub item: ItemId,
    /// Pseudonymous patient key.
    pub patient: Option<Arc<str>>,
    /// Study id.
    pub study: Option<Arc<str>>,
    /// Study date.
    pub date: Option<StudyDate>,
}

impl SlotMeta {
    /// True when the slot passes `f`.
    pub fn matches(&self, f: &Filter) -> bool {
        fn eq(want: &Option<String>, have: &Option<Arc<str>>) -> bool {
            want.as_deref().is_none_or(|w| have.as_deref() == Some(w))
        }
        if !eq(&f.patient, &self.patient) || !eq(&f.study, &self.study) {
            return false;
        }
        if f.since.is_some() || f.until.is_some() {
            let Some(d) = self.date else { return false };
            if f.since.is_some_and(|s| d < s) || f.until.is_some_and(|u| d > u) {
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
///
/// The graph holds each vector once, in the structure searches walk; inserts go straight into
/// it (`&self`, beside searches), hidden until [`Graph::set_meta`]. A graph opened from a
/// snapshot is filled from the snapshot's topology and the stored vectors, and takes inserts at
/// once.
pub struct Graph {
    hnsw: Hnsw,
    slots: Vec<Option<SlotMeta>>,
    /// Bit `i` set when slot `i` is live: what an unfiltered search checks, without touching
    /// the (larger, scattered) metadata.
    visible: Vec<u64>,
    /// One copy of every patient key and study id the slots' facts name (never pruned: a
    /// rebuild starts a new graph).
    names: HashSet<Arc<str>>,
    live: usize,
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
    /// An empty graph of `dim`-dimensional vectors, held as IEEE halves when `half` (for a
    /// space stored as f16: half the memory; every vector inserted is rounded to f16), else as
    /// f32. Memory grows with the nodes.
    pub fn new(dim: usize, half: bool) -> Self {
        Self::with(Hnsw::new(dim, HNSW_M, HNSW_EF_CONSTRUCTION, half))
    }

    /// True when the graph holds its vectors as IEEE halves.
    pub fn is_half(&self) -> bool {
        self.hnsw.is_half()
    }

    /// The graph of a validated snapshot `t` whose every node has its vector in `vector`,
    /// filled straight from the topology (nothing re-inserted), holding the vectors as halves
    /// when `half`: searchable and insertable at once. Nodes are invisible until
    /// [`Graph::set_meta`].
    pub fn from_snapshot<'v>(t: Topology, half: bool, vector: impl Fn(Slot) -> Option<&'v [f32]> + Sync) -> Self {
        Self::with(Hnsw::from_topology(&t, half, |s| vector(Slot(s))))
    }

    /// [`Graph::from_snapshot`] with every vector still zero: the caller stores each node's
    /// vector with [`Graph::set_vector`] (from any number of threads) before the graph is used.
    pub fn skeleton(t: &Topology, half: bool) -> Self {
        Self::with(Hnsw::skeleton(t, half))
    }

    /// Stores the vector of a [`Graph::skeleton`]'s node `slot`; false when `slot` is none of
    /// its nodes (or `v` is not of the graph's dimension).
    pub fn set_vector(&self, slot: Slot, v: &[f32]) -> bool {
        self.hnsw.set_vector(slot.0, v)
    }

    /// [`Graph::set_vector`] from a stored f32 vector's little-endian component bytes, made a
    /// unit vector in place; false also when the graph holds halves (then decode and use
    /// [`Graph::set_vector`]).
    pub fn set_vector_le(&self, slot: Slot, bytes: &[u8]) -> bool {
        self.hnsw.set_vector_le(slot.0, bytes)
    }

    fn with(hnsw: Hnsw) -> Self {
        Self { hnsw, slots: Vec::new(), visible: Vec::new(), names: HashSet::new(), live: 0, covered: 0, pending: 0 }
    }

    /// Puts vectors into the graph without making them visible (`&self`: inserts run beside
    /// searches; a batch is linked on every core). [`Graph::set_meta`] reveals them. A slot
    /// already in the graph keeps its vector.
    pub fn insert_hidden(&self, rows: &[(Slot, &[f32])]) {
        if rows.is_empty() {
            return;
        }
        let rows: Vec<(u32, &[f32])> = rows.iter().map(|(s, v)| (s.0, *v)).collect();
        self.hnsw.insert(&rows);
    }

    /// The graph's one copy of `name` (added when it has none).
    fn intern(&mut self, name: Option<Arc<str>>) -> Option<Arc<str>> {
        Some(interned(&mut self.names, name?))
    }

    /// `meta` with its patient and study shared with the other slots that name them.
    fn shared(&mut self, mut meta: SlotMeta) -> SlotMeta {
        meta.patient = self.intern(meta.patient.take());
        meta.study = self.intern(meta.study.take());
        meta
    }

    /// Makes a slot visible to searches with the facts filters need.
    pub fn set_meta(&mut self, slot: Slot, meta: SlotMeta) {
        let meta = self.shared(meta);
        let i = slot.0 as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        if self.slots[i].is_none() {
            self.live += 1;
        }
        self.slots[i] = Some(meta);
        if self.visible.len() <= i / 64 {
            self.visible.resize(i / 64 + 1, 0);
        }
        self.visible[i / 64] |= 1 << (i % 64);
    }

    /// Replaces the filter facts of a live slot (its record changed, its vector did not).
    pub fn update_meta(&mut self, slot: Slot, meta: SlotMeta) {
        if self.meta(slot).is_none() {
            return;
        }
        let meta = self.shared(meta);
        if let Some(s) = self.slots.get_mut(slot.0 as usize) {
            if s.is_some() {
                *s = Some(meta);
            }
        }
    }

    /// Marks a slot dead (its vector was replaced or deleted).
    pub fn kill(&mut self, slot: Slot) {
        let i = slot.0 as usize;
        if let Some(s) = self.slots.get_mut(i) {
            if s.take().is_some() {
                self.live -= 1;
                self.visible[i / 64] &= !(1 << (i % 64));
            }
        }
    }

    /// Number of live vectors.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Number of graph nodes, live or dead.
    pub fn nodes(&self) -> usize {
        self.hnsw.len()
    }

    /// The slot of every graph node.
    pub fn node_slots(&self) -> Vec<Slot> {
        self.hnsw.slots().map(Slot).collect()
    }

    /// Live slots with their facts.
    pub fn live_slots(&self) -> impl Iterator<Item = (Slot, &SlotMeta)> {
        self.slots.iter().enumerate().filter_map(|(i, m)| m.as_ref().map(|m| (Slot(i as u32), m)))
    }

    /// The graph's topology, for a snapshot.
    pub fn topology(&self) -> Topology {
        self.hnsw.topology()
    }

    /// Facts about a live slot.
    pub fn meta(&self, slot: Slot) -> Option<&SlotMeta> {
        self.slots.get(slot.0 as usize).and_then(Option::as_ref)
    }

    /// Live slots passing `filter`, in slot order.
    pub fn candidates(&self, filter: &Filter) -> Vec<Slot> {
        self.slots.iter().enumerate().filter_map(|(i, m)| m.as_ref().filter(|m| m.matches(filter)).map(|_| Slot(i as u32))).collect()
    }

    /// Approximate k nearest live slots passing `filter`, as (slot, cosine), best first: nodes
    /// that are dead, hidden or filtered out are walked through, not returned.
    pub fn search(&self, q: &[f32], k: usize, ef: usize, filter: &Filter) -> Vec<(Slot, f32)> {
        let plain = filter.is_empty();
        let pass = |slot: u32| {
            let i = slot as usize;
            if plain {
                self.visible.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
            } else {
                self.slots.get(i).and_then(Option::as_ref).is_some_and(|m| m.matches(filter))
            }
        };
        self.hnsw.search(q, k, ef, pass).into_iter().map(|(s, d)| (Slot(s), d)).collect()
    }

    /// Exact cosine of `q` with each of `slots` whose vector is in the graph; the slots whose
    /// vector is not come back second.
    pub fn score(&self, q: &[f32], slots: &[Slot]) -> (Vec<(Slot, f32)>, Vec<Slot>) {
        let mut scored = Vec::with_capacity(slots.len());
        let mut missing = Vec::new();
        for &s in slots {
            match self.hnsw.score(q, s.0) {
                Some(x) => scored.push((s, x)),
                None => missing.push(s),
            }
        }
        (scored, missing)
    }
}

/// The one copy of `name` in `names`, added when it has none (a new `Arc` only then, and only
/// when `name` is not one already).
pub(crate) fn interned<S: AsRef<str> + Into<Arc<str>>>(names: &mut HashSet<Arc<str>>, name: S) -> Arc<str> {
    if let Some(known) = names.get(name.as_ref()) {
        return known.clone();
    }
    let name: Arc<str> = name.into();
    names.insert(name.clone());
    name
}

/// Name prefix of the scratch directories graph reloads through `hnsw_rs` wrote (inside the
/// index directory) before the graph was our own; an open removes any a crash left behind.
pub const SCRATCH_PREFIX: &str = ".graph-load-";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::snapshot::{decode, encode};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn unit(rng: &mut StdRng, d: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    fn meta(i: usize) -> SlotMeta {
        SlotMeta { item: ItemId(format!("v{i}")), patient: Some(format!("p{}", i % 5).into()), study: None, date: None }
    }

    #[test]
    fn slots_share_one_copy_of_each_patient_and_study() {
        let mut g = Graph::new(4, false);
        let facts = |i: usize, study: &str| SlotMeta {
            item: ItemId(format!("v{i}")),
            patient: Some(format!("p{}", i % 2).into()),
            study: Some(study.into()),
            date: None,
        };
        for i in 0..6 {
            g.set_meta(Slot(i as u32), facts(i, if i < 3 { "s1" } else { "s2" }));
        }
        fn patient(g: &Graph, i: u32) -> &Arc<str> {
            g.meta(Slot(i)).unwrap().patient.as_ref().unwrap()
        }
        fn study(g: &Graph, i: u32) -> &Arc<str> {
            g.meta(Slot(i)).unwrap().study.as_ref().unwrap()
        }
        assert!(Arc::ptr_eq(patient(&g, 0), patient(&g, 4)));
        assert!(!Arc::ptr_eq(patient(&g, 0), patient(&g, 1)));
        assert!(Arc::ptr_eq(study(&g, 3), study(&g, 5)));
        g.update_meta(Slot(1), facts(2, "s2"));
        assert!(Arc::ptr_eq(study(&g, 1), study(&g, 5)), "an update shares too");
        assert_eq!(g.names.len(), 4, "p0, p1, s1, s2");
        let want = |p: Option<&str>, s: Option<&str>| Filter { patient: p.map(Into::into), study: s.map(Into::into), ..Filter::default() };
        assert_eq!(g.candidates(&want(Some("p0"), None)), vec![Slot(0), Slot(1), Slot(2), Slot(4)]);
        assert_eq!(g.candidates(&want(Some("p1"), Some("s2"))), vec![Slot(3), Slot(5)]);
        assert_eq!(g.candidates(&want(Some("p"), None)), vec![]);
        g.update_meta(Slot(9), facts(9, "s9"));
        assert!(g.meta(Slot(9)).is_none() && g.names.len() == 4, "no update of a slot that is not live");
    }

    #[test]
    fn a_graph_round_trips_through_a_snapshot_and_keeps_growing() {
        let mut rng = StdRng::seed_from_u64(11);
        let vs: Vec<Vec<f32>> = (0..3000).map(|_| unit(&mut rng, 16)).collect();
        let mut g = Graph::new(16, false);
        let rows: Vec<(Slot, &[f32])> = vs.iter().enumerate().map(|(i, v)| (Slot(i as u32 * 2), v.as_slice())).collect();
        g.insert_hidden(&rows);
        let q = unit(&mut rng, 16);
        assert!(g.search(&q, 10, 64, &Filter::default()).is_empty(), "hidden until set_meta");
        for i in 0..3000 {
            g.set_meta(Slot(i as u32 * 2), meta(i));
        }
        let topo = g.topology();
        assert_eq!(topo.len(), 3000);
        assert!(topo.layers() >= 2, "a 3000-node graph has upper layers");
        let back = decode(&encode(&topo)).unwrap();
        assert_eq!(back, topo);
        let mut h = Graph::from_snapshot(back, false, |s| vs.get(s.0 as usize / 2).map(Vec::as_slice));
        for i in 0..3000 {
            h.set_meta(Slot(i as u32 * 2), meta(i));
        }
        assert_eq!(h.nodes(), 3000);
        assert_eq!(h.topology(), topo, "same nodes, levels, links and entry");
        let only_p1 = Filter { patient: Some("p1".into()), ..Filter::default() };
        for _ in 0..100 {
            let q = unit(&mut rng, 16);
            assert_eq!(h.search(&q, 10, 64, &Filter::default()), g.search(&q, 10, 64, &Filter::default()));
            assert_eq!(h.search(&q, 10, 64, &only_p1), g.search(&q, 10, 64, &only_p1));
        }
        // The loaded graph takes inserts at once, like the original.
        let extra: Vec<Vec<f32>> = (0..500).map(|_| unit(&mut rng, 16)).collect();
        let rows: Vec<(Slot, &[f32])> = extra.iter().enumerate().map(|(i, v)| (Slot(6000 + i as u32), v.as_slice())).collect();
        h.insert_hidden(&rows);
        for i in 0..500 {
            h.set_meta(Slot(6000 + i as u32), meta(3000 + i));
        }
        assert_eq!(h.nodes(), 3500);
        for (i, v) in extra.iter().enumerate() {
            assert_eq!(h.search(v, 1, 32, &Filter::default())[0].0, Slot(6000 + i as u32), "inserted vector {i} found");
        }
        for (i, v) in vs.iter().enumerate().step_by(10) {
            assert_eq!(h.search(v, 1, 64, &Filter::default())[0].0, Slot(i as u32 * 2), "old vector {i} found");
        }
        let (scored, missing) = h.score(&extra[0], &[Slot(6000), Slot(1), Slot(4)]);
        assert_eq!(missing, vec![Slot(1)]);
        assert!((scored[0].1 - 1.0).abs() < 1e-5 && scored[1].0 == Slot(4));
    }

    #[test]
    fn dead_and_hidden_slots_are_walked_through_not_returned() {
        let mut rng = StdRng::seed_from_u64(12);
        let vs: Vec<Vec<f32>> = (0..1000).map(|_| unit(&mut rng, 8)).collect();
        let mut g = Graph::new(8, false);
        let rows: Vec<(Slot, &[f32])> = vs.iter().enumerate().map(|(i, v)| (Slot(i as u32), v.as_slice())).collect();
        g.insert_hidden(&rows);
        for i in (0..1000).filter(|i| i % 2 == 0) {
            g.set_meta(Slot(i as u32), meta(i));
        }
        for i in (0..1000).filter(|i| i % 4 == 0) {
            g.kill(Slot(i as u32));
        }
        assert_eq!(g.live(), 250);
        for v in vs.iter().take(50) {
            let hits = g.search(v, 10, 64, &Filter::default());
            assert_eq!(hits.len(), 10);
            assert!(hits.iter().all(|h| h.0 .0 % 4 == 2), "{hits:?}");
        }
    }
}
