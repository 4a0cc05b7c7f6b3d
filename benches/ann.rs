//! Index search latency through `echovault-index` (RocksDB + its HNSW graph): graph walk at several
//! breadths, exact search, a filtered search, f32 and f16 storage, and opening an index from
//! its graph snapshot vs rebuilding it. 20,000 clustered 64-d unit vectors, seed 1.
//! Peers (hnswlib, faiss) and recall curves on real data: `tools/bench-ann`.
//!
//! Run: `cargo test --workspace --bench ann -- --bench` (the test build's profile; for absolute
//! numbers use `tools/bench-ann`, which builds in release).

#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use echovault_index::{Index, IndexOptions, ItemRecord, Kind, Query, SpaceId, VectorEncoding};
use rand::{rngs::StdRng, Rng, SeedableRng};

const N: usize = 20_000;
const D: usize = 64;

fn unit(rng: &mut StdRng, c: Option<&[f32]>) -> Vec<f32> {
    let v: Vec<f32> = (0..D).map(|i| rng.random_range(-1.0f32..1.0) * 0.3 + c.map_or(0.0, |c| c[i])).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn build(dir: &std::path::Path, encoding: VectorEncoding) -> (Index, SpaceId, Vec<Vec<f32>>) {
    let index = Index::open(dir, IndexOptions { encoding: Some(encoding), ..IndexOptions::default() }).unwrap();
    let space = index.ensure_space("bench", D).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let centres: Vec<Vec<f32>> = (0..100).map(|_| unit(&mut rng, None)).collect();
    let mut b = index.batch();
    for i in 0..N {
        let id = format!("v{i}");
        let mut r = ItemRecord::new(id.as_str(), Kind::Video, "");
        r.patient = Some(format!("p{}", i % 100));
        b.put_item(r);
        b.put_vector(space, id.as_str(), Kind::Video, unit(&mut rng, Some(&centres[i % 100])));
    }
    index.commit(b).unwrap();
    index.checkpoint().unwrap();
    let queries = (0..64).map(|i| unit(&mut rng, Some(&centres[i % 100]))).collect();
    (index, space, queries)
}

fn search(c: &mut Criterion) {
    for encoding in [VectorEncoding::F32, VectorEncoding::F16] {
        let dir = tempfile::tempdir().unwrap();
        let (index, space, queries) = build(dir.path(), encoding);
        let mut group = c.benchmark_group(format!("search_{encoding:?}").to_lowercase());
        let mut qi = 0usize;
        let mut next = || {
            qi = (qi + 1) % queries.len();
            queries[qi].clone()
        };
        for ef in [16usize, 64, 256] {
            group.bench_with_input(BenchmarkId::new("graph_ef", ef), &ef, |b, &ef| {
                b.iter(|| {
                    let mut q = Query::new(space, Kind::Video, next(), 10);
                    q.ef = Some(ef);
                    index.search_ids(&q).unwrap()
                })
            });
        }
        group.bench_function("exact", |b| {
            b.iter(|| {
                let mut q = Query::new(space, Kind::Video, next(), 10);
                q.exact = true;
                index.search_ids(&q).unwrap()
            })
        });
        group.bench_function("filtered_one_patient", |b| {
            b.iter(|| {
                let mut q = Query::new(space, Kind::Video, next(), 10);
                q.filter.patient = Some("p7".into());
                index.search(&q).unwrap()
            })
        });
        group.finish();
    }
}

fn open(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    drop(build(dir.path(), VectorEncoding::F32));
    let mut group = c.benchmark_group("open_20k");
    group.sample_size(10);
    group.bench_function("snapshot", |b| b.iter(|| Index::open(dir.path(), IndexOptions::default()).unwrap()));
    group.bench_function("rebuild", |b| {
        b.iter(|| Index::open(dir.path(), IndexOptions { ignore_snapshots: true, ..IndexOptions::default() }).unwrap())
    });
    group.finish();
}

criterion_group!(benches, search, open);
criterion_main!(benches);
