//! WADO-RS retrieval: [`Client::retrieve`] reads one instance from its
//! `multipart/related; type="application/dicom"` answer as the bytes arrive; [`Client::fetch`]
//! retrieves many on `workers` threads. Finished instances are handed over through a rendezvous
//! channel, so at most `workers` instances (one per thread, being read or waiting to be taken)
//! are in memory besides the ones the caller holds, whatever the study size.

use super::client::{BodyError, Client};
use super::error::DicomWebError;
use super::multipart::{self, MultipartError, MultipartReader};
use super::qido::InstanceRef;
use crossbeam_channel::{bounded, Receiver};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Asks for the instance as stored (no transcoding: the pipeline decodes every transfer syntax
/// it supports itself, and a server's decompression would only multiply the bytes sent).
const ACCEPT_AS_STORED: &str = "multipart/related; type=\"application/dicom\"; transfer-syntax=*";
/// For servers that refuse `transfer-syntax=*` (406): their default transfer syntax.
///
/// Instances are asked for uncompressed in transit (`Accept-Encoding: identity`): their pixel
/// data is mostly compressed already (JPEG, JPEG 2000, video), and deflating it again cost
/// both ends CPU for little (measured: tools/bench-dicomweb, BENCHMARKS.md).
const ACCEPT_DEFAULT: &str = "multipart/related; type=\"application/dicom\"";

/// A retrieved instance: a DICOM Part 10 file in memory and where it came from.
#[derive(Clone)]
pub struct FetchedInstance {
    /// StudyInstanceUID.
    pub study_uid: String,
    /// SeriesInstanceUID.
    pub series_uid: String,
    /// SOPInstanceUID.
    pub sop_uid: String,
    /// Its WADO-RS URL (what a DICOM viewer opens).
    pub url: String,
    /// The file's bytes (preamble, `DICM`, meta group, data set).
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for FetchedInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchedInstance").field("url", &self.url).field("bytes", &self.bytes.len()).finish()
    }
}

impl FetchedInstance {
    /// Its UIDs as a reference.
    pub fn reference(&self) -> InstanceRef {
        InstanceRef { study_uid: self.study_uid.clone(), series_uid: self.series_uid.clone(), sop_uid: self.sop_uid.clone() }
    }
}

/// The instance in a WADO-RS answer: exactly one `application/dicom` part holding a Part 10
/// file (a bare `application/dicom` answer is taken too).
fn read_instance(resp: ureq::Response, max_bytes: u64) -> Result<Vec<u8>, BodyError> {
    let content_type = resp.header("Content-Type").unwrap_or("").to_owned();
    let media = multipart::split_params(&content_type).into_iter().next().unwrap_or_default();
    let body_error = |e: MultipartError| match e {
        MultipartError::Io(e) => BodyError::Retry(format!("reading the instance: {e}")),
        MultipartError::Malformed(m) => BodyError::Malformed(m),
    };
    let bytes = if media.trim().eq_ignore_ascii_case("application/dicom") {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(resp.into_reader(), max_bytes + 1), &mut bytes)
            .map_err(|e| BodyError::Retry(format!("reading the instance: {e}")))?;
        if bytes.len() as u64 > max_bytes {
            return Err(BodyError::Malformed(format!("the instance is over the limit of {max_bytes} bytes")));
        }
        bytes
    } else {
        let boundary = multipart::boundary(&content_type).map_err(BodyError::Malformed)?;
        let mut parts = MultipartReader::new(resp.into_reader(), &boundary);
        let part =
            parts.next_part(max_bytes).map_err(body_error)?.ok_or_else(|| BodyError::Malformed("the answer holds no part".into()))?;
        if let Some(ct) = &part.content_type {
            let m = multipart::split_params(ct).into_iter().next().unwrap_or_default();
            if !m.trim().eq_ignore_ascii_case("application/dicom") {
                return Err(BodyError::Malformed(format!("the part is '{ct}', not application/dicom")));
            }
        }
        // Only the next boundary line is read: a second part is refused before its body is.
        if !parts.at_close().map_err(body_error)? {
            return Err(BodyError::Malformed("the answer for one instance holds more than one part".into()));
        }
        part.body
    };
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err(BodyError::Malformed(format!("the part ({} bytes) is not a DICOM Part 10 file (no DICM prefix)", bytes.len())));
    }
    Ok(bytes)
}

impl Client {
    /// WADO-RS: one instance, read as it streams in.
    pub fn retrieve(&self, instance: &InstanceRef) -> Result<FetchedInstance, DicomWebError> {
        let target = instance.target();
        let url = instance.url(&self.endpoint);
        let max = self.options.max_instance_bytes;
        let bytes = match self.get(&target, &url, &[], ACCEPT_AS_STORED, false, |resp| read_instance(resp, max)) {
            Err(e) if e.status() == Some(406) => self.get(&target, &url, &[], ACCEPT_DEFAULT, false, |resp| read_instance(resp, max))?,
            r => r?,
        };
        Ok(FetchedInstance {
            study_uid: instance.study_uid.clone(),
            series_uid: instance.series_uid.clone(),
            sop_uid: instance.sop_uid.clone(),
            url,
            bytes,
        })
    }

    /// Retrieves every instance `refs` yields on [`super::ClientOptions::workers`] threads; the
    /// results come in the order they finish. An error `refs` yields (a failed search) is passed
    /// on as it is. Dropping the [`Fetch`] stops it: no new request starts, the threads end.
    pub fn fetch<I>(&self, refs: I) -> Fetch
    where
        I: Iterator<Item = Result<InstanceRef, DicomWebError>> + Send + 'static,
    {
        let workers = self.options.workers.max(1);
        let (job_tx, job_rx) = bounded::<InstanceRef>(workers);
        // Capacity 0: a finished instance waits in its worker until taken.
        let (out_tx, out_rx) = bounded::<Result<FetchedInstance, DicomWebError>>(0);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(workers + 1);
        {
            let (out_tx, stop) = (out_tx.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                for r in refs {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let sent = match r {
                        Ok(r) => job_tx.send(r).is_ok(),
                        Err(e) => out_tx.send(Err(e)).is_ok(),
                    };
                    if !sent {
                        break;
                    }
                }
            }));
        }
        for _ in 0..workers {
            let (client, job_rx, out_tx, stop) = (self.clone(), job_rx.clone(), out_tx.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                for r in job_rx {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // A panic while reading one answer fails that instance, not the worker.
                    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| client.retrieve(&r))).unwrap_or_else(|_| {
                        Err(DicomWebError::Response {
                            target: Box::new(r.target()),
                            url: r.url(&client.endpoint),
                            reason: "reading the answer panicked (a bug in echovault: please report it)".into(),
                        })
                    });
                    if out_tx.send(got).is_err() {
                        break;
                    }
                }
            }));
        }
        Fetch { rx: Some(out_rx), stop, threads }
    }
}

/// Instances being retrieved (see [`Client::fetch`]).
#[derive(Debug)]
pub struct Fetch {
    rx: Option<Receiver<Result<FetchedInstance, DicomWebError>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Iterator for Fetch {
    type Item = Result<FetchedInstance, DicomWebError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for Fetch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Closing the receiver wakes workers blocked on a send; requests in flight end by their
        // timeouts at worst.
        self.rx = None;
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a DICOMweb fetch thread panicked");
            }
        }
    }
}
