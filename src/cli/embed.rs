//! `echovault embed` and `echovault tokenize`: what the model and tokenizer make of one input,
//! so users can check a checkpoint against their Python reference.

use super::{DeviceOpts, FramesOpts, Global, Groups, ImageOpts, ModelOpts};
use anyhow::Context;
use clap::{ArgGroup, Args};
use echovault::media::Preprocess;
use echovault::model::{clip, Clip};
use echovault::tokenize::TextTokenizer;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("input").required(true).args(["text", "video", "image"])))]
pub struct EmbedArgs {
    /// Text to embed.
    #[arg(long)]
    text: Option<String>,
    /// Video file to embed (the video embedding: mean of unit frame embeddings, re-normalised).
    #[arg(long)]
    video: Option<PathBuf>,
    /// Image file(s) (PNG or JPEG) to embed; several give `embeddings`, one per image.
    #[arg(long, num_args = 1..)]
    image: Vec<PathBuf>,
    /// Also print the per-frame embeddings of a video.
    #[arg(long)]
    per_frame: bool,
    /// Crop a DICOM cine's frames to its ultrasound region, as `ingest --crop-region` does.
    #[arg(long)]
    crop_region: bool,
    /// Precision: f32 (CPU and CUDA), f16 or bf16 (CUDA only).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    precision: String,
    #[command(flatten)]
    pub model: ModelOpts,
    #[command(flatten)]
    pub device: DeviceOpts,
    #[command(flatten)]
    pub image_opts: ImageOpts,
    #[command(flatten)]
    pub frames_opts: FramesOpts,
}

impl EmbedArgs {
    pub fn groups(&self) -> Groups<'_> {
        Groups {
            model: Some(&self.model),
            device: Some(&self.device),
            image: Some(&self.image_opts),
            frames: Some(&self.frames_opts),
            ..Groups::default()
        }
    }
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// Text to tokenise.
    #[arg(long)]
    text: String,
    /// CLIP BPE tokenizer: a tokenizer.json, a snapshot directory or hf:OWNER/NAME[@REV]
    /// (default: --model's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Tokens per text.
    #[arg(long, default_value_t = 77, value_parser = super::positive)]
    context_length: usize,
    #[command(flatten)]
    pub model: ModelOpts,
}

impl TokenizeArgs {
    pub fn groups(&self) -> Groups<'_> {
        Groups { model: Some(&self.model), ..Groups::default() }
    }
}

fn model_dir(g: &Global) -> anyhow::Result<PathBuf> {
    Ok(g.engine_config()?.model_dir)
}

pub fn run_embed(g: &Global, a: &EmbedArgs) -> anyhow::Result<i32> {
    let cfg = g.engine_config()?;
    let model = Clip::load(&cfg.model_dir, cfg.device, super::bench::parse_precision(&a.precision)?)?;
    let preprocess = Preprocess { size: model.image_size(), mean: model.config.mean, std: model.config.std, order: cfg.channel_order };
    let mut out = json!({ "model": cfg.model_dir.display().to_string(), "dim": model.dim() });
    if let Some(t) = &a.text {
        let vocab = echovault::engine::template_vocab_for(&cfg.model_dir, cfg.template_vocab.as_ref(), true);
        let tok = TextTokenizer::for_model(
            &cfg.model_dir,
            vocab.as_deref(),
            model.context_length() as usize,
            Some(model.config.text.vocab_size),
        )?;
        let ids = tok.encode(t)?;
        out["embedding"] = json!(clip::rows(&model.encode_texts(&[ids])?)?.remove(0));
    } else if !a.image.is_empty() {
        let mut all = Vec::with_capacity(a.image.len());
        for p in &a.image {
            let frame = echovault::media::image::read_image(p)?;
            let x = preprocess.frames(std::slice::from_ref(&frame)).with_context(|| p.display().to_string())?;
            all.push(clip::rows(&model.encode_images(&x)?)?.remove(0));
        }
        out["embedding"] = json!(all[0]);
        if all.len() > 1 {
            out["embeddings"] = json!(all);
        }
    } else if let Some(p) = &a.video {
        embed_video(&model, &preprocess, &cfg, p, a, &mut out)?;
    }
    print_result(g.json, &out);
    Ok(0)
}

pub fn run_tokenize(g: &Global, a: &TokenizeArgs) -> anyhow::Result<i32> {
    let bpe = match &a.tokenizer {
        Some(p) => super::resolve_model(p)?,
        None => model_dir(g)?,
    };
    // The text tower's size when the directory says it, so a vocabulary too big for it is
    // refused here as everywhere else.
    let vocab_size = echovault::model::ClipConfig::from_dir(&bpe).ok().map(|c| c.text.vocab_size);
    let tok = TextTokenizer::for_model(&bpe, g.template_vocab.as_ref().map(|v| v.file.as_path()), a.context_length, vocab_size)?;
    let ids = tok.encode(&a.text)?;
    let mut out = json!({ "ids": ids, "tokenizer": tok.kind() });
    if let TextTokenizer::Template(t) = &tok {
        // What the text tower is told, and what of the report it never sees.
        let used = ids.iter().position(|&i| i == t.end_id()).map_or(ids.len(), |e| e + 1);
        out["tokens"] = json!(t.describe(&ids[..used]));
        out["unknown"] = json!(t.encode_explained(&a.text)?.1);
    }
    print_result(g.json, &out);
    Ok(0)
}

fn print_result(as_json: bool, v: &serde_json::Value) {
    if as_json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }
}

/// A DICOM cine or a video file, decoded as ingest decodes it.
fn embed_video(
    model: &Clip,
    preprocess: &Preprocess,
    cfg: &echovault::engine::EngineConfig,
    p: &Path,
    a: &EmbedArgs,
    out: &mut serde_json::Value,
) -> anyhow::Result<()> {
    let read =
        echovault::media::ReadOptions { sampling: cfg.sampling, max_frames: cfg.max_frames, crop_regions: a.crop_region, mask: cfg.mask };
    let e = echovault::engine::embed_video(model, preprocess, p, &read, cfg.frame_batch)?;
    out["embedding"] = json!(e.embedding.video);
    out["frames_embedded"] = json!(e.embedding.frames.len());
    out["frames_decoded"] = json!(e.info.frames);
    if e.embedding.frames.len() < e.selected {
        // Thinned to --max-frames: which frames were embedded.
        out["frames_selected"] = json!(e.selected);
        out["frames_embedded_are"] = json!(e.sampling.to_string());
    }
    if a.per_frame {
        out["frames"] = json!(e.embedding.frames);
    }
    Ok(())
}
