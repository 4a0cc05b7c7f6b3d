//! `echovault phantom --out DIR`: synthetic echocardiograms with ground truth.

use super::Global;
use clap::Args;
use echovault::phantom::{generate, Format, PhantomOptions};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PhantomArgs {
    /// Output directory: dicom/, avi/, manifest.jsonl (the truth per video), reports.jsonl
    /// (for `ingest --reports`), events.jsonl.
    #[arg(long)]
    out: PathBuf,
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
    /// Output formats, used in turn: dicom-jpeg, dicom-native, avi.
    #[arg(long, value_delimiter = ',', default_value = "dicom-jpeg,avi,dicom-native")]
    formats: Vec<Format>,
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
    let opts = PhantomOptions {
        out: a.out.clone(),
        patients: a.patients,
        first_patient: a.first_patient,
        studies,
        size: a.size,
        frames: a.frames,
        fps: a.fps,
        formats: a.formats.clone(),
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
