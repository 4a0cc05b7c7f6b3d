//! What every request handler shares: the engine (models and index, opened once), the
//! settings, metrics, the query-text cache and the ingest jobs; and the one way handlers call
//! into the engine, on the blocking pool.

use super::cache::TextCache;
use super::error::ApiError;
use super::jobs::Jobs;
use super::metrics::Metrics;
use super::ServeConfig;
use crate::engine::Engine;
use crate::error::Error;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// Shared by every handler (cheap to clone).
#[derive(Clone, Debug)]
pub struct AppState {
    /// Models and index. `Engine` is `Sync`: searches run concurrently; each model tower runs
    /// one forward pass at a time.
    pub engine: Arc<Engine>,
    /// Settings.
    pub config: Arc<ServeConfig>,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// Query-text embeddings.
    pub text_cache: Arc<TextCache>,
    /// Ingest jobs.
    pub jobs: Arc<Jobs>,
    /// Bounds the engine calls running at once (each holds a blocking-pool thread).
    pub engine_slots: Arc<Semaphore>,
    /// When the server started.
    pub started: Instant,
    /// The viewer's thumbnail cache.
    pub thumbs: Arc<super::viewer::thumbs::Thumbs>,
    /// Bounds the thumbnails being made at once.
    pub thumb_slots: Arc<Semaphore>,
}

/// Runs `f` on the blocking pool holding one of `slots`' permits until `f` returns: the permit
/// moves into the blocking task, so a client that disconnects (dropping the handler's future)
/// does not free the slot while `f` still runs.
async fn in_slot<T, F>(slots: &Arc<Semaphore>, f: F) -> Result<Result<T, tokio::task::JoinError>, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let slot = slots.clone().acquire_owned().await.map_err(|_| ApiError::internal("the server is shutting down"))?;
    Ok(tokio::task::spawn_blocking(move || {
        let _slot = slot;
        f()
    })
    .await)
}

impl AppState {
    /// Runs `f` on the blocking pool (model forward passes and index reads block), at most
    /// [`ServeConfig::engine_threads`] at once.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
    {
        let st = self.clone();
        match in_slot(&self.engine_slots, move || f(&st)).await? {
            Ok(r) => r,
            Err(e) if e.is_panic() => Err(ApiError::internal("the request's worker panicked (a bug: please report it)")),
            Err(_) => Err(ApiError::internal("the request's worker was cancelled")),
        }
    }

    /// The primary model's embedding of a query text, from the cache when it holds it.
    pub fn embed_text(&self, text: &str) -> Result<Vec<f32>, Error> {
        if let Some(v) = self.text_cache.get(text) {
            self.metrics.text_cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(v.as_ref().clone());
        }
        self.metrics.text_cache_misses.fetch_add(1, Ordering::Relaxed);
        let v = self.engine.embed_text(text)?;
        self.text_cache.put(text, Arc::new(v.clone()));
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_dropped_request_keeps_its_slot_until_the_work_ends() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let slots = Arc::new(Semaphore::new(1));
        let (release, wait) = mpsc::channel::<()>();
        let (started, is_started) = mpsc::channel::<()>();
        let handler = rt.spawn({
            let slots = slots.clone();
            async move {
                let _ = in_slot(&slots, move || {
                    started.send(()).unwrap();
                    wait.recv().ok();
                })
                .await;
            }
        });
        is_started.recv_timeout(Duration::from_secs(10)).unwrap();
        // The client goes away: the handler's future is dropped, the blocking work goes on.
        handler.abort();
        rt.block_on(async { assert!(handler.await.unwrap_err().is_cancelled()) });
        assert_eq!(slots.available_permits(), 0, "the slot was freed while its work still runs");
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while slots.available_permits() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(slots.available_permits(), 1);
    }
}
