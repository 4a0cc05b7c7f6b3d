//! `echovault serve [--listen ADDR] [--token TOKEN]`: parses the server's settings, opens the
//! engine as `ingest` does (the server writes: ingest jobs), and hands both to
//! [`echovault::serve::serve`]. The web viewer is at `http://ADDR/`.

use super::{open_engine, AllOpts, Global, Groups};
use anyhow::Context;
use clap::Args;
use echovault::serve::{
    ServeConfig, TaskModels, DEFAULT_LISTEN, DEFAULT_MAX_BODY, DEFAULT_MAX_UPLOAD, DEFAULT_TEXT_CACHE, DEFAULT_THUMB_CACHE_MB,
};
use echovault::tasks::context::{pick, Prefer};
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on, HOST:PORT (port 0: any free port; the bound address is printed).
    /// Anything but a loopback address needs --token.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Bearer token: required by the admin endpoints (ingest jobs), and by every request when
    /// the server listens off loopback. Clients send 'Authorization: Bearer TOKEN'.
    #[arg(long, env = "ECHOVAULT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Largest JSON request body, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY)]
    max_body: usize,
    /// Largest multipart upload (a video, a manifest), in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_UPLOAD)]
    max_upload: usize,
    /// Query texts whose embeddings are kept (least recently used dropped first; 0: none).
    #[arg(long, default_value_t = DEFAULT_TEXT_CACHE)]
    text_cache: usize,
    /// Engine calls (searches, embeddings, tasks) run at once; more wait their turn (0: two
    /// per core, at least 4).
    #[arg(long, default_value_t = 0)]
    engine_threads: usize,
    /// Show source file paths in the web viewer (they often carry patient names or MRNs:
    /// off by default).
    #[arg(long)]
    show_paths: bool,
    /// Crop uploaded DICOM cines (search by video file) to their ultrasound region, as
    /// `ingest --crop-region` does; ingest jobs take their own `crop_region` field.
    #[arg(long)]
    crop_region: bool,
    /// Prompt file for zero-shot requests that name none, the viewer's readings among them
    /// (default: the built-in prompts).
    #[arg(long, value_name = "FILE")]
    prompts: Option<PathBuf>,
    /// Disk budget of the viewer's thumbnail cache (under the index directory), MiB; 0 keeps
    /// no thumbnails.
    #[arg(long, default_value_t = DEFAULT_THUMB_CACHE_MB, value_name = "MIB")]
    thumb_cache_mb: u64,
    /// Thumbnails made at once (each decodes a cine; at most 16 of its frames are held).
    #[arg(long, default_value_t = 2)]
    thumb_threads: usize,
    #[command(flatten)]
    pub opts: AllOpts,
}

impl ServeArgs {
    pub fn groups(&self) -> Groups<'_> {
        self.opts.groups()
    }
}

pub fn run(g: &Global, a: &ServeArgs) -> anyhow::Result<i32> {
    let listen = resolve(&a.listen)?;
    let engine_threads = match a.engine_threads {
        0 => std::thread::available_parallelism().map_or(4, |n| n.get() * 2).max(4),
        n => n,
    };
    let cfg = g.engine_config()?;
    let models: Vec<PathBuf> = std::iter::once(cfg.model_dir.clone()).chain(cfg.extra_models.iter().cloned()).collect();
    let vocab = cfg.template_vocab.as_ref();
    let models = TaskModels { zero_shot: pick(&models, vocab, Prefer::ZeroShot), similarity: pick(&models, vocab, Prefer::Similarity) };
    let config = ServeConfig {
        listen,
        token: a.token.clone(),
        max_body: a.max_body,
        max_upload: a.max_upload,
        text_cache: a.text_cache,
        engine_threads,
        models,
        show_paths: a.show_paths,
        prompts: a.prompts.clone(),
        thumb_cache_bytes: a.thumb_cache_mb.saturating_mul(1 << 20),
        thumb_threads: a.thumb_threads,
    };
    if let Some(p) = &config.prompts {
        // A prompt file that does not parse is refused now, not at the first reading.
        echovault::tasks::readings::list_tasks(Some(p))?;
    }
    // Refuse an exposed address before minutes of model loading.
    config.check()?;
    let mut engine = open_engine(g)?;
    engine.crop_regions = a.crop_region;
    let space = engine.space_name.clone();
    echovault::serve::serve(engine, config, |addr| {
        // One parseable line on stdout: scripts and tests learn the port from it.
        println!("echovault serve: listening on http://{addr} (index {}, space {space})", g.index.display());
        let _ = std::io::stdout().flush();
    })?;
    Ok(0)
}

/// HOST:PORT → the first address it resolves to.
fn resolve(listen: &str) -> anyhow::Result<SocketAddr> {
    listen
        .to_socket_addrs()
        .with_context(|| format!("--listen {listen}: give HOST:PORT, e.g. {DEFAULT_LISTEN}"))?
        .next()
        .with_context(|| format!("--listen {listen}: resolves to no address"))
}
