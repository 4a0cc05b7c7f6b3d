//! Checkpoint loading: a snapshot's `open_clip_pytorch_model.bin` (a `torch.save` zip of a state
//! dict, read by [`super::torch_zip`]; `module.` prefixes of DataParallel/DDP saves dropped) or
//! `*.safetensors`, with every weight checked against the shape the config implies and
//! leftovers reported, so a wrong checkpoint fails by name instead of computing nonsense.

use crate::error::Error;
use crate::model::torch_zip;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// State-dict entries that carry no weights the model needs.
const IGNORED_KEYS: [&str; 2] = ["attn_mask", "logit_bias"];

/// A state dict being consumed by a model constructor.
pub struct Weights {
    dir: PathBuf,
    tensors: HashMap<String, Tensor>,
    used: BTreeSet<String>,
    device: Device,
    kind: Kind,
    /// Training: every weight handed out requires grad and is recorded here.
    trainable: bool,
    params: Vec<(String, Tensor)>,
    /// Random initialisation: missing weights are created (see [`init_tensor`]).
    random: bool,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights").field("dir", &self.dir).field("tensors", &self.tensors.len()).finish()
    }
}

/// The checkpoint file of a snapshot directory: safetensors preferred, else the torch zip.
pub fn checkpoint_file(dir: &Path) -> Result<PathBuf, Error> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::Model { dir: dir.to_owned(), reason: format!("cannot list directory: {e}") })?;
    let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    if let Some(p) = names.iter().find(|p| p.extension().is_some_and(|e| e == "safetensors")) {
        return Ok(p.clone());
    }
    let bin = dir.join("open_clip_pytorch_model.bin");
    if bin.exists() {
        return Ok(bin);
    }
    Err(Error::Model { dir: dir.to_owned(), reason: "no open_clip_pytorch_model.bin or *.safetensors in the directory".into() })
}

impl Weights {
    /// Reads every tensor of the snapshot's checkpoint, to be moved to `device` as `kind`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self, Error> {
        let file = checkpoint_file(dir)?;
        let list = if file.extension().is_some_and(|e| e == "safetensors") {
            Tensor::read_safetensors(&file).map_err(|e| Error::Model {
                dir: dir.to_owned(),
                reason: format!("cannot read {}: {e} (expected safetensors, or a state dict saved with torch.save)", file.display()),
            })?
        } else {
            torch_zip::read_state_dict(&file)?
        };
        let tensors = list.into_iter().map(|(k, t)| (k.strip_prefix("module.").map(str::to_owned).unwrap_or(k), t)).collect();
        Ok(Weights {
            dir: dir.to_owned(),
            tensors,
            used: BTreeSet::new(),
            device,
            kind,
            trainable: false,
            params: Vec::new(),
            random: false,
        })
    }

    /// Freshly initialised weights for any shape asked (training from scratch; `tch::manual_seed`
    /// decides the draws).
    pub fn random(dir: &Path, device: Device) -> Self {
        let mut w = Weights::from_tensors(dir, HashMap::new(), device, Kind::Float);
        w.random = true;
        w
    }

    /// Hands out weights that require grad and records them (see [`Weights::params`]).
    pub fn trainable(mut self) -> Self {
        self.trainable = true;
        self
    }

    /// The recorded trainable weights, by checkpoint key.
    pub fn params(&self) -> Vec<(String, Tensor)> {
        self.params.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect()
    }

    /// From tensors already in memory (tests, training).
    pub fn from_tensors(dir: &Path, tensors: HashMap<String, Tensor>, device: Device, kind: Kind) -> Self {
        Weights { dir: dir.to_owned(), tensors, used: BTreeSet::new(), device, kind, trainable: false, params: Vec::new(), random: false }
    }

    /// Takes weight `key`, which must have `shape`. A checkpoint may store 1×1 convolution
    /// weights (`[o, i, 1, 1]`) where a linear layer (`[o, i]`) is expected: same numbers.
    pub fn get(&mut self, key: &str, shape: &[i64]) -> Result<Tensor, Error> {
        if self.random && !self.tensors.contains_key(key) {
            self.tensors.insert(key.to_owned(), init_tensor(key, shape));
        }
        let t = self.tensors.get(key).ok_or_else(|| Error::MissingWeight {
            dir: self.dir.clone(),
            key: key.to_owned(),
            expected: shape.to_vec(),
        })?;
        let found = t.size();
        let t = if found.as_slice() == shape {
            t.shallow_clone()
        } else if found.len() == 4 && shape.len() == 2 && found[..2] == shape[..] && found[2] == 1 && found[3] == 1 {
            t.reshape(shape)
        } else {
            return Err(Error::WeightShape { dir: self.dir.clone(), key: key.to_owned(), expected: shape.to_vec(), found });
        };
        self.used.insert(key.to_owned());
        let t = t.to_device(self.device).to_kind(self.kind).detach();
        if self.trainable {
            let t = t.set_requires_grad(true);
            self.params.push((key.to_owned(), t.shallow_clone()));
            return Ok(t);
        }
        Ok(t)
    }

    /// Fails when the checkpoint holds weights that nothing took.
    pub fn finish(self) -> Result<(), Error> {
        let mut unused: Vec<String> =
            self.tensors.keys().filter(|k| !self.used.contains(*k) && !IGNORED_KEYS.contains(&k.as_str())).cloned().collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        unused.truncate(8);
        Err(Error::UnexpectedWeights { dir: self.dir, keys: unused })
    }
}

/// A fresh weight for `key` (f32, CPU), following open_clip's and timm's initialisation:
/// biases 0, norm weights 1, layer scale `gamma` 0.1 (timm uses 1e-6; a larger start trains a
/// small model faster), `logit_scale` ln(1/0.07), embeddings N(0, 0.02) (positions 0.01),
/// attention and MLP input weights N(0, width^-½), their output weights N(0, width^-½/2),
/// projections N(0, in^-½), convolutions and other weights N(0, 0.02).
pub fn init_tensor(key: &str, shape: &[i64]) -> Tensor {
    let opts = (Kind::Float, Device::Cpu);
    let normal = |std: f64| Tensor::randn(shape, opts) * std;
    let last = |k: &str| key.ends_with(k);
    let width = *shape.last().unwrap_or(&1) as f64;
    if key == "logit_scale" {
        return Tensor::full(shape, (1.0f64 / 0.07).ln(), opts);
    }
    if last(".bias") || last("in_proj_bias") {
        return Tensor::zeros(shape, opts);
    }
    if last("gamma") {
        return Tensor::full(shape, 0.1, opts);
    }
    if shape.len() == 1 {
        return Tensor::ones(shape, opts);
    }
    if last("positional_embedding") {
        return normal(0.01);
    }
    if last("token_embedding.weight") {
        return normal(0.02);
    }
    if last("in_proj_weight") || last("c_fc.weight") {
        return normal(width.powf(-0.5));
    }
    if last("out_proj.weight") || last("c_proj.weight") {
        return normal(width.powf(-0.5) / 2.0);
    }
    if last("text_projection") {
        return normal((shape[0] as f64).powf(-0.5));
    }
    if last("proj.weight") {
        return normal(width.powf(-0.5));
    }
    normal(0.02)
}
