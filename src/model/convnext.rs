//! The image tower: timm ConvNeXt (Liu et al., "A ConvNet for the 2020s", 2022; reference:
//! timm `convnext.py`) under open_clip's `TimmModel` head. Struct and field names follow the
//! checkpoint keys `visual.trunk.*` and `visual.head.proj`.

use crate::error::Error;
use crate::model::config::{ClipConfig, VisionConfig};
use crate::model::weights::Weights;
use tch::{TchError, Tensor};

/// timm ConvNeXt LayerNorm epsilon.
const LN_EPS: f64 = 1e-6;

/// A LayerNorm over the last dimension.
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `{prefix}.weight` and `{prefix}.bias` of size `dim`.
    pub fn new(w: &mut Weights, prefix: &str, dim: i64, eps: f64) -> Result<Self, Error> {
        Ok(Self { weight: w.get(&format!("{prefix}.weight"), &[dim])?, bias: w.get(&format!("{prefix}.bias"), &[dim])?, eps })
    }

    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let n = *self.weight.size().last().unwrap_or(&1);
        x.f_layer_norm([n], Some(&self.weight), Some(&self.bias), self.eps, false)
    }

    /// timm `LayerNorm2d`: normalises an NCHW tensor over C.
    pub fn forward_nchw(&self, x: &Tensor) -> Result<Tensor, TchError> {
        self.forward(&x.f_permute([0, 2, 3, 1])?)?.f_permute([0, 3, 1, 2])
    }
}

/// A 2-D convolution with bias.
#[derive(Debug)]
struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
    padding: i64,
    groups: i64,
}

impl Conv {
    #[allow(clippy::too_many_arguments)]
    fn new(w: &mut Weights, prefix: &str, cin: i64, cout: i64, k: i64, stride: i64, padding: i64, groups: i64) -> Result<Self, Error> {
        Ok(Self {
            weight: w.get(&format!("{prefix}.weight"), &[cout, cin / groups, k, k])?,
            bias: w.get(&format!("{prefix}.bias"), &[cout])?,
            stride,
            padding,
            groups,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        x.f_conv2d(&self.weight, Some(&self.bias), [self.stride], [self.padding], [1], self.groups)
    }
}

/// A linear layer (optionally without bias).
#[derive(Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `{prefix}.weight` `[out, in]` and, when `bias`, `{prefix}.bias`.
    pub fn new(w: &mut Weights, prefix: &str, cin: i64, cout: i64, bias: bool) -> Result<Self, Error> {
        let weight = w.get(&format!("{prefix}.weight"), &[cout, cin])?;
        let bias = if bias { Some(w.get(&format!("{prefix}.bias"), &[cout])?) } else { None };
        Ok(Self { weight, bias })
    }

    /// `x W^T + b`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        x.f_linear(&self.weight, self.bias.as_ref())
    }
}

/// timm `ConvNeXtBlock`: depthwise 7×7 → LayerNorm → MLP ×4 (GELU) → layer scale → residual.
#[derive(Debug)]
struct Block {
    conv_dw: Conv,
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    gamma: Tensor,
}

impl Block {
    fn new(w: &mut Weights, p: &str, dim: i64) -> Result<Self, Error> {
        Ok(Block {
            conv_dw: Conv::new(w, &format!("{p}.conv_dw"), dim, dim, 7, 1, 3, dim)?,
            norm: LayerNorm::new(w, &format!("{p}.norm"), dim, LN_EPS)?,
            fc1: Linear::new(w, &format!("{p}.mlp.fc1"), dim, 4 * dim, true)?,
            fc2: Linear::new(w, &format!("{p}.mlp.fc2"), 4 * dim, dim, true)?,
            gamma: w.get(&format!("{p}.gamma"), &[dim])?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let y = self.conv_dw.forward(x)?.f_permute([0, 2, 3, 1])?;
        let y = self.fc2.forward(&self.fc1.forward(&self.norm.forward(&y)?)?.f_gelu("none")?)?;
        y.f_permute([0, 3, 1, 2])?.f_mul(&self.gamma.f_reshape([1, -1, 1, 1])?)?.f_add(x)
    }
}

/// A stage: optional downsample (LayerNorm2d + 2×2 stride-2 conv), then blocks.
#[derive(Debug)]
struct Stage {
    downsample: Option<(LayerNorm, Conv)>,
    blocks: Vec<Block>,
}

/// The ConvNeXt image tower with open_clip's projection head.
#[derive(Debug)]
pub struct VisionTower {
    stem: (Conv, LayerNorm),
    stages: Vec<Stage>,
    head_norm: LayerNorm,
    proj: Linear,
    /// Input size.
    pub image_size: i64,
}

impl VisionTower {
    /// Loads the `visual.*` weights for `cfg`.
    pub fn new(w: &mut Weights, cfg: &ClipConfig) -> Result<Self, Error> {
        let VisionConfig { variant, image_size, proj_bias, .. } = &cfg.vision;
        let dims = variant.dims;
        let t = "visual.trunk";
        let stem =
            (Conv::new(w, &format!("{t}.stem.0"), 3, dims[0], 4, 4, 0, 1)?, LayerNorm::new(w, &format!("{t}.stem.1"), dims[0], LN_EPS)?);
        let mut stages = Vec::with_capacity(4);
        for (i, (&depth, &dim)) in variant.depths.iter().zip(dims.iter()).enumerate() {
            let p = format!("{t}.stages.{i}");
            let downsample = if i == 0 {
                None
            } else {
                let prev = dims[i - 1];
                Some((
                    LayerNorm::new(w, &format!("{p}.downsample.0"), prev, LN_EPS)?,
                    Conv::new(w, &format!("{p}.downsample.1"), prev, dim, 2, 2, 0, 1)?,
                ))
            };
            let blocks = (0..depth).map(|j| Block::new(w, &format!("{p}.blocks.{j}"), dim)).collect::<Result<_, _>>()?;
            stages.push(Stage { downsample, blocks });
        }
        Ok(VisionTower {
            stem,
            stages,
            head_norm: LayerNorm::new(w, &format!("{t}.head.norm"), dims[3], LN_EPS)?,
            proj: Linear::new(w, "visual.head.proj", dims[3], cfg.embed_dim, *proj_bias)?,
            image_size: *image_size,
        })
    }

    /// `[N, 3, S, S]` normalised images → `[N, embed_dim]` (not normalised). Every op is
    /// LibTorch's fallible form: an allocation that fails (CUDA out of memory, a CPU allocation
    /// refused) is an error to handle, not a panic.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let mut x = self.stem.1.forward_nchw(&self.stem.0.forward(x)?)?;
        for stage in &self.stages {
            if let Some((norm, conv)) = &stage.downsample {
                x = conv.forward(&norm.forward_nchw(&x)?)?;
            }
            for b in &stage.blocks {
                x = b.forward(&x)?;
            }
        }
        let pooled = x.f_mean_dim([2i64, 3].as_slice(), false, None)?;
        self.proj.forward(&self.head_norm.forward(&pooled)?)
    }
}
