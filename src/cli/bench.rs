//! `echovault bench-embed`: image-tower throughput on this machine's device and precision, with
//! random inputs (CUDA synchronised before each clock stop). For sizing hardware and for
//! `tools/gpu-check`.

use super::{DeviceOpts, Global, Groups, ModelOpts};
use clap::Args;
use echovault::model::{Clip, Precision};
use serde_json::json;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Timed forward passes (after two warm-up passes).
    #[arg(long, default_value_t = 10, value_parser = super::positive)]
    iters: usize,
    /// f32, f16 or bf16 (the last two on CUDA only).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    precision: String,
    /// Frames per forward pass [default: 32].
    #[arg(long, value_parser = super::positive)]
    batch: Option<usize>,
    #[command(flatten)]
    pub model: ModelOpts,
    #[command(flatten)]
    pub device: DeviceOpts,
}

impl BenchArgs {
    pub fn groups(&self) -> Groups<'_> {
        Groups { model: Some(&self.model), device: Some(&self.device), ..Groups::default() }
    }
}

pub fn parse_precision(s: &str) -> anyhow::Result<Precision> {
    Ok(match s {
        "f32" => Precision::F32,
        "f16" => Precision::F16,
        "bf16" => Precision::Bf16,
        other => anyhow::bail!("--precision '{other}': use f32, f16 or bf16"),
    })
}

fn sync(d: Device) {
    if let Device::Cuda(i) = d {
        tch::Cuda::synchronize(i as i64);
    }
}

pub fn run(g: &Global, a: &BenchArgs) -> anyhow::Result<i32> {
    // Frames per forward pass: --batch (also accepted before the subcommand).
    let batch = a.batch.unwrap_or(g.batch) as i64;
    anyhow::ensure!(batch > 0 && a.iters > 0, "--batch and --iters must be positive");
    let cfg = g.engine_config()?;
    let model = Clip::load(&cfg.model_dir, cfg.device, parse_precision(&a.precision)?)?;
    let s = model.image_size();
    let x = Tensor::randn([batch, 3, s, s], (Kind::Float, cfg.device));
    for _ in 0..2 {
        let _ = model.encode_images(&x)?;
    }
    sync(cfg.device);
    let mut times = Vec::with_capacity(a.iters);
    let mut dim = 0;
    for _ in 0..a.iters {
        let t = Instant::now();
        let y = model.encode_images(&x)?;
        sync(cfg.device);
        times.push(t.elapsed().as_secs_f64());
        // Every pass embeds every frame: one row per frame.
        anyhow::ensure!(y.size().first() == Some(&batch), "a pass over {batch} frames gave {:?}", y.size());
        dim = y.size().get(1).copied().unwrap_or(0);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let out = json!({
        "model": cfg.model_dir.display().to_string(),
        "device": format!("{:?}", cfg.device),
        "precision": a.precision,
        "batch": batch,
        "iters": a.iters,
        // Frames embedded in the timed passes, and the embedding dimension.
        "frames": batch as usize * a.iters,
        "dim": dim,
        "median_s": median,
        "frames_per_s": batch as f64 / median,
    });
    if g.json {
        println!("{out}");
    } else {
        println!(
            "{:.1} frames/s (median {:.4} s per batch of {}, {} on {:?})",
            batch as f64 / median,
            median,
            batch,
            a.precision,
            cfg.device
        );
    }
    Ok(0)
}
