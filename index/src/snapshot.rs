//! Graph snapshots: an HNSW graph's topology in a compact, checksummed form stored in RocksDB,
//! and its reload into `hnsw_rs` without re-inserting anything.
//!
//! `hnsw_rs` only dumps to and loads from a pair of files (`*.hnsw.graph`, `*.hnsw.data`) that
//! hold every vector a second time and 17 bytes per edge. The index keeps the vectors once, in
//! the `vectors` column family, so a snapshot holds only the topology: for each layer, the
//! points in `hnsw_rs`'s own order, each with its neighbour slots per layer (4 bytes per edge,
//! no distances: they are recomputed from the vectors on load). An open lays out the flat copy
//! searches walk straight from the topology ([`crate::walk::Flat::from_topology`]); the
//! `hnsw_rs` graph is reloaded on the first insert ([`restore`]): the two `hnsw_rs` files are
//! written into a temporary directory inside the index and `HnswIo` reads them, which rebuilds
//! exactly the graph that was saved (same layers, same ranks, same edges).
//!
//! The `hnsw_rs` file layout reproduced here is that of `hnsw_rs` 0.3.5 (format 4, "full"
//! dump mode); the workspace pins that version, and `graph_round_trips_through_a_snapshot`
//! checks that a reloaded graph answers exactly like the original.
//!
//! A snapshot is validated completely (length, structure, slot ranges, vectors present)
//! before `hnsw_rs` sees it, because its loader panics or exits on malformed input.

use crate::ids::Slot;
use anndists::dist::{DistDot, Distance};
use hnsw_rs::hnsw::Hnsw;
use hnsw_rs::hnswio::HnswIo;
use std::collections::{HashMap, HashSet};
use std::io::{BufWriter, Write};
use std::path::Path;

/// One block part of a reload's scratch files: graph bytes and data bytes.
type Encoded = Result<(Vec<u8>, Vec<u8>), SnapshotError>;

/// First bytes of every snapshot blob.
const MAGIC: &[u8; 8] = b"EVHNSW01";
/// Layers `hnsw_rs` always allocates (its `NB_LAYER_MAX`).
pub const HNSW_LAYERS: usize = 16;

// `hnsw_rs` 0.3.5 file magics (hnswio.rs).
const MAGIC_DESCR_4: u32 = 0x002a_6779;
const MAGIC_LAYER: u32 = 0x000a_676f;
const MAGIC_POINT: u32 = 0x000a_678f;
const MAGIC_DATA: u32 = 0xa67f_0000;

/// Why a snapshot could not be used. Never fatal: the caller rebuilds the graph instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotError(pub String);

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(msg: impl Into<String>) -> SnapshotError {
    SnapshotError(msg.into())
}

/// Graph-wide parameters carried by a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Vector dimension.
    pub dim: u32,
    /// hnsw `M`.
    pub max_nb_connection: u8,
    /// hnsw `efConstruction`.
    pub ef_construction: u32,
    /// Level sampling scale, as a factor of `hnsw_rs`'s default `1/ln(M)` (1.0 unless changed).
    pub level_scale: f64,
}

/// One point of a decoded snapshot: its slot and its neighbour slots per layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The point's slot (hnsw origin id).
    pub slot: u32,
    /// Neighbours per layer from layer 0 up to the highest non-empty one (`hnsw_rs` links points
    /// on layers above their own level too).
    pub neighbours: Vec<Vec<u32>>,
}

/// A decoded snapshot: parameters and the points layer by layer, in rank order.
#[derive(Clone, Debug, PartialEq)]
pub struct Topology {
    /// Graph parameters.
    pub params: Params,
    /// `layers[l][r]` is the point of rank `r` on layer `l`.
    pub layers: Vec<Vec<Node>>,
}

impl Topology {
    /// Number of points.
    pub fn len(&self) -> usize {
        self.layers.iter().map(Vec::len).sum()
    }

    /// True when the graph has no point.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every point's slot.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.layers.iter().flatten().map(|n| n.slot)
    }
}

/// Reads the topology of a live graph through `hnsw_rs`'s public accessors.
pub fn capture(hnsw: &Hnsw<'static, f32, DistDot>, dim: usize) -> Topology {
    let pi = hnsw.get_point_indexation();
    let top = if hnsw.get_nb_point() == 0 { 0 } else { pi.get_max_level_observed() as usize + 1 };
    let mut layers = Vec::with_capacity(top);
    for l in 0..top {
        let mut layer = Vec::with_capacity(pi.get_layer_nb_point(l));
        for p in pi.get_layer_iterator(l) {
            let hood = p.get_neighborhood_id();
            // hnsw_rs also links a point on layers above its own (the entry points it passed on
            // the way down): keep every non-empty layer.
            let used = hood.iter().rposition(|ns| !ns.is_empty()).map_or(0, |i| i + 1);
            let neighbours = hood.iter().take(used).map(|ns| ns.iter().map(|n| n.d_id as u32).collect()).collect();
            layer.push(Node { slot: p.get_origin_id() as u32, neighbours });
        }
        layers.push(layer);
    }
    let params = Params {
        dim: dim as u32,
        max_nb_connection: hnsw.get_max_nb_connection(),
        ef_construction: hnsw.get_ef_construction() as u32,
        // hnsw_rs reports the absolute scale but reloads a *factor* of its default 1/ln(M)
        // (and would shrink the levels of later inserts): store the factor.
        level_scale: pi.get_level_scale() * (hnsw.get_max_nb_connection() as f64).ln(),
    };
    Topology { params, layers }
}

/// Serialises a topology, little-endian: magic, dim u32, M u8, efConstruction u32, level
/// scale f64, layer count u8, points per layer u32 each; then per point (layer by layer, rank
/// order): slot u32, neighbour layer count u8, per layer a u16 count and that many slots u32.
pub fn encode(t: &Topology) -> Vec<u8> {
    let edges: usize = t.layers.iter().flatten().map(|n| n.neighbours.iter().map(Vec::len).sum::<usize>()).sum();
    let mut out = Vec::with_capacity(64 + t.len() * 12 + edges * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&t.params.dim.to_le_bytes());
    out.push(t.params.max_nb_connection);
    out.extend_from_slice(&t.params.ef_construction.to_le_bytes());
    out.extend_from_slice(&t.params.level_scale.to_le_bytes());
    out.push(t.layers.len() as u8);
    for layer in &t.layers {
        out.extend_from_slice(&(layer.len() as u32).to_le_bytes());
    }
    for layer in &t.layers {
        for node in layer {
            out.extend_from_slice(&node.slot.to_le_bytes());
            out.push(node.neighbours.len() as u8);
            for ns in &node.neighbours {
                out.extend_from_slice(&(ns.len() as u16).to_le_bytes());
                ns.iter().for_each(|s| out.extend_from_slice(&s.to_le_bytes()));
            }
        }
    }
    out
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], SnapshotError> {
        if self.b.len() < n {
            return Err(bad("truncated"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn f64(&mut self) -> Result<f64, SnapshotError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_le_bytes(a))
    }
}

/// Parses and validates a snapshot: structure, counts against the blob's length, unique slots,
/// every neighbour a point of the snapshot on a layer it lives on, sane parameters.
pub fn decode(b: &[u8]) -> Result<Topology, SnapshotError> {
    let mut r = Reader { b };
    if r.take(MAGIC.len())? != MAGIC {
        return Err(bad("bad magic"));
    }
    let dim = r.u32()?;
    let max_nb_connection = r.u8()?;
    let ef_construction = r.u32()?;
    let level_scale = r.f64()?;
    if dim == 0 || max_nb_connection == 0 || ef_construction == 0 || !(level_scale.is_finite() && level_scale > 0.0) {
        return Err(bad("bad parameters"));
    }
    let nlayers = r.u8()? as usize;
    if nlayers > HNSW_LAYERS {
        return Err(bad(format!("{nlayers} layers (at most {HNSW_LAYERS})")));
    }
    let mut counts = Vec::with_capacity(nlayers);
    for _ in 0..nlayers {
        let n = r.u32()? as usize;
        // Each point takes at least 5 bytes: reject counts the blob cannot hold before allocating.
        if n > r.b.len() / 5 {
            return Err(bad("layer count exceeds the snapshot's size"));
        }
        counts.push(n);
    }
    if nlayers > 0 && counts[nlayers - 1] == 0 {
        return Err(bad("empty top layer"));
    }
    let mut layers = Vec::with_capacity(nlayers);
    let mut seen: HashSet<u32> = HashSet::with_capacity(counts.iter().sum());
    for &n in &counts {
        let mut layer = Vec::with_capacity(n);
        for _ in 0..n {
            let slot = r.u32()?;
            if !seen.insert(slot) {
                return Err(bad(format!("slot {slot} appears twice")));
            }
            let nl = r.u8()? as usize;
            if nl > HNSW_LAYERS {
                return Err(bad(format!("slot {slot}: neighbours on {nl} layers")));
            }
            let mut neighbours = Vec::with_capacity(nl);
            for _ in 0..nl {
                let k = r.u16()? as usize;
                if k > 2 * max_nb_connection as usize + 1 || k * 4 > r.b.len() {
                    return Err(bad(format!("slot {slot}: {k} neighbours")));
                }
                let ns = (0..k).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?;
                neighbours.push(ns);
            }
            layer.push(Node { slot, neighbours });
        }
        layers.push(layer);
    }
    if !r.b.is_empty() {
        return Err(bad(format!("{} trailing bytes", r.b.len())));
    }
    for node in layers.iter().flatten() {
        for (l, ns) in node.neighbours.iter().enumerate() {
            if let Some(s) = ns.iter().find(|s| !seen.contains(s) || **s == node.slot) {
                return Err(bad(format!("slot {}: bad neighbour {s} on layer {l}", node.slot)));
            }
        }
    }
    Ok(Topology { params: Params { dim, max_nb_connection, ef_construction, level_scale }, layers })
}

/// Rebuilds the `hnsw_rs` graph of `t`, with vectors from `vector(slot)`, through files written
/// in `scratch` (an empty directory the caller removes afterwards).
pub fn restore<'v>(
    t: &Topology,
    vector: impl Fn(Slot) -> Option<&'v [f32]> + Sync,
    scratch: &Path,
) -> Result<Hnsw<'static, f32, DistDot>, SnapshotError> {
    let dim = t.params.dim as usize;
    let io = |e: std::io::Error| bad(format!("scratch file: {e}"));
    let mut rank: HashMap<u32, (u8, i32)> = HashMap::with_capacity(t.len());
    for (l, layer) in t.layers.iter().enumerate() {
        for (r, n) in layer.iter().enumerate() {
            rank.insert(n.slot, (l as u8, r as i32));
        }
    }
    let get = |s: u32| -> Result<&'v [f32], SnapshotError> {
        match vector(Slot(s)) {
            Some(v) if v.len() == dim => Ok(v),
            Some(v) => Err(bad(format!("slot {s}: vector has dimension {}, snapshot says {dim}", v.len()))),
            None => Err(bad(format!("slot {s} is in the snapshot but has no stored vector"))),
        }
    };
    let mut g = BufWriter::new(std::fs::File::create(scratch.join("g.hnsw.graph")).map_err(io)?);
    let mut d = BufWriter::new(std::fs::File::create(scratch.join("g.hnsw.data")).map_err(io)?);
    // Description (format 4, full dump mode).
    let distname = std::any::type_name::<DistDot>();
    let tname = std::any::type_name::<f32>();
    let mut head = Vec::new();
    head.extend_from_slice(&MAGIC_DESCR_4.to_ne_bytes());
    head.push(1);
    head.push(t.params.max_nb_connection);
    head.extend_from_slice(&t.params.level_scale.to_ne_bytes());
    head.push(HNSW_LAYERS as u8);
    head.extend_from_slice(&(t.params.ef_construction as usize).to_ne_bytes());
    head.extend_from_slice(&t.len().to_ne_bytes());
    head.extend_from_slice(&dim.to_ne_bytes());
    head.extend_from_slice(&distname.len().to_ne_bytes());
    head.extend_from_slice(distname.as_bytes());
    head.extend_from_slice(&tname.len().to_ne_bytes());
    head.extend_from_slice(tname.as_bytes());
    head.push(HNSW_LAYERS as u8);
    g.write_all(&head).map_err(io)?;
    d.write_all(&MAGIC_DATA.to_ne_bytes()).map_err(io)?;
    d.write_all(&dim.to_ne_bytes()).map_err(io)?;
    let empty = Vec::new();
    // One node's records: its graph entry (edges with their distances, recomputed here) and its
    // data entry. Nodes are encoded in blocks, each block split over the cores, then written in
    // order: the distances are most of a load's work.
    let encode = |l: usize, r0: usize, nodes: &[Node], g: &mut Vec<u8>, d: &mut Vec<u8>| -> Result<(), SnapshotError> {
        for (i, node) in nodes.iter().enumerate() {
            let v = get(node.slot)?;
            g.extend_from_slice(&MAGIC_POINT.to_ne_bytes());
            g.extend_from_slice(&(node.slot as usize).to_ne_bytes());
            g.push(l as u8);
            g.extend_from_slice(&((r0 + i) as i32).to_ne_bytes());
            for li in 0..HNSW_LAYERS {
                let ns = node.neighbours.get(li).map_or(&[][..], Vec::as_slice);
                g.extend_from_slice(&ns.len().to_ne_bytes());
                for &s in ns {
                    let (nl, nr) = rank[&s];
                    g.extend_from_slice(&(s as usize).to_ne_bytes());
                    g.push(nl);
                    g.extend_from_slice(&nr.to_ne_bytes());
                    g.extend_from_slice(&DistDot.eval(v, get(s)?).to_ne_bytes());
                }
            }
            d.extend_from_slice(&MAGIC_DATA.to_ne_bytes());
            d.extend_from_slice(&(node.slot as u64).to_ne_bytes());
            d.extend_from_slice(&((dim * 4) as u64).to_ne_bytes());
            v.iter().for_each(|x| d.extend_from_slice(&x.to_ne_bytes()));
        }
        Ok(())
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 16);
    const BLOCK: usize = 1 << 14;
    for l in 0..HNSW_LAYERS {
        let layer = t.layers.get(l).unwrap_or(&empty);
        g.write_all(&MAGIC_LAYER.to_ne_bytes()).map_err(io)?;
        g.write_all(&layer.len().to_ne_bytes()).map_err(io)?;
        for (b, block) in layer.chunks(BLOCK).enumerate() {
            let per = block.len().div_ceil(threads);
            let parts: Vec<Encoded> = std::thread::scope(|sc| {
                let handles: Vec<_> = block
                    .chunks(per)
                    .enumerate()
                    .map(|(j, nodes)| {
                        let encode = &encode;
                        sc.spawn(move || {
                            let (mut gb, mut db) = (Vec::new(), Vec::new());
                            encode(l, b * BLOCK + j * per, nodes, &mut gb, &mut db).map(|()| (gb, db))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(bad("snapshot encoder panicked")))).collect()
            });
            for part in parts {
                let (gb, db) = part?;
                g.write_all(&gb).map_err(io)?;
                d.write_all(&db).map_err(io)?;
            }
        }
    }
    // Entry point: the first point of the top layer (any top-layer point is a valid entry).
    let top = t.layers.len() - 1;
    g.write_all(&(t.layers[top][0].slot as usize).to_ne_bytes()).map_err(io)?;
    g.write_all(&[top as u8]).map_err(io)?;
    g.write_all(&0i32.to_ne_bytes()).map_err(io)?;
    // Flushed, not synced: this process reads them back at once (the page cache serves it), and
    // a crash loses nothing (the snapshot in RocksDB is the copy that counts).
    g.flush().map_err(io)?;
    d.flush().map_err(io)?;
    drop((g, d));
    // `load_hnsw` ties the graph's lifetime to its loader even without memory maps; the loader
    // is a few bytes of paths, leaked once per collection per open.
    let loader: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(scratch, "g")));
    let mut hnsw: Hnsw<'static, f32, DistDot> = loader.load_hnsw().map_err(|e| bad(format!("hnsw_rs reload: {e}")))?;
    hnsw.set_extend_candidates(false);
    Ok(hnsw)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn unit(rng: &mut StdRng, d: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    fn graph(n: usize, d: usize, seed: u64) -> (Hnsw<'static, f32, DistDot>, Vec<Vec<f32>>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let vs: Vec<Vec<f32>> = (0..n).map(|_| unit(&mut rng, d)).collect();
        let h = Hnsw::new(16, n, HNSW_LAYERS, 200, DistDot);
        // Sequential inserts: the entry point is then the first point of the top layer, as
        // `restore` picks it, and searches must agree exactly.
        vs.iter().enumerate().for_each(|(i, v)| h.insert_slice((v, i)));
        (h, vs)
    }

    #[test]
    fn graph_round_trips_through_a_snapshot() {
        let (h, vs) = graph(3000, 12, 7);
        let topo = capture(&h, 12);
        assert_eq!(topo.len(), 3000);
        assert!((topo.params.level_scale - 1.0).abs() < 1e-9, "{}", topo.params.level_scale);
        assert!(topo.layers.len() >= 2, "a 3000-point graph has upper layers");
        let blob = encode(&topo);
        let back = decode(&blob).unwrap();
        assert_eq!(back, topo);
        let dir = tempfile::tempdir().unwrap();
        let h2 = restore(&back, |s| vs.get(s.0 as usize).map(Vec::as_slice), dir.path()).unwrap();
        assert_eq!(capture(&h2, 12), topo, "the reloaded graph has the same layers, ranks and edges");
        // The flat copy an open makes straight from the snapshot is the one it would take of
        // the reloaded graph (and of the original).
        let flat = crate::walk::Flat::from_topology(&topo, 12, |s| vs.get(s as usize).map(Vec::as_slice));
        assert_eq!(flat, crate::walk::Flat::capture(&h2, 12));
        assert_eq!(flat, crate::walk::Flat::capture(&h, 12));
        let mut rng = StdRng::seed_from_u64(8);
        for _ in 0..100 {
            let q = unit(&mut rng, 12);
            let a: Vec<(usize, f32)> = h.search(&q, 10, 64).into_iter().map(|n| (n.d_id, n.distance)).collect();
            let b: Vec<(usize, f32)> = h2.search(&q, 10, 64).into_iter().map(|n| (n.d_id, n.distance)).collect();
            assert_eq!(a, b);
        }
        // The reloaded graph keeps growing like the original.
        let extra = unit(&mut rng, 12);
        h2.insert_slice((&extra, 3000));
        assert_eq!(h2.search(&extra, 1, 32)[0].d_id, 3000);
    }

    #[test]
    fn a_graph_opened_from_a_snapshot_searches_before_and_after_its_lazy_reload() {
        use crate::graph::{Graph, SlotMeta};
        use crate::ids::ItemId;
        use crate::search::Filter;
        let (h, vs) = graph(2000, 16, 11);
        let topo = capture(&h, 16);
        let meta = |i: usize| SlotMeta { item: ItemId(format!("v{i}")), patient: None, study: None, date: None };
        let (eager_dir, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut eager = Graph::from_hnsw(restore(&topo, |s| vs.get(s.0 as usize).map(Vec::as_slice), eager_dir.path()).unwrap(), 16);
        let mut lazy = Graph::from_snapshot(topo.clone(), 16, |s| vs.get(s.0 as usize).map(Vec::as_slice), dir.path());
        for i in 0..2000 {
            eager.set_meta(Slot(i as u32), meta(i));
            lazy.set_meta(Slot(i as u32), meta(i));
        }
        assert_eq!(lazy.nodes(), 2000);
        assert_eq!(lazy.topology(), topo, "not reloaded yet: the snapshot's own topology");
        let mut rng = StdRng::seed_from_u64(12);
        let queries: Vec<Vec<f32>> = (0..50).map(|_| unit(&mut rng, 16)).collect();
        for q in &queries {
            assert_eq!(lazy.search(q, 10, 64, &Filter::default()), eager.search(q, 10, 64, &Filter::default()));
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing reloaded by searches");
        // The first insert reloads hnsw_rs (scratch files removed after) and the graph goes on.
        let extra: Vec<Vec<f32>> = (0..100).map(|_| unit(&mut rng, 16)).collect();
        let rows: Vec<(Slot, &[f32])> = extra.iter().enumerate().map(|(i, v)| (Slot(2000 + i as u32), v.as_slice())).collect();
        lazy.insert_hidden(&rows);
        eager.insert_hidden(&rows);
        for i in 2000..2100 {
            lazy.set_meta(Slot(i as u32), meta(i));
            eager.set_meta(Slot(i as u32), meta(i));
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "scratch removed");
        assert_eq!(lazy.nodes(), 2100);
        let t2 = lazy.topology();
        assert_eq!(t2.len(), 2100);
        assert!(t2.slots().any(|s| s == 2099));
        for (i, v) in extra.iter().enumerate() {
            assert_eq!(lazy.search(v, 1, 32, &Filter::default())[0].0, Slot(2000 + i as u32), "inserted vector {i} found");
        }
        // A reload that cannot write its scratch files (here the scratch "directory" is a file)
        // rebuilds the graph from the flat copy's vectors instead: inserts and searches go on.
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, b"x").unwrap();
        let mut rebuilt = Graph::from_snapshot(topo.clone(), 16, |s| vs.get(s.0 as usize).map(Vec::as_slice), &not_a_dir);
        for i in 0..2000 {
            rebuilt.set_meta(Slot(i as u32), meta(i));
        }
        rebuilt.insert_hidden(&rows);
        for i in 2000..2100 {
            rebuilt.set_meta(Slot(i as u32), meta(i));
        }
        assert_eq!(rebuilt.nodes(), 2100);
        for (i, v) in extra.iter().enumerate() {
            assert_eq!(rebuilt.search(v, 1, 32, &Filter::default())[0].0, Slot(2000 + i as u32), "rebuilt: vector {i} found");
        }
        for v in vs.iter().take(50) {
            assert!(rebuilt.search(v, 1, 64, &Filter::default())[0].1 > 0.9999, "rebuilt: an old vector finds itself");
        }
        // Both reloaded the same graph and inserted the same points: same answers.
        for q in &queries {
            let a: Vec<Slot> = lazy.search(q, 10, 64, &Filter::default()).into_iter().map(|h| h.0).collect();
            let b: Vec<Slot> = eager.search(q, 10, 64, &Filter::default()).into_iter().map(|h| h.0).collect();
            let common = a.iter().filter(|s| b.contains(s)).count();
            assert!(common >= 9, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn a_snapshot_is_far_smaller_than_hnsw_rs_own_dump() {
        let (h, _) = graph(2000, 8, 9);
        let topo = capture(&h, 8);
        let blob = encode(&topo);
        let edges: usize = topo.layers.iter().flatten().map(|n| n.neighbours.iter().map(Vec::len).sum::<usize>()).sum();
        let layer_lists: usize = topo.layers.iter().flatten().map(|n| n.neighbours.len()).sum();
        // Exactly: header, a count per layer, per point slot + list count, per list a u16, per edge a u32.
        assert_eq!(blob.len(), 26 + 4 * topo.layers.len() + 2000 * 5 + 2 * layer_lists + 4 * edges);
        // hnsw_rs's full dump: 17 bytes per edge, 17 per point plus 8 per layer (16 layers).
        let theirs = edges * 17 + 2000 * (17 + 16 * 8);
        assert!(blob.len() * 3 < theirs, "ours {} bytes, hnsw_rs {theirs}", blob.len());
    }

    #[test]
    fn malformed_snapshots_are_errors_not_panics() {
        let (h, vs) = graph(300, 6, 10);
        let blob = encode(&capture(&h, 6));
        // Every truncation and many single-byte flips: decode rejects them or, where the flip
        // still describes a valid graph, restore builds one; nothing panics.
        for cut in (0..blob.len()).step_by(7) {
            assert!(decode(&blob[..cut]).is_err());
        }
        let dir = tempfile::tempdir().unwrap();
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..300 {
            let mut b = blob.clone();
            let i = rng.random_range(0..b.len());
            b[i] ^= 1 << rng.random_range(0..8);
            if let Ok(t) = decode(&b) {
                let _ = restore(&t, |s| vs.get(s.0 as usize).map(Vec::as_slice), dir.path());
            }
        }
        // A snapshot naming a slot without a stored vector is refused before hnsw_rs sees it.
        let t = decode(&blob).unwrap();
        let err = restore(&t, |s| if s.0 == 5 { None } else { vs.get(s.0 as usize).map(Vec::as_slice) }, dir.path()).err().unwrap();
        assert!(err.0.contains("slot 5"), "{err}");
    }
}
