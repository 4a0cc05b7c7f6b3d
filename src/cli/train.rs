//! `echovault train --pairs MANIFEST --init (DIR|random) --out DIR`: CLIP contrastive training.

use super::{resolve_model, DeviceOpts, Global, Groups};
use anyhow::Context;
use clap::Args;
use echovault::engine::parse_device;
use echovault::model::train::{train, Init, TrainOptions};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Pairs manifest (JSONL): a video path ("file" or "video", relative to the manifest) and
    /// its report ("report" or "text") per line; `echovault phantom`'s manifest.jsonl is one.
    #[arg(long)]
    pairs: PathBuf,
    /// Starting weights: a snapshot directory or hf:OWNER/NAME[@REV] (fine-tuning), or `random`
    /// (then --like names the directory whose open_clip_config.json and tokenizer.json define
    /// the model).
    #[arg(long)]
    init: String,
    /// With --init random: the snapshot-like directory (or hf:OWNER/NAME[@REV]) giving the
    /// architecture and tokenizer.
    #[arg(long)]
    like: Option<PathBuf>,
    /// Output snapshot directory (open_clip_config.json, open_clip_model.safetensors,
    /// tokenizer.json); rewritten at each checkpoint.
    #[arg(long)]
    out: PathBuf,
    /// Optimiser steps.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Videos per step (the contrastive batch).
    #[arg(long = "train-batch", default_value_t = 64)]
    train_batch: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Linear warm-up steps before the cosine decay.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    /// Frames kept per video (evenly spaced); one is drawn at random per step.
    #[arg(long = "num-frames", alias = "frames-per-video", default_value_t = 16, value_parser = super::positive)]
    frames_per_video: usize,
    /// Write the snapshot every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// Seed (initialisation, batches, frame draws).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save weights as f16.
    #[arg(long)]
    f16: bool,
    /// EchoCLIP-R template vocabulary for a --init/--like directory that has none.
    #[arg(long, value_name = "FILE")]
    template_vocab: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceOpts,
}

impl TrainArgs {
    pub fn groups(&self) -> Groups<'_> {
        Groups { device: Some(&self.device), ..Groups::default() }
    }
}

pub fn run(g: &Global, a: &TrainArgs) -> anyhow::Result<i32> {
    let init = if a.init == "random" {
        Init::Random(resolve_model(a.like.as_deref().context("--init random needs --like DIR (architecture and tokenizer)")?)?)
    } else {
        anyhow::ensure!(a.like.is_none(), "--like only goes with --init random");
        Init::Snapshot(resolve_model(Path::new(&a.init))?)
    };
    anyhow::ensure!(a.steps > 0, "--steps must be at least 1");
    let opts = TrainOptions {
        pairs: a.pairs.clone(),
        init,
        out: a.out.clone(),
        steps: a.steps,
        batch: a.train_batch,
        lr: a.lr,
        warmup: a.warmup,
        weight_decay: a.weight_decay,
        frames_per_video: a.frames_per_video,
        checkpoint_every: a.checkpoint_every,
        seed: a.seed,
        device: parse_device(&g.device)?,
        save_f16: a.f16,
        template_vocab: a.template_vocab.clone().or_else(|| g.template_vocab.as_ref().map(|v| v.file.clone())),
    };
    #[allow(clippy::print_stderr)]
    let s = train(&opts, |line| eprintln!("{line}"))?;
    if g.json {
        println!("{}", serde_json::to_value(&s)?);
    } else {
        println!(
            "trained {} parameters on {} pairs for {} steps in {:.0} s (loss {:.3} → {:.3}); snapshot in {}",
            s.parameters, s.pairs, s.steps, s.seconds, s.loss_first, s.loss_last, s.out
        );
    }
    Ok(0)
}
