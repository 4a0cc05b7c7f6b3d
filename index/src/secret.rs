//! The patient-key secret (the HMAC key of patient pseudonyms): kept in the index's `meta`
//! table (the default), or in a file outside the index, of which the index keeps only a
//! fingerprint — enough to refuse a wrong file, useless for computing or checking patient keys.
//!
//! A secret file holds the 32 bytes as 64 hex digits (a trailing newline allowed). One is
//! written (mode 0600, never over an existing file) when an index is created with a file that
//! does not exist yet, or when [`crate::Index::export_secret`] moves a stored secret out.

use crate::error::IndexError;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Message whose HMAC under the secret is the fingerprint. It starts with a newline, which a
/// trimmed patient id never does, so no patient key is a prefix of a fingerprint.
const FINGERPRINT_MESSAGE: &[u8] = b"\nechovault patient-key secret fingerprint v1";

/// Where an open index's secret is.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum SecretState {
    /// In `meta` (`KEY_SECRET`).
    Stored([u8; 32]),
    /// In a file outside the index: `meta` holds its fingerprint (`KEY_SECRET_FINGERPRINT`);
    /// `given` once a file with that fingerprint was handed over.
    Outside { fingerprint: [u8; 32], given: Option<[u8; 32]> },
}

impl std::fmt::Debug for SecretState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SecretState::Stored(_) => "Stored(…)",
            SecretState::Outside { given: Some(_), .. } => "Outside(given)",
            SecretState::Outside { given: None, .. } => "Outside(not given)",
        })
    }
}

/// The fingerprint an index keeps of an outside secret: HMAC-SHA-256(secret, a constant).
pub fn fingerprint(secret: &[u8; 32]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(FINGERPRINT_MESSAGE);
    mac.finalize().into_bytes().into()
}

fn file_error(file: &Path, detail: impl Into<String>) -> IndexError {
    IndexError::SecretFile { file: file.to_owned(), detail: detail.into() }
}

/// Reads the secret in `file` (64 hex digits). A file that its group or others may read or
/// write is used with a warning (see [`loose_mode`]).
pub fn read_secret_file(file: &Path) -> Result<[u8; 32], IndexError> {
    if let Some(mode) = loose_mode(file) {
        tracing::warn!(
            file = %file.display(),
            mode = format!("{mode:04o}"),
            "the patient-key secret file is open to its group or others: anyone who reads it can link patient keys to patient ids; run `chmod 600` on it"
        );
    }
    let text = std::fs::read_to_string(file).map_err(|e| file_error(file, e.to_string()))?;
    let hex = text.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(file_error(file, format!("expected 64 hex digits (32 bytes), found {} characters", hex.len())));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| file_error(file, e.to_string()))?;
    }
    Ok(out)
}

/// The permission bits of `file` when its group or others have any (`mode & 0o077`), else
/// `None` (also where it cannot be looked at: the read then says why). A warning, not a
/// refusal: who may read the file is its owner's call (a service group may share it on
/// purpose), and refusing would lock out an index whose patient keys need it.
pub(crate) fn loose_mode(file: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file).ok()?.permissions().mode() & 0o7777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        None
    }
}

/// Writes `secret` to the new file `file` (refused when it exists), readable by its owner only,
/// synced before returning.
pub(crate) fn write_secret_file(file: &Path, secret: &[u8; 32]) -> Result<(), IndexError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(file).map_err(|e| file_error(file, format!("cannot create it: {e}")))?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    f.write_all(format!("{hex}\n").as_bytes()).and_then(|()| f.sync_all()).map_err(|e| file_error(file, e.to_string()))
}

/// Refuses a secret file inside the index directory (a copy of the index would carry it).
pub(crate) fn check_outside(index: &Path, file: &Path) -> Result<(), IndexError> {
    let canon = |p: &Path| -> PathBuf {
        // A file not written yet: its directory's canonical path.
        std::fs::canonicalize(p)
            .or_else(|_| {
                let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                std::fs::canonicalize(parent).map(|d| d.join(p.file_name().unwrap_or_default()))
            })
            .unwrap_or_else(|_| p.to_owned())
    };
    if canon(file).starts_with(canon(index)) {
        return Err(file_error(
            file,
            format!("it is inside the index directory {}: keep the secret apart from the index", index.display()),
        ));
    }
    Ok(())
}

impl SecretState {
    /// The secret, when it is at hand.
    pub(crate) fn get(&self, index: &Path) -> Result<&[u8; 32], IndexError> {
        match self {
            SecretState::Stored(s) | SecretState::Outside { given: Some(s), .. } => Ok(s),
            SecretState::Outside { given: None, .. } => Err(IndexError::SecretNeeded { path: index.to_owned() }),
        }
    }

    /// Hands over the secret in `file`: it must be this index's (the fingerprint, or the stored
    /// secret, must match).
    pub(crate) fn give(&mut self, index: &Path, file: &Path) -> Result<(), IndexError> {
        check_outside(index, file)?;
        let secret = read_secret_file(file)?;
        match self {
            SecretState::Stored(s) if *s == secret => Ok(()),
            SecretState::Stored(_) => Err(IndexError::SecretStored { path: index.to_owned(), file: file.to_owned() }),
            SecretState::Outside { fingerprint: f, given } => {
                if fingerprint(&secret) != *f {
                    return Err(IndexError::SecretMismatch { path: index.to_owned(), file: file.to_owned() });
                }
                *given = Some(secret);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_file_round_trip_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        let secret: [u8; 32] = std::array::from_fn(|i| (i * 7) as u8);
        write_secret_file(&f, &secret).unwrap();
        assert_eq!(read_secret_file(&f).unwrap(), secret);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // Never over an existing file.
        assert!(write_secret_file(&f, &[0; 32]).is_err());
        assert_eq!(read_secret_file(&f).unwrap(), secret);
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "abc\n").unwrap();
        let e = read_secret_file(&bad).unwrap_err().to_string();
        assert!(e.contains("64 hex digits") && e.contains("bad"), "{e}");
        std::fs::write(&bad, "zz".repeat(32)).unwrap();
        assert!(read_secret_file(&bad).is_err());
    }

    #[test]
    fn fingerprint_is_not_the_secret_and_differs_per_secret() {
        let a = fingerprint(&[1; 32]);
        assert_ne!(a, [1; 32]);
        assert_ne!(a, fingerprint(&[2; 32]));
        assert_eq!(a, fingerprint(&[1; 32]));
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_file_open_to_group_or_others_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.hex");
        write_secret_file(&file, &[7; 32]).unwrap();
        assert_eq!(loose_mode(&file), None, "written owner-only");
        for (mode, loose) in [(0o644, Some(0o644)), (0o640, Some(0o640)), (0o602, Some(0o602)), (0o400, None), (0o600, None)] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(loose_mode(&file), loose, "{mode:o}");
            // Still read (a warning, not a refusal).
            assert_eq!(read_secret_file(&file).unwrap(), [7; 32]);
        }
        assert_eq!(loose_mode(&dir.path().join("absent")), None);
    }
}
