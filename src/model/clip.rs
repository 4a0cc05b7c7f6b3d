//! Both towers, loaded from an HF-style snapshot directory, with task-level methods that return
//! L2-normalised embeddings (open_clip `CLIP.encode_image` / `encode_text` followed by
//! `F.normalize`). Inference only: every forward runs under `no_grad`.
//!
//! A `Clip` is shared between threads (`echovault serve` answers queries while an ingest job
//! embeds): LibTorch tensors are `Send` but not `Sync` in `tch`, so each tower sits behind its
//! own mutex. A text query then waits for another text forward pass, never for an image batch.

use crate::error::Error;
use crate::model::config::ClipConfig;
use crate::model::convnext::VisionTower;
use crate::model::text::TextTower;
use crate::model::weights::Weights;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use tch::{Device, Kind, Tensor};

/// Numeric precision of the towers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 everywhere (the reference precision; the only choice on CPU).
    #[default]
    F32,
    /// f16 weights and activations (CUDA only).
    F16,
    /// bf16 weights and activations (CUDA only).
    Bf16,
}

impl Precision {
    fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::F16 => Kind::Half,
            Precision::Bf16 => Kind::BFloat16,
        }
    }
}

/// A loaded EchoCLIP-style model.
#[derive(Debug)]
pub struct Clip {
    /// Its config.
    pub config: ClipConfig,
    /// Snapshot directory it was loaded from.
    pub dir: PathBuf,
    visual: Mutex<VisionTower>,
    text: Mutex<TextTower>,
    image_size: i64,
    context_length: i64,
    /// `logit_scale` (log of the temperature inverse), as trained.
    pub logit_scale: f64,
    device: Device,
    kind: Kind,
}

impl Clip {
    /// Loads `open_clip_config.json` and the checkpoint of snapshot `dir` onto `device`.
    pub fn load(dir: &Path, device: Device, precision: Precision) -> Result<Self, Error> {
        if device == Device::Cpu && precision != Precision::F32 {
            return Err(Error::Model { dir: dir.to_owned(), reason: "f16/bf16 inference is only offered on CUDA; use f32 on CPU".into() });
        }
        let config = ClipConfig::from_dir(dir)?;
        let _guard = tch::no_grad_guard();
        let mut w = Weights::load(dir, device, precision.kind())?;
        let visual = VisionTower::new(&mut w, &config)?;
        let text = TextTower::new(&mut w, &config)?;
        let logit_scale = w.get("logit_scale", &[])?.double_value(&[]);
        w.finish()?;
        Ok(Clip::assemble(dir, config, visual, text, logit_scale, device, precision.kind()))
    }

    /// Builds both towers from `w` (any source: a checkpoint, random initialisation, a training
    /// run), for training or inference on `device` in f32.
    pub fn from_weights(dir: &Path, config: ClipConfig, w: &mut Weights, device: Device) -> Result<Self, Error> {
        let visual = VisionTower::new(w, &config)?;
        let text = TextTower::new(w, &config)?;
        let logit_scale = w.get("logit_scale", &[])?.double_value(&[]);
        Ok(Clip::assemble(dir, config, visual, text, logit_scale, device, Kind::Float))
    }

    fn assemble(
        dir: &Path,
        config: ClipConfig,
        visual: VisionTower,
        text: TextTower,
        logit_scale: f64,
        device: Device,
        kind: Kind,
    ) -> Clip {
        let (image_size, context_length) = (visual.image_size, text.context_length);
        Clip {
            config,
            dir: dir.to_owned(),
            visual: Mutex::new(visual),
            text: Mutex::new(text),
            image_size,
            context_length,
            logit_scale,
            device,
            kind,
        }
    }

    /// Unnormalised image and text features with autograd on (training): `images` `[N, 3, S, S]`
    /// on the model's device, `ids` `[N, context_length]` int64.
    pub fn forward_train(&self, images: &Tensor, ids: &Tensor) -> Result<(Tensor, Tensor), Error> {
        Ok((lock(&self.visual).forward(images)?, lock(&self.text).forward(ids)?))
    }

    /// Device the weights live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.config.embed_dim as usize
    }

    /// Image side the vision tower expects.
    pub fn image_size(&self) -> i64 {
        self.image_size
    }

    /// Tokens per text.
    pub fn context_length(&self) -> i64 {
        self.context_length
    }

    /// `[N, 3, S, S]` preprocessed f32 images (any device) → `[N, D]` unit vectors, f32 on CPU.
    /// A LibTorch failure (out of memory on the device or the host) is [`Error::Torch`], never a
    /// panic: the caller may retry with fewer images.
    pub fn encode_images(&self, images: &Tensor) -> Result<Tensor, Error> {
        let s = self.image_size();
        let size = images.size();
        if size.len() != 4 || size[1] != 3 || size[2] != s || size[3] != s {
            return Err(Error::Invalid(format!("images must be [N, 3, {s}, {s}], got {size:?}")));
        }
        let _guard = tch::no_grad_guard();
        // The ops are fallible; a panic from tch itself (one of its ops that still unwraps) is
        // caught too and becomes the same error, so that a caller can retry or fail one video.
        let run = || -> Result<Tensor, Error> {
            let x = images.f_to_device(self.device)?.f_to_kind(self.kind)?;
            let y = lock(&self.visual).forward(&x)?.f_to_kind(Kind::Float)?;
            Ok(f_normalise(&y)?.f_to_device(Device::Cpu)?)
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a LibTorch call panicked".into());
            Err(Error::Torch(tch::TchError::Torch(message)))
        })
    }

    /// Token ids (`N` rows of `context_length`) → `[N, D]` unit vectors, f32 on CPU.
    pub fn encode_texts(&self, ids: &[Vec<i64>]) -> Result<Tensor, Error> {
        let l = self.context_length() as usize;
        if let Some(bad) = ids.iter().find(|r| r.len() != l) {
            return Err(Error::Invalid(format!("token rows must have {l} ids, got {}", bad.len())));
        }
        let vocab = self.config.text.vocab_size;
        if ids.iter().flatten().any(|&t| t < 0 || t >= vocab) {
            return Err(Error::Invalid(format!("token id outside the vocabulary (0..{vocab})")));
        }
        let _guard = tch::no_grad_guard();
        let flat: Vec<i64> = ids.iter().flatten().copied().collect();
        let t = Tensor::f_from_slice(&flat)?.f_reshape([ids.len() as i64, l as i64])?.f_to_device(self.device)?;
        let y = lock(&self.text).forward(&t)?.f_to_kind(Kind::Float)?;
        Ok(f_normalise(&y)?.f_to_device(Device::Cpu)?)
    }
}

/// A tower's lock. A panic during a forward pass leaves the weights as they were (inference
/// never writes them), so a poisoned lock is taken as it is.
fn lock<T>(tower: &Mutex<T>) -> MutexGuard<'_, T> {
    tower.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Row-wise L2 normalisation (as `F.normalize`, eps 1e-12).
pub fn normalise(x: &Tensor) -> Tensor {
    let n = x.norm_scalaropt_dim(2.0, [-1i64].as_slice(), true).clamp_min(1e-12);
    x / n
}

/// [`normalise`] with LibTorch's fallible ops (the inference path). The norm's order is a
/// `tch::Scalar`, whose failure tch 0.24 turns into a panic (see `media::preprocess::scalar`):
/// `encode_images` catches it; on `[N, D]` rows it is not where memory runs out.
fn f_normalise(x: &Tensor) -> Result<Tensor, tch::TchError> {
    let n = x.f_norm_scalaropt_dim(2.0, [-1i64].as_slice(), true)?.f_clamp_min_tensor(&crate::media::preprocess::scalar(1e-12))?;
    x.f_div(&n)
}

/// A `[N, D]` f32 tensor as rows.
pub fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>, Error> {
    let t = t.f_to_kind(Kind::Float)?.f_contiguous()?;
    let (n, d) = t.size2()?;
    let flat: Vec<f32> = Vec::<f32>::try_from(t.f_reshape([-1])?)?;
    Ok((0..n as usize).map(|i| flat[i * d as usize..(i + 1) * d as usize].to_vec()).collect())
}
