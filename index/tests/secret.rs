//! The patient-key secret kept outside the index (`IndexOptions::secret_file`,
//! `Index::use_secret_file`, `Index::export_secret`): the index then holds only a fingerprint,
//! no byte of the secret (in any file, the write-ahead log included); a wrong secret file is
//! refused; an index with its own secret keeps working and can move it out, keys unchanged.

#![allow(clippy::unwrap_used)]

use echovault_index::{read_secret_file, Index, IndexError, IndexOptions, ItemRecord, Kind};
use std::path::{Path, PathBuf};

fn with_file(file: &Path) -> IndexOptions {
    IndexOptions { secret_file: Some(file.to_owned()), ..IndexOptions::default() }
}

/// Every file under `dir` holding `needle`, as paths.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_holding(&p, needle));
        } else if std::fs::read(&p).unwrap().windows(needle.len()).any(|w| w == needle) {
            out.push(p);
        }
    }
    out
}

fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// No copy of `secret` (bytes or hex) under `dir`, and the search would find one if it were.
fn assert_absent(dir: &Path, secret: &[u8; 32]) {
    assert_eq!(files_holding(dir, secret), Vec::<PathBuf>::new(), "secret bytes under {}", dir.display());
    assert_eq!(files_holding(dir, hex(secret).as_bytes()), Vec::<PathBuf>::new(), "secret hex under {}", dir.display());
}

fn put_one(index: &Index) {
    let mut b = index.batch();
    let mut r = ItemRecord::new("v1", Kind::Video, "x");
    r.patient = Some("p-0123456789abcdef".into());
    b.put_item(r);
    index.commit(b).unwrap();
}

#[test]
fn an_outside_secret_leaves_only_a_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let (idx, file) = (dir.path().join("idx"), dir.path().join("secret.hex"));
    let secret = {
        let index = Index::open(&idx, with_file(&file)).unwrap();
        assert!(index.secret_is_outside());
        let s = *index.secret().unwrap();
        put_one(&index);
        s
    };
    // Written on creation: owner-only, the secret the index used.
    assert_eq!(read_secret_file(&file).unwrap(), secret);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // The search works: the file itself holds the hex.
    assert_eq!(files_holding(dir.path(), hex(&secret).as_bytes()), vec![file.clone()]);
    assert_absent(&idx, &secret);

    // Without the file the index opens, but keys nothing.
    let mut reader = Index::open_reader(&idx).unwrap();
    assert!(matches!(reader.secret(), Err(IndexError::SecretNeeded { .. })));
    assert!(reader.secret().unwrap_err().to_string().contains("--secret-file"));
    reader.use_secret_file(&file).unwrap();
    assert_eq!(reader.secret().unwrap(), &secret);
    drop(reader);

    // A wrong secret is refused, naming the file.
    let wrong = dir.path().join("other.hex");
    std::fs::write(&wrong, format!("{}\n", "ab".repeat(32))).unwrap();
    let e = Index::open(&idx, with_file(&wrong)).unwrap_err();
    assert!(matches!(e, IndexError::SecretMismatch { .. }), "{e}");
    assert!(e.to_string().contains("other.hex"), "{e}");
    let mut reader = Index::open_reader(&idx).unwrap();
    assert!(matches!(reader.use_secret_file(&wrong), Err(IndexError::SecretMismatch { .. })));
    assert!(reader.secret().is_err(), "a refused file hands nothing over");
    // Not hex, missing, or inside the index: refused with the reason.
    std::fs::write(&wrong, "not a secret").unwrap();
    assert!(reader.use_secret_file(&wrong).unwrap_err().to_string().contains("64 hex digits"));
    assert!(matches!(reader.use_secret_file(&dir.path().join("absent")), Err(IndexError::SecretFile { .. })));
    let inside = idx.join("secret.hex");
    std::fs::copy(&file, &inside).unwrap();
    assert!(reader.use_secret_file(&inside).unwrap_err().to_string().contains("inside the index directory"));
    std::fs::remove_file(&inside).unwrap();
    drop(reader);

    // The right file as a writer.
    let index = Index::open(&idx, with_file(&file)).unwrap();
    assert_eq!(index.secret().unwrap(), &secret);
}

#[test]
fn a_stored_secret_keeps_working_and_moves_out_with_the_same_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (idx, file) = (dir.path().join("idx"), dir.path().join("secret.hex"));
    let mut index = Index::open(&idx, IndexOptions::default()).unwrap();
    assert!(!index.secret_is_outside());
    let secret = *index.secret().unwrap();
    put_one(&index);
    // The stored secret is in the index's files (the check below can see it).
    assert!(!files_holding(&idx, &secret).is_empty());
    // A file with another secret is refused; one with the same secret is accepted.
    let other = dir.path().join("other.hex");
    std::fs::write(&other, "cd".repeat(32)).unwrap();
    assert!(matches!(index.use_secret_file(&other), Err(IndexError::SecretStored { .. })));
    index.export_secret(&file).unwrap();
    assert_eq!(read_secret_file(&file).unwrap(), secret);
    assert!(index.secret_is_outside());
    assert_eq!(index.secret().unwrap(), &secret);
    // Moved out once: a second export, or over an existing file, is refused.
    assert!(index.export_secret(&dir.path().join("again.hex")).is_err());
    drop(index);
    assert_absent(&idx, &secret);
    let index = Index::open(&idx, IndexOptions::default()).unwrap();
    assert!(index.secret_is_outside());
    assert!(index.secret().is_err());
    drop(index);
    let index = Index::open(&idx, with_file(&file)).unwrap();
    assert_eq!(index.secret().unwrap(), &secret, "patient keys stay the same");
    assert_eq!(index.get_item(&"v1".into()).unwrap().unwrap().patient.as_deref(), Some("p-0123456789abcdef"));
}

#[test]
fn export_is_refused_over_an_existing_file_and_by_readers() {
    let dir = tempfile::tempdir().unwrap();
    let (idx, file) = (dir.path().join("idx"), dir.path().join("secret.hex"));
    let mut index = Index::open(&idx, IndexOptions::default()).unwrap();
    std::fs::write(&file, "keep me").unwrap();
    assert!(matches!(index.export_secret(&file), Err(IndexError::SecretFile { .. })));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    assert!(!index.secret_is_outside(), "nothing changed");
    drop(index);
    let mut reader = Index::open_reader(&idx).unwrap();
    assert!(matches!(reader.export_secret(&dir.path().join("new.hex")), Err(IndexError::ReadOnly { .. })));
}

/// An export cut short after the file was written and before `meta` changed leaves the file
/// while the index still stores the secret: the retry accepts that file (it holds this
/// secret) and finishes, keys unchanged; a file with any other secret is still refused.
#[test]
fn an_export_cut_short_after_the_file_is_finished_by_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (idx, file) = (dir.path().join("idx"), dir.path().join("secret.hex"));
    let mut index = Index::open(&idx, IndexOptions::default()).unwrap();
    let secret = *index.secret().unwrap();
    put_one(&index);
    let other = dir.path().join("other.hex");
    std::fs::write(&other, format!("{}\n", hex(&[0xcd; 32]))).unwrap();
    assert!(matches!(index.export_secret(&other), Err(IndexError::SecretFile { .. })));
    assert!(!index.secret_is_outside());
    // What the cut-short export left: the file, owner-only, the index unchanged.
    std::fs::write(&file, format!("{}\n", hex(&secret))).unwrap();
    #[cfg(unix)]
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    index.export_secret(&file).unwrap();
    assert!(index.secret_is_outside());
    assert_eq!(read_secret_file(&file).unwrap(), secret);
    drop(index);
    assert_absent(&idx, &secret);
    let index = Index::open(&idx, with_file(&file)).unwrap();
    assert_eq!(index.secret().unwrap(), &secret, "patient keys stay the same");
}
