//! Finding inputs in a PACS export or a folder of clips: video files by extension, DICOM files
//! by content (the `DICM` marker, whatever the file name), through a DICOMDIR when a folder has
//! one. A video may have a sidecar report (`NAME.txt` beside `NAME.avi`). Directories are walked
//! recursively in name order, so runs over the same tree see the same order.
//!
//! Every file is accounted for: an input, a failure (a `.dcm`/`.dicom` file that is no DICOM,
//! an entry that cannot be read — a symlink to itself —, a DICOMDIR reference outside the
//! export), or ignored (any other file; sidecar reports are inputs' reports, not ignored).
//! Paths are tidied (`export/./a` is `export/a`) and one file reached twice (two paths, a
//! symlink) is one input. A directory is walked once, so symlink loops end.

use crate::error::Error;
use crate::media::dicom::is_dicom;
use crate::media::is_video_path;
use dicom_dictionary_std::tags;
use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

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
    /// Files that should be inputs and are not readable as one, with the reason: each is a
    /// failure of the run.
    pub failed: Vec<(PathBuf, String)>,
    /// Files that are no media (and no sidecar report), and directories reached again.
    pub ignored: Vec<PathBuf>,
    /// DICOMDIR files used instead of walking their folder.
    pub dicomdirs: Vec<PathBuf>,
    /// Canonical paths of the files taken (inputs and failures) and of the directories walked.
    seen: HashSet<PathBuf>,
}

impl Found {
    /// Takes `path` once: false when the file it names was taken before under any path.
    fn first_time(&mut self, path: &Path) -> bool {
        self.seen.insert(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned()))
    }

    fn input(&mut self, path: PathBuf, kind: InputKind, report: Option<PathBuf>) {
        if self.first_time(&path) {
            self.videos.push(Discovered { path, kind, report });
        }
    }

    fn fail(&mut self, path: PathBuf, reason: String) {
        if self.first_time(&path) {
            self.failed.push((path, reason));
        }
    }
}

/// `a/./b//c` as `a/b/c`: the one spelling under which a file is keyed (`..` stays: it may
/// cross a symlink).
fn tidy(p: &Path) -> PathBuf {
    p.components().collect()
}

/// Walks `paths`. A path that does not exist is an error (a typo should not silently ingest
/// nothing); unreadable entries inside a tree are failures of the run.
pub fn discover(paths: &[PathBuf]) -> Result<Found, Error> {
    let mut found = Found::default();
    for p in paths {
        let p = &tidy(p);
        let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
        if meta.is_dir() {
            walk(p, &mut found);
        } else if !meta.is_file() {
            found.fail(p.clone(), NOT_REGULAR.into());
        } else if is_dicomdir(p) {
            read_dicomdir(p, &mut found);
        } else if is_dicom(p) {
            found.input(p.clone(), InputKind::Dicom, None);
        } else if let Some(reason) = not_dicom(p) {
            found.fail(p.clone(), reason);
        } else {
            // Named explicitly: try it as a video even without a known extension.
            found.input(p.clone(), InputKind::Video, sidecar(p));
        }
    }
    let reports: HashSet<PathBuf> = found.videos.iter().filter_map(|v| v.report.clone()).collect();
    found.ignored.retain(|p| !reports.contains(p));
    Ok(found)
}

/// Why a FIFO, socket or device is never read: opening a FIFO blocks until something writes
/// to it (an ingest would hang), and a device is no file of an export.
const NOT_REGULAR: &str = "not a regular file (a FIFO, socket or device): not read";

fn is_dicomdir(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR"))
}

/// Why a file named as DICOM (`.dcm`, `.dicom`) is none; `None` for other names.
fn not_dicom(p: &Path) -> Option<String> {
    let ext = p.extension().and_then(|e| e.to_str())?.to_ascii_lowercase();
    if ext != "dcm" && ext != "dicom" {
        return None;
    }
    Some(match std::fs::metadata(p) {
        Ok(m) if m.len() == 0 => "empty file".to_owned(),
        Ok(m) if m.len() < 132 => format!("not DICOM: {} bytes, shorter than the 128-byte preamble and DICM marker", m.len()),
        Ok(_) => "not DICOM: no DICM marker after the 128-byte preamble".to_owned(),
        Err(e) => format!("cannot read: {e}"),
    })
}

fn walk(dir: &Path, found: &mut Found) {
    if !found.first_time(dir) {
        tracing::debug!(dir = %dir.display(), "directory reached again (a symlink loop?): not walked twice");
        found.ignored.push(dir.to_owned());
        return;
    }
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            tracing::debug!(dir = %dir.display(), "cannot list directory: {e}");
            found.fail(dir.to_owned(), format!("cannot list directory: {e}"));
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
        let meta = match std::fs::metadata(&p) {
            Ok(m) => m,
            // A symlink to itself or to nothing, a file gone since the listing.
            Err(e) => {
                found.fail(p, format!("cannot read: {e}"));
                continue;
            }
        };
        if meta.is_dir() {
            walk(&p, found);
        } else if !meta.is_file() {
            found.fail(p, NOT_REGULAR.into());
        } else if is_dicomdir(&p) {
            // Unreadable (its folder is walked instead): reported when it was read.
        } else if is_video_path(&p) {
            let report = sidecar(&p);
            found.input(p, InputKind::Video, report);
        } else if is_dicom(&p) {
            found.input(p, InputKind::Dicom, None);
        } else if let Some(reason) = not_dicom(&p) {
            found.fail(p, reason);
        } else {
            found.ignored.push(p);
        }
    }
}

/// A DICOMDIR's ReferencedFileID as a path under `base`; an error when it would leave the
/// export (absolute, a drive, or `..`).
fn referenced_path(base: &Path, parts: &[String]) -> Result<PathBuf, String> {
    let mut file = base.to_path_buf();
    for part in parts.iter().map(|c| c.trim()) {
        let part = Path::new(part);
        if part.components().any(|c| !matches!(c, Component::Normal(_))) || part.as_os_str().is_empty() {
            return Err(format!("ReferencedFileID {} leaves the export (absolute or `..`)", parts.join("\\")));
        }
        file.push(part);
    }
    Ok(file)
}

/// Adds the image files a DICOMDIR references; false when it cannot be read (the caller then
/// walks the folder instead).
fn read_dicomdir(path: &Path, found: &mut Found) -> bool {
    let obj = match dicom_object::OpenFileOptions::new().open_file(path) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!("an unreadable DICOMDIR: walking its folder instead");
            tracing::debug!(file = %path.display(), "unreadable DICOMDIR: {e}");
            return false;
        }
    };
    let Some(records) = obj.element_opt(tags::DIRECTORY_RECORD_SEQUENCE).ok().flatten().and_then(|e| e.items()) else {
        tracing::warn!("a DICOMDIR without directory records: walking its folder instead");
        tracing::debug!(file = %path.display(), "DICOMDIR without directory records");
        return false;
    };
    let base = path.parent().unwrap_or(Path::new("."));
    found.dicomdirs.push(path.to_owned());
    for rec in records {
        let Some(parts) = rec.element_opt(tags::REFERENCED_FILE_ID).ok().flatten().and_then(|e| e.to_multi_str().ok()) else {
            continue; // PATIENT / STUDY / SERIES records reference no file
        };
        let file = match referenced_path(base, &parts) {
            Ok(f) => f,
            Err(reason) => {
                found.fail(PathBuf::from(format!("{}: {}", path.display(), parts.join("\\"))), format!("{reason}; refused"));
                continue;
            }
        };
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
        found.input(file, InputKind::Dicom, None);
    }
    true
}

fn sidecar(video: &Path) -> Option<PathBuf> {
    let txt = video.with_extension("txt");
    txt.is_file().then_some(txt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dicomdir_references_stay_inside_the_export() {
        let base = Path::new("/export");
        let ok = referenced_path(base, &["DICOM".into(), " IM1 ".into()]).unwrap();
        assert_eq!(ok, Path::new("/export/DICOM/IM1"));
        for bad in [
            vec!["..".to_owned(), "etc".to_owned()],
            vec!["/etc".to_owned(), "passwd".to_owned()],
            vec!["A".to_owned(), "../../x".to_owned()],
            vec!["".to_owned()],
        ] {
            assert!(referenced_path(base, &bad).is_err(), "{bad:?}");
        }
        assert_eq!(tidy(Path::new("export/./bad//x.dcm")), Path::new("export/bad/x.dcm"));
    }
}
