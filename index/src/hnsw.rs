//! Our HNSW graph: `hnswlib`'s algorithm (levels, insertion, the neighbour-selection heuristic,
//! pruning of overfull lists) in one structure that is both built and searched, holding each
//! vector once.
//!
//! Nodes live in fixed-size blocks laid out as `hnswlib` lays them out — slot, level, where its
//! upper-layer lists are, layer-0 degree and up to `2M` links, then the vector (f32, or IEEE
//! halves two to a word for a space stored as f16: half the memory) — in
//! segments that are allocated once and never move (segment `s` holds `64 · 2^s` nodes), so a
//! node's address is stable and reading one takes no lock. Upper-layer lists (levels ≥ 1, about
//! one node in `M`) sit in a separate arena of words. Every link and degree is an atomic word:
//! searches never lock; a search that reads a list while an insert rewrites it may see a mix of
//! old and new links, all of them nodes whose block was written before anything linked them.
//! Writers lock a node (a striped mutex) to change its lists, one node at a time.
//!
//! Insertion is `hnswlib`'s `addPoint`: a level drawn as `floor(-ln(U) / ln(M))` (at most 15),
//! a greedy descent to that level, then per layer a search with `efConstruction`, the
//! heuristic selection of `M` neighbours, links both ways, and an overfull neighbour list
//! re-selected with the same heuristic. (One change for concurrent searches: a node is linked
//! from layer 0 up, after all its searches, so a walk never reaches it on a layer before its
//! lists below are in place.) A batch is inserted on every core. Distance is the dot
//! product of unit vectors (cosine), through the SIMD kernel in [`crate::walk`].
//!
//! A graph is loaded from a snapshot's topology ([`Hnsw::from_topology`]) by filling the
//! blocks directly, no re-insertion: it can be searched and inserted into at once.

use crate::snapshot::{Params, Topology};
use crate::walk::{self, Sim, Visited, VISITED};
use half::f16;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Highest level a node can have (16 layers, as `hnsw_rs` had).
pub const MAX_LEVEL: usize = 15;

/// Most links per node on layers ≥ 1 (`M`) a graph takes (snapshots asking for more are refused).
pub const MAX_M: usize = 64;
/// Largest `efConstruction` a graph takes (snapshots asking for more are refused).
pub const MAX_EF_CONSTRUCTION: usize = 4096;

/// Block words before the layer-0 links: slot, level, upper-list offset, layer-0 degree.
const HEAD: usize = 4;
const SLOT: usize = 0;
const LEVEL: usize = 1;
const UPPER: usize = 2;
const DEGREE: usize = 3;
/// `entry` when the graph is empty.
const EMPTY: u64 = u64::MAX;
/// Striped node locks.
const STRIPES: usize = 1024;
/// Batches at least this big are inserted on every core.
const PARALLEL_MIN: usize = 128;

/// First segment: `2^FIRST` elements; segment `s` holds `2^(FIRST + s)`.
const FIRST: u32 = 6;
/// Enough segments for more than `u32::MAX` elements.
const SEGMENTS: usize = 27;

/// Segment and index within it of element `e`.
#[inline(always)]
fn locate(e: usize) -> (usize, usize) {
    let x = e + (1usize << FIRST);
    let top = usize::BITS - 1 - x.leading_zeros();
    ((top - FIRST) as usize, x - (1usize << top))
}

/// First element of segment `s`.
fn segment_start(s: usize) -> usize {
    (1usize << FIRST) * ((1usize << s) - 1)
}

/// A growable array of `unit`-word elements in segments that never move: readers index it
/// without a lock, writers allocate a segment the first time they write into it.
struct Segments {
    unit: usize,
    segs: [OnceLock<Box<[AtomicU32]>>; SEGMENTS],
}

impl Segments {
    fn new(unit: usize) -> Self {
        Self { unit: unit.max(1), segs: std::array::from_fn(|_| OnceLock::new()) }
    }

    /// `n` elements from `e` (within one segment), empty when their segment is not allocated.
    #[inline(always)]
    fn run(&self, e: usize, n: usize) -> &[AtomicU32] {
        let (s, i) = locate(e);
        match self.segs.get(s).and_then(OnceLock::get) {
            Some(seg) => seg.get(i * self.unit..(i + n) * self.unit).unwrap_or(&[]),
            None => &[],
        }
    }

    /// Element `e`.
    #[inline(always)]
    fn get(&self, e: usize) -> &[AtomicU32] {
        self.run(e, 1)
    }

    /// Element `e`, allocating its segment if need be.
    fn ensure(&self, e: usize) -> &[AtomicU32] {
        let (s, _) = locate(e);
        if let Some(cell) = self.segs.get(s) {
            cell.get_or_init(|| zeroed(self.unit << (FIRST as usize + s)));
        }
        self.get(e)
    }
}

/// `n` zeroed words, from zeroed memory (pages not written stay unmapped: a segment's unused
/// tail costs address space, not memory).
fn zeroed(n: usize) -> Box<[AtomicU32]> {
    let words: Box<[u32]> = vec![0u32; n].into_boxed_slice();
    advise_huge_pages(&words);
    // SAFETY: `AtomicU32` has the same size, alignment and bit validity as `u32` (documented),
    // so a boxed slice of one is a boxed slice of the other, allocated with the same layout.
    #[allow(unsafe_code)]
    unsafe {
        Box::from_raw(Box::into_raw(words) as *mut [AtomicU32])
    }
}

/// Segments at least this big are backed by huge pages where the kernel offers them.
const HUGE_SEGMENT_BYTES: usize = 4 << 20;

/// Asks Linux to back `words` with transparent huge pages (2 MiB) where it can — honoured in the
/// `always` and `madvise` modes, ignored in `never`. A walk reads node blocks at random across
/// the whole graph: with 4 KiB pages nearly every block it reads costs a TLB miss and a page
/// walk; with 2 MiB pages the TLB covers hundreds of MiB. (`evindex bench`, 100k × 512-d: see
/// BENCHMARKS.md.) Unwritten pages still cost nothing until first written.
fn advise_huge_pages(words: &[u32]) {
    let bytes = size_of_val(words);
    if bytes < HUGE_SEGMENT_BYTES {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = words.as_ptr() as usize;
        let (first, end) = (start.next_multiple_of(PAGE), (start + bytes) & !(PAGE - 1));
        if end > first {
            // SAFETY: `[first, end)` lies inside the allocation `words` owns and is page
            // aligned; MADV_HUGEPAGE only changes how the kernel backs those pages, never their
            // contents, and a refusal (an error return) changes nothing.
            #[allow(unsafe_code)]
            unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE)
            };
        }
    }
}

/// How a graph holds its vectors: f32 as given, or IEEE halves (for spaces stored as f16).
trait Elem: Copy + Send + Sync + 'static {
    /// Words a vector of `dim` components takes.
    fn words(dim: usize) -> usize;
    /// The (at most `dim`) components held in `w`, a node's vector words.
    fn view(w: &[AtomicU32], dim: usize) -> &[Self];
    /// Writes `v` into `w` (components past `v`'s end are zero).
    fn store(w: &[AtomicU32], v: &[f32]);
    /// The components as f32, in `buf` where they must be converted (no allocation once `buf`
    /// has grown: the graph build widens a vector per candidate it weighs).
    fn widen_into<'a>(v: &'a [Self], buf: &'a mut Vec<f32>) -> &'a [f32];
}

impl Elem for f32 {
    fn words(dim: usize) -> usize {
        dim
    }

    #[inline(always)]
    fn view(w: &[AtomicU32], dim: usize) -> &[f32] {
        // SAFETY: `AtomicU32` and `f32` have the same size and alignment and every bit pattern
        // is a valid `f32`. These words are a node's vector: written once, before the node is
        // published (before `nodes` counts it, before its slot is mapped, before any link to it
        // is stored — all Release stores that readers load with Acquire), and never written
        // again; so nothing mutates them while the shared slice lives.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(w.as_ptr().cast::<f32>(), dim.min(w.len()))
        }
    }

    fn store(w: &[AtomicU32], v: &[f32]) {
        for (w, x) in w.iter().zip(v.iter().chain(std::iter::repeat(&0.0))) {
            w.store(x.to_bits(), Ordering::Relaxed);
        }
    }

    #[inline(always)]
    fn widen_into<'a>(v: &'a [f32], _: &'a mut Vec<f32>) -> &'a [f32] {
        v
    }
}

impl Elem for f16 {
    fn words(dim: usize) -> usize {
        dim.div_ceil(2)
    }

    #[inline(always)]
    fn view(w: &[AtomicU32], dim: usize) -> &[f16] {
        // SAFETY: `f16` is a transparent `u16` (any bit pattern valid, alignment 2 divides 4),
        // so `w`'s memory is `2 · w.len()` halves in native order — the order `store` wrote
        // them. The words are written once before the node is published and never again (as
        // for f32 above), so nothing mutates them while the shared slice lives.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(w.as_ptr().cast::<f16>(), dim.min(2 * w.len()))
        }
    }

    fn store(w: &[AtomicU32], v: &[f32]) {
        let half = |i: usize| v.get(i).map_or(0, |x| f16::from_f32(*x).to_bits()).to_ne_bytes();
        for (i, w) in w.iter().enumerate() {
            let (lo, hi) = (half(2 * i), half(2 * i + 1));
            w.store(u32::from_ne_bytes([lo[0], lo[1], hi[0], hi[1]]), Ordering::Relaxed);
        }
    }

    fn widen_into<'a>(v: &'a [f16], buf: &'a mut Vec<f32>) -> &'a [f32] {
        buf.clear();
        buf.extend(v.iter().map(|x| x.to_f32()));
        buf
    }
}

/// The graph. Shared (`&self`) by searches and inserts alike.
pub struct Hnsw {
    dim: usize,
    /// Vectors held as IEEE halves (else f32).
    half: bool,
    /// Max links per node on layers ≥ 1 (`M`); layer 0 allows `m0 = 2M`.
    m: usize,
    m0: usize,
    ef_construction: usize,
    /// Level scale `1/ln(M)`.
    mult: f64,
    /// Node blocks: `HEAD + m0` words, then the vector (`dim` words, `dim / 2` as halves).
    blocks: Segments,
    /// Upper-layer lists: per layer `1 + m` words (degree, links).
    upper: Segments,
    upper_next: Mutex<usize>,
    /// Slot → node + 1 (0: no node).
    slot_node: Segments,
    /// Nodes whose blocks are written (node ids below this).
    nodes: AtomicUsize,
    /// Entry node and its level (`level << 32 | node`), or `EMPTY`.
    entry: AtomicU64,
    /// Held while a node that raises the top level is inserted.
    top: Mutex<()>,
    locks: Box<[Mutex<()>]>,
    /// One batch at a time.
    inserting: Mutex<()>,
    /// Visited marks of the threads a batch runs on, kept for the next batch (a fresh thread's
    /// marks would otherwise be allocated and zeroed for the whole graph, batch after batch).
    visited: Mutex<Vec<Visited>>,
}

impl std::fmt::Debug for Hnsw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hnsw").field("dim", &self.dim).field("half", &self.half).field("m", &self.m).field("nodes", &self.len()).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A uniform draw in (0, 1] from `x` (splitmix64): levels depend on the slot only, so a
/// rebuild draws the same levels whatever the insertion order.
fn uniform(x: u64) -> f64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
}

/// The kernel a walk is compiled with: dot product of an f32 query and a held vector.
trait Kernel<E>: Fn(&[f32], &[E]) -> f32 {}
impl<E, F: Fn(&[f32], &[E]) -> f32> Kernel<E> for F {}

impl Hnsw {
    /// An empty graph of `dim`-dimensional vectors, `m` links per node (`2m` on layer 0), held
    /// as IEEE halves when `half` (then every vector inserted is rounded to f16).
    pub fn new(dim: usize, m: usize, ef_construction: usize, half: bool) -> Self {
        let m = m.clamp(2, MAX_M);
        let vwords = if half { f16::words(dim) } else { f32::words(dim) };
        Self {
            dim,
            half,
            m,
            m0: 2 * m,
            ef_construction: ef_construction.clamp(m, MAX_EF_CONSTRUCTION),
            mult: 1.0 / (m as f64).ln(),
            blocks: Segments::new(HEAD + 2 * m + vwords),
            upper: Segments::new(1),
            upper_next: Mutex::new(0),
            slot_node: Segments::new(1),
            nodes: AtomicUsize::new(0),
            entry: AtomicU64::new(EMPTY),
            top: Mutex::new(()),
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            inserting: Mutex::new(()),
            visited: Mutex::new(Vec::new()),
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.load(Ordering::Acquire)
    }

    /// True when vectors are held as IEEE halves.
    pub fn is_half(&self) -> bool {
        self.half
    }

    /// Bytes of memory the nodes take (blocks, upper lists, the slot map up to the last slot):
    /// what is resident; segments' unwritten tails are address space only.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        let slots = self.slots().max().map_or(0, |s| s as usize + 1);
        4 * (self.len() * self.blocks.unit + *lock(&self.upper_next) + slots)
    }

    #[inline(always)]
    fn block(&self, n: u32) -> &[AtomicU32] {
        self.blocks.get(n as usize)
    }

    #[inline(always)]
    fn word(&self, n: u32, i: usize) -> u32 {
        self.block(n).get(i).map_or(0, |w| w.load(Ordering::Relaxed))
    }

    #[inline(always)]
    fn slot(&self, n: u32) -> u32 {
        self.word(n, SLOT)
    }

    #[inline(always)]
    fn level(&self, n: u32) -> usize {
        self.word(n, LEVEL) as usize
    }

    /// The vector of node `n` as held (empty if `n` is no node; `E` must be how this graph
    /// holds vectors).
    #[inline(always)]
    fn vector<E: Elem>(&self, n: u32) -> &[E] {
        E::view(self.block(n).get(HEAD + self.m0..).unwrap_or(&[]), self.dim)
    }

    /// Prefetches what a walk reads of node `n` next: its first word (slot) and the first line
    /// of its vector — as `hnswlib` does; the hardware prefetcher follows the vector's lines.
    /// (Asking for the whole 2 KB block of every fresh neighbour, 30-odd lines each, filled the
    /// line-fill buffers and stalled the walk on the prefetches themselves.)
    #[inline(always)]
    fn prefetch_node(&self, n: u32, prefetch: &impl Fn(&[AtomicU32])) {
        let b = self.block(n);
        prefetch(b.get(..1).unwrap_or(&[]));
        prefetch(b.get(HEAD + self.m0..HEAD + self.m0 + 1).unwrap_or(&[]));
    }

    /// Node `n`'s list on `layer`: degree word then capacity links (empty if it has none).
    #[inline(always)]
    fn list(&self, n: u32, layer: usize) -> &[AtomicU32] {
        let b = self.block(n);
        if layer == 0 {
            return b.get(DEGREE..HEAD + self.m0).unwrap_or(&[]);
        }
        if self.level(n) < layer {
            return &[];
        }
        let at = self.word(n, UPPER) as usize + (layer - 1) * (self.m + 1);
        self.upper.run(at, self.m + 1)
    }

    /// The node holding `slot`.
    pub fn node_of(&self, slot: u32) -> Option<u32> {
        let w = self.slot_node.get(slot as usize).first()?.load(Ordering::Acquire);
        w.checked_sub(1)
    }

    /// The dot product of `q` with the vector of `slot` (its cosine: both are unit vectors, up
    /// to f16 rounding in a half graph), when `slot` is a node.
    pub fn score(&self, q: &[f32], slot: u32) -> Option<f32> {
        let n = self.node_of(slot)?;
        Some(if self.half { walk::dot_f16(q, self.vector::<f16>(n)) } else { walk::dot(q, self.vector::<f32>(n)) })
    }

    /// The vector of `slot` as held, widened to f32, when `slot` is a node.
    #[cfg(test)]
    pub fn vector_of(&self, slot: u32) -> Option<Vec<f32>> {
        let n = self.node_of(slot)?;
        Some(if self.half { f16::widen_into(self.vector::<f16>(n), &mut Vec::new()).to_vec() } else { self.vector::<f32>(n).to_vec() })
    }

    /// Every node's slot, in node order.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len() as u32).map(|n| self.slot(n))
    }

    /// Allocates the upper lists of a node of `level` (≥ 1): their first word.
    fn alloc_upper(&self, level: usize) -> u32 {
        let words = level * (self.m + 1);
        let mut next = lock(&self.upper_next);
        let mut at = *next;
        // A run lies in one segment: one that would cross into the next starts there instead,
        // and again until it fits (a segment may be shorter than a run).
        loop {
            let (s0, _) = locate(at);
            let (s1, _) = locate(at + words - 1);
            if s0 == s1 {
                break;
            }
            at = segment_start(s1);
        }
        *next = at + words;
        self.upper.ensure(at);
        at as u32
    }

    /// Stores `v` as node `n`'s vector, in this graph's precision.
    fn store_vector(&self, b: &[AtomicU32], v: &[f32]) {
        let w = b.get(HEAD + self.m0..).unwrap_or(&[]);
        if self.half {
            f16::store(w, v)
        } else {
            f32::store(w, v)
        }
    }

    /// Writes node `n`'s block (not linked yet): slot, level, vector, and its upper lists.
    fn write_block(&self, n: u32, slot: u32, level: usize, v: &[f32]) {
        let upper = if level > 0 { self.alloc_upper(level) } else { 0 };
        let b = self.blocks.ensure(n as usize);
        if b.len() < self.blocks.unit {
            return;
        }
        b[SLOT].store(slot, Ordering::Relaxed);
        b[LEVEL].store(level as u32, Ordering::Relaxed);
        b[UPPER].store(upper, Ordering::Relaxed);
        self.store_vector(b, v);
        if let Some(w) = self.slot_node.ensure(slot as usize).first() {
            w.store(n + 1, Ordering::Release);
        }
    }

    fn level_for(&self, slot: u32) -> usize {
        ((-uniform(u64::from(slot)).ln() * self.mult) as usize).min(MAX_LEVEL)
    }

    /// Inserts `rows` (slot, unit vector of `dim` components); slots already in the graph are
    /// skipped. Safe beside searches; batches from several threads take turns.
    pub fn insert(&self, rows: &[(u32, &[f32])]) {
        let _one = lock(&self.inserting);
        let base = self.len() as u32;
        let mut fresh: Vec<u32> = Vec::with_capacity(rows.len());
        let mut n = base;
        for (slot, v) in rows {
            if self.node_of(*slot).is_some() {
                continue;
            }
            self.write_block(n, *slot, self.level_for(*slot), v);
            fresh.push(n);
            n += 1;
        }
        // Published: searches may now be handed these nodes (they are not linked yet).
        self.nodes.store(n as usize, Ordering::Release);
        // A thread per `PARALLEL_MIN` nodes, at most one per core.
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(fresh.len() / PARALLEL_MIN);
        let next = AtomicUsize::new(0);
        if threads < 2 {
            self.link_worker(&fresh, &next);
        } else {
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| {
                        // This thread's marks: the ones a thread of an earlier batch used.
                        let mut mine = lock(&self.visited).pop().unwrap_or_default();
                        VISITED.with(|c| std::mem::swap(&mut *c.borrow_mut(), &mut mine));
                        self.link_worker(&fresh, &next);
                        VISITED.with(|c| std::mem::swap(&mut *c.borrow_mut(), &mut mine));
                        lock(&self.visited).push(mine);
                    });
                }
            });
        }
    }

    /// Links the nodes of `fresh` that `next` hands out.
    fn link_worker(&self, fresh: &[u32], next: &AtomicUsize) {
        #[cfg(target_arch = "x86_64")]
        {
            if walk::has_avx512() {
                // SAFETY: the CPU supports the features `link_avx512*` are compiled for.
                #[allow(unsafe_code)]
                return unsafe {
                    if self.half {
                        self.link_avx512_f16(fresh, next)
                    } else {
                        self.link_avx512(fresh, next)
                    }
                };
            }
            if self.half && walk::has_avx2_f16c() {
                // SAFETY: the CPU supports the features `link_avx2_f16` is compiled for.
                #[allow(unsafe_code)]
                return unsafe { self.link_avx2_f16(fresh, next) };
            }
            if !self.half && walk::has_avx2_fma() {
                // SAFETY: the CPU supports the features `link_avx2` is compiled for.
                #[allow(unsafe_code)]
                return unsafe { self.link_avx2(fresh, next) };
            }
        }
        if self.half {
            self.link_with::<f16>(fresh, next, &walk::dot_f16_portable, &|_: &[AtomicU32]| {})
        } else {
            self.link_with::<f32>(fresh, next, &walk::dot_portable, &|_: &[AtomicU32]| {})
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn link_avx512(&self, fresh: &[u32], next: &AtomicUsize) {
        self.link_with::<f32>(fresh, next, &|a: &[f32], b: &[f32]| walk::dot_avx512(a, b), &|b: &[AtomicU32]| walk::prefetch(b))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn link_avx512_f16(&self, fresh: &[u32], next: &AtomicUsize) {
        self.link_with::<f16>(fresh, next, &|a: &[f32], b: &[f16]| walk::dot_f16_avx512(a, b), &|b: &[AtomicU32]| walk::prefetch(b))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn link_avx2(&self, fresh: &[u32], next: &AtomicUsize) {
        self.link_with::<f32>(fresh, next, &|a: &[f32], b: &[f32]| walk::dot_avx2(a, b), &|b: &[AtomicU32]| walk::prefetch(b))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn link_avx2_f16(&self, fresh: &[u32], next: &AtomicUsize) {
        self.link_with::<f16>(fresh, next, &|a: &[f32], b: &[f16]| walk::dot_f16_avx2(a, b), &|b: &[AtomicU32]| walk::prefetch(b))
    }

    #[inline(always)]
    fn link_with<E: Elem>(&self, fresh: &[u32], next: &AtomicUsize, dot: &impl Kernel<E>, prefetch: &impl Fn(&[AtomicU32])) {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(&n) = fresh.get(i) else { break };
            self.link(n, dot, prefetch);
        }
    }

    /// `hnswlib`'s `addPoint` for node `n`, whose block is written.
    #[inline(always)]
    fn link<E: Elem>(&self, n: u32, dot: &impl Kernel<E>, prefetch: &impl Fn(&[AtomicU32])) {
        let level = self.level(n);
        let mut wide = Vec::new();
        let q = E::widen_into(self.vector::<E>(n), &mut wide);
        let mut ep = self.entry.load(Ordering::Acquire);
        let raise = if ep == EMPTY || level > (ep >> 32) as usize {
            let g = lock(&self.top);
            ep = self.entry.load(Ordering::Acquire);
            if ep == EMPTY {
                self.entry.store((level as u64) << 32 | u64::from(n), Ordering::Release);
                return;
            }
            (level > (ep >> 32) as usize).then_some(g)
        } else {
            None
        };
        let (top, mut cur) = ((ep >> 32) as usize, ep as u32);
        let mut cur_sim = dot(q, self.vector::<E>(cur));
        for layer in (level + 1..=top).rev() {
            (cur, cur_sim) = self.descend(q, cur, cur_sim, layer, dot);
        }
        // Searched top-down (each layer from the nearest node found on the one above), linked
        // bottom-up: a walk that reaches `n` on a layer finds its lists on every layer below
        // already in place, so it is never stranded on a node without layer-0 links.
        let mut found: Vec<Vec<(f32, u32)>> = Vec::with_capacity(level.min(top) + 1);
        for layer in (0..=level.min(top)).rev() {
            let mut near = self.search_layer(q, (cur_sim, cur), layer, self.ef_construction, dot, prefetch);
            near.retain(|c| c.1 != n);
            if let Some(&(s, c)) = near.first() {
                (cur_sim, cur) = (s, c);
            }
            found.push(near);
        }
        for (layer, near) in found.into_iter().rev().enumerate() {
            self.connect(n, layer, near, dot);
        }
        if raise.is_some() {
            self.entry.store((level as u64) << 32 | u64::from(n), Ordering::Release);
        }
    }

    /// Greedy walk on `layer` from `cur` to a local best.
    #[inline(always)]
    fn descend<E: Elem>(&self, q: &[f32], mut cur: u32, mut cur_sim: f32, layer: usize, dot: &impl Kernel<E>) -> (u32, f32) {
        loop {
            let mut moved = false;
            let list = self.list(cur, layer);
            let degree = list.first().map_or(0, |d| d.load(Ordering::Acquire) as usize);
            for w in list.iter().skip(1).take(degree) {
                let nb = w.load(Ordering::Acquire);
                let s = dot(q, self.vector::<E>(nb));
                if s > cur_sim {
                    (cur, cur_sim, moved) = (nb, s, true);
                }
            }
            if !moved {
                return (cur, cur_sim);
            }
        }
    }

    /// `hnswlib`'s `searchBaseLayer`: the `ef` nodes nearest `q` on `layer` from `entry`, as
    /// (similarity, node), most similar first.
    #[inline(always)]
    fn search_layer<E: Elem>(
        &self,
        q: &[f32],
        entry: (f32, u32),
        layer: usize,
        ef: usize,
        dot: &impl Kernel<E>,
        prefetch: &impl Fn(&[AtomicU32]),
    ) -> Vec<(f32, u32)> {
        // The marks are taken out of the thread-local for the walk, so that the loop compiles
        // into this function with its kernels inlined (in a closure that `LocalKey::with` calls,
        // the kernel stayed a call per distance).
        let mut visited = walk::take_visited();
        let out = {
            let stamp = visited.next(self.len());
            // Sized by what the graph can hold, not by `ef` alone.
            let cap = ef.min(self.len());
            let mut candidates: BinaryHeap<(Sim, u32)> = BinaryHeap::with_capacity(cap.saturating_mul(4));
            let mut results: BinaryHeap<Reverse<(Sim, u32)>> = BinaryHeap::with_capacity(cap + 1);
            let mut fresh: Vec<u32> = Vec::with_capacity(self.m0);
            visited.mark(entry.1, stamp);
            candidates.push((Sim(entry.0), entry.1));
            results.push(Reverse((Sim(entry.0), entry.1)));
            while let Some((Sim(s), node)) = candidates.pop() {
                let worst = results.peek().map_or(f32::NEG_INFINITY, |r| r.0 .0 .0);
                if results.len() >= ef && s < worst {
                    break;
                }
                let list = self.list(node, layer);
                let degree = list.first().map_or(0, |d| d.load(Ordering::Acquire) as usize);
                fresh.clear();
                for w in list.iter().skip(1).take(degree) {
                    let nb = w.load(Ordering::Acquire);
                    if visited.mark(nb, stamp) {
                        self.prefetch_node(nb, prefetch);
                        fresh.push(nb);
                    }
                }
                for &nb in &fresh {
                    let sn = dot(q, self.vector::<E>(nb));
                    let worst = results.peek().map_or(f32::NEG_INFINITY, |r| r.0 .0 .0);
                    if results.len() < ef || sn > worst {
                        candidates.push((Sim(sn), nb));
                        results.push(Reverse((Sim(sn), nb)));
                        if results.len() > ef {
                            results.pop();
                        }
                    }
                }
            }
            let mut out: Vec<(f32, u32)> = results.into_iter().map(|Reverse((Sim(s), n))| (s, n)).collect();
            out.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            out
        };
        walk::put_visited(visited);
        out
    }

    /// `hnswlib`'s `getNeighborsByHeuristic2`: from `cands` (most similar first), at most `m`,
    /// each kept only if it is nearer the query than to every one kept before it.
    #[inline(always)]
    fn select<E: Elem>(&self, cands: &[(f32, u32)], m: usize, dot: &impl Kernel<E>) -> Vec<(f32, u32)> {
        // As `hnswlib`: fewer than `m` are kept as they are; exactly `m` are pruned too.
        if cands.len() < m {
            return cands.to_vec();
        }
        let mut out: Vec<(f32, u32)> = Vec::with_capacity(m);
        let mut wide = Vec::new();
        for &(s, c) in cands {
            if out.len() >= m {
                break;
            }
            let vc = E::widen_into(self.vector::<E>(c), &mut wide);
            if out.iter().all(|&(_, o)| dot(vc, self.vector::<E>(o)) <= s) {
                out.push((s, c));
            }
        }
        out
    }

    /// `hnswlib`'s `mutuallyConnectNewElement`: links `n` on `layer` to the heuristic's choice
    /// among `found` and each of those back to `n`, re-selecting lists that overflow.
    #[inline(always)]
    fn connect<E: Elem>(&self, n: u32, layer: usize, found: Vec<(f32, u32)>, dot: &impl Kernel<E>) {
        let chosen = self.select(&found, self.m, dot);
        {
            let _g = lock(&self.locks[n as usize % STRIPES]);
            write_list(self.list(n, layer), chosen.iter().map(|c| c.1));
        }
        let cap = if layer == 0 { self.m0 } else { self.m };
        let mut wide = Vec::new();
        for &(s, nb) in &chosen {
            let _g = lock(&self.locks[nb as usize % STRIPES]);
            let list = self.list(nb, layer);
            let Some(dw) = list.first() else { continue };
            let degree = (dw.load(Ordering::Relaxed) as usize).min(list.len() - 1);
            let links: Vec<u32> = list[1..=degree].iter().map(|w| w.load(Ordering::Relaxed)).collect();
            if links.contains(&n) {
                continue;
            }
            if degree < cap.min(list.len() - 1) {
                list[1 + degree].store(n, Ordering::Release);
                dw.store(degree as u32 + 1, Ordering::Release);
            } else {
                let vnb = E::widen_into(self.vector::<E>(nb), &mut wide);
                let mut cands: Vec<(f32, u32)> = Vec::with_capacity(degree + 1);
                cands.push((s, n));
                cands.extend(links.iter().map(|&x| (dot(vnb, self.vector::<E>(x)), x)));
                cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                let keep = self.select(&cands, cap, dot);
                write_list(list, keep.iter().map(|c| c.1));
            }
        }
    }

    /// The `k` accepted nodes most similar to `q` (unit vector), as (slot, cosine), best first:
    /// greedy descent through the upper layers, then a best-first search on layer 0 with `ef`
    /// results, where nodes `accept(slot)` rejects are walked through but never counted — so a
    /// filtered walk stops as soon as `ef` accepted nodes beat every open candidate.
    pub fn search(&self, q: &[f32], k: usize, ef: usize, accept: impl Fn(u32) -> bool) -> Vec<(u32, f32)> {
        if self.entry.load(Ordering::Acquire) == EMPTY || q.len() != self.dim || k == 0 {
            return Vec::new();
        }
        #[cfg(target_arch = "x86_64")]
        {
            if walk::has_avx512() {
                // SAFETY: the CPU supports the features `search_avx512*` are compiled for.
                #[allow(unsafe_code)]
                return unsafe {
                    if self.half {
                        self.search_avx512_f16(q, k, ef, accept)
                    } else {
                        self.search_avx512(q, k, ef, accept)
                    }
                };
            }
            if self.half && walk::has_avx2_f16c() {
                // SAFETY: the CPU supports the features `search_avx2_f16` is compiled for.
                #[allow(unsafe_code)]
                return unsafe { self.search_avx2_f16(q, k, ef, accept) };
            }
            if !self.half && walk::has_avx2_fma() {
                // SAFETY: the CPU supports the features `search_avx2` is compiled for.
                #[allow(unsafe_code)]
                return unsafe { self.search_avx2(q, k, ef, accept) };
            }
        }
        if self.half {
            self.walk::<f16>(q, k, ef, accept, &walk::dot_f16_portable, &|_: &[AtomicU32]| {})
        } else {
            self.walk::<f32>(q, k, ef, accept, &walk::dot_portable, &|_: &[AtomicU32]| {})
        }
    }

    /// The walk compiled for AVX-512: the dot product's 32 lanes in two 512-bit registers.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn search_avx512(&self, q: &[f32], k: usize, ef: usize, accept: impl Fn(u32) -> bool) -> Vec<(u32, f32)> {
        self.walk::<f32>(q, k, ef, accept, &|a: &[f32], b: &[f32]| walk::dot_avx512(a, b), &|b: &[AtomicU32]| walk::prefetch(b))
    }

    /// The walk of a half graph compiled for AVX-512 (16 halves widened per instruction).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn search_avx512_f16(&self, q: &[f32], k: usize, ef: usize, accept: impl Fn(u32) -> bool) -> Vec<(u32, f32)> {
        self.walk::<f16>(q, k, ef, accept, &|a: &[f32], b: &[f16]| walk::dot_f16_avx512(a, b), &|b: &[AtomicU32]| walk::prefetch(b))
    }

    /// The walk compiled for AVX2/FMA: the dot product inlines into it as FMA vector code, and
    /// each fresh neighbour is prefetched before the distances are computed.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn search_avx2(&self, q: &[f32], k: usize, ef: usize, accept: impl Fn(u32) -> bool) -> Vec<(u32, f32)> {
        self.walk::<f32>(q, k, ef, accept, &|a: &[f32], b: &[f32]| walk::dot_avx2(a, b), &|b: &[AtomicU32]| walk::prefetch(b))
    }

    /// The walk of a half graph compiled for AVX2/FMA/F16C.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn search_avx2_f16(&self, q: &[f32], k: usize, ef: usize, accept: impl Fn(u32) -> bool) -> Vec<(u32, f32)> {
        self.walk::<f16>(q, k, ef, accept, &|a: &[f32], b: &[f16]| walk::dot_f16_avx2(a, b), &|b: &[AtomicU32]| walk::prefetch(b))
    }

    #[inline(always)]
    fn walk<E: Elem>(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        accept: impl Fn(u32) -> bool,
        dot: &impl Kernel<E>,
        prefetch: &impl Fn(&[AtomicU32]),
    ) -> Vec<(u32, f32)> {
        let ep = self.entry.load(Ordering::Acquire);
        if ep == EMPTY {
            return Vec::new();
        }
        let (top, mut cur) = ((ep >> 32) as usize, ep as u32);
        let ef = ef.max(k);
        let mut cur_sim = dot(q, self.vector::<E>(cur));
        for layer in (1..=top).rev() {
            (cur, cur_sim) = self.descend(q, cur, cur_sim, layer, dot);
        }
        let m0 = self.m0;
        // The marks are taken out of the thread-local for the walk, so that the loop compiles
        // into this function with its kernels inlined (in a closure that `LocalKey::with` calls,
        // the kernel stayed a call per distance).
        let mut visited = walk::take_visited();
        let out = {
            let nodes = self.len();
            let stamp = visited.next(nodes);
            // Sized by what the graph can hold, not by a caller's k (a request may ask for 10^12).
            let cap = ef.min(nodes);
            let mut candidates: BinaryHeap<(Sim, u32)> = BinaryHeap::with_capacity(cap.saturating_mul(4));
            let mut results: BinaryHeap<Reverse<(Sim, u32)>> = BinaryHeap::with_capacity(cap + 1);
            let mut fresh: Vec<u32> = Vec::with_capacity(m0);
            visited.mark(cur, stamp);
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
                let degree = block.get(DEGREE).map_or(0, |d| d.load(Ordering::Acquire) as usize).min(m0);
                // First the unvisited neighbours (their blocks on their way to the cache), then
                // their distances.
                fresh.clear();
                for w in block.iter().skip(HEAD).take(degree) {
                    let nb = w.load(Ordering::Acquire);
                    if visited.mark(nb, stamp) {
                        self.prefetch_node(nb, prefetch);
                        fresh.push(nb);
                    }
                }
                for &nb in &fresh {
                    let sn = dot(q, self.vector::<E>(nb));
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
        };
        walk::put_visited(visited);
        out
    }

    /// The graph's topology, for a snapshot: nodes grouped by level, the entry node first on
    /// the top layer, each with its lists on layers 0 to its level, links as slots.
    pub fn topology(&self) -> Topology {
        let n = self.len() as u32;
        let ep = self.entry.load(Ordering::Acquire);
        let mut t = Topology::new(Params {
            dim: self.dim as u32,
            max_nb_connection: self.m as u8,
            ef_construction: self.ef_construction as u32,
            level_scale: 1.0,
        });
        if ep == EMPTY || n == 0 {
            return t;
        }
        let (top, entry) = ((ep >> 32) as usize, ep as u32);
        let mut by_level: Vec<Vec<u32>> = vec![Vec::new(); top + 1];
        by_level[top].push(entry);
        for node in 0..n {
            // A node above the entry's level (inserted while the entry was being raised: not
            // possible once inserts are done) is listed on the top layer.
            let l = self.level(node).min(top);
            if node != entry {
                by_level[l].push(node);
            }
        }
        let mut links = Vec::with_capacity(self.m0);
        for (l, nodes) in by_level.iter().enumerate() {
            for &node in nodes {
                t.push_node(self.slot(node), l);
                for layer in 0..=self.level(node).min(top).max(l) {
                    let list = self.list(node, layer);
                    links.clear();
                    let degree = list.first().map_or(0, |d| d.load(Ordering::Acquire) as usize);
                    links.extend(list.iter().skip(1).take(degree).map(|w| self.slot(w.load(Ordering::Acquire))));
                    t.push_list(&links);
                }
            }
        }
        t
    }

    /// The graph of a validated topology `t`, filled in place (no insertion): node `i` is the
    /// `i`-th slot in slot order, the entry is the first node of the top layer. A node's level
    /// is the layer it is listed on, or higher when it has lists above it (graphs `hnsw_rs`
    /// built link some nodes above their own layer); a list longer than this graph allows keeps
    /// its first (nearest) links, and a link on a layer above its target's level is dropped. Nodes whose vector `vector` lacks get a zero vector.
    pub fn from_topology<'v>(t: &Topology, half: bool, vector: impl Fn(u32) -> Option<&'v [f32]> + Sync) -> Self {
        let (g, missing) = Self::filled(t, half, vector);
        if missing > 0 {
            tracing::warn!(missing, "graph snapshot nodes without a stored vector (zero vectors used)");
        }
        g
    }

    /// [`Hnsw::from_topology`] with every vector zero, for the caller to fill with
    /// [`Hnsw::set_vector`] (from any number of threads) before the first search: an open
    /// decodes the stored vectors straight into their nodes instead of through a second copy.
    pub fn skeleton(t: &Topology, half: bool) -> Self {
        Self::filled(t, half, |_| None).0
    }

    /// Stores `v` (`dim` components) as the vector of `slot`'s node; false when `slot` is not
    /// a node. For a [`Hnsw::skeleton`] before it is searched: a search or insert running
    /// beside it could read a half-written vector.
    pub fn set_vector(&self, slot: u32, v: &[f32]) -> bool {
        match self.node_of(slot) {
            Some(n) if v.len() == self.dim && self.block(n).len() >= self.blocks.unit => {
                self.store_vector(self.block(n), v);
                true
            }
            _ => false,
        }
    }

    /// [`Hnsw::set_vector`] from a stored f32 vector's little-endian bytes, written straight
    /// into the node (no decoded copy) and then made a unit vector as an open makes every
    /// stored vector one ([`crate::walk::off_unit`]): the same bits as decoding, re-normalising
    /// and storing. False when `slot` is not a node, the graph holds halves, or `bytes` is not
    /// `dim` components.
    pub fn set_vector_le(&self, slot: u32, bytes: &[u8]) -> bool {
        let Some(n) = self.node_of(slot) else { return false };
        let b = self.block(n);
        let Some(w) = b.get(HEAD + self.m0..HEAD + self.m0 + self.dim) else { return false };
        if self.half || bytes.len() != 4 * self.dim || b.len() < self.blocks.unit {
            return false;
        }
        for (w, c) in w.iter().zip(bytes.chunks_exact(4)) {
            w.store(u32::from_le_bytes([c[0], c[1], c[2], c[3]]), Ordering::Relaxed);
        }
        if let Some(norm) = walk::off_unit(f32::view(w, self.dim)) {
            for w in w {
                w.store((f32::from_bits(w.load(Ordering::Relaxed)) / norm).to_bits(), Ordering::Relaxed);
            }
        }
        true
    }

    /// [`Hnsw::from_topology`] and how many nodes `vector` had no vector for.
    fn filled<'v>(t: &Topology, half: bool, vector: impl Fn(u32) -> Option<&'v [f32]> + Sync) -> (Self, usize) {
        let p = &t.params;
        let g = Self::new(p.dim as usize, p.max_nb_connection as usize, p.ef_construction as usize, half);
        let total = t.len();
        if total == 0 {
            return (g, 0);
        }
        // Node order: slot order.
        let mut order: Vec<(u32, u32)> = (0..total as u32).map(|i| (t.slot(i as usize), i)).collect();
        order.sort_unstable();
        for (node, &(slot, _)) in order.iter().enumerate() {
            if let Some(w) = g.slot_node.ensure(slot as usize).first() {
                w.store(node as u32 + 1, Ordering::Relaxed);
            }
        }
        // Levels and upper lists, allocated in node order.
        let levels: Vec<u8> = order.iter().map(|&(_, i)| t.level(i as usize).min(MAX_LEVEL) as u8).collect();
        let uppers: Vec<u32> = levels.iter().map(|&l| if l > 0 { g.alloc_upper(l as usize) } else { 0 }).collect();
        for node in 0..total {
            g.blocks.ensure(node);
        }
        let missing = AtomicUsize::new(0);
        let fill = |range: std::ops::Range<usize>| {
            let map = |s: &u32| g.node_of(*s);
            let mut ids: Vec<u32> = Vec::with_capacity(2 * g.m0);
            for node in range {
                let (slot, i) = order[node];
                let b = g.block(node as u32);
                if b.len() < g.blocks.unit {
                    continue;
                }
                let level = levels[node] as usize;
                b[SLOT].store(slot, Ordering::Relaxed);
                b[LEVEL].store(level as u32, Ordering::Relaxed);
                b[UPPER].store(uppers[node], Ordering::Relaxed);
                match vector(slot) {
                    Some(v) if v.len() == g.dim => g.store_vector(b, v),
                    _ => {
                        missing.fetch_add(1, Ordering::Relaxed);
                    }
                }
                for (layer, links) in t.lists(i as usize).enumerate().take(level + 1) {
                    ids.clear();
                    // Only neighbours that have a list on this layer: a link to a node below it
                    // (graphs `hnsw_rs` built may have some) would lead a walk, or an insert's
                    // search, to a node with no links there.
                    if layer == 0 {
                        // Every node has a list on layer 0.
                        ids.extend(links.iter().filter_map(map));
                    } else {
                        ids.extend(
                            links.iter().filter_map(map).filter(|&nb| levels.get(nb as usize).is_some_and(|&l| l as usize >= layer)),
                        );
                    }
                    write_list(g.list(node as u32, layer), ids.iter().copied());
                }
            }
        };
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(64);
        if total < 4096 || threads < 2 {
            fill(0..total);
        } else {
            let per = total.div_ceil(threads);
            std::thread::scope(|s| {
                for start in (0..total).step_by(per) {
                    let fill = &fill;
                    s.spawn(move || fill(start..(start + per).min(total)));
                }
            });
        }
        g.nodes.store(total, Ordering::Release);
        if let Some(e) = g.node_of(t.slot(t.entry_index())) {
            let level = g.level(e);
            g.entry.store((level as u64) << 32 | u64::from(e), Ordering::Release);
        }
        (g, missing.into_inner())
    }
}

/// Stores `links` into `list` (degree word, then the links) as far as it has room: links
/// first, degree last (Release), so a reader never sees a degree beyond written links.
fn write_list(list: &[AtomicU32], links: impl Iterator<Item = u32>) {
    let Some((dw, slots)) = list.split_first() else { return };
    let mut d = 0;
    for (w, x) in slots.iter().zip(links) {
        w.store(x, Ordering::Release);
        d += 1;
    }
    dw.store(d, Ordering::Release);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    pub(crate) fn unit(rng: &mut StdRng, d: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    /// `n` unit vectors around `clusters` centres (noise `spread` relative).
    fn clustered(rng: &mut StdRng, n: usize, d: usize, clusters: usize, spread: f32) -> Vec<Vec<f32>> {
        let centres: Vec<Vec<f32>> = (0..clusters).map(|_| unit(rng, d)).collect();
        (0..n)
            .map(|i| {
                let c = &centres[i % clusters];
                let noise = unit(rng, d);
                let v: Vec<f32> = c.iter().zip(&noise).map(|(a, b)| a + spread * b).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.into_iter().map(|x| x / norm).collect()
            })
            .collect()
    }

    fn build(vs: &[Vec<f32>]) -> Hnsw {
        build_as(vs, false)
    }

    fn build_as(vs: &[Vec<f32>], half: bool) -> Hnsw {
        let g = Hnsw::new(vs[0].len(), 16, 200, half);
        let rows: Vec<(u32, &[f32])> = vs.iter().enumerate().map(|(i, v)| (i as u32, v.as_slice())).collect();
        g.insert(&rows);
        g
    }

    fn exact(vs: &[Vec<f32>], q: &[f32], k: usize) -> Vec<u32> {
        let mut all: Vec<(f32, u32)> = vs.iter().enumerate().map(|(i, v)| (walk::dot(q, v), i as u32)).collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        all.into_iter().take(k).map(|p| p.1).collect()
    }

    fn recall(g: &Hnsw, vs: &[Vec<f32>], qs: &[Vec<f32>], ef: usize) -> f64 {
        let mut found = 0;
        for q in qs {
            let want = exact(vs, q, 10);
            found += g.search(q, 10, ef, |_| true).iter().filter(|h| want.contains(&h.0)).count();
        }
        found as f64 / (10 * qs.len()) as f64
    }

    /// A skeleton's vectors written from stored bytes are the bits that decoding, making a
    /// unit vector and storing give, for vectors off unit length and on it; the graph then
    /// answers as the one built from those vectors.
    #[test]
    fn vectors_set_from_stored_bytes_are_the_decoded_ones() {
        let mut rng = StdRng::seed_from_u64(31);
        let d = 67;
        let vs: Vec<Vec<f32>> = (0..300).map(|_| unit(&mut rng, d)).collect();
        let built = build(&vs);
        let g = Hnsw::skeleton(&built.topology(), false);
        for (i, v) in vs.iter().enumerate() {
            // Every third one stored 1.5 times too long, as a vector read back may be off unit.
            let scale = if i % 3 == 0 { 1.5f32 } else { 1.0 };
            let bytes: Vec<u8> = v.iter().flat_map(|x| (x * scale).to_le_bytes()).collect();
            assert!(g.set_vector_le(i as u32, &bytes));
            let mut want = Vec::new();
            crate::codec::decode_components(crate::codec::Encoding::F32, &bytes, &mut want);
            if let Some(norm) = walk::off_unit(&want) {
                want.iter_mut().for_each(|x| *x /= norm);
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&g.vector_of(i as u32).unwrap()), bits(&want), "slot {i}");
            assert!((walk::dot(&want, &want) - 1.0).abs() < 1e-5);
        }
        let q = unit(&mut rng, d);
        // The same neighbours (the re-normalised vectors differ from the built ones in the
        // last bits).
        let slots = |g: &Hnsw| g.search(&q, 10, 64, |_| true).into_iter().map(|h| h.0).collect::<Vec<_>>();
        assert_eq!(slots(&g), slots(&built));
        let bytes: Vec<u8> = vs[0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert!(!g.set_vector_le(300, &bytes), "no such node");
        assert!(!g.set_vector_le(1, &bytes[4..]), "one component short");
        assert!(!Hnsw::skeleton(&built.topology(), true).set_vector_le(1, &bytes), "a half graph takes decoded vectors");
    }

    #[test]
    fn widening_into_a_reused_buffer_is_widening() {
        let long: Vec<f16> = (0..37).map(|i| f16::from_f32(i as f32 * 0.37 - 5.0)).collect();
        let short: Vec<f16> = (0..5).map(|i| f16::from_f32(1.0 / (i as f32 + 1.0))).collect();
        let mut buf = Vec::new();
        for v in [&long, &short, &long] {
            let want: Vec<u32> = v.iter().map(|x| x.to_f32().to_bits()).collect();
            let got: Vec<u32> = f16::widen_into(v, &mut buf).iter().map(|x| x.to_bits()).collect();
            assert_eq!(got, want);
        }
        let f: Vec<f32> = vec![0.5, -1.25, 3.0];
        assert!(std::ptr::eq(f32::widen_into(&f, &mut buf), f.as_slice()), "f32 components are not copied");
    }

    #[test]
    fn segments_locate_every_element_once() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(63), (0, 63));
        assert_eq!(locate(64), (1, 0));
        assert_eq!(locate(191), (1, 127));
        assert_eq!(locate(192), (2, 0));
        for s in 0..20 {
            assert_eq!(locate(segment_start(s)), (s, 0));
        }
        assert!(locate(u32::MAX as usize).0 < SEGMENTS);
    }

    #[test]
    fn recall_against_brute_force_on_random_and_clustered_sets() {
        let mut rng = StdRng::seed_from_u64(1);
        let random: Vec<Vec<f32>> = (0..5000).map(|_| unit(&mut rng, 32)).collect();
        let clusters = clustered(&mut rng, 5000, 32, 50, 0.6);
        for (name, vs) in [("random", &random), ("clustered", &clusters)] {
            let g = build(vs);
            assert_eq!(g.len(), 5000);
            let qs: Vec<Vec<f32>> = (0..200).map(|_| unit(&mut rng, 32)).collect();
            let r = recall(&g, vs, &qs, 200);
            assert!(r >= 0.99, "{name}: recall@10 at ef 200 = {r}");
            // Every vector finds itself.
            for (i, v) in vs.iter().enumerate().step_by(97) {
                assert_eq!(g.search(v, 1, 64, |_| true)[0].0, i as u32, "{name}: {i}");
            }
        }
    }

    #[test]
    fn lists_respect_their_capacity_and_link_existing_nodes() {
        let mut rng = StdRng::seed_from_u64(2);
        let vs: Vec<Vec<f32>> = (0..3000).map(|_| unit(&mut rng, 16)).collect();
        let g = build(&vs);
        for n in 0..g.len() as u32 {
            for layer in 0..=g.level(n) {
                let list = g.list(n, layer);
                let d = list[0].load(Ordering::Relaxed) as usize;
                assert!(d <= if layer == 0 { 32 } else { 16 }, "node {n} layer {layer}: {d}");
                assert!(d > 0 || g.len() == 1, "node {n} layer {layer} has no link");
                for w in &list[1..=d] {
                    let nb = w.load(Ordering::Relaxed);
                    assert!((nb as usize) < g.len() && nb != n && g.level(nb) >= layer);
                }
            }
        }
        // About one node in M above layer 0.
        let upper = (0..g.len() as u32).filter(|n| g.level(*n) > 0).count();
        assert!((100..300).contains(&upper), "{upper} nodes above layer 0");
    }

    #[test]
    fn a_512_d_vector_takes_one_block_of_memory() {
        let mut rng = StdRng::seed_from_u64(7);
        let vs: Vec<Vec<f32>> = (0..2000).map(|_| unit(&mut rng, 512)).collect();
        let g = build(&vs);
        // Slot, level, upper offset, degree, 32 links and the vector: 2,192 bytes; upper lists
        // (about one node in 16) and the slot map add a few more. One copy of each vector.
        let per = g.bytes() as f64 / 2000.0;
        assert!((2192.0..2240.0).contains(&per), "{per} bytes per vector");
        // As halves: 16 + 128 + 1,024 bytes.
        let h = build_as(&vs, true);
        let per = h.bytes() as f64 / 2000.0;
        assert!((1168.0..1216.0).contains(&per), "{per} bytes per half vector");
    }

    #[test]
    fn a_half_graph_holds_rounded_vectors_and_finds_them() {
        let mut rng = StdRng::seed_from_u64(8);
        let vs = clustered(&mut rng, 4000, 64, 40, 0.6);
        let g = build_as(&vs, true);
        assert!(g.is_half());
        // What it holds is each vector rounded to f16, and scores are products with that.
        for (i, v) in vs.iter().enumerate().step_by(101) {
            let held = g.vector_of(i as u32).unwrap();
            let rounded: Vec<f32> = v.iter().map(|x| f16::from_f32(*x).to_f32()).collect();
            assert_eq!(held, rounded, "{i}");
            let q = unit(&mut rng, 64);
            assert_eq!(g.score(&q, i as u32).unwrap().to_bits(), walk::dot(&q, &rounded).to_bits());
            assert_eq!(g.search(v, 1, 64, |_| true)[0].0, i as u32, "{i} finds itself");
        }
        // Recall against brute force over the f32 originals.
        let qs: Vec<Vec<f32>> = (0..200).map(|_| unit(&mut rng, 64)).collect();
        let r = recall(&g, &vs, &qs, 200);
        assert!(r >= 0.98, "half graph recall@10 at ef 200 = {r}");
        // Filled from its own topology, a half graph answers as before.
        let t = g.topology();
        let f = Hnsw::from_topology(&t, true, |s| vs.get(s as usize).map(Vec::as_slice));
        for q in qs.iter().take(20) {
            assert_eq!(f.search(q, 10, 64, |_| true), g.search(q, 10, 64, |_| true));
        }
    }

    #[test]
    fn an_odd_dimension_rounds_its_last_half_word() {
        let mut rng = StdRng::seed_from_u64(9);
        let vs: Vec<Vec<f32>> = (0..300).map(|_| unit(&mut rng, 7)).collect();
        let g = build_as(&vs, true);
        for (i, v) in vs.iter().enumerate() {
            let held = g.vector_of(i as u32).unwrap();
            assert_eq!(held.len(), 7);
            assert!(held.iter().zip(v).all(|(a, b)| (a - b).abs() < 1e-3), "{i}");
        }
    }

    #[test]
    fn filtered_walks_return_only_accepted_nodes() {
        let mut rng = StdRng::seed_from_u64(3);
        let vs: Vec<Vec<f32>> = (0..2000).map(|_| unit(&mut rng, 16)).collect();
        let g = build(&vs);
        let q = unit(&mut rng, 16);
        let hits = g.search(&q, 10, 100, |s| s % 7 == 0);
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| h.0 % 7 == 0));
        let want: Vec<u32> = exact(&vs, &q, 2000).into_iter().filter(|s| s % 7 == 0).take(10).collect();
        let got: Vec<u32> = hits.iter().map(|h| h.0).collect();
        assert!(want.iter().filter(|s| got.contains(s)).count() >= 9, "{got:?} vs {want:?}");
        assert!(g.search(&q, 10, 100, |_| false).is_empty());
        assert!(g.search(&q[..3], 10, 100, |_| true).is_empty(), "wrong dimension");
    }

    #[test]
    fn small_batches_and_repeated_slots() {
        let mut rng = StdRng::seed_from_u64(4);
        let vs: Vec<Vec<f32>> = (0..300).map(|_| unit(&mut rng, 8)).collect();
        let g = Hnsw::new(8, 16, 200, false);
        assert!(g.search(&vs[0], 5, 10, |_| true).is_empty());
        for (i, v) in vs.iter().enumerate() {
            g.insert(&[(i as u32 * 3, v.as_slice())]);
        }
        g.insert(&[(0, vs[5].as_slice())]);
        assert_eq!(g.len(), 300, "a slot already in the graph is skipped");
        for (i, v) in vs.iter().enumerate() {
            assert_eq!(g.search(v, 1, 32, |_| true)[0].0, i as u32 * 3);
            assert_eq!(g.vector_of(i as u32 * 3).as_deref(), Some(v.as_slice()));
        }
        assert_eq!(g.vector_of(1), None);
    }

    #[test]
    fn searches_during_concurrent_inserts_find_every_published_vector() {
        let mut rng = StdRng::seed_from_u64(5);
        let vs: Vec<Vec<f32>> = (0..6000).map(|_| unit(&mut rng, 24)).collect();
        let g = Hnsw::new(24, 16, 100, false);
        let done = std::sync::atomic::AtomicBool::new(false);
        // Vectors below this are inserted (what `Graph::set_meta` then reveals).
        let inserted = AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                for (b, chunk) in vs.chunks(500).enumerate() {
                    let rows: Vec<(u32, &[f32])> = chunk.iter().enumerate().map(|(i, v)| ((b * 500 + i) as u32, v.as_slice())).collect();
                    g.insert(&rows);
                    inserted.store(b * 500 + chunk.len(), Ordering::Release);
                }
                done.store(true, Ordering::Release);
            });
            let mut checked = 0;
            let mut rng = StdRng::seed_from_u64(6);
            while !done.load(Ordering::Acquire) || checked < 200 {
                let n = inserted.load(Ordering::Acquire);
                let q = unit(&mut rng, 24);
                let hits = g.search(&q, 10, 64, |_| true);
                assert!(hits.iter().all(|h| (h.0 as usize) < vs.len()));
                if n > 0 {
                    let i = rng.random_range(0..n);
                    let hit = g.search(&vs[i], 1, 64, |_| true);
                    assert!(!hit.is_empty() && hit[0].1 > 0.999, "vector {i} of {n} not found: {hit:?}");
                }
                checked += 1;
            }
        });
        assert_eq!(g.len(), 6000);
    }

    /// Every link on a layer ≥ 1 leads to a node that has a list there.
    fn upper_links_reach_nodes_of_their_layer(g: &Hnsw) -> usize {
        let mut links = 0;
        for n in 0..g.len() as u32 {
            for layer in 1..=g.level(n) {
                let list = g.list(n, layer);
                let d = list[0].load(Ordering::Relaxed) as usize;
                for w in &list[1..=d] {
                    let nb = w.load(Ordering::Relaxed);
                    assert!(g.level(nb) >= layer, "node {n} links node {nb} (level {}) on layer {layer}", g.level(nb));
                    links += 1;
                }
            }
        }
        links
    }

    #[test]
    fn a_snapshot_link_above_its_target_level_is_dropped() {
        let params = Params { dim: 2, max_nb_connection: 4, ef_construction: 16, level_scale: 1.0 };
        let mut t = Topology::new(params);
        // Slots 0 and 1 on layer 0; 2 (the entry) and 3 on layer 1, 2 linking 0 on layer 1.
        t.push_node(0, 0);
        t.push_list(&[1, 2]);
        t.push_node(1, 0);
        t.push_list(&[0, 2]);
        t.push_node(2, 1);
        t.push_list(&[0, 1, 3]);
        t.push_list(&[0, 3]);
        t.push_node(3, 1);
        t.push_list(&[2]);
        t.push_list(&[2]);
        let vs = [[1.0f32, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]];
        let g = Hnsw::from_topology(&t, false, |s| vs.get(s as usize).map(|v| v.as_slice()));
        let two = g.node_of(2).unwrap();
        let up = g.list(two, 1);
        let d = up[0].load(Ordering::Relaxed) as usize;
        let links: Vec<u32> = up[1..=d].iter().map(|w| g.slot(w.load(Ordering::Relaxed))).collect();
        assert_eq!(links, vec![3], "slot 0 has no layer-1 list");
        assert_eq!(g.list(two, 0)[0].load(Ordering::Relaxed), 3, "layer 0 keeps every link");
        upper_links_reach_nodes_of_their_layer(&g);
    }

    /// The `hnsw_rs`-built fixture (`snapshot::tests::a_snapshot_hnsw_rs_built_loads_and_answers_as_before`)
    /// loads with every upper link leading to a node of that layer (its nodes with lists above
    /// their listed layer are read as that higher level; it has no link to a node below a
    /// layer, which `a_snapshot_link_above_its_target_level_is_dropped` covers), and inserts
    /// into it keep that so.
    #[test]
    fn the_hnsw_rs_fixture_loads_without_links_above_their_targets() {
        let t = crate::snapshot::decode(include_bytes!("testdata/hnsw_rs-0.3.5.evhnsw")).unwrap();
        let mut rng = StdRng::seed_from_u64(12);
        let vs: Vec<Vec<f32>> = (0..800).map(|_| unit(&mut rng, 12)).collect();
        let g = Hnsw::from_topology(&t, false, |s| vs.get(s as usize / 3).map(Vec::as_slice));
        assert!(upper_links_reach_nodes_of_their_layer(&g) > 0);
        let extra: Vec<Vec<f32>> = (0..300).map(|_| unit(&mut rng, 12)).collect();
        let rows: Vec<(u32, &[f32])> = extra.iter().enumerate().map(|(i, v)| (5000 + i as u32, v.as_slice())).collect();
        g.insert(&rows);
        upper_links_reach_nodes_of_their_layer(&g);
    }

    #[test]
    fn upper_list_runs_never_cross_a_segment() {
        for m in [2, 16, MAX_M] {
            let g = Hnsw::new(4, m, 16, false);
            for i in 0..3000 {
                let level = 1 + (i * 7) % MAX_LEVEL;
                let words = level * (g.m + 1);
                let at = g.alloc_upper(level) as usize;
                assert_eq!(locate(at).0, locate(at + words - 1).0, "m {m}, level {level} at {at}");
                assert_eq!(g.upper.run(at, words).len(), words);
            }
        }
    }

    #[test]
    fn selection_prunes_exactly_m_candidates_as_hnswlib() {
        let g = Hnsw::new(2, 2, 16, false);
        let vs = [[1.0f32, 0.0], [0.995, 0.0998], [0.0, 1.0]];
        let rows: Vec<(u32, &[f32])> = vs.iter().enumerate().map(|(i, v)| (i as u32, v.as_slice())).collect();
        g.insert(&rows);
        let q = [0.98f32, 0.199];
        let cands: Vec<(f32, u32)> =
            [0u32, 1].iter().map(|&s| g.node_of(s).unwrap()).map(|n| (walk::dot(&q, g.vector::<f32>(n)), n)).collect();
        let mut cands = cands;
        cands.sort_by(|a, b| b.0.total_cmp(&a.0));
        // Two candidates for two places: the second is nearer the first than the query, so
        // `getNeighborsByHeuristic2` keeps one; one candidate fewer than M is kept as it is.
        assert_eq!(g.select::<f32>(&cands, 2, &walk::dot).len(), 1);
        assert_eq!(g.select::<f32>(&cands, 3, &walk::dot).len(), 2);
    }

    #[test]
    fn a_batch_runs_on_a_thread_per_128_rows_reusing_their_marks() {
        let mut rng = StdRng::seed_from_u64(13);
        let vs: Vec<Vec<f32>> = (0..1200).map(|_| unit(&mut rng, 8)).collect();
        let g = Hnsw::new(8, 16, 64, false);
        let cores = std::thread::available_parallelism().map_or(1, |t| t.get());
        for (b, chunk) in vs.chunks(300).enumerate() {
            let rows: Vec<(u32, &[f32])> = chunk.iter().enumerate().map(|(i, v)| ((b * 300 + i) as u32, v.as_slice())).collect();
            g.insert(&rows);
            let pooled = lock(&g.visited).len();
            let threads = cores.min(300 / PARALLEL_MIN);
            assert_eq!(pooled, if threads < 2 { 0 } else { threads }, "batch {b}");
        }
        for (i, v) in vs.iter().enumerate().step_by(37) {
            assert_eq!(g.search(v, 1, 32, |_| true)[0].0, i as u32);
        }
    }
}
