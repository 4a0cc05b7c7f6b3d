//! The HNSW graph against brute force, through the public API: random small sets (dim 4–32,
//! unit vectors), a random interleaving of insert batches, deletes, re-inserts (same item id, a
//! new vector, or a deleted id back again), checkpoints and reopens; after each step the graph
//! walk (`Index::search_graph_filtered`, which never takes the exact path `Index::search` uses for
//! sets this small) must return only live items, each with the cosine of its current vector,
//! and its recall@10 against brute force over the live set, at ef 128, must average >= 0.99
//! over the queries of a case.

#![allow(clippy::unwrap_used)]

use echovault_index::{Filter, Index, IndexOptions, ItemId, ItemRecord, Kind, Query, SpaceId};
use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

const K: usize = 10;
const EF: usize = 128;
/// Queries per check.
const QUERIES: usize = 12;

fn unit(rng: &mut StdRng, d: usize) -> Vec<f32> {
    loop {
        let v: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 1e-3 {
            return v.into_iter().map(|x| x / n).collect();
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[derive(Clone, Debug)]
enum Op {
    /// A batch of this many new items.
    Insert(usize),
    /// Deletes about this percentage of the live items.
    Delete(u8),
    /// This many items get a new vector under their id (live ones, or deleted ones back again).
    Reinsert(usize),
    /// `Index::checkpoint` (snapshots the graph).
    Checkpoint,
    /// Drops the index and opens it again (snapshot load or rebuild, then replay).
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..160).prop_map(Op::Insert),
        2 => (1u8..40).prop_map(Op::Delete),
        2 => (1usize..40).prop_map(Op::Reinsert),
        1 => Just(Op::Checkpoint),
        2 => Just(Op::Reopen),
    ]
}

/// What the index should hold: live items and their current vectors, and the deleted ids.
struct Model {
    live: BTreeMap<String, Vec<f32>>,
    deleted: Vec<String>,
    next: usize,
}

struct Case {
    rng: StdRng,
    dim: usize,
    model: Model,
    /// Recall hits and wanted totals over every check of the case.
    found: usize,
    wanted: usize,
    checks: usize,
}

impl Case {
    fn put(&mut self, index: &Index, space: SpaceId, ids: Vec<String>) {
        let mut b = index.batch();
        for id in ids {
            let v = unit(&mut self.rng, self.dim);
            b.put_item(ItemRecord::new(id.as_str(), Kind::Video, "prop"));
            b.put_vector(space, id.as_str(), Kind::Video, v.clone());
            self.model.deleted.retain(|d| *d != id);
            self.model.live.insert(id, v);
        }
        index.commit(b).unwrap();
    }

    fn apply(&mut self, index: &Index, space: SpaceId, op: &Op) {
        match op {
            Op::Insert(n) => {
                let ids = (0..*n).map(|i| format!("v{}", self.model.next + i)).collect();
                self.model.next += n;
                self.put(index, space, ids);
            }
            Op::Delete(pct) => {
                let ids: Vec<String> = self.model.live.keys().filter(|_| self.rng.random_range(0..100u8) < *pct).cloned().collect();
                if ids.is_empty() {
                    return;
                }
                let mut b = index.batch();
                for id in &ids {
                    b.delete_item(ItemId(id.clone()));
                    self.model.live.remove(id);
                    self.model.deleted.push(id.clone());
                }
                index.commit(b).unwrap();
            }
            Op::Reinsert(n) => {
                let mut ids = HashSet::new();
                let pool: Vec<String> = self.model.live.keys().chain(&self.model.deleted).cloned().collect();
                for _ in 0..*n {
                    if pool.is_empty() {
                        break;
                    }
                    ids.insert(pool[self.rng.random_range(0..pool.len())].clone());
                }
                self.put(index, space, ids.into_iter().collect());
            }
            Op::Checkpoint => index.checkpoint().unwrap(),
            Op::Reopen => unreachable!("handled by the caller, which owns the index"),
        }
    }

    /// Graph walks for random queries and for perturbed stored vectors.
    fn check(&mut self, index: &Index, space: SpaceId, after: &str) -> Result<(), TestCaseError> {
        if self.model.live.is_empty() {
            return Ok(());
        }
        self.checks += 1;
        let stored: Vec<&Vec<f32>> = self.model.live.values().collect();
        for qi in 0..QUERIES {
            let q = if qi % 2 == 0 {
                unit(&mut self.rng, self.dim)
            } else {
                let s = stored[self.rng.random_range(0..stored.len())];
                let noise = unit(&mut self.rng, self.dim);
                let v: Vec<f32> = s.iter().zip(&noise).map(|(a, b)| a + 0.1 * b).collect();
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.into_iter().map(|x| x / n).collect()
            };
            let mut query = Query::new(space, Kind::Video, q.clone(), K);
            query.ef = Some(EF);
            query.filter = Filter::default();
            let hits = index.search_graph_filtered(&query).unwrap();
            let mut seen = HashSet::new();
            for (id, score) in &hits {
                let Some(v) = self.model.live.get(&id.0) else {
                    return Err(TestCaseError::fail(format!(
                        "after {after}: hit {} is not live (deleted: {})",
                        id.0,
                        self.model.deleted.contains(&id.0)
                    )));
                };
                prop_assert!(seen.insert(id.0.clone()), "after {}: {} returned twice", after, id.0);
                let want = dot(&q, v);
                prop_assert!(
                    (want - score).abs() < 1e-4,
                    "after {}: {} scored {} but its current vector gives {}",
                    after,
                    id.0,
                    score,
                    want
                );
            }
            let k = K.min(self.model.live.len());
            prop_assert_eq!(hits.len(), k, "after {}: {} hits of {} wanted, {} live", after, hits.len(), k, self.model.live.len());
            // Brute force; a hit counts when it scores at least the k-th true score (ties).
            let mut truth: Vec<f32> = self.model.live.values().map(|v| dot(&q, v)).collect();
            truth.sort_by(|a, b| b.total_cmp(a));
            let kth = truth[k - 1];
            self.found += hits.iter().filter(|(_, s)| *s >= kth - 1e-5).count();
            self.wanted += k;
        }
        Ok(())
    }
}

fn open(dir: &Path) -> (Index, SpaceId) {
    let index = Index::open(dir, IndexOptions::default()).unwrap();
    let space = index.space("prop").expect("the space made at the first open").id;
    (index, space)
}

fn run(seed: u64, dim: usize, first: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let space = index.ensure_space("prop", dim).unwrap();
    let mut index = Some(index);
    let mut case = Case {
        rng: StdRng::seed_from_u64(seed),
        dim,
        model: Model { live: BTreeMap::new(), deleted: Vec::new(), next: 0 },
        found: 0,
        wanted: 0,
        checks: 0,
    };
    case.apply(index.as_ref().unwrap(), space, &Op::Insert(first));
    case.check(index.as_ref().unwrap(), space, "the first batch")?;
    let mut snapshot_loads = 0;
    for (i, op) in ops.iter().enumerate() {
        let after = format!("op {i} {op:?}");
        if let Op::Reopen = op {
            drop(index.take());
            let (reopened, s) = open(dir.path());
            prop_assert_eq!(s, space);
            snapshot_loads += reopened.graph_loads().iter().filter(|l| l.how == "snapshot").count();
            index = Some(reopened);
        } else {
            case.apply(index.as_ref().unwrap(), space, op);
        }
        case.check(index.as_ref().unwrap(), space, &after)?;
    }
    // Once more from a snapshot: the graph of the final state, walked straight after the load.
    index.as_ref().unwrap().checkpoint().unwrap();
    drop(index.take());
    let (reopened, _) = open(dir.path());
    snapshot_loads += reopened.graph_loads().iter().filter(|l| l.how == "snapshot").count();
    case.check(&reopened, space, "the final checkpoint and reopen")?;
    prop_assert!(snapshot_loads >= 1, "no reopen loaded a graph snapshot");
    let recall = case.found as f64 / case.wanted.max(1) as f64;
    prop_assert!(
        recall >= 0.99,
        "recall@{} at ef {} is {:.4} over {} checks ({} of {}), dim {}",
        K,
        EF,
        recall,
        case.checks,
        case.found,
        case.wanted,
        dim
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    #[test]
    fn graph_walk_matches_brute_force_through_inserts_deletes_reinserts_and_reopens(
        seed in any::<u64>(),
        dim in 4usize..=32,
        first in 50usize..400,
        ops in proptest::collection::vec(op(), 1..8),
    ) {
        run(seed, dim, first, &ops)?;
    }
}

/// The same checks over one fixed, longer sequence (about 600 items, every kind of step), so a
/// regression shows up with a readable history even before proptest shrinks anything.
#[test]
fn a_fixed_sequence_of_every_step() {
    let ops = [
        Op::Insert(150),
        Op::Delete(20),
        Op::Reinsert(30),
        Op::Checkpoint,
        Op::Reopen,
        Op::Insert(100),
        Op::Delete(30),
        Op::Reopen,
        Op::Reinsert(25),
        Op::Insert(50),
    ];
    run(7, 24, 300, &ops).unwrap();
}
