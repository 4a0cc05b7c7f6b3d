//! Command line: clap arguments, one module per subcommand. Parses and resolves settings, then
//! calls the library. Human output goes to stdout, logs to stderr (`tracing`); `--json` prints
//! one JSON object on stdout. Exit codes: 0 ok, 1 error, 2 usage, 3 partial success.

mod bench;
mod embed;
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

/// Where the sample model lives in a checkout, used when no --model is given.
const SAMPLE_MODEL: &str = "data-samples/echovault-tiny";

#[derive(Parser, Debug)]
#[command(name = "echovault", version, about = "Search echocardiograms by meaning (EchoCLIP embeddings in an embedded index)")]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Index directory (created on first ingest).
    #[arg(long, global = true, env = "ECHOVAULT_INDEX", default_value = "echovault-index")]
    pub index: PathBuf,
    /// Model snapshot directory (open_clip_config.json, weights, tokenizer.json; a
    /// template_vocab.txt there makes it tokenise with EchoCLIP-R's phrase templates), or
    /// hf:OWNER/NAME[@REV], an open_clip repo on the Hugging Face hub (branch, tag or commit;
    /// default main) fetched into its cache (HF_HUB_CACHE / HF_HOME; HF_ENDPOINT, HF_TOKEN,
    /// HF_HUB_OFFLINE as huggingface_hub reads them).
    /// Default: $ECHOVAULT_MODEL, else ./data-samples/echovault-tiny. Repeat it to ingest with
    /// several models in one run (e.g. EchoCLIP and EchoCLIP-R), each into the space named
    /// after its directory (a hub model: after the repo NAME). `search` embeds queries with the
    /// first; `zero-shot` uses the first CLIP-BPE model (EchoCLIP), `reid`, `timeline` and
    /// `eval` of similarity and retrieval the first template-tokenizer model (EchoCLIP-R), as
    /// the paper found best.
    #[arg(long, global = true, env = "ECHOVAULT_MODEL", action = clap::ArgAction::Append)]
    pub model: Vec<PathBuf>,
    /// Embedding space name in the index (default: the model directory's name).
    #[arg(long, global = true)]
    pub space: Option<String>,
    /// EchoCLIP-R template vocabulary (one phrase per line, `<#>` = slot; e.g. the reference's
    /// template_vocab.txt) for a model whose directory has none. MODEL=FILE gives it to the
    /// model of that space name (directory name, or repo name of an hf: model); a plain FILE to
    /// the only --model, or to the one whose text tower is too small for CLIP BPE. A vocabulary
    /// that reaches no model is an error.
    #[arg(long, global = true, value_name = "[MODEL=]FILE")]
    pub template_vocab: Option<TemplateVocabArg>,
    /// Device for the model: auto (CUDA when available), cpu or cuda.
    #[arg(long, global = true, default_value = "auto")]
    pub device: String,
    /// Channel order fed to the image tower: bgr (the reference's, default) or rgb.
    #[arg(long, global = true, default_value = "bgr")]
    pub channel_order: ChannelOrder,
    /// Frames embedded per video: all (retrieval preset), zero-shot (0..40 step 2) or START:END:STEP.
    #[arg(long, global = true, default_value = "all")]
    pub sampling: FrameSampling,
    /// Frames per forward pass of the image tower.
    #[arg(long, global = true, default_value_t = DEFAULT_FRAME_BATCH)]
    pub batch: usize,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Global {
    /// Resolves the engine settings.
    pub fn engine_config(&self) -> anyhow::Result<EngineConfig> {
        let model_dir = match self.model.first() {
            Some(m) => resolve_model(m)?,
            None => {
                let p = PathBuf::from(SAMPLE_MODEL);
                anyhow::ensure!(p.is_dir(), "no --model given and no {SAMPLE_MODEL} here: pass --model DIR (a snapshot directory)");
                p
            }
        };
        let extra_models: Vec<PathBuf> = self.model.iter().skip(1).map(|m| resolve_model(m)).collect::<anyhow::Result<_>>()?;
        let all: Vec<PathBuf> = std::iter::once(model_dir.clone()).chain(extra_models.iter().cloned()).collect();
        echovault::engine::check_template_vocab(&all, self.template_vocab.as_ref())?;
        Ok(EngineConfig {
            index_dir: self.index.clone(),
            model_dir,
            extra_models,
            space: self.space.clone(),
            device: parse_device(&self.device)?,
            channel_order: self.channel_order,
            sampling: self.sampling,
            frame_batch: self.batch,
            template_vocab: self.template_vocab.clone(),
        })
    }
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
    Ingest(ingest::IngestArgs),
    /// Find videos, reports or studies by text, by a video file, or like an indexed item.
    Search(search::SearchArgs),
    /// List the inputs whose last ingest failed, with reasons (exit 0).
    Errors(ingest::ErrorsArgs),
    /// Show what the index holds.
    Info,
    /// Check the index; rebuild its graphs from the stored vectors, drop deleted and replaced
    /// vectors for good, write fresh graph snapshots.
    Repair(info::RepairArgs),
    /// Show what echovault reads from one DICOM or video file; dump its decoded frames as PNG.
    Inspect(inspect::InspectArgs),
    /// Print the embedding of one text, image or video (check a model against its reference).
    Embed(embed::EmbedArgs),
    /// Print the token ids the text tower sees for a text.
    Tokenize(embed::TokenizeArgs),
    /// Measure image-embedding throughput on this device (random inputs).
    BenchEmbed(bench::BenchArgs),
    /// Write synthetic echocardiograms with ground truth (EF, devices, events) and reports.
    Phantom(phantom::PhantomArgs),
    /// Train or fine-tune a model on video–report pairs (CLIP contrastive loss).
    Train(train::TrainArgs),
    /// Zero-shot readings (LVEF, devices, ...) of video files or indexed videos from prompts.
    ZeroShot(tasks::ZeroShotArgs),
    /// Patient re-identification: the studies of other dates most like a video or study.
    Reid(tasks::ReidArgs),
    /// A patient's studies in date order with their similarity to the previous study, or to the
    /// earliest study around an event; drops flagged.
    Timeline(tasks::TimelineArgs),
    /// Evaluate zero-shot readings, re-identification, transitions or retrieval against labels:
    /// a Markdown table (or JSON) with 95 % bootstrap intervals and the paper's figures.
    Eval(tasks::EvalArgs),
    /// Serve the index over HTTP (JSON under /v1/): one process holds the models and the
    /// index, answers searches and tasks with the shapes of --json, and runs ingest jobs.
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

/// Parses the command line, runs it, returns the exit code.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    init_logging(cli.global.verbose);
    if !matches!(cli.command, Command::Serve(_)) {
        quiet_on_closed_pipe();
    }
    let result = match &cli.command {
        Command::Ingest(a) => ingest::run(&cli.global, a),
        Command::Search(a) => search::run(&cli.global, a),
        Command::Errors(a) => ingest::run_errors(&cli.global, a),
        Command::Info => info::run(&cli.global),
        Command::Repair(a) => info::run_repair(&cli.global, a),
        Command::Inspect(a) => inspect::run(&cli.global, a),
        Command::Embed(a) => embed::run_embed(&cli.global, a),
        Command::Tokenize(a) => embed::run_tokenize(&cli.global, a),
        Command::BenchEmbed(a) => bench::run(&cli.global, a),
        Command::Phantom(a) => phantom::run(&cli.global, a),
        Command::Train(a) => train::run(&cli.global, a),
        Command::ZeroShot(a) => tasks::run_zero_shot(&cli.global, a),
        Command::Reid(a) => tasks::run_reid(&cli.global, a),
        Command::Timeline(a) => tasks::run_timeline(&cli.global, a),
        Command::Eval(a) => tasks::run_eval(&cli.global, a),
        Command::Serve(a) => serve::run(&cli.global, a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            report_error(&e, cli.global.json);
            1
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        // Hub downloads say what they fetch: a first run may take minutes.
        0 => "warn,video_rs=error,echovault::hub=info",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ECHOVAULT_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

fn report_error(e: &anyhow::Error, json: bool) {
    let msg = format!("{e:#}");
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

/// Opens the engine as the index's writer (ingest, the server), with a readable context on
/// failure.
pub fn open_engine(g: &Global) -> anyhow::Result<echovault::Engine> {
    let cfg = g.engine_config()?;
    echovault::Engine::open(&cfg)
        .with_context(|| format!("opening index {} with model {}", cfg.index_dir.display(), cfg.model_dir.display()))
}

/// Opens the engine as a reader of the index (every command that only reads: it works while
/// another process writes, and changes nothing), with a readable context on failure.
pub fn open_reader_engine(g: &Global) -> anyhow::Result<echovault::Engine> {
    let cfg = g.engine_config()?;
    echovault::Engine::open_reader(&cfg)
        .with_context(|| format!("reading index {} with model {}", cfg.index_dir.display(), cfg.model_dir.display()))
}
