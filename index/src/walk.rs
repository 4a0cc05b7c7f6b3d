//! Searching a flat, read-only copy of an `hnsw_rs` graph.
//!
//! `hnsw_rs` builds the graph (insertion, neighbour selection, levels) and its topology is what
//! snapshots persist. Its own search is slow for our use: every neighbour list sits behind a
//! lock and an `Arc` per edge, the visited set is a hash map, and its filtered walk never
//! takes the early exit (it explores until the candidate heap is empty). [`Flat`] copies the
//! graph into one block per node, as `hnswlib` lays it out (slot, layer-0 degree and neighbours,
//! then the vector: one region of memory per node; upper layers aside), and walks it the way
//! `hnswlib` does: greedy descent through the upper layers,
//! then a best-first search on layer 0 with `ef` results, where nodes a filter rejects (dead,
//! hidden, or outside the filter) are traversed but never counted as results — so filtered
//! walks stop as soon as `ef` accepted nodes beat every open candidate.
//!
//! A `Flat` is a copy taken at one moment; vectors inserted after it are searched exactly from
//! the graph's tail (see `graph.rs`) until the next copy.

use crate::snapshot::Topology;
use anndists::dist::DistDot;
use hnsw_rs::hnsw::Hnsw;
use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

const NONE: u32 = u32::MAX;

/// A point being laid out: slot, vector, neighbour slots per layer from layer 0.
type Point<V> = (u32, V, Vec<Vec<u32>>);

/// A read-only copy of a graph's topology and vectors.
#[derive(Debug, Default, PartialEq)]
pub struct Flat {
    dim: usize,
    /// Most layer-0 neighbours of any node.
    width: usize,
    /// Floats per node block: slot, degree, `width` neighbour node numbers (all as `f32` bit
    /// patterns), then the `dim` vector components.
    stride: usize,
    blocks: Vec<f32>,
    /// Slot → node (`NONE` when the slot is not in this copy).
    node_of: Vec<u32>,
    /// Neighbours on layers 1.. of the nodes that have any: `upper[node][layer - 1]`.
    upper: HashMap<u32, Vec<Vec<u32>>>,
    /// Entry node and its layer.
    entry: Option<(u32, usize)>,
    nodes: usize,
}

impl Flat {
    /// Copies `hnsw`'s graph. Safe while other threads insert: a neighbour that is not (yet) a
    /// point of the copy is left out, and such points stay in the graph's tail.
    pub fn capture(hnsw: &Hnsw<'static, f32, DistDot>, dim: usize) -> Self {
        let pi = hnsw.get_point_indexation();
        let top = if hnsw.get_nb_point() == 0 { 0 } else { pi.get_max_level_observed() as usize + 1 };
        let mut points: Vec<Point<Vec<f32>>> = Vec::with_capacity(hnsw.get_nb_point());
        let mut entry = None;
        for l in (0..top).rev() {
            for p in pi.get_layer_iterator(l) {
                entry = entry.or(Some((p.get_origin_id() as u32, l)));
                let hood = p.get_neighborhood_id();
                let used = hood.iter().rposition(|ns| !ns.is_empty()).map_or(1, |i| i + 1);
                let lists = hood.iter().take(used).map(|ns| ns.iter().map(|n| n.d_id as u32).collect()).collect();
                points.push((p.get_origin_id() as u32, p.get_v().to_vec(), lists));
            }
        }
        Self::assemble(points, entry, dim)
    }

    /// The copy [`Flat::capture`] would take of the graph `hnsw_rs` reloads from `t` (same
    /// nodes, links, entry point and vectors), made without `hnsw_rs`: what lets an index
    /// open search at once and reload the `hnsw_rs` graph only when it is first inserted into.
    /// Points whose vector `vector` lacks are left out.
    pub fn from_topology<'v>(t: &Topology, dim: usize, vector: impl Fn(u32) -> Option<&'v [f32]>) -> Self {
        let mut points: Vec<Point<&'v [f32]>> = Vec::with_capacity(t.len());
        let mut entry = None;
        for (l, layer) in t.layers.iter().enumerate().rev() {
            for n in layer {
                entry = entry.or(Some((n.slot, l)));
                if let Some(v) = vector(n.slot) {
                    let lists = if n.neighbours.is_empty() { vec![Vec::new()] } else { n.neighbours.clone() };
                    points.push((n.slot, v, lists));
                }
            }
        }
        Self::assemble(points, entry, dim)
    }

    /// Lays out `points` (top layer first; a slot seen again lower down is dropped) as node
    /// blocks in slot order, entering at `entry_slot` (the first point of the top layer, as
    /// `hnsw_rs`'s layer iterator gives it, with that layer).
    fn assemble<V: AsRef<[f32]>>(mut points: Vec<Point<V>>, entry_slot: Option<(u32, usize)>, dim: usize) -> Self {
        points.sort_by_key(|p| p.0);
        points.dedup_by_key(|p| p.0);
        let max_slot = points.last().map_or(0, |p| p.0 as usize + 1);
        let mut node_of = vec![NONE; max_slot];
        for (i, p) in points.iter().enumerate() {
            node_of[p.0 as usize] = i as u32;
        }
        let map = |s: &u32| node_of.get(*s as usize).copied().filter(|n| *n != NONE);
        let width = points.iter().map(|p| p.2.first().map_or(0, Vec::len)).max().unwrap_or(0);
        let stride = 2 + width + dim;
        let mut flat = Flat { dim, width, stride, nodes: points.len(), ..Flat::default() };
        flat.blocks = vec![0.0; points.len() * stride];
        for (i, (slot, v, lists)) in points.iter().enumerate() {
            let v = v.as_ref();
            let b = &mut flat.blocks[i * stride..(i + 1) * stride];
            b[0] = f32::from_bits(*slot);
            let links: Vec<u32> = lists.first().into_iter().flatten().filter_map(map).collect();
            b[1] = f32::from_bits(links.len() as u32);
            for (j, n) in links.iter().enumerate() {
                b[2 + j] = f32::from_bits(*n);
            }
            if v.len() == dim {
                b[2 + width..].copy_from_slice(v);
            }
            if lists.len() > 1 {
                let up: Vec<Vec<u32>> = lists[1..].iter().map(|ns| ns.iter().filter_map(map).collect()).collect();
                flat.upper.insert(i as u32, up);
            }
        }
        flat.entry = entry_slot.and_then(|(s, l)| map(&s).map(|n| (n, l)));
        flat.node_of = node_of;
        flat
    }

    /// The vector of `slot`, when it is a node of the copy.
    pub fn vector_of(&self, slot: u32) -> Option<&[f32]> {
        self.node_of.get(slot as usize).filter(|n| **n != NONE).map(|n| self.vector(*n))
    }

    /// Every node's slot, in slot order.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.nodes as u32).map(|n| self.slot(n))
    }

    /// Number of nodes in the copy.
    pub fn len(&self) -> usize {
        self.nodes
    }

    /// True when `slot` is a node of the copy.
    pub fn contains(&self, slot: u32) -> bool {
        self.node_of.get(slot as usize).is_some_and(|n| *n != NONE)
    }

    fn block(&self, node: u32) -> &[f32] {
        let i = node as usize * self.stride;
        &self.blocks[i..i + self.stride]
    }

    fn vector(&self, node: u32) -> &[f32] {
        &self.block(node)[2 + self.width..]
    }

    fn slot(&self, node: u32) -> u32 {
        self.block(node)[0].to_bits()
    }

    fn upper(&self, node: u32, layer: usize) -> &[u32] {
        self.upper.get(&node).and_then(|u| u.get(layer - 1)).map_or(&[], Vec::as_slice)
    }

    /// The `k` accepted nodes most similar to `q` (unit vector), as (slot, cosine), best first.
    /// `accept(slot)` decides what may be a result; rejected nodes are still walked through.
    pub fn search(&self, q: &[f32], k: usize, ef: usize, accept: impl Fn(u32) -> bool) -> Vec<(u32, f32)> {
        if self.entry.is_none() || q.len() != self.dim || k == 0 {
            return Vec::new();
        }
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512() {
                // SAFETY: the CPU supports the features `search_avx512` is compiled for.
                #[allow(unsafe_code)]
                return unsafe { self.search_avx512(q, k, ef, accept) };
            }
            if has_avx2_fma() {
                // SAFETY: the CPU supports the features `search_avx2` is compiled for.
                #[allow(unsafe_code)]
                return unsafe { self.search_avx2(q, k, ef, accept) };
            }
        }
        self.walk(q, k, ef, accept, |a, b| dot_lanes(a, b, |x, y, acc| acc + x * y), |_| {})
    }

    /// The walk compiled for AVX-512: as [`Flat::search_avx2`], the dot product's 32 lanes in
    /// two 512-bit registers.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn search_avx512(&self, q: &[f32], k: usize, ef: usize, accept: impl Fn(u32) -> bool) -> Vec<(u32, f32)> {
        self.walk(q, k, ef, accept, |a, b| finish(a, b, wide_avx512(a, b), f32::mul_add), |b| prefetch(b))
    }

    /// The walk compiled for AVX2/FMA: the dot product inlines into it as FMA vector code, and
    /// each neighbour's vector is prefetched before the distances are computed.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn search_avx2(&self, q: &[f32], k: usize, ef: usize, accept: impl Fn(u32) -> bool) -> Vec<(u32, f32)> {
        self.walk(q, k, ef, accept, |a, b| finish(a, b, wide_avx2(a, b), f32::mul_add), |b| prefetch(b))
    }

    #[inline(always)]
    fn walk(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        accept: impl Fn(u32) -> bool,
        dot: impl Fn(&[f32], &[f32]) -> f32,
        prefetch: impl Fn(&[f32]),
    ) -> Vec<(u32, f32)> {
        let Some((mut cur, top)) = self.entry else { return Vec::new() };
        let ef = ef.max(k);
        let mut cur_sim = dot(q, self.vector(cur));
        for layer in (1..=top).rev() {
            loop {
                let mut moved = false;
                for &nb in self.upper(cur, layer) {
                    let s = dot(q, self.vector(nb));
                    if s > cur_sim {
                        (cur, cur_sim, moved) = (nb, s, true);
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        VISITED.with(|cell| {
            let mut visited = cell.borrow_mut();
            let stamp = visited.next(self.len());
            // Sized by what the graph can hold, not by a caller's k (a request may ask for 10^12).
            let cap = ef.min(self.len());
            let mut candidates: BinaryHeap<(Sim, u32)> = BinaryHeap::with_capacity(cap.saturating_mul(4));
            let mut results: BinaryHeap<Reverse<(Sim, u32)>> = BinaryHeap::with_capacity(cap + 1);
            let mut fresh: Vec<u32> = Vec::with_capacity(64);
            visited.marks[cur as usize] = stamp;
            candidates.push((Sim(cur_sim), cur));
            if accept(self.slot(cur)) {
                results.push(Reverse((Sim(cur_sim), cur)));
            }
            while let Some((Sim(s), node)) = candidates.pop() {
                let worst = results.peek().map_or(f32::NEG_INFINITY, |r| r.0 .0 .0);
                if results.len() >= ef && s < worst {
                    break;
                }
                let block = self.block(node);
                let degree = block[1].to_bits() as usize;
                // First the unvisited neighbours (their blocks on their way to the cache), then
                // their distances.
                fresh.clear();
                for nb in block[2..2 + degree].iter().map(|f| f.to_bits()) {
                    let mark = &mut visited.marks[nb as usize];
                    if *mark != stamp {
                        *mark = stamp;
                        prefetch(&self.block(nb)[..1]);
                        prefetch(self.vector(nb));
                        fresh.push(nb);
                    }
                }
                for &nb in &fresh {
                    let sn = dot(q, self.vector(nb));
                    let worst = results.peek().map_or(f32::NEG_INFINITY, |r| r.0 .0 .0);
                    if results.len() < ef || sn > worst {
                        candidates.push((Sim(sn), nb));
                        if accept(self.slot(nb)) {
                            results.push(Reverse((Sim(sn), nb)));
                            if results.len() > ef {
                                results.pop();
                            }
                        }
                    }
                }
            }
            let mut out: Vec<(u32, f32)> = results.into_iter().map(|Reverse((Sim(s), n))| (self.slot(n), s)).collect();
            out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            out.truncate(k);
            out
        })
    }

    /// Exact scores of `slots` that are in this copy (others are skipped), from the in-memory
    /// vectors.
    pub fn score(&self, q: &[f32], slots: &[u32]) -> Vec<(u32, f32)> {
        slots.iter().filter_map(|s| self.node_of.get(*s as usize).filter(|n| **n != NONE).map(|n| (*s, dot(q, self.vector(*n))))).collect()
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// Hints the cache to fetch `b` (its addresses are inside the slice; a hint never faults).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse")]
#[inline]
fn prefetch(b: &[f32]) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for line in b.chunks(16) {
        _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::is_x86_feature_detected!("avx512f") && has_avx2_fma()
}

/// A similarity ordered totally (NaN never occurs: vectors are finite unit vectors).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sim(f32);

impl Eq for Sim {}

impl PartialOrd for Sim {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Sim {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Per-thread visited marks, reused across searches: a node is visited when its mark equals
/// the current stamp, so clearing is one increment.
#[derive(Default)]
struct Visited {
    marks: Vec<u32>,
    stamp: u32,
}

impl Visited {
    fn next(&mut self, n: usize) -> u32 {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.stamp = 1;
        }
        self.stamp
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = RefCell::new(Visited::default());
}

/// Dot product (cosine for unit vectors), with AVX2/FMA when the CPU has them.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: the CPU supports the features `dot_avx512` is compiled for (checked above).
            #[allow(unsafe_code)]
            return unsafe { dot_avx512(a, b) };
        }
        if has_avx2_fma() {
            // SAFETY: the CPU supports the features `dot_avx2` is compiled for (checked above).
            #[allow(unsafe_code)]
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_lanes(a, b, |x, y, acc| acc + x * y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    finish(a, b, wide_avx512(a, b), f32::mul_add)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    finish(a, b, wide_avx2(a, b), f32::mul_add)
}

/// [`wide`] in four 256-bit FMA registers (lane `p` of the result is lane `p % 8` of register
/// `p / 8`: the same sums in the same order).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn wide_avx2(a: &[f32], b: &[f32]) -> [f32; 32] {
    use std::arch::x86_64::{_mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps};
    let n = a.len().min(b.len()) / 32 * 32;
    let mut acc = [_mm256_setzero_ps(); 4];
    for i in (0..n).step_by(32) {
        for (j, r) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8j + 8 <= n, within both slices.
            #[allow(unsafe_code)]
            let (x, y) = unsafe { (_mm256_loadu_ps(a.as_ptr().add(i + 8 * j)), _mm256_loadu_ps(b.as_ptr().add(i + 8 * j))) };
            *r = _mm256_fmadd_ps(x, y, *r);
        }
    }
    let mut out = [0.0f32; 32];
    for (j, r) in acc.iter().enumerate() {
        // SAFETY: `out` has room for 8 floats at 8j.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * j), *r)
        };
    }
    out
}

/// [`wide`] in two 512-bit FMA registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn wide_avx512(a: &[f32], b: &[f32]) -> [f32; 32] {
    use std::arch::x86_64::{_mm512_fmadd_ps, _mm512_loadu_ps, _mm512_setzero_ps, _mm512_storeu_ps};
    let n = a.len().min(b.len()) / 32 * 32;
    let mut acc = [_mm512_setzero_ps(); 2];
    for i in (0..n).step_by(32) {
        for (j, r) in acc.iter_mut().enumerate() {
            // SAFETY: i + 16j + 16 <= n, within both slices.
            #[allow(unsafe_code)]
            let (x, y) = unsafe { (_mm512_loadu_ps(a.as_ptr().add(i + 16 * j)), _mm512_loadu_ps(b.as_ptr().add(i + 16 * j))) };
            *r = _mm512_fmadd_ps(x, y, *r);
        }
    }
    let mut out = [0.0f32; 32];
    for (j, r) in acc.iter().enumerate() {
        // SAFETY: `out` has room for 16 floats at 16j.
        #[allow(unsafe_code)]
        unsafe {
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * j), *r)
        };
    }
    out
}

/// The dot product, portable: [`wide`] then [`finish`].
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32], fma: impl Fn(f32, f32, f32) -> f32) -> f32 {
    finish(a, b, wide(a, b, &fma), fma)
}

/// Over the leading blocks of 32 components, 32 independent sums: lane `p` accumulates the
/// products at positions `p`, `p + 32`, … (the vector paths keep them in four 256-bit or two
/// 512-bit registers, so the fused multiply-adds overlap instead of waiting on one register).
#[inline(always)]
fn wide(a: &[f32], b: &[f32], fma: impl Fn(f32, f32, f32) -> f32) -> [f32; 32] {
    let n = a.len().min(b.len()) / 32 * 32;
    let mut lanes = [0.0f32; 32];
    for (x, y) in a[..n].chunks_exact(32).zip(b[..n].chunks_exact(32)) {
        for i in 0..32 {
            lanes[i] = fma(x[i], y[i], lanes[i]);
        }
    }
    lanes
}

/// The rest of the dot product after [`wide`]: the remaining components 8 at a time, then one
/// by one, and a fixed reduction order — so every path that fuses (portable `mul_add`, AVX2/FMA,
/// AVX-512) gives the same bits.
#[inline(always)]
fn finish(a: &[f32], b: &[f32], lanes: [f32; 32], fma: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let len = a.len().min(b.len());
    let n = len / 32 * 32;
    let (ra, rb) = (&a[n..len], &b[n..len]);
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (ra.chunks_exact(8), rb.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] = fma(x[i], y[i], acc[i]);
        }
    }
    for i in 0..8 {
        acc[i] += (lanes[i] + lanes[i + 16]) + (lanes[i + 8] + lanes[i + 24]);
    }
    let mut tail = 0.0;
    for (x, y) in ta.iter().zip(tb) {
        tail = fma(*x, *y, tail);
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_a_plain_sum() {
        for n in [0, 1, 7, 8, 9, 31, 32, 33, 40, 50, 64, 100, 512, 515] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 13 % 17) as f32 - 8.0) / 9.0).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn every_fused_path_gives_the_same_bits() {
        for n in [0, 1, 7, 8, 9, 31, 32, 33, 40, 50, 64, 100, 512, 515] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 13 % 17) as f32 - 8.0) / 9.0).collect();
            let portable = dot_lanes(&a, &b, f32::mul_add);
            #[cfg(target_arch = "x86_64")]
            {
                if has_avx2_fma() {
                    #[allow(unsafe_code)]
                    // SAFETY: checked just above.
                    let v = unsafe { dot_avx2(&a, &b) };
                    assert_eq!(v.to_bits(), portable.to_bits(), "avx2, n={n}");
                }
                if has_avx512() {
                    #[allow(unsafe_code)]
                    // SAFETY: checked just above.
                    let v = unsafe { dot_avx512(&a, &b) };
                    assert_eq!(v.to_bits(), portable.to_bits(), "avx512, n={n}");
                }
            }
        }
    }

    #[test]
    fn visited_stamps_wrap_without_stale_marks() {
        let mut v = Visited { marks: vec![u32::MAX; 4], stamp: u32::MAX };
        let s = v.next(4);
        assert_eq!(s, 1);
        assert!(v.marks.iter().all(|m| *m == 0));
    }
}
