//! Finding inputs in a PACS export or a folder of clips: video files by extension, DICOM files
//! by content (the `DICM` marker, whatever the file name), through a DICOMDIR when a folder has
//! one. A video may have a sidecar report (`NAME.txt` beside `NAME.avi`). Directories are walked
//! recursively in name order, so runs over the same tree see the same order.

use crate::error::Error;
use crate::media::dicom::is_dicom;
use crate::media::is_video_path;
use dicom_dictionary_std::tags;
use std::path::{Path, PathBuf};

/// What kind of input a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// A container decoded through FFmpeg.
    Video,
    /// A DICOM object.
    Dicom,
}

/// A file to ingest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovered {
    /// The file.
    pub path: PathBuf,
    /// Video or DICOM.
    pub kind: InputKind,
    /// Its sidecar report, when one exists (videos only).
    pub report: Option<PathBuf>,
}

/// What a walk found.
#[derive(Clone, Debug, Default)]
pub struct Found {
    /// Inputs in walk order.
    pub videos: Vec<Discovered>,
    /// Entries passed over, with the reason (DICOMDIR records that are not images, files a
    /// DICOMDIR names that do not exist).
    pub skipped: Vec<(PathBuf, String)>,
    /// DICOMDIR files used instead of walking their folder.
    pub dicomdirs: Vec<PathBuf>,
}

/// Walks `paths`. A path that does not exist is an error (a typo should not silently ingest
/// nothing); unreadable entries inside a tree are skipped with a warning.
pub fn discover(paths: &[PathBuf]) -> Result<Found, Error> {
    let mut found = Found::default();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
        if meta.is_dir() {
            walk(p, &mut found);
        } else if is_dicomdir(p) {
            read_dicomdir(p, &mut found);
        } else if is_dicom(p) {
            found.videos.push(Discovered { path: p.clone(), kind: InputKind::Dicom, report: None });
        } else {
            // Named explicitly: try it as a video even without a known extension.
            found.videos.push(Discovered { path: p.clone(), kind: InputKind::Video, report: sidecar(p) });
        }
    }
    Ok(found)
}

fn is_dicomdir(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR"))
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
    if let Some(dd) = entries.iter().find(|p| p.is_file() && is_dicomdir(p)) {
        if read_dicomdir(dd, found) {
            return;
        }
    }
    for p in entries {
        if p.is_dir() {
            walk(&p, found);
        } else if is_video_path(&p) {
            let report = sidecar(&p);
            found.videos.push(Discovered { path: p, kind: InputKind::Video, report });
        } else if !is_dicomdir(&p) && is_dicom(&p) {
            found.videos.push(Discovered { path: p, kind: InputKind::Dicom, report: None });
        }
    }
}

/// Adds the image files a DICOMDIR references; false when it cannot be read (the caller then
/// walks the folder instead).
fn read_dicomdir(path: &Path, found: &mut Found) -> bool {
    let obj = match dicom_object::OpenFileOptions::new().open_file(path) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(file = %path.display(), "unreadable DICOMDIR, walking its folder instead: {e}");
            return false;
        }
    };
    let Some(records) = obj.element_opt(tags::DIRECTORY_RECORD_SEQUENCE).ok().flatten().and_then(|e| e.items()) else {
        tracing::warn!(file = %path.display(), "DICOMDIR without directory records, walking its folder instead");
        return false;
    };
    let base = path.parent().unwrap_or(Path::new("."));
    found.dicomdirs.push(path.to_owned());
    for rec in records {
        let Some(parts) = rec.element_opt(tags::REFERENCED_FILE_ID).ok().flatten().and_then(|e| e.to_multi_str().ok()) else {
            continue; // PATIENT / STUDY / SERIES records reference no file
        };
        let file = parts.iter().fold(base.to_path_buf(), |p, c| p.join(c.trim()));
        let kind = rec.element_opt(tags::DIRECTORY_RECORD_TYPE).ok().flatten().and_then(|e| e.to_str().ok()).map(|s| s.trim().to_owned());
        match kind.as_deref() {
            Some("IMAGE") | None => {}
            Some(other) => {
                found.skipped.push((file, format!("DICOMDIR record type {other} is not an image")));
                continue;
            }
        }
        if !file.is_file() {
            found.skipped.push((file, format!("named by {} but missing", path.display())));
            continue;
        }
        found.videos.push(Discovered { path: file, kind: InputKind::Dicom, report: None });
    }
    true
}

fn sidecar(video: &Path) -> Option<PathBuf> {
    let txt = video.with_extension("txt");
    txt.is_file().then_some(txt)
}
