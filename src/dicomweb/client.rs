//! [`Client`]: HTTP requests to one DICOMweb endpoint (ureq's blocking agent, the client the hub
//! code already uses), with the credentials from the environment, timeouts, and retries with
//! exponential backoff on what may pass (5xx, 408, 429, connection errors, timeouts, a body cut
//! short). A 4xx or a malformed answer is final at once.

use super::auth::Credentials;
use super::error::{DicomWebError, Target};
use super::Endpoint;
use std::io::Read;
use std::time::Duration;

/// The most bytes one QIDO-RS page may have (a page of 100 studies is ~100 KB).
const MAX_QIDO_PAGE_BYTES: u64 = 64 << 20;

/// How often and how patiently a request is retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Requests made at most (1 = no retry).
    pub attempts: u32,
    /// The wait before the first retry; each further retry waits twice as long.
    pub first_delay: Duration,
    /// The longest wait between two requests.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 4, first_delay: Duration::from_millis(500), max_delay: Duration::from_secs(8) }
    }
}

impl RetryPolicy {
    /// The wait before request number `attempt + 1` (after `attempt` failed ones).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doubled = self.first_delay.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        doubled.min(self.max_delay)
    }
}

/// How the client talks to the server.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Instances retrieved at once by [`Client::fetch`] (each holds one instance in memory).
    pub workers: usize,
    /// QIDO-RS `limit`: results asked per page.
    pub page_size: usize,
    /// Retries of failed requests.
    pub retry: RetryPolicy,
    /// Time to connect.
    pub connect_timeout: Duration,
    /// Time a read of the response may wait for bytes.
    pub read_timeout: Duration,
    /// The largest instance accepted (bytes; default 1 GiB); larger ones are an error for that
    /// instance. Each retrieval in flight may hold up to about twice this much.
    pub max_instance_bytes: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            workers: 4,
            page_size: 100,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(120),
            max_instance_bytes: 1 << 30,
        }
    }
}

/// What one request attempt's body reader reports.
pub(crate) enum BodyError {
    /// The connection failed mid-body: the request may be made again.
    Retry(String),
    /// The answer is not what DICOMweb specifies: final.
    Malformed(String),
}

/// A DICOMweb endpoint and how to reach it. Cloning is cheap (the connection pool is shared).
#[derive(Clone, Debug)]
pub struct Client {
    pub(crate) endpoint: Endpoint,
    agent: ureq::Agent,
    credentials: Credentials,
    pub(crate) options: ClientOptions,
}

impl Client {
    /// A client of `endpoint` authenticating with `credentials`.
    pub fn new(endpoint: Endpoint, credentials: Credentials, options: ClientOptions) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(options.connect_timeout)
            .timeout_read(options.read_timeout)
            .timeout_write(options.read_timeout)
            .max_idle_connections_per_host(options.workers.max(1) + 1)
            .user_agent(concat!("echovault/", env!("CARGO_PKG_VERSION")))
            .build();
        Client { endpoint, agent, credentials, options }
    }

    /// The endpoint requests go to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The options the client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// GET `url?query` with `Accept: accept` (and `Accept-Encoding: identity` unless
    /// `compressed`), its 2xx answer handed to `read`; retried as the policy says.
    pub(crate) fn get<T>(
        &self,
        target: &Target,
        url: &str,
        query: &[(&str, String)],
        accept: &str,
        compressed: bool,
        mut read: impl FnMut(ureq::Response) -> Result<T, BodyError>,
    ) -> Result<T, DicomWebError> {
        let shown = shown_url(url, query);
        let policy = &self.options.retry;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.agent.get(url).set("Accept", accept);
            if !compressed {
                req = req.set("Accept-Encoding", "identity");
            }
            for (k, v) in query {
                req = req.query(k, v);
            }
            if let Some(h) = self.credentials.header() {
                req = req.set("Authorization", &h);
            }
            let failure = match req.call() {
                Ok(resp) if !(200..300).contains(&resp.status()) => {
                    return Err(DicomWebError::Status {
                        target: Box::new(target.clone()),
                        url: shown,
                        status: resp.status(),
                        attempts: attempt,
                    });
                }
                Ok(resp) => match read(resp) {
                    Ok(v) => return Ok(v),
                    Err(BodyError::Malformed(reason)) => {
                        return Err(DicomWebError::Response { target: Box::new(target.clone()), url: shown, reason });
                    }
                    Err(BodyError::Retry(reason)) => {
                        DicomWebError::Transport { target: Box::new(target.clone()), url: shown.clone(), reason, attempts: attempt }
                    }
                },
                Err(ureq::Error::Status(status, _)) => {
                    let e = DicomWebError::Status { target: Box::new(target.clone()), url: shown.clone(), status, attempts: attempt };
                    if !(status >= 500 || status == 408 || status == 429) {
                        return Err(e);
                    }
                    e
                }
                Err(ureq::Error::Transport(t)) => {
                    let mut reason = match t.message() {
                        Some(m) => format!("{}: {m}", t.kind()),
                        None => t.kind().to_string(),
                    };
                    if let Some(cause) = std::error::Error::source(&t) {
                        reason.push_str(&format!(": {cause}"));
                    }
                    DicomWebError::Transport { target: Box::new(target.clone()), url: shown.clone(), reason, attempts: attempt }
                }
            };
            if attempt >= policy.attempts.max(1) {
                return Err(failure);
            }
            let wait = policy.delay(attempt);
            // UIDs and URLs (with StudyDate ranges) at debug only: warn lines may be shared.
            tracing::debug!("{failure}");
            tracing::warn!("{} (attempt {attempt} of {}); trying again in {:.1} s", failure.brief(), policy.attempts, wait.as_secs_f64());
            std::thread::sleep(wait);
        }
    }

    /// The JSON array a QIDO-RS search answers (an empty body or 204: none).
    pub(crate) fn qido(&self, target: &Target, url: &str, query: &[(&str, String)]) -> Result<Vec<serde_json::Value>, DicomWebError> {
        self.get(target, url, query, "application/dicom+json, application/json", true, |resp| {
            if resp.status() == 204 {
                return Ok(Vec::new());
            }
            let mut bytes = Vec::new();
            resp.into_reader()
                .take(MAX_QIDO_PAGE_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| BodyError::Retry(format!("reading the answer: {e}")))?;
            if bytes.len() as u64 > MAX_QIDO_PAGE_BYTES {
                return Err(BodyError::Malformed(format!("a search page over {} MiB: ask for smaller pages", MAX_QIDO_PAGE_BYTES >> 20)));
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Vec::new());
            }
            match serde_json::from_slice(&bytes) {
                Ok(serde_json::Value::Array(items)) => Ok(items),
                Ok(_) => Err(BodyError::Malformed("the search answer is not a JSON array".into())),
                Err(e) => Err(BodyError::Malformed(format!("the search answer is not JSON: {e}"))),
            }
        })
    }
}

/// The URL as errors show it: with its query, percent-encoded as sent.
fn shown_url(url: &str, query: &[(&str, String)]) -> String {
    if query.is_empty() {
        return url.to_owned();
    }
    let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", v.replace(' ', "%20"))).collect();
    format!("{url}?{}", q.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy { attempts: 9, first_delay: Duration::from_millis(100), max_delay: Duration::from_millis(700) };
        let waits: Vec<u128> = (1..=6).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 700, 700, 700]);
        assert_eq!(RetryPolicy::default().delay(60), Duration::from_secs(8), "no overflow on long runs");
    }
}
