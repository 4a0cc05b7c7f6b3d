//! One HNSW graph (`hnsw_rs`, dot product on unit vectors = cosine) per collection, plus the
//! per-slot facts that searches filter on. A cache of what RocksDB holds: reloaded from its
//! snapshot on open (see `snapshot`), or rebuilt from the stored vectors.

use crate::date::StudyDate;
use crate::ids::{ItemId, Slot};
use crate::search::Filter;
use crate::snapshot::Topology;
use crate::walk::{dot, Flat};
use anndists::dist::DistDot;
use hnsw_rs::hnsw::Hnsw;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// Searches re-copy the graph when more vectors than this wait in the exactly-searched tail.
const SEARCH_TAIL_MAX: usize = 1024;

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
    /// Study date.
    pub date: Option<StudyDate>,
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
/// `hnsw_rs` holds the graph being built; searches walk a [`Flat`] copy of it, taken again by
/// an insert that leaves more than [`Graph::stale_limit`] vectors outside the copy, or by a
/// search that finds more than 1024 there. Those newer vectors (the tail) are searched exactly,
/// so every inserted vector is always found.
///
/// A graph opened from a snapshot is searched at once through a flat copy made straight from
/// the snapshot ([`Flat::from_topology`]); the `hnsw_rs` graph itself is reloaded only when
/// something is first inserted into it (most opens only search).
pub struct Graph {
    hnsw: OnceLock<Hnsw<'static, f32, DistDot>>,
    /// The snapshot `hnsw` is still to be reloaded from, and the directory for the scratch
    /// files of that reload.
    unloaded: Mutex<Option<(Topology, PathBuf)>>,
    flat: RwLock<Arc<Flat>>,
    /// Vectors inserted into `hnsw` that may be missing from `flat`.
    tail: RwLock<Vec<(Slot, Vec<f32>)>>,
    freezing: Mutex<()>,
    slots: Vec<Option<SlotMeta>>,
    /// Bit `i` set when slot `i` is live: what an unfiltered search checks, without touching
    /// the (larger, scattered) metadata.
    visible: Vec<u64>,
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
        Self::from_hnsw(new_hnsw(capacity), dim)
    }

    /// Wraps a graph reloaded from a snapshot; every node is invisible until [`Graph::set_meta`].
    pub fn from_hnsw(hnsw: Hnsw<'static, f32, DistDot>, dim: usize) -> Self {
        let g = Self::empty(dim, OnceLock::from(hnsw));
        if g.loaded().is_some_and(|h| h.get_nb_point() > 0) {
            g.freeze();
        }
        g
    }

    /// The graph of a validated snapshot `t` whose every node has its vector in `vector`,
    /// searchable at once; its `hnsw_rs` graph is reloaded (through scratch files in a temporary
    /// directory under `scratch`) on the first insert. Nodes are invisible until
    /// [`Graph::set_meta`].
    pub fn from_snapshot<'v>(t: Topology, dim: usize, vector: impl Fn(Slot) -> Option<&'v [f32]>, scratch: &Path) -> Self {
        let g = Self::empty(dim, OnceLock::new());
        *write(&g.flat) = Arc::new(Flat::from_topology(&t, dim, |s| vector(Slot(s))));
        *lock(&g.unloaded) = Some((t, scratch.to_path_buf()));
        g
    }

    fn empty(dim: usize, hnsw: OnceLock<Hnsw<'static, f32, DistDot>>) -> Self {
        Self {
            hnsw,
            unloaded: Mutex::new(None),
            flat: RwLock::new(Arc::new(Flat::default())),
            tail: RwLock::new(Vec::new()),
            freezing: Mutex::new(()),
            slots: Vec::new(),
            visible: Vec::new(),
            live: 0,
            dim,
            covered: 0,
            pending: 0,
        }
    }

    /// The `hnsw_rs` graph when it is in memory (not waiting to be reloaded).
    fn loaded(&self) -> Option<&Hnsw<'static, f32, DistDot>> {
        self.hnsw.get()
    }

    /// The `hnsw_rs` graph, reloaded from the snapshot first if need be. The snapshot was
    /// validated when the index opened, so the reload only fails on scratch-file I/O; then the
    /// graph is rebuilt from the flat copy's vectors instead (slower, never wrong).
    fn hnsw(&self) -> &Hnsw<'static, f32, DistDot> {
        if let Some(h) = self.hnsw.get() {
            return h;
        }
        let mut unloaded = lock(&self.unloaded);
        if let Some((t, scratch)) = unloaded.take() {
            let flat = Arc::clone(&read(&self.flat));
            let reloaded = tempfile::Builder::new()
                .prefix(SCRATCH_PREFIX)
                .tempdir_in(&scratch)
                .map_err(|e| format!("scratch dir: {e}"))
                .and_then(|dir| crate::snapshot::restore(&t, |s| flat.vector_of(s.0), dir.path()).map_err(|e| e.to_string()));
            let h = reloaded.unwrap_or_else(|why| {
                tracing::warn!(reason = %why, "graph snapshot reload failed; rebuilding the graph from its vectors");
                let h = new_hnsw(flat.len());
                let rows: Vec<(&[f32], usize)> = flat.slots().filter_map(|s| flat.vector_of(s).map(|v| (v, s as usize))).collect();
                h.parallel_insert_slice(&rows);
                h
            });
            let _ = self.hnsw.set(h);
        }
        drop(unloaded);
        // Set above, by this call or by the one that held the lock before it.
        self.hnsw.get_or_init(|| new_hnsw(0))
    }

    /// Puts vectors into the graph without making them visible (`&self`: `hnsw_rs` inserts
    /// concurrently with searches). [`Graph::set_meta`] reveals them.
    pub fn insert_hidden(&self, rows: &[(Slot, &[f32])]) {
        if rows.is_empty() {
            return;
        }
        let hnsw = self.hnsw();
        // Into the tail first: a vector is always in the flat copy, the tail, or both.
        write(&self.tail).extend(rows.iter().map(|(s, v)| (*s, v.to_vec())));
        if rows.len() > 64 {
            let refs: Vec<(&[f32], usize)> = rows.iter().map(|(s, v)| (*v, s.0 as usize)).collect();
            hnsw.parallel_insert_slice(&refs);
        } else {
            rows.iter().for_each(|(s, v)| hnsw.insert_slice((v, s.0 as usize)));
        }
        if read(&self.tail).len() > self.stale_limit() {
            self.freeze();
        }
    }

    /// How many vectors may wait in the exactly-searched tail before the flat copy is taken
    /// again: a copy costs O(nodes), so copying every 1/32 growth keeps its amortised cost
    /// per insert constant (and small next to the insert itself).
    pub fn stale_limit(&self) -> usize {
        (read(&self.flat).len() / 32).max(1024)
    }

    /// Takes a fresh flat copy of the graph and drops the tail vectors it now holds.
    pub fn freeze(&self) {
        let _one = self.freezing.lock().unwrap_or_else(|e| e.into_inner());
        self.freeze_locked();
    }

    /// [`Graph::freeze`] with `freezing` held.
    fn freeze_locked(&self) {
        // Not reloaded yet: nothing was inserted, the flat copy made from the snapshot is whole.
        let Some(hnsw) = self.loaded() else { return };
        let flat = Arc::new(Flat::capture(hnsw, self.dim));
        let mut tail = write(&self.tail);
        tail.retain(|(s, _)| !flat.contains(s.0));
        let keep = tail.len() * 2;
        tail.shrink_to(keep);
        *write(&self.flat) = flat;
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
        if self.visible.len() <= i / 64 {
            self.visible.resize(i / 64 + 1, 0);
        }
        self.visible[i / 64] |= 1 << (i % 64);
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
        match self.loaded() {
            Some(h) => h.get_nb_point(),
            None => lock(&self.unloaded).as_ref().map_or(0, |(t, _)| t.len()),
        }
    }

    /// The slot of every graph node.
    pub fn node_slots(&self) -> Vec<Slot> {
        let Some(hnsw) = self.loaded() else {
            return lock(&self.unloaded).as_ref().map_or_else(Vec::new, |(t, _)| t.slots().map(Slot).collect());
        };
        let pi = hnsw.get_point_indexation();
        (0..HNSW_MAX_LAYER).flat_map(|l| pi.get_layer_iterator(l).map(|p| Slot(p.get_origin_id() as u32))).collect()
    }

    /// Live slots with their facts.
    pub fn live_slots(&self) -> impl Iterator<Item = (Slot, &SlotMeta)> {
        self.slots.iter().enumerate().filter_map(|(i, m)| m.as_ref().map(|m| (Slot(i as u32), m)))
    }

    /// The graph's topology, for a snapshot.
    pub fn topology(&self) -> Topology {
        match self.loaded() {
            Some(h) => crate::snapshot::capture(h, self.dim),
            None => {
                let t = lock(&self.unloaded).as_ref().map(|(t, _)| t.clone());
                t.unwrap_or_else(|| crate::snapshot::capture(self.hnsw(), self.dim))
            }
        }
    }

    /// Facts about a live slot.
    pub fn meta(&self, slot: Slot) -> Option<&SlotMeta> {
        self.slots.get(slot.0 as usize).and_then(Option::as_ref)
    }

    /// Live slots passing `filter`, in slot order.
    pub fn candidates(&self, filter: &Filter) -> Vec<Slot> {
        self.slots.iter().enumerate().filter_map(|(i, m)| m.as_ref().filter(|m| m.matches(filter)).map(|_| Slot(i as u32))).collect()
    }

    /// Approximate k nearest live slots passing `filter`, as (slot, cosine), best first: a
    /// walk of the flat copy (nodes that are dead, hidden or filtered out are walked through,
    /// not returned) merged with an exact pass over the tail.
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
        // A long tail makes every search pay for it: re-copy now (one search does, the others
        // go on with the current copy meanwhile).
        if read(&self.tail).len() > SEARCH_TAIL_MAX {
            if let Ok(_one) = self.freezing.try_lock() {
                self.freeze_locked();
            }
        }
        let flat = Arc::clone(&read(&self.flat));
        let mut found: Vec<(Slot, f32)> = flat.search(q, k, ef, pass).into_iter().map(|(s, d)| (Slot(s), d)).collect();
        {
            let tail = read(&self.tail);
            found.extend(tail.iter().filter(|(s, _)| !flat.contains(s.0) && pass(s.0)).map(|(s, v)| (*s, dot(q, v))));
        }
        found.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        found.dedup_by_key(|h| h.0);
        found.truncate(k);
        found
    }
}

impl Graph {
    /// Exact cosine of `q` with each of `slots` whose vector is in memory (the flat copy or
    /// the tail); the slots whose vector is not come back second.
    pub fn score(&self, q: &[f32], slots: &[Slot]) -> (Vec<(Slot, f32)>, Vec<Slot>) {
        let flat = Arc::clone(&read(&self.flat));
        let ids: Vec<u32> = slots.iter().map(|s| s.0).collect();
        let mut scored: Vec<(Slot, f32)> = flat.score(q, &ids).into_iter().map(|(s, d)| (Slot(s), d)).collect();
        let rest: Vec<Slot> = slots.iter().filter(|s| !flat.contains(s.0)).copied().collect();
        if rest.is_empty() {
            return (scored, rest);
        }
        let tail = read(&self.tail);
        let by_slot: std::collections::HashMap<Slot, &Vec<f32>> = tail.iter().map(|(s, v)| (*s, v)).collect();
        let mut missing = Vec::new();
        for s in rest {
            match by_slot.get(&s) {
                Some(v) => scored.push((s, dot(q, v))),
                None => missing.push(s),
            }
        }
        (scored, missing)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An empty `hnsw_rs` graph sized for about `capacity` vectors.
fn new_hnsw(capacity: usize) -> Hnsw<'static, f32, DistDot> {
    Hnsw::new(HNSW_M, capacity.max(1024), HNSW_MAX_LAYER, HNSW_EF_CONSTRUCTION, DistDot)
}

/// Name prefix of the scratch directories a graph reload writes `hnsw_rs`'s files into
/// (inside the index directory; an open removes any a crash left behind).
pub const SCRATCH_PREFIX: &str = ".graph-load-";

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
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
