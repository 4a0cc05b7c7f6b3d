//! Sharded ingest (`ingest --shard I/N`): N machines each ingest the studies of one shard of the
//! same export or DICOMweb archive, and one `import` gathers their exports into one index.
//!
//! **The rule** (stable across machines, platforms and versions; change it and shards of old and
//! new runs overlap): a study belongs to shard
//!
//! ```text
//! u64::from_be_bytes(SHA-256(study id as UTF-8)[0..8]) mod N
//! ```
//!
//! where the study id is what the index stores as the item's study: the DICOM
//! StudyInstanceUID (whitespace and trailing NULs trimmed, as read from the header or listed by
//! QIDO-RS), for a video file (AVI/MP4/MOV) its file name without the extension. Shards are
//! numbered from 0: `0/3`, `1/3`, `2/3`. A study never splits, so a study's vector (the mean of
//! its videos) is the same in its shard as in one ingest of everything, and its report (a
//! manifest line or a sidecar `.txt`) goes with it.
//!
//! A file whose study cannot be read (a DICOM file without a readable header or without a
//! StudyInstanceUID, a `.dcm` that is no DICOM, a video whose name is not UTF-8) belongs to the
//! shard of its file name (the last path component, as UTF-8 with invalid bytes replaced), so
//! that its failure or its video is counted by exactly one shard.

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::OpenFileOptions;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// One shard of N: the studies whose id hashes to `index` (see the module's rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shard {
    index: u32,
    count: u32,
}

impl Shard {
    /// Shard `index` of `count` (0-based): an error unless `count >= 1` and `index < count`.
    pub fn new(index: u32, count: u32) -> Result<Shard, String> {
        if count == 0 {
            return Err(format!("shard {index}/{count}: N must be at least 1"));
        }
        if index >= count {
            let last = count - 1;
            let hint = if index == count {
                format!(" ({index}/{count} looks 1-based: the last shard of {count} is {last}/{count})")
            } else {
                String::new()
            };
            return Err(format!("shard {index}/{count}: shards are numbered from 0, so I must be 0 to {last}{hint}"));
        }
        Ok(Shard { index, count })
    }

    /// I (0-based).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// N.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The shard (0..N) a study id belongs to.
    pub fn of(study: &str, count: u32) -> u32 {
        let digest = Sha256::digest(study.as_bytes());
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        (u64::from_be_bytes(head) % u64::from(count.max(1))) as u32
    }

    /// Whether this shard holds the study `study`.
    pub fn owns(&self, study: &str) -> bool {
        Shard::of(study, self.count) == self.index
    }

    /// Whether this shard holds a file whose study is unknown: by its file name.
    pub fn owns_file(&self, path: &Path) -> bool {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.to_string_lossy().into_owned());
        self.owns(&name)
    }
}

/// The StudyInstanceUID of a DICOM file, from its header alone (read up to the pixel data, whose
/// bytes are never read): `None` when the header cannot be read or names no study.
pub(crate) fn dicom_study(path: &Path) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .read_until(tags::PIXEL_DATA)
        .from_reader(std::io::BufReader::new(f))
        .ok()?;
    let e = obj.element_opt(tags::STUDY_INSTANCE_UID).ok()??;
    let s = e.to_str().ok()?;
    // Trimmed as the header reader trims it (media::dicom), so the study id is the stored one.
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!s.is_empty()).then(|| s.to_owned())
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `I/N`, both decimal integers, `0 <= I < N`.
    fn from_str(s: &str) -> Result<Shard, String> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("{s:?}: a shard is I/N (e.g. 0/3: the first of 3, numbered from 0)"))?;
        let num = |v: &str, what: &str| -> Result<u32, String> {
            v.trim().parse::<u32>().map_err(|_| format!("{s:?}: {what} is not a whole number from 0 up (a shard is I/N, e.g. 0/3)"))
        };
        Shard::new(num(i, "I")?, num(n, "N")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_is_the_first_8_bytes_of_sha256_big_endian_mod_n() {
        // SHA-256("abc") = ba7816bf 8f01cfea 414140de ...: 0xba7816bf8f01cfea.
        let head: u64 = 0xba78_16bf_8f01_cfea;
        for n in [1u32, 2, 3, 7, 1000] {
            assert_eq!(u64::from(Shard::of("abc", n)), head % u64::from(n), "N = {n}");
        }
        // SHA-256("") = e3b0c442 98fc1c14 ...
        assert_eq!(u64::from(Shard::of("", 5)), 0xe3b0_c442_98fc_1c14u64 % 5);
        let s = Shard::new(Shard::of("1.2.840.113619.2.55.3", 4), 4).unwrap();
        assert!(s.owns("1.2.840.113619.2.55.3"));
        assert!(Shard::new(0, 1).unwrap().owns("anything"));
    }

    #[test]
    fn every_study_is_in_exactly_one_shard() {
        for n in 1..6 {
            let shards: Vec<Shard> = (0..n).map(|i| Shard::new(i, n).unwrap()).collect();
            for k in 0..200 {
                let study = format!("1.2.3.{k}");
                assert_eq!(shards.iter().filter(|s| s.owns(&study)).count(), 1, "{study} of {n}");
            }
        }
    }

    #[test]
    fn shards_parse_from_0_to_n_minus_1_and_say_why_not() {
        assert_eq!("0/3".parse::<Shard>().unwrap(), Shard::new(0, 3).unwrap());
        assert_eq!("2/3".parse::<Shard>().unwrap().to_string(), "2/3");
        let e = "3/3".parse::<Shard>().unwrap_err();
        assert!(e.contains("numbered from 0") && e.contains("1-based") && e.contains("2/3"), "{e}");
        let e = "5/3".parse::<Shard>().unwrap_err();
        assert!(e.contains("0 to 2") && !e.contains("1-based"), "{e}");
        let e = "0/0".parse::<Shard>().unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        for bad in ["3", "-1/3", "a/3", "1/b", "1/3/4", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_file_of_unknown_study_goes_by_its_name_wherever_it_is_mounted() {
        let s = Shard::new(Shard::of("IM0001", 3), 3).unwrap();
        assert!(s.owns_file(Path::new("/mnt/a/export/IM0001")));
        assert!(s.owns_file(Path::new("/data/export/IM0001")));
    }
}
