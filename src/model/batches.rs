//! Forward passes in batches that shrink when LibTorch fails: a CUDA out-of-memory (or a host
//! allocation refused) on a batch retries it split in halves, down to one item; only an item
//! that fails alone is an error, and it is the caller's to report (ingest fails that one video
//! and goes on).

use crate::error::Error;
use std::ops::Range;

/// Runs `pass` over `0..n` in chunks of `batch` items, concatenating what it returns (one
/// result per item). A chunk that fails with a LibTorch error ([`Error::Torch`]) is retried as
/// its two halves (each of which may be halved again); once a size has failed, the chunks after
/// it use the size that worked, so one out-of-memory does not repeat for every chunk. A single
/// item that still fails gives an error that says so, with LibTorch's message. Other errors
/// are returned at once.
pub fn in_halving_batches<T>(n: usize, batch: usize, mut pass: impl FnMut(Range<usize>) -> Result<Vec<T>, Error>) -> Result<Vec<T>, Error> {
    let mut out = Vec::with_capacity(n);
    let mut size = batch.max(1);
    let mut at = 0;
    while at < n {
        let m = size.min(n - at);
        match pass(at..at + m) {
            Ok(rows) if rows.len() == m => {
                out.extend(rows);
                at += m;
            }
            Ok(rows) => return Err(Error::Invalid(format!("a forward pass of {m} items returned {} rows", rows.len()))),
            Err(Error::Torch(e)) if m > 1 => {
                size = m.div_ceil(2);
                tracing::warn!("LibTorch failed on a batch of {m} ({}); retrying in batches of {size}", brief(&e));
            }
            Err(Error::Torch(e)) => {
                let halved = if batch > 1 { format!(" (batches of {batch} halved down to 1)") } else { String::new() };
                return Err(Error::Invalid(format!("LibTorch failed on a single frame{halved}: {}", brief(&e))));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// LibTorch's message without the C++ stack trace it carries (`frame #0: …` lines).
pub fn brief(e: &tch::TchError) -> String {
    let s = match e {
        tch::TchError::Torch(m) => m.as_str(),
        other => return other.to_string(),
    };
    s.lines().next().unwrap_or(s).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn oom() -> Error {
        Error::Torch(tch::TchError::Torch("CUDA out of memory. Tried to allocate 2.00 GiB\nframe #0: c10::Error::Error(…)".into()))
    }

    /// A pass that fails on any chunk longer than `fits` and records the chunks it was given.
    fn run(n: usize, batch: usize, fits: usize) -> (Result<Vec<usize>, Error>, Vec<Range<usize>>) {
        let calls = RefCell::new(Vec::new());
        let r = in_halving_batches(n, batch, |r| {
            calls.borrow_mut().push(r.clone());
            if r.len() > fits {
                Err(oom())
            } else {
                Ok(r.collect())
            }
        });
        (r, calls.into_inner())
    }

    #[test]
    fn a_batch_that_fails_is_retried_in_halves_and_the_rows_stay_in_order() {
        let (r, calls) = run(10, 8, 3);
        assert_eq!(r.unwrap(), (0..10).collect::<Vec<_>>());
        // 8 fails, 4 fails, 2 works; the rest go in twos.
        assert_eq!(calls, vec![0..8, 0..4, 0..2, 2..4, 4..6, 6..8, 8..10]);
        // Nothing fails: plain batches.
        let (r, calls) = run(10, 4, 100);
        assert_eq!((r.unwrap().len(), calls), (10, vec![0..4, 4..8, 8..10]));
        // Odd sizes halve upwards: 5 → 3 → 2.
        let (r, calls) = run(5, 5, 2);
        assert_eq!(r.unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(calls, vec![0..5, 0..3, 0..2, 2..4, 4..5]);
    }

    #[test]
    fn one_item_that_fails_alone_is_an_error_with_libtorchs_message() {
        let (r, calls) = run(6, 4, 0);
        assert_eq!(calls, vec![0..4, 0..2, 0..1], "halved down to one item, then given up");
        let e = r.unwrap_err().to_string();
        assert!(e.contains("single frame") && e.contains("halved down to 1") && e.contains("CUDA out of memory"), "{e}");
        assert!(!e.contains("frame #0"), "LibTorch's C++ stack trace is left out: {e}");
    }

    #[test]
    fn errors_that_are_not_libtorchs_are_not_retried() {
        let mut calls = 0;
        let r: Result<Vec<usize>, Error> = in_halving_batches(8, 8, |_| {
            calls += 1;
            Err(Error::Invalid("bad frame".into()))
        });
        assert_eq!((r.unwrap_err().to_string(), calls), ("bad frame".to_owned(), 1));
        // An intermittent failure: the batch after it still uses the size that worked.
        let mut failed_once = false;
        let mut sizes = Vec::new();
        let r = in_halving_batches(12, 4, |r| {
            sizes.push(r.len());
            if r.len() == 4 && !failed_once {
                failed_once = true;
                return Err(oom());
            }
            Ok(r.collect::<Vec<_>>())
        });
        assert_eq!(r.unwrap().len(), 12);
        assert_eq!(sizes, vec![4, 2, 2, 2, 2, 2, 2]);
    }
}
