//! `echovault serve`: one process holds the models and the index (opened once, as the writer)
//! and answers JSON over HTTP under `/v1/`, with the same shapes as the CLI's `--json`: the
//! handlers parse requests into the library's request types, call the same library functions
//! the CLI calls, and return their typed results.
//!
//! - [`api`]: the endpoints.
//! - [`jobs`]: ingest jobs (one at a time, resumed after a restart); `repair` is the other
//!   admin endpoint.
//! - [`auth`]: bearer tokens (loopback: admin endpoints only; elsewhere every request).
//! - [`body`], [`upload`], [`limit`]: strict request bodies, multipart uploads, body limits.
//! - [`metrics`], [`observe`]: Prometheus counters and histograms, the request log.
//! - [`cache`]: the query-text embedding cache.
//!
//! Model forward passes and index reads run on tokio's blocking pool, at most
//! [`ServeConfig::engine_threads`] at once. On SIGTERM or SIGINT the server stops accepting
//! connections, answers the requests it has, lets the running ingest job commit what is in
//! flight, and returns.

mod api;
mod auth;
mod body;
mod cache;
mod error;
pub mod jobs;
mod limit;
mod metrics;
mod observe;
mod state;
mod upload;
pub mod viewer;

pub use error::ApiError;

use crate::engine::Engine;
use crate::error::Error;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;
use state::AppState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Address the server binds when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";
/// Largest JSON request body (a search by a 512-d vector is ~10 KB; a manifest sent as JSON
/// can be larger).
pub const DEFAULT_MAX_BODY: usize = 4 << 20;
/// Largest multipart upload (a video or a manifest).
pub const DEFAULT_MAX_UPLOAD: usize = 512 << 20;
/// Query texts whose embeddings are cached.
pub const DEFAULT_TEXT_CACHE: usize = 4096;
/// Disk budget of the viewer's thumbnail cache, MiB.
pub const DEFAULT_THUMB_CACHE_MB: u64 = 1024;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Address to bind (port 0: any free port).
    pub listen: SocketAddr,
    /// Bearer token: required for admin endpoints, and for every request off loopback.
    pub token: Option<String>,
    /// Largest JSON body, bytes.
    pub max_body: usize,
    /// Largest multipart upload, bytes.
    pub max_upload: usize,
    /// Query texts whose embeddings are cached (0: none).
    pub text_cache: usize,
    /// Engine calls (searches, embeddings, tasks) running at once; more wait their turn.
    pub engine_threads: usize,
    /// The engine's model (index into its embedders) zero-shot readings use, and the one
    /// re-identification, timelines and similarity evaluations use: as the CLI picks them
    /// ([`crate::tasks::context::pick`]).
    pub models: TaskModels,
    /// Whether the viewer shows source paths (they often carry patient names or MRNs).
    pub show_paths: bool,
    /// The prompt file zero-shot requests that name none use (None: the built-in one).
    pub prompts: Option<std::path::PathBuf>,
    /// Disk budget of the thumbnail cache, bytes (0: thumbnails are not kept).
    pub thumb_cache_bytes: u64,
    /// Thumbnails made at once (each decodes a cine).
    pub thumb_threads: usize,
}

/// Which of the engine's models each kind of task uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskModels {
    /// Zero-shot readings (EchoCLIP).
    pub zero_shot: usize,
    /// Re-identification, timelines, transitions, retrieval (EchoCLIP-R).
    pub similarity: usize,
}

impl ServeConfig {
    /// Refuses settings that would expose the archive: off loopback a token is required.
    pub fn check(&self) -> Result<(), Error> {
        if self.token.as_deref().is_some_and(str::is_empty) {
            return Err(Error::Invalid("--token: empty; give a secret string (or leave it out on loopback)".into()));
        }
        if !self.listen.ip().is_loopback() && self.token.is_none() {
            return Err(Error::Invalid(format!(
                "--listen {}: not a loopback address, so anyone who can reach it could read the archive; give --token TOKEN (or set ECHOVAULT_TOKEN) and send it as 'Authorization: Bearer TOKEN'",
                self.listen
            )));
        }
        if self.max_body == 0 || self.max_upload == 0 || self.engine_threads == 0 || self.thumb_threads == 0 {
            return Err(Error::Invalid("--max-body, --max-upload, --engine-threads and --thumb-threads must be at least 1".into()));
        }
        Ok(())
    }
}

/// Serves `engine` until SIGTERM or SIGINT. `ready` is called with the bound address once the
/// server accepts connections (the CLI prints it).
pub fn serve(engine: Engine, config: ServeConfig, ready: impl FnOnce(SocketAddr)) -> Result<(), Error> {
    config.check()?;
    let engine = Arc::new(engine);
    let metrics = Arc::new(metrics::Metrics::default());
    let jobs = Arc::new(jobs::Jobs::load(engine.clone(), metrics.clone())?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("echovault-serve")
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start the server's runtime: {e}")))?;
    let thumbs = Arc::new(viewer::thumbs::Thumbs::new(engine.index.path(), config.thumb_cache_bytes));
    let state = AppState {
        thumbs,
        thumb_slots: Arc::new(tokio::sync::Semaphore::new(config.thumb_threads)),
        engine,
        text_cache: Arc::new(cache::TextCache::new(config.text_cache)),
        engine_slots: Arc::new(tokio::sync::Semaphore::new(config.engine_threads)),
        config: Arc::new(config),
        metrics,
        jobs: jobs.clone(),
        started: Instant::now(),
    };
    let listen = state.config.listen;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(listen)).map_err(|e| Error::io(listen.to_string(), e))?;
    let bound = listener.local_addr().map_err(|e| Error::io(listen.to_string(), e))?;
    // Jobs start once the address is ours: a server that cannot bind resumes nothing.
    let runner = {
        let jobs = jobs.clone();
        std::thread::Builder::new()
            .name("echovault-ingest-jobs".into())
            .spawn(move || jobs.run())
            .map_err(|e| Error::Invalid(format!("cannot start the ingest-job thread: {e}")))?
    };
    ready(bound);
    let served = runtime.block_on(async {
        axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await.map_err(|e| Error::io(bound.to_string(), e))
    });
    // Whether serving ended by a signal or an error: stop the jobs, let the running one commit.
    jobs.shutdown();
    if runner.join().is_err() {
        tracing::warn!("the ingest-job thread panicked");
    }
    served
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!(target: "echovault::serve", "shutting down: finishing requests and the running ingest batch");
}

/// The routes. Uploads (search by video, eval of an uploaded manifest) get the upload limit,
/// everything else the JSON limit.
fn router(state: AppState) -> Router {
    let (max_body, max_upload) = (state.config.max_body, state.config.max_upload);
    // axum's own limit (which refuses mid-body) is replaced by `limit::cap_body` (which drains).
    let cap = |limit: usize, option: &'static str| from_fn_with_state((limit, option), limit::cap_body);
    let uploads = Router::new()
        .route("/v1/search", post(api::search::search))
        .route("/v1/zero-shot", post(api::tasks::zero_shot))
        .route("/v1/reid", post(api::tasks::reid))
        .route("/v1/eval", post(api::tasks::eval))
        .layer(cap(max_upload, "--max-upload"))
        .layer(DefaultBodyLimit::disable());
    let admin = Router::new()
        .route("/v1/ingest", post(api::ingest::submit).get(api::ingest::list))
        .route("/v1/ingest/{job}", get(api::ingest::get))
        .route("/v1/repair", post(api::repair::repair))
        .route_layer(from_fn_with_state(state.clone(), auth::require_admin))
        .layer(cap(max_body, "--max-body"))
        .layer(DefaultBodyLimit::disable());
    let plain = Router::new()
        .route("/v1/health", get(api::index::health))
        .route("/v1/info", get(api::index::info))
        .route("/v1/metrics", get(api::index::metrics))
        .route("/v1/items/{id}", get(api::items::item))
        .route("/v1/studies/{id}", get(api::items::study))
        .route("/v1/patients", get(api::items::patients))
        .route("/v1/patients/{key}", get(api::tasks::patient))
        .route("/v1/timeline", post(api::tasks::timeline))
        .merge(viewer::api())
        .layer(cap(max_body, "--max-body"))
        .layer(DefaultBodyLimit::disable());
    let api = Router::new()
        .merge(uploads)
        .merge(admin)
        .merge(plain)
        .fallback(api::index::no_route)
        .method_not_allowed_fallback(api::index::wrong_method)
        .layer(from_fn_with_state(state.clone(), auth::require_token_off_loopback));
    // The viewer's pages and assets hold no data: no token, even off loopback.
    Router::new().merge(viewer::pages()).merge(api).layer(from_fn_with_state(state.clone(), observe::observe)).with_state(state)
}
