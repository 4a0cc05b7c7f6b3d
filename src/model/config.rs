//! `open_clip_config.json` as HF snapshots ship it (`{"model_cfg": ..., "preprocess_cfg": ...}`)
//! or as open_clip's bare model config. Dimensions come from here, so test-sized configs load
//! through the same code as `convnext_base`.

use crate::error::Error;
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// OpenAI CLIP normalisation mean (open_clip `OPENAI_DATASET_MEAN`).
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP normalisation std (open_clip `OPENAI_DATASET_STD`).
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Depths and widths of a timm ConvNeXt, from timm's `convnext.py` model registrations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvNextVariant {
    /// Blocks per stage.
    pub depths: [usize; 4],
    /// Channels per stage.
    pub dims: [i64; 4],
    /// timm `conv_mlp`: 1×1 convolutions instead of linear layers in the block MLP (same maths).
    pub conv_mlp: bool,
}

/// The timm ConvNeXt variants echovault knows by name (timm 1.0 `convnext.py`), plus
/// `convnext_echovault_micro`, the test-sized trunk that `tools/make_samples.py` registers in
/// timm for the sample model.
pub fn convnext_variant(name: &str) -> Option<ConvNextVariant> {
    let v = |depths, dims, conv_mlp| Some(ConvNextVariant { depths, dims, conv_mlp });
    match name {
        "convnext_echovault_micro" => v([1, 1, 2, 1], [16, 32, 64, 128], false),
        "convnext_atto" => v([2, 2, 6, 2], [40, 80, 160, 320], true),
        "convnext_femto" => v([2, 2, 6, 2], [48, 96, 192, 384], true),
        "convnext_pico" => v([2, 2, 6, 2], [64, 128, 256, 512], true),
        "convnext_nano" => v([2, 2, 8, 2], [80, 160, 320, 640], true),
        "convnext_tiny" => v([3, 3, 9, 3], [96, 192, 384, 768], false),
        "convnext_small" => v([3, 3, 27, 3], [96, 192, 384, 768], false),
        "convnext_base" => v([3, 3, 27, 3], [128, 256, 512, 1024], false),
        "convnext_large" => v([3, 3, 27, 3], [192, 384, 768, 1536], false),
        "convnext_xlarge" => v([3, 3, 27, 3], [256, 512, 1024, 2048], false),
        _ => None,
    }
}

/// Image tower settings.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    /// timm model name, e.g. `convnext_base`.
    pub timm_model_name: String,
    /// Resolved depths and widths.
    pub variant: ConvNextVariant,
    /// Input size (square).
    pub image_size: i64,
    /// Whether `visual.head.proj` has a bias.
    pub proj_bias: bool,
}

/// Text tower settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    /// Tokens per text (77).
    pub context_length: i64,
    /// Vocabulary size (49408 for CLIP BPE).
    pub vocab_size: i64,
    /// Transformer width.
    pub width: i64,
    /// Attention heads.
    pub heads: i64,
    /// Residual blocks.
    pub layers: i64,
    /// MLP hidden size = `mlp_ratio * width`.
    pub mlp_ratio: f64,
}

/// The whole CLIP config.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    /// Joint embedding dimension (512 for EchoCLIP).
    pub embed_dim: i64,
    /// `x * sigmoid(1.702 x)` instead of exact GELU in the text tower.
    pub quick_gelu: bool,
    /// Image tower.
    pub vision: VisionConfig,
    /// Text tower.
    pub text: TextConfig,
    /// Normalisation mean.
    pub mean: [f64; 3],
    /// Normalisation std.
    pub std: [f64; 3],
}

#[derive(Deserialize)]
struct RawVision {
    timm_model_name: Option<String>,
    image_size: Option<Value>,
    timm_pool: Option<String>,
    timm_proj: Option<String>,
    timm_proj_bias: Option<bool>,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
struct RawText {
    context_length: Option<i64>,
    vocab_size: Option<i64>,
    width: Option<i64>,
    heads: Option<i64>,
    layers: Option<i64>,
    mlp_ratio: Option<f64>,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

impl ClipConfig {
    /// The EchoCLIP / open_clip `convnext_base` config.
    pub fn convnext_base() -> Self {
        ClipConfig {
            embed_dim: 512,
            quick_gelu: false,
            vision: VisionConfig {
                timm_model_name: "convnext_base".into(),
                variant: convnext_variant("convnext_base").unwrap_or_else(|| unreachable!()),
                image_size: 224,
                proj_bias: false,
            },
            text: TextConfig { context_length: 77, vocab_size: 49408, width: 512, heads: 8, layers: 12, mlp_ratio: 4.0 },
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// Reads `open_clip_config.json` from a snapshot directory.
    pub fn from_dir(dir: &Path) -> Result<Self, Error> {
        let path = dir.join("open_clip_config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::Model { dir: dir.to_owned(), reason: format!("cannot read open_clip_config.json: {e}") })?;
        Self::from_json(&text).map_err(|reason| Error::Model { dir: dir.to_owned(), reason })
    }

    /// Parses the config text; the error says which field is wrong.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let root: Value = serde_json::from_str(text).map_err(|e| format!("open_clip_config.json is not valid JSON: {e}"))?;
        let model = root.get("model_cfg").unwrap_or(&root);
        let embed_dim = model.get("embed_dim").and_then(Value::as_i64).ok_or("model_cfg.embed_dim missing")?;
        let quick_gelu = model.get("quick_gelu").and_then(Value::as_bool).unwrap_or(false);
        for field in ["custom_text", "multimodal_cfg"] {
            if model.get(field).is_some_and(|v| !v.is_null() && v != &Value::Bool(false)) {
                return Err(format!("unsupported config field model_cfg.{field}"));
            }
        }
        let rv: RawVision = serde_json::from_value(model.get("vision_cfg").cloned().ok_or("model_cfg.vision_cfg missing")?)
            .map_err(|e| format!("vision_cfg: {e}"))?;
        let name = rv.timm_model_name.ok_or("vision_cfg.timm_model_name missing: only timm ConvNeXt image towers are supported")?;
        let variant = convnext_variant(&name).ok_or_else(|| {
            format!("unsupported vision_cfg.timm_model_name '{name}' (supported: timm ConvNeXt variants such as convnext_base)")
        })?;
        if let Some(p) = rv.timm_pool.as_deref().filter(|p| !p.is_empty() && *p != "avg") {
            return Err(format!("unsupported vision_cfg.timm_pool '{p}' (supported: '' or 'avg')"));
        }
        if let Some(p) = rv.timm_proj.as_deref().filter(|p| *p != "linear") {
            return Err(format!("unsupported vision_cfg.timm_proj '{p}' (supported: 'linear')"));
        }
        for (k, v) in &rv.rest {
            let harmless = matches!(
                k.as_str(),
                "timm_model_pretrained" | "timm_drop" | "timm_drop_path" | "patch_dropout" | "layers" | "width" | "patch_size"
            );
            if !harmless && !v.is_null() {
                return Err(format!("unsupported config field vision_cfg.{k}"));
            }
        }
        let image_size = match rv.image_size {
            None => 224,
            Some(Value::Number(n)) => n.as_i64().ok_or("vision_cfg.image_size must be an integer")?,
            Some(Value::Array(a)) if a.len() == 2 && a[0] == a[1] => a[0].as_i64().ok_or("vision_cfg.image_size must be integers")?,
            Some(other) => return Err(format!("unsupported vision_cfg.image_size {other} (square sizes only)")),
        };
        let rt: RawText = serde_json::from_value(model.get("text_cfg").cloned().ok_or("model_cfg.text_cfg missing")?)
            .map_err(|e| format!("text_cfg: {e}"))?;
        for (k, v) in &rt.rest {
            let ok = match k.as_str() {
                "pool_type" => v == "argmax",
                "proj_bias" | "embed_cls" | "no_causal_mask" | "output_tokens" => v == &Value::Bool(false),
                "ls_init_value" | "hf_model_name" | "hf_tokenizer_name" | "attentional_pool" => v.is_null(),
                "tokenizer_kwargs" | "proj_type" => true,
                _ => v.is_null(),
            };
            if !ok {
                return Err(format!("unsupported config field text_cfg.{k} = {v}"));
            }
        }
        let text = TextConfig {
            context_length: rt.context_length.unwrap_or(77),
            vocab_size: rt.vocab_size.unwrap_or(49408),
            width: rt.width.unwrap_or(512),
            heads: rt.heads.unwrap_or(8),
            layers: rt.layers.unwrap_or(12),
            mlp_ratio: rt.mlp_ratio.unwrap_or(4.0),
        };
        if text.width % text.heads != 0 {
            return Err(format!("text_cfg.width {} is not divisible by heads {}", text.width, text.heads));
        }
        let pre = root.get("preprocess_cfg");
        let triple = |key: &str, default: [f64; 3]| -> Result<[f64; 3], String> {
            match pre.and_then(|p| p.get(key)) {
                None => Ok(default),
                Some(v) => {
                    let a: Vec<f64> = serde_json::from_value(v.clone()).map_err(|e| format!("preprocess_cfg.{key}: {e}"))?;
                    a.try_into().map_err(|_| format!("preprocess_cfg.{key} must have 3 values"))
                }
            }
        };
        Ok(ClipConfig {
            embed_dim,
            quick_gelu,
            vision: VisionConfig { timm_model_name: name, variant, image_size, proj_bias: rv.timm_proj_bias.unwrap_or(false) },
            text,
            mean: triple("mean", CLIP_MEAN)?,
            std: triple("std", CLIP_STD)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_hf_echoclip_layout() {
        let json = r#"{"model_cfg": {"embed_dim": 512, "vision_cfg": {"timm_model_name": "convnext_base",
            "timm_model_pretrained": false, "timm_pool": "", "timm_proj": "linear", "timm_drop": 0.0,
            "timm_drop_path": 0.1, "image_size": 224}, "text_cfg": {"context_length": 77, "vocab_size": 49408,
            "width": 512, "heads": 8, "layers": 12}}, "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711]}}"#;
        assert_eq!(ClipConfig::from_json(json).unwrap(), ClipConfig::convnext_base());
    }

    #[test]
    fn names_unsupported_fields() {
        let json = r#"{"embed_dim": 512, "vision_cfg": {"timm_model_name": "vit_base_patch16_224"}, "text_cfg": {}}"#;
        assert!(ClipConfig::from_json(json).unwrap_err().contains("vit_base_patch16_224"));
        let json = r#"{"embed_dim": 512, "vision_cfg": {"timm_model_name": "convnext_base"}, "text_cfg": {"hf_model_name": "bert"}}"#;
        assert!(ClipConfig::from_json(json).unwrap_err().contains("text_cfg.hf_model_name"));
        let json = r#"{"embed_dim": 512, "vision_cfg": {"timm_model_name": "convnext_base", "timm_pool": "attn"}, "text_cfg": {}}"#;
        assert!(ClipConfig::from_json(json).unwrap_err().contains("timm_pool"));
    }
}
