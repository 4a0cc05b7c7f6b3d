//! `echovault serve [--listen ADDR] [--token TOKEN]`: parses the server's settings, opens the
//! engine as `ingest` does (the server writes: ingest jobs), and hands both to
//! [`echovault::serve::serve`].

use super::{open_engine, Global};
use anyhow::Context;
use clap::Args;
use echovault::serve::{ServeConfig, TaskModels, DEFAULT_LISTEN, DEFAULT_MAX_BODY, DEFAULT_MAX_UPLOAD, DEFAULT_TEXT_CACHE};
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
    };
    // Refuse an exposed address before minutes of model loading.
    config.check()?;
    let engine = open_engine(g)?;
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
