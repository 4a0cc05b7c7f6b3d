//! `echovault search (--text T | --video FILE | --like ID)`: parses the flags into a
//! [`SearchRequest`], runs [`echovault::tasks::search::search`], renders its answer.

use super::output::{group_header, hit_line, without_paths};
use super::{open_reader_engine, positive, AllOpts, Global, Groups};
use clap::{ArgGroup, Args};
use echovault::index::{Filter, Kind, StudyDate};
use echovault::tasks::search::{search, GroupBy, SearchRequest, SearchResponse, VideoQuery};
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("query").required(true).args(["text", "video", "like"])))]
pub struct SearchArgs {
    /// Free text, e.g. "severe mitral regurgitation".
    #[arg(long)]
    text: Option<String>,
    /// A video file to find similar items for.
    #[arg(long)]
    video: Option<PathBuf>,
    /// Crop a DICOM --video's frames to its ultrasound region, as `ingest --crop-region` does.
    #[arg(long, requires = "video")]
    crop_region: bool,
    /// An indexed item (video, report or study id) to find similar items for.
    #[arg(long = "id", alias = "like", value_name = "ID")]
    like: Option<String>,
    /// Kind of items to return: video, report or study.
    #[arg(long, default_value = "video")]
    kind: Kind,
    /// Number of hits (with --group-by: of groups).
    #[arg(short = 'k', alias = "k", default_value_t = 10, value_parser = positive)]
    k: usize,
    #[command(flatten)]
    pub filter: FilterOpts,
    /// Group the hits by study or patient: the best --group-size hits of each of k groups,
    /// groups ordered by their best hit.
    #[arg(long)]
    group_by: Option<GroupBy>,
    /// Hits per group with --group-by (default 3).
    #[arg(long, requires = "group_by")]
    group_size: Option<usize>,
    /// Exact (brute-force) search instead of the HNSW graph.
    #[arg(long)]
    exact: bool,
    /// With --json: include each hit's `source` (the ingested file's path, which in a PACS
    /// export often carries patient names or MRNs). The text output always shows it.
    #[arg(long)]
    with_paths: bool,
    #[command(flatten)]
    pub opts: AllOpts,
}

/// Which items: the filters `search` and `export` share.
#[derive(Args, Debug, Clone, Default)]
pub struct FilterOpts {
    /// Only this (pseudonymous) patient key (as search, reid and timeline show it).
    #[arg(long, conflicts_with = "patient_id")]
    pub patient: Option<String>,
    /// Only this patient, by their own id (MRN), keyed with the index's secret and never printed;
    /// `-` reads it from stdin, `env` from $ECHOVAULT_PATIENT_ID (either keeps it out of shell
    /// history and `ps`). Search never reads $ECHOVAULT_PATIENT_ID unasked.
    #[arg(long, value_name = "MRN|-|env")]
    pub patient_id: Option<String>,
    /// Only this study id.
    #[arg(long)]
    pub study: Option<String>,
    /// Only studies on or after this date (YYYY-MM-DD).
    #[arg(long)]
    pub since: Option<StudyDate>,
    /// Only studies on or before this date (YYYY-MM-DD).
    #[arg(long)]
    pub until: Option<StudyDate>,
}

impl FilterOpts {
    /// `--patient-id` as given (read from stdin or the environment when asked), never printed.
    pub fn patient_id(&self) -> anyhow::Result<Option<String>> {
        super::patient_id_arg(self.patient_id.as_deref(), false)
    }

    /// The index filter, with `patient_key` (the key of `--patient-id`) or else `--patient`.
    pub fn filter(&self, patient_key: Option<String>) -> Filter {
        Filter {
            patient: patient_key.or_else(|| self.patient.clone()),
            study: self.study.clone(),
            since: self.since,
            until: self.until,
            exclude: Vec::new(),
        }
    }
}

impl SearchArgs {
    pub fn groups(&self) -> Groups<'_> {
        self.opts.groups()
    }
}

pub fn run(g: &Global, a: &SearchArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(g.index.is_dir(), "no index at {} (run `echovault ingest` first, or pass --index DIR)", g.index.display());
    anyhow::ensure!(a.k > 0, "-k must be at least 1");
    let patient_id = a.filter.patient_id()?;
    let mut engine = open_reader_engine(g)?;
    engine.crop_regions = a.crop_region;
    let key = match patient_id {
        Some(mrn) => Some(echovault::pseudonym::patient_key(engine.index.secret()?, &mrn)),
        None => None,
    };
    let filter = a.filter.filter(key);
    let mut req = SearchRequest {
        text: a.text.clone(),
        like: a.like.clone(),
        kind: a.kind,
        k: a.k,
        patient: filter.patient,
        study: filter.study,
        since: filter.since,
        until: filter.until,
        group_by: a.group_by,
        group_size: a.group_size,
        exact: a.exact,
        ..SearchRequest::default()
    };
    if let Some(p) = &a.video {
        req.video = Some(VideoQuery { name: p.display().to_string(), vector: video_query(&engine, p)? });
    }
    let res = search(&engine, &req)?;
    if g.json {
        println!("{}", without_paths(serde_json::to_value(&res)?, a.with_paths));
    } else {
        print_text(&res)?;
    }
    Ok(0)
}

fn print_text(res: &SearchResponse) -> anyhow::Result<()> {
    let query = serde_json::to_value(&res.query)?;
    if let Some(hits) = &res.hits {
        println!("{} {} hits for {query}:", hits.len(), res.kind);
        for (i, h) in hits.iter().enumerate() {
            println!("{}", hit_line(i + 1, &h.0));
        }
    }
    if let (Some(groups), Some(by)) = (&res.groups, res.group_by) {
        println!("{} {by} groups of {} hits for {query}:", groups.len(), res.kind);
        for (i, grp) in groups.iter().enumerate() {
            println!("{}", group_header(i + 1, grp));
            for (j, h) in grp.hits.iter().enumerate() {
                println!("  {}", hit_line(j + 1, &h.0));
            }
        }
    }
    Ok(())
}

/// A DICOM cine or a video file, decoded as ingest decodes it.
fn video_query(engine: &echovault::Engine, p: &std::path::Path) -> anyhow::Result<Vec<f32>> {
    Ok(engine.embed_video_file(p)?.1.video)
}
