//! The engine: an open index plus the model, tokenizer and preprocessing of one embedding space.
//! Everything a command needs to embed a query and search for it.
//!
//! [`Engine::open`] is the writer (ingest, repair, the server): it registers each model's space
//! and remembers its model probe. [`Engine::open_reader`] is for every command that only reads:
//! it opens the index as a reader (beside a running writer, writing nothing), and a model whose
//! space the index does not hold is an error naming the spaces it does hold.

use crate::error::Error;
use crate::media::{ChannelOrder, CineInfo, Frame, FrameSampling, Preprocess, ReadOptions};
use crate::model::{batches::in_halving_batches, clip, Clip, Precision};
use crate::tokenize::TextTokenizer;
use echovault_index::{Filter, Hit, Index, IndexOptions, ItemId, Kind, Query, SpaceId};
use std::path::{Path, PathBuf};
use tch::Device;

/// Frames per forward pass of the image tower (bounds memory per call).
pub const DEFAULT_FRAME_BATCH: usize = 32;

/// Where the engine's parts come from.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Index directory (created when absent).
    pub index_dir: PathBuf,
    /// The patient-key secret is kept in this file, outside the index (`--secret-file`): a new
    /// index stores only its fingerprint; an existing one checks it against its own.
    pub secret_file: Option<PathBuf>,
    /// Model snapshot directory (`open_clip_config.json`, weights, `tokenizer.json`): the
    /// primary model, whose space searches use.
    pub model_dir: PathBuf,
    /// More models embedded alongside in the same runs (ingest), each in its own space named
    /// after its directory (e.g. EchoCLIP and EchoCLIP-R together).
    pub extra_models: Vec<PathBuf>,
    /// Embedding space name of the primary model; defaults to the model directory's name.
    pub space: Option<String>,
    /// Device for the model.
    pub device: Device,
    /// Channel order fed to the image tower.
    pub channel_order: ChannelOrder,
    /// Frames embedded per video.
    pub sampling: FrameSampling,
    /// Frames per forward pass.
    pub frame_batch: usize,
    /// Frames embedded per video at most (`--max-frames`; 0: no bound): a cine whose sampling
    /// selects more is thinned evenly (see [`crate::media::sampling`]).
    pub max_frames: usize,
    /// `--mask`: what is blanked outside the ultrasound image before preprocessing.
    pub mask: crate::media::MaskMode,
    /// `--template-vocab`: an EchoCLIP-R vocabulary for the models that need one (see
    /// [`template_vocab_for`]).
    pub template_vocab: Option<TemplateVocabArg>,
    /// `ingest --vector-type`: the encoding a writer stores vectors in. `None` (auto): as each
    /// space holds them, f32 for a new space (see [`IndexOptions::encoding`]). `Some(e)` for a
    /// space that already holds vectors in the other encoding is refused at open: it would mix
    /// them.
    pub vectors: Option<crate::index::VectorEncoding>,
}

/// `--template-vocab [MODEL=]FILE`: an EchoCLIP-R template vocabulary, for the model named
/// `MODEL` (its space name: the directory's name, or the repo name of an `hf:` model) or, with
/// no name, for the model that needs one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateVocabArg {
    /// The model it is for.
    pub model: Option<String>,
    /// The vocabulary file.
    pub file: PathBuf,
}

impl std::str::FromStr for TemplateVocabArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            // A path that exists as written wins over the MODEL=FILE reading.
            Some((model, file)) if !model.is_empty() && !Path::new(s).exists() => {
                Ok(TemplateVocabArg { model: Some(model.to_owned()), file: PathBuf::from(file) })
            }
            _ if s.is_empty() => Err("empty --template-vocab".into()),
            _ => Ok(TemplateVocabArg { model: None, file: PathBuf::from(s) }),
        }
    }
}

/// Whether the text tower of the model in `model_dir` is too small for CLIP BPE (a template
/// vocabulary's tower; the published EchoCLIP-R keeps CLIP's 49,408 rows, so this is no test for
/// EchoCLIP-R in general).
fn small_tower(model_dir: &Path) -> bool {
    crate::model::ClipConfig::from_dir(model_dir).is_ok_and(|c| c.text.vocab_size <= crate::tokenize::CLIP_BPE_END_ID)
}

/// The EchoCLIP-R template vocabulary a model tokenises with, if any. `given`
/// (`--template-vocab`) applies to the model it names; unnamed, to the only model, or else to a
/// model without a vocabulary of its own whose text tower is too small for CLIP BPE. Otherwise
/// the directory's own `template_vocab.txt`, if any.
pub fn template_vocab_for(model_dir: &Path, given: Option<&TemplateVocabArg>, only_model: bool) -> Option<PathBuf> {
    let own = model_dir.join(crate::tokenize::TEMPLATE_VOCAB_FILE);
    let own = own.is_file().then_some(own);
    match given {
        Some(TemplateVocabArg { model: Some(name), file }) if *name == space_name_of(model_dir) => Some(file.clone()),
        Some(TemplateVocabArg { model: None, file }) if only_model || (own.is_none() && small_tower(model_dir)) => Some(file.clone()),
        _ => own,
    }
}

/// Refuses a `--template-vocab` that would reach none of `models` (a vocabulary silently left
/// unused would give an EchoCLIP-R model CLIP BPE ids).
pub fn check_template_vocab(models: &[PathBuf], given: Option<&TemplateVocabArg>) -> Result<(), Error> {
    let Some(g) = given else { return Ok(()) };
    let only = models.len() == 1;
    if models.iter().any(|m| template_vocab_for(m, Some(g), only).is_some_and(|v| v == g.file)) {
        return Ok(());
    }
    let names: Vec<String> = models.iter().map(|m| space_name_of(m)).collect();
    Err(Error::Invalid(match &g.model {
        Some(name) => format!("--template-vocab {name}=…: no --model is named '{name}' (the models are: {})", names.join(", ")),
        None => format!(
            "--template-vocab {}: with several models, say which one takes it: --template-vocab MODEL={} (the models are: {})",
            g.file.display(),
            g.file.display(),
            names.join(", ")
        ),
    }))
}

/// `auto` → CUDA when LibTorch sees a GPU, else CPU.
///
/// `auto` and `cuda` first load LibTorch's CUDA library (`torch_cuda::load`): the binary does
/// not link it, so commands without a model start without it.
pub fn parse_device(s: &str) -> Result<Device, Error> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(match torch_cuda::load() {
            Ok(()) => Device::cuda_if_available(),
            Err(why) => {
                tracing::debug!("--device auto: CPU ({why})");
                Device::Cpu
            }
        }),
        "cuda" => match torch_cuda::load() {
            Ok(()) if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            Ok(()) => Err(Error::Invalid("--device cuda: LibTorch sees no CUDA device on this machine".into())),
            Err(why) => Err(Error::Invalid(format!("--device cuda: {why}"))),
        },
        other => Err(Error::Invalid(format!("--device '{other}': use auto, cpu or cuda"))),
    }
}

/// LibTorch's CUDA library, loaded at run time (see `build.rs`: linking it made every command,
/// `--version` included, load it and its CUDA libraries first: ≈ 0.3 s and ≈ 400 MB).
///
/// It must be loaded before LibTorch first asks for its CUDA hooks (`Cuda::is_available`,
/// `manual_seed`, …): ATen looks them up once per process and a miss disables CUDA for good.
mod torch_cuda {
    use std::sync::OnceLock;

    /// The NVIDIA driver's library: without it no CUDA device can exist, and LibTorch's CUDA
    /// library (≈ 0.3 s to load) is not worth loading.
    const DRIVER: &str = "libcuda.so.1";
    /// Found through `LD_LIBRARY_PATH` or the binary's rpath to LibTorch's `lib`.
    const TORCH_CUDA: &str = "libtorch_cuda.so";

    /// Loads the driver and LibTorch's CUDA library once per process; the reason when either
    /// cannot be loaded.
    pub(super) fn load() -> Result<(), String> {
        static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
        LOADED
            .get_or_init(|| {
                open(DRIVER).map_err(|e| format!("no NVIDIA driver ({e})"))?;
                open(TORCH_CUDA).map_err(|e| format!("LibTorch's CUDA library did not load ({e})"))
            })
            .clone()
    }

    #[cfg(unix)]
    #[allow(unsafe_code)]
    fn open(name: &str) -> Result<(), String> {
        use std::ffi::{CStr, CString};
        let c = CString::new(name).map_err(|e| e.to_string())?;
        // SAFETY: `c` is a NUL-terminated string that outlives the call; the handle is kept
        // (never closed), so the library's code stays mapped for the life of the process.
        // `dlerror` returns a thread-local message (or null) that is copied out at once.
        unsafe {
            if libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL).is_null() {
                let e = libc::dlerror();
                return Err(if e.is_null() { name.to_string() } else { CStr::from_ptr(e).to_string_lossy().into_owned() });
            }
        }
        Ok(())
    }

    #[cfg(not(unix))]
    fn open(name: &str) -> Result<(), String> {
        Err(format!("{name}: loaded only on Unix"))
    }

    #[cfg(all(test, target_os = "linux"))]
    mod tests {
        /// The binary does not link LibTorch's CUDA library (build.rs); loaded at run time it
        /// maps into the process and LibTorch still answers (no GPU on a CPU machine). The
        /// driver check of `load` is skipped: CPU machines have no `libcuda.so.1`.
        #[test]
        fn torch_cuda_loads_at_run_time() {
            let maps = || std::fs::read_to_string("/proc/self/maps").unwrap();
            assert!(maps().contains("libtorch_cpu.so"), "LibTorch's CPU library is linked");
            assert!(!maps().contains("libtorch_cuda.so"), "linked at build time: see build.rs");
            super::open(super::TORCH_CUDA).unwrap();
            assert!(maps().contains("libtorch_cuda.so"));
            let gpus = tch::Cuda::device_count();
            assert_eq!(tch::Cuda::is_available(), gpus > 0);
            let e = super::open("libdoes-not-exist.so").unwrap_err();
            assert!(e.contains("libdoes-not-exist.so"), "{e}");
        }
    }
}

/// One model with its tokenizer and preprocessing, bound to its embedding space in the index.
#[derive(Debug)]
pub struct Embedder {
    /// The model.
    pub model: Clip,
    /// Its tokenizer: CLIP BPE, or EchoCLIP-R's phrase templates when the model directory holds
    /// a `template_vocab.txt`.
    pub tokenizer: TextTokenizer,
    /// Its preprocessing.
    pub preprocess: Preprocess,
    /// The embedding space in the index.
    pub space: SpaceId,
    /// The space's name.
    pub space_name: String,
    /// Frames per forward pass.
    pub frame_batch: usize,
}

/// An open index with the models of one or more embedding spaces. Derefs to the primary
/// [`Embedder`] (the first model), the one searches embed their queries with.
#[derive(Debug)]
pub struct Engine {
    /// The index.
    pub index: Index,
    /// The models, primary first.
    pub embedders: Vec<Embedder>,
    /// Frames embedded per video.
    pub sampling: FrameSampling,
    /// Frames embedded per video at most (0: no bound).
    pub max_frames: usize,
    /// Whether DICOM frames are cropped to their ultrasound region (`--crop-region`), in
    /// ingest and in every command that embeds a file.
    pub crop_regions: bool,
    /// What is blanked outside the ultrasound image before preprocessing (`--mask`), in ingest
    /// and in every command that embeds a file.
    pub mask: crate::media::MaskMode,
}

impl std::ops::Deref for Engine {
    type Target = Embedder;
    fn deref(&self) -> &Embedder {
        &self.embedders[0]
    }
}

/// A video's embeddings.
#[derive(Clone, Debug)]
pub struct VideoEmbedding {
    /// Mean of the normalised frame embeddings, re-normalised.
    pub video: Vec<f32>,
    /// Per-frame unit embeddings of the sampled frames.
    pub frames: Vec<Vec<f32>>,
}

impl Engine {
    /// Opens the index as its writer (creating it when absent) and loads the models, registering
    /// the space of each and its model probe.
    pub fn open(cfg: &EngineConfig) -> Result<Engine, Error> {
        let secret_file = cfg.secret_file.clone();
        let index = Index::open(
            &cfg.index_dir,
            IndexOptions { writer: Some(writer_label()), secret_file, encoding: cfg.vectors, ..IndexOptions::default() },
        )?;
        Self::with_index(cfg, index)
    }

    /// Opens the index as a reader ([`Index::open_reader`]) and loads the models: nothing is
    /// created or written. Each model's space must exist (else an error listing the spaces the
    /// index holds) with the model's dimension, and a stored model probe must match the model
    /// (an absent one is not written).
    pub fn open_reader(cfg: &EngineConfig) -> Result<Engine, Error> {
        let mut index = Index::open_reader(&cfg.index_dir)?;
        if let Some(file) = &cfg.secret_file {
            index.use_secret_file(file)?;
        }
        Self::with_index(cfg, index)
    }

    fn with_index(cfg: &EngineConfig, index: Index) -> Result<Engine, Error> {
        let mut embedders: Vec<Embedder> = Vec::new();
        let only_model = cfg.extra_models.is_empty();
        for (i, dir) in std::iter::once(&cfg.model_dir).chain(&cfg.extra_models).enumerate() {
            let name = match (&cfg.space, i) {
                (Some(s), 0) => s.clone(),
                _ => space_name_of(dir),
            };
            if embedders.iter().any(|e| e.space_name == name) {
                return Err(Error::Invalid(format!(
                    "two models would share the embedding space '{name}' ({}): give each model a directory of its own name",
                    dir.display()
                )));
            }
            let vocab = template_vocab_for(dir, cfg.template_vocab.as_ref(), only_model);
            let mut e = Embedder::load(dir, vocab.as_deref(), cfg.device, cfg.channel_order, cfg.frame_batch)?;
            e.space = if index.is_reader() {
                held_space(&index, &name, e.model.dim(), dir)?
            } else {
                index.ensure_space(&name, e.model.dim())?
            };
            check_vectors(&index, cfg.vectors, e.space, &name)?;
            e.space_name = name;
            check_probe(&index, &e, dir)?;
            if !index.is_reader() {
                remember_model(&index, &e.space_name, dir)?;
            }
            embedders.push(e);
        }
        Ok(Engine { index, embedders, sampling: cfg.sampling, max_frames: cfg.max_frames, crop_regions: false, mask: cfg.mask })
    }
}

/// Refuses `--vector-type` `want` for a space that holds vectors in the other encoding: its
/// rows would mix (and its graph be held as f32 from the next open on).
fn check_vectors(index: &Index, want: Option<crate::index::VectorEncoding>, space: SpaceId, name: &str) -> Result<(), Error> {
    use crate::index::VectorEncoding;
    let word = |e: VectorEncoding| if e == VectorEncoding::F16 { "float16" } else { "float32" };
    match (want, index.space_precision(space)) {
        (Some(want), Some(held)) if want != held => Err(Error::Invalid(format!(
            "--vector-type {}: embedding space '{name}' holds {} vectors, and a space's vector type is chosen when it is \
             first filled (leave --vector-type at auto; to change it, `export --vector-type {}` and `import` into a new index)",
            word(want),
            word(held),
            word(want)
        ))),
        _ => Ok(()),
    }
}

/// Who writes, for the writer record a second writer is shown: `echovault` and the command
/// (the first argument naming a writing command), e.g. `echovault ingest`.
fn writer_label() -> String {
    const WRITING: [&str; 4] = ["ingest", "repair", "serve", "train"];
    match std::env::args().skip(1).find(|a| WRITING.contains(&a.as_str())) {
        Some(command) => format!("echovault {command}"),
        None => "echovault".into(),
    }
}

/// The id of the space `name` in a reader's index, which must hold it with dimension `dim`.
fn held_space(index: &Index, name: &str, dim: usize, dir: &Path) -> Result<SpaceId, Error> {
    let spaces = index.spaces();
    match spaces.iter().find(|s| s.name == name) {
        Some(s) if s.dim == dim => Ok(s.id),
        Some(s) => Err(Error::Invalid(format!(
            "embedding space '{name}' of index {} has dimension {}, model {} embeds in {dim}: give this model a space of its own (--space NAME)",
            index.path().display(),
            s.dim,
            dir.display()
        ))),
        None => {
            let held: Vec<String> = spaces.iter().map(|s| format!("'{}' ({}-d)", s.name, s.dim)).collect();
            let held = if held.is_empty() { "none yet (run `echovault ingest` first)".to_owned() } else { held.join(", ") };
            Err(Error::Invalid(format!(
                "index {} holds no embedding space '{name}' (the space of model {}); it holds: {held}. Pass the --model the index \
                 was filled with, or --space NAME",
                index.path().display(),
                dir.display()
            )))
        }
    }
}

/// The model directory that filled a space, as the index remembers it: read commands given no
/// `--model` load it again.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelOrigin {
    /// The space.
    pub space: String,
    /// The snapshot directory (absolute).
    pub path: PathBuf,
    /// sha256 (hex) of its checkpoint file.
    pub checkpoint: String,
}

pub(crate) fn origin_key(space: &str) -> String {
    format!("model-dir:{space}")
}

/// sha256 (hex) of a snapshot directory's checkpoint file (the weights [`Clip::load`] reads).
pub fn checkpoint_hash(dir: &Path) -> Result<String, Error> {
    use sha2::{Digest, Sha256};
    let file = crate::model::weights::checkpoint_file(dir)?;
    let mut f = std::fs::File::open(&file).map_err(|e| Error::io(&file, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(&file, e))?;
    Ok(hex::encode(h.finalize()))
}

/// Records (writer only) which directory filled `space`, when the index does not yet hold that
/// directory for it: the first writer of a space, or the same model (its probe matched) moved.
fn remember_model(index: &Index, space: &str, dir: &Path) -> Result<(), Error> {
    let path = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    let key = origin_key(space);
    let held: Option<ModelOrigin> = index.get_log(&key)?.and_then(|b| serde_json::from_slice(&b).ok());
    if held.is_some_and(|h| h.path == path) {
        return Ok(());
    }
    let origin = ModelOrigin { space: space.to_owned(), path, checkpoint: checkpoint_hash(dir)? };
    let value = serde_json::to_vec(&origin).map_err(|e| Error::Invalid(format!("model origin: {e}")))?;
    let mut b = index.batch();
    b.put_log(&key, Some(&value));
    index.commit(b)?;
    Ok(())
}

/// The model directories that filled the index's spaces, in the index's space order (a space
/// filled before the index remembered directories is left out).
pub fn remembered_models(index: &Index) -> Result<Vec<ModelOrigin>, Error> {
    let mut out = Vec::new();
    for s in index.spaces() {
        if let Some(b) = index.get_log(&origin_key(&s.name))? {
            let o: ModelOrigin =
                serde_json::from_slice(&b).map_err(|e| Error::Invalid(format!("remembered model of space '{}': {e}", s.name)))?;
            out.push(o);
        }
    }
    Ok(out)
}

/// The model a command given no `--model` uses: the one that filled the index's only space, or
/// the space `space` names; `None` when the index remembers no model directory (an index
/// written before it did). Errors name the spaces to choose from, a directory that is gone, or
/// a checkpoint that changed since it filled the space.
pub fn model_of_index(index_dir: &Path, space: Option<&str>) -> Result<Option<ModelOrigin>, Error> {
    let index = Index::open_reader(index_dir)?;
    let spaces: Vec<String> = index.spaces().into_iter().map(|s| s.name).collect();
    let origins = remembered_models(&index)?;
    if origins.is_empty() {
        return Ok(None);
    }
    let listed = || {
        spaces
            .iter()
            .map(|n| match origins.iter().find(|o| &o.space == n) {
                Some(o) => format!("'{n}' (model {})", o.path.display()),
                None => format!("'{n}' (model not remembered)"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let origin = match space {
        Some(name) => origins.iter().find(|o| o.space == name).cloned().ok_or_else(|| {
            Error::Invalid(format!(
                "index {} remembers no model for a space '{name}': it holds {}; pass --model DIR",
                index_dir.display(),
                listed()
            ))
        })?,
        None if spaces.len() == 1 => origins[0].clone(),
        None => {
            return Err(Error::Invalid(format!(
                "index {} holds several embedding spaces: {}; name one with --space NAME (or pass --model DIR)",
                index_dir.display(),
                listed()
            )))
        }
    };
    if !origin.path.is_dir() {
        return Err(Error::Invalid(format!(
            "model directory {} that filled space '{}' of index {} no longer exists: pass --model DIR",
            origin.path.display(),
            origin.space,
            index_dir.display()
        )));
    }
    let now = checkpoint_hash(&origin.path)?;
    if now != origin.checkpoint {
        return Err(Error::Invalid(format!(
            "the checkpoint in model directory {} changed since it filled space '{}' of index {} (sha256 {}…, was {}…): pass \
             --model DIR with the model that filled it",
            origin.path.display(),
            origin.space,
            index_dir.display(),
            &now[..12],
            &origin.checkpoint[..origin.checkpoint.len().min(12)]
        )));
    }
    Ok(Some(origin))
}

/// The fixed text whose embedding identifies a space's model.
const PROBE_TEXT: &str = "PROBE: NORMAL LEFT VENTRICULAR SIZE AND SYSTOLIC FUNCTION.";
/// Probe embeddings closer than this are the same model (device and kernel differences stay far
/// above it; another checkpoint falls far below).
pub(crate) const PROBE_MIN_COSINE: f32 = 0.999;

pub(crate) fn probe_key(space: &str) -> String {
    format!("model-probe:{space}")
}

/// What the model makes of a fixed text and a fixed image.
fn probe(e: &Embedder) -> Result<(Vec<f32>, Vec<f32>), Error> {
    let text = e.embed_text(PROBE_TEXT)?;
    let n = e.model.image_size().max(1) as usize;
    // Grey (the same in every channel), so the probe does not depend on --channel-order.
    let rgb: Vec<u8> = (0..n * n * 3).map(|i| ((i / 3 % n) * 7 + (i / 3 / n) * 3) as u8).collect();
    let frame = Frame::new(n, n, rgb).ok_or_else(|| Error::Invalid("probe image".into()))?;
    let image = e.embed_frames(std::slice::from_ref(&frame))?.video;
    Ok((text, image))
}

/// A space remembers the probe embeddings of the model that first filled it; opening it with
/// another model (other weights under the same directory name, say) is refused, so that an
/// index never mixes two models' vectors in one space.
fn check_probe(index: &Index, e: &Embedder, dir: &Path) -> Result<(), Error> {
    let key = probe_key(&e.space_name);
    let stored = index.get_log(&key)?;
    if stored.is_none() && index.is_reader() {
        // A reader writes nothing: the first writer of the space records its probe.
        return Ok(());
    }
    let (text, image) = probe(e)?;
    match stored {
        None => {
            let value = serde_json::to_vec(&serde_json::json!({ "text": text, "image": image }))
                .map_err(|err| Error::Invalid(format!("model probe: {err}")))?;
            let mut b = index.batch();
            b.put_log(&key, Some(&value));
            index.commit(b)?;
            Ok(())
        }
        Some(bytes) => {
            let stored: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|err| Error::Invalid(format!("model probe of space '{}': {err}", e.space_name)))?;
            let vec = |k: &str| -> Vec<f32> {
                stored[k].as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect()).unwrap_or_default()
            };
            let cos = |a: &[f32], b: &[f32]| if a.len() == b.len() { a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() } else { -1.0 };
            let (ct, ci) = (cos(&text, &vec("text")), cos(&image, &vec("image")));
            if ct < PROBE_MIN_COSINE || ci < PROBE_MIN_COSINE {
                return Err(Error::Invalid(format!(
                    "embedding space '{}' of index {} was filled by another model than {} (probe embeddings differ: cosine {ct:.3} text, {ci:.3} image); give this model a space of its own (--space NAME) or a new index",
                    e.space_name,
                    index.path().display(),
                    dir.display()
                )));
            }
            Ok(())
        }
    }
}

impl Embedder {
    /// Loads a snapshot directory (space unbound until the engine registers it), tokenising with
    /// the template vocabulary `vocab` when given (see [`template_vocab_for`]).
    pub fn load(
        model_dir: &Path,
        vocab: Option<&Path>,
        device: Device,
        order: ChannelOrder,
        frame_batch: usize,
    ) -> Result<Embedder, Error> {
        let model = Clip::load(model_dir, device, Precision::F32)?;
        let tokenizer = TextTokenizer::for_model(model_dir, vocab, model.context_length() as usize, Some(model.config.text.vocab_size))?;
        if vocab.is_none() && !model_dir.join("tokenizer.json").is_file() {
            tracing::warn!(
                "{}: no tokenizer.json or template vocabulary: texts use the built-in CLIP BPE (for an EchoCLIP-R model pass --template-vocab)",
                model_dir.display()
            );
        }
        let preprocess = Preprocess { size: model.image_size(), mean: model.config.mean, std: model.config.std, order };
        Ok(Embedder { model, tokenizer, preprocess, space: SpaceId(0), space_name: String::new(), frame_batch: frame_batch.max(1) })
    }

    /// Unit text embeddings of many texts (one forward pass per `frame_batch` texts).
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.frame_batch.max(1)) {
            let ids = chunk.iter().map(|t| self.tokenizer.encode(t)).collect::<Result<Vec<_>, _>>()?;
            out.extend(clip::rows(&self.model.encode_texts(&ids)?)?);
        }
        Ok(out)
    }

    /// Unit text embedding.
    pub fn embed_text(&self, text: &str) -> Result<Vec<f32>, Error> {
        self.embed_texts(&[text])?.pop().ok_or_else(|| Error::Invalid("the text tower returned no embedding".into()))
    }

    /// Unit frame embeddings and their pooled video embedding.
    pub fn embed_frames(&self, frames: &[Frame]) -> Result<VideoEmbedding, Error> {
        let resized = frames.iter().map(|f| self.preprocess.resize(f)).collect::<Result<Vec<_>, _>>()?;
        let all = self.embed_resized(&resized.iter().collect::<Vec<_>>())?;
        let video = mean_unit(&all).ok_or_else(|| Error::Invalid("no frames to embed".into()))?;
        Ok(VideoEmbedding { video, frames: all })
    }

    /// Unit embeddings of frames already at the tower's input size ([`Preprocess::resize`]),
    /// `frame_batch` per forward pass, halved when LibTorch fails ([`in_halving_batches`]).
    pub fn embed_resized(&self, frames: &[&Frame]) -> Result<Vec<Vec<f32>>, Error> {
        embed_images(&self.model, &self.preprocess, frames, self.frame_batch)
    }
}

/// Unit embeddings of frames at the tower's input size with `model`, `batch` per forward pass:
/// each batch normalised to f32 only when its turn comes, and split in halves when LibTorch
/// fails on it (out of memory), down to one frame.
pub fn embed_images(model: &Clip, preprocess: &Preprocess, frames: &[&Frame], batch: usize) -> Result<Vec<Vec<f32>>, Error> {
    in_halving_batches(frames.len(), batch, |r| clip::rows(&model.encode_images(&preprocess.normalise(&frames[r])?)?))
}

/// What embedding a video file gave.
#[derive(Clone, Debug)]
pub struct EmbeddedVideo {
    /// The cine.
    pub info: CineInfo,
    /// The frames embedded: the sampling asked for, thinned when the cine passed the bound.
    pub sampling: FrameSampling,
    /// Frames the sampling asked for selected (more than were embedded when thinned).
    pub selected: usize,
    /// The embeddings.
    pub embedding: VideoEmbedding,
}

/// Decodes a DICOM cine or a video file as ingest does ([`crate::media::read_cine`]: frame by
/// frame, each resized to the tower's input as it comes, at most `opts.max_frames` kept) and
/// embeds it with `model`, `batch` frames per pass. Errors name the file.
pub fn embed_video(model: &Clip, preprocess: &Preprocess, path: &Path, opts: &ReadOptions, batch: usize) -> Result<EmbeddedVideo, Error> {
    let named = |e: Error| match e {
        Error::Invalid(reason) => Error::media(path, reason),
        Error::Torch(t) => Error::media(path, format!("libtorch: {}", crate::model::batches::brief(&t))),
        other => other,
    };
    let (info, sampled) = crate::media::read_cine(path, opts, |fs| preprocess.resize_many(&fs).map_err(named))?;
    if sampled.capped() {
        tracing::debug!(
            "{}: {} of its {} selected frames embedded (--max-frames {}; frames {})",
            path.display(),
            sampled.items.len(),
            sampled.selected,
            opts.max_frames,
            sampled.sampling
        );
    }
    let frames = embed_images(model, preprocess, &sampled.items.iter().collect::<Vec<_>>(), batch).map_err(named)?;
    let video = mean_unit(&frames).ok_or_else(|| Error::media(path, "no frames to embed"))?;
    Ok(EmbeddedVideo { info, sampling: sampled.sampling, selected: sampled.selected, embedding: VideoEmbedding { video, frames } })
}

impl Engine {
    /// How this engine reads a video file's frames: its sampling, frame bound and crop.
    pub fn read_options(&self) -> ReadOptions {
        ReadOptions { sampling: self.sampling, max_frames: self.max_frames, crop_regions: self.crop_regions, mask: self.mask }
    }

    /// Decodes a DICOM cine or a video file (as ingest does: [`crate::media::read_cine`], with
    /// [`Engine::read_options`]) and embeds its sampled frames with the primary model.
    pub fn embed_video_file(&self, path: &Path) -> Result<(CineInfo, VideoEmbedding), Error> {
        let e = embed_video(&self.model, &self.preprocess, path, &self.read_options(), self.frame_batch)?;
        Ok((e.info, e.embedding))
    }

    /// k nearest items of `kind` to a query vector.
    pub fn search_vector(&self, v: Vec<f32>, kind: Kind, k: usize, filter: Filter, exact: bool) -> Result<Vec<Hit>, Error> {
        let mut q = Query::new(self.space, kind, v, k);
        q.filter = filter;
        q.exact = exact;
        Ok(self.index.search(&q)?)
    }

    /// Items of `kind` nearest to an indexed item (`--like ID`); the item itself is excluded.
    pub fn search_like(&self, id: &str, kind: Kind, k: usize, mut filter: Filter, exact: bool) -> Result<Vec<Hit>, Error> {
        let item = ItemId::from(id);
        let rec = self.index.get_item(&item)?.ok_or_else(|| Error::Invalid(format!("no item '{id}' in the index")))?;
        let v = self
            .index
            .get_vector(self.space, rec.kind, &item)?
            .ok_or_else(|| Error::Invalid(format!("item '{id}' has no vector in space '{}'", self.space_name)))?;
        filter.exclude.push(item);
        self.search_vector(v, kind, k, filter, exact)
    }
}

/// Default space name: the snapshot directory's name, or for a snapshot in the Hugging Face
/// cache (`models--OWNER--NAME/snapshots/COMMIT`, where `hf:OWNER/NAME` resolves) the repo NAME.
pub fn space_name_of(model_dir: &Path) -> String {
    let canon = model_dir.canonicalize().unwrap_or_else(|_| model_dir.to_owned());
    if let Some(name) = crate::hub::repo_name_of_snapshot(&canon) {
        return name;
    }
    canon.file_name().and_then(|n| n.to_str()).unwrap_or("model").to_owned()
}

/// Mean of unit vectors, re-normalised (`None` for no vectors or a zero mean).
pub fn mean_unit(vs: &[Vec<f32>]) -> Option<Vec<f32>> {
    let d = vs.first()?.len();
    let mut m = vec![0f32; d];
    for v in vs {
        m.iter_mut().zip(v).for_each(|(a, b)| *a += b);
    }
    let n = m.iter().map(|x| x * x).sum::<f32>().sqrt();
    (n > 0.0).then(|| m.into_iter().map(|x| x / n).collect())
}
