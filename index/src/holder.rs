//! The writer record: who holds an index's writer lock. RocksDB's LOCK file says only that
//! some process does; once the writer has the lock it writes [`HOLDER_FILE`] (pid, command,
//! since when) into the index directory and removes it when it closes, so that a second writer
//! is told who is writing. A record left by a killed writer is stale: [`describe`] says so
//! when its process is gone.

use crate::error::IndexError;
use crate::StudyDate;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Name of the writer record in the index directory. Not a RocksDB file: RocksDB ignores it.
pub const HOLDER_FILE: &str = "echovault-writer.json";

/// What the record holds.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    pid: u32,
    command: String,
    /// Seconds since 1970-01-01 UTC.
    since: u64,
}

/// The record of this process as an index's writer; removes it on drop (if it is still ours).
#[derive(Debug)]
pub(crate) struct Holder {
    file: PathBuf,
}

impl Holder {
    /// Writes the record of this process into the index at `dir`; the caller holds the lock.
    pub(crate) fn record(dir: &Path, command: &str) -> Result<Holder, IndexError> {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let rec = Record { pid: std::process::id(), command: command.to_owned(), since };
        let file = dir.join(HOLDER_FILE);
        let io = |source| IndexError::Io { path: file.clone(), source };
        let bytes = serde_json::to_vec(&rec).map_err(|e| io(std::io::Error::other(e)))?;
        std::fs::write(&file, bytes).map_err(io)?;
        Ok(Holder { file })
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let ours = read(&self.file).is_some_and(|r| r.pid == std::process::id());
        if ours {
            if let Err(e) = std::fs::remove_file(&self.file) {
                tracing::warn!(file = %self.file.display(), error = %e, "the writer record could not be removed");
            }
        }
    }
}

fn read(file: &Path) -> Option<Record> {
    serde_json::from_slice(&std::fs::read(file).ok()?).ok()
}

/// Who holds the writer lock of the index at `dir`, in words, from its record: "pid 4242,
/// `echovault ingest`, since 2026-12-03 10:15:02 UTC", or why that is unknown.
pub(crate) fn describe(dir: &Path) -> String {
    let Some(r) = read(&dir.join(HOLDER_FILE)) else {
        return "it left no writer record".into();
    };
    let who = format!("pid {}, `{}`, since {}", r.pid, r.command, utc(r.since));
    match alive(r.pid) {
        Some(false) => format!("unknown: the last writer record names {who}, a process that has ended (a stale record)"),
        _ => who,
    }
}

/// Whether process `pid` exists (`None` where that cannot be told: no `/proc`).
fn alive(pid: u32) -> Option<bool> {
    let proc = Path::new("/proc");
    proc.is_dir().then(|| proc.join(pid.to_string()).exists())
}

/// `YYYY-MM-DD HH:MM:SS UTC` of seconds since the epoch.
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let t = secs % 86_400;
    let day = StudyDate::from_days_since_epoch(days).map_or_else(|| format!("day {days}"), |d| d.to_string());
    format!("{day} {:02}:{:02}:{:02} UTC", t / 3600, t / 60 % 60, t % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_describe_and_go_stale() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(describe(dir.path()), "it left no writer record");
        let h = Holder::record(dir.path(), "echovault ingest").unwrap();
        let d = describe(dir.path());
        assert!(d.starts_with(&format!("pid {}, `echovault ingest`, since 20", std::process::id())), "{d}");
        drop(h);
        assert!(!dir.path().join(HOLDER_FILE).exists(), "removed on drop");
        // A record of a process that has ended (pid beyond Linux's maximum).
        std::fs::write(dir.path().join(HOLDER_FILE), r#"{"pid":4194305,"command":"echovault ingest","since":0}"#).unwrap();
        let d = describe(dir.path());
        assert!(d.contains("1970-01-01 00:00:00 UTC") && d.contains("has ended"), "{d}");
    }

    #[test]
    fn utc_matches_known_instants() {
        // `date -u -d @1700000000` = 2023-11-14 22:13:20.
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
