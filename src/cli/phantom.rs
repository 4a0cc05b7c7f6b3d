//! `echovault phantom --out DIR`: synthetic echocardiograms with ground truth.

use super::Global;
use clap::Args;
use echovault::phantom::{generate, DicomCodec, Format, PhantomOptions};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct PhantomArgs {
    /// Output directory: dicom/, avi/, manifest.jsonl (the truth per video), reports.jsonl
    /// (for `ingest --reports`), events.jsonl. It must be new or empty, unless --force.
    #[arg(long)]
    out: PathBuf,
    /// Write into a non-empty --out: same-named files are replaced, other files stay (an
    /// ingest of the folder would take them too).
    #[arg(long)]
    force: bool,
    /// Number of patients.
    #[arg(long, default_value_t = 20)]
    patients: usize,
    /// Number of the first patient (PHANTOM-NNNNN): separate runs with disjoint numbers give
    /// disjoint patients (e.g. training and held-out sets).
    #[arg(long, default_value_t = 1)]
    first_patient: usize,
    /// Studies per patient, MIN:MAX.
    #[arg(long, default_value = "2:4")]
    studies: String,
    /// Image side in pixels (even).
    #[arg(long, default_value_t = 112)]
    size: usize,
    /// Frames per video.
    #[arg(long = "num-frames", alias = "frames", default_value_t = 32, value_parser = super::positive)]
    frames: usize,
    /// Frames per second.
    #[arg(long, default_value_t = 30.0)]
    fps: f64,
    /// Output formats, used in turn: dicom-jpeg, dicom-native, dicom-h264, avi.
    #[arg(long, value_delimiter = ',', default_value = "dicom-jpeg,avi,dicom-native")]
    formats: Vec<Format>,
    /// Pixel encoding of every DICOM video (overrides the dicom-* formats; the phantoms stay the
    /// same): jpeg (baseline, lossy), native (RGB), h264 (an FFmpeg-encoded H.264 stream,
    /// transfer syntax 1.2.840.10008.1.2.4.102).
    #[arg(long, value_parser = parse_dicom_codec)]
    dicom_codec: Option<DicomCodec>,
    /// Fraction of patients with a pacemaker lead.
    #[arg(long, default_value_t = 0.25)]
    pacemaker: f64,
    /// Fraction of patients with a MitraClip.
    #[arg(long, default_value_t = 0.15)]
    mitraclip: f64,
    /// Fraction of patients with a transcatheter aortic valve from their first study on.
    #[arg(long, default_value_t = 0.0)]
    valve: f64,
    /// Fraction of patients with a heart transplant or valve replacement between two studies.
    #[arg(long, default_value_t = 0.3)]
    events: f64,
    /// Seed: the same options and seed give the same phantoms.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(g: &Global, a: &PhantomArgs) -> anyhow::Result<i32> {
    let (lo, hi) = a.studies.split_once(':').unwrap_or((&a.studies, &a.studies));
    let studies = (lo.trim().parse()?, hi.trim().parse()?);
    for (name, p) in [("pacemaker", a.pacemaker), ("mitraclip", a.mitraclip), ("valve", a.valve), ("events", a.events)] {
        anyhow::ensure!((0.0..=1.0).contains(&p), "--{name} must be a fraction between 0 and 1");
    }
    anyhow::ensure!(a.size % 2 == 0, "--size must be even (H.264 needs even sides)");
    anyhow::ensure!(a.fps > 0.0, "--fps must be positive");
    if !a.force {
        refuse_non_empty(&a.out)?;
    }
    let opts = PhantomOptions {
        out: a.out.clone(),
        patients: a.patients,
        first_patient: a.first_patient,
        studies,
        size: a.size,
        frames: a.frames,
        fps: a.fps,
        formats: a.formats.clone(),
        dicom_codec: a.dicom_codec,
        pacemaker: a.pacemaker,
        mitraclip: a.mitraclip,
        valve: a.valve,
        events: a.events,
        seed: a.seed,
    };
    let s = generate(&opts)?;
    if g.json {
        println!("{}", serde_json::to_value(&s)?);
    } else {
        println!(
            "wrote {} videos of {} phantom patients ({} events) to {}; truth in {}",
            s.videos,
            s.patients,
            s.events,
            a.out.display(),
            s.manifest
        );
    }
    Ok(0)
}

fn parse_dicom_codec(s: &str) -> Result<DicomCodec, String> {
    match s {
        "jpeg" => Ok(DicomCodec::Jpeg),
        "native" => Ok(DicomCodec::Native),
        "h264" => Ok(DicomCodec::H264),
        _ => Err(format!("unknown DICOM codec {s:?}: jpeg, native or h264")),
    }
}

/// Refuses an existing --out that holds anything: phantoms written among other files would
/// mix with them (an older manifest's truth, another run's videos an ingest would take too).
fn refuse_non_empty(out: &Path) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(out) {
        Ok(d) => d.count(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => anyhow::bail!("--out {}: not a directory", out.display()),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("--out {}", out.display()))),
    };
    anyhow::ensure!(
        entries == 0,
        "--out {} is not empty ({entries} entries): phantoms would mix with what is there — choose a new directory, or pass --force to write into it",
        out.display()
    );
    Ok(())
}
