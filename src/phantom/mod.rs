//! Phantom echocardiograms with ground truth: synthetic patients whose hearts persist across
//! studies, with a known ejection fraction per study, device artefacts, clinical events that
//! change the heart, and reports written from our own template vocabulary
//! (`data-samples/template-vocab.txt`). Output: DICOM (US multi-frame, JPEG baseline or native
//! RGB), AVI (H.264, FFmpeg) with a sidecar report, `manifest.jsonl` (one line per video: the
//! truth), `reports.jsonl` (the ingest report manifest) and `events.jsonl`.
//!
//! Everything is decided by `--seed`: the same options write the same pixels and truth (the
//! video encoder's bytes may differ between FFmpeg builds; DICOM files are reproducible).

mod draw;
mod write;

pub use draw::{dilation, render, wall_factor, Anatomy, Devices, Scene};
pub use write::DicomCodec;

use crate::error::Error;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// How a video is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// DICOM US multi-frame, JPEG baseline (lossy), YBR_FULL.
    DicomJpeg,
    /// DICOM US multi-frame, native explicit-VR little-endian RGB.
    DicomNative,
    /// DICOM US multi-frame, an H.264 stream (transfer syntax 1.2.840.10008.1.2.4.102).
    DicomH264,
    /// AVI, H.264 through FFmpeg, with a sidecar `.txt` report.
    Avi,
}

impl Format {
    /// The DICOM codec of a DICOM format (`None` for AVI).
    pub fn dicom_codec(self) -> Option<DicomCodec> {
        match self {
            Format::DicomJpeg => Some(DicomCodec::Jpeg),
            Format::DicomNative => Some(DicomCodec::Native),
            Format::DicomH264 => Some(DicomCodec::H264),
            Format::Avi => None,
        }
    }

    /// The DICOM format written with `codec`.
    pub fn of_codec(codec: DicomCodec) -> Format {
        match codec {
            DicomCodec::Jpeg => Format::DicomJpeg,
            DicomCodec::Native => Format::DicomNative,
            DicomCodec::H264 => Format::DicomH264,
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dicom-jpeg" => Ok(Format::DicomJpeg),
            "dicom-native" => Ok(Format::DicomNative),
            "dicom-h264" => Ok(Format::DicomH264),
            "avi" => Ok(Format::Avi),
            _ => Err(format!("unknown format {s:?}: dicom-jpeg, dicom-native, dicom-h264 or avi")),
        }
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct PhantomOptions {
    /// Output directory (created).
    pub out: PathBuf,
    /// Number of patients.
    pub patients: usize,
    /// Studies per patient, inclusive range.
    pub studies: (usize, usize),
    /// Image side in pixels.
    pub size: usize,
    /// Frames per video.
    pub frames: usize,
    /// Frames per second.
    pub fps: f64,
    /// Formats, used in turn.
    pub formats: Vec<Format>,
    /// When set, every DICOM format in `formats` is written with this codec instead (the same
    /// phantoms, another pixel encoding: `--dicom-codec`).
    pub dicom_codec: Option<DicomCodec>,
    /// Fraction of patients with a pacemaker lead.
    pub pacemaker: f64,
    /// Fraction of patients with a MitraClip.
    pub mitraclip: f64,
    /// Fraction of patients with a transcatheter aortic valve from their first study on (drawn
    /// from a stream of its own: 0 leaves every other draw as it was).
    pub valve: f64,
    /// Fraction of patients with a clinical event (transplant or valve surgery) between studies.
    pub events: f64,
    /// Seed of everything.
    pub seed: u64,
    /// Number of the first patient (lets separate runs make disjoint patient sets).
    pub first_patient: usize,
}

impl Default for PhantomOptions {
    fn default() -> Self {
        PhantomOptions {
            out: PathBuf::from("phantoms"),
            patients: 20,
            studies: (2, 4),
            size: 112,
            frames: 32,
            fps: 30.0,
            formats: vec![Format::DicomJpeg, Format::Avi, Format::DicomNative],
            dicom_codec: None,
            pacemaker: 0.25,
            mitraclip: 0.15,
            valve: 0.0,
            events: 0.3,
            seed: 1,
            first_patient: 1,
        }
    }
}

/// A clinical event that changes the heart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Patient id (the phantom's own, as in the DICOM PatientID).
    pub patient: String,
    /// Date, `YYYY-MM-DD`.
    pub date: String,
    /// `heart_transplant` or `valve_replacement`.
    pub event: String,
}

/// The truth about one video (a line of `manifest.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    /// Path relative to the output directory.
    pub file: String,
    /// Format written.
    pub format: Format,
    /// Phantom patient id (PatientID in DICOM; ingest pseudonymises it).
    pub patient: String,
    /// Study id as ingest sees it: the StudyInstanceUID for DICOM, the file stem for AVI.
    pub study: String,
    /// Study date.
    pub date: String,
    /// Ejection fraction, percent (integer, as reported).
    pub ef: f64,
    /// Heart rate, bpm.
    pub heart_rate: f64,
    /// Devices present: `pacemaker`, `valve`, `mitraclip`.
    pub devices: Vec<String>,
    /// Events of this patient dated on or before this study.
    pub after_events: Vec<String>,
    /// The study's report.
    pub report: String,
    /// Whether a heart transplant replaced the heart before this study.
    pub transplanted: bool,
}

/// What a run wrote.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PhantomSummary {
    /// Videos written.
    pub videos: usize,
    /// Patients.
    pub patients: usize,
    /// Events.
    pub events: usize,
    /// The manifest path.
    pub manifest: String,
}

/// Generates the phantoms.
pub fn generate(opts: &PhantomOptions) -> Result<PhantomSummary, Error> {
    if opts.patients == 0 || opts.studies.0 == 0 || opts.studies.0 > opts.studies.1 || opts.size < 32 || opts.frames == 0 {
        return Err(Error::Invalid("phantom: need ≥ 1 patient, 1 ≤ min studies ≤ max studies, size ≥ 32, frames ≥ 1".into()));
    }
    if opts.formats.is_empty() {
        return Err(Error::Invalid("phantom: no output format".into()));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let mut manifest = Vec::new();
    let mut reports = Vec::new();
    let mut events = Vec::new();
    let mut n_video = 0usize;
    for p in 0..opts.patients {
        let number = opts.first_patient + p;
        let mut rng = StdRng::seed_from_u64(opts.seed ^ (number as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let patient = format!("PHANTOM-{number:05}");
        let mut anatomy = Anatomy::random(&mut rng);
        let mut ef_base: f64 = rng.random_range(12.0..78.0);
        let hr_base: f64 = rng.random_range(55.0..95.0);
        let pacemaker = rng.random_bool(opts.pacemaker);
        let mitraclip = rng.random_bool(opts.mitraclip);
        let tavr = StdRng::seed_from_u64(opts.seed ^ (number as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)).random_bool(opts.valve);
        let n_studies = rng.random_range(opts.studies.0..=opts.studies.1);
        // Studies 2 months to 2 years apart from a start in 2015–2022.
        let mut day = days_from_civil(2015, 1, 1) + rng.random_range(0..8 * 365);
        let mut dates = Vec::new();
        for _ in 0..n_studies {
            dates.push(day);
            day += rng.random_range(60..730);
        }
        let event = if n_studies >= 2 && rng.random_bool(opts.events) {
            let after = rng.random_range(1..n_studies);
            let when = dates[after - 1] + (dates[after] - dates[after - 1]) / 2;
            let kind = if rng.random_bool(0.5) { "heart_transplant" } else { "valve_replacement" };
            Some((when, kind))
        } else {
            None
        };
        if let Some((when, kind)) = event {
            events.push(Event { patient: patient.clone(), date: civil(when), event: kind.into() });
        }
        let mut changed = false;
        for (s, &date) in dates.iter().enumerate() {
            let mut devices = Devices { pacemaker, valve: tavr, mitraclip };
            let mut after_events = Vec::new();
            let mut transplanted = false;
            if let Some((when, kind)) = event {
                if date > when {
                    after_events.push(kind.to_owned());
                    if !changed {
                        changed = true;
                        if kind == "heart_transplant" {
                            // A donor heart: new anatomy, usually good function, no old devices.
                            anatomy = Anatomy::random(&mut rng);
                            ef_base = rng.random_range(50.0..72.0);
                        } else {
                            // Valve replacement: remodelling, a smaller ventricle.
                            anatomy.lv_axes = (anatomy.lv_axes.0 * 0.9, anatomy.lv_axes.1 * 0.9);
                            anatomy.atria.0 *= 0.85;
                            ef_base = (ef_base + rng.random_range(0.0..10.0)).min(78.0);
                        }
                    }
                    if kind == "heart_transplant" {
                        devices.pacemaker = false;
                        devices.mitraclip = false;
                        devices.valve = false;
                        transplanted = true;
                    } else {
                        devices.valve = true;
                    }
                }
            }
            let ef = (ef_base + rng.random_range(-3.0..3.0)).clamp(10.0, 80.0).round();
            let heart_rate = (hr_base + rng.random_range(-6.0..6.0)).round();
            let format = match (opts.formats[n_video % opts.formats.len()], opts.dicom_codec) {
                (f, Some(codec)) if f != Format::Avi => Format::of_codec(codec),
                (f, _) => f,
            };
            n_video += 1;
            let scene = Scene {
                anatomy: anatomy.clone(),
                ef,
                heart_rate,
                devices,
                size: opts.size,
                frames: opts.frames,
                fps: opts.fps,
                seed: rng.random(),
            };
            let report = report_text(&scene, transplanted);
            let study_uid = format!("2.25.{}", uid_number(opts.seed, number, s, 1));
            let stem = format!("{patient}-S{}", s + 1);
            let (file, study) = match format {
                Format::Avi => (format!("avi/{stem}.avi"), stem.clone()),
                Format::DicomJpeg | Format::DicomNative | Format::DicomH264 => {
                    (format!("dicom/{patient}/S{}/IM0001.dcm", s + 1), study_uid.clone())
                }
            };
            let path = opts.out.join(&file);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            let frames = render(&scene);
            match format {
                Format::Avi => {
                    write::avi(&path, &frames, opts.fps)?;
                    std::fs::write(path.with_extension("txt"), format!("{report}\n")).map_err(|e| Error::io(&path, e))?;
                }
                Format::DicomJpeg | Format::DicomNative | Format::DicomH264 => {
                    let meta = write::DicomMeta {
                        patient: &patient,
                        study_uid: &study_uid,
                        series_uid: &format!("2.25.{}", uid_number(opts.seed, number, s, 2)),
                        sop_uid: &format!("2.25.{}", uid_number(opts.seed, number, s, 3)),
                        date: &civil(date).replace('-', ""),
                        fps: opts.fps,
                        heart_rate,
                    };
                    let codec = format.dicom_codec().unwrap_or(DicomCodec::Native);
                    write::dicom(&path, &frames, &meta, codec)?;
                }
            }
            let mut dev = Vec::new();
            for (on, name) in [(devices.pacemaker, "pacemaker"), (devices.valve, "valve"), (devices.mitraclip, "mitraclip")] {
                if on {
                    dev.push(name.to_owned());
                }
            }
            reports.push(serde_json::json!({"study": study, "text": report, "date": civil(date), "patient": patient}));
            manifest.push(Truth {
                file,
                format,
                patient: patient.clone(),
                study,
                date: civil(date),
                ef,
                heart_rate,
                devices: dev,
                after_events,
                report,
                transplanted,
            });
        }
    }
    let write_lines = |name: &str, lines: Vec<String>| -> Result<(), Error> {
        let path = opts.out.join(name);
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?);
        for l in lines {
            writeln!(f, "{l}").map_err(|e| Error::io(&path, e))?;
        }
        f.flush().map_err(|e| Error::io(&path, e))
    };
    // Plain structs of strings and numbers: serialising them cannot fail.
    write_lines("manifest.jsonl", manifest.iter().map(|t| serde_json::to_string(t).unwrap_or_default()).collect())?;
    write_lines("reports.jsonl", reports.iter().map(|r| r.to_string()).collect())?;
    write_lines("events.jsonl", events.iter().map(|e| serde_json::to_string(e).unwrap_or_default()).collect())?;
    Ok(PhantomSummary {
        videos: manifest.len(),
        patients: opts.patients,
        events: events.len(),
        manifest: opts.out.join("manifest.jsonl").display().to_string(),
    })
}

/// Reads `manifest.jsonl`.
pub fn read_manifest(path: &Path) -> Result<Vec<Truth>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::media(path, format!("line {}: {e}", i + 1))))
        .collect()
}

/// A deterministic decimal UID component (< 2^126, so `2.25.N` stays under 64 characters).
fn uid_number(seed: u64, patient: usize, study: usize, what: u8) -> u128 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update((patient as u64).to_le_bytes());
    h.update((study as u64).to_le_bytes());
    h.update([what]);
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    u128::from_be_bytes(b) >> 2
}

/// The study's report, in the phrases of our template vocabulary.
fn report_text(scene: &Scene, transplanted: bool) -> String {
    let ef = scene.ef;
    let mut s = vec![ef_sentences(ef)];
    let dil = dilation(ef) * scene.anatomy.lv_axes.0 / 0.20;
    s.push(if dil < 1.1 {
        "NORMAL LEFT VENTRICULAR SIZE.".to_owned()
    } else {
        format!("THE LEFT VENTRICLE IS {} DILATED.", if dil < 1.25 { "MILDLY" } else { "MODERATELY" })
    });
    let la = scene.anatomy.atria.0;
    if la >= 1.15 {
        s.push(format!("THE LEFT ATRIUM IS {} DILATED.", if la < 1.3 { "MILDLY" } else { "MODERATELY" }));
    }
    if scene.anatomy.rv_size >= 1.12 {
        s.push("THE RIGHT VENTRICLE IS MILDLY DILATED.".into());
    } else {
        s.push("NORMAL RIGHT VENTRICULAR SIZE AND FUNCTION.".into());
    }
    if scene.devices.pacemaker {
        s.push("A PACEMAKER LEAD IS SEEN IN THE RIGHT HEART.".into());
    }
    if scene.devices.valve {
        s.push("A TRANSCATHETER AORTIC VALVE PROSTHESIS IS PRESENT.".into());
    }
    if scene.devices.mitraclip {
        s.push("A MITRACLIP IS SEEN ON THE MITRAL LEAFLETS.".into());
    }
    if transplanted {
        s.push("THE PATIENT IS STATUS POST HEART TRANSPLANT.".into());
    }
    s.push(format!("THE HEART RATE IS {:.0} BEATS PER MINUTE.", scene.heart_rate));
    // Only what the cine shows: no effusion is ever drawn.
    s.push("NO PERICARDIAL EFFUSION.".into());
    s.join(" ")
}

/// The sentences of a report that state an ejection fraction: the function grade and the EF to
/// the nearest 5 % (also the zero-shot prompts for EF, one per candidate value).
pub fn ef_sentences(ef: f64) -> String {
    let function = if ef >= 70.0 {
        "HYPERDYNAMIC LEFT VENTRICULAR SYSTOLIC FUNCTION.".to_owned()
    } else if ef >= 52.0 {
        "NORMAL LEFT VENTRICULAR SYSTOLIC FUNCTION.".to_owned()
    } else {
        let grade = if ef >= 41.0 {
            "MILDLY"
        } else if ef >= 30.0 {
            "MODERATELY"
        } else {
            "SEVERELY"
        };
        format!("{grade} REDUCED LEFT VENTRICULAR SYSTOLIC FUNCTION.")
    };
    // Reported to the nearest 5 %, as echo reports usually give it (the truth keeps the exact EF).
    format!("{function} LEFT VENTRICULAR EJECTION FRACTION IS {:.0} %.", (ef / 5.0).round() * 5.0)
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// `YYYY-MM-DD` of a day number.
pub fn civil(days: i64) -> String {
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(civil(0), "1970-01-01");
        assert_eq!(civil(days_from_civil(2020, 2, 29)), "2020-02-29");
        for d in (days_from_civil(2014, 12, 25)..days_from_civil(2025, 1, 5)).step_by(17) {
            let s = civil(d);
            let (y, m, dd) = (s[..4].parse().unwrap(), s[5..7].parse().unwrap(), s[8..].parse().unwrap());
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }

    #[test]
    fn reports_use_only_template_phrases() {
        // Every word of every report is covered by a phrase of our template vocabulary, as
        // EchoCLIP-R's template tokenizer matches it (nothing falls into an unknown stretch).
        let vocab = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/data-samples/template-vocab.txt"));
        let tok = crate::tokenize::TemplateTokenizer::load(vocab, 77).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        for ef in [15.0, 35.0, 45.0, 60.0, 75.0] {
            for (devices, transplanted) in [(true, true), (false, false)] {
                let scene = Scene {
                    anatomy: Anatomy::random(&mut rng),
                    ef,
                    heart_rate: 70.0,
                    devices: Devices { pacemaker: devices, valve: devices, mitraclip: devices },
                    size: 64,
                    frames: 1,
                    fps: 30.0,
                    seed: 1,
                };
                let text = report_text(&scene, transplanted);
                let (ids, unknown) = tok.encode_explained(&text).unwrap();
                assert!(unknown.is_empty(), "not covered by the vocabulary: {unknown:?} in {text}");
                let phrases = ids.iter().filter(|&&i| i < tok.phrase_vocab()).count();
                assert_eq!(phrases, text.matches(". ").count() + 1, "one phrase per sentence: {text}");
            }
        }
    }
}
