//! Command line: clap arguments, one module per subcommand. Parses and resolves settings, then
//! calls the library. Human output goes to stdout, logs to stderr (`tracing`); `--json` prints
//! one JSON object on stdout. Exit codes: 0 ok, 1 error, 2 usage, 3 partial success.

mod bench;
mod embed;
mod export;
mod info;
mod ingest;
mod inspect;
mod output;
mod phantom;
mod search;
mod serve;
mod tasks;
mod train;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use echovault::engine::{parse_device, EngineConfig, TemplateVocabArg, DEFAULT_FRAME_BATCH};
use echovault::hub;
use echovault::media::{ChannelOrder, FrameSampling};
use std::path::{Path, PathBuf};

/// Exit code: some inputs were rejected, the rest succeeded.
pub const EXIT_PARTIAL: i32 = 3;
/// Exit code: the command failed.
pub const EXIT_ERROR: i32 = 1;
/// Exit code: the command line was wrong.
pub const EXIT_USAGE: i32 = 2;

/// The exit code of a command over many inputs: 0 when none failed, 3 (partial) when some failed
/// and something succeeded, 1 when nothing did.
pub fn outcome(some_failed: bool, succeeded: bool) -> i32 {
    match (some_failed, succeeded) {
        (false, _) => 0,
        (true, true) => EXIT_PARTIAL,
        (true, false) => EXIT_ERROR,
    }
}

/// Where the sample model lives in a checkout, used when no --model is given.
const SAMPLE_MODEL: &str = "data-samples/echovault-tiny";

#[derive(Parser, Debug)]
#[command(
    name = "echovault",
    bin_name = "echovault",
    version,
    about = "Search echocardiograms by meaning (EchoCLIP embeddings in an embedded index)",
    after_help = "The index, model, device and frame options may also come before the subcommand \
                  (`echovault --index IDX --model DIR search ...`); one given after it wins.\n\n\
                  Examples:\n  echovault ingest /exports/echo --index ./echovault-index --model DIR\n  \
                  echovault search --text \"pacemaker lead in the right heart\" -k 10\n  \
                  echovault timeline --patient KEY"
)]
struct Cli {
    #[command(flatten)]
    top: AllOpts,
    #[command(flatten)]
    out: OutputOpts,
    #[command(subcommand)]
    command: Command,
}

/// Every option group. Accepted before the subcommand, for every subcommand that uses them
/// (scripts write `echovault --index IDX --model DIR --device cpu search ...`), and flattened
/// whole by the subcommands that embed videos into, or query, an index (ingest, search, serve,
/// reid).
#[derive(Args, Debug, Clone, Default)]
pub struct AllOpts {
    #[command(flatten)]
    pub index: IndexOpts,
    #[command(flatten)]
    pub space: SpaceOpts,
    #[command(flatten)]
    pub model: ModelOpts,
    #[command(flatten)]
    pub device: DeviceOpts,
    #[command(flatten)]
    pub image: ImageOpts,
    #[command(flatten)]
    pub frames: FramesOpts,
}

impl AllOpts {
    /// All six groups, as a subcommand that flattens them takes them.
    pub fn groups(&self) -> Groups<'_> {
        Groups {
            index: Some(&self.index),
            space: Some(&self.space),
            model: Some(&self.model),
            device: Some(&self.device),
            image: Some(&self.image),
            frames: Some(&self.frames),
        }
    }
}

/// Output options of every subcommand.
#[derive(Args, Debug, Clone, Default)]
pub struct OutputOpts {
    /// Print one JSON object instead of text (errors too: {"error": ...}).
    #[arg(long, global = true, help_heading = "Output")]
    pub json: bool,
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = "Output")]
    pub verbose: u8,
}

// Option groups. Each subcommand flattens the groups it uses, so its --help lists only those;
// the same groups are accepted before the subcommand (`AllOpts`). A new flag goes into the
// group of every command that uses it, or into one subcommand's own Args when only it does.

/// The index (commands that read or write one).
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Index")]
pub struct IndexOpts {
    /// Index directory (created on first ingest). Default: $ECHOVAULT_INDEX, else
    /// ./echovault-index.
    #[arg(long, value_name = "DIR")]
    pub index: Option<PathBuf>,
    /// Patient-key secret kept outside the index (64 hex digits; a new index writes a new
    /// secret there when the file does not exist). Default: $ECHOVAULT_SECRET_FILE, else the
    /// secret stored in the index.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
}

/// The embedding space of the index a command reads or fills.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Model")]
pub struct SpaceOpts {
    /// Embedding space name in the index (default: the model directory's name).
    #[arg(long)]
    pub space: Option<String>,
}

/// Which model (and tokenizer vocabulary) a command loads.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Model")]
pub struct ModelOpts {
    /// Model snapshot directory, or hf:OWNER/NAME[@REV]; repeat for several models.
    ///
    /// A snapshot directory holds open_clip_config.json, weights, tokenizer.json (a
    /// template_vocab.txt there makes it tokenise with EchoCLIP-R's phrase templates);
    /// hf:OWNER/NAME[@REV] is an open_clip repo on the Hugging Face hub (branch, tag or commit;
    /// default main) fetched into its cache (HF_HUB_CACHE / HF_HOME; HF_ENDPOINT, HF_TOKEN,
    /// HF_HUB_OFFLINE as huggingface_hub reads them).
    /// Default: $ECHOVAULT_MODEL, else the directory that filled the index's space (the index
    /// remembers it, with its checkpoint's hash: with one space, or the one --space names),
    /// else ./data-samples/echovault-tiny. Repeat it to ingest with
    /// several models in one run (e.g. EchoCLIP and EchoCLIP-R), each into the space named
    /// after its directory (a hub model: after the repo NAME). `search` embeds queries with the
    /// first; `zero-shot` uses the first CLIP-BPE model (EchoCLIP), `reid`, `timeline` and
    /// `eval` of similarity and retrieval the first template-tokenizer model (EchoCLIP-R), as
    /// the paper found best.
    #[arg(long, value_name = "DIR|hf:OWNER/NAME[@REV]", action = clap::ArgAction::Append)]
    pub model: Vec<PathBuf>,
    /// EchoCLIP-R template vocabulary for a model whose directory has none.
    ///
    /// One phrase per line, `<#>` = slot (e.g. the reference's template_vocab.txt). MODEL=FILE gives it to the
    /// model of that space name (directory name, or repo name of an hf: model); a plain FILE to
    /// the only --model, or to the one whose text tower is too small for CLIP BPE. A vocabulary
    /// that reaches no model is an error.
    #[arg(long, value_name = "[MODEL=]FILE")]
    pub template_vocab: Option<TemplateVocabArg>,
}

/// Where the model runs.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Model")]
pub struct DeviceOpts {
    /// Device for the model: auto (CUDA when available), cpu or cuda [default: auto].
    #[arg(long, value_parser = ["auto", "cpu", "cuda"])]
    pub device: Option<String>,
}

/// How frames are fed to the image tower.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Model")]
pub struct ImageOpts {
    /// Channel order fed to the image tower: bgr (the reference's) or rgb [default: bgr].
    #[arg(long)]
    pub channel_order: Option<ChannelOrder>,
    /// Frames per forward pass of the image tower [default: 32].
    #[arg(long, value_parser = positive)]
    pub batch: Option<usize>,
    /// Frames embedded per video at most; a cine whose --frames select more is thinned evenly
    /// (0: no bound) [default: 512].
    #[arg(long, value_name = "N")]
    pub max_frames: Option<usize>,
    /// Blank every pixel outside the ultrasound image before preprocessing (burned-in text,
    /// the ECG trace): outside-region (the DICOM ultrasound regions; auto where a file has
    /// none), auto (the sector found from motion), off [default: off].
    #[arg(long, value_name = "MODE")]
    pub mask: Option<echovault::media::MaskMode>,
}

/// Which frames of a video are embedded.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Model")]
pub struct FramesOpts {
    /// Frames embedded per video: all (retrieval preset), zero-shot (0..40 step 2) or
    /// START:END:STEP [default: all].
    #[arg(long, alias = "sampling", value_name = "all|zero-shot|START:END:STEP")]
    pub frames: Option<FrameSampling>,
}

/// A count that must be at least 1 (a usage error otherwise).
pub fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// The option groups a subcommand took, laid over those given before it.
#[derive(Default)]
pub struct Groups<'a> {
    pub index: Option<&'a IndexOpts>,
    pub space: Option<&'a SpaceOpts>,
    pub model: Option<&'a ModelOpts>,
    pub device: Option<&'a DeviceOpts>,
    pub image: Option<&'a ImageOpts>,
    pub frames: Option<&'a FramesOpts>,
}

/// The settings a subcommand runs with: its own options over those given before it, over the
/// environment, over the defaults.
#[derive(Debug, Clone)]
pub struct Global {
    /// Index directory.
    pub index: PathBuf,
    /// Patient-key secret file (`--secret-file`, else $ECHOVAULT_SECRET_FILE).
    pub secret_file: Option<PathBuf>,
    /// Models, first the primary (empty: $ECHOVAULT_MODEL or the sample model, see
    /// [`Global::engine_config`]).
    pub model: Vec<PathBuf>,
    pub space: Option<String>,
    pub template_vocab: Option<TemplateVocabArg>,
    pub device: String,
    pub channel_order: ChannelOrder,
    /// Frames embedded per video (default all).
    pub sampling: FrameSampling,
    /// `--frames` as given, for commands whose default is not `all`.
    pub frames_given: Option<FrameSampling>,
    pub batch: usize,
    /// Frames embedded per video at most (0: no bound).
    pub max_frames: usize,
    /// `--mask`.
    pub mask: echovault::media::MaskMode,
    pub json: bool,
    pub verbose: u8,
    /// Whether the command takes an index (and so may load the model that filled it).
    pub uses_index: bool,
}

impl Global {
    fn resolve(top: &AllOpts, out: &OutputOpts, sub: &Groups<'_>) -> Global {
        let index = sub.index.and_then(|o| o.index.clone()).or_else(|| top.index.index.clone());
        let index = index.or_else(|| std::env::var_os("ECHOVAULT_INDEX").filter(|v| !v.is_empty()).map(PathBuf::from));
        let mut model = sub.model.map(|o| o.model.clone()).unwrap_or_default();
        if model.is_empty() {
            model = top.model.model.clone();
        }
        if model.is_empty() {
            model.extend(std::env::var_os("ECHOVAULT_MODEL").filter(|v| !v.is_empty()).map(PathBuf::from));
        }
        let frames_given = sub.frames.and_then(|o| o.frames).or(top.frames.frames);
        Global {
            index: index.unwrap_or_else(|| PathBuf::from("echovault-index")),
            secret_file: echovault::pseudonym::secret_file(
                sub.index.and_then(|o| o.secret_file.as_deref()).or(top.index.secret_file.as_deref()),
            ),
            model,
            space: sub.space.and_then(|o| o.space.clone()).or_else(|| top.space.space.clone()),
            template_vocab: sub.model.and_then(|o| o.template_vocab.clone()).or_else(|| top.model.template_vocab.clone()),
            device: sub.device.and_then(|o| o.device.clone()).or_else(|| top.device.device.clone()).unwrap_or_else(|| "auto".into()),
            channel_order: sub.image.and_then(|o| o.channel_order).or(top.image.channel_order).unwrap_or(ChannelOrder::Bgr),
            sampling: frames_given.unwrap_or(FrameSampling::ALL),
            frames_given,
            batch: sub.image.and_then(|o| o.batch).or(top.image.batch).unwrap_or(DEFAULT_FRAME_BATCH),
            max_frames: sub.image.and_then(|o| o.max_frames).or(top.image.max_frames).unwrap_or(echovault::media::DEFAULT_MAX_FRAMES),
            mask: sub.image.and_then(|o| o.mask).or(top.image.mask).unwrap_or_default(),
            json: out.json,
            verbose: out.verbose,
            uses_index: sub.index.is_some(),
        }
    }

    /// Resolves the engine settings.
    pub fn engine_config(&self) -> anyhow::Result<EngineConfig> {
        let mut space = self.space.clone();
        let model_dir = match self.model.first() {
            Some(m) => resolve_model(m)?,
            None if self.uses_index && self.index.is_dir() => match echovault::engine::model_of_index(&self.index, space.as_deref())? {
                // The model that filled the index's space, under that space's name.
                Some(origin) => {
                    space = Some(origin.space);
                    origin.path
                }
                None => sample_model()?,
            },
            None => sample_model()?,
        };
        let extra_models: Vec<PathBuf> = self.model.iter().skip(1).map(|m| resolve_model(m)).collect::<anyhow::Result<_>>()?;
        let all: Vec<PathBuf> = std::iter::once(model_dir.clone()).chain(extra_models.iter().cloned()).collect();
        echovault::engine::check_template_vocab(&all, self.template_vocab.as_ref())?;
        Ok(EngineConfig {
            index_dir: self.index.clone(),
            secret_file: self.secret_file.clone(),
            model_dir,
            extra_models,
            space,
            device: parse_device(&self.device)?,
            channel_order: self.channel_order,
            sampling: self.sampling,
            frame_batch: self.batch,
            max_frames: self.max_frames,
            mask: self.mask,
            template_vocab: self.template_vocab.clone(),
            vectors: None,
        })
    }
}

/// A command line that parsed but does not make sense (exit 2, as clap's usage errors).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The environment variable a patient's own id (MRN) may be passed in: out of shell history and
/// `ps`. `timeline` falls back to it (saying so); `search` reads it only when asked
/// (`--patient-id env`), so that a value left in the environment never filters a search
/// silently.
pub const PATIENT_ID_ENV: &str = "ECHOVAULT_PATIENT_ID";

/// `--patient-id`: as given; `-` the first line of stdin; `env` $ECHOVAULT_PATIENT_ID. Without
/// the flag: $ECHOVAULT_PATIENT_ID when `env_fallback` (a note on stderr says so, without the
/// id), else none. The value is never printed: errors say what is wrong, not what was read.
pub fn patient_id_arg(arg: Option<&str>, env_fallback: bool) -> anyhow::Result<Option<String>> {
    let env = || std::env::var(PATIENT_ID_ENV).ok().filter(|v| !v.trim().is_empty());
    let raw = match arg {
        None if env_fallback => match env() {
            Some(v) => {
                print_note(&format!("the patient is ${PATIENT_ID_ENV}'s (keyed, never shown); --patient or --patient-id overrides it"));
                v
            }
            None => return Ok(None),
        },
        None => return Ok(None),
        Some("env") => env().with_context(|| format!("--patient-id env: ${PATIENT_ID_ENV} is not set (or empty)"))?,
        Some("-") => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("--patient-id -: reading the patient id from stdin")?;
            line
        }
        Some(s) => s.to_owned(),
    };
    let id = raw.trim();
    anyhow::ensure!(!id.is_empty(), "--patient-id: empty (give the id, `-` with the id on stdin, or `env` for ${PATIENT_ID_ENV})");
    Ok(Some(id.to_owned()))
}

/// The sample model of a checkout, used when no --model is given and no index remembers one.
fn sample_model() -> anyhow::Result<PathBuf> {
    let p = PathBuf::from(SAMPLE_MODEL);
    anyhow::ensure!(p.is_dir(), "no --model given and no {SAMPLE_MODEL} here: pass --model DIR (a snapshot directory)");
    Ok(p)
}

/// A model argument as a snapshot directory: `hf:OWNER/NAME[@REV]` is found in, or fetched
/// into, the Hugging Face cache; anything else is a directory already.
pub fn resolve_model(arg: &Path) -> anyhow::Result<PathBuf> {
    match arg.to_str().filter(|s| hub::is_hub_ref(s)) {
        Some(spec) => {
            let model: hub::HubModel = spec.parse()?;
            Ok(hub::resolve(&model, &hub::HubSettings::from_env()?)?)
        }
        None => Ok(arg.to_owned()),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Embed videos (and their reports) into the index.
    #[command(
        after_help = "Examples:\n  echovault ingest /exports/echo --index ./echovault-index --model DIR\n  echovault ingest /exports/echo --reports reports.csv --since 2024-01-01\n  echovault ingest /exports/echo --model ECHOCLIP --model ECHOCLIP_R"
    )]
    Ingest(ingest::IngestArgs),
    /// Find videos, reports or studies by text, by a video file, or like an indexed item.
    #[command(
        after_help = "Examples:\n  echovault search --text \"pacemaker lead in the right heart\" -k 10\n  echovault search --video query.avi --kind study --group-by patient\n  echovault search --id VIDEO_ID --patient KEY --since 2023-01-01"
    )]
    Search(search::SearchArgs),
    /// List the inputs whose last ingest failed, with reasons (exit 0).
    #[command(after_help = "Examples:\n  echovault errors --index ./echovault-index\n  echovault errors --json")]
    Errors(ingest::ErrorsArgs),
    /// Show what the index holds.
    #[command(after_help = "Examples:\n  echovault info --index ./echovault-index\n  echovault info --json")]
    Info(info::InfoArgs),
    /// Check the index; rebuild its graphs from the stored vectors, drop deleted and replaced
    /// vectors for good, write fresh graph snapshots.
    #[command(after_help = "Examples:\n  echovault repair --check\n  echovault repair --index ./echovault-index")]
    Repair(info::RepairArgs),
    /// Write the index's items and vectors (optionally frame embeddings) to a Parquet file,
    /// filtered as search filters; no model needed.
    #[command(
        after_help = "Examples:\n  echovault export --format parquet --out items.parquet --index ./echovault-index\n  echovault export --out videos.parquet --kind video --frames --since 2024-01-01\n  echovault export --out patient.parquet --patient-id - --with-paths"
    )]
    Export(export::ExportArgs),
    /// Build or extend the index from Parquet files `export` wrote (e.g. one per shard),
    /// checking each space's model and the patient-key secret; no model needed.
    #[command(
        after_help = "Examples:\n  echovault import shard-0.parquet shard-1.parquet --index ./echovault-index\n  echovault import items.parquet --secret-file secret.hex --json"
    )]
    Import(export::ImportArgs),
    /// Show what echovault reads from one DICOM or video file; dump its decoded frames as PNG.
    #[command(
        after_help = "Examples:\n  echovault inspect IM_0001.dcm --json\n  echovault inspect clip.avi --dump-frames frames/ --frames 0,5,9"
    )]
    Inspect(inspect::InspectArgs),
    /// Print the embedding of one text, image or video (check a model against its reference).
    #[command(
        after_help = "Examples:\n  echovault embed --text \"severe mitral regurgitation\" --json\n  echovault embed --video clip.avi --frames zero-shot --per-frame\n  echovault embed --image a.png b.png --model DIR"
    )]
    Embed(embed::EmbedArgs),
    /// Print the token ids the text tower sees for a text.
    #[command(
        after_help = "Examples:\n  echovault tokenize --text \"LVEF 35 %\" --json\n  echovault tokenize --template-vocab VOCAB.txt --text \"Mild mitral regurgitation.\""
    )]
    Tokenize(embed::TokenizeArgs),
    /// Measure image-embedding throughput on this device (random inputs).
    #[command(
        after_help = "Examples:\n  echovault bench-embed --batch 64 --precision bf16 --device cuda\n  echovault bench-embed --model DIR --iters 20 --json"
    )]
    BenchEmbed(bench::BenchArgs),
    /// Write synthetic echocardiograms with ground truth (EF, devices, events) and reports.
    #[command(
        after_help = "Examples:\n  echovault phantom --out phantoms --patients 50\n  echovault phantom --out small --patients 3 --size 64 --num-frames 12 --formats avi"
    )]
    Phantom(phantom::PhantomArgs),
    /// Train or fine-tune a model on video–report pairs (CLIP contrastive loss).
    #[command(
        after_help = "Examples:\n  echovault train --pairs phantoms/manifest.jsonl --init random --like CFG_DIR --out MODEL\n  echovault train --pairs pairs.jsonl --init hf:OWNER/NAME --out MODEL --steps 500 --device cuda"
    )]
    Train(train::TrainArgs),
    /// Zero-shot readings (LVEF, devices, ...) of video files or indexed videos from prompts.
    #[command(
        after_help = "Examples:\n  echovault zero-shot clip.avi --task ejection_fraction,pacemaker\n  echovault zero-shot --all-indexed --prompts prompts.json --store\n  echovault zero-shot --list-tasks"
    )]
    ZeroShot(tasks::ZeroShotArgs),
    /// Patient re-identification: the studies of other dates most like a video or study.
    #[command(after_help = "Examples:\n  echovault reid --id VIDEO_OR_STUDY_ID -k 5\n  echovault reid clip.dcm --same-date")]
    Reid(tasks::ReidArgs),
    /// A patient's studies in date order with their similarity to the previous study, or to the
    /// earliest study around an event; drops flagged.
    #[command(
        after_help = "Examples:\n  echovault timeline --patient KEY\n  echovault timeline --patient-id - --event 2023-07-22 --window 200 < mrn.txt"
    )]
    Timeline(tasks::TimelineArgs),
    /// Evaluate zero-shot readings, re-identification, transitions or retrieval against labels:
    /// a Markdown table (or JSON) with 95 % bootstrap intervals and the paper's figures.
    #[command(
        after_help = "Examples:\n  echovault eval zero-shot --manifest FileList.csv --split TEST\n  echovault eval reid --manifest videos.jsonl\n  echovault eval retrieval --markdown retrieval.md"
    )]
    Eval(tasks::EvalArgs),
    /// Serve the index over HTTP (JSON under /v1/): one process holds the models and the
    /// index, answers searches and tasks with the shapes of --json, and runs ingest jobs.
    #[command(
        after_help = "Examples:\n  echovault serve --listen 127.0.0.1:8080\n  echovault serve --listen 0.0.0.0:8080 --token TOKEN --prompts prompts.json"
    )]
    Serve(serve::ServeArgs),
}

/// A closed stdout (`echovault search … | head -1`) ends the process the way it ends `cat` and
/// `grep`: killed by SIGPIPE, which the shell reports as status 141, with nothing on stderr.
/// Rust starts programs with SIGPIPE ignored, so each `println!` into a closed pipe panicked
/// ("failed printing to stdout: Broken pipe", exit 101); restoring the default action at start
/// is the conventional fix for a CLI, and covers every print, not only those routed through one
/// output layer. Not for `serve`: a client that hangs up must cost the server one response, not
/// the process (its sockets then report EPIPE as an error, as Rust intends).
#[cfg(unix)]
#[allow(unsafe_code)]
fn quiet_on_closed_pipe() {
    // SAFETY: `signal` with SIG_DFL installs no handler code; it runs once, on the main thread,
    // before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn quiet_on_closed_pipe() {}

impl Command {
    /// The option groups this subcommand takes.
    fn groups(&self) -> Groups<'_> {
        match self {
            Command::Ingest(a) => a.groups(),
            Command::Search(a) => a.groups(),
            Command::Errors(a) => Groups { index: Some(&a.index), ..Groups::default() },
            Command::Info(a) => Groups { index: Some(&a.index), ..Groups::default() },
            Command::Repair(a) => Groups { index: Some(&a.index), ..Groups::default() },
            Command::Export(a) => a.groups(),
            Command::Import(a) => a.groups(),
            Command::Inspect(a) => Groups { index: Some(&a.index), ..Groups::default() },
            Command::Embed(a) => a.groups(),
            Command::Tokenize(a) => a.groups(),
            Command::BenchEmbed(a) => a.groups(),
            Command::Phantom(_) => Groups::default(),
            Command::Train(a) => a.groups(),
            Command::ZeroShot(a) => a.groups(),
            Command::Reid(a) => a.groups(),
            Command::Timeline(a) => a.groups(),
            Command::Eval(a) => a.groups(),
            Command::Serve(a) => a.groups(),
        }
    }
}

/// Parses the command line, runs it, returns the exit code (the engine binary,
/// `src/bin/echovault-engine.rs`, which links LibTorch: every command).
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    let g = Global::resolve(&cli.top, &cli.out, &cli.command.groups());
    start(&g, &cli.command);
    let result = match &cli.command {
        Command::Ingest(a) => ingest::run(&g, a),
        Command::Search(a) => search::run(&g, a),
        Command::Errors(a) => ingest::run_errors(&g, a),
        Command::Info(_) => info::run(&g),
        Command::Repair(a) => info::run_repair(&g, a),
        Command::Export(a) => export::run_export(&g, a),
        Command::Import(a) => export::run_import(&g, a),
        Command::Inspect(a) => inspect::run(&g, a),
        Command::Embed(a) => embed::run_embed(&g, a),
        Command::Tokenize(a) => embed::run_tokenize(&g, a),
        Command::BenchEmbed(a) => bench::run(&g, a),
        Command::Phantom(a) => phantom::run(&g, a),
        Command::Train(a) => train::run(&g, a),
        Command::ZeroShot(a) => tasks::run_zero_shot(&g, a),
        Command::Reid(a) => tasks::run_reid(&g, a),
        Command::Timeline(a) => tasks::run_timeline(&g, a),
        Command::Eval(a) => tasks::run_eval(&g, a),
        Command::Serve(a) => serve::run(&g, a),
    };
    exit_code(result, &g)
}

/// The front binary (`echovault`, `src/main.rs`), which does not link LibTorch: parses the
/// command line (so `--help`, `--version` and usage errors never load it), runs the commands
/// that load no model itself, and calls `engine` for every other one (it `exec`s the engine
/// binary with the same arguments). A command added here must reach no LibTorch code:
/// tests/startup.rs checks that the front binary has no LibTorch library among its NEEDED
/// entries. Used only by the front binary; the engine's copy of this module leaves it unused.
#[allow(dead_code)]
pub fn run_front(engine: impl FnOnce() -> i32) -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    if !matches!(
        cli.command,
        Command::Errors(_)
            | Command::Info(_)
            | Command::Repair(_)
            | Command::Export(_)
            | Command::Import(_)
            | Command::Inspect(_)
            | Command::Phantom(_)
    ) {
        return engine();
    }
    let g = Global::resolve(&cli.top, &cli.out, &cli.command.groups());
    start(&g, &cli.command);
    let result = match &cli.command {
        Command::Errors(a) => ingest::run_errors(&g, a),
        Command::Info(_) => info::run(&g),
        Command::Repair(a) => info::run_repair(&g, a),
        Command::Export(a) => export::run_export(&g, a),
        Command::Import(a) => export::run_import(&g, a),
        Command::Inspect(a) => inspect::run(&g, a),
        Command::Phantom(a) => phantom::run(&g, a),
        _ => return engine(),
    };
    exit_code(result, &g)
}

/// Logging, and the default SIGPIPE action for every command but `serve`.
fn start(g: &Global, command: &Command) {
    init_logging(g.verbose);
    if !matches!(command, Command::Serve(_)) {
        quiet_on_closed_pipe();
    }
}

/// A command's outcome as the exit code, its error reported (2 for a [`UsageError`], else 1).
fn exit_code(result: anyhow::Result<i32>, g: &Global) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            report_error(&e, g.json);
            if e.downcast_ref::<UsageError>().is_some() {
                EXIT_USAGE
            } else {
                EXIT_ERROR
            }
        }
    }
}

/// A command line clap refused (or --help / --version, which clap prints): exit 2, the message
/// on stderr, or with --json as `{"error": ..., "usage": true}` on stdout.
fn usage_error(e: &clap::Error) -> i32 {
    if !e.use_stderr() {
        let _ = e.print();
        return 0;
    }
    let json = std::env::args_os().skip(1).take_while(|a| a != "--").any(|a| a == "--json");
    if json {
        let text = e.render().to_string();
        let msg = text.lines().next().unwrap_or_default().trim_start_matches("error: ").to_owned();
        println!("{}", serde_json::json!({ "error": msg, "usage": true, "help": text.trim_end() }));
    } else {
        let _ = e.print();
    }
    EXIT_USAGE
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        // Hub downloads say what they fetch: a first run may take minutes.
        0 => "warn,video_rs=error,echovault::hub=info",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ECHOVAULT_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only for a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).with_target(false).try_init();
}

/// An error with its causes, `outer: cause: …`, each cause once: a cause whose text the message
/// already holds (an io error a library error quotes) is not repeated.
fn error_text(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for c in e.chain() {
        let text = c.to_string();
        if s.contains(&text) {
            continue;
        }
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&text);
    }
    s
}

fn report_error(e: &anyhow::Error, json: bool) {
    let msg = error_text(e);
    if json {
        println!("{}", serde_json::json!({ "error": msg }));
    }
    tracing::debug!("{msg}");
    if !json {
        print_error(&msg);
    }
}

/// The one place the CLI writes to stderr directly: the user must see why a command failed
/// whatever the log filter says.
#[allow(clippy::print_stderr)]
fn print_error(msg: &str) {
    eprintln!("error: {msg}");
}

/// A note the user must see whatever the log filter says (e.g. that a value came from the
/// environment), on stderr.
#[allow(clippy::print_stderr)]
pub fn print_note(msg: &str) {
    eprintln!("note: {msg}");
}

/// Opens the engine as the index's writer (ingest, the server), with a readable context on
/// failure.
pub fn open_engine(g: &Global) -> anyhow::Result<echovault::Engine> {
    open_engine_with(&g.engine_config()?)
}

/// [`open_engine`] with the engine settings given.
pub fn open_engine_with(cfg: &EngineConfig) -> anyhow::Result<echovault::Engine> {
    echovault::Engine::open(cfg)
        .with_context(|| format!("opening index {} with model {}", cfg.index_dir.display(), cfg.model_dir.display()))
}

/// Opens the engine as a reader of the index (every command that only reads: it works while
/// another process writes, and changes nothing), with a readable context on failure.
pub fn open_reader_engine(g: &Global) -> anyhow::Result<echovault::Engine> {
    let cfg = g.engine_config()?;
    echovault::Engine::open_reader(&cfg)
        .with_context(|| format!("reading index {} with model {}", cfg.index_dir.display(), cfg.model_dir.display()))
}
