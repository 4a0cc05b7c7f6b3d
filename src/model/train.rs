//! CLIP contrastive training in tch, as the EchoCLIP paper trained: one random frame per video
//! per step, paired with its report; symmetric cross-entropy over the batch's similarity matrix
//! scaled by the learned temperature (`logit_scale`, clamped to ln 100 as open_clip does);
//! AdamW (decoupled weight decay, none on gains, biases, embeddings' 1-D parameters and the
//! temperature), linear warm-up then cosine decay. Writes an HF-style snapshot directory
//! (`open_clip_config.json`, `open_clip_model.safetensors`, and the source's `tokenizer.json` or
//! `template_vocab.txt`) that every other command loads. A source directory holding a
//! `template_vocab.txt` trains an EchoCLIP-R-style model: reports tokenised with the template
//! tokenizer.

use crate::error::Error;
use crate::media::{read_frames, Frame, Preprocess};
use crate::model::clip::normalise;
use crate::model::weights::{checkpoint_file, Weights};
use crate::model::{Clip, ClipConfig};
use crate::tokenize::{TextTokenizer, TEMPLATE_VOCAB_FILE};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Where the starting weights come from.
#[derive(Clone, Debug)]
pub enum Init {
    /// A snapshot directory (fine-tuning).
    Snapshot(PathBuf),
    /// Random initialisation of the model described by this directory's
    /// `open_clip_config.json` (its `tokenizer.json` or `template_vocab.txt` is used too).
    Random(PathBuf),
}

/// Training settings.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Pairs: JSONL with a video path (`file` or `video`, relative to the manifest's folder) and
    /// its report (`report` or `text`) per line — `echovault phantom`'s `manifest.jsonl` is one.
    pub pairs: PathBuf,
    /// Starting weights.
    pub init: Init,
    /// Output snapshot directory.
    pub out: PathBuf,
    /// Optimiser steps.
    pub steps: usize,
    /// Videos per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Frames kept per video (evenly spaced; one is drawn per step).
    pub frames_per_video: usize,
    /// Save a snapshot every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Seed of initialisation, batching and frame draws.
    pub seed: u64,
    /// Device.
    pub device: Device,
    /// Store weights as f16 (smaller snapshot; loaders upcast).
    pub save_f16: bool,
    /// An EchoCLIP-R template vocabulary to train with (default: the source directory's
    /// `template_vocab.txt`, if any); the snapshot keeps a copy as its `template_vocab.txt`.
    pub template_vocab: Option<PathBuf>,
}

/// What training did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainSummary {
    /// Pairs used.
    pub pairs: usize,
    /// Steps run.
    pub steps: usize,
    /// Mean loss over the first and the last 10 % of the steps.
    pub loss_first: f64,
    /// See `loss_first`.
    pub loss_last: f64,
    /// Wall seconds.
    pub seconds: f64,
    /// Parameters trained.
    pub parameters: i64,
    /// The snapshot written.
    pub out: String,
}

/// One training example: preprocessed frames `[F, 3, S, S]` and token ids.
struct Example {
    frames: Tensor,
    ids: Vec<i64>,
}

/// Reads a pairs manifest: (video path, report).
pub fn read_pairs(path: &Path) -> Result<Vec<(PathBuf, String)>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::media(path, format!("line {}: {e}", i + 1)))?;
        let get = |keys: &[&str]| keys.iter().find_map(|k| v.get(*k).and_then(|x| x.as_str()).map(str::to_owned));
        let file = get(&["file", "video"]).ok_or_else(|| Error::media(path, format!("line {}: no \"file\" or \"video\"", i + 1)))?;
        let report = get(&["report", "text"]).ok_or_else(|| Error::media(path, format!("line {}: no \"report\" or \"text\"", i + 1)))?;
        out.push((base.join(file), report));
    }
    if out.is_empty() {
        return Err(Error::media(path, "no pairs"));
    }
    Ok(out)
}

fn model_error(dir: &Path, reason: impl Into<String>) -> Error {
    Error::Model { dir: dir.to_owned(), reason: reason.into() }
}

/// Trains and writes the snapshot. `log` receives progress lines.
pub fn train(opts: &TrainOptions, mut log: impl FnMut(&str)) -> Result<TrainSummary, Error> {
    let start = Instant::now();
    if opts.batch < 2 {
        return Err(Error::Invalid("contrastive training needs --batch ≥ 2".into()));
    }
    tch::manual_seed(opts.seed as i64);
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let (src, random) = match &opts.init {
        Init::Snapshot(d) => (d.clone(), false),
        Init::Random(d) => (d.clone(), true),
    };
    let config = ClipConfig::from_dir(&src)?;
    let mut w = if random { Weights::random(&src, opts.device) } else { Weights::load(&src, opts.device, Kind::Float)? }.trainable();
    let model = Clip::from_weights(&src, config.clone(), &mut w, opts.device)?;
    let params = w.params();
    if !random {
        w.finish()?;
    }
    let parameters: i64 = params.iter().map(|(_, t)| t.numel() as i64).sum();
    let tokenizer =
        TextTokenizer::for_model(&src, opts.template_vocab.as_deref(), config.text.context_length as usize, Some(config.text.vocab_size))?;
    let vocab = match &tokenizer {
        TextTokenizer::Template(t) => Some(t.path().to_owned()),
        TextTokenizer::Bpe(_) => None,
    };
    log(&format!("train: {} tokenizer", tokenizer.kind()));
    let pre = Preprocess { size: config.vision.image_size, mean: config.mean, std: config.std, order: Default::default() };

    let pairs = read_pairs(&opts.pairs)?;
    log(&format!("train: reading {} videos", pairs.len()));
    let mut data = Vec::with_capacity(pairs.len());
    for (i, (path, report)) in pairs.iter().enumerate() {
        let frames = read_frames(path, |_| true)?;
        let keep = spaced(&frames, opts.frames_per_video.max(1));
        let frames = pre.frames(&keep).map_err(|e| Error::media(path, e))?;
        data.push(Example { frames, ids: tokenizer.encode(report)? });
        if (i + 1) % 100 == 0 {
            log(&format!("train: read {}/{}", i + 1, pairs.len()));
        }
    }
    if data.len() < opts.batch {
        return Err(Error::Invalid(format!("{} pairs are fewer than one batch of {}", data.len(), opts.batch)));
    }

    let mut adam: Vec<(Tensor, Tensor, bool)> = params
        .iter()
        .map(|(k, t)| {
            let decay = t.dim() >= 2 && !k.contains("embedding") && k != "logit_scale";
            (t.zeros_like(), t.zeros_like(), decay)
        })
        .collect();
    let logit_scale = params.iter().find(|(k, _)| k == "logit_scale").map(|(_, t)| t.shallow_clone());
    let mut order: Vec<usize> = Vec::new();
    let mut losses = Vec::with_capacity(opts.steps);
    let (b1, b2, eps) = (0.9, 0.98, 1e-6);
    let labels = Tensor::arange(opts.batch as i64, (Kind::Int64, opts.device));
    for step in 0..opts.steps {
        if order.len() < opts.batch {
            let mut more: Vec<usize> = (0..data.len()).collect();
            more.shuffle(&mut rng);
            order.extend(more);
        }
        let picked: Vec<usize> = order.drain(..opts.batch).collect();
        let images: Vec<Tensor> = picked
            .iter()
            .map(|&i| {
                let f = data[i].frames.size()[0];
                data[i].frames.get(rng.random_range(0..f))
            })
            .collect();
        let images = Tensor::stack(&images, 0).to_device(opts.device);
        let ids: Vec<i64> = picked.iter().flat_map(|&i| data[i].ids.iter().copied()).collect();
        let ids = Tensor::from_slice(&ids).reshape([opts.batch as i64, -1]).to_device(opts.device);
        let (img, txt) = model.forward_train(&images, &ids)?;
        let scale = match &logit_scale {
            Some(s) => s.clamp_max((100f64).ln()).exp(),
            None => Tensor::from(model.logit_scale.exp()),
        };
        let logits = normalise(&img).matmul(&normalise(&txt).tr()) * scale;
        let loss = (logits.cross_entropy_for_logits(&labels) + logits.tr().cross_entropy_for_logits(&labels)) / 2.0;
        for (_, p) in &params {
            p.shallow_clone().zero_grad();
        }
        loss.backward();
        let lr = schedule(step, opts);
        let t = (step + 1) as i32;
        tch::no_grad(|| {
            for ((_, p), (m, v, decay)) in params.iter().zip(adam.iter_mut()) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                *m = &*m * b1 + &g * (1.0 - b1);
                *v = &*v * b2 + g.square() * (1.0 - b2);
                let mhat = &*m / (1.0 - b1.powi(t));
                let vhat = &*v / (1.0 - b2.powi(t));
                let mut update = mhat / (vhat.sqrt() + eps);
                if *decay {
                    update += p * opts.weight_decay;
                }
                let mut p = p.shallow_clone();
                let _ = p.f_sub_(&(update * lr));
            }
        });
        let l = loss.double_value(&[]);
        if !l.is_finite() {
            return Err(Error::Invalid(format!("training diverged at step {} (loss {l}); lower --lr", step + 1)));
        }
        losses.push(l);
        if (step + 1) % 25 == 0 || step + 1 == opts.steps {
            let recent = &losses[losses.len().saturating_sub(25)..];
            log(&format!(
                "train: step {}/{} loss {:.4} lr {:.2e} {:.1} steps/s",
                step + 1,
                opts.steps,
                recent.iter().sum::<f64>() / recent.len() as f64,
                lr,
                (step + 1) as f64 / start.elapsed().as_secs_f64()
            ));
        }
        if opts.checkpoint_every > 0 && (step + 1) % opts.checkpoint_every == 0 && step + 1 < opts.steps {
            save(&params, &src, vocab.as_deref(), &opts.out, opts.save_f16)?;
            log(&format!("train: checkpoint at step {} in {}", step + 1, opts.out.display()));
        }
    }
    save(&params, &src, vocab.as_deref(), &opts.out, opts.save_f16)?;
    let tenth = (losses.len() / 10).max(1);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
    Ok(TrainSummary {
        pairs: data.len(),
        steps: opts.steps,
        loss_first: mean(&losses[..tenth.min(losses.len())]),
        loss_last: mean(&losses[losses.len().saturating_sub(tenth)..]),
        seconds: start.elapsed().as_secs_f64(),
        parameters,
        out: opts.out.display().to_string(),
    })
}

/// Linear warm-up to `lr`, then cosine decay to 0 at the last step.
fn schedule(step: usize, o: &TrainOptions) -> f64 {
    if step < o.warmup {
        return o.lr * (step + 1) as f64 / o.warmup as f64;
    }
    let span = o.steps.saturating_sub(o.warmup).max(1) as f64;
    let done = (step - o.warmup) as f64 / span;
    o.lr * 0.5 * (1.0 + (std::f64::consts::PI * done).cos())
}

/// `n` frames evenly spaced over the cine (all of them when it has fewer).
fn spaced(frames: &[Frame], n: usize) -> Vec<Frame> {
    if frames.len() <= n {
        return frames.to_vec();
    }
    (0..n).map(|i| frames[i * frames.len() / n].clone()).collect()
}

/// Writes the snapshot atomically enough: weights to a temporary name, then renamed.
fn save(params: &[(String, Tensor)], src: &Path, vocab: Option<&Path>, out: &Path, f16: bool) -> Result<(), Error> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // The config is required; the tokenizer the model was trained with goes along: the template
    // vocabulary, else the source's tokenizer.json if it has one (else the built-in BPE).
    let tokenizer = match vocab {
        Some(v) => (v.to_owned(), TEMPLATE_VOCAB_FILE),
        None => (src.join("tokenizer.json"), "tokenizer.json"),
    };
    for (from, name) in [(src.join("open_clip_config.json"), "open_clip_config.json"), tokenizer] {
        let to = out.join(name);
        if from != to && (name == "open_clip_config.json" || from.is_file()) {
            std::fs::copy(&from, &to).map_err(|e| Error::io(&from, e))?;
        }
    }
    let kind = if f16 { Kind::Half } else { Kind::Float };
    let tensors: Vec<(String, Tensor)> =
        params.iter().map(|(k, t)| (k.clone(), t.detach().to_device(Device::Cpu).to_kind(kind).contiguous())).collect();
    let tmp = out.join("open_clip_model.safetensors.tmp");
    Tensor::write_safetensors(&tensors, &tmp).map_err(|e| model_error(out, format!("cannot write weights: {e}")))?;
    // A snapshot holds one checkpoint: drop an older torch zip so loaders cannot pick it.
    if let Ok(old) = checkpoint_file(out) {
        if old.extension().is_some_and(|e| e == "bin") {
            let _ = std::fs::remove_file(old);
        }
    }
    std::fs::rename(&tmp, out.join("open_clip_model.safetensors")).map_err(|e| Error::io(out, e))
}
