//! Graph snapshots: an HNSW graph's topology in a compact, checksummed form stored in RocksDB.
//!
//! The index keeps the vectors once, in the `vectors` column family, so a snapshot holds only
//! the topology: for each layer, the nodes whose level it is (the entry node first on the top
//! layer), each with its neighbour slots on layers 0 to its level (4 bytes per edge). An open
//! fills the graph straight from it and the stored vectors ([`crate::hnsw::Hnsw::from_topology`]):
//! nothing is re-inserted, and the graph takes inserts at once.
//!
//! The format (`EVHNSW01`) is the one graphs built by `hnsw_rs` 0.3.5 were saved in, so those
//! snapshots load as they are (`a_snapshot_hnsw_rs_built_loads_and_answers_as_before`); their
//! only quirk, nodes linked on layers above the one they are listed on, is read as a higher
//! level. A snapshot is validated completely (length, structure, slot ranges) before use.

use std::collections::HashMap;

/// First bytes of every snapshot blob.
const MAGIC: &[u8; 8] = b"EVHNSW01";
/// Most layers a snapshot may have.
pub const MAX_LAYERS: usize = crate::hnsw::MAX_LEVEL + 1;

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
    /// Level sampling scale, as a factor of the default `1/ln(M)` (always 1.0; kept for the
    /// format).
    pub level_scale: f64,
}

/// A decoded snapshot: parameters and the nodes layer by layer, their lists in flat arrays
/// (no allocation per node: a million-node snapshot decodes into five vectors).
#[derive(Clone, Debug, PartialEq)]
pub struct Topology {
    /// Graph parameters.
    pub params: Params,
    /// Nodes listed per layer; nodes are stored layer by layer.
    layer_counts: Vec<u32>,
    /// Per node: slot and the layer it is listed on.
    nodes: Vec<(u32, u8)>,
    /// Node `i`'s lists (layer 0 up) are lists `list_at[i]..list_at[i + 1]`.
    list_at: Vec<u32>,
    /// List `j`'s links are `links[link_at[j]..link_at[j + 1]]`.
    link_at: Vec<u32>,
    /// Neighbour slots.
    links: Vec<u32>,
}

impl Topology {
    /// An empty topology.
    pub fn new(params: Params) -> Self {
        Self { params, layer_counts: Vec::new(), nodes: Vec::new(), list_at: vec![0], link_at: vec![0], links: Vec::new() }
    }

    /// Appends a node listed on `layer` (not below the previous node's); its lists follow
    /// with [`Topology::push_list`].
    pub fn push_node(&mut self, slot: u32, layer: usize) {
        if self.layer_counts.len() <= layer {
            self.layer_counts.resize(layer + 1, 0);
        }
        self.layer_counts[layer] += 1;
        self.nodes.push((slot, layer as u8));
        let at = self.list_at.last().copied().unwrap_or(0);
        self.list_at.push(at);
    }

    /// Appends the next list (layer 0 up) of the last node.
    pub fn push_list(&mut self, links: &[u32]) {
        self.links.extend_from_slice(links);
        self.link_at.push(self.links.len() as u32);
        if let Some(at) = self.list_at.last_mut() {
            *at += 1;
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the graph has no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's slot, in snapshot order.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.nodes.iter().map(|n| n.0)
    }

    /// Slot of node `i`.
    pub fn slot(&self, i: usize) -> u32 {
        self.nodes[i].0
    }

    /// Level of node `i`: the layer it is listed on, or its highest list when that is higher.
    pub fn level(&self, i: usize) -> usize {
        let lists = (self.list_at[i + 1] - self.list_at[i]) as usize;
        (self.nodes[i].1 as usize).max(lists.saturating_sub(1))
    }

    /// Node `i`'s neighbour slots per layer, from layer 0.
    pub fn lists(&self, i: usize) -> impl Iterator<Item = &[u32]> + '_ {
        (self.list_at[i]..self.list_at[i + 1])
            .map(|j| &self.links[self.link_at[j as usize] as usize..self.link_at[j as usize + 1] as usize])
    }

    /// The entry node: the first one listed on the top layer.
    pub fn entry_index(&self) -> usize {
        let top = self.layer_counts.len().saturating_sub(1);
        self.layer_counts[..top].iter().map(|c| *c as usize).sum()
    }

    /// Number of layers.
    #[cfg(test)]
    pub fn layers(&self) -> usize {
        self.layer_counts.len()
    }

    /// Number of edges.
    #[cfg(test)]
    pub fn edges(&self) -> usize {
        self.links.len()
    }
}

/// Serialises a topology, little-endian: magic, dim u32, M u8, efConstruction u32, level
/// scale f64, layer count u8, nodes per layer u32 each; then per node (layer by layer): slot
/// u32, list count u8, per list a u16 count and that many slots u32.
pub fn encode(t: &Topology) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + t.len() * 5 + (t.link_at.len() - 1) * 2 + t.links.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&t.params.dim.to_le_bytes());
    out.push(t.params.max_nb_connection);
    out.extend_from_slice(&t.params.ef_construction.to_le_bytes());
    out.extend_from_slice(&t.params.level_scale.to_le_bytes());
    out.push(t.layer_counts.len() as u8);
    for c in &t.layer_counts {
        out.extend_from_slice(&c.to_le_bytes());
    }
    for i in 0..t.len() {
        out.extend_from_slice(&t.slot(i).to_le_bytes());
        out.push((t.list_at[i + 1] - t.list_at[i]) as u8);
        for ns in t.lists(i) {
            out.extend_from_slice(&(ns.len() as u16).to_le_bytes());
            ns.iter().for_each(|s| out.extend_from_slice(&s.to_le_bytes()));
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

/// Slot → node index, dense when the slots are (the usual case), else hashed.
enum SlotIndex {
    Dense(Vec<u32>),
    Sparse(HashMap<u32, u32>),
}

impl SlotIndex {
    fn contains(&self, s: u32) -> bool {
        match self {
            SlotIndex::Dense(v) => v.get(s as usize).is_some_and(|n| *n != u32::MAX),
            SlotIndex::Sparse(m) => m.contains_key(&s),
        }
    }
}

/// Parses and validates a snapshot: structure, counts against the blob's length, unique slots,
/// every neighbour a node of the snapshot other than itself, sane parameters.
pub fn decode(b: &[u8]) -> Result<Topology, SnapshotError> {
    let mut r = Reader { b };
    if r.take(MAGIC.len())? != MAGIC {
        return Err(bad("bad magic"));
    }
    let dim = r.u32()?;
    let max_nb_connection = r.u8()?;
    let ef_construction = r.u32()?;
    let level_scale = r.f64()?;
    if dim == 0 || !(level_scale.is_finite() && level_scale > 0.0) {
        return Err(bad("bad parameters"));
    }
    // The graph sizes its lists by M and its searches by efConstruction: out of these ranges
    // a snapshot is refused (and the graph rebuilt), never adopted.
    if !(2..=crate::hnsw::MAX_M).contains(&(max_nb_connection as usize)) {
        return Err(bad(format!("M {max_nb_connection} (2 to {})", crate::hnsw::MAX_M)));
    }
    if !(1..=crate::hnsw::MAX_EF_CONSTRUCTION).contains(&(ef_construction as usize)) {
        return Err(bad(format!("efConstruction {ef_construction} (1 to {})", crate::hnsw::MAX_EF_CONSTRUCTION)));
    }
    let nlayers = r.u8()? as usize;
    if nlayers > MAX_LAYERS {
        return Err(bad(format!("{nlayers} layers (at most {MAX_LAYERS})")));
    }
    let mut counts = Vec::with_capacity(nlayers);
    for _ in 0..nlayers {
        let n = r.u32()? as usize;
        // Each node takes at least 5 bytes: reject counts the blob cannot hold before allocating.
        if n > r.b.len() / 5 {
            return Err(bad("layer count exceeds the snapshot's size"));
        }
        counts.push(n);
    }
    if nlayers > 0 && counts[nlayers - 1] == 0 {
        return Err(bad("empty top layer"));
    }
    let total: usize = counts.iter().sum();
    if total > r.b.len() / 5 {
        return Err(bad("node count exceeds the snapshot's size"));
    }
    let params = Params { dim, max_nb_connection, ef_construction, level_scale };
    let mut t = Topology::new(params);
    t.nodes.reserve_exact(total);
    t.list_at.reserve_exact(total);
    // About four bytes per link, two per list.
    t.links.reserve(r.b.len() / 4);
    t.link_at.reserve(total);
    let most = 2 * max_nb_connection as usize + 1;
    let mut links = Vec::with_capacity(most);
    for (layer, &n) in counts.iter().enumerate() {
        for _ in 0..n {
            let slot = r.u32()?;
            let nl = r.u8()? as usize;
            if nl > MAX_LAYERS {
                return Err(bad(format!("slot {slot}: neighbours on {nl} layers")));
            }
            t.push_node(slot, layer);
            for _ in 0..nl {
                let k = r.u16()? as usize;
                if k > most || k * 4 > r.b.len() {
                    return Err(bad(format!("slot {slot}: {k} neighbours")));
                }
                links.clear();
                for _ in 0..k {
                    links.push(r.u32()?);
                }
                t.push_list(&links);
            }
        }
    }
    if !r.b.is_empty() {
        return Err(bad(format!("{} trailing bytes", r.b.len())));
    }
    let index = slot_index(&t)?;
    for i in 0..t.len() {
        let slot = t.slot(i);
        for (l, ns) in t.lists(i).enumerate() {
            if let Some(s) = ns.iter().find(|s| !index.contains(**s) || **s == slot) {
                return Err(bad(format!("slot {slot}: bad neighbour {s} on layer {l}")));
            }
        }
    }
    Ok(t)
}

/// Indexes `t`'s slots, refusing one that appears twice.
fn slot_index(t: &Topology) -> Result<SlotIndex, SnapshotError> {
    let max = t.slots().max().map_or(0, |s| s as usize + 1);
    let twice = |s: u32| bad(format!("slot {s} appears twice"));
    if max <= 8 * t.len() + (1 << 20) {
        let mut v = vec![u32::MAX; max];
        for (i, s) in t.slots().enumerate() {
            if std::mem::replace(&mut v[s as usize], i as u32) != u32::MAX {
                return Err(twice(s));
            }
        }
        Ok(SlotIndex::Dense(v))
    } else {
        let mut m = HashMap::with_capacity(t.len());
        for (i, s) in t.slots().enumerate() {
            if m.insert(s, i as u32).is_some() {
                return Err(twice(s));
            }
        }
        Ok(SlotIndex::Sparse(m))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::hnsw::Hnsw;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Deterministic unit vectors (an LCG): the vectors of the `hnsw_rs` fixture.
    fn fixture_vectors(n: usize, d: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                let v: Vec<f32> = (0..d)
                    .map(|_| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                    })
                    .collect();
                let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
                v.into_iter().map(|a| a / norm).collect()
            })
            .collect()
    }

    fn graph(n: usize, d: usize, seed: u64) -> (Hnsw, Vec<Vec<f32>>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let vs: Vec<Vec<f32>> = (0..n)
            .map(|_| {
                let v: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
                v.into_iter().map(|a| a / norm).collect()
            })
            .collect();
        let h = Hnsw::new(d, 16, 200, false);
        let rows: Vec<(u32, &[f32])> = vs.iter().enumerate().map(|(i, v)| (i as u32, v.as_slice())).collect();
        h.insert(&rows);
        (h, vs)
    }

    /// A snapshot `hnsw_rs` 0.3.5 wrote (800 12-d vectors at slots 0, 3, 6, …; written by the
    /// index before the graph was our own) loads as it is, and the graph filled from it answers
    /// exactly as the searched copy of that graph did then (the walk's answers were recorded
    /// with it: 40 queries, k 10, ef 32, accepting slots divisible by 6 or 9).
    #[test]
    fn a_snapshot_hnsw_rs_built_loads_and_answers_as_before() {
        let blob = include_bytes!("testdata/hnsw_rs-0.3.5.evhnsw");
        let answers = include_str!("testdata/hnsw_rs-0.3.5.answers");
        let t = decode(blob).unwrap();
        assert_eq!(t.len(), 800);
        assert_eq!(encode(&t), blob.to_vec(), "the format is unchanged");
        let vs = fixture_vectors(800, 12, 1);
        let h = Hnsw::from_topology(&t, false, |s| vs.get(s as usize / 3).map(Vec::as_slice));
        assert_eq!(h.len(), 800);
        for (q, line) in fixture_vectors(40, 12, 2).iter().zip(answers.lines()) {
            let want: Vec<(u32, u32)> = line
                .split(' ')
                .map(|p| {
                    let (s, d) = p.split_once(':').unwrap();
                    (s.parse().unwrap(), d.parse().unwrap())
                })
                .collect();
            let got: Vec<(u32, u32)> =
                h.search(q, 10, 32, |s| s % 2 == 0 || s % 9 == 0).into_iter().map(|(s, d)| (s, d.to_bits())).collect();
            assert_eq!(got, want);
        }
        // And it keeps growing: new vectors are found, old ones still are.
        let extra = fixture_vectors(200, 12, 3);
        let rows: Vec<(u32, &[f32])> = extra.iter().enumerate().map(|(i, v)| (3000 + i as u32, v.as_slice())).collect();
        h.insert(&rows);
        for (i, v) in extra.iter().enumerate() {
            assert_eq!(h.search(v, 1, 32, |_| true)[0].0, 3000 + i as u32);
        }
        for (i, v) in vs.iter().enumerate() {
            assert_eq!(h.search(v, 1, 32, |_| true)[0].0, 3 * i as u32);
        }
        let again = decode(&encode(&h.topology())).unwrap();
        assert_eq!(again.len(), 1000);
    }

    #[test]
    fn a_snapshot_is_four_bytes_per_edge() {
        let (h, _) = graph(2000, 8, 9);
        let topo = h.topology();
        let blob = encode(&topo);
        let lists: usize = (0..topo.len()).map(|i| topo.lists(i).count()).sum();
        // Exactly: header, a count per layer, per node slot + list count, per list a u16, per edge a u32.
        assert_eq!(blob.len(), 26 + 4 * topo.layers() + 2000 * 5 + 2 * lists + 4 * topo.edges());
        assert_eq!(lists, (0..topo.len()).map(|i| topo.level(i) + 1).sum::<usize>());
    }

    #[test]
    fn malformed_snapshots_are_errors_not_panics() {
        let (h, vs) = graph(300, 6, 10);
        let blob = encode(&h.topology());
        // Every truncation and many single-byte flips: decode rejects them or, where the flip
        // still describes a valid graph, the graph loads and searches; nothing panics.
        for cut in (0..blob.len()).step_by(7) {
            assert!(decode(&blob[..cut]).is_err());
        }
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..300 {
            let mut b = blob.clone();
            let i = rng.random_range(0..b.len());
            b[i] ^= 1 << rng.random_range(0..8);
            if let Ok(t) = decode(&b) {
                // (A flipped slot far above the others would size the slot map by it.)
                if t.params.dim == 6 && t.slots().all(|s| s < 10_000) {
                    let g = Hnsw::from_topology(&t, false, |s| vs.get(s as usize).map(Vec::as_slice));
                    let _ = g.search(&vs[0], 5, 16, |_| true);
                    g.insert(&[(5000, vs[1].as_slice())]);
                }
            }
        }
        let dup = {
            let mut t = Topology::new(decode(&blob).unwrap().params);
            t.push_node(1, 0);
            t.push_list(&[2]);
            t.push_node(2, 0);
            t.push_list(&[1]);
            t.push_node(1, 1);
            t.push_list(&[2]);
            encode(&t)
        };
        assert!(decode(&dup).unwrap_err().0.contains("slot 1 appears twice"));
        let dangling = {
            let mut t = Topology::new(decode(&blob).unwrap().params);
            t.push_node(1, 0);
            t.push_list(&[7]);
            encode(&t)
        };
        assert!(decode(&dangling).unwrap_err().0.contains("bad neighbour 7"));
        // Far-apart slots index through a map, not an array as long as the largest slot.
        let sparse = {
            let mut t = Topology::new(decode(&blob).unwrap().params);
            t.push_node(u32::MAX - 1, 0);
            t.push_list(&[3]);
            t.push_node(3, 0);
            t.push_list(&[u32::MAX - 1]);
            encode(&t)
        };
        assert_eq!(decode(&sparse).unwrap().len(), 2);
        // M and efConstruction out of range are refused, not adopted by the graph.
        let with = |m: u8, ef: u32| {
            let mut p = decode(&blob).unwrap().params;
            (p.max_nb_connection, p.ef_construction) = (m, ef);
            let mut t = Topology::new(p);
            t.push_node(1, 0);
            t.push_list(&[]);
            decode(&encode(&t))
        };
        assert!(with(65, 200).unwrap_err().0.contains("M 65"));
        assert!(with(255, 200).is_err() && with(1, 200).is_err());
        assert!(with(16, u32::MAX).unwrap_err().0.contains("efConstruction"));
        assert!(with(16, 4097).is_err() && with(16, 0).is_err());
        assert_eq!(with(64, 4096).unwrap().len(), 1);
        assert_eq!(with(2, 1).unwrap().len(), 1);
    }
}
