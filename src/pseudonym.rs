//! Patient keys: a keyed hash (HMAC-SHA-256 with the index's secret) of the raw PatientID, so
//! that raw identifiers never reach the index or the logs while the same patient keeps the same
//! key within one index. The secret lives in the index's `meta` table, or outside the index
//! (`--secret-file`), where the index keeps only its fingerprint (`echovault_index::secret`).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::{Path, PathBuf};

/// Environment variable naming the patient-key secret file, as `--secret-file` does.
pub const SECRET_FILE_ENV: &str = "ECHOVAULT_SECRET_FILE";

/// The secret file to use: `flag` (`--secret-file`), else `ECHOVAULT_SECRET_FILE` when set and
/// not empty, else none (the index's own secret).
pub fn secret_file(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_owned).or_else(|| std::env::var_os(SECRET_FILE_ENV).filter(|v| !v.is_empty()).map(PathBuf::from))
}

/// Pseudonymous key for `patient_id` under `secret`: `p-` + the first 16 hex digits of
/// HMAC-SHA-256(secret, trimmed id).
pub fn patient_key(secret: &[u8; 32], patient_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(patient_id.trim().as_bytes());
    let tag = mac.finalize().into_bytes();
    format!("p-{}", hex::encode(&tag[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_secret_same_key_other_secret_other_key() {
        let a = patient_key(&[1; 32], "12345");
        assert_eq!(a, patient_key(&[1; 32], " 12345 "));
        assert_ne!(a, patient_key(&[2; 32], "12345"));
        assert_ne!(a, patient_key(&[1; 32], "12346"));
        assert!(!a.contains("12345"));
    }

    /// Keys must never change (an index holds them): values from Python's `hmac` module,
    /// `"p-" + hmac.new(key, id.strip().encode(), "sha256").hexdigest()[:16]`, which the
    /// hand-written HMAC this module had before the `hmac` crate also gave.
    #[test]
    fn keys_match_python_hmac() {
        let counting: [u8; 32] = std::array::from_fn(|i| i as u8);
        let falling: [u8; 32] = std::array::from_fn(|i| 255 - i as u8);
        assert_eq!(patient_key(&counting, "abc"), "p-f0133729c4163ded");
        assert_eq!(patient_key(&[1; 32], "12345"), "p-cd60b16ebd553d6a");
        assert_eq!(patient_key(&counting, ""), "p-d38b42096d80f45f");
        assert_eq!(patient_key(&falling, "MRN-0042"), "p-1259655e710e0ebe");
        assert_eq!(patient_key(&counting, "Müller^Jörg"), "p-e61d64609b5f941a");
        // Longer than SHA-256's 64-byte block.
        assert_eq!(patient_key(&[7; 32], &"x".repeat(200)), "p-ca887be37c4a4874");
    }
}
