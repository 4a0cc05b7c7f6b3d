//! Prometheus metrics of the server, kept in memory and written in the text exposition format
//! (version 0.0.4) by hand: request counts by route, method and status; request latency
//! histograms by route; the query-text cache's hits and misses; ingest counters summed over
//! every job this process ran.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram's buckets: 250 µs (a cached vector query)
/// to 30 s (an evaluation).
const LATENCY_BUCKETS: [f64; 15] = [0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Observations per bucket (not cumulative; the last is above every bound).
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        let i = LATENCY_BUCKETS.iter().position(|&b| secs <= b).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += secs;
        self.count += 1;
    }
}

/// Ingest counters, summed over the jobs of this process.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Videos embedded and written.
    pub videos: AtomicU64,
    /// Frames embedded.
    pub frames: AtomicU64,
    /// Reports written.
    pub reports: AtomicU64,
    /// Inputs skipped (already indexed, duplicates).
    pub skipped: AtomicU64,
    /// Inputs that failed.
    pub failed: AtomicU64,
    /// Jobs finished (done, failed or interrupted), by outcome.
    jobs: Mutex<BTreeMap<&'static str, u64>>,
}

impl IngestCounters {
    /// Counts a finished job.
    pub fn job_finished(&self, outcome: &'static str) {
        *self.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(outcome).or_default() += 1;
    }
}

/// Everything `/v1/metrics` reports.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    /// Query texts whose embedding came from the cache.
    pub text_cache_hits: AtomicU64,
    /// Query texts embedded by the model.
    pub text_cache_misses: AtomicU64,
    /// Ingest counters.
    pub ingest: IngestCounters,
}

impl Metrics {
    /// Records one answered request. `route` is the route's template (`/v1/items/{id}`), never
    /// the path itself, which may hold a patient key.
    pub fn observe(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        *lock(&self.requests).entry((route.to_owned(), method.to_owned(), status)).or_default() += 1;
        lock(&self.latency).entry(route.to_owned()).or_default().observe(elapsed.as_secs_f64());
    }

    /// The text exposition. `gauges` are added as they are (name, help, value).
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        header(&mut out, "echovault_http_requests_total", "HTTP requests answered, by route, method and status.", "counter");
        for ((route, method, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "echovault_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                escape(route),
                escape(method)
            );
        }
        header(&mut out, "echovault_http_request_duration_seconds", "Time from request to response, by route.", "histogram");
        for (route, h) in lock(&self.latency).iter() {
            let route = escape(route);
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += h.buckets[i];
                let _ = writeln!(out, "echovault_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(out, "echovault_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "echovault_http_request_duration_seconds_sum{{route=\"{route}\"}} {}", h.sum);
            let _ = writeln!(out, "echovault_http_request_duration_seconds_count{{route=\"{route}\"}} {}", h.count);
        }
        let counters: [(&str, &str, &AtomicU64); 7] = [
            ("echovault_text_cache_hits_total", "Query texts whose embedding the cache held.", &self.text_cache_hits),
            ("echovault_text_cache_misses_total", "Query texts the text tower embedded.", &self.text_cache_misses),
            ("echovault_ingest_videos_total", "Videos embedded and written by ingest jobs.", &self.ingest.videos),
            ("echovault_ingest_frames_total", "Frames embedded by ingest jobs.", &self.ingest.frames),
            ("echovault_ingest_reports_total", "Reports written by ingest jobs.", &self.ingest.reports),
            ("echovault_ingest_skipped_total", "Inputs ingest jobs skipped as already indexed or duplicates.", &self.ingest.skipped),
            ("echovault_ingest_failed_total", "Inputs ingest jobs failed on.", &self.ingest.failed),
        ];
        for (name, help, v) in counters {
            header(&mut out, name, help, "counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        header(&mut out, "echovault_ingest_jobs_total", "Ingest jobs ended, by outcome.", "counter");
        for (outcome, n) in lock(&self.ingest.jobs).iter() {
            let _ = writeln!(out, "echovault_ingest_jobs_total{{outcome=\"{outcome}\"}} {n}");
        }
        for (name, help, v) in gauges {
            header(&mut out, name, help, "gauge");
            let _ = writeln!(out, "{name} {v}");
        }
        out
    }
}

/// Counters kept outside [`Metrics`] (the thumbnail cache's), in the exposition format.
pub fn render_counters(counters: &[(&str, &str, u64)]) -> String {
    let mut out = String::new();
    for (name, help, v) in counters {
        header(&mut out, name, help, "counter");
        let _ = writeln!(out, "{name} {v}");
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while counting leaves counts that are at worst one short: keep serving them.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value as the exposition format wants it (backslash, quote and newline escaped).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counts_split_by_status() {
        let m = Metrics::default();
        m.observe("/v1/search", "POST", 200, Duration::from_micros(300));
        m.observe("/v1/search", "POST", 200, Duration::from_millis(3));
        m.observe("/v1/search", "POST", 400, Duration::from_secs(60));
        m.text_cache_hits.fetch_add(2, Ordering::Relaxed);
        m.ingest.job_finished("done");
        let text = m.render(&[("echovault_jobs_running", "Jobs running.", 1.0)]);
        let line = |prefix: &str| text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
        assert!(line("echovault_http_requests_total{route=\"/v1/search\",method=\"POST\",status=\"200\"}").ends_with(" 2"));
        assert!(line("echovault_http_requests_total{route=\"/v1/search\",method=\"POST\",status=\"400\"}").ends_with(" 1"));
        // 300 µs falls above 250 µs and within 500 µs; 3 ms within 5 ms; 60 s above every bound.
        assert!(line("echovault_http_request_duration_seconds_bucket{route=\"/v1/search\",le=\"0.00025\"}").ends_with(" 0"));
        assert!(line("echovault_http_request_duration_seconds_bucket{route=\"/v1/search\",le=\"0.0005\"}").ends_with(" 1"));
        assert!(line("echovault_http_request_duration_seconds_bucket{route=\"/v1/search\",le=\"0.005\"}").ends_with(" 2"));
        assert!(line("echovault_http_request_duration_seconds_bucket{route=\"/v1/search\",le=\"30\"}").ends_with(" 2"));
        assert!(line("echovault_http_request_duration_seconds_bucket{route=\"/v1/search\",le=\"+Inf\"}").ends_with(" 3"));
        assert!(line("echovault_http_request_duration_seconds_count{route=\"/v1/search\"}").ends_with(" 3"));
        assert!(line("echovault_text_cache_hits_total ").ends_with(" 2"));
        assert!(line("echovault_ingest_jobs_total{outcome=\"done\"}").ends_with(" 1"));
        assert!(line("echovault_jobs_running ").ends_with(" 1"));
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
