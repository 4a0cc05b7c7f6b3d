//! Image-embedding throughput of the tch EchoCLIP image tower (full `convnext_base` config,
//! random weights from `tools/parity/make_checkpoint.py`), at batch sizes 1, 8 and 32, f32 on
//! CPU. The PyTorch open_clip peer is timed by `tools/bench-embed`, which runs this bench and the
//! peer in the same run and writes the ratio. Fixture: target/parity-cache/convnext_base-2.

#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use echovault::model::{Clip, Precision};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn fixture() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/parity-cache/convnext_base-2");
    if !dir.join("open_clip_pytorch_model.bin").exists() {
        let ok = std::process::Command::new(root.join(".venv/bin/python"))
            .arg(root.join("tools/parity/make_checkpoint.py"))
            .args(["convnext_base", "2", dir.to_str().unwrap_or_default()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "could not build the convnext_base fixture (run tools/setup)");
    }
    dir
}

fn image_embedding(c: &mut Criterion) {
    let model = Clip::load(&fixture(), Device::Cpu, Precision::F32).expect("load model");
    let mut group = c.benchmark_group("embed_images_convnext_base_cpu_f32");
    group.sample_size(10);
    for batch in [1i64, 8, 32] {
        let x = Tensor::randn([batch, 3, 224, 224], (Kind::Float, Device::Cpu));
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &x, |b, x| b.iter(|| model.encode_images(x).expect("forward")));
    }
    group.finish();
}

criterion_group!(benches, image_embedding);
criterion_main!(benches);
