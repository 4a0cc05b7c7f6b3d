//! Ingest jobs of the server: `echovault ingest` run on server-side paths while the server
//! goes on answering searches.
//!
//! Jobs run one at a time, in the order they were submitted, on a thread of their own (the
//! ingest pipeline's stages are threads; its embedding runs on that thread). The job list is
//! kept in the index itself (ingest-log key [`JOBS_KEY`], one synced write whenever a job is
//! submitted, started or ended), so a server killed mid-job finds the job unfinished when it
//! starts again and runs it again: the index's ingest log makes that run skip what the killed
//! one had committed, so the index ends as an uninterrupted run leaves it. On SIGTERM the
//! running job stops feeding the pipeline, writes and commits what is in flight and is marked
//! `interrupted`; it, and the jobs still queued, resume at the next start.

use super::error::ApiError;
use super::metrics::Metrics;
use crate::engine::Engine;
use crate::ingest::{ingest, IngestOptions, Progress};
use echovault_index::StudyDate;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Ingest-log key under which the server keeps its job list. Changing it makes a server forget
/// the jobs an older one left unfinished.
pub const JOBS_KEY: &str = "serve:jobs";
/// Finished jobs kept in the list (the oldest are forgotten first); unfinished ones are always
/// kept.
const FINISHED_KEPT: usize = 100;

/// What `POST /v1/ingest` takes: the options of `echovault ingest`, paths on the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// DICOM files, DICOMDIRs, videos or directories, as the server sees them.
    pub paths: Vec<PathBuf>,
    /// Report manifest (JSONL, CSV, `.txt` or a folder of them).
    #[serde(default)]
    pub reports: Option<PathBuf>,
    /// Crop DICOM frames to their ultrasound region.
    #[serde(default)]
    pub crop_region: bool,
    /// Only studies dated on or after this day.
    #[serde(default)]
    pub since: Option<StudyDate>,
    /// Decode workers (0: one per core).
    #[serde(default)]
    pub workers: usize,
    /// Videos each pipeline queue holds at most (0: the default).
    #[serde(default)]
    pub queue: usize,
}

impl JobSpec {
    /// Refuses a job whose inputs are not there, naming the field.
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.paths.is_empty() {
            return Err(ApiError::field("paths", "paths: give at least one file or directory on the server"));
        }
        if let Some(p) = self.paths.iter().find(|p| !p.exists()) {
            return Err(ApiError::field("paths", format!("paths: {} does not exist on the server", p.display())));
        }
        if let Some(r) = self.reports.as_ref().filter(|r| !r.exists()) {
            return Err(ApiError::field("reports", format!("reports: {} does not exist on the server", r.display())));
        }
        Ok(())
    }
}

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for the jobs before it.
    Queued,
    /// Running now.
    Running,
    /// Ran to the end (inputs that failed are listed in its summary).
    Done,
    /// Stopped by an error (the index, a stage of the pipeline); `error` says which.
    Failed,
    /// Stopped by the server's shutdown; resumes when the server starts again.
    Interrupted,
}

/// A job's counters so far (those of [`Progress`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    /// Inputs found.
    pub found: usize,
    /// Inputs finished.
    pub done: usize,
    /// Videos embedded and written.
    pub ingested: usize,
    /// Inputs skipped (already indexed, duplicates).
    pub skipped: usize,
    /// Inputs that failed.
    pub failed: usize,
    /// Frames embedded.
    pub frames: usize,
    /// Reports written.
    pub reports: usize,
}

impl From<&Progress> for JobProgress {
    fn from(p: &Progress) -> JobProgress {
        JobProgress {
            found: p.found,
            done: p.done,
            ingested: p.ingested,
            skipped: p.skipped,
            failed: p.failed,
            frames: p.frames,
            reports: p.reports,
        }
    }
}

/// Failures a job lists as they happen, at most (the job list is kept in the index).
pub const MAX_JOB_ERRORS: usize = 500;

/// A failed input of a job: the file (or report) and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    /// The input path (a report: its manifest and study).
    pub path: String,
    /// Why it failed.
    pub reason: String,
}

/// One job, as `GET /v1/ingest/{job}` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    /// Its id (increasing).
    pub id: u64,
    /// Where it is.
    pub state: JobState,
    /// What it ingests.
    pub request: JobSpec,
    /// Counters of its latest run.
    pub progress: JobProgress,
    /// Its latest run's summary once that run ended: `echovault ingest --json`'s fields
    /// (failed inputs with reasons included) without the list of ids written.
    pub summary: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// Inputs and reports its latest run failed on, as they happened: the first
    /// [`MAX_JOB_ERRORS`] (the summary lists all once the run ends).
    #[serde(default)]
    pub errors: Vec<JobError>,
    /// Failures beyond those listed in `errors`.
    #[serde(default)]
    pub errors_omitted: usize,
    /// Times it was started: more than 1 when it resumed after a restart.
    pub runs: u32,
    /// When it was submitted, started (latest run) and ended (Unix seconds).
    pub submitted_at: u64,
    /// See `submitted_at`.
    pub started_at: Option<u64>,
    /// See `submitted_at`.
    pub finished_at: Option<u64>,
}

#[derive(Debug, Default)]
struct Table {
    jobs: BTreeMap<u64, Job>,
    queue: VecDeque<u64>,
    next_id: u64,
    /// The running job's cancel flag.
    running: Option<(u64, Arc<AtomicBool>)>,
    shutting_down: bool,
    /// Bumped by every change that is to be persisted: orders the snapshots.
    generation: u64,
}

/// A job list as serialised under the table's lock, to be written after it is released.
struct Snapshot {
    generation: u64,
    bytes: Result<Vec<u8>, String>,
}

/// Writes snapshots in order: one at a time, and never one older than the newest written (it
/// holds every change the older one holds).
#[derive(Debug, Default)]
struct Writer {
    /// The generation last written.
    written: Mutex<u64>,
}

impl Writer {
    fn write(&self, snap: Snapshot, commit: impl FnOnce(&[u8]) -> Result<(), crate::Error>) -> Result<(), crate::Error> {
        let mut written = self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if snap.generation <= *written {
            return Ok(());
        }
        let bytes = snap.bytes.map_err(|e| crate::Error::Invalid(format!("job list: {e}")))?;
        commit(&bytes)?;
        *written = snap.generation;
        Ok(())
    }
}

/// The server's jobs: a table, the queue, and the thread that runs them.
#[derive(Debug)]
pub struct Jobs {
    /// Held only briefly (async handlers lock it): never across an index write.
    table: Mutex<Table>,
    /// Serialises the job list's index writes.
    writer: Writer,
    wake: Condvar,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
}

/// The job list as the index keeps it (finished jobs beyond [`FINISHED_KEPT`] forgotten),
/// serialised under the table's lock with the next generation.
fn snapshot(t: &mut Table) -> Snapshot {
    t.generation += 1;
    let finished: Vec<u64> = t.jobs.values().filter(|j| matches!(j.state, JobState::Done | JobState::Failed)).map(|j| j.id).collect();
    let forget = finished.len().saturating_sub(FINISHED_KEPT);
    let kept: Vec<&Job> = t.jobs.values().filter(|j| !finished[..forget].contains(&j.id)).collect();
    Snapshot { generation: t.generation, bytes: serde_json::to_vec(&kept).map_err(|e| e.to_string()) }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Jobs {
    /// Loads the job list the index keeps; jobs a previous server left unfinished are queued
    /// again, in their order.
    pub fn load(engine: Arc<Engine>, metrics: Arc<Metrics>) -> Result<Jobs, crate::Error> {
        let mut table = Table { next_id: 1, ..Table::default() };
        if let Some(bytes) = engine.index.get_log(JOBS_KEY)? {
            let jobs: Vec<Job> = serde_json::from_slice(&bytes).map_err(|e| {
                crate::Error::Invalid(format!(
                    "index {}: the server's job list (ingest-log key '{JOBS_KEY}') is unreadable: {e}",
                    engine.index.path().display()
                ))
            })?;
            for mut job in jobs {
                if matches!(job.state, JobState::Queued | JobState::Running | JobState::Interrupted) {
                    tracing::info!(job = job.id, "resuming ingest job left unfinished");
                    job.state = JobState::Queued;
                    table.queue.push_back(job.id);
                }
                table.next_id = table.next_id.max(job.id + 1);
                table.jobs.insert(job.id, job);
            }
        }
        Ok(Jobs { table: Mutex::new(table), writer: Writer::default(), wake: Condvar::new(), engine, metrics })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table is only changed in short, non-panicking sections.
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a job.
    pub fn submit(&self, spec: JobSpec) -> Result<Job, ApiError> {
        spec.validate()?;
        let mut t = self.lock();
        if t.shutting_down {
            return Err(ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"));
        }
        let id = t.next_id;
        t.next_id += 1;
        let job = Job {
            id,
            state: JobState::Queued,
            request: spec,
            progress: JobProgress::default(),
            summary: None,
            error: None,
            errors: Vec::new(),
            errors_omitted: 0,
            runs: 0,
            submitted_at: now(),
            started_at: None,
            finished_at: None,
        };
        t.jobs.insert(id, job.clone());
        t.queue.push_back(id);
        let snap = snapshot(&mut t);
        drop(t);
        self.wake.notify_all();
        self.persist(snap)?;
        Ok(job)
    }

    /// One job.
    pub fn get(&self, id: u64) -> Option<Job> {
        self.lock().jobs.get(&id).cloned()
    }

    /// Every job, oldest first.
    pub fn list(&self) -> Vec<Job> {
        self.lock().jobs.values().cloned().collect()
    }

    /// Jobs queued and running.
    pub fn pending(&self) -> (usize, usize) {
        let t = self.lock();
        (t.queue.len(), usize::from(t.running.is_some()))
    }

    /// Stops taking jobs; the running one stops feeding its pipeline and commits what is in
    /// flight. [`Jobs::run`] then returns.
    pub fn shutdown(&self) {
        let mut t = self.lock();
        t.shutting_down = true;
        if let Some((_, cancel)) = &t.running {
            cancel.store(true, Ordering::SeqCst);
        }
        self.wake.notify_all();
    }

    /// Writes a job list [`snapshot`] into the index (synced), with the table's lock released.
    fn persist(&self, snap: Snapshot) -> Result<(), crate::Error> {
        self.writer.write(snap, |bytes| {
            let mut b = self.engine.index.batch();
            b.put_log(JOBS_KEY, Some(bytes));
            self.engine.index.commit(b)?;
            Ok(())
        })
    }

    /// Runs queued jobs until [`Jobs::shutdown`]. Call on a thread of its own.
    pub fn run(&self) {
        while let Some((id, spec, cancel)) = self.next() {
            let opts = IngestOptions {
                reports: spec.reports.clone(),
                crop_regions: spec.crop_region,
                workers: spec.workers,
                since: spec.since,
                until: None,
                queue: spec.queue,
                cancel: Some(cancel.clone()),
                shard: None,
            };
            let mut seen = JobProgress::default();
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                ingest(&self.engine, &spec.paths, &opts, |p| {
                    let now = JobProgress::from(p);
                    self.count(&seen, &now);
                    seen = now.clone();
                    if let Some(j) = self.lock().jobs.get_mut(&id) {
                        j.progress = now;
                        if let Some(f) = &p.failure {
                            if j.errors.len() < MAX_JOB_ERRORS {
                                j.errors.push(JobError { path: f.path.clone(), reason: f.reason.clone() });
                            } else {
                                j.errors_omitted += 1;
                            }
                        }
                    }
                })
            }));
            let mut t = self.lock();
            t.running = None;
            let cancelled = cancel.load(Ordering::SeqCst);
            let state = {
                let Some(job) = t.jobs.get_mut(&id) else { continue };
                job.finished_at = Some(now());
                match outcome {
                    Ok(Ok(summary)) => {
                        let mut v = serde_json::to_value(&summary).unwrap_or(serde_json::Value::Null);
                        if let Some(o) = v.as_object_mut() {
                            o.remove("ids");
                        }
                        job.summary = Some(v);
                        job.state = if cancelled { JobState::Interrupted } else { JobState::Done };
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(job = id, "ingest job failed: {e}");
                        job.error = Some(e.to_string());
                        job.state = if cancelled { JobState::Interrupted } else { JobState::Failed };
                    }
                    Err(_) => {
                        tracing::warn!(job = id, "ingest job panicked");
                        job.error = Some("the ingest pipeline panicked; the job stopped (what it committed stays)".into());
                        job.state = JobState::Failed;
                    }
                }
                job.state
            };
            self.metrics.ingest.job_finished(match state {
                JobState::Done => "done",
                JobState::Interrupted => "interrupted",
                _ => "failed",
            });
            let snap = snapshot(&mut t);
            drop(t);
            if let Err(e) = self.persist(snap) {
                tracing::warn!(job = id, "could not record the job's end in the index: {e}");
            }
        }
    }

    /// Waits for the next job and marks it running; `None` once shutting down.
    fn next(&self) -> Option<(u64, JobSpec, Arc<AtomicBool>)> {
        let mut t = self.lock();
        loop {
            if t.shutting_down {
                return None;
            }
            if let Some(id) = t.queue.pop_front() {
                let cancel = Arc::new(AtomicBool::new(false));
                let Some(job) = t.jobs.get_mut(&id) else { continue };
                job.state = JobState::Running;
                job.runs += 1;
                job.started_at = Some(now());
                job.finished_at = None;
                job.progress = JobProgress::default();
                job.summary = None;
                job.error = None;
                job.errors.clear();
                job.errors_omitted = 0;
                let spec = job.request.clone();
                t.running = Some((id, cancel.clone()));
                let snap = snapshot(&mut t);
                drop(t);
                if let Err(e) = self.persist(snap) {
                    tracing::warn!(job = id, "could not record the job's start in the index: {e}");
                }
                return Some((id, spec, cancel));
            }
            t = self.wake.wait(t).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Adds what a job did since its last progress report to the ingest counters.
    fn count(&self, before: &JobProgress, now: &JobProgress) {
        let c = &self.metrics.ingest;
        let add = |counter: &std::sync::atomic::AtomicU64, a: usize, b: usize| {
            counter.fetch_add(b.saturating_sub(a) as u64, Ordering::Relaxed);
        };
        add(&c.videos, before.ingested, now.ingested);
        add(&c.frames, before.frames, now.frames);
        add(&c.reports, before.reports, now.reports);
        add(&c.skipped, before.skipped, now.skipped);
        add(&c.failed, before.failed, now.failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_written_in_order_and_never_older_over_newer() {
        let mut t = Table::default();
        let old = snapshot(&mut t);
        let new = snapshot(&mut t);
        let w = Writer::default();
        let written = Mutex::new(Vec::new());
        let commit = |b: &[u8]| {
            written.lock().unwrap().push(b.to_vec());
            Ok(())
        };
        w.write(new, commit).unwrap();
        // The older snapshot, persisted late (its table lock long released), is dropped.
        w.write(old, commit).unwrap();
        assert_eq!(written.lock().unwrap().len(), 1);
        // A failed write leaves the generation unwritten: the next snapshot is written.
        let next = snapshot(&mut t);
        assert!(w.write(next, |_| Err(crate::Error::Invalid("disk".into()))).is_err());
        w.write(snapshot(&mut t), commit).unwrap();
        assert_eq!(written.lock().unwrap().len(), 2);
    }

    #[test]
    fn the_table_is_free_while_a_snapshot_is_written() {
        let jobs_table = Mutex::new(Table::default());
        let w = Writer::default();
        let snap = snapshot(&mut jobs_table.lock().unwrap());
        // The write runs with the table unlocked: a reader (a health probe) takes it meanwhile.
        w.write(snap, |_| {
            assert!(jobs_table.try_lock().is_ok(), "the table's lock is held across the index write");
            Ok(())
        })
        .unwrap();
    }
}
