//! The text tower: CLIP's causal transformer (Radford et al. 2021; reference: open_clip
//! `transformer.py` `ResidualAttentionBlock` and `CLIP.encode_text`). Pre-LN, exact GELU (or
//! QuickGELU when the config says so), pooled at the position of the largest token id (the end
//! token), then `text_projection`. Keys: `token_embedding`, `positional_embedding`,
//! `transformer.resblocks.{k}.*`, `ln_final`, `text_projection`.

use crate::error::Error;
use crate::model::config::ClipConfig;
use crate::model::convnext::{LayerNorm, Linear};
use crate::model::weights::Weights;
use tch::{Kind, TchError, Tensor};

/// CLIP text LayerNorm epsilon (PyTorch default).
const LN_EPS: f64 = 1e-5;

/// `nn.MultiheadAttention` with packed input projection.
#[derive(Debug)]
struct Attention {
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: Linear,
    heads: i64,
}

impl Attention {
    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let (b, l, w) = x.size3()?;
        let qkv = x.f_linear(&self.in_proj_weight, Some(&self.in_proj_bias))?;
        let split = |t: &Tensor| t.f_reshape([b, l, self.heads, w / self.heads])?.f_transpose(1, 2);
        let parts = qkv.f_chunk(3, -1)?;
        let (q, k, v) = (split(&parts[0])?, split(&parts[1])?, split(&parts[2])?);
        let y = Tensor::f_scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, true, None, false)?;
        self.out_proj.forward(&y.f_transpose(1, 2)?.f_reshape([b, l, w])?)
    }
}

#[derive(Debug)]
struct ResBlock {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
}

/// The text transformer.
#[derive(Debug)]
pub struct TextTower {
    token_embedding: Tensor,
    positional_embedding: Tensor,
    resblocks: Vec<ResBlock>,
    ln_final: LayerNorm,
    text_projection: Tensor,
    quick_gelu: bool,
    /// Tokens per text.
    pub context_length: i64,
}

impl TextTower {
    /// Loads the text weights for `cfg`.
    pub fn new(w: &mut Weights, cfg: &ClipConfig) -> Result<Self, Error> {
        let t = &cfg.text;
        let width = t.width;
        let hidden = (t.mlp_ratio * width as f64) as i64;
        let resblocks = (0..t.layers)
            .map(|k| {
                let p = format!("transformer.resblocks.{k}");
                Ok(ResBlock {
                    ln_1: LayerNorm::new(w, &format!("{p}.ln_1"), width, LN_EPS)?,
                    attn: Attention {
                        in_proj_weight: w.get(&format!("{p}.attn.in_proj_weight"), &[3 * width, width])?,
                        in_proj_bias: w.get(&format!("{p}.attn.in_proj_bias"), &[3 * width])?,
                        out_proj: Linear::new(w, &format!("{p}.attn.out_proj"), width, width, true)?,
                        heads: t.heads,
                    },
                    ln_2: LayerNorm::new(w, &format!("{p}.ln_2"), width, LN_EPS)?,
                    c_fc: Linear::new(w, &format!("{p}.mlp.c_fc"), width, hidden, true)?,
                    c_proj: Linear::new(w, &format!("{p}.mlp.c_proj"), hidden, width, true)?,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(TextTower {
            token_embedding: w.get("token_embedding.weight", &[t.vocab_size, width])?,
            positional_embedding: w.get("positional_embedding", &[t.context_length, width])?,
            resblocks,
            ln_final: LayerNorm::new(w, "ln_final", width, LN_EPS)?,
            text_projection: w.get("text_projection", &[width, cfg.embed_dim])?,
            quick_gelu: cfg.quick_gelu,
            context_length: t.context_length,
        })
    }

    /// `[N, context_length]` int64 token ids → `[N, embed_dim]` (not normalised). LibTorch's
    /// fallible ops throughout, as in the image tower.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor, TchError> {
        let mut x = Tensor::f_embedding(&self.token_embedding, ids, -1, false, false)?.f_add(&self.positional_embedding)?;
        for b in &self.resblocks {
            x = x.f_add(&b.attn.forward(&b.ln_1.forward(&x)?)?)?;
            let h = b.c_fc.forward(&b.ln_2.forward(&x)?)?;
            let h = if self.quick_gelu { h.f_mul(&h.f_mul(&Tensor::from(1.702f32))?.f_sigmoid()?)? } else { h.f_gelu("none")? };
            x = x.f_add(&b.c_proj.forward(&h)?)?;
        }
        let x = self.ln_final.forward(&x)?;
        let eot = ids.f_argmax(-1, false)?;
        let rows = Tensor::f_arange(ids.size()[0], (Kind::Int64, ids.device()))?;
        let pooled = x.f_index(&[Some(rows), Some(eot)])?;
        pooled.f_matmul(&self.text_projection)
    }
}
