//! Finding inputs: video files (by extension), each with an optional sidecar report
//! (`NAME.txt` beside `NAME.avi`). Directories are walked recursively in name order, so runs
//! over the same tree see the same order.

use crate::error::Error;
use crate::media::is_video_path;
use std::path::{Path, PathBuf};

/// A video to ingest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovered {
    /// The video file.
    pub path: PathBuf,
    /// Its sidecar report, when one exists.
    pub report: Option<PathBuf>,
}

/// What a walk found.
#[derive(Clone, Debug, Default)]
pub struct Found {
    /// Videos in walk order.
    pub videos: Vec<Discovered>,
}

/// Walks `paths`. A path that does not exist is an error (a typo should not silently ingest
/// nothing); unreadable entries inside a tree are skipped with a warning.
pub fn discover(paths: &[PathBuf]) -> Result<Found, Error> {
    let mut found = Found::default();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
        if meta.is_dir() {
            walk(p, &mut found);
        } else {
            found.videos.push(Discovered { path: p.clone(), report: sidecar(p) });
        }
    }
    Ok(found)
}

fn walk(dir: &Path, found: &mut Found) {
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot list directory: {e}");
            return;
        }
    };
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, found);
        } else if is_video_path(&p) {
            let report = sidecar(&p);
            found.videos.push(Discovered { path: p, report });
        }
    }
}

fn sidecar(video: &Path) -> Option<PathBuf> {
    let txt = video.with_extension("txt");
    txt.is_file().then_some(txt)
}
